"""GRPO (Group Relative Policy Optimization), exactly as DeepSeek-R1 trains with it (R1 eq. 1-3, Math eq. 3).

For each question q, sample a group of G outputs o_1..o_G from the old policy pi_old, score them with rule
rewards r_1..r_G, and maximise

    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t ( min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) - beta D_it ) ]
    rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)               (per token: Math eq. 3)
    A_i    = (r_i - mean(r)) / std(r)                                            (R1 eq. 3)
    D_it   = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1                          (R1 eq. 2, the "k3" estimator)

This file, top to bottom:
  1. GRPOConfig and the PAPER preset (R1 Nature hyperparameters)
  2. group_advantages        rewards (n_groups, G) -> A (n_groups, G)
  3. kl_penalty              per-token k1 | k2 | k3 | k3+
  4. grpo_loss               per-token logprobs -> (loss = -J, stats); aggregation grpo | dr_grpo | dapo
  5. sequence_logprobs       model + (B, L) tokens -> per-token logprobs of the completion tokens
  6. rollout                 prompts -> G samples each (sample.generate) -> rewards -> advantages
  7. grpo_update             mu epochs x n_minibatches optimizer steps on one rollout (DDP-aware)
  8. grpo_step, maybe_update_reference, make_optimizer: what a trainer calls once per step
  9. train                   the RL loop of every GRPO stage: steps, evaluation, metrics, resumable checkpoints

    python train_pipeline.py --stage zero --config toy                   # R1-Zero on the toy base model
    torchrun --nproc_per_node=2 train_pipeline.py --stage zero --config toy
    python -m pytest -q tests/test_grpo.py                               # the tests that pin the objective

Distributed: split the step's tasks across ranks INTERLEAVED, tasks[rank::world_size], and give every rank the
same number of them. Each rank samples and scores its own whole groups (advantages need only the group);
each minibatch's loss is divided by the count over ALL ranks (sequences, or tokens for dapo), so that the
averaged gradient of W ranks x N/W groups equals the gradient of 1 rank x N groups.
"""
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist
from tqdm import tqdm

import data
import ep
import kernels
from checkpoint import load_resumable, save_model
from common import (Dist, MetricsLogger, adamw, autocast, clip_grad_norm, full_params, load_model_state_dict,
                    model_state_dict, print0, trim_heap, unwrap)
from rewards import combine
from sample import generate

KL_ESTIMATORS = ("k1", "k2", "k3", "k3+")
LOSS_AGGS = ("grpo", "dr_grpo", "dapo")
SCALES = ("group", "none")


