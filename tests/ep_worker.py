"""Expert parallelism checks on the real model.py Transformer at a tiny size, for tests/test_ep.py.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ep_worker.py OUT_DIR REF_DIR EP
    python -m torch.distributed.run --standalone --nproc_per_node=4 tests/ep_worker.py OUT_DIR REF_DIR 2   # 2 x 2

Every rank builds the one-process reference model itself (same seed, full batch, no process group involved in its
forward/backward) and an EP model wrapped by common.wrap_model(..., ep=EP) that sees only its own rows
(global rows rank::world). Rank r writes OUT_DIR/rank<r>.pt with the largest differences found:
  forward    logits of its rows, global loss, every gradient (expert gradients against their slice)
  loads      the expert loads update_bias uses (all-reduced) and the biases after it, against the reference's
  uneven     the same forward/gradient check with the gate bias forcing every token onto experts 0 and 1 (the
             other rank's experts get no token), then onto experts 2 and 3
  checkpointing  the forward/gradient check with activation checkpointing (the exchanges run again in backward)
  sampling   greedy generate() inside common.full_params, ranks with different numbers of prompts
  fsdp       FSDP2 + EP: the forward/gradient check; with 2 ranks also sft.train into OUT_DIR/train_fsdp/ and its
             checkpoint reloaded
  resume     REF_DIR/ckpt.pt (written by one process, sft.train) loaded into the EP model + optimizer, saved back
             through common.model_state_dict / optimizer_state_dict: the same tensors
Then sft.train runs TRAIN_STEPS steps under EP into OUT_DIR/train/ (metrics.jsonl, ckpt.pt in the one-process
layout), which the test compares with the one-process run in REF_DIR, and loads into a plain model. Last, one
grpo_update of tests/grpo_dist_worker.py's "ddp_grpo" scenario (micro-batches of 2 rows: ranks run different numbers
of them; an empty minibatch on a rank; pi_old and pi_ref passes) under EP, 2 ranks only: rank 0 saves the state and
metrics to OUT_DIR/grpo.pt for the test to compare with grpo_dist_worker.run("ddp_grpo", Dist()) in one process.
"""
import os
import sys

import torch
import torch.distributed as tdist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ep  # noqa: E402
import grpo  # noqa: E402
import sft  # noqa: E402
from checkpoint import load_checkpoint, load_resumable  # noqa: E402
from common import (cleanup_distributed, full_params, model_state_dict, optimizer_state_dict,  # noqa: E402
                    setup_distributed, unwrap, wrap_model)
from model import ModelArgs, Transformer  # noqa: E402
from sample import generate  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpo_dist_worker as gw  # noqa: E402

# tiny: 4 routed experts in 2 groups (group-limited routing), top-2, a shared expert, MTP (a second MoE layer)
ARGS = dict(vocab_size=64, dim=16, inter_dim=32, moe_inter_dim=8, n_layers=2, n_dense_layers=1, n_heads=2,
            n_routed_experts=4, n_shared_experts=1, n_activated_experts=2, n_expert_groups=2, n_limited_groups=1,
            kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4, max_seq_len=32, mtp_depth=1,
            seq_aux_alpha=0.01, bias_update_speed=0.01)
B, T = 4, 8                 # global batch rows, tokens per row
TRAIN_STEPS = 4


def train_config():
    """The sft.train run both sides make (grad_clip small enough to be active: clipping must agree)."""
    return sft.SFTConfig(steps=TRAIN_STEPS, batch_size=B, seq_len=T, lr=3e-3, warmup=1, grad_clip=0.3,
                         ckpt_every=TRAIN_STEPS, log_every=1, seed=5, precision="fp32")


def train_data():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, ARGS["vocab_size"], (16, T + 1), generator=g)
    return tokens, torch.ones_like(tokens, dtype=torch.bool)


def new_model():
    torch.manual_seed(0)
    return Transformer(ModelArgs(**ARGS))


def max_diff(a, b):
    return float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0


