"""Kernel benchmark: each op of kernels.py, Triton vs the torch reference vs torch.compile(reference), and the
memory of the chunked per-token logprob op (the one that dominates GRPO's memory) against log_softmax + gather.

    python bench/kernels.py                  # CUDA: full sweep (do_bench); CPU: torch paths + the memory table
    python bench/kernels.py --no-compile     # skip torch.compile (tens of seconds to compile each op on a CPU)
    python bench/kernels.py --quick          # one size per op, memory table at V = 32k only
    python bench/kernels.py --out bench/results   # rewrite the committed kernels_{cuda,cpu}.md and .png

Prints markdown tables; --out DIR also writes them to DIR/kernels_{cuda,cpu}.md with a plot, kernels_{cuda,cpu}.png
(the committed bench/results/ files change only when asked to).

What to compare against, on a GPU: the torch reference in eager mode is the baseline; torch.compile(reference)
is the "free" fusion a user gets without writing kernels; Triton should beat the first everywhere and match or
beat the second, by the most on the memory-bound ops (rms_norm, swiglu, rope, token_logprobs, grpo loss) and on
the ops where the reference materialises a big intermediate (attention's (T, S) scores, logprobs' (N, V)
log-softmax). GB/s counts the bytes an ideal kernel must move (inputs read once, outputs written once); TFLOP/s
counts the matmul flops (causal attention: half of the full square). H100 SXM peaks: ~3.35 TB/s HBM3, ~990
TFLOP/s dense bf16.

Without a GPU the Triton kernels only run in the interpreter (far too slow to time), so the CPU run times the
torch paths alone and says so. The memory table is the CPU-measurable claim: peak bytes of a fresh process
running the op (Linux VmHWM, reset via /proc/self/clear_refs after the inputs are built), minus the bytes alive
before the op, for B*T = 8192 tokens at V = 32k, 64k, 128k.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # before bench/ (this file's directory): `import kernels` must find ROOT/kernels.py
# CPU: torch.compile's generated code runs its own OpenMP thread pool, whose threads spin after each parallel
# region and starve eager torch's many small ops on a small machine (the chunked logprob path measured 10-100x
# slower after a compile). Passive waiting removes that artefact; it must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import kernels  # noqa: E402

GiB = 2 ** 30


# ----------------------------------------------------------------------------------------------------------------
# Timing
def bench_ms(fn, cuda: bool, reps: int = 7) -> float:
    """CUDA: triton.testing.do_bench (median of many runs). CPU: best of `reps` after a warm-up (the minimum is the
    estimate least disturbed by the other processes of a shared machine)."""
    if cuda:
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100)
    fn()                                                    # warm-up (and torch.compile's compilation)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def fwd_bwd(f, make_args, n_diff):
    """A closure running f forward and backward on fresh leaves (the first n_diff args differentiable)."""
    args = make_args()
    leaves = [a.detach().requires_grad_() if i < n_diff else a for i, a in enumerate(args)]
    out = f(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    gouts = [torch.randn_like(o) for o in outs]

    def run():
        for x in leaves[:n_diff]:
            x.grad = None
        o = f(*leaves)
        torch.autograd.backward([t for t in (o if isinstance(o, tuple) else (o,)) if t.requires_grad],
                                [g for t, g in zip(o if isinstance(o, tuple) else (o,), gouts) if t.requires_grad])
    return run


# ----------------------------------------------------------------------------------------------------------------
# The ops: inputs, the paths to compare, and the work counted (bytes moved or matmul flops).
def cases(device, dtype, quick):
    """-> list of dicts: name, size label, make() -> args, n_diff (differentiable leading args), impls
    {label: fn}, fwd_work, bwd_work, unit ("GB/s" or "TFLOP/s")."""
    cpu = device.type == "cpu"
    el = torch.tensor([], dtype=dtype).element_size()

    def rnd(*shape, dt=dtype, scale=1.0):
        return lambda: (torch.randn(*shape, device=device) * scale).to(dt)

    out = []

    def add(name, size, make, n_diff, impls, fwd_work, bwd_work, unit):
        out.append(dict(name=name, size=size, make=make, n_diff=n_diff, impls=impls, fwd_work=fwd_work,
                        bwd_work=bwd_work, unit=unit))

    # 1. rms_norm: bytes = read x + write y (fwd); read x, dy + write dx (bwd)
    for M, D in ([(4096, 1024)] if cpu else [(8192, 512), (8192, 1536), (8192, 7168)])[: 1 if quick else None]:
        add("rms_norm", f"{M}x{D}", lambda M=M, D=D: (rnd(M, D)(), rnd(D)()), 2,
            dict(triton=kernels.rms_norm, ref=kernels.rms_norm_ref), 2 * M * D * el, 3 * M * D * el, "GB/s")
    # 2. swiglu
    for n in ([1 << 22] if cpu else [1 << 20, 1 << 24, 1 << 26])[: 1 if quick else None]:
        add("swiglu", f"{n:,}", lambda n=n: (rnd(n)(), rnd(n)()), 2,
            dict(triton=kernels.swiglu, ref=kernels.swiglu_ref), 3 * n * el, 5 * n * el, "GB/s")
    # 3. apply_rope on the decoupled rope dims (R = 64 as in V3)
    for B, T, H in ([(4, 512, 16)] if cpu else [(4, 4096, 128), (8, 4096, 128)])[: 1 if quick else None]:
        def make(B=B, T=T, H=H):
            ang = torch.rand(B, T, 32, device=device) * 100
            return rnd(B, T, H, 64)(), ang.cos(), ang.sin()
        nb = B * T * H * 64 * el
        add("apply_rope", f"B{B} T{T} H{H} R64", make, 1, dict(triton=kernels.apply_rope, ref=kernels.apply_rope_ref),
            2 * nb, 2 * nb, "GB/s")
    # 4. token_logprobs (fp32 logits, as model.py returns them), with the chunked torch path as a third impl
    for N, V in ([(1024, 32768)] if cpu else [(8192, 32768), (8192, 65536), (8192, 131072)])[: 1 if quick else None]:
        def make(N=N, V=V):
            return rnd(N, V, dt=torch.float32, scale=3.0)(), torch.randint(0, V, (N,), device=device)
        nb = N * V * 4
        add("token_logprobs", f"N{N} V{V // 1024}k", make, 1,
            dict(triton=kernels.token_logprobs, ref=kernels.token_logprobs_ref,
                 chunked_torch=kernels._token_logprobs_chunked), nb, 2 * nb, "GB/s")
    # 5. grpo_token_loss (k3 KL, clip-higher eps)
    for N, V in ([(1024, 32768)] if cpu else [(8192, 65536)]):
        def make(N=N, V=V):
            z = torch.randn(N, device=device)
            return (rnd(N, V, dt=torch.float32, scale=3.0)(), torch.randint(0, V, (N,), device=device),
                    z - 10, z - 10.1, torch.randn(N, device=device))
        nb = N * V * 4

        def tri(lg, t, o, r, a):
            return kernels.grpo_token_loss(lg, t, o, r, a, 0.2, 0.28, 0.001)

        def ref(lg, t, o, r, a):
            return kernels.grpo_token_loss_ref(lg, t, o, r, a, 0.2, 0.28, 0.001)

        def chunked(lg, t, o, r, a):   # the CPU default path: chunked logprobs, then the formula in torch
            logp = kernels._token_logprobs_chunked(lg, t)
            return kernels._grpo_formula(logp, o, r, a, 0.2, 0.28, 0.001)
        add("grpo_token_loss", f"N{N} V{V // 1024}k", make, 1, dict(triton=tri, ref=ref, chunked_torch=chunked),
            nb, 2 * nb, "GB/s")
    # 6. causal attention with MLA head dims (192 qk, 128 v): flops = 2 B H T^2/2 (Dqk + Dv) fwd; bwd recomputes
    #    the scores and adds dp, dv, dk, dq: 2 B H T^2/2 (3 Dqk + 2 Dv)
    for B, T, H in ([(1, 512, 8)] if cpu else [(4, 1024, 16), (4, 2048, 16), (2, 4096, 16)])[: 1 if quick else None]:
        Dqk, Dv = 192, 128
        fl = 2 * B * H * T * T / 2
        add("attention", f"B{B} T{T} H{H} 192/128", lambda B=B, T=T, H=H: (
            rnd(B, T, H, Dqk)(), rnd(B, T, H, Dqk)(), rnd(B, T, H, Dv)()), 3,
            dict(triton=lambda q, k, v: kernels.attention(q, k, v, Dqk ** -0.5),
                 ref=lambda q, k, v: kernels.attention_ref(q, k, v, Dqk ** -0.5)),
            fl * (Dqk + Dv), fl * (3 * Dqk + 2 * Dv), "TFLOP/s")
    # 7. mla_decode over the latent cache (C = 512, R = 64, 128 heads as V3): bytes = the cache read once
    for B, S in ([(8, 2048)] if cpu else [(64, 1024), (64, 4096), (16, 16384)])[: 1 if quick else None]:
        H, C, R = (16 if cpu else 128), 512, 64
        add("mla_decode", f"B{B} S{S} H{H}", lambda B=B, S=S, H=H: (
            rnd(B, H, C)(), rnd(B, H, R)(), rnd(B, S, C + R)(),
            torch.full((B,), S, device=device), 0.07), 0,
            dict(triton=kernels.mla_decode, ref=kernels.mla_decode_ref), B * S * (C + R) * el, None, "GB/s")
    # 8. moe_ffn: 3 GEMMs of 2 N K D I flops forward, twice that backward
    for N, D, I, E, K in ([(2048, 256, 128, 16, 4)] if cpu else [(8192, 2048, 1408, 64, 6),
                                                                 (4096, 7168, 2048, 64, 8)])[: 1 if quick else None]:
        def make(N=N, D=D, I=I, E=E, K=K):
            idx = torch.rand(N, E, device=device).topk(K, dim=-1).indices
            return (rnd(N, D)(), rnd(N, K, dt=torch.float32)().abs(), rnd(E, D, I, scale=D ** -0.5)(),
                    rnd(E, D, I, scale=D ** -0.5)(), rnd(E, I, D, scale=I ** -0.5)(), idx)
        fl = 3 * 2 * N * K * D * I
        add("moe_ffn", f"N{N} D{D} I{I} E{E} K{K}", make, 5,
            dict(triton=lambda x, w, w1, w3, w2, idx: kernels.moe_ffn(x, idx, w, w1, w3, w2),
                 ref=lambda x, w, w1, w3, w2, idx: kernels.moe_ffn_ref(x, idx, w, w1, w3, w2)), fl, 2 * fl, "TFLOP/s")
    return out


def run_timings(device, dtype, compile_ref, quick):
    cuda = device.type == "cuda"
    rows = []
    for c in cases(device, dtype, quick):
        impls = dict(c["impls"])
        if not cuda:
            impls.pop("triton")        # the interpreter is a correctness tool, not a timing target
        if compile_ref:
            impls["compile(ref)"] = torch.compile(c["impls"]["ref"])
        for label, f in impls.items():
            r = dict(op=c["name"], size=c["size"], impl=label, unit=c["unit"])
            try:
                args = c["make"]()
                r["fwd_ms"] = bench_ms(lambda: f(*args), cuda)
                if c["bwd_work"] is not None and c["n_diff"]:
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                        base = torch.cuda.memory_allocated()
                    r["fwdbwd_ms"] = bench_ms(fwd_bwd(f, c["make"], c["n_diff"]), cuda)
                    if cuda:
                        r["peak_GiB"] = (torch.cuda.max_memory_allocated() - base) / GiB
            except Exception as e:     # e.g. torch.compile failing on this platform: say so in the table
                r["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
            scale = 1e-9 if c["unit"] == "GB/s" else 1e-12
            if "fwd_ms" in r:
                r["fwd_rate"] = c["fwd_work"] * scale / (r["fwd_ms"] * 1e-3)
            if "fwdbwd_ms" in r:
                r["fwdbwd_rate"] = (c["fwd_work"] + c["bwd_work"]) * scale / (r["fwdbwd_ms"] * 1e-3)
            rows.append(r)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Memory of the per-token logprob op at GRPO scale, on CPU: one fresh process per measurement.
def _status_bytes(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def mem_child(impl, N, V, mode):
    """Runs in a child process: build the inputs, reset the high-water mark, run the op, print a JSON line."""
    torch.manual_seed(0)
    logits = torch.randn(N, V) * 3
    targets = torch.randint(0, V, (N,))
    f = {"naive": kernels.token_logprobs_ref,
         "chunked": kernels._token_logprobs_chunked}[impl]
    if mode == "train":
        logits.requires_grad_()
    base = _status_bytes("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")           # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    if mode == "fwd":
        with torch.no_grad():                                 # old / reference policy logprobs
            logp = f(logits, targets)
        held = 0
    else:
        logp = f(logits, targets)
        held = _status_bytes("VmRSS") - base                  # alive between forward and backward
        logp.sum().backward()
    secs = time.perf_counter() - t0
    peak = _status_bytes("VmHWM") - base
    rows = torch.arange(0, N, max(1, N // 64))              # a sample of gradient rows for the equality check
    check = dict(logp=logp.detach().tolist()[:256], grad=logits.grad[rows, :4096].tolist() if mode == "train" else None)
    print(json.dumps(dict(impl=impl, N=N, V=V, mode=mode, peak=peak, held=held, secs=secs, check=check)))


def run_memory(Vs, N_want):
    avail = _status_bytes_meminfo("MemAvailable")
    rows = []
    for V in Vs:
        N = N_want
        while N > 256 and N * V * 4 * 5 > 0.6 * avail:   # naive training peak ~ input + 3-4 (N, V) fp32 tensors
            N //= 2
        res = {}
        for mode in ("fwd", "train"):
            for impl in ("naive", "chunked"):
                cmd = [sys.executable, os.path.abspath(__file__), "--_mem-child", impl, str(N), str(V), mode]
                env = dict(os.environ, OMP_NUM_THREADS="2", MALLOC_MMAP_THRESHOLD_=str(4 << 20))
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    raise RuntimeError(f"memory child failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
                res[impl, mode] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"V={V} N={N} {impl:7s} {mode:5s} peak {res[impl, mode]['peak'] / GiB:.3f} GiB "
                      f"({res[impl, mode]['secs']:.1f}s)", flush=True)
        diff_v = max_abs_diff(res["naive", "train"]["check"]["logp"], res["chunked", "train"]["check"]["logp"])
        diff_g = max_abs_diff(res["naive", "train"]["check"]["grad"], res["chunked", "train"]["check"]["grad"])
        rows.append(dict(V=V, N=N, input=N * V * 4, res=res, diff_logp=diff_v, diff_grad=diff_g))
    return rows


def _status_bytes_meminfo(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/meminfo").read()).group(1)) * 1024


def max_abs_diff(a, b):
    ta, tb = torch.tensor(a), torch.tensor(b)
    return (ta - tb).abs().max().item()


def cuda_memory(Vs, N):
    """On CUDA: peak allocated bytes of forward+backward (and forward alone) for naive / chunked torch / Triton."""
    rows = []
    dev = torch.device("cuda")
    impls = dict(naive=kernels.token_logprobs_ref, triton=kernels.token_logprobs,
                 chunked=kernels._token_logprobs_chunked)
    for V in Vs:
        row = dict(V=V, N=N, input=N * V * 4)
        for name, f in impls.items():
            for mode in ("fwd", "train"):
                logits = torch.randn(N, V, device=dev) * 3
                targets = torch.randint(0, V, (N,), device=dev)
                logits.requires_grad_(mode == "train")
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                if mode == "fwd":
                    with torch.no_grad():
                        f(logits, targets)
                else:
                    f(logits, targets).sum().backward()
                torch.cuda.synchronize()
                row[name, mode] = torch.cuda.max_memory_allocated() - base
                del logits, targets
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Report
def fmt(x, nd=2):
    return "-" if x is None else f"{x:,.{nd}f}"


def timing_table(rows, cuda):
    lines = ["| op | size | impl | fwd ms | fwd rate | fwd+bwd ms | fwd+bwd rate |" + (" peak GiB |" if cuda else ""),
             "|---|---|---|---:|---:|---:|---:|" + ("---:|" if cuda else "")]
    for r in rows:
        if "error" in r and "fwd_ms" not in r:
            lines.append(f"| {r['op']} | {r['size']} | {r['impl']} | {r['error']} | | | |" + (" |" if cuda else ""))
            continue
        unit = r["unit"]
        lines.append(f"| {r['op']} | {r['size']} | {r['impl']} | {fmt(r.get('fwd_ms'), 3)} | "
                     f"{fmt(r.get('fwd_rate'))} {unit} | {fmt(r.get('fwdbwd_ms'), 3)} | "
                     f"{fmt(r.get('fwdbwd_rate'))} {unit if 'fwdbwd_rate' in r else ''} |"
                     + (f" {fmt(r.get('peak_GiB'), 3)} |" if cuda else ""))
    return lines


def memory_table(mem):
    lines = ["| V | tokens | logits (fp32) | fwd peak naive | fwd peak chunked | ratio | held for bwd naive | "
             "held chunked | fwd+bwd peak naive | fwd+bwd peak chunked | ratio | fwd+bwd ratio without the (N, V) "
             "gradient | max abs diff logp / grad |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for m in mem:
        r = m["res"]
        g = lambda impl, mode, k="peak": r[impl, mode][k] / GiB   # noqa: E731
        grad = m["input"] / GiB          # the (N, V) fp32 gradient autograd hands back: the floor of any version
        lines.append(
            f"| {m['V'] // 1024}k | {m['N']} | {grad:.2f} GiB | {g('naive', 'fwd'):.3f} GiB"
            f" | {g('chunked', 'fwd'):.3f} GiB | {g('naive', 'fwd') / max(g('chunked', 'fwd'), 1e-9):.1f}x"
            f" | {g('naive', 'train', 'held'):.3f} GiB | {g('chunked', 'train', 'held'):.3f} GiB"
            f" | {g('naive', 'train'):.3f} GiB | {g('chunked', 'train'):.3f} GiB"
            f" | {g('naive', 'train') / g('chunked', 'train'):.2f}x"
            f" | {(g('naive', 'train') - grad) / max(g('chunked', 'train') - grad, 1e-9):.1f}x"
            f" | {m['diff_logp']:.1e} / {m['diff_grad']:.1e} |")
    return lines


def plot(rows, mem, path, cuda):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    ax = axes[0]
    if mem:
        Vs = [f"V {m['V'] // 1024}k\n{m['N']} tokens" for m in mem]
        x = range(len(mem))
        series = [("naive fwd", "naive", "fwd"), ("chunked fwd", "chunked", "fwd"),
                  ("naive fwd+bwd", "naive", "train"), ("chunked fwd+bwd", "chunked", "train")]
        w = 0.2
        for i, (lab, impl, mode) in enumerate(series):
            vals = [(m["res"][impl, mode]["peak"] if "res" in m else m[impl, mode]) / GiB for m in mem]
            ax.bar([j + (i - 1.5) * w for j in x], vals, w, label=lab)
        ax.plot(list(x), [m["input"] / GiB for m in mem], "k_", markersize=30, label="one (N, V) fp32 tensor")
        ax.set_xticks(list(x), Vs)
        ax.set_ylabel("peak GiB above the inputs")
        ax.set_title("token_logprobs memory: naive log_softmax+gather vs chunked")
        ax.legend()
    ax = axes[1]
    base = {(r["op"], r["size"]): r for r in rows if r["impl"] == "ref" and "fwd_ms" in r}
    labels, groups = [], {}
    for r in rows:
        key = (r["op"], r["size"])
        if key not in base or "fwd_ms" not in r:
            continue
        t = r.get("fwdbwd_ms", r["fwd_ms"])
        t0 = base[key].get("fwdbwd_ms", base[key]["fwd_ms"])
        lab = f"{r['op']}\n{r['size']}"
        if lab not in labels:
            labels.append(lab)
        groups.setdefault(r["impl"], {})[lab] = t0 / t
    w = 0.8 / max(1, len(groups))
    for i, (impl, d) in enumerate(groups.items()):
        ax.bar([j + i * w for j in range(len(labels))], [d.get(lab, 0) for lab in labels], w, label=impl)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(labels))], labels, rotation=60, fontsize=7, ha="right")
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set_ylabel("speed-up over eager reference (fwd+bwd where it exists)")
    ax.set_title(("CUDA" if cuda else "CPU, torch paths only") + ": speed-up vs reference")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    # the whole docstring: its first line alone stops mid-sentence
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    p.add_argument("--quick", action="store_true", help="one size per op, memory table at V = 32k only")
    p.add_argument("--tokens", type=int, default=8192, help="B*T for the logprob memory table")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default=None, metavar="DIR", help="also write kernels_<device>.md and .png to DIR "
                   "(default: print only)")
    p.add_argument("--_mem-child", nargs=4, metavar=("IMPL", "N", "V", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a._mem_child:
        impl, N, V, mode = a._mem_child
        return mem_child(impl, int(N), int(V), mode)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    Vs = [32768] if a.quick else [32768, 65536, 131072]
    tag = "cuda" if cuda else "cpu"
    head = [f"# bench/kernels.py on {torch.cuda.get_device_name() if cuda else 'CPU'} "
            f"(torch {torch.__version__}, {dtype} activations, fp32 logits)", ""]
    if not cuda:
        head += ["**No GPU: the Triton kernels were not timed** (on a CPU they only run in Triton's interpreter, a "
                 "correctness tool). Only the torch paths are timed: the eager reference, torch.compile(reference)"
                 " and, for token_logprobs, the chunked torch Function that is the CPU default. "
                 f"{torch.get_num_threads()} threads on a shared machine: timings are noisy, the ratios are the "
                 "point. Run this file on a CUDA machine for the Triton columns.", ""]
    print("\n".join(head), flush=True)

    mem_lines = []
    if cuda:
        mem = cuda_memory(Vs, a.tokens)
        mem_lines = ["## token_logprobs peak CUDA memory above the inputs (torch.cuda.max_memory_allocated)", "",
                     "| V | tokens | naive fwd | chunked torch fwd | Triton fwd | naive fwd+bwd | chunked fwd+bwd |"
                     " Triton fwd+bwd |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for m in mem:
            mem_lines.append(f"| {m['V'] // 1024}k | {m['N']} | " + " | ".join(
                f"{m[i, mode] / GiB:.3f} GiB" for mode in ("fwd", "train") for i in ("naive", "chunked", "triton"))
                + " |")
    else:
        mem = run_memory(Vs, a.tokens)
        mem_lines = ["## token_logprobs peak CPU memory above the inputs, fp32 logits", "",
                     "Method: a fresh process per cell builds logits (N, V) fp32 and targets, records its RSS, resets "
                     "the kernel's high-water mark (`echo 5 > /proc/self/clear_refs`), runs the op, and reports "
                     "VmHWM - RSS before: the most memory the op's allocations held at once, whatever allocated "
                     "them. glibc is told to serve every allocation of 4 MiB or more with mmap "
                     "(MALLOC_MMAP_THRESHOLD_=4194304, same for both paths) so that a freed big tensor leaves the RSS "
                     "at once instead of lingering in glibc's heap; the chunked path's 1 MiB tiles still come from "
                     "the heap (and are counted). 'fwd' = under no_grad (the old/reference-policy pass of GRPO); "
                     "'fwd+bwd' = forward, "
                     "logp.sum().backward(); 'held for bwd' = RSS growth after the forward (what waits for the "
                     "backward while the rest of the model runs). The last ratio leaves out the one (N, V) "
                     "gradient that autograd must return to the LM head, which bounds any implementation that "
                     "takes logits as input (fusing the LM head would remove it). Values and gradients are "
                     "compared between the two processes (256 logps, 64 sampled gradient rows x 4096 columns).", ""]
        mem_lines += memory_table(mem)
    print("\n".join(mem_lines), flush=True)

    rows = run_timings(device, dtype, not a.no_compile, a.quick)
    lines = head + mem_lines + ["", "## Timings", ""] + timing_table(rows, cuda)
    print("\n".join(["", "## Timings", ""] + timing_table(rows, cuda)))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, f"kernels_{tag}.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        plot(rows, mem, os.path.join(a.out, f"kernels_{tag}.png"), cuda)
        print(f"\nwrote {os.path.join(a.out, f'kernels_{tag}.md')} and .png")


if __name__ == "__main__":
    from common import run_cli
    sys.exit(run_cli(main))
