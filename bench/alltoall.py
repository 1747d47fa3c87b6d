"""Expert parallelism's exchanges against its expert compute: one MoE layer's routed experts, ep.py's dispatch and
combine (all_to_all_single) timed beside the local grouped GEMM (kernels.moe_ffn), at the toy's and DeepSeek-V2-Lite's
MoE layer shapes.

    torchrun --nproc_per_node=2 bench/alltoall.py                        # CPU: gloo, every rank one thread
    torchrun --nproc_per_node=2 bench/alltoall.py --out bench/results/alltoall_cpu.md
    torchrun --nproc_per_node=8 bench/alltoall.py --shapes v2-lite --tokens 8192   # GPUs: nccl, bf16 (not run here)

Each rank holds E/ep experts (ep = the number of processes) and N tokens routed uniformly at random to K distinct
experts each (a balanced router; the aux-loss-free bias aims for it). Timed per layer forward, the slowest rank
counted (a collective waits for the last rank), median of --iters after --warmup:
  dispatch   counts exchange + token rows to the experts' ranks   (ep.dispatch)
  experts    the rows received through the local experts          (kernels.moe_ffn, weight 1)
  combine    outputs back + weighted sum per token                 (ep.combine)
  no-EP      the same N tokens through ALL E experts on one rank (what data parallelism computes per rank)
The bytes a rank sends to OTHER ranks per layer are N K D (ep-1)/ep rows each way (dispatch + combine).
Routing (the gate) and the shared experts are left out: they are the same with and without EP.
"""
import argparse
import os
import sys
import time
from types import SimpleNamespace

import torch
import torch.distributed as tdist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ep  # noqa: E402
import kernels  # noqa: E402
from common import cleanup_distributed, print0, setup_distributed  # noqa: E402
from config import load_config  # noqa: E402

DEFAULT_TOKENS = {"toy": 2048, "v2-lite": 512}   # tokens per rank on CPU (V2-Lite's experts: 1.1 GB per rank at ep 2)


def timed(fn, sync, iters, warmup):
    """Median seconds of fn() over iters runs; every rank starts together, the slowest rank's time is kept."""
    out, times = None, []
    for i in range(warmup + iters):
        if tdist.is_initialized():
            tdist.barrier()
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        if tdist.is_initialized():
            tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        if i >= warmup:
            times.append(float(t))
    return sorted(times)[len(times) // 2], out


def bench_shape(name, model, n_tokens, d, mesh, dtype, iters, warmup):
    D, I, E, K = model["dim"], model["moe_inter_dim"], model["n_routed_experts"], model["n_activated_experts"]
    world = d.world_size
    if E % world:
        raise SystemExit(f"error: {name}: {world} processes do not divide its {E} experts")
    n_local = E // world
    g = torch.Generator().manual_seed(d.rank)
    x = torch.randn(n_tokens, D, generator=g).to(d.device, dtype)
    idx = torch.rand(n_tokens, E, generator=g).topk(K, dim=-1).indices.to(d.device)     # K distinct experts
    weights = torch.rand(n_tokens, K, generator=g).to(d.device)
    w1, w3 = (torch.randn(n_local, D, I, generator=g).to(d.device, dtype) * D ** -0.5 for _ in range(2))
    w2 = torch.randn(n_local, I, D, generator=g).to(d.device, dtype) * I ** -0.5
    sync = (lambda: torch.cuda.synchronize(d.device)) if d.device.type == "cuda" else (lambda: None)
    row = {"shape": name, "D x I": f"{D} x {I}", "E, K": f"{E}, top-{K}", "tokens/rank": n_tokens}
    with torch.no_grad():
        if world > 1:
            m = SimpleNamespace(ep_group=mesh.get_group("expert"), ep_size=world, n_local=n_local)
            t_disp, (rows, local, plan) = timed(lambda: ep.dispatch(x, idx, m), sync, iters, warmup)
            ones = torch.ones(rows.shape[0], 1, device=d.device)
            t_exp, y = timed(lambda: kernels.moe_ffn(rows, local[:, None], ones, w1, w3, w2), sync, iters, warmup)
            t_comb, _ = timed(lambda: ep.combine(y, weights, plan, n_tokens), sync, iters, warmup)
            sent = sum(plan[1]) - plan[1][d.rank]                                # rows to other ranks
            sent_t = torch.tensor([sent], dtype=torch.float64)
            tdist.all_reduce(sent_t)
            row.update({"dispatch ms": t_disp * 1e3, "experts ms": t_exp * 1e3, "combine ms": t_comb * 1e3,
                        "exchange share": (t_disp + t_comb) / (t_disp + t_exp + t_comb),
                        "MB sent/rank (both ways)": 2 * float(sent_t) / world * D * x.element_size() / 1e6})
        # no EP: the same tokens through all E experts on this rank (local weights repeated: same shapes and cost)
        reps = world
        W1, W3, W2 = (w.repeat(reps, 1, 1) for w in (w1, w3, w2))
        t_full, _ = timed(lambda: kernels.moe_ffn(x, idx, weights, W1, W3, W2), sync, iters, warmup)
        row["no-EP ms"] = t_full * 1e3
    return row


def table(rows, d, dtype, threads) -> str:
    cols = ["shape", "D x I", "E, K", "tokens/rank", "dispatch ms", "experts ms", "combine ms", "exchange share",
            "MB sent/rank (both ways)", "no-EP ms"]
    backend = tdist.get_backend() if tdist.is_initialized() else "none"
    head = (f"ep = {d.world_size} processes on {d.device.type} ({backend}), {dtype}, {threads} thread(s) per rank; "
            f"forward of one MoE layer's routed experts, median, slowest rank\n\n")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "-")
            cells.append(f"{v:.0%}" if c == "exchange share" and v != "-" else
                         f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nPer rank, EP runs about as many (token, expert) rows through its experts as no EP does (N K when the\n"
            "routing is balanced), on E/ep experts instead of E: what EP saves is expert memory, what it adds is the\n"
            "exchange. Produced by `torchrun --nproc_per_node=2 bench/alltoall.py --out FILE`. GPU (nccl, bf16)\n"
            "numbers are not measured: the script runs there unchanged, but no GPU was available.\n")
    return head + "\n".join(lines) + "\n" + (note if d.device.type == "cpu" else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="toy,v2-lite", help="config presets whose MoE layer shape to time")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per rank (default: toy 2048, v2-lite 512)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the table (markdown) to this file, from rank 0")
    a = ap.parse_args(argv)
    d = setup_distributed()
    threads = torch.get_num_threads()
    dtype = torch.bfloat16 if d.device.type == "cuda" else torch.float32
    mesh = ep.init_mesh(d.world_size, d.world_size, d.device.type) if d.world_size > 1 else None
    rows = []
    for name in a.shapes.split(","):
        model = load_config(name)["model"]
        rows.append(bench_shape(name, model, a.tokens or DEFAULT_TOKENS.get(name, 1024), d, mesh, dtype, a.iters,
                                a.warmup))
    out = table(rows, d, dtype, threads)
    print0(out)
    if a.out and d.is_main:
        with open(a.out, "w") as f:
            f.write(out)
    cleanup_distributed()


if __name__ == "__main__":
    main()
