"""common.py and checkpoint.py: atomic checkpoints and their errors, RNG round trips, metrics JSONL + plots, and
data-parallel training (DDP and FSDP2 over gloo, 2 processes) matching one process on the same global batch.

    python -m pytest -q tests/test_common.py
"""
import importlib.util
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.nn as nn

from checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint, save_model
from common import (CheckpointError, Dist, MetricsLogger, all_reduce_mean, autocast, cpu_has_bf16, get_peak_flops,
                    get_rng_state, plot_metrics, print0, read_metrics, set_rng_state, set_seed, setup_distributed,
                    unwrap, uses_bf16, wrap_model)

HERE = os.path.dirname(os.path.abspath(__file__))


def _ckpt(step):
    """A contract-shaped checkpoint with a recognisable payload."""
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.fill_(float(step))
    return {"model": lin.state_dict(), "model_args": {"dim": 4}, "config": {"name": "t"}, "step": step,
            "optimizer": None, "rng": get_rng_state(), "tokenizer": "toy"}


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("crash", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch, crash):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, _ckpt(1))
    real_save = torch.save

    def save_half_then_die(obj, f, *a, **kw):
        import io
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])   # half the bytes reach the disk, then the crash
        raise crash

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(type(crash)):
        save_checkpoint(path, _ckpt(2))
    monkeypatch.setattr(torch, "save", real_save)
    ck = load_checkpoint(path)
    assert ck["step"] == 1 and torch.all(ck["model"]["weight"] == 1.0)
    assert os.listdir(tmp_path) == ["ckpt.pt"]                 # the temp file was removed
    save_checkpoint(path, _ckpt(3))                            # and the next save replaces it
    assert load_checkpoint(path)["step"] == 3 and os.listdir(tmp_path) == ["ckpt.pt"]


@pytest.mark.parametrize("damage", ["half", "ten_bytes", "empty", "garbage"])
def test_corrupt_checkpoint_gives_clear_one_line_error(tmp_path, damage):
    path = str(tmp_path / "model.pt")
    save_checkpoint(path, _ckpt(1))
    raw = open(path, "rb").read()
    bad = {"half": raw[: len(raw) // 2], "ten_bytes": raw[:10], "empty": b"",
           "garbage": bytes(range(256)) * 4}[damage]
    with open(path, "wb") as f:
        f.write(bad)
    with pytest.raises(CheckpointError, match="corrupt or truncated checkpoint") as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert path in msg and "\n" not in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__   # no chained pickle/zip traceback


def test_missing_checkpoint_names_path_and_how_to_make_it(tmp_path):
    path = str(tmp_path / "nope" / "model.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at") as e:
        load_checkpoint(path)
    assert path in str(e.value) and "train_pipeline.py" in str(e.value) and "\n" not in str(e.value)


class _NotAllowed:
    pass


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    path = str(tmp_path / "evil.pt")
    save_checkpoint(path, {"obj": _NotAllowed()})
    with pytest.raises(CheckpointError, match=r"_NotAllowed, which torch.load\(weights_only=True\) refuses") as e:
        load_checkpoint(path)
    assert path in str(e.value) and "\n" not in str(e.value)


def test_rng_round_trip_through_weights_only_checkpoint(tmp_path):
    set_seed(123)
    random.gauss(0, 1), np.random.normal()                     # leave cached gaussians in both generators
    path = str(tmp_path / "rng.pt")
    save_checkpoint(path, {"rng": get_rng_state()})

    def draw():
        return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.normal(),
                torch.rand(3).tolist(), torch.randn(2).tolist())

    first = draw()
    draw()                                                     # move every generator on
    set_rng_state(load_checkpoint(path)["rng"])                # weights_only=True inside
    assert draw() == first
    set_seed(123)
    random.gauss(0, 1), np.random.normal()
    assert draw() == first                                     # set_seed is the same starting point


