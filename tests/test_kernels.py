"""Triton kernels vs their plain-torch references, under Triton's CPU interpreter: forward and every gradient, at
one "nice" shape (multiples of the blocks) and one "weird" shape (odd sizes) per op.

    python -m pytest -q tests/test_kernels.py

Tolerances (fp32 everywhere; the kernels and the references sum in different orders):
  elementwise / row ops (rms_norm, swiglu, rope, logprobs, grpo loss): atol 1e-5, rtol 1e-5
  blocked matmul ops (attention, mla_decode, moe_ffn):                 atol 5e-5, rtol 1e-4
Besides the interpreter runs, test_kernels_compile_for_cuda compiles every kernel for sm_90 (H100) at V3-sized
shapes with the configs CUDA would use, which catches what the interpreter forgives (dot shapes, dtypes), and
checks shared memory and register spills. No GPU runs anything here: CUDA speed is bench/kernels.py's business.
"""
import os

_PREV_INTERPRET = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"   # before triton/kernels are imported (see the fixture below)

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import kernels  # noqa: E402

# pytest imports every test module before running any: put the variable back so that the other files' tests
# (collected after this one) keep the plain CPU path, and switch the interpreter on only around these tests.
# kernels.py decorates its kernels lazily for whichever mode is current, so the order does not matter.
if _PREV_INTERPRET is None:
    del os.environ["TRITON_INTERPRET"]
else:
    os.environ["TRITON_INTERPRET"] = _PREV_INTERPRET

# The interpreter evaluates both sides of tl.where with numpy (e.g. 0 * -inf on a first online-softmax block).
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ROW = dict(atol=1e-5, rtol=1e-5)
MM = dict(atol=5e-5, rtol=1e-4)


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)


def grads(outputs, inputs, seed=1):
    """Gradients of a random linear function of the outputs (a fixed seed: the same weights for both sides)."""
    outputs = [o for o in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=gen) for o in outputs]
    pairs = [(o, w) for o, w in zip(outputs, weights) if o.requires_grad]   # e.g. the ref's kl = 0 without ref
    return torch.autograd.grad([o for o, _ in pairs], inputs, [w for _, w in pairs])


def check_fwd_bwd(f_kernel, f_ref, inputs, tol, what=None):
    """Outputs and gradients of f_kernel equal f_ref's. what: (forward, backward) texts that say what was
    expected, put before torch's mismatch report (None: the report alone)."""
    def msg(text):
        return None if text is None else (lambda m: f"{text}\n{m}")

    fwd, bwd = what or (None, None)
    out, ref = f_kernel(*inputs), f_ref(*inputs)
    outs, refs = ((x if isinstance(x, tuple) else (x,)) for x in (out, ref))
    assert len(outs) == len(refs), f"{len(outs)} outputs where the reference returns {len(refs)}"
    for i, (o, r) in enumerate(zip(outs, refs)):
        torch.testing.assert_close(o, r, **tol, msg=msg(fwd and f"output {i}: {fwd}"))
    diff = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    for gk, gr in zip(grads(out, diff), grads(ref, diff)):
        torch.testing.assert_close(gk, gr, **tol, msg=msg(bwd))


def leaf(*shape, scale=1.0):
    return (torch.randn(*shape) * scale).requires_grad_()


def test_dispatch_rule(monkeypatch):
    x = torch.zeros(2)
    assert kernels.use_triton(x)                          # TRITON_INTERPRET=1 on a CPU tensor
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not kernels.use_triton(x)                      # plain CPU: the references
    y = torch.randn(3, 8)
    w = torch.randn(8)
    assert torch.equal(kernels.rms_norm(y, w), kernels.rms_norm_ref(y, w))