# ------------------------------------------------------------------------------------------------ 1. config
@dataclass
class GRPOConfig:
    """The knobs of a GRPO run. Defaults are small (a CPU toy run); PAPER below holds R1's values."""
    # rollout
    group_size: int = 8             # G: outputs sampled per question (R1: 16; DeepSeekMath: 64)
    prompts_per_step: int = 8       # questions per OPTIMIZER step, over all ranks (R1: 32). One rollout holds
                                    #   prompts_per_step * n_minibatches questions (prompts_per_rollout)
    max_new_tokens: int = 128       # completion budget (R1: 32768, later 65536)
    temperature: float = 1.0        # sampling temperature; the loss uses pi at the same temperature (see rollout)
    top_p: float = 1.0              # nucleus sampling (the loss still uses the full, untruncated distribution)
    compile_decode: bool = False    # sample with the torch.compile'd decode step (sample.generate(compiled=True):
                                    #   ~1.5x faster small-batch steps on a CPU, ~30-60 s to compile once;
                                    #   on in the toy config; where compiling fails it warns once, runs eager)
    # optimisation
    lr: float = 1e-5                # AdamW learning rate, constant (R1: 3e-6; the toy config sets its own)
    weight_decay: float = 0.0
    grad_clip: float = 1.0          # max global grad norm per optimizer step (0 = no clipping)
    mu: int = 1                     # inner epochs over each rollout (R1: 1; mu > 1 makes rho != 1)
    n_minibatches: int = 1          # optimizer steps per epoch; each takes a contiguous slice of the groups
    micro_batch_size: int = 0       # rows per forward/backward (gradient accumulation), grouped by length so that
                                    #   each is padded to its own longest row; 0 = the whole minibatch at once
    precision: str = "auto"         # bf16 autocast of the logprob/update forwards (common.autocast); sampling is fp32
    # objective
    beta: float = 0.001             # KL coefficient (R1: 0.001; DeepSeekMath: 0.04); 0 skips the reference
    kl_estimator: str = "k3"        # k1 | k2 | k3 | k3+ (see kl_penalty); k3 is R1 eq. 2
    eps_low: float = 0.2            # ratio clip range [1 - eps_low, 1 + eps_high] (R1 first stage: 10 both;
    eps_high: float = 0.2           #   DAPO "clip-higher": 0.2 / 0.28)
    loss_agg: str = "grpo"          # grpo: 1/|o_i| per sequence, mean over sequences (Math eq. 3)
                                    # dr_grpo: token sum / dr_grpo_constant, mean over sequences (Dr. GRPO)
                                    # dapo: mean over all tokens of the minibatch (DAPO token-level loss)
    dr_grpo_constant: int = 0       # dr_grpo's constant denominator; 0 = max_new_tokens
    scale_rewards: str = "group"    # group: A = (r - mean)/std (R1 eq. 3); none: A = r - mean (Dr. GRPO)
    adv_eps: float = 1e-4           # A = (r - mean) / (std + adv_eps): caps A for near-equal rewards
    # batch filters
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal (A = 0: they teach only KL)
    mask_truncated: bool = False    # DAPO overlong filtering: no loss on completions that hit max_new_tokens
    recompute_old: bool = True      # when mu * n_minibatches > 1: pi_old from a no-grad forward of the policy
                                    #   (True) or the sampler's logprobs (False: no extra forward, but off by
                                    #   the cached-decode vs full-forward numerics). With one optimizer step
                                    #   per rollout pi_old IS the policy: logp.detach(), exact, no extra pass
    # reference model
    ref_update_every: int = 400     # R1: the reference becomes the current policy every 400 optimizer steps
    seed: int = 0                   # sampling seed = seed + 7919 * step + rank

    def __post_init__(self):
        checks = [(self.group_size >= 2, f"group_size must be >= 2 (a group of 1 has no baseline), got "
                                         f"{self.group_size}"),
                  (self.kl_estimator in KL_ESTIMATORS, f"kl_estimator must be one of {KL_ESTIMATORS}, got "
                                                       f"{self.kl_estimator!r}"),
                  (self.loss_agg in LOSS_AGGS, f"loss_agg must be one of {LOSS_AGGS}, got {self.loss_agg!r}"),
                  (self.scale_rewards in SCALES, f"scale_rewards must be one of {SCALES}, got "
                                                 f"{self.scale_rewards!r}"),
                  (self.temperature > 0, f"temperature must be > 0 (GRPO needs sampled groups, greedy "
                                         f"decoding gives G copies), got {self.temperature}"),
                  (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
                  (self.mu >= 1 and self.n_minibatches >= 1, f"mu and n_minibatches must be >= 1, got "
                                                             f"{self.mu}, {self.n_minibatches}"),
                  (self.eps_low >= 0 and self.eps_high >= 0, f"eps_low/eps_high must be >= 0, got "
                                                             f"{self.eps_low}, {self.eps_high}"),
                  (self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
                  (math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}"),
                  (self.max_new_tokens >= 1 and self.prompts_per_step >= 1,
                   "max_new_tokens and prompts_per_step must be >= 1"),
                  (self.micro_batch_size >= 0, f"micro_batch_size must be >= 0, got {self.micro_batch_size}")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"GRPOConfig: {msg}")

    @property
    def prompts_per_rollout(self) -> int:
        """Questions sampled per grpo_step (over all ranks): one rollout feeds n_minibatches optimizer steps."""
        return self.prompts_per_step * self.n_minibatches


# R1 (Nature version, first RL stage): lr 3e-6, beta 0.001, eps 10, G 16, 32 questions per step (512 outputs),
# temperature 1, max length 32768, the reference replaced every 400 steps, and each rollout of 8192 outputs
# (512 questions) split into 16 minibatches for 1 inner epoch: 16 optimizer steps of 32 questions each.
PAPER = GRPOConfig(group_size=16, prompts_per_step=32, max_new_tokens=32768, temperature=1.0, top_p=1.0,
                   lr=3e-6, beta=0.001, kl_estimator="k3", eps_low=10.0, eps_high=10.0, loss_agg="grpo",
                   scale_rewards="group", mu=1, n_minibatches=16, ref_update_every=400)


# ------------------------------------------------------------------------------------------- 2. advantages
def group_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """rewards (n_groups, G) -> advantages (n_groups, G): A_i = (r_i - mean) / std within each group (R1 eq. 3).

    std is the UNBIASED sample std (torch.std, correction 1), as in TRL; R1 does not say which. eps = 1e-4 is
    added to std so that two near-equal rewards (std ~ 1e-9) cannot produce a huge advantage; for any spread of
    rewards that matters (std >> 1e-4) it changes A by a factor 1/(1 + eps/std), i.e. not at all in practice.
    A group whose rewards are exactly equal gets advantages exactly 0 (never NaN, never a rounding residue of
    r - mean): it carries no learning signal. scale="none" keeps A = r - mean (Dr. GRPO: no std division).
    """
    if rewards.dim() != 2:
        raise ValueError(f"group_advantages: rewards must be (n_groups, G), got shape {tuple(rewards.shape)}")
    if scale not in SCALES:
        raise ValueError(f"group_advantages: scale must be one of {SCALES}, got {scale!r}")
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)                      # (n_groups, G)
    if scale == "group":
        if rewards.shape[1] < 2:
            raise ValueError("group_advantages: scale='group' needs G >= 2 (the std of one sample is undefined)")
        centred = centred / (rewards.std(dim=1, keepdim=True) + eps)            # R1 eq. 3
    all_equal = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)            # (n_groups, 1)
    return torch.where(all_equal, torch.zeros_like(centred), centred)


