"""Tests that pin the GRPO objective down (R1 eq. 1-3, Math eq. 3) and run its loop.

    python -m pytest -q tests/test_grpo.py
"""
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

import grpo
from grpo import GRPOConfig, group_advantages, grpo_loss, kl_penalty

HERE = os.path.dirname(os.path.abspath(__file__))
LN = math.log


def cfg_(**kw):
    return GRPOConfig(**kw)


@pytest.fixture
def one_thread():
    """Tiny models step ~10x faster on one thread than on two when the 2-core machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------- the loss
def hand_batch():
    """Two sequences, eps 0.2, beta 0.1, k3. Sequence 1 (A = +1): token 1 has rho = 0.3/0.2 = 1.5 (clipped to
    1.2: min(1.5, 1.2) = 1.2) and r = pi_ref/pi = 0.6/0.3 = 2 (k3 = 2 - 1 - ln 2 = 1 - ln 2); token 2 has
    rho = 1, D = 0. Sequence 2 (A = -1): one token, rho = 0.1/0.2 = 0.5, min(-0.5, -0.8) = -0.8, D = 0.
    The third column of row 1 and columns 2-3 of row 2 are padding, filled with inf / nan to prove they are
    ignored."""
    inf, nan = float("inf"), float("nan")
    logp = torch.tensor([[LN(0.3), LN(0.5), inf], [LN(0.1), nan, -inf]], dtype=torch.float64)
    old = torch.tensor([[LN(0.2), LN(0.5), -inf], [LN(0.2), inf, nan]], dtype=torch.float64)
    ref = torch.tensor([[LN(0.6), LN(0.5), nan], [LN(0.1), -inf, inf]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    return logp.requires_grad_(), old, ref, adv, mask


# per-sequence terms: seq 1 = (1.2 - 0.1 (1 - ln 2)) + 1.0 = 2.169314718056, over 2 tokens; seq 2 = -0.8
@pytest.mark.parametrize("agg,expected", [
    ("grpo", -0.142328679514),     # -(2.169314718056 / 2 - 0.8) / 2
    ("dapo", -0.456438239352),     # -(2.169314718056 - 0.8) / 3 tokens
    ("dr_grpo", -0.171164339757),  # -(2.169314718056 - 0.8) / (2 sequences * C = 4)
])
def test_loss_hand_computed(agg, expected):
    """The batch of hand_batch, by hand, in the three aggregations.

    Paper leaves this open: R1 eq. 1 is the grpo row (per-token mean 1/|o_i|, as in DeepSeekMath eq. 3); dapo
    and dr_grpo are later papers' options, and the stats (clip_low / clip_high: the fraction of loss tokens where
    the clip is active, ratio_*, n_tokens, n_seqs) are this repository's logging conventions."""
    logp, old, ref, adv, mask = hand_batch()
    cfg = cfg_(eps_low=0.2, eps_high=0.2, beta=0.1, kl_estimator="k3", loss_agg=agg, dr_grpo_constant=4)
    loss, st = grpo_loss(logp, old, ref, adv, mask, cfg)
    assert loss.item() == pytest.approx(expected, abs=1e-10), \
        f"loss ({agg}) = -J with J = 1/G sum_i 1/|o_i| sum_t (min(rho A, clip(rho) A) - beta D) for grpo " \
        f"(R1 eq. 1), the token mean for dapo, sum / (G C) for dr_grpo: expected {expected}"
    assert st["kl"] == pytest.approx((1 - LN(2)) / 3, abs=1e-10), \
        "stats['kl']: the mean k3 (R1 eq. 2) over the 3 loss tokens, expected (1 - ln 2) / 3"   # 0.102284273147
    assert st["clip_high"] == pytest.approx(1 / 3) and st["clip_low"] == pytest.approx(1 / 3), \
        "clip stats: 1 of 3 tokens has rho > 1 + eps with A > 0, 1 of 3 has rho < 1 - eps with A < 0 (R1 eq. 1)"
    assert st["ratio_mean"] == pytest.approx(1.0) and st["ratio_min"] == pytest.approx(0.5), \
        "ratio stats over the loss tokens only: rho = 1.5, 1, 0.5 (padding ignored)"
    assert st["ratio_max"] == pytest.approx(1.5), "ratio_max: rho = 0.3 / 0.2 on the first token"
    assert st["n_tokens"] == 3 and st["n_seqs"] == 2, "3 loss tokens (mask) in 2 sequences"
    loss.backward()
    assert torch.isfinite(logp.grad).all(), "padding holds inf/nan: mask it before exp, or its gradient is NaN"
    assert (logp.grad[~mask] == 0).all(), "padding (mask False) must get exactly zero gradient"