def test_import_without_triton():
    """A CPU user never needs Triton: with triton unimportable, kernels imports and every op runs its reference."""
    code = ("import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
            "import torch, kernels\n"
            "assert kernels.triton is None and not kernels.use_triton(torch.zeros(1))\n"
            "x = torch.randn(4, 6); w = torch.randn(6)\n"
            "assert torch.equal(kernels.rms_norm(x, w), kernels.rms_norm_ref(x, w))\n"
            "lg = torch.randn(5, 11); t = torch.randint(0, 11, (5,))\n"
            "torch.testing.assert_close(kernels.token_logprobs(lg, t), kernels.token_logprobs_ref(lg, t))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------------------------
# 1. RMSNorm
@pytest.mark.parametrize("shape", [(4, 16, 64), (3, 7, 45)], ids=["nice", "weird"])
def test_rms_norm(shape):
    x, w = leaf(*shape), leaf(shape[-1])
    check_fwd_bwd(kernels.rms_norm, kernels.rms_norm_ref, (x, w), ROW)
    kv = leaf(*shape[:-1], shape[-1] + 6)                  # a split view, like c_kv = wkv_a(x)[..., :C]
    check_fwd_bwd(lambda kv, w: kernels.rms_norm(kv[..., :shape[-1]], w),
                  lambda kv, w: kernels.rms_norm_ref(kv[..., :shape[-1]], w), (kv, w), ROW)


# 2. SwiGLU
@pytest.mark.parametrize("shape", [(8, 128), (3, 7, 33)], ids=["nice", "weird"])
def test_swiglu(shape):
    check_fwd_bwd(kernels.swiglu, kernels.swiglu_ref, (leaf(*shape), leaf(*shape)), ROW)


# 3. RoPE: x is the rope slice of a wider q (the layout model.py uses: q[..., qk_nope_head_dim:]); cos/sin from
#    YaRN-style frequencies at per-row positions; every gradient including cos/sin's (broadcast over B).
def yarn_like_cos_sin(B, T, R, theta=10000.0, factor=4.0):
    freqs = 1.0 / theta ** (torch.arange(0, R, 2).float() / R)
    freqs = torch.where(torch.arange(R // 2) > R // 4, freqs / factor, freqs)    # interpolated low frequencies
    pos = torch.arange(T)[None, :] + torch.arange(B)[:, None] * 3                 # ragged starting positions
    ang = pos[..., None].float() * freqs                                          # (B, T, R/2)
    return ang.cos(), ang.sin()


@pytest.mark.parametrize("B,T,H,nope,R", [(2, 16, 4, 32, 64), (3, 7, 3, 5, 18)], ids=["nice", "weird"])
def test_rope(B, T, H, nope, R):
    q = leaf(B, T, H, nope + R)
    cos, sin = yarn_like_cos_sin(B, T, R)
    cos, sin = cos.requires_grad_(), sin.requires_grad_()
    check_fwd_bwd(lambda q, c, s: kernels.apply_rope(q[..., nope:], c, s),
                  lambda q, c, s: kernels.apply_rope_ref(q[..., nope:], c, s), (q, cos, sin), ROW)
    k_pe = leaf(B, T, 1, R)                                                       # the shared rope key: H = 1
    c1, s1 = (t[:1].detach().clone().requires_grad_() for t in (cos, sin))       # (1, T, R/2): broadcast rows
    check_fwd_bwd(lambda k, c, s: kernels.apply_rope(k, c.expand(B, -1, -1), s.expand(B, -1, -1)),
                  lambda k, c, s: kernels.apply_rope_ref(k, c.expand(B, -1, -1), s.expand(B, -1, -1)),
                  (k_pe, c1, s1), ROW)


# ---------------------------------------------------------------------------------------------------------------
# 4. token_logprobs: the Triton kernel, and the chunked torch Function (the CPU default) with chunks that do not
#    divide V, both against log_softmax + gather.
LOGP_SHAPES = [(64, 2048), (37, 1001)]


@pytest.mark.parametrize("N,V", LOGP_SHAPES, ids=["nice", "weird"])
@pytest.mark.parametrize("with_entropy", [False, True])
def test_token_logprobs_triton(N, V, with_entropy):
    logits, targets = leaf(N, V, scale=3.0), torch.randint(0, V, (N,))
    check_fwd_bwd(lambda lg: kernels.token_logprobs(lg, targets, with_entropy),
                  lambda lg: kernels.token_logprobs_ref(lg, targets, with_entropy), (logits,), ROW)


@pytest.mark.parametrize("N,V", LOGP_SHAPES, ids=["nice", "weird"])
@pytest.mark.parametrize("chunk,rows", [(256, 16), (333, 10), (None, None)])
def test_token_logprobs_chunked_torch(N, V, chunk, rows, monkeypatch):
    """Tiles (rows x vocabulary chunk) that do not divide the shape, and the default tiling."""
    monkeypatch.delenv("TRITON_INTERPRET")
    logits, targets = leaf(N, V, scale=3.0), torch.randint(0, V, (N,))
    targets[0] = V - 1                                             # a target in the ragged last chunk
    for ent in (False, True):
        tiles = f"chunk {chunk}, rows {rows}, with_entropy {ent}"
        what = (f"{tiles}: expected logp = z_t - logsumexp(z) (output 0) and entropy = lse - sum_j p_j z_j "
                f"(output 1), the online logsumexp over vocabulary chunks equal to log_softmax + gather",
                f"{tiles}: expected d logp_t / dz_j = 1[j = t] - p_j (and d entropy / dz_j = -p_j (log p_j + "
                f"entropy)), p = exp(z - lse) recomputed chunk by chunk")
        check_fwd_bwd(lambda lg: kernels._token_logprobs_chunked(lg, targets, ent, chunk, rows),
                      lambda lg: kernels.token_logprobs_ref(lg, targets, ent), (logits,), ROW, what)


def test_token_logprobs_saves_no_vocab_sized_tensor(monkeypatch):
    """What the chunked op keeps for backward: the logits the caller already holds, plus O(N) per-row numbers;
    the reference keeps an fp32 (N, V) log-softmax. (Peak bytes at GRPO scale: python bench/kernels.py.)"""
    monkeypatch.delenv("TRITON_INTERPRET")
    N, V = 16, 512
    logits, targets = leaf(N, V), torch.randint(0, V, (N,))

    def new_saved_numel(f):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            f(logits, targets, True)
        return sum(t.numel() for t in saved if t.data_ptr() != logits.data_ptr())

    assert new_saved_numel(kernels.token_logprobs) <= 4 * N                      # targets, lse, entropy
    assert new_saved_numel(kernels.token_logprobs_ref) >= N * V


def test_token_logprobs_bad_targets():
    with pytest.raises(ValueError, match="targets must lie in"):
        kernels.token_logprobs(torch.randn(3, 5), torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="want logits"):
        kernels.token_logprobs(torch.randn(3, 5), torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------------------------------
# 5. grpo_token_loss: old_logp spread so that rho falls below 1 - eps_low and above 1 + eps_high, advantages of
#    both signs (all four clip branches are hit), with the k3 KL and without a reference model.
def grpo_inputs(N, V):
    logits, targets = leaf(N, V, scale=2.0), torch.randint(0, V, (N,))
    with torch.no_grad():
        logp = kernels.token_logprobs_ref(logits, targets)
    old = logp + torch.linspace(-0.6, 0.6, N)[torch.randperm(N)]
    ref = logp + 0.5 * torch.randn(N)
    adv = torch.randn(N)
    return logits, targets, old, ref, adv


@pytest.mark.parametrize("N,V", [(64, 1024), (37, 1001)], ids=["nice", "weird"])
@pytest.mark.parametrize("with_ref", [True, False])
@pytest.mark.parametrize("path", ["triton", "chunked_torch"])
def test_grpo_token_loss(N, V, with_ref, path, monkeypatch):
    if path == "chunked_torch":
        monkeypatch.delenv("TRITON_INTERPRET")
    logits, targets, old, ref, adv = grpo_inputs(N, V)
    ref = ref if with_ref else None
    rho = torch.exp(kernels.token_logprobs_ref(logits, targets).detach() - old)
    assert ((rho < 0.8) & (adv > 0)).any() and ((rho > 1.28) & (adv < 0)).any()    # clipped branches occur
    args = (targets, old, ref, adv, 0.2, 0.28, 0.04)
    check_fwd_bwd(lambda lg: kernels.grpo_token_loss(lg, *args),
                  lambda lg: kernels.grpo_token_loss_ref(lg, *args), (logits,), ROW)


@pytest.mark.parametrize("path", ["triton", "chunked_torch"])
def test_grpo_k3_is_never_negative(path, monkeypatch):
    """k3 = e^d - 1 - d >= 0; computed as written it rounds below 0 in fp32 for tiny d = ref - logp."""
    if path == "chunked_torch":
        monkeypatch.delenv("TRITON_INTERPRET")
    logits, targets = torch.randn(64, 50), torch.randint(0, 50, (64,))
    logp = kernels.token_logprobs_ref(logits, targets)
    ref = logp + torch.logspace(-9, -1, 64) * torch.tensor([1.0, -1.0]).repeat(32)
    _, _, kl = kernels.grpo_token_loss(logits, targets, logp, ref, torch.ones(64), 0.2, 0.2, 0.1)
    assert (kl >= 0).all()
    d = (ref - logp).double()
    torch.testing.assert_close(kl.double(), torch.expm1(d) - d, atol=1e-9, rtol=1e-3)


def test_grpo_token_loss_equals_grpo_loss():
    """The fused op is grpo.py's per-token term for R1's default (k3): its token mean and its gradient equal
    grpo.grpo_loss with the token-level (dapo) mean on the same tokens, so the two copies of R1 eq. 1-3 agree."""
    import grpo
    logits, targets, old, ref, adv = grpo_inputs(37, 101)
    cfg = grpo.GRPOConfig(beta=0.04, eps_low=0.2, eps_high=0.28, loss_agg="dapo")
    fused = kernels.grpo_token_loss(logits, targets, old, ref, adv, 0.2, 0.28, 0.04)[0].mean()
    (g_fused,) = torch.autograd.grad(fused, logits)
    logp = kernels.token_logprobs_ref(logits, targets)[None]
    loss, _ = grpo.grpo_loss(logp, old[None], ref[None], adv[None], torch.ones(1, 37, dtype=torch.bool), cfg)
    (g_loss,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(fused, loss, **ROW)
    torch.testing.assert_close(g_fused, g_loss, **ROW)


def test_grpo_token_loss_values():
    """The formula itself, on one token: rho = e^0.5 > 1 + eps_high with A > 0 -> the clipped term; k3 >= 0."""
    logits = torch.tensor([[0.0, 0.0]])                      # logp = log 1/2
    lp = torch.log(torch.tensor([0.5]))
    loss, logp, kl = kernels.grpo_token_loss_ref(logits, torch.tensor([0]), lp - 0.5, lp - 0.1,
                                                 torch.tensor([2.0]), 0.2, 0.28, 0.5)
    k3 = torch.exp(torch.tensor(-0.1)) + 0.1 - 1
    torch.testing.assert_close(loss, -(1.28 * 2.0) + 0.5 * k3[None], **ROW)
    torch.testing.assert_close(kl, k3[None], **ROW)
    torch.testing.assert_close(logp, lp, **ROW)


# ---------------------------------------------------------------------------------------------------------------
# 6. attention: MLA shapes (qk head dim != v head dim), causal and not, and more keys than queries (a prefix in the
#    cache: query i sees keys <= i + S - T).
@pytest.mark.parametrize("B,T,S,H,Dqk,Dv", [(2, 64, 64, 2, 64, 32), (2, 37, 37, 3, 48, 24), (1, 5, 45, 2, 24, 16)],
                         ids=["nice", "weird", "prefix"])
@pytest.mark.parametrize("causal", [True, False])
def test_attention(B, T, S, H, Dqk, Dv, causal):
    q, k, v = leaf(B, T, H, Dqk), leaf(B, S, H, Dqk), leaf(B, S, H, Dv)
    scale = Dqk ** -0.5
    check_fwd_bwd(lambda q, k, v: kernels.attention(q, k, v, scale, causal),
                  lambda q, k, v: kernels.attention_ref(q, k, v, scale, causal), (q, k, v), MM)


def test_attention_views():
    """The layouts model.py passes: v and k_nope split out of one projection (non-contiguous), and the absorbed
    prefill's single shared key/value expanded over heads (stride 0): gradients flow back through the views."""
    B, T, H, Dqk, Dv = 2, 19, 3, 24, 16
    q, kv, shared = leaf(B, T, H, Dqk), leaf(B, T, H, Dqk + Dv), leaf(B, T, 1, Dqk)

    def views(q, kv, shared):
        k, v = kv.split([Dqk, Dv], dim=-1)
        return q, k + shared.expand(B, T, H, Dqk), v, shared.expand(B, T, H, Dqk), shared[..., :Dv].expand(B, T, H, Dv)

    def run(attn):
        def f(q, kv, shared):
            q, k, v, ke, ve = views(q, kv, shared)
            return attn(q, k, v, 0.2, True), attn(q, ke, ve, 0.2, True)
        return f
    check_fwd_bwd(run(kernels.attention), run(kernels.attention_ref), (q, kv, shared), MM)


def test_attention_bad_shapes():
    with pytest.raises(ValueError, match="causal needs"):
        kernels.attention(torch.randn(1, 5, 1, 8), torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 4), 1.0)


# 7. mla_decode (inference only: no backward)
@pytest.mark.parametrize("B,H,C,R,S,lengths", [(2, 16, 64, 16, 64, [64, 32]), (3, 5, 40, 12, 50, [1, 50, 33])],
                         ids=["nice", "weird"])
def test_mla_decode(B, H, C, R, S, lengths):
    args = (torch.randn(B, H, C), torch.randn(B, H, R), torch.randn(B, S, C + R), torch.tensor(lengths), 0.1)
    torch.testing.assert_close(kernels.mla_decode(*args), kernels.mla_decode_ref(*args), **MM)
    # the reference itself, against scores written out term by term (V3 eq. 10 with W_uk, W_uv absorbed)
    q_lat, q_pe, cache, lens, scale = args
    s = (torch.einsum("bhc,bsc->bhs", q_lat, cache[..., :C]) + torch.einsum("bhr,bsr->bhs", q_pe, cache[..., C:]))
    s = s * scale + torch.where(torch.arange(S)[None, :] < lens[:, None], 0.0, float("-inf"))[:, None, :]
    torch.testing.assert_close(kernels.mla_decode_ref(*args), torch.einsum("bhs,bsc->bhc", s.softmax(-1), cache[..., :C]))


# ---------------------------------------------------------------------------------------------------------------
# 8. MoE: routing metadata against a stable argsort, then the whole routed FFN with gradients for x, the gate
#    weights and all three expert weights (an unused expert must get a zero gradient, a hot one most tokens).
def test_moe_routing_metadata():
    N, K, E = 700, 6, 70                      # 4200 pairs: several histogram blocks and prefix-sum iterations
    idx = torch.randint(0, E, (N, K))
    idx[idx == 13] = 0                        # expert 13 empty, expert 0 hot
    pos, starts, counts = kernels._moe_route(idx, E)
    order = idx.reshape(-1).argsort(stable=True)
    expect = torch.empty_like(order)
    expect[order] = torch.arange(N * K)
    assert torch.equal(pos.long(), expect)
    cnt = torch.bincount(idx.reshape(-1), minlength=E)
    assert torch.equal(counts.long(), cnt) and torch.equal(starts.long(), cnt.cumsum(0) - cnt)


def moe_inputs(N, D, I, E, K, skip_expert):
    x = leaf(N, D)
    scores = torch.rand(N, E)
    scores[:, skip_expert] = -1.0             # never chosen
    scores[: N // 2, 0] = 2.0                 # half the tokens pick expert 0: a skewed load
    idx = scores.topk(K, dim=-1).indices
    w = torch.rand(N, K).requires_grad_()
    w1, w3, w2 = leaf(E, D, I, scale=0.2), leaf(E, D, I, scale=0.2), leaf(E, I, D, scale=0.2)
    return x, idx, w, w1, w3, w2


@pytest.mark.parametrize("N,D,I,E,K", [(32, 64, 32, 4, 2), (29, 40, 24, 5, 3)], ids=["nice", "weird"])
def test_moe_ffn(N, D, I, E, K):
    x, idx, w, w1, w3, w2 = moe_inputs(N, D, I, E, K, skip_expert=E - 2)
    check_fwd_bwd(lambda x, w, w1, w3, w2: kernels.moe_ffn(x, idx, w, w1, w3, w2),
                  lambda x, w, w1, w3, w2: kernels.moe_ffn_ref(x, idx, w, w1, w3, w2), (x, w, w1, w3, w2), MM)
    dw1 = grads(kernels.moe_ffn(x, idx, w, w1, w3, w2), [w1])[0]
    assert dw1[E - 2].abs().max() == 0 and dw1[0].abs().max() > 0


# ---------------------------------------------------------------------------------------------------------------
# CUDA compilation: run every op forward and backward at V3-sized shapes (bf16 and fp32) with the block sizes CUDA
# would use, recording each kernel launch instead of running it; then compile each recorded launch for sm_90 in a
# fresh process (Triton's ahead-of-time path: no GPU needed) and check that it fits an H100's shared memory
# without spilling registers (cuobjdump's resource usage of the cubin).
class _Recorder:
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def __getitem__(self, grid):
        def launch(*args, **kw):
            import inspect
            params = inspect.signature(kernels._KERNELS[self.name]).parameters
            values = dict(zip(params, args), **kw)
            sig, consts = {}, {}
            for n, p in params.items():
                v = values[n]
                if "constexpr" in str(p.annotation):
                    sig[n], consts[n] = "constexpr", v
                elif isinstance(v, torch.Tensor):
                    sig[n] = "*" + {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int64: "i64",
                                    torch.int32: "i32"}[v.dtype]
                else:
                    sig[n] = "fp32" if isinstance(v, float) else "i32"
            opts = {k: kw[k] for k in ("num_warps", "num_stages") if k in kw}
            self.calls.setdefault(json.dumps([self.name, sig, consts, opts], sort_keys=True), None)
        return launch


_COMPILE = r"""
import json, os, re, subprocess, sys, tempfile
import triton, kernels
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
kernels._jit_ready()
out = []
for name, sig, consts, opts in map(json.loads, json.load(sys.stdin)):
    try:
        c = triton.compile(ASTSource(getattr(kernels, name), sig, consts), target=GPUTarget("cuda", 90, 32),
                           options=opts)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(c.asm["cubin"])
            f.flush()
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True)
        stack = int(re.search(r"STACK:(\d+)", usage.stdout).group(1))     # > 0: registers spilled
        out.append([name, sig, consts, c.metadata.shared, stack, None])
    except Exception as e:
        out.append([name, sig, consts, None, None, f"{type(e).__name__}: {e}"[-2000:]])
print(json.dumps(out))
"""


def test_kernels_compile_for_cuda(monkeypatch):
    kernels._jit_ready()
    calls = {}
    for name in kernels._KERNELS:
        if name.endswith("_kernel"):
            monkeypatch.setattr(kernels, name, _Recorder(name, calls))
    monkeypatch.setattr(kernels, "_interpreting", lambda: False)       # CUDA's block sizes
    for dt in (torch.bfloat16, torch.float32):
        def t(*shape, grad=True):
            return torch.randn(*shape).to(dt).requires_grad_(grad)
        x, w = t(4, 7168), t(7168)
        kernels.rms_norm(x, w).sum().backward()
        kernels.rms_norm(t(4, 512), t(512)).sum().backward()
        kernels.swiglu(t(4, 2048), t(4, 2048)).sum().backward()
        c, s = t(2, 3, 32, grad=False), t(2, 3, 32, grad=False)
        kernels.apply_rope(t(2, 3, 128, 64), c, s).sum().backward()
        logits, tg = t(4, 129280), torch.randint(0, 129280, (4,))
        sum(kernels.token_logprobs(logits, tg, True)).sum().backward()
        z = torch.zeros(4)
        sum(kernels.grpo_token_loss(logits, tg, z, z, z, 0.2, 0.28, 0.001)).sum().backward()
        kernels.attention(t(1, 130, 2, 192), t(1, 130, 2, 192), t(1, 130, 2, 128), 0.07).sum().backward()
        kernels.attention(t(1, 130, 2, 64), t(1, 130, 2, 64), t(1, 130, 2, 64), 0.1).sum().backward()
        kernels.mla_decode(t(2, 128, 512), t(2, 128, 64), t(2, 300, 576), torch.tensor([3, 300]), 0.07)
        idx = torch.randint(0, 256, (16, 8))                     # V3's 256 experts (the routing kernels' width)
        kernels.moe_ffn(t(16, 64), idx, t(16, 8), t(256, 64, 32), t(256, 64, 32), t(256, 32, 64)).sum().backward()
        idx = torch.randint(0, 8, (16, 8))                       # wide rows (dim 7168 -> 1024-wide row blocks)
        kernels.moe_ffn(t(16, 1024), idx, t(16, 8), t(8, 1024, 64), t(8, 1024, 64), t(8, 64, 1024)).sum().backward()
    launched = {json.loads(k)[0] for k in calls}
    assert launched == {n for n in kernels._KERNELS if n.endswith("_kernel")}, "some kernel was never launched"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _COMPILE], input=json.dumps(list(calls)), cwd=root, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, sig, consts, shared, stack, err in json.loads(r.stdout):
        assert err is None, f"{name} {consts}: {err}"
        assert shared <= 227 * 1024, f"{name} {consts} needs {shared} bytes of shared memory (H100: 227 KiB)"
        assert stack == 0, f"{name} {consts} {sig}: spills registers ({stack} bytes of stack)"


# ---------------------------------------------------------------------------------------------------------------
# The model with and without kernels: the same tiny V3 (MLA with q_lora, YaRN, dense + MoE blocks, shared expert,
# MTP) run once with the references (plain CPU) and once with every kernel under the interpreter. Training
# forward (logits, loss) and backward (every parameter's gradient), then decoding with both cache modes: a
# prefill, single-token steps at ragged per-row positions (mla_decode) and at equal positions.
def tiny_model():
    from model import ModelArgs, Transformer
    args = ModelArgs(vocab_size=97, dim=32, inter_dim=48, moe_inter_dim=24, n_layers=2, n_dense_layers=1,
                     n_heads=2, n_routed_experts=4, n_shared_experts=1, n_activated_experts=2, n_expert_groups=2,
                     n_limited_groups=1, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                     v_head_dim=12, max_seq_len=64, original_seq_len=32, mtp_depth=1)   # 64 > 32: YaRN on
    torch.manual_seed(0)
    return Transformer(args)


def model_outputs(model, interpret, monkeypatch):
    if interpret:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        def no_fallback(*args, **kwargs):
            raise AssertionError("a torch path ran where the kernel should have")
        for name in ("rms_norm_ref", "swiglu_ref", "apply_rope_ref", "attention_ref", "mla_decode_ref", "moe_ffn_ref",
                     "token_logprobs_ref", "_lse_entropy_chunked"):
            monkeypatch.setattr(kernels, name, no_fallback)
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 97, (2, 13), generator=gen)
    targets = torch.randint(0, 97, (2, 13), generator=gen)
    targets[1, -3:] = -1                                                    # ignored positions
    model.train()
    model.zero_grad()
    logits, loss, parts = model(tokens, targets)
    loss.backward()
    out = {"logits": logits.detach(), "loss": loss.detach()}
    out.update({"grad." + n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.eval()
    for mode in ("absorbed", "naive"):
        cache = model.new_cache(2, 12, mode)
        steps = [(tokens[:, :6], torch.arange(6).expand(2, 6)),             # prefill (kernels.attention)
                 (tokens[:, 6:7], torch.tensor([[6], [4]])),                # ragged rows (mla_decode / masked)
                 (tokens[:, 7:8], torch.tensor([[7], [5]])),
                 (tokens[:, 8:9], torch.tensor([[8], [8]]))]                # equal positions again
        for i, (tok, pos) in enumerate(steps):
            out[f"decode.{mode}.{i}"] = model.decode(tok, pos, cache)
    return out


def test_model_equal_with_and_without_kernels(monkeypatch):
    model = tiny_model()
    ref = model_outputs(model, False, monkeypatch)
    got = model_outputs(model, True, monkeypatch)
    assert set(ref) == set(got) and len([k for k in ref if k.startswith("grad.")]) > 20
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], **MM, msg=lambda m, k=k: f"{k}: {m}")