# --------------------------------------------------------------------------------------------------- 3. KL
def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate D of KL(pi_theta || pi_ref) from the sampled tokens' logprobs (any shape, elementwise).

    With log r = ref_logp - logp (r = pi_ref / pi_theta) and tokens sampled from pi_theta (Schulman, 2020):
      k1  = -log r                    unbiased, high variance, can be negative
      k2  = (log r)^2 / 2             biased, low variance, >= 0
      k3  = (r - 1) - log r           unbiased (E[r] = 1), >= 0 since log x <= x - 1       (R1 eq. 2)
      k3+ = k3's value with k2's gradient (straight-through)

    The gradient subtlety. D enters the LOSS and is differentiated with the samples held fixed, so what the
    optimiser follows is E_pi[grad D], not grad E_pi[D]. Writing g = grad log pi_theta(x):
      grad k1 = g                     E_pi[g] = 0: k1 as a loss term pulls nowhere on average
      grad k2 = (log pi - log pi_ref) g    E_pi[.] = grad KL(pi_theta || pi_ref): the reverse KL, as intended
      grad k3 = (1 - r) g             E_pi[.] = -sum_x pi_ref(x) grad log pi(x) = grad KL(pi_ref || pi_theta),
                                      the FORWARD KL: a valid divergence to the reference, but not the one
                                      whose value k3 estimates.
    k3+ (as in verl) logs and penalises k3's unbiased, non-negative value while following k2's gradient, the
    correct reverse-KL gradient. k3 stays the default because it is what R1 eq. 2 writes.
    """
    log_r = ref_logp - logp                                     # log(pi_ref / pi_theta)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r ** 2
    # k3 = (r - 1) - log r, written expm1(log r) - log r: exp(x) - 1 - x rounds to a NEGATIVE number in fp32
    # for tiny x (exp(1e-8) == 1.0f gives -1e-8), while expm1(x) >= x holds after rounding, so k3 >= 0 exactly
    if estimator == "k3":
        return torch.expm1(log_r) - log_r                       # R1 eq. 2
    if estimator == "k3+":
        k2 = 0.5 * log_r ** 2
        k3 = torch.expm1(log_r) - log_r
        return k2 + (k3 - k2).detach()                          # value of k3, gradient of k2
    raise ValueError(f"kl_penalty: estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


# ------------------------------------------------------------------------------------------------- 4. loss
def grpo_loss(logp, old_logp, ref_logp, advantages, mask, cfg: GRPOConfig, entropy=None, denom=None):
    """The GRPO objective on a batch of B completions, per token (Math eq. 3 / R1 eq. 1-2). Returns (loss, stats).

    logp (B, T): log pi_theta of each sampled token (requires grad); old_logp (B, T): log pi_old (no grad);
    ref_logp (B, T) or None (needed when cfg.beta > 0): log pi_ref; advantages (B,) or (B, T): A_i;
    mask (B, T) bool: the completion tokens that carry loss (everything else, e.g. padding, is ignored, even
    if it holds inf/NaN); entropy (B, T) or None: only logged.
    denom: the count the batch mean divides by; default this batch's own: its sequences with >= 1 loss token
    (grpo, dr_grpo) or its loss tokens (dapo). Under torch.distributed pass the count over all ranks, so that
    the average of the ranks' gradients is the gradient of the mean over the global batch.

    Aggregation (cfg.loss_agg), with per-token term j_it = min(rho A, clip(rho) A) - beta D:
      grpo     J = 1/N sum_i 1/|o_i| sum_t j_it          (Math eq. 3; R1 eq. 1 with the per-token mean)
      dr_grpo  J = 1/N sum_i sum_t j_it / C              (Dr. GRPO: no length bias; C = dr_grpo_constant)
      dapo     J = 1/(sum_i |o_i|) sum_i sum_t j_it      (DAPO token-level: long outputs weigh per token)
    N counts sequences with at least one loss token: a fully masked sequence (e.g. a truncated one under
    mask_truncated) is as if absent, in every mode. loss = -J.

    stats (floats over the loss tokens): kl (mean D, the chosen estimator's value; 0 when beta = 0),
    clip_low (fraction where rho < 1 - eps_low and A < 0: the clip is active, no gradient), clip_high
    (rho > 1 + eps_high and A > 0), ratio_mean / ratio_min / ratio_max, entropy (if given), n_tokens, n_seqs.
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"grpo_loss: logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
                         f"{tuple(mask.shape)} must have the same (B, T) shape")
    if cfg.beta > 0 and ref_logp is None:
        raise ValueError("grpo_loss: cfg.beta > 0 needs ref_logp (the reference model's logprobs)")
    m = mask.bool()
    A = advantages[:, None] if advantages.dim() == 1 else advantages               # (B, 1) or (B, T)
    A = A.to(logp.dtype)
    # Padding may hold anything: zero it BEFORE exp, so that no inf reaches the graph (where() after the fact
    # would still give NaN gradients, 0 * inf, through exp's backward).
    logp = torch.where(m, logp, 0.0)
    old_logp = torch.where(m, old_logp.to(logp.dtype), 0.0)
    ratio = torch.exp(logp - old_logp)                                              # rho_it (Math eq. 3)
    surr = ratio * A
    surr_clipped = torch.clamp(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high) * A
    per_token = torch.minimum(surr, surr_clipped)                                   # R1 eq. 1: min(rho A, clip A)
    kl = None
    if cfg.beta > 0:
        kl = kl_penalty(logp, torch.where(m, ref_logp.to(logp.dtype), 0.0), cfg.kl_estimator)   # R1 eq. 2
        per_token = per_token - cfg.beta * kl                                       # R1 eq. 1: ... - beta D
    per_token = torch.where(m, per_token, 0.0)                                      # (B, T)

    n_tok = m.sum(1)                                                                # |o_i|, (B,)
    if cfg.loss_agg == "grpo":
        num = (per_token.sum(1) / n_tok.clamp(min=1)).sum()                         # sum_i 1/|o_i| sum_t
        count = (n_tok > 0).sum()
    elif cfg.loss_agg == "dr_grpo":
        num = per_token.sum() / (cfg.dr_grpo_constant or cfg.max_new_tokens)       # sum_i sum_t / C
        count = (n_tok > 0).sum()
    elif cfg.loss_agg == "dapo":
        num = per_token.sum()                                                       # sum over all tokens
        count = n_tok.sum()
    else:
        raise ValueError(f"grpo_loss: loss_agg must be one of {LOSS_AGGS}, got {cfg.loss_agg!r}")
    denom = count if denom is None else denom
    J = num / max(float(denom), 1.0)
    loss = -J

    with torch.no_grad():
        n = max(int(n_tok.sum()), 1)
        r = ratio[m]
        stats = {
            "kl": float(kl[m].sum() / n) if kl is not None else 0.0,
            "clip_low": float(((ratio < 1 - cfg.eps_low) & (A < 0) & m).sum() / n),
            "clip_high": float(((ratio > 1 + cfg.eps_high) & (A > 0) & m).sum() / n),
            "ratio_mean": float(r.sum() / n),
            "ratio_min": float(r.min()) if r.numel() else float("nan"),
            "ratio_max": float(r.max()) if r.numel() else float("nan"),
            "entropy": float(entropy[m].sum() / n) if entropy is not None else float("nan"),
            "n_tokens": int(n_tok.sum()),
            "n_seqs": int((n_tok > 0).sum()),
        }
    return loss, stats