def test_gradient_is_the_policy_gradient():
    """mu = 1, beta = 0 (rho = 1): d loss / d logits == -1/G sum_i A_i/|o_i| sum_t grad log pi(o_it) exactly,
    on a tiny categorical policy (one logit vector per position), with the grad of log-softmax written out."""
    torch.manual_seed(0)
    G, T, V = 4, 5, 3
    logits = torch.randn(G, T, V, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, V, (G, T))
    lengths = torch.tensor([5, 2, 4, 1])
    mask = torch.arange(T)[None] < lengths[:, None]
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))[0].double()
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    loss, _ = grpo_loss(logp, logp.detach(), None, adv, mask, cfg_(beta=0.0, loss_agg="grpo"))
    loss.backward()
    # grad_z log softmax(z)[a] = onehot(a) - softmax(z)
    score = torch.nn.functional.one_hot(tokens, V).double() - torch.softmax(logits.detach(), -1)   # (G, T, V)
    expected = -(adv / lengths)[:, None, None] * score * mask[..., None] / G
    assert torch.allclose(logits.grad, expected, atol=1e-12), \
        "at rho = 1, beta = 0 the gradient of R1 eq. 1 is -1/G sum_i A_i/|o_i| sum_t grad log pi(o_it)"


def test_clipped_tokens_get_no_gradient_in_the_forbidden_direction():
    """Five one-token sequences, eps 0.2: where the clip is active (rho > 1.2 with A > 0, rho < 0.8 with A < 0)
    the gradient is 0; on the other side of each bound the unclipped term keeps its full gradient -A rho / N."""
    rho = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    old = torch.full((5, 1), LN(0.3), dtype=torch.float64)
    logp = (old + torch.log(rho)[:, None]).requires_grad_()
    mask = torch.ones(5, 1, dtype=torch.bool)
    loss, st = grpo_loss(logp, old, None, adv, mask, cfg_(beta=0.0, eps_low=0.2, eps_high=0.2))
    loss.backward()
    g = logp.grad[:, 0]
    assert g[0] == 0 and g[1] == 0, \
        "R1 eq. 1: min(rho A, clip(rho) A) is the constant clipped term when rho > 1+eps, A > 0 or rho < 1-eps, " \
        "A < 0, so those tokens get zero gradient"
    expected = -adv * rho / 5                                   # d(-A rho / N) / d logp
    assert torch.allclose(g[2:], expected[2:], atol=1e-12), \
        "R1 eq. 1: where the unclipped term rho A is the min, d loss / d logp = -A rho / N"   # 0.3, -0.1, -0.22
    assert (g[2:] != 0).all(), "the unclipped side of each bound must still learn"
    assert st["clip_high"] == pytest.approx(0.2) and st["clip_low"] == pytest.approx(0.2), \
        "clip stats: 1 of 5 tokens clipped at each bound"


