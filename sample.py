"""Batched generation with the latent KV cache: ragged prompts, temperature / top-p / top-k, EOS stopping,
per-token logprobs (GRPO's pi_old), and a CLI to talk to a checkpoint (python sample.py --help for more):

    python sample.py --ckpt docs/toy_run/zero/model.pt "What is 17 + 25?"      # the stage's template, picked for you
    python sample.py --ckpt runs/toy/zero/model.pt "What is 17*3" -n 4         # 4 samples, each with its stop reason
    python sample.py --ckpt runs/toy/cold_start/model.pt -i                     # interactive: one question a line
    python sample.py --ckpt runs/toy/pretrain/model.pt --template none --temperature 0 "12+34="   # raw continuation

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
import json
import math
import os
import sys
from dataclasses import dataclass

import torch

import data
import kernels
import tokenizer
from checkpoint import load_checkpoint, unwrapped_state_dict
from common import CheckpointError, run_cli
from model import ModelArgs, Transformer


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
             seed=None, attn="absorbed", on_token=None, compact: bool = True, compiled: bool = False) -> Generation:
    """Sample up to max_new_tokens after each prompt (lists of token ids, any lengths) with the KV cache.

    eos_id: an int or a list of ints that end a row (the EOS is kept, counted in lengths). seed: a private
    generator, so the same call returns the same tokens whatever the global RNG. attn: "absorbed" (latent
    cache, fast) or "naive" (per-head k, v cache; the reference). on_token(step, tokens (B,)) is called after
    each step (the CLI streams with it). The model is put in eval mode for the call and restored afterwards.
    Speed without changing a token: identical prompts (a GRPO group) are prefilled once and their cache copied
    (_prefill); with compact, rows that have ended leave the decode batch (once a quarter of it has ended), and
    each row draws its own random numbers, so its tokens are the same whichever rows decode beside it.
    compiled: one-token steps through torch.compile (Transformer.decode; the first call compiles, 30-60 s on a
    CPU; logits within ~1e-5 of the eager step's, so a token can differ where two are that close).
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
                logits = model.decode(tok[:, None], pos[:, None], cache, compiled=compiled)[:, 0]   # (rows, vocab)
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
# The prompt formats of the pipeline (data.py). Which one a model answers depends on the stage that trained it
# (train_pipeline.py): the base model and R1-Zero were trained and evaluated with the R1-Zero template (R1 Table 1);
# every SFT and RL stage from the cold start on uses the chat markup <|user|>question<|assistant|>.
TEMPLATES = {"none": lambda q: q, "r1zero": data.r1zero_prompt, "chat": data.chat_task_prompt}
R1ZERO_HEAD = data.R1ZERO_TEMPLATE.split("{prompt}")[0]      # "A conversation between User and Assistant. ..."

EXAMPLES = """\
examples:
  python sample.py --ckpt docs/toy_run/zero/model.pt "What is 17 + 25?"
  python sample.py --ckpt runs/toy/zero/model.pt "Make 20 from 1, 5, 3, 9 with + - * /, each number used once" -n 4
  python sample.py --ckpt runs/toy/cold_start/model.pt -i            # ask one question after another
  python sample.py --ckpt runs/toy/pretrain/model.pt --template none --temperature 0 "12+34="   # raw continuation

templates (--template; auto picks the one the checkpoint's stage was trained with, from its run folder
runs/<name>/<stage>/model.pt, and says which on stderr):
  r1zero  R1's Table 1 text around the question, "... User: QUESTION. Assistant:"
          (pretrain, zero, pretrain_student_*, rl_student_*)
  chat    <|user|>QUESTION<|assistant|>
          (cold_start, reasoning_rl, rejection_sft, all_rl, distill_*)
  none    the prompt exactly as typed (auto falls back to it when the stage is unknown)
With a template, only the model's answer is printed; with none, the prompt is echoed and continued
(in -i, only the answers are printed).
The toy models know the toy world's wording best: "What is 17+25", "Compute 24*7",
"Make 20 from 1, 5, 3, 9 with + - * /, each number used once"."""


def template_of_stage(stage: str):
    """The template a stage's model was trained with ("r1zero" | "chat"), None for a name that is no policy stage
    (reward models rm_*, unknown folders). distill's folders carry the student's name: pretrain_student_<s> and
    rl_student_<s> are the R1-Zero recipe on a student, distill_<s> is SFT on R1's chat-format answers."""
    if stage in ("pretrain", "zero") or stage.startswith(("pretrain_student_", "rl_student_")):
        return "r1zero"
    if stage in ("cold_start", "reasoning_rl", "rejection_sft", "all_rl") or stage.startswith("distill_"):
        return "chat"
    return None


def checkpoint_stage(path: str, ckpt: dict):
    """(stage, where it was read) of a checkpoint, or (None, why it is unknown). A checkpoint that records its
    stage is believed first. The pipeline's own do not record it (their "config" entry is the run's, the same for
    every stage), but train_pipeline.py writes each stage to runs/<name>/<stage>/model.pt, so the folder names it
    (config.json beside it is that same run config, so it cannot tell the stages apart either)."""
    if isinstance(ckpt.get("stage"), str) and template_of_stage(ckpt["stage"]):
        return ckpt["stage"], "recorded in the checkpoint"
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if template_of_stage(folder):
        return folder, f"its folder is {folder}/"
    return None, f"its folder '{folder}' is not a stage name"


def choose_template(requested: str, path: str, ckpt: dict):
    """(template, note for stderr or None). auto: the template of the checkpoint's stage, or none when the stage is
    unknown (the prompt as typed: no guess wraps it in a format the model may never have seen)."""
    stage, where = checkpoint_stage(path, ckpt)
    trained = template_of_stage(stage) if stage else None
    if requested == "auto":
        if trained:
            return trained, f"template: {trained} (the checkpoint is from the {stage} stage: {where})"
        return "none", (f"template: none, the prompt as typed (the stage of {path} is unknown: {where}); pass "
                        f"--template r1zero for a base or R1-Zero model, --template chat from cold_start on")
    if trained and requested not in (trained, "none"):           # none (raw text) is a deliberate choice
        return requested, f"warning: --template {requested}, but the {stage} stage was trained with {trained}"
    return requested, None


def format_prompt(question: str, template: str, auto: bool = False) -> str:
    """The model's input for a question. Under --template auto, a prompt that already carries a template (the chat
    markup or the R1-Zero text, typed by hand as was needed before auto existed) goes in as typed, not wrapped twice."""
    if auto and (tokenizer.USER in question or question.startswith(R1ZERO_HEAD)):
        return question
    return TEMPLATES[template](question)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse would print the whole usage and exit 2; one line (common.run_cli prints it) says more at a glance
        raise SystemExit(f"{message} (python sample.py --help shows the usage)")


def parse_args(argv=None) -> argparse.Namespace:
    """The options, every value checked here, before a checkpoint is read: a bad one fails in a second with one
    line, not after loading a large model (or deep inside generate with a traceback)."""
    p = _Parser(prog="sample.py", description="Ask a minR1 checkpoint a question (or continue a text).",
                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", metavar="QUESTION",
                   help="the question (with --template none, the text to continue); without one, sample.py "
                        "asks interactively when stdin is a terminal")
    p.add_argument("--prompt", dest="prompt_opt", metavar="PROMPT", help="the same as the positional prompt")
    p.add_argument("--ckpt", required=True, help="a model.pt written by train_pipeline.py (runs/<name>/<stage>/)")
    p.add_argument("-i", "--interactive", action="store_true",
                   help="read questions from stdin, one a line, and answer each (exit, Ctrl-D or Ctrl-C quits)")
    p.add_argument("--template", choices=["auto", *TEMPLATES], default="auto",
                   help="how the question is wrapped (default auto: from the checkpoint's stage; see below)")
    p.add_argument("-n", type=int, default=1, help="completions to sample (streamed when 1)")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy; R1's evaluation uses 0.6")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling, in (0, 1]; 1 = off (R1: 0.95)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: as many as max_seq_len allows, up to 512")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--attn", choices=["absorbed", "naive"], default="absorbed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)

    if a.prompt is not None and a.prompt_opt is not None:
        raise SystemExit("give the prompt once: positional or --prompt, not both")
    if a.prompt is None:
        a.prompt = a.prompt_opt
    if a.prompt is not None and not a.prompt.strip():
        raise SystemExit("the prompt is empty: give a question, e.g. \"What is 17+25\", or -i to ask interactively")
    if a.prompt is not None and a.interactive:
        raise SystemExit("-i reads the questions from stdin: give no prompt with it")
    if a.prompt is None and not a.interactive:
        if not sys.stdin.isatty():     # no terminal to ask on: a script that forgot its prompt should fail loudly
            raise SystemExit("no prompt: give a question after the options, or -i to read questions from stdin")
        a.interactive = True
    if a.n < 1:
        raise SystemExit(f"-n must be >= 1, got {a.n}")
    if a.max_new_tokens is not None and a.max_new_tokens < 1:
        raise SystemExit(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    if not (math.isfinite(a.temperature) and a.temperature >= 0):
        raise SystemExit(f"--temperature must be a finite number >= 0 (0 = greedy), got {a.temperature}")
    if not 0 < a.top_p <= 1:                                    # also false for nan
        raise SystemExit(f"--top-p must be in (0, 1] (1 = no nucleus truncation), got {a.top_p}")
    if a.top_k < 0:
        raise SystemExit(f"--top-k must be >= 0 (0 = off), got {a.top_k}")
    if torch.device(a.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {a.device}: no CUDA device here; use --device cpu")
    return a


# ---------------------------------------------------------------------------------------- loading a checkpoint
def _model_hint(path: str) -> str:
    """Where the model probably is, for a path that is not it: the model.pt of the same folder, when there is one."""
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), "model.pt")
    if os.path.isfile(beside) and not os.path.samefile(beside, path):
        return f"; the model of that folder is {os.path.join(os.path.dirname(path), 'model.pt')}"
    return "; a model checkpoint is the model.pt of a run folder, runs/<name>/<stage>/model.pt"


def _config_beside(path: str):
    """The run's config.json next to the checkpoint (what a stage folder holds), or None."""
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(cfg_path):
        return None
    try:
        with open(cfg_path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{cfg_path} is not valid JSON ({e.msg}, line {e.lineno})") from None


def load_model(path: str, device="cpu"):
    """(model in fp32 and eval mode on device, the checkpoint dict, tokenizer name) from a model.pt.

    Besides the pipeline's own checkpoints (checkpoint.save_model: weights, model_args, tokenizer, ...), this takes
    weights stored in bf16 (half the file, as the weights shipped in docs/ are) and weights without their
    model_args or tokenizer (a bare state dict, or a slimmed checkpoint), which then come from the config.json
    that every run folder holds beside model.pt."""
    try:
        ckpt = load_checkpoint(path)              # one-line errors: missing, damaged, refused, not a checkpoint
    except CheckpointError as e:
        if "is not a checkpoint" in str(e):       # a wrong path (eval.json, ...): point at the model it may mean
            raise SystemExit(f"{e}{_model_hint(path)}") from None
        raise
    if not isinstance(ckpt, dict) or not ckpt:
        raise SystemExit(f"{path} is not a model checkpoint (it holds {type(ckpt).__name__}){_model_hint(path)}")
    if "kind" in ckpt and "model" in ckpt:        # reward_model.build saves kind = "pairs" | "pointwise"
        raise SystemExit(f"{path} is a reward model ({ckpt['kind']}): it scores answers and does not write them; "
                         f"sample from a policy's model.pt, e.g. runs/<name>/all_rl/model.pt")
    state = ckpt.get("model")
    if state is None and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, ckpt = ckpt, {}                    # a bare state dict
    if not isinstance(state, dict) or not state:
        raise SystemExit(f"{path} is not a model checkpoint: it has no model weights (entries: "
                         f"{', '.join(sorted(map(str, ckpt))[:8])}){_model_hint(path)}")
    state = unwrapped_state_dict(state)

    config = None if "model_args" in ckpt and "tokenizer" in ckpt else _config_beside(path)
    args = ckpt.get("model_args")
    if args is None:
        if not config or "model" not in config:
            raise SystemExit(f"{path} has weights but no model_args, and there is no config.json with a model "
                             f"section beside it to say the model's shape")
        # the config's vocab_size is a placeholder that training replaces by the tokenizer's: read it off the weights
        args = {**config["model"], "vocab_size": state["embed.weight"].shape[0]} if "embed.weight" in state \
            else config["model"]
    tok_name = ckpt.get("tokenizer") or (config or {}).get("tokenizer") or "toy"

    # The model samples in fp32 (as the pipeline does): weights saved in bf16 are cast up here, explicitly, so the
    # result is the same whatever dtype the Transformer is built in (bf16 matmuls are slow or missing on many CPUs).
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model = Transformer(ModelArgs(**args)).float()
        model.load_state_dict(state)
    except (TypeError, RuntimeError) as e:        # unknown model_args key, missing / misshapen weights
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SystemExit(f"{path}: the weights do not fit the model they describe ({first})") from None
    return model.to(device).eval(), ckpt, tok_name


# ------------------------------------------------------------------------------------------- asking the model
class PromptTooLong(ValueError):
    """A prompt that leaves no room for the answer: fatal for one prompt, a message and the next question in -i."""


def respond(model, tok, text: str, a, echo: bool, out=None):
    """Sample a.n completions of `text` and print them to out: one streams token by token; several are printed in
    turn under a header with their length, stop reason and mean logprob. echo: print the prompt before the
    completion (a continuation reads as one text; after a template, only the answer is of interest)."""
    out = out or sys.stdout
    ids = tok.encode(text)
    room = model.args.max_seq_len - len(ids)
    max_new = a.max_new_tokens if a.max_new_tokens is not None else min(512, room)
    if room < 1 or max_new > room:
        raise PromptTooLong(f"prompt of {len(ids)} tokens + {max_new} new tokens exceeds the model's "
                            f"max_seq_len={model.args.max_seq_len}")
    prefix = text if echo else ""
    streamed = {"ids": [], "printed": 0}

    def stream(step, new):   # n == 1: print the text as it grows (wait while a UTF-8 character is incomplete)
        if int(new[0]) == tok.eos_id:
            return
        streamed["ids"].append(int(new[0]))
        s = tok.decode(streamed["ids"])
        if not s.endswith("\ufffd"):
            print(s[streamed["printed"]:], end="", file=out, flush=True)
            streamed["printed"] = len(s)

    if a.n == 1:
        print(prefix, end="", file=out, flush=True)
    gen = generate(model, [ids] * a.n, max_new, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k,
                   eos_id=tok.eos_id, pad_id=tok.pad_id, seed=a.seed, attn=a.attn,
                   on_token=stream if a.n == 1 else None)
    if a.n == 1:
        print(tok.decode(streamed["ids"])[streamed["printed"]:], file=out, flush=True)   # a trailing partial char
        return
    for i in range(a.n):
        n_i = int(gen.lengths[i])
        end = "EOS" if bool(gen.finished[i]) else "length"
        print(f"--- sample {i + 1}/{a.n} ({n_i} tokens, stop: {end}, "
              f"mean logprob {gen.logprobs[i, :n_i].mean().item():.3f}) ---", file=out)
        text_i = gen.tokens[i, :n_i - int(gen.finished[i])].tolist()        # the EOS is in the header, not the text
        print(prefix + tok.decode(text_i), file=out, flush=True)


def interact(model, tok, template: str, a, auto: bool = False, stdin=None, out=None) -> int:
    """The read-eval loop of -i: read a question (one line), wrap it in the template, sample, print the answer, again.
    Each question is asked on its own, single-turn, as every stage of the pipeline was trained. exit / quit, end of
    input (Ctrl-D) or Ctrl-C end it with status 0. Prompts and notes go to stderr, so stdout holds only answers."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    at_terminal = stdin is sys.stdin and stdin.isatty()
    if at_terminal:
        try:
            import readline  # noqa: F401  (imported for its side effect: line editing and history in input())
        except ImportError:
            pass
    print("Ask a question; exit, Ctrl-D or Ctrl-C quits.", file=sys.stderr)
    try:
        while True:
            if at_terminal:
                line = input("> ")                        # EOFError at Ctrl-D
            else:
                print("> ", end="", file=sys.stderr, flush=True)
                line = stdin.readline()
                if not line:                              # end of input
                    break
            question = line.strip()
            if question in ("exit", "quit"):
                break
            if not question:
                continue
            text = format_prompt(question, template, auto)
            try:
                respond(model, tok, text, a, echo=False, out=out)   # the question is on the screen already
            except PromptTooLong as e:
                print(f"error: {e}", file=sys.stderr)
    except (EOFError, KeyboardInterrupt):
        pass
    print(file=sys.stderr)                                # the shell's prompt on a line of its own
    return 0


def main(argv=None) -> int:
    """The CLI (see --help). A bad input raises SystemExit("..."), which common.run_cli prints as one line,
    "error: ...", with exit status 2."""
    a = parse_args(argv)
    model, ckpt, tok_name = load_model(a.ckpt, a.device)
    tok = tokenizer.get_tokenizer(tok_name)
    template, note = choose_template(a.template, a.ckpt, ckpt)
    if note:
        print(note, file=sys.stderr)
    auto = a.template == "auto"
    if a.interactive:
        return interact(model, tok, template, a, auto=auto)
    text = format_prompt(a.prompt, template, auto)
    try:
        respond(model, tok, text, a, echo=text == a.prompt)
    except PromptTooLong as e:
        raise SystemExit(str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