# ------------------------------------------------------------------------------------------- 5. logprobs
def sequence_logprobs(model, tokens, completion_mask, temperature: float = 1.0, with_entropy: bool = False):
    """Per-token log pi(token_{t+1} | tokens_<=t) of the completion tokens, from one forward of `model`.

    tokens (B, L) long: prompt + completion, right-padded; completion_mask (B, L) bool: the completion tokens.
    -> logp (B, L-1) fp32 with logp[:, t] the logprob of tokens[:, t+1]; 0 where completion_mask[:, t+1] is
    False (so the loss mask is completion_mask[:, 1:]). [, entropy (B, L-1) of the same distributions.]
    The distribution is softmax(logits / temperature), the one the sampler drew from. Only the completion
    positions go through kernels.token_logprobs (chunked over the vocabulary, Triton on CUDA: the full
    (tokens, V) fp32 log-softmax, GRPO's largest activation, is never kept for the backward)."""
    logits = model(tokens[:, :-1])                                      # (B, L-1, V)
    sel = completion_mask[:, 1:]                                        # (B, L-1): next token is a completion
    out = kernels.token_logprobs(logits[sel].float() / temperature, tokens[:, 1:][sel], with_entropy)
    zeros = torch.zeros(sel.shape, dtype=torch.float32, device=logits.device)
    if not with_entropy:
        return zeros.masked_scatter(sel, out)
    return zeros.masked_scatter(sel, out[0]), zeros.masked_scatter(sel, out[1].detach())


# ------------------------------------------------------------------------------------------- 6. rollout
@dataclass
class Rollout:
    """One rank's sampled and scored groups. Rows are grouped: row j belongs to group j // G."""
    tokens: torch.Tensor             # (N, L) long: prompt + completion, right-padded with pad_id
    completion_mask: torch.Tensor    # (N, L) bool: the completion tokens (EOS included)
    advantages: torch.Tensor         # (N,) A_i
    rewards: torch.Tensor            # (N,)
    keep: torch.Tensor               # (N,) bool: row's group kept (dynamic sampling)
    finished: torch.Tensor           # (N,) bool: ended with EOS (False = truncated at max_new_tokens)
    lengths: torch.Tensor            # (N,) completion lengths in tokens
    sampler_logp: torch.Tensor       # (N, L-1) fp32: the sampler's logprobs, aligned like sequence_logprobs
    group_size: int
    prompts: list = field(default_factory=list)       # prompt texts, one per row
    completions: list = field(default_factory=list)   # completion texts (the EOS token not included)
    parts: dict = field(default_factory=dict)         # reward component name -> (N,) tensor
    kinds: list = field(default_factory=list)         # each row's task kind ("arith", "countdown", ...) or None
    timings: dict = field(default_factory=dict)       # time_generate, time_reward (seconds)


def score(reward_fn, prompts, completions, columns):
    """reward_fn is either f(prompts, completions, **columns) -> list[float] (TRL's interface), or a dict
    {name: (f, weight)} (rewards.combine: reward = sum of weight * f, each component also logged under its name,
    e.g. {"accuracy": (accuracy_reward, 1.0), "format": (format_reward, 1.0)}: R1's Reward_rule).
    -> (rewards (N,) float32, {name: (N,) float32})."""
    parts = combine(reward_fn if isinstance(reward_fn, dict) else {"reward": (reward_fn, 1.0)}).components(
        prompts, completions, **columns)
    total = torch.tensor(parts.pop("reward"), dtype=torch.float32)
    return total, {name: torch.tensor(v, dtype=torch.float32) for name, v in parts.items()}


def _sync(device) -> float:
    """time.perf_counter() once the device has finished its queued work (so timings mean something on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def rollout(policy, tasks, reward_fn, tokenizer, cfg: GRPOConfig, step: int, dist: Dist, prompt_fn) -> Rollout:
    """Sample G completions for each task with the KV-cache sampler, score them, compute group advantages.

    The sampler's logprobs are log softmax(logits / T) without top-p truncation (sample.py's contract): the
    temperature-T policy. The loss (sequence_logprobs) uses the same temperature for pi_theta, pi_old and
    pi_ref, so the ratio always compares like with like; with recompute_old (default) pi_old is recomputed by
    the training forward itself, so that at mu = 1 the ratio is exactly 1 rather than 1 + (numerical
    difference between the cached decode path and the full forward)."""
    core = unwrap(policy)
    G = cfg.group_size
    texts = [prompt_fn(t) for t in tasks]
    prompt_ids = [tokenizer.encode(p) for p in texts]
    rows = [ids for ids in prompt_ids for _ in range(G)]              # group i = rows i*G .. i*G + G-1
    device = next(core.parameters()).device
    t0 = _sync(device)
    with full_params(policy):   # FSDP2: whole weights while sampling (decode runs no forward hook; common.py)
        gen = generate(core, rows, cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                       eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, seed=cfg.seed + 7919 * step + dist.rank,
                       compiled=cfg.compile_decode)
    gen_tokens, gen_logp = gen.tokens.cpu(), gen.logprobs.float().cpu()
    lengths, finished = gen.lengths.cpu(), gen.finished.cpu()
    t_generate = _sync(device) - t0

    # prompt + completion rows, right-padded; the sampler's logprob of completion token t sits at P + t - 1
    N = len(rows)
    L = max(len(p) + int(c) for p, c in zip(rows, lengths))
    tokens = torch.full((N, L), tokenizer.pad_id, dtype=torch.long)
    cmask = torch.zeros(N, L, dtype=torch.bool)
    sampler_logp = torch.zeros(N, L - 1)
    completions = []
    for j, (p, c) in enumerate(zip(rows, lengths.tolist())):
        P = len(p)
        tokens[j, :P] = torch.tensor(p)
        tokens[j, P:P + c] = gen_tokens[j, :c]
        cmask[j, P:P + c] = True
        sampler_logp[j, P - 1:P - 1 + c] = gen_logp[j, :c]
        body = gen_tokens[j, :c - 1 if finished[j] else c]             # the text without the EOS token
        completions.append(tokenizer.decode(body.tolist()))

    keys = [k for k in dict.fromkeys(k for t in tasks for k in t) if k != "prompt"]
    columns = {k: [t.get(k) for t in tasks for _ in range(G)] for k in keys}
    prompts = [p for p in texts for _ in range(G)]
    t0 = time.perf_counter()
    rewards, parts = score(reward_fn, prompts, completions, columns)
    t_reward = time.perf_counter() - t0
    adv = group_advantages(rewards.view(-1, G), cfg.scale_rewards, cfg.adv_eps)      # R1 eq. 3
    varied = (rewards.view(-1, G) != rewards.view(-1, G)[:, :1]).any(1)             # (n_groups,)
    keep = varied if cfg.dynamic_sampling else torch.ones_like(varied)
    return Rollout(tokens=tokens, completion_mask=cmask, advantages=adv.reshape(-1), rewards=rewards,
                   keep=keep.repeat_interleave(G), finished=finished, lengths=lengths, sampler_logp=sampler_logp,
                   group_size=G, prompts=prompts, completions=completions, parts=parts,
                   kinds=columns.get("task", [None] * len(prompts)),
                   timings={"time_generate": t_generate, "time_reward": t_reward})


# -------------------------------------------------------------------------------------------- 7. update
def _averages_grads(policy) -> bool:
    """True when the wrapper averages gradients over ranks itself (DDP, FSDP2); else grpo_update all-reduces."""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(policy, (torch.nn.parallel.DistributedDataParallel, FSDPModule))


@torch.no_grad()
def _logprobs_no_grad(model, tokens, cmask, rows, cfg, L1):
    """log pi of the completion tokens of `rows` (a no-grad forward in eval mode, micro-batched by length) ->
    (len, L1)."""
    out = torch.zeros(len(rows), L1)
    if len(rows) == 0:
        return out
    core = unwrap(model)
    was_training = core.training
    core.eval()                          # eval: MoE expert loads are only counted in training forwards
    device = next(core.parameters()).device
    with autocast(device, cfg.precision):
        for idx in _length_buckets(cmask[rows], cfg.micro_batch_size):
            r = rows[idx]
            end = int(_row_ends(cmask[r]).max())
            lp = sequence_logprobs(core, tokens[r, :end].to(device), cmask[r, :end].to(device), cfg.temperature)
            out[idx, :end - 1] = lp.float().cpu()
    core.train(was_training)
    return out


def _length_buckets(cmask, size: int) -> list:
    """Indices 0..n-1 of rows, sorted by length and cut into chunks of `size` (0: one chunk): each micro-batch is
    padded only to its own longest row, not to the rollout's (a few long rows would set the cost of all)."""
    order = torch.argsort(_row_ends(cmask), descending=True, stable=True)
    return list(order.split(size)) if size else [order]


