"""Data-parallel training with common.py's helpers on a tiny stand-in MoE model, for tests/test_common.py.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_worker.py OUT_DIR   # 2 ranks, gloo
    (tests/test_common.py also imports run() and runs it in one process as the reference)

The stand-in has what matters to data parallelism in minR1's Transformer, without depending on model.py:
`.layers` (an nn.ModuleList of blocks, what FSDP2 shards per block), routed experts stored as STACKED tensors
(E, D, I) of which some get no token in a step (the reason DDP could need find_unused_parameters), and per-rank
expert-load counters kept as buffers that an update_bias() all-reduces (the reason for forward_sync_buffers=False).

The optimizer is SGD with momentum and weight decay, not AdamW: Adam divides by sqrt(v) + eps, so a gradient
element that is ~0 by cancellation (seen here: 4e-9 against a median of 6e-4) has its fp32 rounding noise
turned into an lr-sized step, and 1 vs 2 processes (different summation orders) then differ by 1e-4 relative
in that element. SGD's step is linear in the gradient, so the comparison stays a test of the plumbing at fp32
tolerance. Gradient clipping is active in the first steps (norms 0.86, 0.75, 0.62 > 0.5).

For each mode ("ddp", "fsdp") rank 0 writes OUT_DIR/<mode>.pt: the global loss per step, the full final state
dict after 5 steps, whether a save at step 3 + reload + 2 steps gave bitwise the same weights, and how many
(layer, step, rank) triples had idle experts; or {"error": ...} if the mode failed.
"""
import os
import sys
import traceback

import torch
import torch.distributed as tdist
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from common import (all_reduce_mean, barrier, cleanup_distributed, get_rng_state, load_model_state_dict,  # noqa: E402
                    load_optimizer_state_dict, model_state_dict, optimizer_state_dict, set_rng_state, set_seed,
                    setup_distributed, unwrap, wrap_model)

V, D, I, E, T = 32, 16, 24, 8, 6     # vocab, width, expert hidden, experts, tokens per row
B, ACCUM, GAMMA = 8, 2, 0.01         # global batch rows, micro-steps per optimizer step, bias update speed


class Block(nn.Module):
    """x + MoE(norm(x)) with top-1 routing over E stacked experts; bias for selection only (as in V3)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.gate = nn.Linear(D, E, bias=False)
        self.w1 = nn.Parameter(torch.randn(E, D, I) / D**0.5)   # (E, D, I) stacked experts
        self.w2 = nn.Parameter(torch.randn(E, I, D) / I**0.5)   # (E, I, D)
        self.register_buffer("bias", torch.zeros(E))
        self.register_buffer("load", torch.zeros(E))           # tokens per expert since the last update_bias
        self.idle = 0                                           # forwards in which some expert got no token

    def forward(self, x):                                       # x (B, T, D)
        h = self.norm(x).flatten(0, 1)                          # (N, D)
        scores = self.gate(h).sigmoid()                         # (N, E)
        idx = (scores + self.bias).argmax(-1)                   # (N,) the bias steers selection only
        w = scores.gather(-1, idx[:, None])                     # (N, 1) the weight is the unbiased score
        counts = torch.bincount(idx, minlength=E)
        if self.training:
            self.load += counts
        self.idle += int((counts == 0).any())
        out = torch.zeros_like(h)
        for e in counts.nonzero().flatten().tolist():           # only experts with tokens are computed
            rows = (idx == e).nonzero().flatten()
            out[rows] = F.gelu(h[rows] @ self.w1[e]) @ self.w2[e]
        return x + (out * w).view_as(x)

    @torch.no_grad()
    def update_bias(self):
        if tdist.is_initialized():
            tdist.all_reduce(self.load)                         # every rank applies the same update
        self.bias += GAMMA * torch.sign(self.load.mean() - self.load)
        self.load.zero_()


class TinyMoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(D, V, bias=False)

    def forward(self, tokens, targets):
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return F.cross_entropy(self.head(x).flatten(0, 1), targets.flatten())

    def update_bias(self):
        for layer in self.layers:
            layer.update_bias()


def global_batch(step):
    """(B, T + 1) tokens of step `step`: a function of the step only, identical on every rank."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, V, (B, T + 1), generator=g)


def train_steps(model, opt, dist, steps):
    """Optimizer steps over the given step numbers; returns the global mean loss of each."""
    core = unwrap(model)
    losses = []
    for step in steps:
        batch = global_batch(step)[dist.rank::dist.world_size]  # this rank's rows of the global batch
        total = 0.0
        for rows in batch.chunk(ACCUM):
            # every micro-step's backward averages the gradients over ranks (no DDP no_sync(): that is only an
            # optimisation); so the 2nd micro-step's forward is one where DDP would re-broadcast rank 0's
            # buffers, the expert-load counts included, unless wrap_model turned that off
            loss = model(rows[:, :-1], rows[:, 1:]) / ACCUM
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)
        core.update_bias()
        losses.append(all_reduce_mean({"loss": total}, dist)["loss"])
    return losses


def run(mode, dist, ckpt_path):
    """5 steps with a checkpoint after step 3; then reload it and redo steps 4-5. Returns the results dict."""
    set_seed(0)
    model = wrap_model(TinyMoE(), dist, fsdp=mode == "fsdp")
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    losses = train_steps(model, opt, dist, range(3))
    state = {"model": model_state_dict(model), "optimizer": optimizer_state_dict(model, opt),
             "step": 3, "rng": get_rng_state()}
    if dist.is_main:
        save_checkpoint(ckpt_path, state)
    barrier(dist)
    losses += train_steps(model, opt, dist, range(3, 5))
    final = {k: v.detach().cpu().clone() for k, v in model_state_dict(model).items()}
    ck = load_checkpoint(ckpt_path)
    load_model_state_dict(model, ck["model"])
    load_optimizer_state_dict(model, opt, ck["optimizer"])
    set_rng_state(ck["rng"])
    train_steps(model, opt, dist, range(ck["step"], 5))
    again = model_state_dict(model)
    resume_equal = all(torch.equal(final[k], again[k].cpu()) for k in final)
    idle = sum(layer.idle for layer in unwrap(model).layers)
    return {"losses": losses, "state": final, "resume_equal": resume_equal, "idle": idle}


if __name__ == "__main__":
    out_dir = sys.argv[1]
    dist = setup_distributed(device="cpu")
    assert dist.world_size == 2 and tdist.is_initialized(), "launch with torchrun --nproc_per_node=2"
    for mode in ("ddp", "fsdp"):
        try:
            res = run(mode, dist, os.path.join(out_dir, f"{mode}_ckpt.pt"))
            idle = torch.tensor([res["idle"]])
            tdist.all_reduce(idle)
            res["idle"] = int(idle)
        except Exception as e:   # record it: the DDP result stays usable when FSDP2 fails
            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {e}"}
        if dist.is_main:
            torch.save(res, os.path.join(out_dir, f"{mode}.pt"))
        barrier(dist)
    cleanup_distributed()