def test_eps_high_differs_from_eps_low():
    """DAPO clip-higher: the upper bound is 1 + eps_high (0.28), the lower 1 - eps_low (0.1). rho = 1.25 with
    A > 0 is inside [0.9, 1.28] (symmetric eps 0.2 would clip it); rho = 0.85 with A < 0 is below 0.9: clipped.

    Paper leaves this open: R1 eq. 1 has one eps; two bounds (eps_low, eps_high) are DAPO's option, kept here."""
    old = torch.zeros(2, 1, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.25], [0.85]], dtype=torch.float64)).requires_grad_()
    loss, st = grpo_loss(logp, old, None, torch.tensor([1.0, -1.0], dtype=torch.float64),
                         torch.ones(2, 1, dtype=torch.bool), cfg_(beta=0.0, eps_low=0.1, eps_high=0.28))
    loss.backward()
    assert logp.grad[0, 0].item() == pytest.approx(-1.25 / 2) and logp.grad[1, 0] == 0, \
        "clip(rho, 1 - eps_low, 1 + eps_high) (R1 eq. 1 with DAPO's two eps): rho = 1.25 < 1.28 is unclipped " \
        "(gradient -A rho / N), rho = 0.85 < 0.9 with A < 0 is clipped (gradient 0)"
    assert st["clip_high"] == 0 and st["clip_low"] == 0.5, "only the second token is clipped, at the low bound"
    assert loss.item() == pytest.approx(-(1.25 - 0.9) / 2), \
        "loss = -(1.25 * 1 + clip(0.85) * -1) / 2 with clip(0.85) = 0.9"   # min(-0.85, -0.9) = -0.9


def test_aggregation_formulas_on_a_ragged_mask():
    """Each aggregation, written out token by token on a ragged mask, with clipping and k3 active.

    Paper leaves this open: a fully masked row (e.g. a truncated output under mask_truncated) counts in no
    denominator, and Dr. GRPO's constant defaults to max_new_tokens; both are this repository's choices."""
    torch.manual_seed(1)
    B, T = 5, 7
    logp = -torch.rand(B, T, dtype=torch.float64) * 2
    old = logp + 0.3 * torch.randn(B, T, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(B, T, dtype=torch.float64)
    adv = torch.randn(B, dtype=torch.float64)
    lengths = [7, 3, 1, 0, 5]                       # a fully masked row counts nowhere
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    for agg in ("grpo", "dr_grpo", "dapo"):
        cfg = cfg_(beta=0.04, eps_low=0.2, eps_high=0.25, loss_agg=agg, kl_estimator="k3", max_new_tokens=9)
        loss, _ = grpo_loss(logp, old, ref, adv, mask, cfg)

        def term(i, t):
            rho = math.exp(logp[i, t] - old[i, t])
            lr = (ref[i, t] - logp[i, t]).item()
            clipped = min(max(rho, 0.8), 1.25)
            return min(rho * adv[i].item(), clipped * adv[i].item()) - 0.04 * (math.exp(lr) - 1 - lr)

        seqs = [[term(i, t) for t in range(lengths[i])] for i in range(B) if lengths[i]]
        if agg == "grpo":
            J = sum(sum(s) / len(s) for s in seqs) / len(seqs)
        elif agg == "dr_grpo":
            J = sum(sum(s) for s in seqs) / 9 / len(seqs)       # the constant defaults to max_new_tokens
        else:
            J = sum(sum(s) for s in seqs) / sum(len(s) for s in seqs)
        assert loss.item() == pytest.approx(-J, abs=1e-12), \
            f"{agg}: loss = -J over the per-token terms min(rho A, clip(rho) A) - beta k3 (R1 eq. 1-2), " \
            f"aggregated as its docstring says; a fully masked row counts nowhere"


def test_denom_makes_split_batches_sum_to_the_whole():
    """Two halves, each divided by the WHOLE batch's count, sum to the whole batch's loss (what ranks do).

    Paper leaves this open: the `denom` argument is this repository's interface for data-parallel ranks."""
    torch.manual_seed(2)
    logp, old = -torch.rand(6, 4, dtype=torch.float64), -torch.rand(6, 4, dtype=torch.float64)
    adv = torch.randn(6, dtype=torch.float64)
    mask = torch.rand(6, 4) > 0.3
    mask[:, 0] = True
    for agg, count in (("grpo", 6), ("dr_grpo", 6), ("dapo", int(mask.sum()))):
        cfg = cfg_(beta=0.0, loss_agg=agg)
        whole, _ = grpo_loss(logp, old, None, adv, mask, cfg)
        halves = sum(grpo_loss(logp[s], old[s], None, adv[s], mask[s], cfg, denom=count)[0]
                     for s in (slice(0, 3), slice(3, 6)))
        assert halves.item() == pytest.approx(whole.item(), abs=1e-12), \
            f"{agg}: with denom = the whole batch's count ({count}), the halves' losses must sum to the whole's"


# ------------------------------------------------------------------------------------------------ the KL
P = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)     # pi_theta
Q = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)     # pi_ref
KL_PQ = (P * (P / Q).log()).sum().item()                    # exact KL(pi_theta || pi_ref) = 1.10187