def _row_ends(cmask):
    """(n, L) completion mask -> (n,) index one past each row's last completion token."""
    L = cmask.shape[1]
    return L - cmask.flip(1).int().argmax(1)


def _minibatches(batch: Rollout, cfg: GRPOConfig, world: int):
    """-> loss_mask (N, L-1), active (N,) rows with loss, the rows of each minibatch, the global count (sequences,
    or tokens for dapo) of each minibatch, which its loss is divided by."""
    G = batch.group_size
    n_groups = batch.tokens.shape[0] // G
    loss_mask = batch.completion_mask[:, 1:] & batch.keep[:, None]                 # (N, L-1)
    if cfg.mask_truncated:
        loss_mask &= batch.finished[:, None]                                        # DAPO overlong filtering
    active = loss_mask.any(1)                                                       # (N,)
    slices = torch.arange(n_groups).tensor_split(cfg.n_minibatches)                # groups of each minibatch
    minibatches = [(gs[:, None] * G + torch.arange(G)).reshape(-1) for gs in slices]    # their rows
    minibatches = [rows[active[rows]] for rows in minibatches]                     # rows that carry loss
    unit = loss_mask.sum(1) if cfg.loss_agg == "dapo" else active.long()            # tokens or sequences
    counts = torch.tensor([float(unit[rows].sum()) for rows in minibatches], dtype=torch.float64)
    if world > 1:
        tdist.all_reduce(counts)                                                    # global count per minibatch
    return loss_mask, active, minibatches, counts


def _fixed_logprobs(policy, ref_model, batch: Rollout, cfg: GRPOConfig, loss_mask, active):
    """log pi_old and log pi_ref of the completion tokens (N, L-1), each None when not needed: pi_old only when a
    rollout feeds several optimizer steps (with one, the policy IS pi_old and logp.detach() is exact: ratio 1),
    pi_ref only when beta > 0."""
    old_logp = ref_logp = None
    rows = torch.nonzero(active).squeeze(1)
    if cfg.mu * cfg.n_minibatches > 1:
        if cfg.recompute_old:
            old_logp = torch.zeros_like(batch.sampler_logp)
            old_logp[rows] = _logprobs_no_grad(policy, batch.tokens, batch.completion_mask, rows, cfg,
                                               loss_mask.shape[1])
        else:
            old_logp = batch.sampler_logp
    if cfg.beta > 0:
        if ref_model is None:
            raise ValueError("grpo_update: cfg.beta > 0 needs a reference model (or set beta = 0)")
        ref_logp = torch.zeros_like(batch.sampler_logp)
        ref_logp[rows] = _logprobs_no_grad(ref_model, batch.tokens, batch.completion_mask, rows, cfg,
                                           loss_mask.shape[1])
    return old_logp, ref_logp


