"""minR1 side by side with what a user would pick instead, on the same machine, in one run, at equal work.

    python bench/compare.py                          # all three, 2 threads; writes bench/results/compare_cpu.md
    python bench/compare.py --quick                  # small sizes, one repeat: checks that it runs (~1 min)
    python bench/compare.py --only decode,train      # a subset: decode | grpo | train
    pip install -r requirements-bench.txt            # the optional peers (never imported by the pipeline)

  decode  sample.generate against transformers' DeepseekV3ForCausalLM.generate (its default dynamic cache, sdpa
          attention), the same weights (exported by hf.export_hf), greedy, a 32-token prompt + 256 new tokens (no
          EOS), batch 1 / 16 / 64. The greedy tokens of the two must be identical (counted per batch; exit 1 if not).
          minR1 runs twice: eager, and with its one-token step through torch.compile (generate(compiled=True),
          compiled once before timing; the compile time is printed).
  grpo    one GRPO step of grpo.grpo_step against TRL's GRPOTrainer (one trainer step, max_steps 1), equal work: 8
          prompts x G 8, exactly 128 completion tokens each (no EOS: minR1 samples without one, TRL with
          min_new_tokens = 128), the same reward function on the same decoded text, beta 0.001 with k3 (TRL's
          KL), loss_type grpo, scale_rewards group, mu 1, one optimizer step, temperature 1, fp32. Phases: TRL's
          from timers around its _generate, _calculate_rewards and the no-grad logprob passes; the update is the
          rest of the step. minR1's from grpo_step's own metrics; minR1 runs eager and with compile_decode.
  train   the toy MoE (training step of bench/train.py: forward, backward, AdamW, bias update) against a dense
          nanoGPT-style GPT (pre-LayerNorm, GELU MLP 4d, SDPA causal attention, untied head) sized to the same
          training FLOPs per token by model.counters' formula (6 x matmul params + attention), batch 16 x 384,
          fp32; tokens/s, GFLOP/s and % of the measured fp32 matmul peak (common.get_peak_flops).

Every measurement is interleaved (minR1, peer, minR1, peer, ...) and the median of the repeats is reported, so a
background load slows both sides alike. Random weights (seeded; init std 0.15 so that greedy argmax has no near
ties and the token comparison means something). Timings are wall clock at --threads (default 2).
"""
import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import adamw, get_peak_flops, run_cli  # noqa: E402
from config import load_config  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402
from sample import generate  # noqa: E402


PROBLEMS = []   # comparisons that must hold (identical greedy tokens, fixed lengths): reported, then exit 1


def median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def need(module: str, what: str):
    """Import an optional peer or say in one line how to get it."""
    try:
        return __import__(module)
    except ImportError:
        raise SystemExit(f"bench/compare.py {what}: needs `{module}` (pip install {module}); "
                         f"run the rest with --only") from None


def toy_model(config: str, seed: int = 0, std: float = 0.15) -> Transformer:
    args = ModelArgs(**load_config(config)["model"])
    torch.manual_seed(seed)
    m = Transformer(args)
    m.init_weights(std)                                 # peaked logits: no greedy near-ties between implementations
    with torch.no_grad():
        for layer in m.layers[args.n_dense_layers:]:
            layer.ffn.gate.bias.uniform_(-0.05, 0.05)   # as after some bias updates: both must use it
    return m.eval()


def export_for_hf(model: Transformer, out_dir: str) -> str:
    import hf
    hf.export_hf(model, model.args, out_dir, extra={"eos_token_id": None})
    return out_dir