def test_k3_is_non_negative_everywhere():
    """k3 = (r - 1) - log r >= 0 (R1 eq. 2) must hold after rounding too, in fp32 and fp64, down to |log r| ~ 1e-30.

    Paper leaves this open: how to compute it in floating point. Written as exp(x) - 1 - x (x = log r) it
    rounds below 0 in fp32 for tiny x; this test demands a form that cannot (e.g. expm1(x) - x)."""
    x = torch.cat([torch.linspace(-30, 30, 20001), torch.tensor([0.0, 1e-8, -1e-8, 1e-30, -1e-30, 3e-4])])
    for dtype in (torch.float32, torch.float64):
        lr = x.to(dtype)
        for est in ("k3", "k3+", "k2"):
            assert (kl_penalty(torch.zeros_like(lr), lr, est) >= 0).all(), \
                f"{est} in {dtype}: expected >= 0 everywhere (k3 = r - 1 - log r >= 0 since log x <= x - 1, " \
                f"R1 eq. 2; k2 = (log r)^2 / 2)"
    assert (kl_penalty(torch.zeros(1), torch.tensor([-LN(7.0)]), "k1") > 0).all(), \
        "k1 = -log r: positive where pi_ref < pi_theta"                                    # k1 can be either sign
    assert (kl_penalty(torch.zeros(1), torch.tensor([LN(1.5)]), "k1") < 0).all(), \
        "k1 = -log r: negative where pi_ref > pi_theta"


def test_monte_carlo_means_k1_k3_unbiased_k2_biased():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x = torch.multinomial(P, n, replacement=True, generator=g)             # tokens sampled from pi_theta
    logp, ref = P.log()[x], Q.log()[x]
    for est in ("k1", "k3", "k3+"):
        d = kl_penalty(logp, ref, est)
        se = d.std().item() / math.sqrt(n)
        assert abs(d.mean().item() - KL_PQ) < 4 * se and abs(d.mean().item() - KL_PQ) < 0.02, \
            f"{est}: unbiased (R1 eq. 2 for k3), its mean over tokens from pi_theta must be KL(pi_theta || pi_ref) " \
            f"= {KL_PQ:.5f}, got {d.mean().item():.5f}"
    d2 = kl_penalty(logp, ref, "k2")
    exact_k2 = (P * 0.5 * (Q / P).log() ** 2).sum().item()                 # 1.50225: k2's true mean
    assert d2.mean().item() == pytest.approx(exact_k2, abs=0.02), "k2 = (log r)^2 / 2: its mean is E[(log r)^2] / 2"
    assert abs(d2.mean().item() - KL_PQ) > 0.3, "k2 is biased: its mean (1.50) is not the KL (1.10)"


def test_k3plus_has_k3_value_and_k2_gradient():
    """Paper leaves this open: R1 eq. 2 is k3; k3+ (verl's: k3's value, k2's gradient) is an option here."""
    logp = torch.tensor([-0.2, -1.5, -3.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.0, -0.5, -3.2], dtype=torch.float64)
    v = {}
    grads = {}
    for est in ("k2", "k3", "k3+"):
        d = kl_penalty(logp, ref, est)
        v[est] = d.detach()
        grads[est], = torch.autograd.grad(d.sum(), logp)
    assert torch.allclose(v["k3+"], v["k3"], atol=1e-15), "k3+ must have k3's value r - 1 - log r (R1 eq. 2)"
    assert torch.allclose(grads["k3+"], grads["k2"], atol=1e-15), "k3+ must have k2's gradient (straight-through)"
    assert torch.allclose(grads["k2"], (logp - ref).detach(), atol=1e-15), "d k2 / d logp = -log r"
    assert torch.allclose(grads["k3"], 1 - (ref - logp).detach().exp(), atol=1e-15), \
        "d k3 / d logp = 1 - r, r = pi_ref / pi_theta (R1 eq. 2 differentiated)"
    assert not torch.allclose(grads["k3"], grads["k2"]), "k3 and k2 must have different gradients here"