def _minibatch_step(policy, optimizer, batch: Rollout, rows, loss_mask, old_logp, ref_logp, denom, cfg: GRPOConfig,
                    grad_scale: float, world: int):
    """One optimizer step on one minibatch (micro-batched) -> (sums of loss, kl, clip_low, clip_high, ratio,
    entropy, tokens (8,) float64, ratio min, ratio max, grad norm or None)."""
    core = unwrap(policy)
    device = next(core.parameters()).device
    amp = autocast(device, cfg.precision)
    sums = torch.zeros(8, dtype=torch.float64)
    rmin, rmax = float("inf"), float("-inf")
    dummy = len(rows) == 0                # nothing here, but the other ranks will all-reduce gradients:
    if dummy:                             # join them with a zero-loss row, in eval mode so that the
        rows = torch.zeros(1, dtype=torch.long)   # MoE load counters (update_bias) do not see it
        core.eval()
    optimizer.zero_grad(set_to_none=True)
    micro = [rows[idx] for idx in _length_buckets(batch.completion_mask[rows], cfg.micro_batch_size)]
    n_real = len(micro)
    if ep.is_sharded(core):   # expert parallelism: each MoE forward is a collective, so every rank runs as many
        most = torch.tensor([n_real])                     # micro-batches as the busiest one (zero-loss extras)
        tdist.all_reduce(most, op=tdist.ReduceOp.MAX)
        micro += [rows[:1]] * (int(most) - n_real)
    for j, r in enumerate(micro):
        no_sync = j < len(micro) - 1 and hasattr(policy, "no_sync")
        end = int(_row_ends(batch.completion_mask[r]).max())
        tok = batch.tokens[r, :end].to(device)
        pad = j >= n_real
        m = (loss_mask[r, :end - 1] & (not dummy) & (not pad)).to(device)
        if pad:
            core.eval()                   # a padding micro-batch: no load counting either
        with policy.no_sync() if no_sync else nullcontext(), amp:
            logp, ent = sequence_logprobs(policy, tok, batch.completion_mask[r, :end].to(device), cfg.temperature,
                                          with_entropy=True)
            old = logp.detach() if old_logp is None else old_logp[r, :end - 1].to(device)
            ref = None if ref_logp is None else ref_logp[r, :end - 1].to(device)
            loss, st = grpo_loss(logp, old, ref, batch.advantages[r].to(device), m, cfg, entropy=ent, denom=denom)
            (loss * grad_scale).backward()
        n = st["n_tokens"]
        sums += torch.tensor([float(loss.detach()), st["kl"] * n, st["clip_low"] * n, st["clip_high"] * n,
                              st["ratio_mean"] * n, (st["entropy"] if n else 0.0) * n, n, 0], dtype=torch.float64)
        if n:
            rmin, rmax = min(rmin, st["ratio_min"]), max(rmax, st["ratio_max"])
    core.train()
    if world > 1 and grad_scale == 1.0:   # no wrapper: sum the ranks' gradients ourselves
        for p in core.parameters():
            if p.grad is not None:
                tdist.all_reduce(p.grad)
    gnorm = float(clip_grad_norm(policy, cfg.grad_clip)) if cfg.grad_clip > 0 else None   # EP: experts counted once
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    core.update_bias()                    # V3 aux-loss-free balancing: once after each optimizer step
    return sums, rmin, rmax, gnorm


def grpo_update(policy, ref_model, optimizer, batch: Rollout, cfg: GRPOConfig, dist: Dist | None = None) -> dict:
    """mu epochs x n_minibatches optimizer steps on one rollout; returns the loss diagnostics (all ranks).

    Minibatch k takes the k-th contiguous slice of this rank's groups, then keeps the rows that carry loss
    (group kept by dynamic sampling; not masked as truncated). With tasks split interleaved over ranks
    (tasks[rank::world]) and n_groups divisible by world * n_minibatches, the union over ranks of minibatch k is
    exactly the single-process minibatch k, and its loss is divided by the global count: W ranks give the
    same update as 1 process, dropped groups or not. A rank whose slice is empty still runs a zero-weight
    forward/backward on one row, so that every rank joins the same gradient all-reduces.
    """
    dist = dist or Dist()
    device = next(unwrap(policy).parameters()).device
    world = dist.world_size
    loss_mask, active, minibatches, counts = _minibatches(batch, cfg, world)
    t0 = _sync(device)
    with ep.full_experts(unwrap(policy)):   # EP: these no-grad passes differ in number between ranks: local experts
        old_logp, ref_logp = _fixed_logprobs(policy, ref_model, batch, cfg, loss_mask, active)
    t_logprobs = _sync(device) - t0

    # If the wrapper (DDP/FSDP) averages gradients over W ranks, scale by W to turn that into the global sum.
    grad_scale = world if (world > 1 and _averages_grads(policy)) else 1.0
    sums = torch.zeros(8, dtype=torch.float64)      # loss, kl, clip_low, clip_high, ratio, entropy, tokens, steps
    rmin, rmax, gnorms = float("inf"), float("-inf"), []
    t0 = _sync(device)
    policy.train()
    for epoch in range(cfg.mu):
        for k, rows in enumerate(minibatches):
            if counts[k] == 0:                    # nothing to learn from on any rank: no step at all
                continue
            s, lo, hi, gnorm = _minibatch_step(policy, optimizer, batch, rows, loss_mask, old_logp, ref_logp,
                                               counts[k], cfg, grad_scale, world)
            sums += s
            sums[7] += 1
            rmin, rmax = min(rmin, lo), max(rmax, hi)
            if gnorm is not None:
                gnorms.append(gnorm)
    t_update = _sync(device) - t0

    mm = torch.tensor([-rmin, rmax], dtype=torch.float64)
    times = torch.tensor([t_logprobs, t_update], dtype=torch.float64)
    if world > 1:
        tdist.all_reduce(sums)
        tdist.all_reduce(times)
        tdist.all_reduce(mm, op=tdist.ReduceOp.MAX)
    n_tok = max(sums[6].item(), 1.0)
    n_steps = int(sums[7].item()) // world
    return {"loss": sums[0].item() / max(n_steps, 1), "kl": sums[1].item() / n_tok,
            "clip_low": sums[2].item() / n_tok, "clip_high": sums[3].item() / n_tok,
            "ratio_mean": sums[4].item() / n_tok, "ratio_min": -mm[0].item() if sums[6] else float("nan"),
            "ratio_max": mm[1].item() if sums[6] else float("nan"), "entropy": sums[5].item() / n_tok,
            "grad_norm": sum(gnorms) / len(gnorms) if gnorms else float("nan"), "opt_steps": n_steps,
            "train_tokens": int(sums[6].item()) // cfg.mu,
            "time_logprobs": times[0].item() / world, "time_update": times[1].item() / world}