# ------------------------------------------------------------------------------------------------- decode
def bench_decode(a, model, hf_dir):
    transformers = need("transformers", "decode")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="sdpa",
                                                                dtype=torch.float32).eval()
    V, P, N = model.args.vocab_size, 32, a.new_tokens
    gen = torch.Generator().manual_seed(1)
    warm = torch.randint(1, V, (2, P), generator=gen)
    generate(model, warm.tolist(), 4, temperature=0.0)              # warm-up: allocations, first-call costs
    t0 = time.perf_counter()
    generate(model, warm.tolist(), 4, temperature=0.0, compiled=True)   # ... and torch.compile's one compilation
    print(f"compiling minR1's decode step: {time.perf_counter() - t0:.0f} s (once per process)", flush=True)
    with torch.no_grad():
        theirs.generate(warm, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0,
                        attention_mask=torch.ones_like(warm))
    rows = ["| batch | minR1 tok/s | minR1 compiled tok/s | HF generate tok/s | minR1 / HF | compiled / HF | "
            "identical greedy rows (minR1, compiled) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for B in a.batches:
        prompts = torch.randint(1, V, (B, P), generator=gen)        # distinct rows: no shared-prefix shortcut
        ours_t, comp_t, theirs_t, same = [], [], [], None
        def run_ours(prompts=prompts, compiled=False):
            return generate(model, prompts.tolist(), N, temperature=0.0, compiled=compiled)

        @torch.no_grad()
        def run_theirs(prompts=prompts):
            return theirs.generate(prompts, max_new_tokens=N, min_new_tokens=N, do_sample=False, eos_token_id=None,
                                   pad_token_id=0, attention_mask=torch.ones_like(prompts))

        for _ in range(a.repeats):                                  # interleaved
            t, ours = timed(run_ours)
            ours_t.append(t)
            t, comp = timed(lambda: run_ours(compiled=True))
            comp_t.append(t)
            t, out = timed(run_theirs)
            theirs_t.append(t)
            same = [int((out[:, P:] == g.tokens).all(1).sum()) for g in (ours, comp)]
        if same != [B, B]:
            PROBLEMS.append(f"decode batch {B}: only {same[0]}/{B} (eager) and {same[1]}/{B} (compiled) greedy rows "
                            "identical to HF generate's")
        to, tc, th = median(ours_t), median(comp_t), median(theirs_t)
        rows.append(f"| {B} | {B * N / to:,.0f} | {B * N / tc:,.0f} | {B * N / th:,.0f} | {th / to:.2f}x | "
                    f"{th / tc:.2f}x | {same[0]}/{B}, {same[1]}/{B} |")
        print(rows[-1], flush=True)
    return [f"## decode: {P}-token prompt + {N} new tokens, greedy, fp32, median of {a.repeats}", ""] + rows


# ------------------------------------------------------------------------------------------------- GRPO
def even_reward(prompts, completions, **kwargs):
    """The same rule reward on both sides: the share of completion words t<i> with an even id i."""
    out = []
    for c in completions:
        words = c.split()
        out.append(sum(w[1:].isdigit() and int(w[1:]) % 2 == 0 for w in words) / max(len(words), 1))
    return out


class WordTokenizer:
    """minR1's side of the word-level vocabulary "t0".."t{V-1}" that TRL's tokenizer also uses (grpo.rollout
    needs encode / decode / eos_id / pad_id). eos_id None: no row stops before max_new_tokens."""
    eos_id, pad_id = None, 0

    def encode(self, text):
        return [int(w[1:]) for w in text.split()]

    def decode(self, ids):
        return " ".join(f"t{i}" for i in ids)


def hf_word_tokenizer(V: int, out_dir: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", eos_token="t2", unk_token="t1")
    fast.save_pretrained(out_dir)
    return fast


def bench_grpo(a, model, hf_dir):
    need("transformers", "grpo")
    trl = need("trl", "grpo")
    import datasets
    from transformers import TrainerCallback

    import grpo
    V, G, n_prompts, N, P = model.args.vocab_size, a.group_size, a.prompts, a.completion_len, 32
    gen = torch.Generator().manual_seed(2)
    texts = [" ".join(f"t{i}" for i in torch.randint(3, V, (P,), generator=gen).tolist()) for _ in range(n_prompts)]
    tok = WordTokenizer()
    hf_tok = hf_word_tokenizer(V, hf_dir)
    cfg = grpo.GRPOConfig(group_size=G, prompts_per_step=n_prompts, max_new_tokens=N, temperature=1.0, lr=1e-5,
                          beta=0.001, kl_estimator="k3", loss_agg="grpo", scale_rewards="group", mu=1,
                          n_minibatches=1, micro_batch_size=0, precision="fp32", grad_clip=1.0)
    policy = Transformer(model.args)
    policy.load_state_dict(model.state_dict())
    ref = Transformer(model.args)
    ref.load_state_dict(model.state_dict())
    ref.eval().requires_grad_(False)
    opt = grpo.make_optimizer(policy, cfg)
    tasks = [{"prompt": t} for t in texts]

    # TRL: timers around its phases (instance attributes shadow the methods)
    out_dir = tempfile.mkdtemp(prefix="trl_")
    tcfg = trl.GRPOConfig(output_dir=out_dir, per_device_train_batch_size=n_prompts * G, num_generations=G,
                          max_completion_length=N, generation_kwargs={"min_new_tokens": N}, temperature=1.0,
                          top_p=1.0, beta=0.001, loss_type="grpo", scale_rewards="group", num_iterations=1,
                          learning_rate=1e-5, max_steps=1, max_grad_norm=1.0, logging_steps=1, report_to="none",
                          save_strategy="no", use_cpu=True, bf16=False, seed=0, disable_tqdm=True,
                          dataloader_num_workers=0, log_completions=False)
    times = {}

    def timer(name, fn):
        def wrapped(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        return wrapped

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            times["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times["step"] = time.perf_counter() - times["t0"]

    def trl_step():
        dataset = datasets.Dataset.from_dict({"prompt": texts})
        trainer = trl.GRPOTrainer(model=hf_dir, reward_funcs=even_reward, args=tcfg, train_dataset=dataset,
                                  processing_class=hf_tok, callbacks=[StepTimer()])
        score = trainer._generate_and_score_completions
        inside = {"score": False}

        def scoring(*args, **kwargs):
            inside["score"] = True
            try:
                return score(*args, **kwargs)
            finally:
                inside["score"] = False
        trainer._generate_and_score_completions = scoring
        trainer._generate = timer("generate", trainer._generate)
        trainer._calculate_rewards = timer("reward", trainer._calculate_rewards)
        logps = trainer._get_per_token_logps_and_entropies
        timed_logps = timer("logprobs", logps)
        trainer._get_per_token_logps_and_entropies = \
            lambda *args, **kw: (timed_logps if inside["score"] else logps)(*args, **kw)
        times.clear()
        with contextlib.redirect_stdout(sys.stderr):        # TRL prints its log dicts
            trainer.train()
        lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
        if lengths != [N]:
            PROBLEMS.append(f"TRL completions of mean length {lengths}, not the fixed {N}")
        return {k: times.get(k, 0.0) for k in ("step", "generate", "reward", "logprobs")}

    def minr1_step(step, compiled=False):
        c = dataclasses.replace(cfg, compile_decode=compiled)
        m = grpo.grpo_step(policy, ref, opt, tasks, even_reward, tok, c, step=step, prompt_fn=lambda t: t["prompt"])
        if m["response_length"] != N:
            PROBLEMS.append(f"minR1 rollout of mean length {m['response_length']}, not the fixed {N}")
        return {"step": m["step_time"], "generate": m["time_generate"], "reward": m["time_reward"],
                "logprobs": m.get("time_logprobs", 0.0)}

    minr1_step(100), minr1_step(101, True), trl_step()              # warm-up: first-call costs, torch.compile
    ours, comp, peer = [], [], []
    for r in range(a.repeats):                                      # interleaved
        ours.append(minr1_step(r))
        comp.append(minr1_step(r, True))
        peer.append(trl_step())
        print(f"  repeat {r}: minR1 {ours[-1]['step']:.2f} s, compiled decode {comp[-1]['step']:.2f} s, "
              f"TRL {peer[-1]['step']:.2f} s", flush=True)

    def split(runs):
        med = {k: median([x[k] for x in runs]) for k in runs[0]}
        med["update"] = med["step"] - med["generate"] - med["reward"] - med["logprobs"]
        return med

    o, c, t = split(ours), split(comp), split(peer)
    rows = [f"## one GRPO step: {n_prompts} prompts x G {G} x {N} tokens (fixed), beta 0.001 k3, one optimizer step, "
            f"fp32, median of {a.repeats}", "",
            "minR1 compiled: the same step with compile_decode (sampling through the torch.compile'd decode step; "
            "compiled once, in the warm-up).", "",
            "| phase | minR1 s | share | minR1 compiled s | share | TRL GRPOTrainer s | share | TRL / minR1 | "
            "TRL / compiled |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, label in (("generate", "generation"), ("reward", "reward"), ("logprobs", "ref (+ old) logprobs"),
                     ("update", "update (fwd+bwd+opt)"), ("step", "whole step")):
        rows.append(f"| {label} | " + " | ".join(f"{x[k]:.2f} | {100 * x[k] / x['step']:.0f}%" for x in (o, c, t)) +
                    f" | {t[k] / max(o[k], 1e-9):.2f}x | {t[k] / max(c[k], 1e-9):.2f}x |")
    print("\n".join(rows[4:]), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------- train
class GPT(nn.Module):
    """A dense nanoGPT-style decoder: pre-LayerNorm blocks of causal self-attention (SDPA) and a GELU MLP (4d)."""
    def __init__(self, vocab: int, dim: int, n_layers: int, n_heads: int, max_len: int):
        super().__init__()
        self.n_heads = n_heads
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            ln1=nn.LayerNorm(dim), qkv=nn.Linear(dim, 3 * dim, bias=False), proj=nn.Linear(dim, dim, bias=False),
            ln2=nn.LayerNorm(dim), fc=nn.Linear(dim, 4 * dim, bias=False), out=nn.Linear(4 * dim, dim, bias=False)))
            for _ in range(n_layers))
        self.ln_f, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            q, k, v = b.qkv(b.ln1(x)).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)   # (B, H, T, d/H)
            x = x + b.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1))
            x = x + b.out(F.gelu(b.fc(b.ln2(x))))
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def flops_per_token(self, T: int) -> int:
        """model.counters' formula: 6 x matmul parameters (blocks + head) + 3 n_layers H (qk + v) T attention."""
        mm = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and not n.startswith(("wte", "wpe")))
        dim = self.wte.weight.shape[1]
        return 6 * mm + 3 * len(self.blocks) * 2 * dim * T