def test_expected_gradients_reverse_vs_forward_kl():
    """What the loss follows: E_{x~pi}[grad D(x)] with x held fixed. k2 and k3+ give grad KL(pi || ref) (the
    reverse KL, the one the value estimates); k3 gives grad KL(ref || pi); k1 gives 0. Exact sums, no sampling."""
    z = torch.tensor([0.3, -0.2, 0.8], dtype=torch.float64, requires_grad=True)   # the policy's logits
    logq = Q.log()

    def expected_grad(est):
        logp = torch.log_softmax(z, -1)
        return torch.autograd.grad((logp.exp().detach() * kl_penalty(logp, logq, est)).sum(), z)[0]

    def grad_of(f):
        return torch.autograd.grad(f(torch.log_softmax(z, -1)), z)[0]

    reverse = grad_of(lambda lp: (lp.exp() * (lp - logq)).sum())
    forward = grad_of(lambda lp: (Q * (logq - lp)).sum())
    assert torch.allclose(expected_grad("k2"), reverse, atol=1e-12), "E_pi[grad k2] = grad KL(pi || ref)"
    assert torch.allclose(expected_grad("k3+"), reverse, atol=1e-12), "E_pi[grad k3+] = grad KL(pi || ref)"
    assert torch.allclose(expected_grad("k3"), forward, atol=1e-12), \
        "E_pi[grad k3] = grad KL(ref || pi): k3 (R1 eq. 2) differentiated as a loss gives the FORWARD KL's gradient"
    assert torch.allclose(expected_grad("k1"), torch.zeros(3, dtype=torch.float64), atol=1e-12), \
        "E_pi[grad k1] = E_pi[grad log pi] = 0"
    assert not torch.allclose(reverse, forward, atol=1e-3), "the example must separate the two KLs"


def test_kl_penalty_rejects_unknown_estimator():
    """Paper leaves this open: the estimator names and the ValueError are this repository's interface."""
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


# ------------------------------------------------------------------------------------------ advantages
def test_group_advantages():
    """A_i = (r_i - mean) / std within each group (R1 eq. 3); all-equal groups give exactly 0.

    Paper leaves this open: which std (this test wants the UNBIASED one, torch.std, as TRL) and how to avoid
    dividing by 0 (this test wants std + 1e-4, and exactly 0 for a group whose rewards are all equal)."""
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 3.0]])
    A = group_advantages(r)
    assert torch.isfinite(A).all(), "R1 eq. 3 with std = 0 (all rewards equal) must not give inf or NaN"
    assert (A[1] == 0).all() and (A[2] == 0).all(), \
        "a group with all-equal rewards must get advantages exactly 0 (not a rounding residue of r - mean)"
    std = math.sqrt(4 * 0.25 / 3)                              # unbiased std of (1, 0, 0, 1) = 0.57735
    assert torch.allclose(A[0], torch.tensor([1.0, -1.0, -1.0, 1.0]) * 0.5 / (std + 1e-4), atol=1e-6), \
        "R1 eq. 3: A = (r - mean) / (std + 1e-4) with the UNBIASED std (correction 1): expected +-0.5 / 0.57745"
    assert torch.allclose(A[3], (r[3] - 0.75) / (r[3].std() + 1e-4), atol=1e-6), \
        "R1 eq. 3 on (0, 0, 0, 3): (r - 0.75) / (unbiased std + 1e-4)"
    assert torch.allclose(A.sum(1), torch.zeros(4), atol=1e-5), "advantages are centred: each group sums to 0"
    B = group_advantages(r, scale="none")                      # Dr. GRPO: no std division
    assert torch.allclose(B, r - r.mean(1, keepdim=True)) and (B[2] == 0).all(), \
        "scale='none' (Dr. GRPO): A = r - mean, no std division"
    with pytest.raises(ValueError, match="n_groups, G"):
        group_advantages(r.reshape(-1))


