"""Worker for tests/test_sft.py: a few steps of sft.train on a tiny model and synthetic masked rows.

    torchrun --standalone --nproc_per_node=2 tests/sft_dist_worker.py OUT_DIR
Rank 0 saves OUT_DIR/result.pt = {"losses": [...], "state": final weights}. The test runs the same function
in one process and compares.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sft  # noqa: E402
from common import cleanup_distributed, setup_distributed, unwrap, wrap_model  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402

TINY = dict(vocab_size=64, dim=32, inter_dim=64, moe_inter_dim=32, n_layers=2, n_dense_layers=1, n_heads=2,
            n_routed_experts=4, n_shared_experts=1, n_activated_experts=2, n_expert_groups=2, n_limited_groups=1,
            kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, max_seq_len=64)


def rows(n=24, seq_len=16, seed=0):
    """Synthetic SFT rows: a 'prompt' prefix of random length without loss, then completion tokens with loss,
    so ranks and micro-batches hold different numbers of target tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (n, seq_len + 1), generator=g)
    starts = torch.randint(1, seq_len, (n, 1), generator=g)
    m = torch.arange(seq_len + 1)[None, :] >= starts
    return x, m


def run(dist, out_dir, steps=4, resume=False, **cfg_kw):
    torch.manual_seed(0)
    model = wrap_model(Transformer(ModelArgs(**TINY)), dist)
    x, m = rows()
    # fp32: the 1-vs-2-process equality is exact math; bf16 autocast rounds differently per batch split
    cfg = sft.SFTConfig(steps=steps, batch_size=8, grad_accum=2, seq_len=16, lr=1e-2, warmup=2, log_every=1,
                        ckpt_every=3, precision="fp32", **cfg_kw)
    sft.train(model, x, m, cfg, dist, out_dir, resume=resume)
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        losses = {r["step"]: r["loss"] for r in map(json.loads, f)}
    return {"losses": [losses[s] for s in sorted(losses)], "state": unwrap(model).state_dict()}


if __name__ == "__main__":
    d = setup_distributed()
    res = run(d, sys.argv[1])
    if d.is_main:
        torch.save(res, os.path.join(sys.argv[1], "result.pt"))
    cleanup_distributed()