def forward_check(model, ref, inp, tgt, d, rows):
    """One forward + backward of both; -> {logits, loss, grad (largest over params)} differences."""
    for m in (model, ref):
        m.zero_grad(set_to_none=True)
    logits, loss, _ = model(inp[rows], tgt[rows])
    loss.backward()
    r_logits, r_loss, _ = ref(inp, tgt)
    r_loss.backward()
    glob = loss.detach().clone()
    tdist.all_reduce(glob)
    glob /= d.world_size
    core, grad = unwrap(model), 0.0
    ref_params = dict(ref.named_parameters())
    for name, p in core.named_parameters():
        want, got = ref_params[name].grad, p.grad
        got = got.full_tensor() if hasattr(got, "full_tensor") else got        # FSDP2: a DTensor shard
        if getattr(p, "_ep_expert", False):
            _, e, _ = p._ep
            want = want[e * p.shape[0]:(e + 1) * p.shape[0]]
        grad = max(grad, max_diff(got, want))
    return {"logits": max_diff(logits, r_logits[rows]), "loss": abs(float(glob) - r_loss.item()), "grad": grad,
            "loss_value": r_loss.item()}


def set_gate_bias(models, bias):
    for m in models:
        for mod in unwrap(m).modules():
            if hasattr(mod, "ep_group"):
                mod.gate.bias.copy_(torch.tensor(bias))