# ----------------------------------------------------------------------------------- config + reference
def test_config_validation_and_paper_preset():
    with pytest.raises(ValueError, match="kl_estimator"):
        GRPOConfig(kl_estimator="k5")
    with pytest.raises(ValueError, match="loss_agg"):
        GRPOConfig(loss_agg="ppo")
    with pytest.raises(ValueError, match="temperature"):
        GRPOConfig(temperature=0.0)
    p = grpo.PAPER
    assert (p.lr, p.beta, p.eps_low, p.eps_high, p.group_size, p.prompts_per_step) == (3e-6, 0.001, 10, 10, 16, 32)
    assert (p.temperature, p.max_new_tokens, p.ref_update_every, p.n_minibatches, p.mu) == (1.0, 32768, 400, 16, 1)
    assert p.kl_estimator == "k3" and p.loss_agg == "grpo" and p.prompts_per_rollout == 512


def test_maybe_update_reference_counts_optimizer_steps():
    policy, ref = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    cfg = cfg_(ref_update_every=3)                              # 1 optimizer step per rollout
    done = [s for s in range(10) if grpo.maybe_update_reference(ref, policy, s, cfg)]
    assert done == [3, 6, 9]
    assert torch.equal(ref.weight, policy.weight)
    paper = [s for s in range(60) if grpo.maybe_update_reference(ref, policy, s, grpo.PAPER)]
    assert paper == [25, 50]                                    # 400 steps of 16 minibatches = 25 rollouts
    assert not grpo.maybe_update_reference(ref, policy, 5, cfg_(ref_update_every=0))


# ------------------------------------------------------------------------------------------ the model side
class TableLM(torch.nn.Module):
    """logits = a learnable table indexed by the current token: enough to check sequence_logprobs."""
    def __init__(self, V):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(V, V))

    def forward(self, tokens):
        return self.table[tokens]


def test_sequence_logprobs_align_with_the_next_token():
    torch.manual_seed(3)
    V = 6
    lm = TableLM(V)
    tokens = torch.tensor([[1, 2, 3, 4, 0], [5, 1, 2, 0, 0]])
    cmask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    logp, ent = grpo.sequence_logprobs(lm, tokens, cmask, temperature=0.7, with_entropy=True)
    assert logp.shape == (2, 4)
    lsm = torch.log_softmax(lm.table.detach() / 0.7, -1)
    expected = torch.zeros(2, 4)
    for b in range(2):
        for t in range(4):
            if cmask[b, t + 1]:
                expected[b, t] = lsm[tokens[b, t], tokens[b, t + 1]]
    assert torch.allclose(logp.detach(), expected, atol=1e-6)
    assert torch.allclose(ent[0, 1], -(lsm[2].exp() * lsm[2]).sum(), atol=1e-6)
    assert (ent[~cmask[:, 1:]] == 0).all()
    logp.sum().backward()
    assert lm.table.grad is not None


