"""Expert parallelism (ep.py) against one process, with torchrun and gloo on CPU, on the real Transformer at a tiny
size: forward, loss and gradients (fp32, tight tolerance), the loads of the balancing bias, uneven routing, sampling,
checkpoints both ways, and a few sft.train steps: 2 processes with EP 2, and 4 processes as data 2 x expert 2; and
FSDP2 + EP (forward and gradients; with 2 processes a training run and its checkpoint too); one GRPO update (ranks
with different numbers of micro-batches) with 2 processes.

    python -m pytest -q tests/test_ep.py
"""
import os
import socket
import subprocess
import sys

import pytest
import torch

from checkpoint import build_model_from_checkpoint, load_checkpoint
from common import Dist, read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ep_worker  # noqa: E402

TOL = 1e-5          # fp32: the EP path sums the same products in the same order, up to matmul blocking


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process sft.train run (no process group) the EP runs must follow, written to REF/ckpt.pt."""
    ref_dir = str(tmp_path_factory.mktemp("ref"))
    model = ep_worker.new_model()
    tokens, mask = ep_worker.train_data()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import sft
        sft.train(model, tokens, mask, ep_worker.train_config(), Dist(), ref_dir)
    finally:
        torch.set_num_threads(n)
    return ref_dir


def _launch(nproc, n_ep, out, ref_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", os.path.join(HERE, "ep_worker.py"), str(out), ref_dir, str(n_ep)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(nproc)]


def _check(results, ref_dir, out, n_ep):
    E = ep_worker.ARGS["n_routed_experts"]
    for r, res in enumerate(results):
        # each rank holds E/ep experts of both MoE layers (the main model's and MTP's)
        assert res["local_experts"] == [(E // n_ep, ep_worker.ARGS["dim"], ep_worker.ARGS["moe_inter_dim"])] * 2
        f = res["forward"]
        assert f["logits"] < TOL and f["loss"] < TOL and f["grad"] < TOL, (r, f)
        # the loads update_bias uses are the global ones: exactly the one-process counts (all N*K pairs)
        assert res["loads"] == 0.0 and res["loads_total"] == [ep_worker.B * ep_worker.T * 2,
                                                              ep_worker.B * (ep_worker.T - 1) * 2]
        assert res["bias"] == 0.0 and res["bias_moved"] > 0
        for case, u in res["uneven"].items():           # every token on experts {0, 1}, then {2, 3}
            assert u["logits"] < TOL and u["loss"] < TOL and u["grad"] < TOL, (r, case, u)
        c = res["checkpointing"]                        # activation checkpointing: exchanges recomputed in backward
        assert c["logits"] < TOL and c["loss"] < TOL and c["grad"] < TOL, (r, c)
        assert res["sampling"] == 0                     # full_params: same greedy tokens as one process
        assert res["sharded_after_sampling"] == (E // n_ep, ep_worker.ARGS["dim"], ep_worker.ARGS["moe_inter_dim"])
        # one-process checkpoint -> EP model and optimizer -> one-process layout again: the same tensors
        assert res["resume_keys"] and res["resume_model"] == 0.0 and res["resume_opt"] == 0.0
        assert res["resume_logits"] < TOL

    # a few sft.train steps under EP follow the one-process loss curve
    ref_rows, ep_rows = read_metrics(os.path.join(ref_dir, "metrics.jsonl")), read_metrics(
        os.path.join(out, "train", "metrics.jsonl"))
    assert [r["step"] for r in ep_rows] == list(range(ep_worker.TRAIN_STEPS))
    for a, b in zip(ref_rows, ep_rows, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4, (a, b)
    assert ref_rows[0]["grad_norm"] > 0.3                 # clipping was active: the global norm had to agree
    assert ep_rows[-1]["loss"] < ep_rows[0]["loss"]

    # the EP checkpoint is in the one-process layout: it loads in one process and predicts what the EP model did
    ck_ep, ck_ref = load_checkpoint(os.path.join(out, "train", "ckpt.pt")), load_checkpoint(
        os.path.join(ref_dir, "ckpt.pt"))
    assert {k: v.shape for k, v in ck_ep["model"].items()} == {k: v.shape for k, v in ck_ref["model"].items()}
    assert max(float((ck_ep["model"][k] - v).abs().max()) for k, v in ck_ref["model"].items()) < 1e-4
    assert sorted(ck_ep["optimizer"]["state"]) == sorted(ck_ref["optimizer"]["state"])
    for i, s in ck_ref["optimizer"]["state"].items():
        assert {k: getattr(v, "shape", None) for k, v in s.items()} == \
               {k: getattr(v, "shape", None) for k, v in ck_ep["optimizer"]["state"][i].items()}
    plain, _ = build_model_from_checkpoint(os.path.join(out, "train", "ckpt.pt"))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, ep_worker.ARGS["vocab_size"], (ep_worker.B, ep_worker.T + 1), generator=g)
    with torch.no_grad():
        logits = plain(x[:, :-1])
    for res in results:
        assert float((logits[res["rows"]] - res["final_logits"]).abs().max()) < TOL

    # FSDP2 + EP: the same forward, gradients, loss curve and checkpoint (in FSDP2's name-keyed optimizer layout)
    for r, res in enumerate(results):
        f = res["fsdp_forward"]
        assert f["logits"] < TOL and f["loss"] < TOL and f["grad"] < TOL, (r, f)
    if len(results) != 2:   # the FSDP2 + EP training run and the GRPO update: 2 processes only (test time)
        return
    assert results[0]["fsdp_resume_model"] == 0.0 and results[0]["fsdp_resume_opt"] == 0.0
    for a, b in zip(ref_rows, read_metrics(os.path.join(out, "train_fsdp", "metrics.jsonl")), strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4, (a, b)
    path = os.path.join(out, "train_fsdp", "ckpt.pt")
    ck = load_checkpoint(path)
    assert max(float((ck["model"][k] - v).abs().max()) for k, v in ck_ref["model"].items()) < 1e-4
    assert ck["optimizer"]["state"]["layers.1.ffn.w1"]["exp_avg"].shape == ck_ref["model"]["layers.1.ffn.w1"].shape
    plain, _ = build_model_from_checkpoint(path)
    with torch.no_grad():
        logits = plain(x[:, :-1])
    for res in results:
        assert float((logits[res["rows"]] - res["fsdp_final_logits"]).abs().max()) < TOL

    # one grpo_update under EP (ranks with different numbers of micro-batches, an empty minibatch) = one process
    import grpo_dist_worker as gw
    ep_grpo = torch.load(os.path.join(out, "grpo.pt"), weights_only=True)
    one_state, one_metrics = gw.run("ddp_grpo", Dist())
    for k, v in one_state.items():
        assert torch.allclose(ep_grpo["state"][k], v, atol=1e-6, rtol=1e-5), k
    for key in ("loss", "kl", "clip_low", "clip_high", "ratio_mean", "entropy", "opt_steps"):
        assert ep_grpo["metrics"][key] == pytest.approx(one_metrics[key], abs=1e-5), key
    assert one_metrics["opt_steps"] == 4


def test_ep2_on_2_processes_matches_one_process(reference, tmp_path):
    _check(_launch(2, 2, tmp_path, reference), reference, tmp_path, 2)


def test_data2_x_expert2_on_4_processes_matches_one_process(reference, tmp_path):
    _check(_launch(4, 2, tmp_path, reference), reference, tmp_path, 2)


def test_ep_config_is_checked():
    from config import check_values, load_config
    cfg = load_config("micro")
    for bad, msg in ((3, "n_routed_experts"), (0, "ep must be")):
        cfg["ep"] = bad
        with pytest.raises(SystemExit, match=msg):
            check_values(cfg, ["pretrain"], "config 'micro'")
