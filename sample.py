"""Batched generation with the latent KV cache: ragged prompts, temperature / top-p / top-k, EOS stopping,
per-token logprobs (GRPO's pi_old), and a CLI to talk to a checkpoint.

    python sample.py --ckpt runs/toy/pretrain/model.pt --prompt "12+34=" --temperature 0
    python sample.py --ckpt runs/toy/zero/model.pt --prompt "What is 17*3?" --template r1zero -n 4

How a batch is generated (generate):
  1. prefill: the prompts, right-padded to the longest, go through model.decode at positions 0..L-1 in one call;
     row b's first new token is sampled from the logits at its last prompt position L_b - 1. Padding writes
     junk into cache slots >= L_b, but those slots are masked (a token at position p sees slots 0..p) and
     overwritten by the row's own new tokens before any of its queries can see them.
  2. decode: one token per row per call, each row at its own position (cache index = position), until
     max_new_tokens or until every row has emitted an EOS. Finished rows emit pad_id with logprob 0.
The cache is preallocated once (B, L_max + max_new_tokens, ...) and written in place.
"""
import argparse
import os
import sys
from dataclasses import dataclass

import torch

import data
import kernels
import tokenizer
from common import build_model_from_checkpoint


@dataclass
class Generation:
    tokens: torch.Tensor     # (B, N) long: the new tokens, pad_id after a row ends (N <= max_new_tokens)
    logprobs: torch.Tensor   # (B, N) fp32: log pi(token) under the sampling distribution; 0 after the end
    lengths: torch.Tensor    # (B,) long: new tokens of each row, its EOS included
    finished: torch.Tensor   # (B,) bool: the row ended with an EOS (False: cut by max_new_tokens)


def _device_of(model):
    return next(model.parameters()).device


def _check_request(model, prompts, max_new_tokens):
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: a row needs at least one token to condition on")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    longest = max(len(p) for p in prompts)
    limit = model.args.max_seq_len
    if longest + max_new_tokens > limit:
        raise ValueError(f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} = "
                         f"{longest + max_new_tokens} exceeds the model's max_seq_len={limit}")
    return longest


def _right_pad(prompts, width, pad_id, device):
    """(B, width) long tensor of the prompts right-padded with pad_id, and their lengths (B,)."""
    rows = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):                  # once per call, not per step
        rows[b, :len(p)] = torch.as_tensor(p, dtype=torch.long)
    return rows.to(device), torch.tensor([len(p) for p in prompts], device=device)


def _eos_tensor(eos_id, device):
    if eos_id is None:
        return None
    ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    return torch.tensor(ids, dtype=torch.long, device=device)