def load_worker():
    spec = importlib.util.spec_from_file_location("grpo_dist_worker", os.path.join(HERE, "grpo_dist_worker.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_two_ranks_match_one_process(tmp_path, one_thread):
    """torchrun with 2 gloo ranks, each holding half of the groups (interleaved), gives the same parameters
    after grpo_update as one process holding all of them: DDP, FSDP2 and an explicit all-reduce, grpo / dapo /
    dr_grpo, 2 minibatches x 2 epochs, an empty minibatch on one rank (dynamic sampling)."""
    worker = load_worker()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(HERE, "grpo_dist_worker.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from common import Dist
    torch.manual_seed(0)
    start = worker.Transformer(worker.tiny_args()).state_dict()
    for name in worker.SCENARIOS:
        two = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        one_state, one_metrics = worker.run(name, Dist())
        moved = max((one_state[k] - start[k]).abs().max().item() for k in start)
        assert moved > 1e-3, (name, moved)                 # far above the tolerance below: a real update
        for k, v in one_state.items():
            assert torch.allclose(two["state"][k], v, atol=1e-6, rtol=1e-5), (name, k)
        for key in ("loss", "kl", "clip_low", "clip_high", "ratio_mean", "entropy", "opt_steps"):
            assert two["metrics"][key] == pytest.approx(one_metrics[key], abs=1e-5), (name, key)
        if name == "ddp_grpo":                             # 2 minibatches x 2 epochs, KL and clipping active
            assert one_metrics["opt_steps"] == 4 and one_metrics["kl"] > 0
            assert one_metrics["clip_low"] + one_metrics["clip_high"] > 0
    assert torch.load(tmp_path / "fsdp_rollout.pt")["fsdp_rollout_equal"]      # sampling from FSDP2 shards


# ------------------------------------------------------------------------------------ end to end: grpo_step
class CharTokenizer:
    """A character tokenizer over a tiny alphabet, with the interface of tokenizer.get_tokenizer's."""
    def __init__(self):
        self.chars = list("0123456789+=? abcdefghijklmnopqrstuvwxyz<>/")
        self.pad_id, self.eos_id = len(self.chars), len(self.chars) + 1
        self.vocab_size = len(self.chars) + 2
        self.name = "chars"

    def encode(self, text):
        return [self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] if i < len(self.chars) else "" for i in ids)


def test_grpo_step_end_to_end(one_thread):
    """One grpo_step on a tiny random MoE Transformer with a toy reward: sampling, scoring, advantages,
    reference logprobs, 2 minibatches x 2 epochs of updates, bias update, metrics."""
    from model import ModelArgs, Transformer
    tok = CharTokenizer()
    args = ModelArgs(vocab_size=tok.vocab_size, dim=32, inter_dim=64, moe_inter_dim=16, n_layers=2,
                     n_dense_layers=1, n_heads=2, n_routed_experts=4, n_shared_experts=1, n_activated_experts=2,
                     n_expert_groups=1, n_limited_groups=1, kv_lora_rank=16, qk_nope_head_dim=8,
                     qk_rope_head_dim=8, v_head_dim=8, max_seq_len=64)
    torch.manual_seed(0)
    policy = Transformer(args)
    ref = Transformer(args).eval()
    ref.load_state_dict(policy.state_dict())
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, max_new_tokens=8, n_minibatches=2, mu=2, beta=0.01,
                     lr=1e-2, seed=1)
    opt = grpo.make_optimizer(policy, cfg)
    tasks = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "4+4=", "answer": "8"},
             {"prompt": "2+5=", "answer": "7"}, {"prompt": "9+0=", "answer": "9"}]
    seen = {}

    def digits(prompts, completions, answer, **cols):
        seen.update(prompts=prompts, answer=answer, cols=cols)
        return [float(sum(ch.isdigit() for ch in c)) / 8 for c in completions]

    def has_answer(prompts, completions, answer, **cols):
        return [float(a in c) for c, a in zip(completions, answer)]

    reward_fn = {"accuracy": (has_answer, 1.0), "digits": (digits, 0.5)}
    m, batch = grpo.grpo_step(policy, ref, opt, tasks, reward_fn, tok, cfg, step=0,
                              prompt_fn=lambda t: "q " + t["prompt"], count_words=("a",), return_rollout=True)
    assert seen["prompts"][:4] == ["q 1+2="] * 4 and seen["answer"][4] == "8"        # G rows per task, in order
    assert batch.tokens.shape[0] == 16 and len(batch.completions) == 16
    assert torch.allclose(batch.rewards, batch.parts["accuracy"] + 0.5 * batch.parts["digits"])
    assert m["groups"] == 4 and m["opt_steps"] == 4
    for key in ("reward", "accuracy", "digits", "reward_std", "response_length", "truncated", "kl", "clip_low",
                "clip_high", "entropy", "ratio_mean", "ratio_min", "ratio_max", "loss", "grad_norm", "words",
                "time_rollout", "time_generate", "time_reward", "time_logprobs", "time_update", "step_time",
                "tokens_per_s", "gen_tokens_per_s"):
        assert key in m and math.isfinite(m[key]), key
    assert 1 <= m["response_length"] <= 8 and m["entropy"] > 0
    assert m["ratio_max"] > 1 or m["ratio_min"] < 1          # epoch 2 sees the updated policy: rho != 1
    after = policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    gate_bias = [k for k in after if k.endswith("gate.bias")]
    assert gate_bias and any(not torch.equal(before[k], after[k]) for k in gate_bias)   # update_bias ran