def main(out_dir, ref_dir, n_ep):
    torch.set_num_threads(1)
    d = setup_distributed("cpu")
    res = {"world": d.world_size, "ep": n_ep}
    rows = torch.arange(d.rank, B, d.world_size)                 # this rank's rows of the global batch
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, ARGS["vocab_size"], (B, T + 1), generator=g)
    inp, tgt = x[:, :-1], x[:, 1:]

    ref = new_model().train()
    model = wrap_model(new_model(), d, ep=n_ep).train()
    core = unwrap(model)
    res["local_experts"] = [tuple(m.w1.shape) for m in ep.moe_layers(core)]

    # forward, loss, gradients; then the loads counted by those (training-mode) forwards
    res["forward"] = forward_check(model, ref, inp, tgt, d, rows)
    loads = []
    for m, r in zip(ep.moe_layers(core), ep.moe_layers(ref)):
        mine = m.gate.load.clone()
        tdist.all_reduce(mine)                                  # what Gate.update_bias all-reduces
        loads.append(max_diff(mine, r.gate.load))
    res["loads"] = max(loads)
    res["loads_total"] = [float(r.gate.load.sum()) for r in ep.moe_layers(ref)]
    core.update_bias()
    ref.update_bias()        # (every rank runs it: its all-reduce sums W equal counts, the signs are unchanged)
    res["bias"] = max(max_diff(m.gate.bias, r.gate.bias) for m, r in zip(ep.moe_layers(core), ep.moe_layers(ref)))
    res["bias_moved"] = max(float(r.gate.bias.abs().max()) for r in ep.moe_layers(ref))

    # uneven routing: the gate bias forces every token onto experts {0, 1} (expert rank 0), then {2, 3}
    res["uneven"] = {}
    for name, bias in (("first", [5.0, 5.0, -5.0, -5.0]), ("last", [-5.0, -5.0, 5.0, 5.0])):
        with torch.no_grad():
            set_gate_bias([model, ref], bias)
        res["uneven"][name] = forward_check(model, ref, inp, tgt, d, rows)
    with torch.no_grad():
        set_gate_bias([model, ref], [0.0] * 4)

    # activation checkpointing: each block's forward, both exchanges included, is run again in the backward
    for m in (core, ref):
        m.args.activation_checkpointing = True
    res["checkpointing"] = forward_check(model, ref, inp, tgt, d, rows)
    for m in (core, ref):
        m.args.activation_checkpointing = False

    # sampling: rank r gets r + 1 prompts of different lengths; full_params gathers the experts once
    prompts = [[1 + i, 2, 3 + i][: 1 + i % 3] for i in range(d.rank + 1)]
    ref_gen = generate(ref, prompts, 5, temperature=0, pad_id=0)
    with full_params(model) as m:
        gen = generate(m, prompts, 5, temperature=0, pad_id=0)
    res["sampling"] = int((gen.tokens != ref_gen.tokens).sum())
    res["sharded_after_sampling"] = ep.is_sharded(core) and tuple(ep.moe_layers(core)[0].w1.shape)

    # a one-process checkpoint into the EP model and optimizer, and back out in the one-process layout
    ck = load_checkpoint(os.path.join(ref_dir, "ckpt.pt"))
    opt = sft.make_optimizer(model, train_config())
    load_resumable(os.path.join(ref_dir, "ckpt.pt"), model, opt)
    state, ostate = model_state_dict(model), optimizer_state_dict(model, opt)
    res["resume_model"] = max(max_diff(state[k], v) for k, v in ck["model"].items())
    res["resume_keys"] = sorted(state) == sorted(ck["model"])
    res["resume_opt"] = max(max_diff(state_v, ck["optimizer"]["state"][i][k])
                            for i, s in ostate["state"].items() for k, state_v in s.items() if torch.is_tensor(state_v))
    plain = Transformer(ModelArgs(**ck["model_args"]))
    plain.load_state_dict(ck["model"])
    model.eval()
    plain.eval()
    with torch.no_grad():
        res["resume_logits"] = max_diff(model(inp[rows]), plain(inp)[rows])

    # sft.train under EP from the same initial weights as the one-process run in REF_DIR
    tdist.barrier()
    model = wrap_model(new_model(), d, ep=n_ep)
    tokens, mask = train_data()
    sft.train(model, tokens, mask, train_config(), d, os.path.join(out_dir, "train"))
    model.eval()
    with torch.no_grad():
        logits = model(inp[rows])                              # to compare with the saved checkpoint in one process
    res["final_logits"] = logits
    res["rows"] = rows

    # FSDP2 + EP: the replicated weights sharded by fully_shard over all ranks, the experts apart
    tdist.barrier()
    model = wrap_model(new_model(), d, fsdp=True, ep=n_ep).train()
    ref = new_model().train()
    res["fsdp_forward"] = forward_check(model, ref, inp, tgt, d, rows)
    if d.world_size != 2:   # the FSDP2 training run and the GRPO update: with 2 ranks only (test time)
        torch.save(res, os.path.join(out_dir, f"rank{d.rank}.pt"))
        cleanup_distributed()
        return
    model = wrap_model(new_model(), d, fsdp=True, ep=n_ep)
    sft.train(model, tokens, mask, train_config(), d, os.path.join(out_dir, "train_fsdp"))
    model.eval()
    with torch.no_grad():
        res["fsdp_final_logits"] = model(inp[rows])
    # ... and its checkpoint back into a fresh FSDP2 + EP model and optimizer: the same full tensors come out
    path = os.path.join(out_dir, "train_fsdp", "ckpt.pt")
    model = wrap_model(new_model(), d, fsdp=True, ep=n_ep)
    opt = sft.make_optimizer(model, train_config())
    ck = load_resumable(path, model, opt)
    state, ostate = model_state_dict(model), optimizer_state_dict(model, opt)
    if d.rank == 0:   # (the full dicts are gathered on rank 0's CPU)
        res["fsdp_resume_model"] = max(max_diff(state[k], v) for k, v in ck["model"].items())
        res["fsdp_resume_opt"] = max(max_diff(v, ck["optimizer"]["state"][n][k]) for n, s in ostate["state"].items()
                                     for k, v in s.items() if torch.is_tensor(v))
    torch.save(res, os.path.join(out_dir, f"rank{d.rank}.pt"))

    # GRPO under EP: grpo_update on this rank's groups (interleaved), as grpo_dist_worker.run does with DDP. (Not
    # with 4 ranks: the balancing loads of a GRPO step count the padding of each micro-batch, which depends on how
    # rows are split over ranks -- with DDP as well --, so 4 ranks' loads, and biases, differ from 1 process.)
    _, overrides = gw.SCENARIOS["ddp_grpo"]
    cfg = grpo.GRPOConfig(group_size=gw.G, max_new_tokens=6, precision="fp32", **overrides)
    torch.manual_seed(0)
    model = Transformer(gw.tiny_args())
    torch.manual_seed(1)
    ref = Transformer(gw.tiny_args()).eval()
    batch = gw.subset(gw.make_rollout(cfg), range(d.rank, gw.N_GROUPS, d.world_size))
    policy = wrap_model(model, d, ep=n_ep)
    metrics = grpo.grpo_update(policy, ref, torch.optim.SGD(policy.parameters(), lr=0.5), batch, cfg, d)
    state = model_state_dict(policy)
    if d.rank == 0:
        torch.save({"state": state, "metrics": metrics}, os.path.join(out_dir, "grpo.pt"))
    tdist.barrier()
    cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