# ----------------------------------------------------------------------------------------------- 8. loop
def maybe_update_reference(ref_model, policy, step: int, cfg: GRPOConfig) -> bool:
    """R1: every ref_update_every optimizer steps the reference model becomes the current policy.

    Called at the start of rollout `step` (grpo_step does it); the optimizer steps done before it are
    step * mu * n_minibatches, and the reference is replaced when that count crosses a multiple of
    ref_update_every (R1's 400 steps = 25 rollouts of its 16 minibatches). Returns whether it was replaced.
    Under FSDP2 this gathers the full weights: call it on every rank."""
    if ref_model is None or cfg.ref_update_every <= 0 or step <= 0:
        return False
    per = cfg.mu * cfg.n_minibatches
    if (step * per) // cfg.ref_update_every == ((step - 1) * per) // cfg.ref_update_every:
        return False
    load_model_state_dict(ref_model, model_state_dict(policy))
    return True


def make_optimizer(policy, cfg: GRPOConfig) -> torch.optim.AdamW:
    """AdamW at the constant cfg.lr over the policy's trainable parameters."""
    params = [p for p in policy.parameters() if p.requires_grad]
    return adamw(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)


def _global_std(x: torch.Tensor, dist: Dist) -> float:
    """The population std of x over every rank's values."""
    m = torch.tensor([len(x), x.sum(), (x * x).sum()], dtype=torch.float64)
    if dist.world_size > 1:
        tdist.all_reduce(m)
    n, s, ss = m.tolist()
    return max(ss / n - (s / n) ** 2, 0.0) ** 0.5


def _by_kind(batch: Rollout, text_flags: dict, dist: Dist) -> dict:
    """Rollout statistics per task kind (reduced over ranks): length_<kind> (tokens), length_<kind>_correct (of
    the rollouts with accuracy 1), accuracy_<kind>; and, for each name -> f(text) -> bool of text_flags, the share
    of completions it holds for. Kinds absent from the step are left out."""
    acc = batch.parts.get("accuracy", torch.zeros(len(batch.completions)))
    rows = []
    for kind in data.KINDS:                                   # a fixed layout, the same on every rank
        m = torch.tensor([x == kind for x in batch.kinds], dtype=torch.bool)
        ok = m & (acc > 0.999)
        rows += [m.sum(), batch.lengths[m].sum(), ok.sum(), batch.lengths[ok].sum()]
    rows += [sum(bool(f(c)) for c in batch.completions) for f in text_flags.values()] + [len(batch.completions)]
    sums = torch.tensor([float(x) for x in rows], dtype=torch.float64)
    if dist.world_size > 1:
        tdist.all_reduce(sums)
    out = {}
    for i, kind in enumerate(data.KINDS):
        n, length, n_ok, length_ok = sums[4 * i:4 * i + 4].tolist()
        if n:
            out.update({f"length_{kind}": length / n, f"accuracy_{kind}": n_ok / n})
        if n_ok:
            out[f"length_{kind}_correct"] = length_ok / n_ok
    for j, name in enumerate(text_flags):
        out[name] = sums[4 * len(data.KINDS) + j].item() / sums[-1].item()
    return out


def grpo_step(policy, ref_model, optimizer, tasks, reward_fn, tokenizer, cfg: GRPOConfig, step: int,
              dist: Dist | None = None, prompt_fn=data.r1zero_prompt, count_words=(), text_flags=None,
              return_rollout: bool = False):
    """One GRPO step: (reference refresh) -> rollout -> score -> advantages -> mu x n_minibatches updates.

    policy: the Transformer, possibly DDP/FSDP-wrapped (generation and no-grad passes use unwrap(policy)).
    ref_model: the frozen reference (None allowed when cfg.beta == 0). tasks: THIS rank's task dicts (split
    interleaved by the caller: all_tasks[rank::world_size], the same number on every rank). reward_fn: see
    score(). prompt_fn: task -> prompt text (default data.r1zero_prompt, the R1-Zero template).
    count_words: words whose presence in completions is counted (metric "words": the fraction of completions
    with any of them, e.g. ("wait", "check") for the "aha moment"); text_flags: {name: f(text) -> bool}, each
    logged as the share of completions it holds for; per task kind: length_<kind>, length_<kind>_correct,
    accuracy_<kind> (_by_kind).
    Returns metrics (reduced over ranks; identical on every rank): reward (mean) and each reward component's
    mean (e.g. accuracy, format), reward_std (mean within-group std), response_length, truncated (fraction
    without EOS), groups_kept / groups, the update's loss diagnostics (grpo_update), time_rollout,
    time_reward, time_logprobs, time_update, step_time, tokens_per_s (all rows' tokens / step time) and
    gen_tokens_per_s (generated tokens / rollout time). With return_rollout, (metrics, this rank's Rollout).
    """
    dist = dist or Dist()
    if not tasks:
        raise ValueError("grpo_step: no tasks for this rank")
    core = unwrap(policy)
    device = next(core.parameters()).device
    t_start = _sync(device)
    ref_updated = maybe_update_reference(ref_model, policy, step, cfg)

    t0 = _sync(device)
    batch = rollout(policy, tasks, reward_fn, tokenizer, cfg, step, dist, prompt_fn)
    t_rollout = _sync(device) - t0
    metrics = grpo_update(policy, ref_model, optimizer, batch, cfg, dist)
    t_total = _sync(device) - t_start

    # rollout metrics: sums over ranks, then divided by global counts
    G = cfg.group_size
    r = batch.rewards.view(-1, G)
    words = [w.lower() for w in count_words]
    names = sorted(k for k in batch.parts if k != "reward")
    n_prompt_tok = int(batch.completion_mask.int().argmax(1).sum())          # tokens before each completion
    sums = torch.tensor([len(batch.rewards), r.shape[0], batch.rewards.sum(), r.std(1).sum(), batch.lengths.sum(),
                         (~batch.finished).sum(), batch.keep.view(-1, G)[:, 0].sum(),
                         sum(any(w in c.lower() for w in words) for c in batch.completions),
                         n_prompt_tok, batch.timings["time_generate"], batch.timings["time_reward"], t_rollout,
                         t_total] + [batch.parts[k].nansum() for k in names] +
                        [(~batch.parts[k].isnan()).sum() for k in names], dtype=torch.float64)
    if dist.world_size > 1:
        tdist.all_reduce(sums)
    (n, n_groups, reward, reward_std, length, truncated, kept, with_words, prompt_tok, t_gen, t_reward,
     t_rollout, t_total), parts, applies = sums[:13].tolist(), sums[13:13 + len(names)].tolist(), sums[13 + len(names):]
    world = dist.world_size
    # each reward part: its mean over the rows it applies to; absent from a step where it applies to none (all_rl's
    # general terms before the general prompts join), not a 0 that would draw as a collapse
    out = {"reward": reward / n, **{k: v / float(c) for k, v, c in zip(names, parts, applies) if c > 0},
           "reward_std": reward_std / n_groups,
           "response_length": length / n, "response_length_std": _global_std(batch.lengths.double(), dist),
           "truncated": truncated / n, "groups_kept": int(kept),
           "groups": int(n_groups), "ref_updated": ref_updated, **metrics,
           "time_rollout": t_rollout / world, "time_generate": t_gen / world, "time_reward": t_reward / world,
           "step_time": t_total / world}
    if words:
        out["words"] = with_words / n
    out.update(_by_kind(batch, text_flags or {}, dist))
    out["tokens_per_s"] = (prompt_tok + length) / max(out["step_time"], 1e-9)     # every token of every row
    out["gen_tokens_per_s"] = length / max(out["time_generate"], 1e-9)
    return (out, batch) if return_rollout else out