# ------------------------------------------------------------------------------------------ metrics + plots
def test_metrics_logger_writes_strict_jsonl(tmp_path):
    path = str(tmp_path / "sub" / "metrics.jsonl")
    with MetricsLogger(path) as log:
        for s in range(3):
            log.log(step=s, loss=torch.tensor(1.0 / (s + 1)), acc=np.float32(0.25 * s), name="x")
        log.log(step=3, loss=float("nan"), grad_norm=float("inf"))
    lines = open(path).read().splitlines()
    assert len(lines) == 4

    def no_nan(c):
        raise ValueError(f"non-JSON constant {c}")

    rows = [json.loads(ln, parse_constant=no_nan) for ln in lines]   # strict JSON: NaN/inf became null
    assert rows[1] == {"step": 1, "loss": 0.5, "acc": 0.25, "name": "x"}
    assert rows[3] == {"step": 3, "loss": None, "grad_norm": None}
    assert read_metrics(path) == rows
    with MetricsLogger(path) as log:                           # a resumed run appends to the same curve
        log.log(step=4, loss=0.2)
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3, 4]


def test_metrics_logger_after_torn_line_and_on_other_ranks(tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.jsonl")
    with open(path, "w") as f:
        f.write('{"step": 0, "loss": 1.0}\n{"step": 1, "lo')        # a run killed mid-write
    with MetricsLogger(path) as log:
        log.log(step=1, loss=0.9)
    with pytest.warns(UserWarning, match="malformed line"):
        rows = read_metrics(path)
    assert rows == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.9}]
    monkeypatch.setenv("RANK", "1")                            # not rank 0: writes nothing, prints nothing
    other = str(tmp_path / "rank1.jsonl")
    with MetricsLogger(other) as log:
        log.log(step=0, loss=1.0)
    assert not os.path.exists(other)


def test_print0_only_on_rank_zero(capsys, monkeypatch):
    print0("hello", 1)
    monkeypatch.setenv("RANK", "1")
    print0("silent")
    assert capsys.readouterr().out == "hello 1\n"


def test_plot_metrics_writes_png_and_skips_missing_keys(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    with MetricsLogger(path) as log:
        for s in range(10):
            log.log(step=s, loss=3.0 - 0.1 * s, reward=0.1 * s if s % 2 else None)
        log.log(step=9, loss=1.0)                              # re-logged step: the last value wins
    out = str(tmp_path / "plots" / "curves.png")
    assert plot_metrics(path, ["loss", "absent", "reward"], out, title="toy") == ["loss", "reward"]
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    none = str(tmp_path / "none.png")
    with pytest.warns(UserWarning, match="no plot written"):
        assert plot_metrics(path, ["absent"], none) == []
    assert not os.path.exists(none)


# --------------------------------------------------------------------------------------------------- misc
def test_build_model_from_checkpoint_round_trip_and_wrapper_prefixes(tmp_path):
    """save_model's checkpoint loads back into the same model, in eval mode; a state dict taken from a DDP
    wrapper ("module." prefixes) loads too; a file without the model entries is named."""
    from model import ModelArgs, Transformer
    torch.manual_seed(0)
    src = Transformer(ModelArgs(vocab_size=11, dim=16, inter_dim=32, moe_inter_dim=8, n_layers=1, n_dense_layers=1,
                                n_heads=2, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4,
                                max_seq_len=16))
    path = str(tmp_path / "model.pt")
    save_model(path, src, Dist(), step=7, tokenizer="toy")
    model, ck = build_model_from_checkpoint(path)
    assert ck["step"] == 7 and ck["tokenizer"] == "toy" and model.args == src.args and not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))
    save_checkpoint(path, {**ck, "model": {f"module.{k}": v for k, v in ck["model"].items()}})
    assert torch.equal(build_model_from_checkpoint(path)[0].head.weight, src.head.weight)
    save_checkpoint(path, {"step": 1})
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        build_model_from_checkpoint(path)


