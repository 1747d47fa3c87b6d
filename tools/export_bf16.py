"""Ship a trained model small: a run's model.pt with its weights in bf16, without optimizer state or RNG state.

    python tools/export_bf16.py runs/toy/zero/model.pt docs/toy_run/zero/model.pt     # ~4 MB for the toy model

The copy keeps what sample.py and eval.py need (model_args, the tokenizer's name, the run's config, the step) and
records the stage (the source's folder name, e.g. "zero"), so sample.py picks the right prompt template even when
the file is moved. bf16 halves the size; sample.py and eval.py cast the weights back to fp32 on CPU. config.json
from the source folder is copied beside it.
"""
import argparse
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import load_checkpoint  # noqa: E402
from common import run_cli  # noqa: E402


def export(src: str, dst: str) -> int:
    ckpt = load_checkpoint(src)
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    out = {"model": state, "model_args": ckpt["model_args"], "step": ckpt.get("step"), "config": ckpt.get("config"),
           "tokenizer": ckpt.get("tokenizer"), "stage": os.path.basename(os.path.dirname(os.path.abspath(src)))}
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".tmp"
    torch.save(out, tmp)
    os.replace(tmp, dst)   # atomic: a half-written file never has the final name
    cfg = os.path.join(os.path.dirname(os.path.abspath(src)), "config.json")
    if os.path.exists(cfg):
        shutil.copy(cfg, os.path.join(os.path.dirname(os.path.abspath(dst)), "config.json"))
    print(f"{dst}: {sum(v.numel() for v in state.values()):,} weights in bf16, {os.path.getsize(dst) / 1e6:.1f} MB "
          f"(stage {out['stage']}, step {out['step']})")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write a bf16 copy of a run's model.pt (weights only) for shipping.")
    ap.add_argument("src", help="a model.pt written by train_pipeline.py")
    ap.add_argument("dst", help="where to write the copy")
    args = ap.parse_args(argv)
    return export(args.src, args.dst)


if __name__ == "__main__":
    sys.exit(run_cli(main))
