"""Hot ops of minR1: each one a plain-torch reference (the readable definition), a Triton kernel with its
torch.autograd.Function, and one dispatch rule that picks between them.

Dispatch rule (the only one in the codebase):
  - CUDA tensors                    -> the Triton kernel
  - CPU tensors, TRITON_INTERPRET=1 -> the Triton kernel, run by Triton's interpreter (the tests)
  - CPU tensors otherwise           -> the torch reference (a CPU user never needs Triton); for token_logprobs
                                       and grpo_token_loss a chunked torch Function with the kernel's memory bound,
                                       for moe_ffn torch's grouped GEMM (the reference's loop for odd shapes)

model.py, sample.py and grpo.py call only the public functions (no `_ref`, no leading underscore); their
signatures are the contract. The ops:
  1. rms_norm          RMSNorm, backward from the saved rstd only
  2. swiglu            silu(a) * b, backward recomputes silu
  3. apply_rope        interleaved RoPE on MLA's decoupled rope dims (cos/sin carry the YaRN frequencies)
  4. token_logprobs    log p(target) [+ entropy] without the (N, V) fp32 log-softmax: online logsumexp over
                       vocabulary chunks (a chunked torch Function on CPU, a Triton kernel on CUDA)
  5. grpo_token_loss   the GRPO per-token loss (R1 eq. 1-3) fused with op 4
  6. attention         causal flash attention with qk head dim != v head dim (MLA: 192 vs 128), LSE saved
  7. mla_decode        one-token decode attention over the latent cache rows [c_kv ; k_R] (absorbed MLA)
  8. moe_ffn           MoE routing metadata, permute / unpermute, grouped GEMMs for the SwiGLU experts (on CPU:
                       torch._grouped_mm, one call per projection for all experts, instead of the reference's loop)

Tests (kernels vs references under the interpreter, forward and every gradient):
    TRITON_INTERPRET=1 is set by the test file itself:  python -m pytest -q tests/test_kernels.py
Benchmarks (Triton vs reference vs torch.compile on CUDA; torch paths + logprob memory on CPU):
    python bench/kernels.py

Triton conventions here: fp32 math inside every kernel (loads are upcast, stores cast back); fixed block sizes
(no autotuning: the same code runs under the interpreter); tl.dot on fp32 inputs uses TF32 on CUDA, like
cuBLAS with allow_tf32, while bf16/fp16 inputs use the tensor cores natively with fp32 accumulation.
"""
from __future__ import annotations  # kernel annotations (tl.constexpr) stay strings: no Triton needed to import

import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton wheel for this platform (e.g. macOS): every op runs its torch reference
    triton = tl = None


def use_triton(x: torch.Tensor) -> bool:
    """True when the op on tensor x should run the Triton kernel (see the rule above)."""
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------------------------------------------
# Kernel registry. Triton decides at decoration time whether a function is compiled (CUDA) or interpreted, from
# TRITON_INTERPRET. Decorating lazily, on first launch and again whenever that variable changes, keeps
# `import kernels` free of any Triton work and lets a test turn the interpreter on after another module has
# already imported this file (pytest imports every test module before running any).
_KERNELS = {}       # name -> plain Python function of every @triton.jit kernel or helper in this file
_JIT_MODE = None    # the TRITON_INTERPRET value the kernels are currently decorated for


def _kernel(fn):
    _KERNELS[fn.__name__] = fn
    return fn


def _jit_ready():
    global _JIT_MODE
    mode = os.environ.get("TRITON_INTERPRET", "0")
    if mode != _JIT_MODE:
        for name, fn in _KERNELS.items():
            globals()[name] = triton.jit(fn)   # kernels find each other (helpers) through these globals
        _JIT_MODE = mode


def _pow2(n: int, lo: int = 16) -> int:
    """Smallest power of two >= n and >= lo (tl.arange needs powers of two, tl.dot needs dims >= 16)."""
    return max(lo, 1 << max(0, int(n) - 1).bit_length())