def dense_width(target: int, vocab: int, n_layers: int, T: int, multiple: int = 8) -> int:
    """The width (a multiple of `multiple`) whose GPT comes closest to `target` training FLOPs per token."""
    f = lambda d: 6 * (12 * d * d * n_layers + d * vocab) + 6 * n_layers * d * T   # noqa: E731
    return min(range(multiple, 4096, multiple), key=lambda d: abs(f(d) - target))


def bench_train(a, model_args):
    B, T = a.train_batch, a.train_seq
    torch.manual_seed(0)
    moe = Transformer(model_args).train()
    c = moe.counters(seq_len=T)
    d = dense_width(c["train_flops_per_token"], model_args.vocab_size, model_args.n_layers, T)
    gpt = GPT(model_args.vocab_size, d, model_args.n_layers, max(1, d // 64), T).train()
    f_moe, f_gpt = c["train_flops_per_token"], gpt.flops_per_token(T)
    opt_moe = adamw(moe.parameters(), lr=1e-4)
    opt_gpt = adamw(gpt.parameters(), lr=1e-4)
    x = torch.randint(0, model_args.vocab_size, (B, T + 1))

    def step_moe():
        _, loss, _ = moe(x[:, :-1], x[:, 1:])
        loss.backward()
        opt_moe.step()
        opt_moe.zero_grad(set_to_none=True)
        moe.update_bias()

    def step_gpt():
        gpt(x[:, :-1], x[:, 1:]).backward()
        opt_gpt.step()
        opt_gpt.zero_grad(set_to_none=True)

    step_moe(), step_gpt()                                         # warm-up
    t_moe, t_gpt = [], []
    for _ in range(a.train_steps):                                 # interleaved
        t_moe.append(timed(step_moe)[0])
        t_gpt.append(timed(step_gpt)[0])
    peak = get_peak_flops("cpu", dtype=torch.float32)
    rows = [f"## training step: batch {B} x {T}, fp32, median of {a.train_steps} interleaved steps; measured fp32 "
            f"matmul peak {peak / 1e9:.1f} GFLOP/s", "",
            "| model | FLOPs/token | step ms | tokens/s | GFLOP/s | % of peak |", "|---|---:|---:|---:|---:|---:|"]
    res = {}
    for name, f, ts in ((f"minR1 toy MoE ({c['active_params'] / 1e6:.2f}M active)", f_moe, t_moe),
                        (f"dense GPT (d {d}, {model_args.n_layers} layers)", f_gpt, t_gpt)):
        s = median(ts)
        tok_s = B * T / s
        res[name] = tok_s
        rows.append(f"| {name} | {f / 1e6:.2f}M | {1e3 * s:.0f} | {tok_s:,.0f} | {f * tok_s / 1e9:.1f} | "
                    f"{100 * f * tok_s / peak:.0f}% |")
    r1, r2 = res.values()
    rows.append(f"\nMoE / dense tokens/s: {r1 / r2:.2f}x (FLOPs per token {f_moe / f_gpt:.3f}x of the dense model's)")
    print("\n".join(rows[2:]), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="toy", help="preset whose model is compared (configs/)")
    ap.add_argument("--only", default="decode,grpo,train", help="comma list of decode, grpo, train")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat: a check that everything runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--completion-len", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-seq", type=int, default=384)
    ap.add_argument("--train-steps", type=int, default=7)
    ap.add_argument("--out", default=None, help="default: bench/results/compare_cpu.md (not written with --quick)")
    a = ap.parse_args(argv)
    if a.quick:
        a.repeats, a.batches, a.new_tokens, a.prompts, a.group_size, a.completion_len = 1, [1, 4], 32, 2, 4, 16
        a.train_batch, a.train_seq, a.train_steps = 4, 128, 3
    parts = [p.strip() for p in a.only.split(",") if p.strip()]
    bad = [p for p in parts if p not in ("decode", "grpo", "train")]
    if bad:
        raise SystemExit(f"--only: unknown part(s) {bad}; choose from decode, grpo, train")
    torch.set_num_threads(a.threads)
    model = toy_model(a.config)
    lines = [f"# minR1 vs peers: {a.config} config, {torch.get_num_threads()} threads, CPU, torch {torch.__version__}"
             + (" (--quick: sizes too small to mean anything)" if a.quick else ""), ""]
    versions = []
    for mod in ("transformers", "trl"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            versions.append(f"{mod} absent")
    lines += [", ".join(versions), ""]
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = None
        if "decode" in parts or "grpo" in parts:
            hf_dir = export_for_hf(model, os.path.join(tmp, "hf"))
        for p in parts:
            print(f"== {p}", flush=True)
            if p == "decode":
                lines += bench_decode(a, model, hf_dir) + [""]
            elif p == "grpo":
                lines += bench_grpo(a, model, hf_dir) + [""]
            else:
                lines += bench_train(a, model.args) + [""]
    table = "\n".join(lines)
    print("\n" + table)
    out = a.out or (None if a.quick else os.path.join(ROOT, "bench", "results", "compare_cpu.md"))
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(table + "\n")
        print(f"wrote {out}")
    if PROBLEMS:
        raise SystemExit("not equal work / not the same output: " + "; ".join(PROBLEMS))


if __name__ == "__main__":
    sys.exit(run_cli(main))
