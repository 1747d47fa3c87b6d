"""Sampler benchmark: what the latent KV cache buys (decode tokens/s, cache vs recomputation, KV bytes per token).

    python bench/sample.py                       # toy config, random weights, 256 new tokens, 1 thread
    python bench/sample.py --new-tokens 64 --batches 1 16    # quicker

Prints a markdown table (--out FILE also writes it, e.g. --out bench/results/sample.md, the committed one) of
  - decode throughput (new tokens / s, prefill included) at batch 1, 16, 64 with the absorbed latent cache and
    with the naive per-head k/v cache;
  - the cache against full recomputation (every step re-runs the forward pass over prompt + tokens so far) at
    the same number of new tokens, at batch 1 and 16;
  - KV-cache bytes per token, naive vs absorbed, for the toy and for DeepSeek-V3 (671B).
Random weights are fine: the cost of a step does not depend on the values (no EOS is set, every row runs the
full length). Timings on a shared CPU are noisy; the ratios are the point.
"""
import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common import run_cli  # noqa: E402
from config import load_config  # noqa: E402
from model import ModelArgs, Transformer, human  # noqa: E402
from sample import generate, generate_recompute  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    # the whole docstring: its first line alone is cut off by the help formatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="toy", help="preset name in configs/ or a JSON path (as train_pipeline.py)")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens generated per row")
    p.add_argument("--prompt-len", type=int, default=16, help="prompt tokens per row")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], help="batch sizes of the decode table")
    p.add_argument("--recompute-batches", type=int, nargs="+", default=[1, 16],
                   help="batch sizes of the cache-vs-recomputation table")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: steady numbers on a shared CPU; 2+ pays at batch 64 on an idle one)")
    p.add_argument("--out", default=None, help="also write the table to this file (default: print it only)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    args = ModelArgs(**load_config(a.config)["model"])
    torch.manual_seed(0)
    model = Transformer(args).eval()
    N, L = a.new_tokens, a.prompt_len
    prompts = lambda B: torch.randint(0, args.vocab_size, (B, L)).tolist()   # noqa: E731

    generate(model, prompts(2), 8, seed=0)                                   # warm-up
    lines = [f"# sample.py benchmark: {os.path.basename(a.config).removesuffix('.json')} ({human(model.counters()['total_params'])} params), "
             f"prompt {L} tokens, {N} new tokens, {torch.get_num_threads()} threads, "
             f"{'CUDA' if torch.cuda.is_available() else 'CPU'} (fp32, random weights)", ""]

    lines += ["| batch | absorbed cache tok/s | naive cache tok/s | absorbed / naive |", "|---:|---:|---:|---:|"]
    for B in a.batches:
        pr = prompts(B)
        t_abs = timed(lambda: generate(model, pr, N, seed=0, attn="absorbed"))
        t_nai = timed(lambda: generate(model, pr, N, seed=0, attn="naive"))
        lines.append(f"| {B} | {B * N / t_abs:,.0f} | {B * N / t_nai:,.0f} | {t_nai / t_abs:.2f}x |")
        print(lines[-1], flush=True)

    lines += ["", "| batch | cache (greedy) s | full recomputation s | speed-up |", "|---:|---:|---:|---:|"]
    for B in a.recompute_batches:
        pr = prompts(B)
        t_cache = timed(lambda: generate(model, pr, N, temperature=0))
        t_full = timed(lambda: generate_recompute(model, pr, N))
        lines.append(f"| {B} | {t_cache:.2f} | {t_full:.2f} | {t_full / t_cache:.1f}x |")
        print(lines[-1], flush=True)

    lines += ["", "| config | KV bytes/token naive | absorbed | ratio |", "|---|---:|---:|---:|"]
    for name, dtype_bytes in (("toy", 4), ("v3-671b", 2)):
        cfg = ModelArgs.from_json(os.path.join(ROOT, "configs", f"{name}.json"))
        with torch.device("meta"):
            c = Transformer(cfg).counters(dtype_bytes=dtype_bytes)
        nv, ab = c["kv_bytes_per_token_naive"], c["kv_bytes_per_token_absorbed"]
        lines.append(f"| {name} ({'fp32' if dtype_bytes == 4 else 'bf16'}, {cfg.n_layers} layers) | "
                     f"{nv:,} | {ab:,} | {nv / ab:.1f}x |")

    table = "\n".join(lines)
    print("\n" + table)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(table + "\n")
        print(f"\nwrote {a.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
