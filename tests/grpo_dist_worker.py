"""The 2-process half of tests/test_grpo.py::test_two_ranks_match_one_process.

    torchrun --standalone --nproc_per_node=2 tests/grpo_dist_worker.py OUT_DIR

Every rank builds the same tiny MoE Transformer and the same fixed rollout (8 groups of 3), keeps the groups
rank, rank + 2, ... (the interleaved split grpo.py asks for) and runs grpo.grpo_update once per scenario; rank 0
saves the updated state dict and the metrics to OUT_DIR/<scenario>.pt (and OUT_DIR/fsdp_rollout.pt: whether
sampling from an FSDP2-sharded policy gives the tokens of the unsharded one). The test runs `run(name, Dist())` on all
8 groups in one process and compares. Groups 0 and 2 have all-equal rewards, so under dynamic sampling rank 0's
first minibatch is empty: it must still join the gradient all-reduce (the zero-weight row of grpo_update).
"""
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import grpo  # noqa: E402
from common import Dist, barrier, cleanup_distributed, model_state_dict, setup_distributed, wrap_model  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402

N_GROUPS, G, VOCAB = 8, 3, 32

SCENARIOS = {
    # DDP; 2 minibatches x 2 epochs (pi_old recomputed, rho != 1 in epoch 2); k3 KL; dynamic sampling drops
    # groups 0 and 2 (rank 0's whole first minibatch); truncated rows masked; micro-batches of 2 (no_sync)
    "ddp_grpo": (True, dict(loss_agg="grpo", n_minibatches=2, mu=2, beta=0.05, kl_estimator="k3",
                            dynamic_sampling=True, mask_truncated=True, micro_batch_size=2, eps_low=0.05,
                            eps_high=0.1)),
    # no wrapper: grpo_update all-reduces the gradients itself; token-level (dapo) mean
    "allreduce_dapo": (False, dict(loss_agg="dapo", n_minibatches=2, mu=1, beta=0.0, grad_clip=0.0)),
    # DDP; Dr. GRPO: no std, sum over tokens / constant; k3+ KL
    # FSDP2 (fully_shard per block): sharded parameters, gradients reduce-scattered (averaged) by FSDP
    "fsdp_grpo": ("fsdp", dict(loss_agg="grpo", n_minibatches=2, mu=1, beta=0.05, dynamic_sampling=True)),
    "ddp_dr_grpo": (True, dict(loss_agg="dr_grpo", scale_rewards="none", beta=0.02, kl_estimator="k3+",
                               dr_grpo_constant=6)),
}


def tiny_args() -> ModelArgs:
    return ModelArgs(vocab_size=VOCAB, dim=32, inter_dim=64, moe_inter_dim=16, n_layers=2, n_dense_layers=1,
                     n_heads=2, n_routed_experts=4, n_shared_experts=1, n_activated_experts=2, n_expert_groups=1,
                     n_limited_groups=1, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                     max_seq_len=32)


def make_rollout(cfg: grpo.GRPOConfig) -> grpo.Rollout:
    """A fixed, ragged rollout of N_GROUPS x G rows (the same on every rank)."""
    g = torch.Generator().manual_seed(123)
    N = N_GROUPS * G
    P = torch.randint(2, 6, (N,), generator=g)                          # prompt lengths
    C = torch.randint(1, 7, (N,), generator=g)                          # completion lengths
    L = int((P + C).max())
    tokens = torch.randint(1, VOCAB, (N, L), generator=g)
    cmask = torch.zeros(N, L, dtype=torch.bool)
    for j in range(N):
        tokens[j, P[j] + C[j]:] = 0
        cmask[j, P[j]:P[j] + C[j]] = True
    rewards = torch.randint(0, 3, (N,), generator=g).float()
    rewards[0 * G:1 * G] = 1.0                                          # groups 0 and 2: all equal
    rewards[2 * G:3 * G] = 0.0
    rewards[1 * G:2 * G] = torch.tensor([0.0, 1.0, 2.0])               # the others surely vary
    for k in range(3, N_GROUPS):
        rewards[k * G] = 5.0
    finished = torch.rand(N, generator=g) > 0.25
    adv = grpo.group_advantages(rewards.view(-1, G), cfg.scale_rewards, cfg.adv_eps).reshape(-1)
    varied = (rewards.view(-1, G) != rewards.view(-1, G)[:, :1]).any(1)
    keep = (varied if cfg.dynamic_sampling else torch.ones_like(varied)).repeat_interleave(G)
    sampler_logp = torch.where(cmask[:, 1:], -torch.rand(N, L - 1, generator=g), 0.0)
    return grpo.Rollout(tokens=tokens, completion_mask=cmask, advantages=adv, rewards=rewards, keep=keep,
                        finished=finished, lengths=C, sampler_logp=sampler_logp, group_size=G)