def test_single_process_setup_and_wrap(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    dist = setup_distributed(device="cpu")
    assert dist == Dist(0, 1, 0, torch.device("cpu"), True) and not tdist.is_initialized()
    m = nn.Linear(2, 2)
    assert wrap_model(m, dist) is m and wrap_model(m, dist, fsdp=True) is m and unwrap(m) is m
    assert all_reduce_mean({"a": 1, "b": torch.tensor(2.5)}, dist) == {"a": 1.0, "b": 2.5}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR is not set: launch with torchrun"):
        setup_distributed(device="cpu")


def test_get_peak_flops_measures_something():
    flops = get_peak_flops("cpu", n=256, iters=2)
    assert 1e6 < flops < 1e15                                  # a CPU does between a MFLOP/s and a PFLOP/s


def test_precision_rule_and_bad_value():
    assert uses_bf16("cuda", "auto") and uses_bf16("cpu", "bf16")
    assert not uses_bf16("cuda", "fp32") and not uses_bf16("cpu", "fp32")
    assert uses_bf16("cpu", "auto") == cpu_has_bf16()
    with pytest.raises(ValueError, match="precision must be one of.*'fp16'"):
        uses_bf16("cpu", "fp16")
    lin = nn.Linear(8, 8)
    with autocast("cpu", "bf16"):
        assert lin(torch.randn(2, 8)).dtype == torch.bfloat16    # matmuls in bf16, the weights stay fp32
    assert lin.weight.dtype == torch.float32
    with autocast("cpu", "fp32"):
        assert lin(torch.randn(2, 8)).dtype == torch.float32


# ---------------------------------------------------------------------------------------- data parallelism
def _load_worker():
    spec = importlib.util.spec_from_file_location("dist_worker", os.path.join(HERE, "dist_worker.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    """One torchrun launch (2 ranks, gloo, a free port) runs both DDP and FSDP2; results per mode."""
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(HERE, "dist_worker.py"), str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"torchrun failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return {m: torch.load(out / f"{m}.pt", weights_only=True) for m in ("ddp", "fsdp")}


@pytest.fixture(scope="module")
def one_process_result(tmp_path_factory):
    worker = _load_worker()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return worker.run("single", Dist(), str(tmp_path_factory.mktemp("single") / "ckpt.pt"))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_process(mode, two_process_results, one_process_result):
    """Same global batch (8 rows, 2 micro-steps, clipping, SGD + momentum) on 1 rank and on 2 ranks: same losses
    and weights (default fp32 tolerances); routing biases (from all-reduced per-rank expert loads) identical,
    which fails if DDP re-broadcasts buffers; some experts got no token; a reload at step 3 is exact."""
    res, ref = two_process_results[mode], one_process_result
    assert "error" not in res, f"{mode} failed on 2 ranks: {res.get('error')}"
    assert ref["resume_equal"] and res["resume_equal"]         # save at step 3 + reload == uninterrupted
    assert res["idle"] > 0                                     # idle experts happened, without find_unused
    torch.testing.assert_close(torch.tensor(res["losses"]), torch.tensor(ref["losses"]))
    assert res["state"].keys() == ref["state"].keys()
    for k in ref["state"]:
        torch.testing.assert_close(res["state"][k], ref["state"][k], msg=lambda m: f"{mode} {k}: {m}")
    assert not torch.equal(ref["state"]["layers.0.bias"], torch.zeros(8))   # the bias did move


def test_peak_rss_sees_an_allocation_and_times_the_block():
    import common
    with common.PeakRSS(every=0.01) as m:
        x = bytearray(200 * 2 ** 20)          # 200 MB, touched
        for i in range(0, len(x), 4096):
            x[i] = 1
        time.sleep(0.05)
        del x
    assert m.seconds >= 0.05
    if m.peak_mb is not None:                 # Linux: /proc/self/status
        assert m.peak_mb >= m.end_mb + 150


def test_trim_heap_returns_freed_heap_pages():
    """Tensors of heap size (100 KB, under glibc's mmap threshold), nine in ten freed: glibc keeps their pages
    (the kept tenth pins the heap) until trim_heap hands them back. The RL stages' memory growth, in miniature."""
    import common
    if common.resident_mb()["rss_mb"] is None or not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux's /proc/self/status to read the resident size")
    xs = [torch.ones(25_000) for _ in range(2000)]          # 200 MB
    keep = xs[::10]
    del xs
    held = common.resident_mb()["rss_mb"]
    common.trim_heap()
    assert common.resident_mb()["rss_mb"] < held - 100       # most of the 180 MB freed goes back
    assert len(keep) == 200
