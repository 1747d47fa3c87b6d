"""Training throughput and MFU of a config's model, against this machine's measured matmul peak.

    python bench/train.py                                  # toy config, the pretraining batch shape
    python bench/train.py --config toy --batch-size 16 --seq-len 256 --steps 10
    python bench/train.py --precision fp32                 # bf16 autocast off (default "auto": see common.autocast)
    python bench/train.py --out bench/results/train_cpu_bf16.md   # rewrite a committed result
    python bench/train.py --profile                        # + torch.profiler's top ops of one step (self CPU)

MFU = (train FLOPs per token, from model.counters: 6 x active params + attention) x tokens/s / peak FLOP/s,
where the peak is the best timed square matmul (common.get_peak_flops) in the dtype the matmuls run in (bf16
under autocast, else fp32). Data are random tokens: the cost of a step does not depend on them. Prints a
markdown table; --out also writes it to a file (the committed bench/results/ files change only when asked to).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import autocast, cpuinfo, get_peak_flops, run_cli, uses_bf16  # noqa: E402
from config import load_config  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402
from sft import SFTConfig, make_optimizer  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="toy", help="preset name in configs/ or a JSON path (as train_pipeline.py)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's pretrain batch_size")
    ap.add_argument("--seq-len", type=int, default=None, help="default: the config's pretrain seq_len")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", default="auto", help="auto | bf16 | fp32 (common.autocast)")
    ap.add_argument("--vocab-size", type=int, default=None, help="default: the toy tokenizer's size if present")
    ap.add_argument("--out", default=None, help="also write the table to this file (default: print it only)")
    ap.add_argument("--profile", action="store_true", help="after the timed steps, profile one more step and print "
                    "its top ops by self CPU time (where the step's time goes)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(a.config)
    pre = cfg.get("pretrain", {})
    B, T = a.batch_size or pre.get("batch_size", 16), a.seq_len or pre.get("seq_len", 256)
    margs = ModelArgs(**cfg["model"])
    if a.vocab_size:
        margs.vocab_size = a.vocab_size
    else:
        try:
            import tokenizer
            margs.vocab_size = tokenizer.get_tokenizer(cfg.get("tokenizer", "toy")).vocab_size
        except Exception:
            pass
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = Transformer(margs).to(device).train()
    opt = make_optimizer(model, SFTConfig())
    amp = autocast(device, a.precision)
    bf16 = uses_bf16(device, a.precision)
    x = torch.randint(0, margs.vocab_size, (B, T + 1), device=device)
    def train_step():
        with amp:
            _, loss, _ = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_bias()
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        train_step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    if a.profile:
        from torch.profiler import profile
        with profile() as prof:
            train_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    c = model.counters(seq_len=T)
    step = sorted(times)[len(times) // 2]                       # median step time
    tok_s = B * T / step
    peak = get_peak_flops(device, dtype=torch.bfloat16 if bf16 else torch.float32)
    achieved = c["train_flops_per_token"] * tok_s
    rows = [("device", f"{device.type}: {cpuinfo('model name') or 'unknown CPU'} ({torch.get_num_threads()} threads)" if device.type == "cpu"
             else torch.cuda.get_device_name()),
            ("config", os.path.basename(a.config).removesuffix(".json")), ("matmul dtype", "bf16 (autocast)" if bf16 else "fp32"), ("batch x seq_len", f"{B} x {T}"),
            ("params total / active", f"{c['total_params'] / 1e6:.2f}M / {c['active_params'] / 1e6:.2f}M"),
            ("train FLOPs/token", f"{c['train_flops_per_token'] / 1e6:.1f}M"),
            ("step time (median)", f"{step * 1e3:.0f} ms"), ("tokens/s", f"{tok_s:,.0f}"),
            ("achieved", f"{achieved / 1e9:.1f} GFLOP/s"), ("measured matmul peak", f"{peak / 1e9:.1f} GFLOP/s"),
            ("MFU", f"{100 * achieved / peak:.1f}%")]
    table = "| quantity | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(table + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
