"""Where one GRPO step's time goes: rollout (sampling + scoring), old/ref logprobs, and the update.

    python bench/grpo.py                                   # toy config; the toy base model if it was trained
    python bench/grpo.py --ckpt runs/toy/pretrain/model.pt --steps 3 --group-size 8 --prompts 8
    python bench/grpo.py --out bench/results/grpo_cpu.md   # rewrite the committed result

Uses the zero stage's settings from the config (group size, prompts per step, max new tokens) unless
overridden, the R1-Zero template and the rule rewards (accuracy + format). Random weights are used when no
checkpoint exists (the rollout then runs to max_new_tokens: an upper bound on the sampling time).
Prints a markdown table (median over steps after one warm-up step); --out also writes it to a file (the
committed bench/results/ files change only when asked to).
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import tokenizer  # noqa: E402
import grpo  # noqa: E402
from checkpoint import build_model_from_checkpoint  # noqa: E402
from common import run_cli  # noqa: E402
from config import load_config  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402
from rewards import accuracy_reward, format_reward  # noqa: E402


def shown_path(path: str) -> str:
    """A path as it may appear in a committed result: relative to the repository, or its last four parts (a
    run folder's runs/<name>/<stage>/model.pt), never this machine's absolute path."""
    full = os.path.abspath(path)
    if full.startswith(ROOT + os.sep):
        return os.path.relpath(full, ROOT)
    return os.path.join(*full.split(os.sep)[-4:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="toy", help="preset name in configs/ or a JSON path (as train_pipeline.py)")
    ap.add_argument("--ckpt", default=os.path.join(ROOT, "runs", "toy", "pretrain", "model.pt"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--prompts", type=int, default=None, help="questions per step")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the table to this file (default: print it only)")
    a = ap.parse_args(argv)
    cfg = load_config(a.config)
    z = dict(cfg["zero"])
    z.update({k: v for k, v in (("group_size", a.group_size), ("prompts_per_step", a.prompts),
                                ("max_new_tokens", a.max_new_tokens)) if v})
    gcfg = grpo.GRPOConfig(**{k: v for k, v in z.items() if k in grpo.GRPOConfig.__dataclass_fields__})
    tok = tokenizer.get_tokenizer(cfg.get("tokenizer", "toy"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if os.path.exists(a.ckpt):
        policy, _ = build_model_from_checkpoint(a.ckpt, device)
        ref, _ = build_model_from_checkpoint(a.ckpt, device)
        source = shown_path(a.ckpt)
    else:
        margs = ModelArgs(**{**cfg["model"], "vocab_size": tok.vocab_size})
        policy, ref = Transformer(margs).to(device), Transformer(margs).to(device)
        source = "random weights"
    ref.eval().requires_grad_(False)
    opt = grpo.make_optimizer(policy, gcfg)
    pool = data.make_tasks("arith", 200, seed=0) + data.make_tasks("countdown", 200, seed=0)
    reward = {"accuracy": (accuracy_reward, 1.0), "format": (format_reward, 1.0)}
    rows = []
    for step in range(a.steps + 1):
        tasks = pool[step * gcfg.prompts_per_rollout:(step + 1) * gcfg.prompts_per_rollout]
        m = grpo.grpo_step(policy, ref, opt, tasks, reward, tok, gcfg, step)
        if step:                                             # step 0 warms up allocations and caches
            rows.append(m)

    def med(key):
        v = sorted(r[key] for r in rows)
        return v[len(v) // 2]

    total = med("step_time")
    parts = [("rollout: sampling", med("time_generate")), ("rollout: rewards", med("time_reward")),
             ("old/ref logprobs", med("time_logprobs")), ("update (fwd + bwd + step)", med("time_update"))]
    lines = [f"GRPO step on {device.type} ({torch.get_num_threads()} threads), model: {source}",
             f"G={gcfg.group_size}, {gcfg.prompts_per_rollout} questions, max_new_tokens={gcfg.max_new_tokens}, "
             f"mean completion {med('response_length'):.0f} tokens", "",
             "| phase | seconds | share |", "|---|---|---|"]
    lines += [f"| {name} | {t:.2f} | {100 * t / total:.0f}% |" for name, t in parts]
    lines += [f"| whole step | {total:.2f} | 100% |", "",
              f"tokens/s (all tokens of all rows / step time): {med('tokens_per_s'):,.0f}; "
              f"generated tokens/s during sampling: {med('gen_tokens_per_s'):,.0f}"]
    print("\n".join(lines))
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