def _num_sms(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4   # interpreter: few programs, each looping over more rows (the interpreter is per-program slow)


# ================================================================================================================
# 1. RMSNorm
def rms_norm_ref(x, weight, eps: float = 1e-6):
    """x (..., D), weight (D,) -> x / rms(x) * weight, computed in fp32, returned in x's dtype."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


@_kernel
def _rms_norm_fwd_kernel(X, W, Y, RSTD, M, D, stride_x, stride_y, eps,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)      # int64: M * D can pass 2^31
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < M)[:, None] & (cols < D)[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)  # (BM, BD)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + eps)                                            # (BM,)
    w = tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)
    y = x * rstd[:, None] * w[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=rows < M)


@_kernel
def _rms_norm_bwd_kernel(X, W, DY, RSTD, DX, DW_PART, M, D, stride_x, stride_dy, stride_dx, rows_per_prog,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # Each program walks `rows_per_prog` rows and keeps its share of dW in registers: one (D,) partial per
    # program instead of an atomic add per row; the partials are summed by the caller.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    w = tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_D,), dtype=tl.float32)
    row_lo = pid * rows_per_prog
    row_hi = tl.minimum(row_lo + rows_per_prog, M)
    for m0 in range(row_lo, row_hi, BLOCK_M):
        rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask = (rows < row_hi)[:, None] & (cols < D)[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rows < row_hi, other=0.0)
        xhat = x * rstd[:, None]
        wdy = dy * w[None, :]
        # d/dx of x*rstd: rstd * (g - xhat * mean(g * xhat)), with g = w * dy
        c = tl.sum(xhat * wdy, axis=1) / D
        dx = (wdy - xhat * c[:, None]) * rstd[:, None]
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
    tl.store(DW_PART + pid * D + cols, dw, mask=cols < D)


def _rms_blocks(D):
    BLOCK_D = _pow2(D)
    return max(1, min(16, 4096 // BLOCK_D)), BLOCK_D     # ~4k fp32 elements per tile


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        _jit_ready()
        shape, D = x.shape, x.shape[-1]
        x2 = x.reshape(-1, D)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        M = x2.shape[0]
        y = torch.empty((M, D), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
        rstd = torch.empty(M, dtype=torch.float32, device=x.device)
        BLOCK_M, BLOCK_D = _rms_blocks(D)
        _rms_norm_fwd_kernel[(triton.cdiv(M, BLOCK_M),)](x2, weight, y, rstd, M, D, x2.stride(0), y.stride(0),
                                                         eps, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D,
                                                         num_warps=8 if BLOCK_D >= 4096 else 4)
        ctx.save_for_backward(x2, weight, rstd)     # only rstd is new: no normalized copy of x is kept
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        M, D = x2.shape
        dy2 = dy.reshape(M, D)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = torch.empty(M, D, dtype=x2.dtype, device=x2.device)
        BLOCK_M, BLOCK_D = _rms_blocks(D)
        n_prog = max(1, min(triton.cdiv(M, BLOCK_M), 4 * _num_sms(x2.device)))
        rows_per_prog = triton.cdiv(triton.cdiv(M, n_prog), BLOCK_M) * BLOCK_M
        n_prog = triton.cdiv(M, rows_per_prog)
        dw_part = torch.empty(n_prog, D, dtype=torch.float32, device=x2.device)
        _rms_norm_bwd_kernel[(n_prog,)](x2, weight, dy2, rstd, dx, dw_part, M, D, x2.stride(0), dy2.stride(0),
                                        dx.stride(0), rows_per_prog, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D,
                                        num_warps=8 if BLOCK_D >= 4096 else 4)
        return dx.view(ctx.shape), dw_part.sum(0).to(weight.dtype), None


def rms_norm(x, weight, eps: float = 1e-6):
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 1:
        raise ValueError(f"rms_norm: weight {tuple(weight.shape)} does not match the last dim of x {tuple(x.shape)}")
    if use_triton(x) and x.numel() > 0:
        return _RMSNorm.apply(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


# ================================================================================================================
# 2. SwiGLU: silu(a) * b
def swiglu_ref(a, b):
    return F.silu(a) * b


@_kernel
def _swiglu_fwd_kernel(A, B, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, (a * tl.sigmoid(a) * b).to(Y.dtype.element_ty), mask=mask)


@_kernel
def _swiglu_bwd_kernel(A, B, DY, DA, DB, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(a)                                   # recomputed: nothing but a and b is saved
    tl.store(DA + offs, (dy * b * sig * (1.0 + a * (1.0 - sig))).to(DA.dtype.element_ty), mask=mask)
    tl.store(DB + offs, (dy * a * sig).to(DB.dtype.element_ty), mask=mask)


_EW_BLOCK = 1024


def _swiglu_fwd(a, b):
    y = torch.empty_like(a, dtype=torch.promote_types(a.dtype, b.dtype))
    n = a.numel()
    _swiglu_fwd_kernel[(triton.cdiv(n, _EW_BLOCK),)](a, b, y, n, BLOCK=_EW_BLOCK)
    return y


def _swiglu_bwd(a, b, dy):
    da, db = torch.empty_like(a), torch.empty_like(b)
    n = a.numel()
    _swiglu_bwd_kernel[(triton.cdiv(n, _EW_BLOCK),)](a, b, dy.contiguous(), da, db, n, BLOCK=_EW_BLOCK)
    return da, db


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        _jit_ready()
        a, b = a.contiguous(), b.contiguous()
        ctx.save_for_backward(a, b)
        return _swiglu_fwd(a, b)

    @staticmethod
    def backward(ctx, dy):
        return _swiglu_bwd(*ctx.saved_tensors, dy)


def swiglu(a, b):
    if use_triton(a) and a.shape == b.shape and a.numel() > 0:
        return _SwiGLU.apply(a, b)
    return swiglu_ref(a, b)       # broadcasting shapes: the reference handles them


# ================================================================================================================
# 3. RoPE on the decoupled rope dims, interleaved pairs (x[..., 2i], x[..., 2i+1]) as in V3's official code.
#    YaRN (V3 §4.3) lives entirely in the frequencies, i.e. in the cos/sin that model.py computes; this op rotates.
def apply_rope_ref(x, cos, sin):
    """x (B, T, H, R); cos, sin (B, T, R/2) (already at each token's position) -> (B, T, H, R)."""
    xf = x.float().unflatten(-1, (-1, 2))                 # (B, T, H, R/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[:, :, None, :].float(), sin[:, :, None, :].float()
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2).to(x.dtype)


@_kernel
def _rope_kernel(X, COS, SIN, Y, XS, DCOS, DSIN, T, H, R2, sign,
                 sxb, sxt, sxh, sxr, scb, sct, scr, ssb, sst, ssr, syb, syt, syh, syr,
                 NEED_DCS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R2: tl.constexpr):
    # One program = one token (b, t), all its heads. Forward: y = R(theta) x. Backward (sign = -1): the
    # rotation by -theta, dx = R(theta)^T dy; with NEED_DCS also dcos, dsin summed over heads (XS = saved x).
    pid = tl.program_id(0)
    b = pid // T
    t = pid % T
    h = tl.arange(0, BLOCK_H)
    i = tl.arange(0, BLOCK_R2)
    mask = (h < H)[:, None] & (i < R2)[None, :]
    xp = X + b * sxb + t * sxt + h[:, None] * sxh + (2 * i)[None, :] * sxr
    x0 = tl.load(xp, mask=mask, other=0.0).to(tl.float32)            # (BH, BR2) even elements
    x1 = tl.load(xp + sxr, mask=mask, other=0.0).to(tl.float32)      # odd elements
    c = tl.load(COS + b * scb + t * sct + i * scr, mask=i < R2, other=0.0).to(tl.float32)[None, :]
    s = sign * tl.load(SIN + b * ssb + t * sst + i * ssr, mask=i < R2, other=0.0).to(tl.float32)[None, :]
    yp = Y + b * syb + t * syt + h[:, None] * syh + (2 * i)[None, :] * syr
    tl.store(yp, (x0 * c - x1 * s).to(Y.dtype.element_ty), mask=mask)
    tl.store(yp + syr, (x0 * s + x1 * c).to(Y.dtype.element_ty), mask=mask)
    if NEED_DCS:   # here x0, x1 are dy's pairs and XS holds x in Y's layout
        sp = XS + b * syb + t * syt + h[:, None] * syh + (2 * i)[None, :] * syr
        s0 = tl.load(sp, mask=mask, other=0.0).to(tl.float32)
        s1 = tl.load(sp + syr, mask=mask, other=0.0).to(tl.float32)
        tl.store(DCOS + pid * R2 + i, tl.sum(x0 * s0 + x1 * s1, axis=0), mask=i < R2)
        tl.store(DSIN + pid * R2 + i, tl.sum(x1 * s0 - x0 * s1, axis=0), mask=i < R2)


def _rope_launch(x, cos, sin, sign, xs=None):
    B, T, H, R = x.shape
    y = torch.empty(B, T, H, R, dtype=x.dtype, device=x.device)
    dcos = dsin = None
    if xs is not None:
        dcos = torch.empty(B, T, R // 2, dtype=torch.float32, device=x.device)
        dsin = torch.empty_like(dcos)
    _rope_kernel[(B * T,)](x, cos, sin, y, xs if xs is not None else y, dcos if dcos is not None else y,
                           dsin if dsin is not None else y, T, H, R // 2, sign, *x.stride(), *cos.stride(),
                           *sin.stride(), *y.stride(), NEED_DCS=xs is not None, BLOCK_H=_pow2(H, 1),
                           BLOCK_R2=_pow2(R // 2, 1))
    return y, dcos, dsin


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        _jit_ready()
        B, T, H, R = x.shape
        ctx.cs_shapes = (cos.shape, sin.shape)
        cos, sin = cos.expand(B, T, R // 2), sin.expand(B, T, R // 2)   # broadcast rows read with stride 0
        y, _, _ = _rope_launch(x, cos, sin, 1.0)
        ctx.save_for_backward(x if ctx.needs_input_grad[1] or ctx.needs_input_grad[2] else None, cos, sin)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, cos, sin = ctx.saved_tensors
        dx, dcos, dsin = _rope_launch(dy, cos, sin, -1.0, xs=x.contiguous() if x is not None else None)
        if dcos is not None:   # cos/sin only need gradients if someone made them trainable (model: buffers)
            dcos = dcos.sum_to_size(ctx.cs_shapes[0]).to(cos.dtype)
            dsin = dsin.sum_to_size(ctx.cs_shapes[1]).to(sin.dtype)
        return dx, dcos, dsin


def apply_rope(x, cos, sin):
    if x.dim() != 4 or x.shape[-1] % 2 or cos.shape[-1] != x.shape[-1] // 2 or sin.shape != cos.shape:
        raise ValueError(f"apply_rope: want x (B, T, H, R) with R even and cos, sin (B, T, R/2); "
                         f"got x {tuple(x.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}")
    if use_triton(x) and x.numel() > 0:
        return _Rope.apply(x, cos, sin)
    return _apply_rope_complex(x, cos, sin)


def _apply_rope_complex(x, cos, sin):
    """The torch path: each pair (x0, x1) as the complex number x0 + i x1, times cos + i sin (one complex mul,
    as DeepSeek's own inference code writes it). The same products as apply_rope_ref, one kernel instead of
    ~10 elementwise ops: equal outputs and x-gradients (tests/test_speed.py), ~2x faster forward + backward."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())          # (B, T, H, R/2)
    rot = torch.complex(cos.float(), sin.float())[:, :, None, :]                       # (B, T, 1, R/2)
    return torch.view_as_real(xc * rot).flatten(-2).to(x.dtype)


# ================================================================================================================
# 4. Per-token logprobs of chosen tokens (+ optional entropy), without the full log-softmax.
#    logp_t = z_t - logsumexp(z);  entropy = lse - sum_j p_j z_j.  Gradients, per row, with p = softmax(z):
#      d logp_t / dz_j = 1[j = t] - p_j          d entropy / dz_j = -p_j (log p_j + entropy)
#    so the backward only needs lse (and the entropy) per row: it recomputes p chunk by chunk.
def token_logprobs_ref(logits, targets, with_entropy: bool = False):
    """logits (N, V) any float dtype, targets (N,) long -> logp (N,) fp32 [, entropy (N,) fp32].
    The plain definition: log_softmax then gather. (The chunked version bounds the memory.)"""
    logp_all = torch.log_softmax(logits.float(), dim=-1)   # (N, V) fp32: the memory this op avoids
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    if not with_entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


# The torch path walks the (N, V) logits in tiles of `rows` x `chunk`: along the vocabulary with an online
# logsumexp (as the Triton kernel does), `rows` rows at a time. A tile of 2^18 fp32 numbers (1 MiB) bounds the
# temporaries and stays in the CPU's cache, which makes this faster than log_softmax's full passes over memory.
_LOGP_CHUNK = 8192          # vocabulary columns per step of the online logsumexp
_LOGP_TILE = 1 << 18        # numbers per fp32 temporary


def _lse_entropy_chunked(logits, chunk, rows, with_entropy=True):
    """Online logsumexp over vocabulary chunks -> lse, entropy (N,) fp32 (entropy zeros unless with_entropy).
    Running per row: m = max so far, s = sum exp(z - m), w = sum exp(z - m) (z - m); a new max m' rescales
    s by a = exp(m - m') and w by a * (w + s (m - m')). Then lse = m + log s and entropy = log s - w / s."""
    N, V = logits.shape
    lse = torch.empty(N, device=logits.device)
    ent = torch.zeros(N, device=logits.device)
    for r0 in range(0, N, rows):
        lg = logits[r0:r0 + rows]                                       # (n, V) view
        n = lg.shape[0]
        m = torch.full((n,), float("-inf"), device=logits.device)
        s = torch.zeros(n, device=logits.device)
        w = torch.zeros(n, device=logits.device)
        for v0 in range(0, V, chunk):
            z = lg[:, v0:v0 + chunk].float()                            # (n, C) fp32
            m_new = torch.maximum(m, z.amax(-1))
            a = torch.exp(m - m_new)
            zc = z - m_new[:, None]
            e = zc.exp()
            if with_entropy:   # (first chunk: s = 0 and m = -inf, hence the guard)
                w = a * (w + torch.where(s > 0, s * (m - m_new), 0.0)) + (e * zc).sum(-1)
            s = a * s + e.sum(-1)
            m = m_new
        lse[r0:r0 + n] = m + s.log()
        if with_entropy:
            ent[r0:r0 + n] = s.log() - w / s
    return lse, ent


def _logprob_grad_chunked(logits, targets, lse, g, ent, g_ent, chunk, rows):
    """dL/dlogits = -p * (g + g_ent (log p + entropy)) + g * onehot(t), written tile by tile into the (N, V)
    gradient (the one tensor autograd needs back), recomputing p = exp(z - lse); g_ent None: no entropy term."""
    N, V = logits.shape
    dlogits = torch.empty_like(logits)
    for r0 in range(0, N, rows):
        r1 = min(N, r0 + rows)
        t, gr, l = targets[r0:r1], g[r0:r1, None], lse[r0:r1, None]
        for v0 in range(0, V, chunk):
            logp = logits[r0:r1, v0:v0 + chunk].float() - l             # (n, C) fp32
            if g_ent is None:
                d = logp.exp_().mul_(-gr)
            else:
                d = (logp + ent[r0:r1, None]).mul_(g_ent[r0:r1, None]).add_(gr).mul_(-logp.exp())
            hit = ((t >= v0) & (t < v0 + d.shape[1])).nonzero().squeeze(1)   # rows whose target is in this chunk
            d[hit, t[hit] - v0] += gr[hit, 0]
            dlogits[r0:r1, v0:v0 + chunk] = d
    return dlogits


class _TokenLogprobsChunked(torch.autograd.Function):
    """The memory-bounded torch path (CPU default). Saves logits (already alive: the caller holds them) plus
    lse/entropy (N,), never an (N, V) log-softmax; temporaries are one rows x chunk fp32 tile at a time."""

    @staticmethod
    def forward(ctx, logits, targets, with_entropy, chunk, rows):
        lse, ent = _lse_entropy_chunked(logits, chunk, rows, with_entropy)
        logp = logits.gather(-1, targets[:, None]).squeeze(-1).float() - lse
        ctx.save_for_backward(logits, targets, lse, ent)
        ctx.chunk, ctx.rows, ctx.with_entropy = chunk, rows, with_entropy
        return (logp, ent) if with_entropy else logp

    @staticmethod
    def backward(ctx, g, g_ent=None):
        logits, targets, lse, ent = ctx.saved_tensors
        dlogits = _logprob_grad_chunked(logits, targets, lse, g.float(), ent,
                                        g_ent.float() if ctx.with_entropy else None, ctx.chunk, ctx.rows)
        return dlogits, None, None, None, None


def _token_logprobs_chunked(logits, targets, with_entropy=False, chunk=None, rows=None):
    chunk = chunk or min(logits.shape[1], _LOGP_CHUNK)
    rows = rows or max(1, _LOGP_TILE // chunk)
    return _TokenLogprobsChunked.apply(logits, targets, with_entropy, chunk, rows)


@_kernel
def _lse_row(base, V, BLOCK_V: tl.constexpr, WITH_ENT: tl.constexpr):
    """Online logsumexp (and entropy) of one row of V logits at `base`, BLOCK_V at a time (see
    _lse_entropy_chunked for the recurrences) -> (lse, entropy) fp32 scalars."""
    m = float("-inf")
    s = 0.0
    w = 0.0
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = cols < V
        z = tl.load(base + cols, mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        a = tl.exp(m - m_new)
        zc = z - m_new
        e = tl.exp(zc)                                                 # 0 on masked lanes
        if WITH_ENT:   # (s > 0 guard: on the first block s = 0 and m - m_new = -inf)
            w = a * (w + tl.where(s > 0, s * (m - m_new), 0.0)) + tl.sum(tl.where(mask, e * zc, 0.0), axis=0)
        s = a * s + tl.sum(e, axis=0)
        m = m_new
    return m + tl.log(s), tl.log(s) - w / s


@_kernel
def _logprob_fwd_kernel(LOGITS, TARGETS, LOGP, LSE, ENT, V, stride_n,
                        BLOCK_V: tl.constexpr, WITH_ENT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)         # int64: N * V can pass 2^31
    base = LOGITS + row * stride_n
    lse, ent = _lse_row(base, V, BLOCK_V, WITH_ENT)
    t = tl.load(TARGETS + row)
    zt = tl.load(base + t, mask=(t >= 0) & (t < V), other=float("nan")).to(tl.float32)
    tl.store(LOGP + row, zt - lse)
    tl.store(LSE + row, lse)
    if WITH_ENT:
        tl.store(ENT + row, ent)


@_kernel
def _logprob_bwd_kernel(LOGITS, TARGETS, LSE, ENT, G, GENT, DLOGITS, V, stride_n, stride_dn,
                        BLOCK_V: tl.constexpr, WITH_ENT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    t = tl.load(TARGETS + row)
    lse = tl.load(LSE + row)
    g = tl.load(G + row)
    if WITH_ENT:
        ent = tl.load(ENT + row)
        g_ent = tl.load(GENT + row)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = cols < V
        logp = tl.load(LOGITS + row * stride_n + cols, mask=mask, other=0.0).to(tl.float32) - lse
        p = tl.exp(logp)
        if WITH_ENT:
            d = -p * (g + g_ent * (logp + ent))
        else:
            d = -p * g
        d = tl.where(cols == t, d + g, d)
        tl.store(DLOGITS + row * stride_dn + cols, d.to(DLOGITS.dtype.element_ty), mask=mask)


def _logprob_block_v(V):
    return min(4096 if not _interpreting() else 1024, _pow2(V))


def _logprob_bwd_launch(logits, targets, lse, g, ent=None, g_ent=None):
    N, V = logits.shape
    dlogits = torch.empty_like(logits)
    with_ent = g_ent is not None
    _logprob_bwd_kernel[(N,)](logits, targets, lse, ent if with_ent else lse, g.float().contiguous(),
                              g_ent.float().contiguous() if with_ent else lse, dlogits, V, logits.stride(0),
                              dlogits.stride(0), BLOCK_V=_logprob_block_v(V), WITH_ENT=with_ent, num_warps=8)
    return dlogits


class _TokenLogprobsTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, with_entropy):
        _jit_ready()
        N, V = logits.shape
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        targets = targets.contiguous()
        logp = torch.empty(N, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(logp)
        ent = torch.empty_like(logp) if with_entropy else lse
        _logprob_fwd_kernel[(N,)](logits, targets, logp, lse, ent, V, logits.stride(0),
                                  BLOCK_V=_logprob_block_v(V), WITH_ENT=with_entropy, num_warps=8)
        ctx.save_for_backward(logits, targets, lse, ent)
        ctx.with_entropy = with_entropy
        return (logp, ent) if with_entropy else logp

    @staticmethod
    def backward(ctx, g, g_ent=None):
        logits, targets, lse, ent = ctx.saved_tensors
        return _logprob_bwd_launch(logits, targets, lse, g, ent, g_ent if ctx.with_entropy else None), None, None


def _check_logprob_args(logits, targets):
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"token_logprobs: want logits (N, V) and targets (N,); "
                         f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"token_logprobs: targets must be int64/int32, got {targets.dtype}")
    if not logits.is_cuda and targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(f"token_logprobs: targets must lie in [0, {logits.shape[1]}), got "
                         f"[{targets.min().item()}, {targets.max().item()}] (mask ignored positions yourself)")


def token_logprobs(logits, targets, with_entropy: bool = False):
    """logits (N, V), targets (N,) -> logp (N,) fp32 [, entropy (N,) fp32]; gradients flow to logits.
    Triton per use_triton; otherwise a chunked torch Function with the same memory bound (not the naive ref)."""
    _check_logprob_args(logits, targets)
    if use_triton(logits) and logits.numel() > 0:
        return _TokenLogprobsTriton.apply(logits, targets, with_entropy)
    # A decode step's logits: one tile and nothing kept for backward, so the plain form has the same memory bound
    # and saves the Function's ~0.2 ms per call.
    if logits.numel() <= _LOGP_TILE and not (logits.requires_grad and torch.is_grad_enabled()):
        return token_logprobs_ref(logits, targets, with_entropy)
    return _token_logprobs_chunked(logits, targets, with_entropy)


# ================================================================================================================
# 5. GRPO per-token loss (R1 eq. 1-3; DeepSeekMath eq. 3 in per-token form), fused with op 4.
#      rho  = exp(logp - old_logp)                                  # R1 eq. 1: pi_theta / pi_old
#      pg   = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) # clipped surrogate (DAPO's two eps)
#      kl   = exp(ref - logp) - (ref - logp) - 1                     # R1 eq. 2: the k3 estimator, >= 0
#      loss = pg + beta * kl
#    All three depend on the logits only through logp, so dloss/dlogits = (dloss/dlogp) * (onehot - p): the
#    fused forward stores dloss/dlogp per token and the backward is op 4's backward with that coefficient.
#    grpo.py computes the same term with op 4 + grpo.grpo_loss (which also offers k1/k2/k3+, the aggregations and
#    the entropy log); this fused op is R1's default written as one kernel, a stand-alone exercise that
#    tests/test_kernels.py pins to grpo.grpo_loss (test_grpo_token_loss_equals_grpo_loss).
def _grpo_formula(logp, old_logp, ref_logp, adv, eps_low, eps_high, beta):
    rho = torch.exp(logp - old_logp)                                                  # R1 eq. 1
    pg = -torch.min(rho * adv, torch.clamp(rho, 1 - eps_low, 1 + eps_high) * adv)
    if ref_logp is None:
        kl = torch.zeros_like(logp)
    else:
        d = ref_logp - logp
        kl = torch.expm1(d) - d         # R1 eq. 2 (k3) = e^d - d - 1; expm1 keeps it >= 0 in fp32 for tiny d
    return pg + beta * kl, kl


def grpo_token_loss_ref(logits, targets, old_logp, ref_logp, adv, eps_low, eps_high, beta):
    """The readable definition: naive token_logprobs_ref, then the plain formula. Returns (loss_tok, logp, kl_tok),
    all (N,) fp32; kl_tok is k3 without beta. old_logp, ref_logp, adv carry no gradient."""
    logp = token_logprobs_ref(logits, targets)
    ref = None if ref_logp is None else ref_logp.detach().float()
    loss, kl = _grpo_formula(logp, old_logp.detach().float(), ref, adv.detach().float(), eps_low, eps_high, beta)
    return loss, logp, kl


@_kernel
def _grpo_fwd_kernel(LOGITS, TARGETS, OLD, REF, ADV, LOSS, LOGP, KL, LSE, DLOSS, DKL, V, stride_n,
                     eps_low, eps_high, beta, HAS_REF: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_n
    lse, _ = _lse_row(base, V, BLOCK_V, False)
    t = tl.load(TARGETS + row)
    logp = tl.load(base + t, mask=(t >= 0) & (t < V), other=float("nan")).to(tl.float32) - lse
    adv = tl.load(ADV + row).to(tl.float32)
    rho = tl.exp(logp - tl.load(OLD + row).to(tl.float32))                        # R1 eq. 1
    surr1 = rho * adv
    surr2 = tl.minimum(tl.maximum(rho, 1.0 - eps_low), 1.0 + eps_high) * adv
    pg = -tl.minimum(surr1, surr2)
    # d pg / d logp: -A rho where the unclipped term is the min (ties included: there rho is inside the clip
    # range, and torch's min splits the gradient between two equal terms), 0 where the clipped one wins.
    dpg = tl.where(surr1 <= surr2, -adv * rho, 0.0)
    if HAS_REF:
        d = tl.load(REF + row).to(tl.float32) - logp
        # R1 eq. 2 (k3) = e^d - 1 - d. For small |d|, e^d - 1 loses digits and k3 can round below 0, so
        # expm1 (not in tl without libdevice) comes from its Taylor series there (error ~ d^5 / 120).
        em1 = tl.where(tl.abs(d) < 1e-2, d * (1.0 + d * (0.5 + d * (1.0 / 6.0 + d * (1.0 / 24.0)))), tl.exp(d) - 1.0)
        kl = em1 - d
        dkl = -em1                                                                 # d k3 / d logp = 1 - e^d
    else:
        kl = 0.0
        dkl = 0.0
    tl.store(LOSS + row, pg + beta * kl)
    tl.store(LOGP + row, logp)
    tl.store(KL + row, kl)
    tl.store(LSE + row, lse)
    tl.store(DLOSS + row, dpg + beta * dkl)
    tl.store(DKL + row, dkl)


class _GRPOTokenLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, old_logp, ref_logp, adv, eps_low, eps_high, beta):
        _jit_ready()
        N, V = logits.shape
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        targets = targets.contiguous()
        f32 = dict(dtype=torch.float32, device=logits.device)
        loss, logp, kl, lse, dloss, dkl = (torch.empty(N, **f32) for _ in range(6))
        has_ref = ref_logp is not None
        old = old_logp.detach().float().contiguous()
        _grpo_fwd_kernel[(N,)](logits, targets, old, ref_logp.detach().float().contiguous() if has_ref else old,
                               adv.detach().float().contiguous(), loss, logp, kl, lse, dloss, dkl, V,
                               logits.stride(0), float(eps_low), float(eps_high), float(beta), HAS_REF=has_ref,
                               BLOCK_V=_logprob_block_v(V), num_warps=8)
        ctx.save_for_backward(logits, targets, lse, dloss, dkl)
        return loss, logp, kl

    @staticmethod
    def backward(ctx, g_loss, g_logp, g_kl):
        logits, targets, lse, dloss, dkl = ctx.saved_tensors
        coef = g_loss.float() * dloss + g_logp.float() + g_kl.float() * dkl     # total dL/dlogp per token
        return _logprob_bwd_launch(logits, targets, lse, coef), None, None, None, None, None, None, None


def grpo_token_loss(logits, targets, old_logp, ref_logp, adv, eps_low, eps_high, beta):
    """logits (N, V); targets, old_logp, adv (N,); ref_logp (N,) or None (no KL term) ->
    (loss_tok, logp, kl_tok), each (N,) fp32. loss_tok = pg + beta * k3 per token (R1 eq. 1-3); the caller takes
    the masked mean (1/|o_i| per sequence, or DAPO/Dr. GRPO variants). Gradient flows to logits only."""
    _check_logprob_args(logits, targets)
    N = logits.shape[0]
    adv = torch.broadcast_to(adv, (N,))
    for name, v in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if v is not None and v.shape != (N,):
            raise ValueError(f"grpo_token_loss: {name} must be ({N},), got {tuple(v.shape)}")
    if use_triton(logits) and logits.numel() > 0:
        return _GRPOTokenLoss.apply(logits, targets, old_logp, ref_logp, adv, eps_low, eps_high, beta)
    logp = token_logprobs(logits, targets)                       # the chunked, memory-bounded torch path
    ref = None if ref_logp is None else ref_logp.detach().float()
    loss, kl = _grpo_formula(logp, old_logp.detach().float(), ref, adv.detach().float(), eps_low, eps_high, beta)
    return loss, logp, kl


# ================================================================================================================
# 6. Causal attention for training with MLA shapes (qk head dim != v head dim).
def attention_ref(q, k, v, scale: float, causal: bool = True):
    """q, k (B, T, H, Dqk), v (B, T, H, Dv) -> (B, T, H, Dv). Right-padded rows need no mask under causality."""
    s = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) * scale
    if causal:
        T, S = q.shape[1], k.shape[1]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhts,bshd->bthd", p, v.float()).to(q.dtype)


# Flash attention (FlashAttention-2's loop order). Query i sees key j iff j <= i + (S - T) (bottom-right
# aligned, as the reference's tril(S - T)); S >= T so every query row sees key 0 and no row is all -inf.
@_kernel
def _attn_fwd_kernel(Q, K, V, O, LSE, scale, H, T, S, DQK, DV,
                     sqb, sqt, sqh, skb, sks, skh, svb, svs, svh, sob, sot, soh,
                     CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)     # int64: batch offsets can pass 2^31
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dq = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + dq[None, :],
                mask=(offs_m < T)[:, None] & (dq < DQK)[None, :], other=0.0)          # (BM, BDQK)
    m_i = tl.zeros((BLOCK_M,), dtype=tl.float32) - float("inf")
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    hi = S
    if CAUSAL:
        hi = tl.minimum((pid_m + 1) * BLOCK_M + S - T, S)   # key blocks past the diagonal are skipped
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * sks + dq[None, :],
                    mask=(offs_n < S)[:, None] & (dq < DQK)[None, :], other=0.0)      # (BN, BDQK)
        s = tl.dot(q, tl.trans(k)) * scale                                             # (BM, BN) fp32
        valid = (offs_n < S)[None, :]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + S - T)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svs + dv[None, :],
                    mask=(offs_n < S)[:, None] & (dv < DV)[None, :], other=0.0)       # (BN, BDV)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + dv[None, :], acc.to(O.dtype.element_ty),
             mask=(offs_m < T)[:, None] & (dv < DV)[None, :])
    tl.store(LSE + bh * T + offs_m, m_i + tl.log(l_i), mask=offs_m < T)       # (B, H, T): what backward needs


@_kernel
def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV_, scale, H, T, S, DQK, DV,
                          sqb, sqt, sqh, skb, sks, skh, svb, svs, svh, sdob, sdot, sdoh,
                          sdkb, sdks, sdkh, sdvb, sdvs, sdvh, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr):
    # One program = one key block: loop over the query blocks that see it, recompute p = exp(s - lse), and
    # accumulate dv = p^T do, dk = ds^T q with ds = p * (do v^T - delta), delta = rowsum(do * o).
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)     # int64: batch offsets can pass 2^31
    h = bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dq = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    kmask = (offs_n < S)[:, None] & (dq < DQK)[None, :]
    vmask = (offs_n < S)[:, None] & (dv < DV)[None, :]
    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * sks + dq[None, :], mask=kmask, other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svs + dv[None, :], mask=vmask, other=0.0)
    dk = tl.zeros((BLOCK_N, BLOCK_DQK), dtype=tl.float32)
    dvacc = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    lo = 0
    if CAUSAL:
        lo = tl.maximum(pid_n * BLOCK_N - (S - T), 0) // BLOCK_M * BLOCK_M   # first query that sees this block
    for m0 in range(lo, T, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + dq[None, :],
                    mask=(offs_m < T)[:, None] & (dq < DQK)[None, :], other=0.0)
        do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdot + dv[None, :],
                     mask=(offs_m < T)[:, None] & (dv < DV)[None, :], other=0.0)
        lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=0.0)
        delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale                                             # (BM, BN)
        valid = (offs_m < T)[:, None] & (offs_n < S)[None, :]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + S - T)
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dvacc += tl.dot(tl.trans(p).to(do.dtype), do)
        dp = tl.dot(do, tl.trans(v))                                                   # (BM, BN)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q)
    tl.store(DK + b * sdkb + h * sdkh + offs_n[:, None] * sdks + dq[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=kmask)
    tl.store(DV_ + b * sdvb + h * sdvh + offs_n[:, None] * sdvs + dv[None, :], dvacc.to(DV_.dtype.element_ty),
             mask=vmask)


@_kernel
def _attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, scale, H, T, S, DQK, DV,
                        sqb, sqt, sqh, skb, sks, skh, svb, svs, svh, sdob, sdot, sdoh,
                        sdqb, sdqt, sdqh, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr):
    # One program = one query block: dq = sum over keys of ds k (no atomics: deterministic).
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)     # int64: batch offsets can pass 2^31
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dq = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    qmask = (offs_m < T)[:, None] & (dq < DQK)[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + dq[None, :], mask=qmask, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdot + dv[None, :],
                 mask=(offs_m < T)[:, None] & (dv < DV)[None, :], other=0.0)
    lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=0.0)
    delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_DQK), dtype=tl.float32)
    hi = S
    if CAUSAL:
        hi = tl.minimum((pid_m + 1) * BLOCK_M + S - T, S)
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * sks + dq[None, :],
                    mask=(offs_n < S)[:, None] & (dq < DQK)[None, :], other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svs + dv[None, :],
                    mask=(offs_n < S)[:, None] & (dv < DV)[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        valid = (offs_m < T)[:, None] & (offs_n < S)[None, :]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + S - T)
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        acc += tl.dot(ds.to(k.dtype), k)
    tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqt + dq[None, :], (acc * scale).to(DQ.dtype.element_ty),
             mask=qmask)


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel and head-width tier. Chosen so that no H100 (sm_90) build
# spills registers or exceeds shared memory in bf16 or fp32 (checked with Triton's ahead-of-time compiler and
# cuobjdump's resource usage; not timed on a GPU). Wide heads (MLA's 192 -> 256 padded) need small tiles.
_ATTN_CFG = {   #        fwd               bwd dk/dv          bwd dq
    64: dict(fwd=(64, 64, 8, 3), dkdv=(32, 64, 8, 2), dq=(64, 64, 8, 3)),
    128: dict(fwd=(64, 32, 8, 2), dkdv=(32, 32, 8, 2), dq=(32, 64, 8, 2)),
    256: dict(fwd=(64, 32, 8, 2), dkdv=(16, 32, 8, 2), dq=(16, 32, 8, 2)),
}


def _attn_cfg(Dqk, Dv, which):
    """-> launch meta-parameters for one attention kernel (the interpreter: 32 x 32 tiles, fewer programs)."""
    width = max(_pow2(Dqk), _pow2(Dv))
    if width > 256:
        raise ValueError(f"attention: head dims up to 256 are supported, got Dqk={Dqk}, Dv={Dv}")
    bm, bn, warps, stages = (32, 32, 4, 1) if _interpreting() else _ATTN_CFG[max(64, width)][which]
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_DQK=_pow2(Dqk), BLOCK_DV=_pow2(Dv), num_warps=warps,
                num_stages=stages)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, causal):
        _jit_ready()
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        B, T, H, Dqk = q.shape
        S, Dv = k.shape[1], v.shape[-1]
        o = torch.empty(B, T, H, Dv, dtype=q.dtype, device=q.device)
        lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
        meta = _attn_cfg(Dqk, Dv, "fwd")
        _attn_fwd_kernel[(triton.cdiv(T, meta["BLOCK_M"]), B * H)](
            q, k, v, o, lse, scale, H, T, S, Dqk, Dv, q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
            o.stride(0), o.stride(1), o.stride(2), CAUSAL=causal, **meta)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale, ctx.causal = scale, causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        do = do.contiguous()
        B, T, H, Dqk = q.shape
        S, Dv = k.shape[1], v.shape[-1]
        delta = (do.float() * o.float()).sum(-1).transpose(1, 2).contiguous()        # (B, H, T)
        # fresh contiguous gradients: q, k, v may be views (a split of wkv_b's output, an expand over heads)
        dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
        common = (ctx.scale, H, T, S, Dqk, Dv, q.stride(0), q.stride(1), q.stride(2),
                  k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
                  do.stride(0), do.stride(1), do.stride(2))
        meta = _attn_cfg(Dqk, Dv, "dkdv")
        _attn_bwd_dkdv_kernel[(triton.cdiv(S, meta["BLOCK_N"]), B * H)](
            q, k, v, do, lse, delta, dk, dv, *common, *dk.stride()[:3], *dv.stride()[:3], CAUSAL=ctx.causal, **meta)
        meta = _attn_cfg(Dqk, Dv, "dq")
        _attn_bwd_dq_kernel[(triton.cdiv(T, meta["BLOCK_M"]), B * H)](
            q, k, v, do, lse, delta, dq, *common, *dq.stride()[:3], CAUSAL=ctx.causal, **meta)
        return dq, dk, dv, None, None


def attention(q, k, v, scale: float, causal: bool = True):
    if q.dim() != 4 or k.shape[:3] != (q.shape[0], k.shape[1], q.shape[2]) or k.shape[-1] != q.shape[-1] \
            or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"attention: want q, k (B, T|S, H, Dqk) and v (B, S, H, Dv); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if causal and k.shape[1] < q.shape[1]:
        raise ValueError(f"attention: causal needs at least as many keys ({k.shape[1]}) as queries ({q.shape[1]})")
    if use_triton(q) and q.numel() > 0 and v.numel() > 0:
        return _Attention.apply(q, k, v, float(scale), causal)
    if q.shape[1] == k.shape[1] and q.numel() > 0:   # torch's fused attention: same math, no (T, S) score tensor
        # torch's CPU flash kernel needs one head dim for q, k and v; with MLA's Dv != Dqk it would silently take
        # the unfused math path (bmm, masked_fill, ~2x slower). Zero columns pad the narrower side: zero dims
        # add nothing to q.k (the scale is passed explicitly), and each output column is its own sum p v[:, j],
        # so the padded output's first Dv columns are exactly the unpadded ones (and their gradients).
        Dqk, Dv = q.shape[-1], v.shape[-1]
        if Dv < Dqk:
            v = F.pad(v, (0, Dqk - Dv))
        elif Dqk < Dv:
            q, k = F.pad(q, (0, Dv - Dqk)), F.pad(k, (0, Dv - Dqk))
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                                           scale=scale)
        return o.transpose(1, 2)[..., :Dv]                                              # (B, T, H, Dv)
    return attention_ref(q, k, v, scale, causal)


# ================================================================================================================
# 7. MLA decode attention over the latent cache (absorbed form, V3 eq. 1-11 with W_uk / W_uv folded out).
def mla_decode_ref(q_lat, q_pe, cache, lengths, scale: float):
    """One query token per row.
    q_lat (B, H, C): q_nope already multiplied by W_uk (C = kv_lora_rank); q_pe (B, H, R): roped query part;
    cache (B, S, C + R): each token's [normed c_kv ; roped k_R] in one row (FlashMLA's layout); lengths (B,): keys
    [0, lengths[b]) are valid. -> (B, H, C): softmax-weighted sum of c_kv (the caller applies W_uv then W_o).
    With query and key each one concatenated row, q_lat . c_kv + q_pe . k_R is a single matrix product."""
    C = q_lat.shape[-1]
    kv = cache.float()
    s = torch.cat([q_lat, q_pe], dim=-1).float() @ kv.transpose(1, 2) * scale           # (B, H, S) V3 eq. 10
    valid = torch.arange(cache.shape[1], device=s.device)[None, :] < lengths[:, None]   # (B, S)
    s = s.masked_fill(~valid[:, None, :], float("-inf"))
    return (torch.softmax(s, dim=-1) @ kv[..., :C]).to(q_lat.dtype)                    # (B, H, C)


@_kernel
def _mla_decode_kernel(QL, QP, KV, PE, LENS, O, scale, H, S, C, R,
                       sqlb, sqlh, sqpb, sqph, skvb, skvs, speb, spes, sob, soh,
                       BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
                       BLOCK_R: tl.constexpr):
    # One program = one batch row and BLOCK_H heads. All heads share the row's latent cache (like MQA), so a
    # block of heads turns the score and value products into real matrix products (tensor cores on CUDA).
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    c = tl.arange(0, BLOCK_C)
    r = tl.arange(0, BLOCK_R)
    ql = tl.load(QL + b * sqlb + h[:, None] * sqlh + c[None, :], mask=(h < H)[:, None] & (c < C)[None, :],
                 other=0.0)                                                             # (BH, BC)
    qp = tl.load(QP + b * sqpb + h[:, None] * sqph + r[None, :], mask=(h < H)[:, None] & (r < R)[None, :],
                 other=0.0)                                                             # (BH, BR)
    L = tl.minimum(tl.load(LENS + b), S)
    m_i = tl.zeros((BLOCK_H,), dtype=tl.float32) - float("inf")
    l_i = tl.zeros((BLOCK_H,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_H, BLOCK_C), dtype=tl.float32)
    for s0 in range(0, L, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        smask = offs_s < L
        kv = tl.load(KV + b * skvb + offs_s[:, None] * skvs + c[None, :], mask=smask[:, None] & (c < C)[None, :],
                     other=0.0)                                                         # (BS, BC)
        pe = tl.load(PE + b * speb + offs_s[:, None] * spes + r[None, :], mask=smask[:, None] & (r < R)[None, :],
                     other=0.0)                                                         # (BS, BR)
        sc = (tl.dot(ql, tl.trans(kv)) + tl.dot(qp, tl.trans(pe))) * scale             # (BH, BS)
        sc = tl.where(smask[None, :], sc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(sc - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(kv.dtype), kv)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]   # lengths[b] == 0: zeros (the reference gives NaN)
    tl.store(O + b * sob + h[:, None] * soh + c[None, :], out.to(O.dtype.element_ty),
             mask=(h < H)[:, None] & (c < C)[None, :])


def mla_decode(q_lat, q_pe, cache, lengths, scale: float):
    B, H, C = q_lat.shape
    R = q_pe.shape[-1]
    if q_pe.shape[:2] != (B, H) or cache.dim() != 3 or cache.shape[0] != B or cache.shape[2] != C + R or \
            lengths.shape != (B,):
        raise ValueError(f"mla_decode: want q_lat (B, H, C), q_pe (B, H, R), cache (B, S, C + R), lengths (B,); "
                         f"got {tuple(q_lat.shape)}, {tuple(q_pe.shape)}, {tuple(cache.shape)}, {tuple(lengths.shape)}")
    if not (use_triton(q_lat) and q_lat.numel() > 0):
        return mla_decode_ref(q_lat, q_pe, cache, lengths, scale)
    _jit_ready()
    S = cache.shape[1]
    q_lat, q_pe, cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (q_lat, q_pe, cache))
    kv_cache, pe_cache = cache[..., :C], cache[..., C:]                # views: the kernel reads them by strides
    out = torch.empty(B, H, C, dtype=q_lat.dtype, device=q_lat.device)
    # CUDA: 16 heads x 32 keys, 8 warps: no register spills at C = 512 in bf16 or fp32 (sm_90 build, see _ATTN_CFG)
    BLOCK_H = min(_pow2(H), 64 if _interpreting() else 16)
    BLOCK_S = 32
    _mla_decode_kernel[(B, triton.cdiv(H, BLOCK_H))](
        q_lat, q_pe, kv_cache, pe_cache, lengths.contiguous(), out, float(scale), H, S, C, R,
        q_lat.stride(0), q_lat.stride(1), q_pe.stride(0), q_pe.stride(1), kv_cache.stride(0), kv_cache.stride(1),
        pe_cache.stride(0), pe_cache.stride(1), out.stride(0), out.stride(1),
        BLOCK_H=BLOCK_H, BLOCK_S=BLOCK_S, BLOCK_C=_pow2(C), BLOCK_R=_pow2(R), num_warps=8, num_stages=2)
    return out


# ================================================================================================================
# 8. MoE routed experts: sort (token, expert) pairs by expert, one SwiGLU per expert on its contiguous slice
#    (the torch reference of a grouped GEMM), then scatter back weighted by the gates. No token dropping.
def moe_ffn_ref(x, topk_idx, topk_weight, w1, w3, w2):
    """x (N, D); topk_idx, topk_weight (N, K); w1, w3 (E, D, I); w2 (E, I, D) -> (N, D) = sum_k g_k FFN_{e_k}(x)."""
    N, K = topk_idx.shape
    E = w1.shape[0]
    flat = topk_idx.reshape(-1)                            # (N*K,) expert of each pair
    order = flat.argsort(stable=True)                      # pairs grouped by expert
    token = order // K                                     # (N*K,) token of each sorted pair
    counts = torch.bincount(flat, minlength=E).tolist()    # rows per expert
    xs = x[token]                                          # (N*K, D) permuted copies
    ys = []
    start = 0
    for e, n in enumerate(counts):
        if n:
            seg = xs[start:start + n]
            ys.append(swiglu_ref(seg @ w1[e], seg @ w3[e]) @ w2[e])
        start += n
    ys = torch.cat(ys) * topk_weight.reshape(-1)[order, None].to(x.dtype)
    return torch.zeros_like(x).index_add(0, token, ys)     # unpermute: sum each token's K expert outputs


# The Triton pipeline, with P = N*K (token, expert) pairs, pair p = n*K + k:
#   routing metadata: (a) per block of pairs, a histogram over experts; (b) one program turns the (blocks, E)
#     histograms into each block's first slot per expert (exclusive prefix sums over blocks, then over experts);
#     (c) per block, each pair's slot = its block's slot for its expert + its rank among the block's pairs of
#     that expert. Slots are sorted by (expert, pair), the stable order of the reference; no host sync anywhere.
#   permute xs[pos[p]] = x[p // K]; grouped GEMMs h1 = xs W1[e], h3 = xs W3[e], ys = swiglu(h1, h3) W2[e] on
#   each expert's rows; unpermute out[n] = sum_k g[n, k] ys[pos[n, k]] (a gather: no atomics, deterministic).
@_kernel
def _moe_hist_kernel(IDX, HIST, P, E, BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr):
    pid = tl.program_id(0)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    e = tl.load(IDX + p, mask=p < P, other=-1)
    ev = tl.arange(0, BLOCK_E)
    onehot = (e[:, None] == ev[None, :]).to(tl.int32)                       # (BP, BE)
    tl.store(HIST + pid * E + ev, tl.sum(onehot, axis=0), mask=ev < E)


@_kernel
def _moe_offsets_kernel(HIST, BASE, STARTS, COUNTS, NB, E, BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr):
    ev = tl.arange(0, BLOCK_E)
    running = tl.zeros((BLOCK_E,), dtype=tl.int32)
    for b0 in range(0, NB, BLOCK_B):
        bb = b0 + tl.arange(0, BLOCK_B)
        mask = (bb < NB)[:, None] & (ev < E)[None, :]
        hist = tl.load(HIST + bb[:, None] * E + ev[None, :], mask=mask, other=0)       # (BB, BE)
        excl = tl.cumsum(hist, axis=0) - hist + running[None, :]                        # pairs of e in blocks < b
        tl.store(BASE + bb[:, None] * E + ev[None, :], excl, mask=mask)
        running += tl.sum(hist, axis=0)
    starts = tl.cumsum(running, axis=0) - running                                       # first row of expert e
    tl.store(STARTS + ev, starts, mask=ev < E)
    tl.store(COUNTS + ev, running, mask=ev < E)


@_kernel
def _moe_scatter_kernel(IDX, BASE, STARTS, POS, P, E, BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr):
    pid = tl.program_id(0)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    e = tl.load(IDX + p, mask=p < P, other=-1)
    ev = tl.arange(0, BLOCK_E)
    onehot = (e[:, None] == ev[None, :]).to(tl.int32)                       # (BP, BE)
    rank = tl.sum(tl.cumsum(onehot, axis=0) * onehot, axis=1) - 1           # rank among this block's pairs of e
    slot = tl.load(BASE + pid * E + e, mask=p < P, other=0) + tl.load(STARTS + e, mask=p < P, other=0)
    tl.store(POS + p, slot + rank, mask=p < P)


def _moe_route(topk_idx, E):
    """topk_idx (N, K) -> pos (N*K,) int32 row of each pair in expert-sorted order, starts (E,), counts (E,)."""
    P = topk_idx.numel()
    idx = topk_idx.reshape(-1).to(torch.int32)
    BLOCK_E = _pow2(E)
    BLOCK_P = max(16, min(256, 8192 // BLOCK_E))
    NB = triton.cdiv(P, BLOCK_P)
    dev = topk_idx.device
    hist = torch.empty(NB, E, dtype=torch.int32, device=dev)
    base = torch.empty_like(hist)
    starts = torch.empty(E, dtype=torch.int32, device=dev)
    counts = torch.empty_like(starts)
    pos = torch.empty(P, dtype=torch.int32, device=dev)
    _moe_hist_kernel[(NB,)](idx, hist, P, E, BLOCK_P=BLOCK_P, BLOCK_E=BLOCK_E)
    _moe_offsets_kernel[(1,)](hist, base, starts, counts, NB, E, BLOCK_B=max(1, min(64, 8192 // BLOCK_E)),
                              BLOCK_E=BLOCK_E)
    _moe_scatter_kernel[(NB,)](idx, base, starts, pos, P, E, BLOCK_P=BLOCK_P, BLOCK_E=BLOCK_E)
    return pos, starts, counts


@_kernel
def _moe_scatter_rows_kernel(SRC, POS, W, DST, YS, DW, D, K, stride_src, stride_dst, stride_ys,
                             HAS_W: tl.constexpr, WITH_DW: tl.constexpr, BLOCK_D: tl.constexpr):
    # One program = one pair p: DST[pos[p]] = (w[p] *) SRC[p // K]. This is the permute (no weights) and the
    # backward of the unpermute (weights, plus dw[p] = <SRC[p // K], YS[pos[p]]>, the gate-weight gradient).
    p = tl.program_id(0).to(tl.int64)
    n = p // K
    row = tl.load(POS + p).to(tl.int64)
    if HAS_W:
        w = tl.load(W + p).to(tl.float32)
    dw = 0.0
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(SRC + n * stride_src + d, mask=d < D, other=0.0).to(tl.float32)
        if WITH_DW:
            dw += tl.sum(x * tl.load(YS + row * stride_ys + d, mask=d < D, other=0.0).to(tl.float32), axis=0)
        if HAS_W:
            x = x * w
        tl.store(DST + row * stride_dst + d, x.to(DST.dtype.element_ty), mask=d < D)
    if WITH_DW:
        tl.store(DW + p, dw)


@_kernel
def _moe_gather_rows_kernel(SRC, POS, W, DST, D, K, stride_src, stride_dst,
                            HAS_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    # One program = one token n: DST[n] = sum_k (w[n, k] *) SRC[pos[n, k]]. The unpermute (with gate weights)
    # and the backward of the permute (without): each token's K rows are gathered, never scattered with atomics.
    n = tl.program_id(0).to(tl.int64)
    kk = tl.arange(0, BLOCK_K)
    rows = tl.load(POS + n * K + kk, mask=kk < K, other=0).to(tl.int64)
    if HAS_W:
        w = tl.load(W + n * K + kk, mask=kk < K, other=0.0).to(tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        y = tl.load(SRC + rows[:, None] * stride_src + d[None, :], mask=(kk < K)[:, None] & (d < D)[None, :],
                    other=0.0).to(tl.float32)                                           # (BK, BD)
        if HAS_W:
            y = y * w[:, None]
        tl.store(DST + n * stride_dst + d, tl.sum(y, axis=0).to(DST.dtype.element_ty), mask=d < D)


@_kernel
def _grouped_gemm_kernel(A, B, C, STARTS, COUNTS, E, Kd, Nd, sam, sak, sbe, sbk, sbn, scm, scn,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         BLOCK_E: tl.constexpr):
    # C[rows of e] = A[rows of e] @ B[e] for every expert e; rows of e = [starts[e], starts[e] + counts[e]).
    # The grid has an upper bound of row blocks (cdiv(rows, BM) + E, no host sync to learn the counts); each
    # program finds its expert from the per-expert block counts, and surplus programs do nothing.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    ev = tl.arange(0, BLOCK_E)
    cnt = tl.load(COUNTS + ev, mask=ev < E, other=0)
    nblk = (cnt + BLOCK_M - 1) // BLOCK_M
    blk_end = tl.cumsum(nblk, axis=0)                                           # inclusive, per expert
    e = tl.sum((blk_end <= pid_m).to(tl.int32), axis=0)                         # experts wholly before pid_m
    live = e < E
    e = tl.minimum(e, E - 1)
    blk0 = tl.sum(tl.where(ev == e, blk_end - nblk, 0), axis=0)
    row0 = tl.load(STARTS + e)
    row_end = tl.where(live, row0 + tl.load(COUNTS + e), row0)                  # surplus program: no rows
    rows = row0 + (pid_m - blk0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < row_end
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_hi = tl.where(live, Kd, 0)
    for k0 in range(0, k_hi, BLOCK_K):
        a = tl.load(A + rows[:, None].to(tl.int64) * sam + (k0 + kk)[None, :] * sak,
                    mask=rmask[:, None] & (k0 + kk < Kd)[None, :], other=0.0)        # (BM, BK)
        b = tl.load(B + e.to(tl.int64) * sbe + (k0 + kk)[:, None] * sbk + cols[None, :] * sbn,
                    mask=(k0 + kk < Kd)[:, None] & (cols < Nd)[None, :], other=0.0)  # (BK, BN)
        acc += tl.dot(a, b.to(a.dtype))
    tl.store(C + rows[:, None].to(tl.int64) * scm + cols[None, :] * scn, acc.to(C.dtype.element_ty),
             mask=rmask[:, None] & (cols < Nd)[None, :])


@_kernel
def _grouped_wgrad_kernel(A, G, DW, STARTS, COUNTS, Kd, Nd, sam, sak, sgm, sgn, swe, swk, swn,
                          BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    # dW[e] = A[rows of e]^T @ G[rows of e]: one program per (expert, (K, N) tile), looping over the expert's
    # rows. Experts that got no token get a zero gradient, as in the reference.
    e = tl.program_id(0)
    pid = tl.program_id(1)
    n_tiles_n = tl.cdiv(Nd, BLOCK_N)
    kk = (pid // n_tiles_n) * BLOCK_K + tl.arange(0, BLOCK_K)
    nn = (pid % n_tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    row0 = tl.load(STARTS + e)
    row_end = row0 + tl.load(COUNTS + e)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(row0, row_end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        rmask = rows < row_end
        a = tl.load(A + rows[:, None].to(tl.int64) * sam + kk[None, :] * sak,
                    mask=rmask[:, None] & (kk < Kd)[None, :], other=0.0)              # (BM, BK)
        g = tl.load(G + rows[:, None].to(tl.int64) * sgm + nn[None, :] * sgn,
                    mask=rmask[:, None] & (nn < Nd)[None, :], other=0.0)              # (BM, BN)
        acc += tl.dot(tl.trans(a), g.to(a.dtype))
    tl.store(DW + e.to(tl.int64) * swe + kk[:, None] * swk + nn[None, :] * swn, acc.to(DW.dtype.element_ty),
             mask=(kk < Kd)[:, None] & (nn < Nd)[None, :])


def _gemm_blocks():
    return (32, 32, 32) if _interpreting() else (64, 64, 32)


def _grouped_gemm(a, w, starts, counts, transpose_w=False):
    """a (M, Kd) expert-sorted rows; w (E, Kd, Nd) (or (E, Nd, Kd) used transposed) -> (M, Nd)."""
    M = a.shape[0]
    E = w.shape[0]
    sbe, sbk, sbn = w.stride() if not transpose_w else (w.stride(0), w.stride(2), w.stride(1))
    Kd, Nd = (w.shape[1], w.shape[2]) if not transpose_w else (w.shape[2], w.shape[1])
    c = torch.empty(M, Nd, dtype=a.dtype, device=a.device)
    BM, BN, BK = _gemm_blocks()
    grid = (triton.cdiv(M, BM) + E, triton.cdiv(Nd, BN))
    _grouped_gemm_kernel[grid](a, w, c, starts, counts, E, Kd, Nd, a.stride(0), a.stride(1), sbe, sbk, sbn,
                               c.stride(0), c.stride(1), BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, BLOCK_E=_pow2(E))
    return c


def _grouped_wgrad(a, g, starts, counts, w_like):
    """a (M, Kd), g (M, Nd) expert-sorted -> dW (E, Kd, Nd) in w_like's dtype."""
    E, Kd, Nd = w_like.shape
    dw = torch.empty(E, Kd, Nd, dtype=w_like.dtype, device=a.device)
    BM, BN, BK = _gemm_blocks()
    _grouped_wgrad_kernel[(E, triton.cdiv(Kd, BK) * triton.cdiv(Nd, BN))](
        a, g, dw, starts, counts, Kd, Nd, a.stride(0), a.stride(1), g.stride(0), g.stride(1), *dw.stride(),
        BLOCK_M=BM, BLOCK_K=BK, BLOCK_N=BN)
    return dw


def _moe_gather_rows(src, pos, w, N, K):
    D = src.shape[1]
    out = torch.empty(N, D, dtype=src.dtype, device=src.device)
    _moe_gather_rows_kernel[(N,)](src, pos, w if w is not None else pos, out, D, K, src.stride(0), out.stride(0),
                                  HAS_W=w is not None, BLOCK_K=_pow2(K, 1), BLOCK_D=min(_pow2(D), 1024))
    return out


class _MoEFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, topk_idx, topk_weight, w1, w3, w2):
        _jit_ready()
        N, K = topk_idx.shape
        D = x.shape[1]
        x = x.contiguous()
        gate = topk_weight.reshape(-1).contiguous()
        pos, starts, counts = _moe_route(topk_idx, w1.shape[0])
        xs = torch.empty(N * K, D, dtype=x.dtype, device=x.device)
        _moe_scatter_rows_kernel[(N * K,)](x, pos, pos, xs, xs, pos, D, K, x.stride(0), xs.stride(0), 0,
                                           HAS_W=False, WITH_DW=False, BLOCK_D=min(_pow2(D), 1024))   # permute
        h1 = _grouped_gemm(xs, w1, starts, counts)                              # (N*K, I)
        h3 = _grouped_gemm(xs, w3, starts, counts)
        ys = _grouped_gemm(_swiglu_fwd(h1, h3), w2, starts, counts)             # (N*K, D)
        out = _moe_gather_rows(ys, pos, gate, N, K)                             # unpermute, gate-weighted
        ctx.save_for_backward(xs, h1, h3, ys, pos, starts, counts, gate, w1, w3, w2)
        ctx.shape = (N, K, D)
        ctx.weight_dtype = topk_weight.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        xs, h1, h3, ys, pos, starts, counts, gate, w1, w3, w2 = ctx.saved_tensors
        N, K, D = ctx.shape
        dout = dout.contiguous()
        dys = torch.empty_like(ys)
        dgate = torch.empty(N * K, dtype=torch.float32, device=dout.device)
        _moe_scatter_rows_kernel[(N * K,)](dout, pos, gate, dys, ys, dgate, D, K, dout.stride(0), dys.stride(0),
                                           ys.stride(0), HAS_W=True, WITH_DW=True, BLOCK_D=min(_pow2(D), 1024))
        act = _swiglu_fwd(h1, h3)                                               # recomputed, not saved
        dact = _grouped_gemm(dys, w2, starts, counts, transpose_w=True)         # (N*K, I)
        dw2 = _grouped_wgrad(act, dys, starts, counts, w2)
        dh1, dh3 = _swiglu_bwd(h1, h3, dact)
        dw1 = _grouped_wgrad(xs, dh1, starts, counts, w1)
        dw3 = _grouped_wgrad(xs, dh3, starts, counts, w3)
        dxs = _grouped_gemm(dh1, w1, starts, counts, transpose_w=True) \
            + _grouped_gemm(dh3, w3, starts, counts, transpose_w=True)          # (N*K, D)
        dx = _moe_gather_rows(dxs, pos, None, N, K)                             # permute's backward: sum K rows
        return dx, None, dgate.view(N, K).to(ctx.weight_dtype), dw1, dw3, dw2


# The torch path: the same sort by expert, then one grouped GEMM per projection for all experts at once
# (torch._grouped_mm: C[rows of e] = A[rows of e] @ B[e], with the experts' row ranges given by their cumulative
# counts `offs`, no Python loop; autograd gives its backward, dW[e] = A[rows of e]^T dC[rows of e] included).
# Its CPU kernel wants fp32/bf16/fp16 and rows whose byte strides are multiples of 16, i.e. D and I multiples of
# 4 in fp32, 8 in bf16; other shapes, dtypes and devices keep the per-expert loop of moe_ffn_ref.
def _grouped_mm_fits(x, w1, dtype) -> bool:
    if not hasattr(torch, "_grouped_mm") or x.device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16,
                                                                                  torch.float16):
        return False
    align = 16 // dtype.itemsize
    return x.shape[1] % align == 0 and w1.shape[2] % align == 0


def _moe_ffn_grouped(x, topk_idx, topk_weight, w1, w3, w2, dtype):
    """moe_ffn_ref's arithmetic (the same products, each token's K rows summed in the same order) with the loop
    replaced by grouped GEMMs over expert segments whose row counts are rounded up by _bucket_rows (zero rows)."""
    N, K = topk_idx.shape
    E, D = w1.shape[0], x.shape[1]
    # and fp32 under torch.compile (the compiled decode step): _grouped_mm's fake-tensor kernel accepts only bf16,
    # so tracing an fp32 batch through it fails; a decode batch's all-experts products are still small
    if N * E <= _MOE_ALL_EXPERTS_ROWS or (torch.compiler.is_compiling() and dtype != torch.bfloat16):
        return _moe_ffn_all_experts(x, topk_idx, topk_weight, w1, w3, w2, dtype)
    if N * K <= E:
        return _moe_ffn_gathered(x, topk_idx, topk_weight, w1, w3, w2, dtype)
    flat = topk_idx.reshape(-1)                                             # (N*K,) expert of each pair
    order = flat.argsort(stable=True)                                       # pairs grouped by expert
    counts = torch.bincount(flat, minlength=E)                              # (E,) pairs per expert
    padded = _bucket_rows(counts)                                           # (E,) rows per expert segment
    ends = padded.cumsum(0)
    e = flat[order]                                                         # expert of each sorted pair
    row = torch.arange(N * K, device=x.device) - (counts.cumsum(0) - counts)[e] + (ends - padded)[e]
    R = int(ends[-1])
    token = torch.full((R,), N, dtype=torch.long, device=x.device).index_copy_(0, row, order // K)   # N: a zero row
    gate = topk_weight.new_zeros(R).index_copy_(0, row, topk_weight.reshape(-1)[order])                # 0 on padding
    if dtype != x.dtype or dtype != w1.dtype:     # autocast: cast once, as `@` would per expert slice
        w1, w3, w2 = w1.to(dtype), w3.to(dtype), w2.to(dtype)
    xs = torch.cat([x.to(dtype), x.new_zeros(1, D, dtype=dtype)]).index_select(0, token)   # (R, D) permuted rows
    offs = ends.to(torch.int32)                                             # (E,) end row of each segment
    h1 = torch._grouped_mm(xs, w1, offs=offs)                               # (R, I)
    h3 = torch._grouped_mm(xs, w3, offs=offs)
    ys = torch._grouped_mm(swiglu_ref(h1, h3), w2, offs=offs)               # (R, D)
    ys = ys * gate[:, None].to(x.dtype)
    return x.new_zeros(N + 1, D).index_add(0, token, ys)[:N]              # unpermute: sum each token's K rows


def _bucket_rows(counts):
    """Row counts rounded up to keep only their 5 leading bits (at most 1/16 more rows): a few sizes per octave
    instead of a new one every step. oneDNN, which runs bf16 matmuls on CPU, builds a kernel for each new shape
    (~1 ms each, vs ~0.1 ms for the product itself at the toy's size), and the routed row counts change with every
    batch; bucketed, the kernels are built once and reused (toy pretraining step, bf16 on an AMX CPU: 538 -> 297 ms,
    bench/train.py). The extra rows are zeros and carry gate weight 0."""
    q = 2 ** (torch.log2(counts.clamp(min=1).double()).floor().long() - 4).clamp(min=0)   # (E,) bucket width
    return (counts + q - 1) // q * q


# A decode step's few tokens: every expert on every token in 3 batched matmuls (E x N rows, E/K times the FLOPs
# the routed rows need), then each token keeps its K experts' rows. Below this many rows the extra FLOPs cost less
# than the grouped kernel's per-expert matmul calls (toy decode, batch 16, 2 threads: ~20% faster steps).
_MOE_ALL_EXPERTS_ROWS = 512


def _moe_ffn_all_experts(x, topk_idx, topk_weight, w1, w3, w2, dtype):
    N, K = topk_idx.shape
    E, D = w1.shape[0], x.shape[1]
    if dtype != w1.dtype:
        w1, w3, w2 = w1.to(dtype), w3.to(dtype), w2.to(dtype)
    xe = x.to(dtype)[None].expand(E, N, D)                                  # (E, N, D) every token, every expert
    ys = torch.bmm(swiglu_ref(torch.bmm(xe, w1), torch.bmm(xe, w3)), w2)    # (E, N, D)
    ys = ys[topk_idx, torch.arange(N, device=x.device)[:, None]]            # (N, K, D) the routed rows only
    return (ys * topk_weight[..., None].to(x.dtype)).sum(1).to(x.dtype)


def _moe_ffn_gathered(x, topk_idx, topk_weight, w1, w3, w2, dtype):
    """Fewer (token, expert) pairs than experts (decoding a small batch): each pair multiplies by its own expert's
    gathered weights in one batched matmul, instead of a grouped GEMM whose CPU kernel visits every expert (a
    matmul call and a read of its row range each, most of them empty). Copies at most E experts' weights."""
    N, K = topk_idx.shape
    flat = topk_idx.reshape(-1)                                             # (N*K,)
    D = x.shape[1]
    xs = x.to(dtype)[:, None, :].expand(N, K, D).reshape(N * K, 1, D)       # (N*K, 1, D) token of each pair
    w1, w3, w2 = (w.index_select(0, flat).to(dtype) for w in (w1, w3, w2))  # (N*K, D, I), .., (N*K, I, D)
    ys = torch.bmm(swiglu_ref(torch.bmm(xs, w1), torch.bmm(xs, w3)), w2)    # (N*K, 1, D)
    ys = ys.view(N, K, D) * topk_weight[..., None].to(x.dtype)
    return ys.sum(1).to(x.dtype)                                            # sum each token's K expert outputs


def moe_ffn(x, topk_idx, topk_weight, w1, w3, w2):
    N, D = x.shape
    E, _, I = w1.shape
    if topk_idx.dim() != 2 or topk_idx.shape[0] != N or topk_weight.shape != topk_idx.shape or \
            w1.shape != (E, D, I) or w3.shape != (E, D, I) or w2.shape != (E, I, D):
        raise ValueError(f"moe_ffn: want x (N, D), topk_idx/topk_weight (N, K), w1/w3 (E, D, I), w2 (E, I, D); got "
                         f"x {tuple(x.shape)}, idx {tuple(topk_idx.shape)}, weight {tuple(topk_weight.shape)}, "
                         f"w1 {tuple(w1.shape)}, w3 {tuple(w3.shape)}, w2 {tuple(w2.shape)}")
    if use_triton(x) and x.numel() > 0 and topk_idx.numel() > 0:
        return _MoEFFN.apply(x, topk_idx, topk_weight, w1, w3, w2)
    amp = torch.is_autocast_enabled("cpu")        # the reference's `@` would autocast: the grouped GEMMs too
    dtype = torch.get_autocast_dtype("cpu") if amp else x.dtype
    if _grouped_mm_fits(x, w1, dtype) and (amp or x.dtype == w1.dtype == w3.dtype == w2.dtype):
        return _moe_ffn_grouped(x, topk_idx, topk_weight, w1, w3, w2, dtype)
    return moe_ffn_ref(x, topk_idx, topk_weight, w1, w3, w2)
