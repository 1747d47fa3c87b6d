"""Scaling out: every pipeline stage under torchrun with DDP and with FSDP2 (evaluation included), activation
checkpointing, and plan.py's figures against the real model.

    python -m pytest -q tests/test_scale.py
"""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import config
import plan
import train_pipeline as tp
from model import Gate, ModelArgs, Transformer
from sft import SFTConfig, make_optimizer

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = sorted(f[:-5] for f in os.listdir(os.path.join(config.ROOT, "configs")) if f.endswith(".json"))


# -------------------------------------------------------------------------------- the pipeline under torchrun
def tiny_pipeline_config(tmp_path, name: str, fsdp: bool) -> str:
    """configs/micro.json, made smaller still: one distilled student, one question per eval set, one sample each,
    4 new tokens per sample."""
    cfg = config.load_config("micro")
    cfg.update(name=name, runs_dir=str(tmp_path / "runs"), fsdp=fsdp)
    cfg["model"]["activation_checkpointing"] = fsdp          # FSDP2 run: with checkpointed blocks too
    cfg["eval"].update(k=1, max_new_tokens=4, n_per_set=1)   # one question: rank 1 samples none, yet gathers
    cfg["pretrain"].update(steps=2, n_docs=20)
    cfg["grpo"]["max_new_tokens"] = 4
    for s in ("cold_start", "rejection_sft", "distill"):
        cfg[s]["max_new_tokens"] = 4
    cfg["reward_models"].update(steps=1, eval_general=1, eval_safety=1, eval_max_new_tokens=4)
    cfg["distill"]["students"] = {"s": copy.deepcopy(cfg["distill"]["students"]["s"])}
    cfg["distill"]["rl"]["steps"] = 1
    for s in ("zero", "reasoning_rl", "all_rl"):
        cfg[s].update(steps=1, eval_every=1)
    cfg["all_rl"]["general_steps"] = 1
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    """One torchrun launch (2 CPU ranks, gloo) runs `--stage all` under DDP, then under FSDP2 with checkpointed
    blocks (tests/pipeline_dist_worker.py: train_pipeline.main per config, figures skipped)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    paths = {mode: tiny_pipeline_config(tmp, f"scale_{mode}", fsdp=mode == "fsdp") for mode in ("ddp", "fsdp")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join(HERE, "pipeline_dist_worker.py"), paths["ddp"], paths["fsdp"]],
                       env=env, capture_output=True, text=True, timeout=500, cwd=config.ROOT)
    return p, paths


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_every_stage_runs_under_torchrun(pipeline_runs, mode):
    """`torchrun --nproc_per_node=2 train_pipeline.py --stage all` on 2 CPU ranks finishes every stage --
    pretrain, reward models, R1-Zero, cold start, reasoning RL, rejection sampling + SFT, all-scenario RL,
    distillation with its RL-only student -- and writes every product: a model and its evaluation, with every
    question gathered from both ranks. FSDP2 used to stop at the first evaluation (sampling on DTensor shards)."""
    p, paths = pipeline_runs
    assert p.returncode == 0, f"torchrun failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    cfg = json.load(open(paths[mode]))
    run = os.path.join(cfg["runs_dir"], cfg["name"])
    products = [q for st in tp.STAGES for q in tp.products(cfg, st)]
    assert len(products) == 11
    for prod in products:
        for f in ("model.pt", "eval.json"):
            assert os.path.isfile(os.path.join(run, prod, f)), f"{mode}: no {prod}/{f}"
        res = json.load(open(os.path.join(run, prod, "eval.json")))
        if not prod.startswith("rm_"):
            assert all(res[s]["n"] == cfg["eval"]["n_per_set"] for s in cfg["eval"]["sets"]), (prod, res)
            assert res["general"]["n"] == cfg["reward_models"]["eval_general"], (prod, res)
    assert os.path.isfile(os.path.join(run, "report.md"))
    ck = torch.load(os.path.join(run, "all_rl", "model.pt"), weights_only=True)
    assert ck["model_args"]["activation_checkpointing"] == (mode == "fsdp")
    # the saved model is whole (FSDP2 gathers its shards): it loads into one process's Transformer
    Transformer(ModelArgs(**ck["model_args"])).load_state_dict(ck["model"])


# ------------------------------------------------------------------------------------- activation checkpointing
def test_activation_checkpointing_gives_the_same_loss_gradients_and_loads():
    """model.ModelArgs.activation_checkpointing recomputes each block in backward: the loss (CE + MTP + balance)
    and every gradient are those of the plain forward, the gates count each token once, and the forward keeps
    less for backward."""
    args = ModelArgs(**{**config.load_config("micro")["model"], "mtp_depth": 1, "seq_aux_alpha": 0.01,
                        "vocab_size": 128})   # a small vocabulary: the logits do not hide the blocks' activations
    torch.manual_seed(0)
    plain = Transformer(args).train()
    ckpt = Transformer(ModelArgs(**{**vars(args), "activation_checkpointing": True})).train()
    ckpt.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, args.vocab_size, (3, 24))
    out = {}
    for name, m in (("plain", plain), ("ckpt", ckpt)):
        saved, weights = [], {p.data_ptr() for p in m.parameters()}
        keep = lambda t: saved.append(0 if t.data_ptr() in weights else t.numel()) or t   # noqa: E731
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            _, loss, parts = m(tokens, tokens.roll(-1, 1))
        loss.backward()
        out[name] = (loss.detach(), {k: v.detach() for k, v in parts.items()}, sum(saved),
                     {n: p.grad for n, p in m.named_parameters()},
                     [g.load.clone() for g in m.modules() if isinstance(g, Gate)])
    (l0, p0, s0, g0, c0), (l1, p1, s1, g1, c1) = out["plain"], out["ckpt"]
    assert torch.equal(l0, l1) and all(torch.equal(p0[k], p1[k]) for k in p0)
    assert p0["balance"] > 0 and p0["mtp"] > 0
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=0, atol=0, msg=lambda m: f"{n}: {m}")
    assert len(c0) == 2 and all(torch.equal(a, b) for a, b in zip(c0, c1))
    K = args.n_activated_experts       # each token counted once, not twice (the MoE block; MTP sees T - 1)
    assert [int(c.sum()) for c in c1] == [3 * 24 * K, 3 * 23 * K]
    assert s1 < s0 / 2, (s0, s1)          # the checkpointed forward kept far fewer activations for backward


def test_activation_checkpointing_is_a_checked_bool():
    cfg = config.load_config("micro")
    cfg["model"]["activation_checkpointing"] = "yes"
    with pytest.raises(SystemExit, match="model.activation_checkpointing must be one of true, false"):
        config.check_config(cfg, "c.json")


# ----------------------------------------------------------------------------------------------------- the plan
def test_plan_bytes_equal_the_real_model():
    """plan.py's parameter, gradient and AdamW bytes for one GPU equal those of the real Transformer after an
    optimizer step (fp32 weights, fp32 grads, exp_avg + exp_avg_sq), MTP included; its FSDP2 shard sizes follow
    FSDP2's padding rule (dim 0 cut in ceil(rows / W)); EP divides exactly the stacked routed experts."""
    cfg = config.load_config("micro")
    cfg["model"].update(mtp_depth=1)
    args = ModelArgs(**cfg["model"])
    model = Transformer(args)
    opt = make_optimizer(model, SFTConfig(lr=1e-3))
    _, loss, _ = model(torch.randint(0, args.vocab_size, (2, 16)), torch.randint(0, args.vocab_size, (2, 16)))
    loss.backward()
    opt.step()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    states = sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items() if k != "step")
    pl = plan.make_plan(cfg, plan.Setup(1, 1))
    assert pl["memory"]["weights (fp32)"] == weights
    assert pl["memory"]["gradients (fp32)"] == grads
    assert pl["memory"]["AdamW states (2 x fp32)"] == states
    # FSDP2 over 2 ranks: each parameter's dim 0 split as torch.chunk splits it, padded to the larger piece
    sharded = plan.make_plan({**cfg, "fsdp": True}, plan.Setup(1, 2))["params"]
    rows = {n: -(-p.shape[0] // 2) * (p[0].numel() if p.dim() > 1 else 1) for n, p in model.named_parameters()}
    assert sharded["dense"] + sharded["expert"] == sum(rows.values())
    assert all(-(-p.shape[0] // 2) == p.chunk(2)[0].shape[0] for p in model.parameters())
    # EP 2 with DDP: half the experts of each MoE layer, everything else whole
    ep = plan.make_plan({**cfg, "ep": 2}, plan.Setup(1, 2))["params"]
    experts = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[-1] in ("w1", "w2", "w3")
                  and p.dim() == 3)
    assert ep["expert"] * 2 == experts and ep["dense"] == sum(p.numel() for p in model.parameters()) - experts
    # activations: checkpointing keeps less; a rollout's KV cache is what KVCache.nbytes allocates
    assert pl["activations_ckpt"] < pl["activations_full"]
    rows_gpu, length = pl["rollout_rows_per_gpu"], min(pl["rollout_len"], args.max_seq_len)
    cache = Transformer(args).new_cache(rows_gpu, length)
    assert pl["rollout"]["KV cache (absorbed MLA, fp32)"] == cache.nbytes()


# the setup each shipped preset is meant for: (nodes, GPUs per node, GiB, overrides), and whether it fits
INTENDED = {"micro": (1, 1, 24, [], True), "toy": (1, 1, 24, [], True), "gpu1": (1, 1, 24, [], True),
            "node8": (1, 8, 80, [], True), "v2-lite": (1, 8, 80, ["--fsdp", "true"], True),
            "v3-671b": (256, 8, 80, [], False),                  # DDP on 2048 GPUs: 16 bytes x 682B per GPU
            "v3-nodes": (256, 8, 80, ["--ep", "256"], True)}


@pytest.mark.parametrize("name", PRESETS)
def test_plan_runs_on_every_shipped_config(name, capsys):
    """`--plan` on every preset in configs/: it prints the per-GPU figures, and fits or refuses as the preset's
    intended setup says; a refusal names the phase and the term that overflows."""
    nodes, gpus, mem, extra, fits = INTENDED.get(name, (1, 1, 80, [], None))
    argv = ["--config", name, "--plan", "--nodes", str(nodes), "--gpus-per-node", str(gpus), "--gpu-mem-gb",
            str(mem), *extra]
    if fits is False:
        with pytest.raises(SystemExit, match=r"plan does not fit: the training step needs .* largest term: AdamW"):
            tp.main(argv)
    else:
        try:
            tp.main(argv)
        except SystemExit as e:                     # a preset of another purpose may refuse: by name, then
            assert fits is None and "plan does not fit" in str(e), (name, e)
    out = capsys.readouterr().out
    for term in ("parameters per GPU", "weights (fp32)", "gradients (fp32)", "AdamW states",
                 "activations without / with checkpointing", "KV cache", "communication per step", "FLOPs"):
        assert term in out, (name, term)
    assert ("fits." in out) == (fits is not False)


def test_plan_refuses_naming_the_term(capsys):
    """A 1-GPU V2-Lite pretraining with 24 GiB is refused; with --stage all the rollout's whole-weights term of an
    FSDP2 node is named; V3 with EP 64 keeps too many experts per GPU; bad numbers are one-line errors."""
    with pytest.raises(SystemExit, match=r"training step needs [\d.]+ GiB per GPU > --gpu-mem-gb 24; largest "
                                         r"term: activations"):
        plan.main(["--config", "v2-lite", "--gpu-mem-gb", "24"])
    with pytest.raises(SystemExit, match=r"the rollout needs .* largest term: whole weights for sampling"):
        plan.main(["--config", "node8", "--gpus-per-node", "8", "--stage", "all"])
    with pytest.raises(SystemExit, match=r"training step needs .* largest term: AdamW states"):
        plan.main(["--config", "v3-nodes", "--nodes", "256", "--gpus-per-node", "8", "--ep", "64"])
    with pytest.raises(SystemExit, match="--mfu must be in"):
        plan.main(["--config", "toy", "--mfu", "0"])
    with pytest.raises(SystemExit, match="ep=3 must divide the world of 8 GPUs"):
        plan.main(["--config", "node8", "--gpus-per-node", "8", "--ep", "3"])
    capsys.readouterr()


def test_plan_flops_match_the_model_counters():
    """FLOPs per token are model.counters' (6 x active + attention), x 4/3 with checkpointing; the step time is
    FLOPs per GPU / (MFU x peak)."""
    cfg = config.load_config("node8")
    pl = plan.make_plan(cfg, plan.Setup(1, 8, mfu=0.5, gpu_tflops=1000))
    c = Transformer.counters(plan.build_meta(ModelArgs(**cfg["model"])), seq_len=cfg["pretrain"]["seq_len"])
    assert pl["flops_per_token"] == pytest.approx(c["train_flops_per_token"] * 4 / 3)
    tokens = cfg["pretrain"]["batch_size"] * cfg["pretrain"]["seq_len"]
    assert pl["step_s"] == pytest.approx(pl["flops_per_token"] * tokens / 8 / (0.5 * 1000e12))
