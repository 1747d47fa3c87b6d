"""The DeepSeek-V3 architecture (V3 §2): MLA attention, DeepSeekMoE with auxiliary-loss-free balancing, and MTP.

Read it beside the V3 paper (arXiv 2412.19437) and docs/PAPER.md; equation numbers are the paper's:
  MLA            V3 eq. 1-11    class MLA      (naive path for training, absorbed path + latent cache for decoding)
  DeepSeekMoE    V3 eq. 12-16   class Gate, class MoE
  balancing      V3 eq. 17-20   Gate.update_bias (aux-loss-free bias), balance_loss (sequence-wise loss)
  MTP            V3 eq. 21-25   class MTP (depth 1)
The hot ops (RMSNorm, SwiGLU, RoPE, attention, latent decode attention, grouped expert FFN, logprobs) are called
through kernels.py, which runs Triton on CUDA and plain torch on CPU; this file holds only the model's wiring.

    python model.py --config configs/v3-671b.json   # built on the meta device: ~671B total, ~37B active
    python model.py --config configs/v2-lite.json   # DeepSeek-V2-Lite: 15.7B total, 2.4B active
    python model.py --config configs/toy.json       # the CPU toy
    python model.py --import-hf DIR --out model.pt  # Hugging Face DeepseekV3/V2 <-> minR1 checkpoints (hf.py)
    python model.py --export-hf runs/toy/zero/model.pt --out DIR

Shapes: B batch, T tokens, S cached keys, D dim, H heads, C kv_lora_rank, R qk_rope_head_dim, N qk_nope_head_dim,
V v_head_dim (inside MLA), E routed experts, K activated experts, I expert width.
"""
import argparse
import contextlib
import functools
import json
import math
import warnings
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import ep
import kernels