# ---------------------------------------------------------------------------------------------- 9. train
def train(policy, ref_model, optimizer, tasks, reward_fn, tokenizer, cfg: GRPOConfig, out_dir: str, dist: Dist, *,
          steps: int, eval_every: int, evaluate, final_evaluate=None, prompt_fn=data.r1zero_prompt,
          resume: bool = False, ckpt_every: int = 10, count_words=(), text_flags=None,
          extra_ckpt: dict | None = None) -> dict:
    """The RL loop of every GRPO stage (sft.train's counterpart): `steps` grpo_steps, held-out evaluation every
    eval_every steps and at the end, out_dir/metrics.jsonl (one row per step) and samples.jsonl, and a resumable
    out_dir/ckpt.pt (model, optimizer, reference, RNG) every ckpt_every steps. tasks: the task dicts, or a
    function step -> task dicts (all_rl adds general prompts late in the stage); each step draws
    prompts_per_rollout of them with an RNG seeded by the step alone, so a resumed run draws what the killed
    one would have. evaluate(policy) -> (results: set -> metrics, samples); final_evaluate (default evaluate)
    makes the last point of the curves, after the last step. Returns that final evaluation's results."""
    os.makedirs(out_dir, exist_ok=True)
    name, ckpt_path, start = os.path.basename(out_dir), os.path.join(out_dir, "ckpt.pt"), 0
    if resume and os.path.exists(ckpt_path):
        ck = load_resumable(ckpt_path, policy, optimizer)
        if ref_model is not None:
            ref_model.load_state_dict(ck["ref"])
        start = ck["step"]
        print0(f"resumed {name} from {ckpt_path} at step {start}")
    elif dist.is_main:
        for f in ("metrics.jsonl", "samples.jsonl"):
            if os.path.exists(os.path.join(out_dir, f)):
                os.remove(os.path.join(out_dir, f))
    logger = MetricsLogger(os.path.join(out_dir, "metrics.jsonl"))
    n_rollout = cfg.prompts_per_rollout
    if n_rollout % dist.world_size:
        raise SystemExit(f"error: prompts_per_step x n_minibatches = {n_rollout} must be divisible by the "
                         f"{dist.world_size} ranks (each rank samples whole groups)")

    def evaluate_at(step, fn=evaluate):
        res, samples = fn(policy)
        logger.log(step=step, **{f"eval_{s}_{k}": v for s, m in res.items() for k, v in m.items() if k != "n"})
        if dist.is_main:
            with open(os.path.join(out_dir, "samples.jsonl"), "a") as f:
                for smp in samples:
                    f.write(json.dumps({"step": step, **smp}, ensure_ascii=False) + "\n")
        print0(f"[{name} step {step}] " + "  ".join(f"{s}: pass@1 {m['pass@1']:.3f} format {m['format']:.2f} "
                                                     f"len {m['length']:.0f}" for s, m in res.items()))
        return res

    bar = tqdm(range(start, steps), desc=name, disable=not dist.is_main, initial=start, total=steps)
    for step in bar:
        if step % eval_every == 0:
            evaluate_at(step)
        rng = random.Random(cfg.seed * 1_000_003 + step)         # the step's questions depend on the step only
        pool = tasks(step) if callable(tasks) else tasks
        batch = rng.sample(pool, n_rollout) if len(pool) >= n_rollout else rng.choices(pool, k=n_rollout)
        m = grpo_step(policy, ref_model, optimizer, batch[dist.rank::dist.world_size], reward_fn, tokenizer, cfg,
                      step, dist, prompt_fn=prompt_fn, count_words=count_words, text_flags=text_flags)
        logger.log(step=step, **m)
        trim_heap()                                              # the step's freed tensors back to the system
        bar.set_postfix(reward=f"{m['reward']:.2f}", acc=f"{m.get('accuracy', 0):.2f}",
                        len=f"{m['response_length']:.0f}", tok_s=f"{m['tokens_per_s']:.0f}")
        if (step + 1) % ckpt_every == 0 or step == steps - 1:
            save_model(ckpt_path, policy, dist, step=step + 1, optimizer=optimizer,
                       ref=ref_model.state_dict() if ref_model is not None else None, **(extra_ckpt or {}))
    return evaluate_at(steps, final_evaluate or evaluate)