def test_rollout_sampler_logprobs_match_the_training_forward(one_thread):
    """rollout() puts the sampler's logprob of each completion token where sequence_logprobs puts the policy's,
    and both use the same temperature: pi_old from the KV-cache sampler == pi_theta from the full forward."""
    from model import ModelArgs, Transformer
    tok = CharTokenizer()
    args = ModelArgs(vocab_size=tok.vocab_size, dim=32, inter_dim=64, moe_inter_dim=16, n_layers=2,
                     n_dense_layers=1, n_heads=2, n_routed_experts=4, n_shared_experts=1, n_activated_experts=2,
                     n_expert_groups=1, n_limited_groups=1, kv_lora_rank=16, qk_nope_head_dim=8,
                     qk_rope_head_dim=8, v_head_dim=8, max_seq_len=64)
    torch.manual_seed(0)
    policy = Transformer(args)
    cfg = GRPOConfig(group_size=3, max_new_tokens=6, temperature=0.7, dynamic_sampling=True)
    tasks = [{"prompt": "12+3=", "answer": "15"}, {"prompt": "7=", "answer": "7"}]
    reward = lambda prompts, completions, **c: [float(len(x) % 2) for x in completions]   # noqa: E731
    b = grpo.rollout(policy, tasks, reward, tok, cfg, 0, grpo.Dist(), lambda t: t["prompt"])
    with torch.no_grad():
        lp = grpo.sequence_logprobs(policy, b.tokens, b.completion_mask, temperature=0.7)
    assert torch.allclose(lp, b.sampler_logp, atol=1e-4)
    assert (lp[~b.completion_mask[:, 1:]] == 0).all()
    assert (b.completion_mask.sum(1) == b.lengths).all()
    for j, c in enumerate(b.completions):               # decoded text = the completion tokens minus the EOS
        start = int(b.completion_mask[j].int().argmax())
        ids = b.tokens[j, start:start + int(b.lengths[j]) - int(b.finished[j])].tolist()
        assert c == tok.decode(ids) and tok.eos_id not in ids
    groups = b.rewards.view(-1, 3)
    assert torch.equal(b.keep.view(-1, 3)[:, 0], (groups != groups[:, :1]).any(1))   # dynamic sampling


def test_grpo_learns_a_toy_reward(one_thread):
    """The whole loop climbs a reward: 40 GRPO steps on a tiny random Transformer rewarded for the digit 7
    take the mean reward from ~0.02 (chance: 1 character in 47) to above 0.4 (0.64 on this machine)."""
    from model import ModelArgs, Transformer
    tok = CharTokenizer()
    args = ModelArgs(vocab_size=tok.vocab_size, dim=32, inter_dim=64, moe_inter_dim=16, n_layers=2,
                     n_dense_layers=1, n_heads=2, n_routed_experts=4, n_shared_experts=1, n_activated_experts=2,
                     n_expert_groups=1, n_limited_groups=1, kv_lora_rank=16, qk_nope_head_dim=8,
                     qk_rope_head_dim=8, v_head_dim=8, max_seq_len=64)
    torch.manual_seed(0)
    policy = Transformer(args)
    cfg = GRPOConfig(group_size=8, prompts_per_step=4, max_new_tokens=6, lr=3e-3, beta=0.0, seed=3)
    opt = grpo.make_optimizer(policy, cfg)
    tasks = [{"prompt": p} for p in ("1+2=", "3+4=", "5+5=", "9+1=")]
    sevens = lambda prompts, completions, **c: [s.count("7") / 6 for s in completions]   # noqa: E731
    rewards = [grpo.grpo_step(policy, None, opt, tasks, sevens, tok, cfg, step, prompt_fn=lambda t: t["prompt"])
               ["reward"] for step in range(40)]
    assert sum(rewards[:5]) / 5 < 0.1
    assert sum(rewards[-5:]) / 5 > 0.4