# ------------------------------------------------------------------------------------------------------- config
@dataclass
class ModelArgs:
    """Every shape of the model. The defaults are a small CPU model (the toy preset's shape)."""
    vocab_size: int = 1024
    dim: int = 128                   # model width d
    inter_dim: int = 384             # hidden width of the dense SwiGLU FFN (the first n_dense_layers blocks)
    moe_inter_dim: int = 128         # hidden width of each expert (routed and shared)
    n_layers: int = 4
    n_dense_layers: int = 1          # leading blocks with a dense FFN instead of MoE (V3: 3)
    n_heads: int = 4
    # DeepSeekMoE (V3 §2.1.2)
    n_routed_experts: int = 8        # N_r
    n_shared_experts: int = 1        # N_s
    n_activated_experts: int = 2     # K_r
    n_expert_groups: int = 4         # experts are split into groups (V3: 8, one per node) ...
    n_limited_groups: int = 2        # ... and each token may use experts of this many groups only (V3: 4)
    score_func: str = "sigmoid"      # "sigmoid" (V3 eq. 15) or "softmax" (V2)
    route_scale: float = 1.0         # routed weights are multiplied by this after normalisation (V3: 2.5)
    # MLA (V3 §2.1.1)
    q_lora_rank: int = 0             # d_c' ; 0 = queries straight from h (V2-Lite), no low-rank compression
    kv_lora_rank: int = 64           # d_c: the latent c_kv, which is what the decode cache keeps
    qk_nope_head_dim: int = 32       # d_h of the content part of q and k
    qk_rope_head_dim: int = 16       # d_h^R of the decoupled RoPE part (one key shared by all heads)
    v_head_dim: int = 32
    # positions: RoPE + YaRN (YaRN switches on when max_seq_len > original_seq_len, as in V3's code)
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    rope_factor: float = 40.0        # YaRN scale s
    original_seq_len: int = 4096     # context length the RoPE frequencies were trained for
    beta_fast: int = 32
    beta_slow: int = 1
    mscale: float = 1.0              # YaRN attention temperature: (0.1 * mscale * ln s + 1)^2 times the scale
    # multi-token prediction (V3 §2.2)
    mtp_depth: int = 0               # 0 or 1
    mtp_lambda: float = 0.3          # lambda in V3 eq. 25
    # load balancing
    bias_update_speed: float = 0.001 # gamma: b_i += gamma * sign(mean_load - load_i) after each step
    seq_aux_alpha: float = 0.0001    # alpha of the sequence-wise balance loss (V3 eq. 17); 0 = off
    # memory: keep only each block's input in training and recompute the block in the backward pass (V3 §3.2.3
    # recomputes RMSNorm and MLA up-projections; this recomputes whole blocks: less memory, ~1/3 more compute)
    activation_checkpointing: bool = False

    def __post_init__(self):
        def need(ok, msg):
            if not ok:
                raise ValueError(f"ModelArgs: {msg}")
        need(self.score_func in ("sigmoid", "softmax"),
             f"score_func must be 'sigmoid' or 'softmax', got {self.score_func!r}")
        need(self.mtp_depth in (0, 1), f"mtp_depth must be 0 or 1, got {self.mtp_depth}")
        need(0 <= self.n_dense_layers <= self.n_layers, f"n_dense_layers={self.n_dense_layers} not in [0, n_layers]")
        need(self.qk_rope_head_dim % 2 == 0,
             f"qk_rope_head_dim must be even (RoPE rotates pairs), got {self.qk_rope_head_dim}")
        if self.n_dense_layers < self.n_layers or self.mtp_depth:
            E, G = self.n_routed_experts, max(self.n_expert_groups, 1)
            need(E > 0, "a model with MoE blocks needs n_routed_experts > 0")
            need(E % G == 0, f"n_routed_experts={E} is not divisible by n_expert_groups={G}")
            need(1 <= self.n_limited_groups <= G,
                 f"n_limited_groups={self.n_limited_groups} not in [1, n_expert_groups={G}]")
            need(1 <= self.n_activated_experts <= self.n_limited_groups * (E // G),
                 f"n_activated_experts={self.n_activated_experts} must be in [1, experts in the limited groups]")

    @classmethod
    def from_json(cls, path: str) -> "ModelArgs":
        """A JSON file of ModelArgs fields, flat or under a preset's "model" section. Unknown field -> ValueError."""
        with open(path) as f:
            cfg = json.load(f)
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
        cfg = cfg.get("model", cfg)
        known = {f.name for f in fields(cls)}
        for key in cfg:
            if key not in known:
                raise ValueError(f"{path}: unknown model field {key!r} (known: {', '.join(sorted(known))})")
        return cls(**cfg)


# ----------------------------------------------------------------------------------------------- small modules
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return kernels.rms_norm(x, self.weight, self.eps)


def rope_tables(args: ModelArgs):
    """cos, sin (max_seq_len, R/2) of every position's rotation angles, with YaRN frequencies when extended.

    YaRN (V3 §4.3): pairs that rotate many times within original_seq_len (high frequency, index < low) keep
    their frequency; pairs that rotate less than once (index > high) are interpolated by 1/rope_factor; a
    linear ramp blends the band between. `low`, `high` are the pair indices that complete beta_fast and
    beta_slow full turns over original_seq_len.
    """
    R = args.qk_rope_head_dim
    freqs = 1.0 / args.rope_theta ** (torch.arange(0, R, 2, dtype=torch.float32) / R)    # (R/2,)
    if args.max_seq_len > args.original_seq_len:
        def pair_with_turns(n_turns):   # solve original_seq_len * freq_i = 2 pi n_turns for the pair index i
            return R * math.log(args.original_seq_len / (n_turns * 2 * math.pi)) / (2 * math.log(args.rope_theta))
        low = max(math.floor(pair_with_turns(args.beta_fast)), 0)
        high = min(math.ceil(pair_with_turns(args.beta_slow)), R - 1)
        ramp = ((torch.arange(R // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)).clamp(0, 1)
        freqs = freqs / args.rope_factor * ramp + freqs * (1 - ramp)
    angles = torch.outer(torch.arange(args.max_seq_len, dtype=torch.float32), freqs)     # (max_seq_len, R/2)
    return angles.cos(), angles.sin()


class MLP(nn.Module):
    """SwiGLU FFN: the dense blocks, and the shared experts (N_s experts merged into one of width N_s * I)."""
    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, inter_dim, bias=False)   # gate projection
        self.w3 = nn.Linear(dim, inter_dim, bias=False)   # up projection
        self.w2 = nn.Linear(inter_dim, dim, bias=False)   # down projection

    def forward(self, x):
        return self.w2(kernels.swiglu(self.w1(x), self.w3(x)))


def masked_attention(q, k, v, scale: float, positions):
    """Attention over cached keys when the rows' queries sit at different positions (a ragged batch).

    q (B, T, H, Dqk); k (B, S, H, Dqk); v (B, S, H, Dv); positions (B, T): key s is visible to query (b, t)
    iff s <= positions[b, t] (cache index = position). kernels.attention only masks a causal suffix shared by
    all rows and kernels.mla_decode takes one query per row, so this general mask is written here in plain
    torch; it serves the naive decode path on ragged rows and multi-token decodes at ragged positions.
    """
    s = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) * scale                  # (B, H, T, S)
    visible = torch.arange(k.shape[1], device=q.device) <= positions[:, :, None]        # (B, T, S)
    s = s.masked_fill(~visible[:, None], float("-inf"))
    return torch.einsum("bhts,bshd->bthd", s.softmax(-1), v.float()).to(q.dtype)       # (B, T, H, Dv)


# ---------------------------------------------------------------------------------------------------------- MLA
class MLA(nn.Module):
    """Multi-head Latent Attention, V3 eq. 1-11.

    Keys and values come from one low-rank latent c_kv (eq. 1), plus one RoPE key k_R shared by every head
    (eq. 3); queries optionally from their own latent c_q (eq. 6). Two equivalent ways to attend:
      naive    materialise per-head k = [W_uk c_kv ; k_R] and v = W_uv c_kv (training; cache (H*(N+R) + H*V)/token)
      absorbed fold W_uk into the query and W_uv into the output and attend over c_kv and k_R themselves
               (decode steps; cache C + R numbers per token per layer: 576 instead of 40,960 for V3; a
               prompt's prefill writes the same latent cache but up-projects it once to attend)
    """
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.kv_lora_rank = args.n_heads, args.kv_lora_rank
        self.nope, self.rope, self.v_dim = args.qk_nope_head_dim, args.qk_rope_head_dim, args.v_head_dim
        qk_head_dim = self.nope + self.rope
        H = self.n_heads
        if args.q_lora_rank == 0:
            self.wq = nn.Linear(args.dim, H * qk_head_dim, bias=False)
        else:
            self.wq_a = nn.Linear(args.dim, args.q_lora_rank, bias=False)         # W_DQ   (eq. 6)
            self.q_norm = RMSNorm(args.q_lora_rank)
            self.wq_b = nn.Linear(args.q_lora_rank, H * qk_head_dim, bias=False)  # [W_UQ ; W_QR] (eq. 7-8)
        self.wkv_a = nn.Linear(args.dim, self.kv_lora_rank + self.rope, bias=False)  # [W_DKV ; W_KR] (eq. 1, 3)
        self.kv_norm = RMSNorm(self.kv_lora_rank)
        self.wkv_b = nn.Linear(self.kv_lora_rank, H * (self.nope + self.v_dim), bias=False)  # [W_UK ; W_UV] (eq. 2, 5)
        self.wo = nn.Linear(H * self.v_dim, args.dim, bias=False)                 # W_O (eq. 11)
        self.softmax_scale = qk_head_dim ** -0.5                                  # eq. 10: 1/sqrt(d_h + d_h^R)
        if args.max_seq_len > args.original_seq_len:                              # YaRN attention temperature
            m = 0.1 * args.mscale * math.log(args.rope_factor) + 1.0
            self.softmax_scale *= m * m

    def _project(self, x, cos, sin):
        """x (B, T, D) -> q_nope (B, T, H, N), q_pe (B, T, H, R) roped, c_kv (B, T, C) normed, k_pe (B, T, R) roped."""
        B, T, _ = x.shape
        q = self.wq(x) if hasattr(self, "wq") else self.wq_b(self.q_norm(self.wq_a(x)))   # eq. 6-7
        q = q.view(B, T, self.n_heads, self.nope + self.rope)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        q_pe = kernels.apply_rope(q_pe, cos, sin)                                 # eq. 8
        kv = self.wkv_a(x)                                                        # (B, T, C + R)
        c_kv, k_pe = kv.split([self.kv_lora_rank, self.rope], dim=-1)
        c_kv = self.kv_norm(c_kv)                                                 # eq. 1 (RMS-normed latent)
        k_pe = kernels.apply_rope(k_pe[:, :, None, :], cos, sin)[:, :, 0]        # eq. 3: one key for all heads
        return q_nope, q_pe, c_kv, k_pe

    def _per_head_kv(self, c_kv, k_pe):
        """c_kv (B, S, C), k_pe (B, S, R) -> materialised per-head keys k (B, S, H, N + R), values v (B, S, H, V)."""
        B, S, H = *c_kv.shape[:2], self.n_heads
        kv = self.wkv_b(c_kv).view(B, S, H, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)                     # eq. 2, 5
        k = torch.cat([k_nope, k_pe[:, :, None, :].expand(B, S, H, self.rope)], dim=-1)     # eq. 4
        return k, v

    def forward(self, x, cos, sin):
        """Training path (naive): x (B, T, D), cos/sin (B, T, R/2) -> (B, T, D), causal."""
        q_nope, q_pe, c_kv, k_pe = self._project(x, cos, sin)
        q = torch.cat([q_nope, q_pe], dim=-1)                                     # eq. 9: (B, T, H, N + R)
        k, v = self._per_head_kv(c_kv, k_pe)
        o = kernels.attention(q, k, v, self.softmax_scale, causal=True)           # eq. 10: (B, T, H, V)
        return self.wo(o.flatten(2))                                              # eq. 11

    def decode(self, x, cos, sin, positions, cache, layer: int, S: int, prefix: bool):
        """Decoding path: write this layer's cache at `positions` (B, T), attend to keys 0..positions[b, t].

        S: number of cache slots in use (max position + 1); prefix: every row's positions are the same run
        S-T..S-1, so a plain causal mask over cache[:, :S] is exact (prefill, or a non-ragged batch).
        """
        B, T, _ = x.shape
        rows = torch.arange(B, device=x.device)[:, None].expand(B, T)            # (B, T) batch index of each write
        q_nope, q_pe, c_kv, k_pe = self._project(x, cos, sin)
        if cache.mode == "naive":
            q = torch.cat([q_nope, q_pe], dim=-1)                                 # (B, T, H, N + R)
            k, v = self._per_head_kv(c_kv, k_pe)
            k_cache, v_cache = cache.a[layer], cache.b[layer]                     # (B, max_len, H, N+R), (.., H, V)
            k_cache[rows, positions] = k                                          # in place: cache index = position
            v_cache[rows, positions] = v
            return self.wo(self._attend(q, k_cache[:, :S], v_cache[:, :S], positions, prefix).flatten(2))

        C = self.kv_lora_rank
        latent = cache.a[layer]                                                   # (B, max_len, C + R)
        latent[rows, positions] = torch.cat([c_kv, k_pe], dim=-1)                 # only [c_kv ; k_R] is cached
        if T > 1:
            # Several queries per row (a prompt's prefill): up-project the cached latents to per-head k, v once
            # and attend as in training. With T queries sharing S keys this is cheaper than the absorbed form
            # (scores over N + R = 192 dims instead of C + R = 576 for V3), and keeps the kernel's head dims small.
            q = torch.cat([q_nope, q_pe], dim=-1)                                 # (B, T, H, N + R)
            k, v = self._per_head_kv(latent[:, :S, :C], latent[:, :S, C:])       # (B, S, H, N + R), (B, S, H, V)
            return self.wo(self._attend(q, k, v, positions, prefix).flatten(2))
        # One query per row: absorb. score_h(s) = q_nope_h . (W_uk_h c_s) + q_pe_h . k_pe_s
        #                                       = (W_uk_h^T q_nope_h) . c_s  + q_pe_h . k_pe_s
        w = self.wkv_b.weight.view(self.n_heads, self.nope + self.v_dim, self.kv_lora_rank)
        w_uk, w_uv = w[:, :self.nope], w[:, self.nope:]                           # (H, N, C), (H, V, C)
        q_lat = torch.einsum("bhn,hnc->bhc", q_nope[:, 0], w_uk)                  # W_uk absorbed into the query
        o_lat = kernels.mla_decode(q_lat, q_pe[:, 0], latent[:, :S], positions[:, 0] + 1,
                                   self.softmax_scale)                            # (B, H, C): weights over c_kv
        o = torch.einsum("bhc,hvc->bhv", o_lat, w_uv)                             # W_uv absorbed into the output
        return self.wo(o.flatten(1))[:, None]                                     # eq. 11: (B, 1, D)

    def _attend(self, q, k, v, positions, prefix):
        """q (B, T, H, N+R) against cached k (B, S, H, N+R), v (B, S, H, V) -> (B, T, H, V)."""
        if prefix:
            return kernels.attention(q, k, v, self.softmax_scale, causal=True)
        return masked_attention(q, k, v, self.softmax_scale, positions)


# ---------------------------------------------------------------------------------------------------------- MoE
class Gate(nn.Module):
    """The router of V3 eq. 13-16 plus group-limited routing, with the aux-loss-free balancing bias.

    s = sigmoid(u . e_i) (eq. 15; softmax for V2); experts are SELECTED by top-K of s + b (eq. 16) inside the
    n_limited_groups groups with the largest sum of their top-2 (s + b); their WEIGHTS are the raw s of the
    selected experts, renormalised to sum to 1 (eq. 13, sigmoid only) and times route_scale. The bias b is a
    buffer: it never receives a gradient, it is moved by update_bias from the loads counted in training.
    """
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.topk, self.score_func, self.route_scale = args.n_activated_experts, args.score_func, args.route_scale
        self.n_groups, self.n_limited_groups = max(args.n_expert_groups, 1), args.n_limited_groups
        self.weight = nn.Parameter(torch.empty(args.n_routed_experts, args.dim))    # e_i, the expert centroids
        self.register_buffer("bias", torch.zeros(args.n_routed_experts, dtype=torch.float32))
        # Tokens routed to each expert since the last update_bias (training-mode forwards only). A plain tensor,
        # not a buffer: DDP broadcasts buffers from rank 0 at every forward, which would erase the other ranks'
        # counts; the counts never belong in a checkpoint either. Created on first use, on the tokens' device.
        self.load = None

    def forward(self, x):
        """x (N, D) -> weights (N, K) fp32, indices (N, K) long, scores s (N, E) fp32."""
        with torch.autocast(x.device.type, enabled=False):   # routing in fp32 even under bf16 autocast, which
            logits = F.linear(x.float(), self.weight.float())                     # would recast: (N, E)
        s = logits.sigmoid() if self.score_func == "sigmoid" else logits.softmax(dim=-1)   # eq. 15
        biased = s + self.bias                                                    # eq. 16: selection only
        if self.n_groups > 1:
            N, E = biased.shape
            groups = biased.view(N, self.n_groups, E // self.n_groups)            # (N, G, E/G)
            group_score = groups.topk(min(2, E // self.n_groups), dim=-1).values.sum(-1)   # (N, G)
            keep = group_score.topk(self.n_limited_groups, dim=-1).indices        # (N, n_limited_groups)
            dropped = torch.ones_like(group_score, dtype=torch.bool).scatter_(1, keep, False)
            biased = groups.masked_fill(dropped[..., None], float("-inf")).view(N, E)
        idx = biased.topk(self.topk, dim=-1).indices                              # (N, K) eq. 14/16
        weights = s.gather(1, idx)                                                # the raw scores, not s + b
        if self.score_func == "sigmoid":
            weights = weights / weights.sum(dim=-1, keepdim=True)                 # eq. 13
        return weights * self.route_scale, idx, s

    @torch.no_grad()
    def count(self, idx):
        """Add this batch's token count per expert to the load counters."""
        if self.load is None or self.load.device != idx.device:
            self.load = torch.zeros(self.weight.shape[0], dtype=torch.float32, device=idx.device)
        self.load += torch.bincount(idx.flatten(), minlength=self.weight.shape[0]).float()

    @torch.no_grad()
    def update_bias(self, gamma: float):
        """Aux-loss-free balancing (V3 §2.1.2): b_i += gamma * sign(mean_load - load_i); then reset the counts."""
        load = self.load if self.load is not None else torch.zeros_like(self.bias)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load)                                                 # every rank: the global loads
        self.bias += gamma * torch.sign(load.mean() - load).to(self.bias)
        load.zero_()
        self.load = load


def balance_loss(scores, idx, B: int, T: int, topk: int, alpha: float):
    """Sequence-wise balance loss, V3 eq. 17-20, averaged over the B sequences.

    scores (B*T, E) the router's s; idx (B*T, K) the selected experts.
    f_i = N_r / (K_r T) * #{t : i in topk_t}   (eq. 18, no gradient: a count)
    P_i = 1/T sum_t s_it / sum_j s_jt          (eq. 19-20)
    L   = alpha * sum_i f_i P_i                (eq. 17)
    """
    E = scores.shape[-1]
    counts = torch.zeros(B, E, device=scores.device).scatter_add_(
        1, idx.view(B, T * topk), torch.ones(B, T * topk, device=scores.device))   # (B, E)
    f = counts * E / (topk * T)
    P = (scores / scores.sum(-1, keepdim=True)).view(B, T, E).mean(1)             # (B, E)
    return alpha * (f * P).sum(-1).mean()


class MoE(nn.Module):
    """DeepSeekMoE, V3 eq. 12: h' = u + sum_shared FFN_s(u) + sum_i g_i FFN_i(u), SwiGLU experts.

    Routed experts' weights are stacked (E, in, out) so that dispatch is one grouped GEMM (kernels.moe_ffn:
    sort the (token, expert) pairs by expert, run each expert once on its contiguous slice, no token dropping).
    """
    def __init__(self, args: ModelArgs):
        super().__init__()
        E, D, I = args.n_routed_experts, args.dim, args.moe_inter_dim
        self.topk, self.alpha = args.n_activated_experts, args.seq_aux_alpha
        self.gate = Gate(args)
        self.w1 = nn.Parameter(torch.empty(E, D, I))   # gate projections of the E experts
        self.w3 = nn.Parameter(torch.empty(E, D, I))   # up projections
        self.w2 = nn.Parameter(torch.empty(E, I, D))   # down projections
        self.shared_experts = MLP(D, args.n_shared_experts * I) if args.n_shared_experts else None
        self.ep_group = None   # expert parallelism: set by ep.shard_experts, w1/w3/w2 then hold this rank's experts

    def forward(self, x, with_balance: bool = False):
        """x (B, T, D) -> (B, T, D), and the balance loss (a 0-d tensor; 0 unless with_balance and alpha > 0)."""
        B, T, D = x.shape
        flat = x.reshape(B * T, D)
        weights, idx, scores = self.gate(flat)                                    # (N, K), (N, K), (N, E)
        if self.training:
            self.gate.count(idx)
        if self.ep_group is None:
            y = kernels.moe_ffn(flat, idx, weights, self.w1, self.w3, self.w2)   # routed experts
        else:                                                                    # ... on their ranks (V3 §3.2)
            y = ep.routed_experts(self, flat, idx, weights)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)                                     # shared experts: always on
        aux = balance_loss(scores, idx, B, T, self.topk, self.alpha) if with_balance and self.alpha > 0 \
            else x.new_zeros((), dtype=torch.float32)
        return y.view(B, T, D), aux


# --------------------------------------------------------------------------------------------- blocks, model
class Block(nn.Module):
    """Pre-norm transformer block: x + MLA(norm(x)), then + FFN(norm(.)), the FFN dense or MoE."""
    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(args.dim), MLA(args)
        self.ffn_norm = RMSNorm(args.dim)
        self.ffn = MLP(args.dim, args.inter_dim) if layer_id < args.n_dense_layers else MoE(args)

    def _ffn(self, x, with_balance):
        if isinstance(self.ffn, MoE):
            return self.ffn(x, with_balance)
        return self.ffn(x), x.new_zeros((), dtype=torch.float32)

    def forward(self, x, cos, sin):
        """x (B, T, D) -> (B, T, D), balance loss of this block."""
        x = x + self.attn(self.attn_norm(x), cos, sin)
        y, aux = self._ffn(self.ffn_norm(x), with_balance=True)
        return x + y, aux

    def decode(self, x, cos, sin, positions, cache, layer, S, prefix):
        x = x + self.attn.decode(self.attn_norm(x), cos, sin, positions, cache, layer, S, prefix)
        return x + self._ffn(self.ffn_norm(x), with_balance=False)[0]


class MTP(nn.Module):
    """Multi-token prediction, depth 1 (V3 §2.2): from h_i and the embedding of t_{i+1}, predict t_{i+2}.

    h'_i = M [RMSNorm(h_i) ; RMSNorm(Emb(t_{i+1}))]   (eq. 21; M = eh_proj)
    h''  = TRM(h')                                     (eq. 22; one more Block, causal)
    P    = OutHead(h'')                                (eq. 23; the main model's head, shared, as is Emb)
    """
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.hnorm, self.enorm = RMSNorm(args.dim), RMSNorm(args.dim)
        self.eh_proj = nn.Linear(2 * args.dim, args.dim, bias=False)
        self.block = Block(args.n_layers, args)   # layer id past the dense ones: an MoE block, as in V3
        self.norm = RMSNorm(args.dim)             # final norm before the shared head

    def forward(self, h, emb_next, cos, sin):
        """h (B, T', D) main model's last hidden states at 0..T'-1; emb_next (B, T', D) Emb(t_{i+1}) ->
        normed hidden (B, T', D) that predicts t_{i+2}, and the block's balance loss."""
        x = self.eh_proj(torch.cat([self.hnorm(h), self.enorm(emb_next)], dim=-1))   # eq. 21
        x, aux = self.block(x, cos, sin)                                            # eq. 22
        return self.norm(x), aux


class KVCache:
    """Preallocated decode cache, one pair of tensors per layer, written in place (cache index = position).

    absorbed: a = [c_kv ; k_pe] (B, max_len, C + R), one row per token       -> C + R numbers / token / layer
              (FlashMLA's layout: the query [q_lat ; q_pe] meets it in one product), b unused (empty)
    naive:    a = k (B, max_len, H, N + R), b = v (B, max_len, H, V)          -> H (N + R + V) numbers
    """
    def __init__(self, args: ModelArgs, batch_size: int, max_len: int, mode: str, device, dtype):
        if mode not in ("absorbed", "naive"):
            raise ValueError(f"cache mode must be 'absorbed' or 'naive', got {mode!r}")
        if not 1 <= max_len <= args.max_seq_len:
            raise ValueError(f"cache max_len={max_len} must be in [1, max_seq_len={args.max_seq_len}]")
        self.mode, self.batch_size, self.max_len = mode, batch_size, max_len
        H, C, R = args.n_heads, args.kv_lora_rank, args.qk_rope_head_dim
        if mode == "absorbed":
            shape_a, shape_b = (batch_size, max_len, C + R), None
        else:
            shape_a = (batch_size, max_len, H, args.qk_nope_head_dim + R)
            shape_b = (batch_size, max_len, H, args.v_head_dim)
        self.a = [torch.zeros(shape_a, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.b = [torch.zeros(shape_b, device=device, dtype=dtype) for _ in range(args.n_layers)] if shape_b else []

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.a + self.b)

    def select(self, rows: torch.Tensor):
        """Keep (and reorder, or repeat) the cache rows `rows`: a bool mask or indices into the current rows."""
        self.a = [t[rows] for t in self.a]
        self.b = [t[rows] for t in self.b]
        self.batch_size = self.a[0].shape[0]


@functools.cache
def _compiled_decode():
    """Transformer._decode through torch.compile, for one-token steps (decode(compiled=True)). A small batch's step
    is a few hundred tiny ops whose dispatch, not their FLOPs, is most of its time on a CPU; the compiled step
    fuses the elementwise ones into generated loops. Compiled on first use (30-60 s for the toy on 2 CPU cores),
    with dynamic shapes, so later batch sizes and cache lengths reuse it; the model is an argument, so models of
    one architecture share it. Not bit-identical to the eager step (fused sums round differently): the logits
    agree to ~1e-5 (tests/test_sample.py)."""
    return torch.compile(Transformer._decode, dynamic=True)


_COMPILE_FAILED = []   # the error, once the compiled decode step has failed to build in this process


def _compile_errors() -> tuple:
    """What torch.compile raises when its backend cannot build code (a missing or broken C compiler, say): the
    compiled step then falls back to the eager one. Any other error is a real one and propagates."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import CppCompileError, InductorError
    return BackendCompilerFailed, InductorError, CppCompileError


def _count_once(block):
    """torch.utils.checkpoint's context_fn for a block: (context of the forward, context of the recomputation).
    The recomputation runs the block's forward again in training mode, so its gates would count their tokens
    twice; the second context puts each gate's load counters back as they were before the recomputation."""
    return contextlib.nullcontext(), _loads_restored(block)


@contextlib.contextmanager
def _loads_restored(block):
    gates = [m for m in block.modules() if isinstance(m, Gate)]
    saved = [None if g.load is None else g.load.clone() for g in gates]
    try:
        yield
    finally:
        for g, load in zip(gates, saved):
            g.load = load


class Transformer(nn.Module):
    """Embedding -> n_layers Blocks (the first n_dense_layers dense, the rest MoE) -> RMSNorm -> head.
    The head is not tied to the embedding (V3 does not tie them)."""
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim)
        self.head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.mtp = MTP(args) if args.mtp_depth else None
        cos, sin = rope_tables(args)
        # (max_seq_len, R/2) fp32, rebuilt from args (not saved). Train in bf16 with autocast, which leaves them
        # fp32; model.to(torch.bfloat16) would round the angles of far positions.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02):
        """Normal(0, std) for every matrix and the embedding; RMSNorm gains 1; the balancing bias 0. The output
        projections into the residual stream (wo, w2) get std / sqrt(2 n_layers) (GPT-2's rule), so the residual
        stream's variance does not grow with depth at initialisation."""
        out_std = std / math.sqrt(2 * self.args.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                last = name.split(".")[-2] if name.endswith(".weight") else name.split(".")[-1]
                p.normal_(0.0, out_std if last in ("wo", "w2") else std)
        for m in self.modules():
            if isinstance(m, Gate):
                m.bias.zero_()

    # --------------------------------------------------------------------------------------------- training
    def _check_tokens(self, tokens, what="tokens"):
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"{what} must be a (B, T) long tensor, got shape {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[1] > self.args.max_seq_len:
            raise ValueError(f"{what}: sequence of {tokens.shape[1]} tokens exceeds "
                             f"max_seq_len={self.args.max_seq_len}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.args.vocab_size):
            raise ValueError(f"{what}: token ids must be in [0, vocab_size={self.args.vocab_size}), "
                             f"got min {int(tokens.min())} max {int(tokens.max())}")

    def forward(self, tokens, targets=None):
        """tokens (B, T) long -> logits (B, T, vocab) fp32; with targets (B, T) long (-1 = ignored) ->
        (logits, loss, parts): loss = CE + mtp_lambda * MTP CE (eq. 25) + balance loss (eq. 17), parts = those
        terms as 0-dim tensors {"ce", "mtp", "balance"} (float() them to log)."""
        self._check_tokens(tokens)
        B, T = tokens.shape
        cos = self.rope_cos[:T][None].expand(B, T, -1)                            # (B, T, R/2)
        sin = self.rope_sin[:T][None].expand(B, T, -1)
        h = self.embed(tokens)                                                    # (B, T, D)
        balance = h.new_zeros((), dtype=torch.float32)
        recompute = self.args.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:    # the block's activations are rebuilt in backward from h (no reentrant autograd)
                h, aux = checkpoint(layer, h, cos, sin, use_reentrant=False,
                                    context_fn=functools.partial(_count_once, layer))
            else:
                h, aux = layer(h, cos, sin)
            balance = balance + aux
        logits = self.head(self.norm(h)).float()                                  # (B, T, vocab)
        if targets is None:
            return logits
        if targets.shape != tokens.shape or targets.dtype != torch.long:
            raise ValueError(f"targets must be a long tensor shaped like tokens {tuple(tokens.shape)}, "
                             f"got {tuple(targets.shape)} {targets.dtype}")
        if targets.numel() and (int(targets.min()) < -1 or int(targets.max()) >= self.args.vocab_size):
            raise ValueError(f"targets must be -1 (ignored) or in [0, vocab_size={self.args.vocab_size})")
        ce = cross_entropy(logits, targets)
        mtp = torch.zeros((), device=logits.device)
        if self.mtp is not None and T > 1:
            # position i (0..T-2) sees h_i and Emb(t_{i+1}) = Emb(tokens[i+1]) and predicts t_{i+2} = targets[i+1]
            mtp_in = (h[:, :-1], self.embed(tokens[:, 1:]), cos[:, :-1], sin[:, :-1])
            h_mtp, aux = checkpoint(self.mtp, *mtp_in, use_reentrant=False, context_fn=functools.partial(
                _count_once, self.mtp)) if recompute else self.mtp(*mtp_in)
            mtp = cross_entropy(self.head(h_mtp).float(), targets[:, 1:])         # eq. 24
            balance = balance + aux
        loss = ce + self.args.mtp_lambda * mtp + balance                          # eq. 25 with D = 1
        # the terms stay tensors (with their graph): a trainer may weigh them apart (sft.py weighs CE, a mean
        # over target tokens, and the balance loss, a mean over sequences, by their shares of the global batch)
        parts = {"ce": ce, "mtp": mtp, "balance": balance}
        return logits, loss, parts

    @torch.no_grad()
    def update_bias(self):
        """The aux-loss-free balancing step on every MoE layer (MTP's included); call once per optimizer step."""
        for m in self.modules():
            if isinstance(m, Gate):
                m.update_bias(self.args.bias_update_speed)

    # --------------------------------------------------------------------------------------------- decoding
    def new_cache(self, batch_size: int, max_len: int, mode: str = "absorbed") -> KVCache:
        w = self.embed.weight
        return KVCache(self.args, batch_size, max_len, mode, w.device, w.dtype)

    @torch.no_grad()
    def decode(self, tokens, positions, cache: KVCache, compiled: bool = False):
        """tokens, positions (B, T) long -> logits (B, T, vocab) fp32. Writes the cache at `positions` (cache
        index = position) and lets the token at position p attend to cache slots 0..p of its row. A prompt is
        prefilled with positions 0..L-1 (T = L), then one token per row per call at per-row positions.
        compiled: run one-token steps (T = 1, B > 1, absorbed cache) through torch.compile (_compiled_decode)."""
        self._check_tokens(tokens)
        if positions.shape != tokens.shape:
            raise ValueError(f"positions {tuple(positions.shape)} must have the shape of tokens {tuple(tokens.shape)}")
        B, T = tokens.shape
        if B != cache.batch_size:
            raise ValueError(f"batch of {B} rows but the cache was made for {cache.batch_size}")
        if int(positions.min()) < 0 or int(positions.max()) >= cache.max_len:
            raise ValueError(f"positions must be in [0, cache max_len={cache.max_len}), got "
                             f"[{int(positions.min())}, {int(positions.max())}]")
        S = int(positions.max()) + 1                                               # cache slots in use
        prefix = False   # every row at the same positions S-T..S-1: a plain causal mask is exact
        if T > 1 or cache.mode == "naive":
            prefix = bool((positions == torch.arange(S - T, S, device=positions.device)).all())
        # compiled: not for one row, which torch.compile would specialise (sizes 0 and 1) and compile again
        if compiled and T == 1 and B > 1 and cache.mode == "absorbed" and not _COMPILE_FAILED:
            try:
                return _compiled_decode()(self, tokens, positions, cache, S, prefix)
            except _compile_errors() as e:   # no C compiler, say: warn once, then decode eagerly (same tokens)
                _COMPILE_FAILED.append(e)
                warnings.warn(f"torch.compile could not build the decode step ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:200]}); decoding eagerly from now on")
        return self._decode(tokens, positions, cache, S, prefix)

    def _decode(self, tokens, positions, cache: KVCache, S: int, prefix: bool):
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]             # (B, T, R/2)
        h = self.embed(tokens)
        for i, layer in enumerate(self.layers):
            h = layer.decode(h, cos, sin, positions, cache, i, S, prefix)
        return self.head(self.norm(h)).float()

    # --------------------------------------------------------------------------------------------- counters
    def counters(self, seq_len: int | None = None, dtype_bytes: int = 2) -> dict:
        """Sizes and costs, from the modules themselves (works on the meta device).

        total     parameters of the main model (MTP counted apart, as in the V3 paper's 671B)
        active    parameters one token multiplies by: all but the embedding table (a lookup) and the routed
                  experts it is not sent to ((E - K) / E of them) -- V3's "37B activated", V2-Lite's "2.4B"
        flops     training FLOPs per token at seq_len (default: the training context, min(max_seq_len,
                  original_seq_len), since YaRN only extends inference): 6 * active for the matmuls
                  (forward 2, backward 4) + 3 * n_layers * H * (N + R + V) * seq_len for causal attention
                  (QK^T and PV: 2 H (N+R+V) flops per visible key, seq_len / 2 keys on average, times 3)
        kv bytes  decode cache per token over all layers at dtype_bytes per number: naive H (N+R+V), absorbed C+R
        """
        a = self.args
        seq_len = seq_len or min(a.max_seq_len, a.original_seq_len)
        total = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("mtp."))
        mtp = sum(p.numel() for p in self.mtp.parameters()) if self.mtp is not None else 0
        inactive = 0
        for layer in self.layers:
            if isinstance(layer.ffn, MoE):
                per_expert = sum(w[0].numel() for w in (layer.ffn.w1, layer.ffn.w2, layer.ffn.w3))
                inactive += (a.n_routed_experts - a.n_activated_experts) * per_expert
        active = total - self.embed.weight.numel() - inactive
        H, qk, v = a.n_heads, a.qk_nope_head_dim + a.qk_rope_head_dim, a.v_head_dim
        return {
            "total_params": total,
            "active_params": active,
            "mtp_params": mtp,
            "train_flops_per_token": 6 * active + 3 * a.n_layers * H * (qk + v) * seq_len,
            "seq_len": seq_len,
            "kv_bytes_per_token_naive": a.n_layers * H * (qk + v) * dtype_bytes,
            "kv_bytes_per_token_absorbed": a.n_layers * (a.kv_lora_rank + a.qk_rope_head_dim) * dtype_bytes,
            "dtype_bytes": dtype_bytes,
        }


def cross_entropy(logits, targets):
    """Mean -log p(target) over the positions whose target is not -1. logits (B, T, V), targets (B, T)."""
    keep = (targets != -1).flatten()
    logp = kernels.token_logprobs(logits.flatten(0, 1), targets.clamp(min=0).flatten())  # (B*T,) fp32
    return -(logp * keep).sum() / keep.sum().clamp(min=1)


def human(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def main(argv=None):
    import os
    p = argparse.ArgumentParser(description="Build a model on the meta device and print its counters; or convert "
                                "checkpoints to / from Hugging Face's DeepseekV3 layout (hf.py).")
    p.add_argument("--config", help="a preset name from configs/ (micro, toy, v2-lite, v3-671b), as "
                   "train_pipeline.py takes it, or a JSON path (a preset with a 'model' section, or flat ModelArgs)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="context length for the FLOPs (default min(max_seq_len, original_seq_len))")
    p.add_argument("--dtype-bytes", type=int, default=2, help="bytes per cached number (2 = bf16)")
    p.add_argument("--import-hf", metavar="DIR", help="a Hugging Face DeepseekV3/V2 directory -> --out model.pt")
    p.add_argument("--export-hf", metavar="MODEL_PT", help="a minR1 model.pt -> --out directory (config.json + "
                   "safetensors)")
    p.add_argument("--out", help="where --import-hf / --export-hf write")
    p.add_argument("--tokenizer", help="--import-hf: the tokenizer name to record (default: the one config.json "
                   "records, if any)")
    p.add_argument("--no-mtp", action="store_true", help="--import-hf: leave out the MTP layer")
    p.add_argument("--max-shard-mb", type=float, default=4096, help="--export-hf: largest safetensors shard")
    a = p.parse_args(argv)
    if a.import_hf or a.export_hf:
        import hf
        if not a.out or (a.import_hf and a.export_hf):
            raise SystemExit("give one of --import-hf DIR / --export-hf MODEL_PT, and --out")
        if a.import_hf:
            return hf.cli_import(a.import_hf, a.out, a.tokenizer, a.no_mtp)
        return hf.cli_export(a.export_hf, a.out, a.max_shard_mb)
    if not a.config:
        raise SystemExit("--config is required (or --import-hf / --export-hf)")
    if os.path.isfile(a.config):
        try:                                           # a file may be flat ModelArgs, which config.py does not take
            args = ModelArgs.from_json(a.config)
        except (TypeError, ValueError) as e:
            raise SystemExit(f"error: {a.config}: {e}") from None
    else:                                              # a preset name: the same loader (and errors) as the pipeline
        from config import load_config
        cfg = load_config(a.config)
        try:
            args = ModelArgs(**cfg["model"])
        except (TypeError, ValueError) as e:
            raise SystemExit(f"error: config '{a.config}': {e}") from None
    with torch.device("meta"):                         # shapes only: no memory, so 671B builds on a laptop
        model = Transformer(args)
    c = model.counters(a.seq_len, a.dtype_bytes)
    print(json.dumps(asdict(args)))
    print(f"total params        {human(c['total_params']):>10}  ({c['total_params']:,}; MTP apart)")
    print(f"active params/token {human(c['active_params']):>10}  ({c['active_params']:,})")
    print(f"MTP params          {human(c['mtp_params']):>10}  ({c['mtp_params']:,})")
    print(f"train FLOPs/token   {human(c['train_flops_per_token']):>10}  (seq_len {c['seq_len']})")
    print(f"KV bytes/token      naive {human(c['kv_bytes_per_token_naive'])}  absorbed "
          f"{human(c['kv_bytes_per_token_absorbed'])}  ({c['dtype_bytes']} bytes per number, all layers; "
          f"{c['kv_bytes_per_token_naive'] / c['kv_bytes_per_token_absorbed']:.1f}x smaller)")


if __name__ == "__main__":
    import sys

    from common import run_cli
    sys.exit(run_cli(main))
