"""Hot ops of minR1: each one a plain-torch reference (the readable definition) behind one dispatch rule.

Dispatch rule (the only one in the codebase):
  - CUDA tensors                    -> the Triton kernel
  - CPU tensors, TRITON_INTERPRET=1 -> the Triton kernel, run by Triton's interpreter (the tests)
  - CPU tensors otherwise           -> the torch reference (a CPU user never needs Triton)

model.py, sample.py and grpo.py call only the public functions below; their signatures are the contract.
(This file starts with the references; the Triton kernels and their autograd.Functions are added beside them.)
"""
import os

import torch
import torch.nn.functional as F


def use_triton(x: torch.Tensor) -> bool:
    """True when the op on tensor x should run the Triton kernel (see the rule above)."""
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------------------------------------------
# 1. RMSNorm
def rms_norm_ref(x, weight, eps: float = 1e-6):
    """x (..., D), weight (D,) -> x / rms(x) * weight, computed in fp32, returned in x's dtype."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def rms_norm(x, weight, eps: float = 1e-6):
    return rms_norm_ref(x, weight, eps)


# ----------------------------------------------------------------------------------------------------------------
# 2. SwiGLU: silu(a) * b
def swiglu_ref(a, b):
    return F.silu(a) * b


def swiglu(a, b):
    return swiglu_ref(a, b)


# ----------------------------------------------------------------------------------------------------------------
# 3. RoPE on the decoupled rope dims, interleaved pairs (x[..., 2i], x[..., 2i+1]) as in V3's official code.
def apply_rope_ref(x, cos, sin):
    """x (B, T, H, R); cos, sin (B, T, R/2) (already at each token's position) -> (B, T, H, R)."""
    xf = x.float().unflatten(-1, (-1, 2))                 # (B, T, H, R/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[:, :, None, :].float(), sin[:, :, None, :].float()
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2).to(x.dtype)


def apply_rope(x, cos, sin):
    return apply_rope_ref(x, cos, sin)


# ----------------------------------------------------------------------------------------------------------------
# 4. Per-token logprobs of chosen tokens (+ optional entropy), without the full log-softmax.
def token_logprobs_ref(logits, targets, with_entropy: bool = False):
    """logits (N, V) any float dtype, targets (N,) long -> logp (N,) fp32 [, entropy (N,) fp32].
    The plain definition: log_softmax then gather. (The chunked version bounds the memory.)"""
    logp_all = torch.log_softmax(logits.float(), dim=-1)   # (N, V) fp32: the memory this op avoids
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    if not with_entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def token_logprobs(logits, targets, with_entropy: bool = False):
    return token_logprobs_ref(logits, targets, with_entropy)


# ----------------------------------------------------------------------------------------------------------------
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


def attention(q, k, v, scale: float, causal: bool = True):
    return attention_ref(q, k, v, scale, causal)


# ----------------------------------------------------------------------------------------------------------------
# 7. MLA decode attention over the latent cache (absorbed form, V3 eq. 1-11 with W_uk / W_uv folded out).
def mla_decode_ref(q_lat, q_pe, kv_cache, pe_cache, lengths, scale: float):
    """One query token per row.
    q_lat (B, H, C): q_nope already multiplied by W_uk (C = kv_lora_rank); q_pe (B, H, R): roped query part;
    kv_cache (B, S, C): normed c_kv; pe_cache (B, S, R): roped k_R; lengths (B,): keys [0, lengths[b]) are valid.
    -> (B, H, C): softmax-weighted sum of c_kv (the caller applies W_uv then W_o)."""
    s = (torch.einsum("bhc,bsc->bhs", q_lat.float(), kv_cache.float())
         + torch.einsum("bhr,bsr->bhs", q_pe.float(), pe_cache.float())) * scale
    valid = torch.arange(kv_cache.shape[1], device=s.device)[None, :] < lengths[:, None]   # (B, S)
    s = s.masked_fill(~valid[:, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhs,bsc->bhc", p, kv_cache.float()).to(q_lat.dtype)


def mla_decode(q_lat, q_pe, kv_cache, pe_cache, lengths, scale: float):
    return mla_decode_ref(q_lat, q_pe, kv_cache, pe_cache, lengths, scale)


# ----------------------------------------------------------------------------------------------------------------
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
            ys.append(swiglu(seg @ w1[e], seg @ w3[e]) @ w2[e])
        start += n
    ys = torch.cat(ys) * topk_weight.reshape(-1)[order, None].to(x.dtype)
    return torch.zeros_like(x).index_add(0, token, ys)     # unpermute: sum each token's K expert outputs


def moe_ffn(x, topk_idx, topk_weight, w1, w3, w2):
    return moe_ffn_ref(x, topk_idx, topk_weight, w1, w3, w2)