def subset(batch: grpo.Rollout, groups) -> grpo.Rollout:
    rows = torch.cat([torch.arange(k * G, k * G + G) for k in groups])
    return grpo.Rollout(tokens=batch.tokens[rows], completion_mask=batch.completion_mask[rows],
                        advantages=batch.advantages[rows], rewards=batch.rewards[rows], keep=batch.keep[rows],
                        finished=batch.finished[rows], lengths=batch.lengths[rows],
                        sampler_logp=batch.sampler_logp[rows], group_size=G)


def run(name: str, dist: Dist):
    """One grpo_update of scenario `name` on this rank's groups -> (state dict after the update, metrics)."""
    wrap, overrides = SCENARIOS[name]
    # fp32: the 1-vs-2-process equality is exact math; bf16 autocast rounds differently per batch split
    cfg = grpo.GRPOConfig(group_size=G, max_new_tokens=6, precision="fp32", **overrides)
    torch.manual_seed(0)
    model = Transformer(tiny_args())
    torch.manual_seed(1)
    ref = Transformer(tiny_args()).eval()
    batch = subset(make_rollout(cfg), range(dist.rank, N_GROUPS, dist.world_size))
    policy = wrap_model(model, dist, fsdp=wrap == "fsdp") if wrap else model
    # SGD, not Adam: Adam's g / sqrt(v) turns the last-bit differences of a summed gradient into visible
    # differences where a gradient is ~0; SGD keeps the comparison at fp32 rounding level
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    metrics = grpo.grpo_update(policy, ref, opt, batch, cfg, dist)
    return {k: v.detach().clone() for k, v in model_state_dict(policy).items()}, metrics


class IdTokenizer:
    """Text "3 1 4" <-> ids [3, 1, 4]."""
    pad_id, eos_id = 0, VOCAB - 1

    def encode(self, text):
        return [int(x) for x in text.split()]

    def decode(self, ids):
        return " ".join(map(str, ids))


def fsdp_rollout_matches_plain(dist: Dist) -> bool:
    """rollout() on an FSDP2-sharded policy (sampling through model.decode, outside FSDP's forward hooks)
    samples the same tokens as the same weights unsharded."""
    cfg = grpo.GRPOConfig(group_size=2, max_new_tokens=5, seed=7)
    tasks = [{"prompt": "1 2 3"}, {"prompt": "4 5"}]
    batches = []
    for fsdp in (False, True):
        torch.manual_seed(0)
        model = Transformer(tiny_args())
        policy = wrap_model(model, dist, fsdp=True) if fsdp else model
        batches.append(grpo.rollout(policy, tasks, lambda p, c, **k: [0.0] * len(c), IdTokenizer(), cfg, 0, dist,
                                    lambda t: t["prompt"]))
    return torch.equal(batches[0].tokens, batches[1].tokens)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir = sys.argv[1]
    dist = setup_distributed(device="cpu")
    try:
        for name in SCENARIOS:
            state, metrics = run(name, dist)
            if dist.is_main:
                torch.save({"state": state, "metrics": metrics}, os.path.join(out_dir, f"{name}.pt"))
            barrier(dist)   # nobody tears the group down while another rank is still using it
        same = torch.tensor([float(fsdp_rollout_matches_plain(dist))])
        torch.distributed.all_reduce(same)
        if dist.is_main:
            torch.save({"fsdp_rollout_equal": int(same.item()) == dist.world_size},
                       os.path.join(out_dir, "fsdp_rollout.pt"))
    finally:
        # Collect the dead DDP wrappers (reference cycles) while the process group still exists: left to
        # interpreter exit, their reducers are destroyed after it and gloo aborts the process (~1 run in 7)
        gc.collect()
        cleanup_distributed()