def truncate(logits, top_k: int = 0, top_p: float = 1.0):
    """Logits with everything outside the top-k and outside the top-p nucleus set to -inf. logits (B, V)."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]                        # (B, 1) k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        p = sorted_logits.softmax(dim=-1)
        before = p.cumsum(dim=-1) - p                                           # mass of the tokens ranked above
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))   # the top token always stays
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def sample_next(logits, temperature: float, top_p: float, top_k: int, generator=None, uniform=None):
    """logits (B, V) fp32 -> token (B,) long and its logprob (B,) fp32 under softmax(logits / temperature).
    (R1 §3 evaluates at temperature 0.6, top-p 0.95; R1's GRPO rollouts sample at temperature 1.0.)

    The logprob ignores the top-k / top-p truncation: GRPO's ratio pi_theta / pi_old compares it with the
    policy's plain softmax, recomputed by a teacher-forced forward pass. temperature 0 = greedy, and the
    logprob is then the one at temperature 1. uniform (B,): the random numbers of the draw (default: fresh from
    generator); generate passes every row's own, so that a row's tokens do not depend on which rows run with it.
    """
    if temperature == 0:
        tok = logits.argmax(dim=-1)
        return tok, kernels.token_logprobs(logits, tok)
    scaled = logits / temperature
    probs = truncate(scaled, top_k, top_p).softmax(dim=-1)
    if uniform is None:
        uniform = torch.rand(len(probs), generator=generator, device=probs.device)
    cdf = probs.cumsum(dim=-1)                               # inverse-CDF draw: token i iff cdf[i-1] <= u < cdf[i]
    tok = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True).squeeze(-1).clamp_(max=len(cdf[0]) - 1)
    return tok, kernels.token_logprobs(scaled, tok)


def generate(model, prompts, max_new_tokens, *, temperature=1.0, top_p=1.0, top_k=0, eos_id=None, pad_id=0,
             seed=None, attn="absorbed", on_token=None, compact: bool = True) -> Generation:
    """Sample up to max_new_tokens after each prompt (lists of token ids, any lengths) with the KV cache.

    eos_id: an int or a list of ints that end a row (the EOS is kept, counted in lengths). seed: a private
    generator, so the same call returns the same tokens whatever the global RNG. attn: "absorbed" (latent
    cache, fast) or "naive" (per-head k, v cache; the reference). on_token(step, tokens (B,)) is called after
    each step (the CLI streams with it). The model is put in eval mode for the call and restored afterwards.
    Speed without changing a token: identical prompts (a GRPO group) are prefilled once and their cache copied
    (_prefill); with compact, rows that have ended leave the decode batch (once a quarter of it has ended), and
    each row draws its own random numbers, so its tokens are the same whichever rows decode beside it.
    """
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
    longest = _check_request(model, prompts, max_new_tokens)
    device = _device_of(model)
    B, N = len(prompts), max_new_tokens
    eos = _eos_tensor(eos_id, device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

    was_training = model.training
    model.eval()                                                    # no load counting while sampling
    try:
        with torch.no_grad():
            cache, logits, lens = _prefill(model, prompts, longest + N, attn, pad_id, device)
            pos = lens.clone()                                          # position of the token being sampled
            tokens = torch.full((B, N), pad_id, dtype=torch.long, device=device)
            logprobs = torch.zeros(B, N, dtype=torch.float32, device=device)
            lengths = torch.zeros(B, dtype=torch.long, device=device)
            finished = torch.zeros(B, dtype=torch.bool, device=device)
            rows = torch.arange(B, device=device)                       # the rows still in the decode batch
            steps = N
            for step in range(N):
                u = torch.rand(B, generator=generator, device=device) if temperature > 0 else None
                tok, lp = sample_next(logits, temperature, top_p, top_k, uniform=None if u is None else u[rows])
                done = finished[rows]
                tok = tok.masked_fill(done, pad_id)                    # rows already ended emit padding
                tokens[rows, step] = tok
                logprobs[rows, step] = lp.masked_fill(done, 0.0)
                lengths[rows] += (~done).long()
                if eos is not None:
                    finished[rows] |= torch.isin(tok, eos)
                if on_token is not None:
                    full = torch.full((B,), pad_id, dtype=torch.long, device=device)
                    on_token(step, full.index_put_((rows,), tok))
                if step == N - 1 or bool(finished.all()):              # the only sync per step: early stop
                    steps = step + 1
                    break
                keep = ~finished[rows]
                if compact and 4 * int((~keep).sum()) >= len(rows):  # drop finished rows from the batch
                    rows, tok, pos = rows[keep], tok[keep], pos[keep]
                    cache.select(keep)
                logits = model.decode(tok[:, None], pos[:, None], cache)[:, 0]   # (rows, vocab)
                pos += 1
    finally:
        model.train(was_training)
    return Generation(tokens[:, :steps], logprobs[:, :steps], lengths, finished)


def _prefill(model, prompts, max_len, attn, pad_id, device):
    """Prefill the cache with each DISTINCT prompt once, then copy its rows to every duplicate (a GRPO group is one
    prompt G times). -> (cache (B rows), logits (B, vocab) at each row's last prompt token, lengths (B,))."""
    first = {}
    inverse = torch.tensor([first.setdefault(tuple(p), len(first)) for p in prompts], device=device)
    unique = [list(p) for p in first]
    longest = max(len(p) for p in unique)
    cache = model.new_cache(len(unique), max_len, mode=attn)
    prompt, lens = _right_pad(unique, longest, pad_id, device)         # (U, L), (U,)
    positions = torch.arange(longest, device=device).expand(len(unique), longest)
    logits = model.decode(prompt, positions, cache)                    # prefill: (U, L, vocab)
    logits = logits[torch.arange(len(unique), device=device), lens - 1]   # (U, vocab) at each row's last token
    if len(unique) < len(prompts):
        cache.select(inverse)
    return cache, logits[inverse], lens[inverse]


def generate_recompute(model, prompts, max_new_tokens, *, eos_id=None, pad_id=0) -> Generation:
    """Greedy decoding WITHOUT a cache: the whole forward pass over prompt + tokens so far at every step.
    The slow reference that the tests and bench/sample.py compare generate() against."""
    longest = _check_request(model, prompts, max_new_tokens)
    device = _device_of(model)
    B, N = len(prompts), max_new_tokens
    eos = _eos_tensor(eos_id, device)
    rows = torch.arange(B, device=device)
    seq, cur = _right_pad(prompts, longest + N, pad_id, device)           # (B, L + N), current lengths (B,)
    tokens = torch.full((B, N), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, N, dtype=torch.float32, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    steps = N
    try:
        with torch.no_grad():
            for step in range(N):
                logits = model(seq[:, :longest + step])[rows, cur - 1]  # (B, vocab): causal, so padding is harmless
                tok, lp = sample_next(logits, 0.0, 1.0, 0)
                tok = tok.masked_fill(finished, pad_id)
                tokens[:, step], logprobs[:, step] = tok, lp.masked_fill(finished, 0.0)
                lengths += (~finished).long()
                if eos is not None:
                    finished |= torch.isin(tok, eos)
                seq[rows, cur] = tok
                cur += 1
                if bool(finished.all()):
                    steps = step + 1
                    break
    finally:
        model.train(was_training)
    return Generation(tokens[:, :steps], logprobs[:, :steps], lengths, finished)


# ------------------------------------------------------------------------------------------------------ CLI
def _fail(msg: str) -> int:
    print(f"sample.py: {msg}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Talk to a minR1 checkpoint.")
    p.add_argument("--ckpt", required=True, help="a model.pt written by train_pipeline.py")
    p.add_argument("--prompt", required=True, help="the text to continue (or the question, with --template)")
    p.add_argument("-n", type=int, default=1, help="completions to sample (streamed when 1)")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy; R1's evaluation uses 0.6")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (R1's evaluation: 0.95)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--template", choices=["none", "r1zero"], default="none",
                   help="r1zero: wrap the prompt in the R1-Zero template (R1 Table 1)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: as many as max_seq_len allows, up to 512")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--attn", choices=["absorbed", "naive"], default="absorbed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if a.n < 1:
        return _fail(f"-n must be >= 1, got {a.n}")
    if not os.path.isfile(a.ckpt):
        return _fail(f"no checkpoint at {a.ckpt}")
    try:
        model, ckpt = build_model_from_checkpoint(a.ckpt, device=a.device)
    except Exception as e:   # missing keys, truncated file, wrong shapes: one line, no traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return _fail(f"cannot load checkpoint {a.ckpt}: {first}")
    tok = tokenizer.get_tokenizer(ckpt.get("tokenizer") or "toy")
    text = data.r1zero_prompt(a.prompt) if a.template == "r1zero" else a.prompt
    ids = tok.encode(text)
    room = model.args.max_seq_len - len(ids)
    max_new = a.max_new_tokens if a.max_new_tokens is not None else min(512, room)
    if room < 1 or max_new > room:
        return _fail(f"prompt of {len(ids)} tokens + {max_new} new tokens exceeds max_seq_len={model.args.max_seq_len}")

    streamed = {"ids": [], "printed": 0}

    def stream(step, new):   # n == 1: print the text as it grows (wait while a UTF-8 character is incomplete)
        if int(new[0]) == tok.eos_id:
            return
        streamed["ids"].append(int(new[0]))
        s = tok.decode(streamed["ids"])
        if not s.endswith("\ufffd"):
            print(s[streamed["printed"]:], end="", flush=True)
            streamed["printed"] = len(s)

    if a.n == 1:
        print(text, end="", flush=True)
    gen = generate(model, [ids] * a.n, max_new, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k,
                   eos_id=tok.eos_id, pad_id=tok.pad_id, seed=a.seed, attn=a.attn,
                   on_token=stream if a.n == 1 else None)
    if a.n == 1:
        print(tok.decode(streamed["ids"])[streamed["printed"]:])       # what a trailing partial character held
        return 0
    for i in range(a.n):
        n_i = int(gen.lengths[i])
        end = "EOS" if bool(gen.finished[i]) else "length"
        print(f"--- sample {i + 1}/{a.n} ({n_i} tokens, stop: {end}, "
              f"mean logprob {gen.logprobs[i, :n_i].mean().item():.3f}) ---")
        print(text + tok.decode(gen.tokens[i, :n_i].tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
