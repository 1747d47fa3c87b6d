"""The command lines' failures: every expected one is ONE line on stderr, "error: ...", exit status 2, no traceback,
and it comes before any training starts (common.run_cli, config.py's RULES, train_pipeline.py's run folders).

    python -m pytest -q tests/test_cli.py

Most tests call main through run_cli in this process (what `python train_pipeline.py` does, minus torch's import
time); two run the real command in a subprocess.
"""
import errno
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import model
import train_pipeline as tp
from checkpoint import load_checkpoint, save_checkpoint
from common import CheckpointError, run_cli

MICRO = os.path.join(tp.ROOT, "configs", "micro.json")

pytestmark = pytest.mark.usefixtures("one_thread")


def pipeline(capsys, runs, *argv, name="t", config=MICRO):
    """Run train_pipeline's main through run_cli: (exit status, stdout, stderr)."""
    args = ["--config", config, "--runs_dir", str(runs), *argv]
    if name:
        args += ["--name", name]
    code = run_cli(tp.main, args)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error(code, err, *words) -> str:
    """Assert one "error:" line on stderr, status 2, no traceback, naming every word; return the line."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------------------ run_cli itself
def test_run_cli_turns_expected_failures_into_one_line(capsys, tmp_path):
    def raises(e):
        def main(argv):
            raise e
        return main
    cases = [(SystemExit("bad value"), "error: bad value"),
             (SystemExit("error: already prefixed"), "error: already prefixed"),
             (CheckpointError("corrupt or truncated checkpoint x.pt"), "error: corrupt or truncated checkpoint x.pt"),
             (FileNotFoundError(errno.ENOENT, "No such file or directory", "in.json"),
              "error: No such file or directory: in.json"),
             (OSError(errno.ENOSPC, "No space left on device", "out.pt"), "error: disk full while writing out.pt"),
             (json.JSONDecodeError("Expecting value", "{", 1), "error: not valid JSON (Expecting value")]
    for exc, line in cases:
        code = run_cli(raises(exc), [])
        err = capsys.readouterr().err
        assert one_error(code, err).startswith(line)
    assert run_cli(raises(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"
    assert run_cli(lambda argv: None, []) == 0
    with pytest.raises(ZeroDivisionError):                   # a bug keeps its traceback
        run_cli(raises(ZeroDivisionError()), [])


# ------------------------------------------------------------------------------------------ bad config values
@pytest.mark.parametrize("stage, bad, words", [
    ("zero", ["--lr", "nan"], ["zero.lr", "finite number > 0", "NaN"]),
    ("zero", ["--lr", "-1"], ["zero.lr", "finite number > 0", "-1"]),
    ("pretrain", ["--batch_size", "0"], ["pretrain.batch_size", "integer >= 1"]),
    ("zero", ["--group_size", "1"], ["zero.group_size", "integer >= 2"]),
    ("zero", ["--steps", "-1"], ["zero.steps", "integer >= 1"]),
    ("pretrain", ["--steps", "-1"], ["pretrain.steps", "integer >= 1"]),
    ("zero", ["--eval.sets", "5"], ["eval.sets", "list of strings"]),
    ("zero", ["--top_p", "0"], ["zero.top_p", "(0, 1]"]),
    ("zero", ["--fsdp", "maybe"], ["--fsdp", "bool"]),
])
def test_bad_values_are_one_line_naming_key_and_range_before_any_work(capsys, tmp_path, stage, bad, words):
    code, out, err = pipeline(capsys, tmp_path, "--stage", stage, *bad)
    one_error(code, err, *words)
    assert not list(tmp_path.iterdir())                       # nothing trained, nothing written


def test_bad_value_from_the_real_command_line(tmp_path):
    r = subprocess.run([sys.executable, "train_pipeline.py", "--stage", "zero", "--config", "micro", "--lr", "nan",
                        "--runs_dir", str(tmp_path)], cwd=tp.ROOT, capture_output=True, text=True, timeout=120)
    one_error(r.returncode, r.stderr, "zero.lr", "finite number > 0")
    assert r.stdout == "" and not list(tmp_path.iterdir())


def test_truncated_config_file(capsys, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(open(MICRO).read()[:300])
    code, _, err = pipeline(capsys, tmp_path, "--stage", "pretrain", config=str(path))
    one_error(code, err, str(path), "not valid JSON")


@pytest.mark.parametrize("section, key", [("pretrain", "n_docs"), ("", "eval"), ("zero", "tasks")])
def test_config_missing_a_required_key_names_it(capsys, tmp_path, section, key):
    cfg = json.load(open(MICRO))
    del (cfg[section] if section else cfg)[key]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    code, _, err = pipeline(capsys, tmp_path / "runs", "--stage", "zero", config=str(path))
    one_error(code, err, str(path), "missing required key", key)


# ------------------------------------------------------------------------------------------------- checkpoints
def _checkpoint_at(path):
    save_checkpoint(str(path), {"model": {"w": torch.zeros(64)}, "model_args": {}, "step": 1})
    return path.read_bytes()


class _Evil:
    """Pickles as a call to os.system: what a hostile checkpoint looks like. Never unpickled with weights_only=False,
    so it never runs (the test checks that its marker file does not appear)."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("damage", ["truncated", "bit_flipped", "malicious", "json"])
def test_damaged_input_checkpoint_is_one_line(capsys, tmp_path, damage):
    """cold_start reads zero's model.pt first thing (to sample its data set): each damage is one line that says
    what is wrong, and only real damage tells the user to delete the file."""
    path = tmp_path / "t" / "zero" / "model.pt"
    path.parent.mkdir(parents=True)
    raw = _checkpoint_at(path)
    marker = tmp_path / "pwned"
    if damage == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif damage == "bit_flipped":
        i = raw.index(b"\x80\x02") + 2                          # the first opcode of the pickle inside the zip
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:])
    elif damage == "malicious":
        torch.save({"model": _Evil(marker)}, str(path))
    else:
        path.write_text(json.dumps({"arith": {"pass@1": 0.5}}))
    code, _, err = pipeline(capsys, tmp_path, "--stage", "cold_start")
    line = one_error(code, err, str(path))
    expect = {"truncated": "corrupt or truncated", "bit_flipped": "corrupt or truncated",
              "malicious": "refused to load", "json": "is not a checkpoint"}[damage]
    assert expect in line
    if damage == "malicious":
        assert "not a plain tensor checkpoint" in line and "posix.system" in line and not marker.exists()
    if damage in ("malicious", "json"):
        assert "delete" not in line and "corrupt" not in line


def test_eval_json_passed_as_a_checkpoint_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"arith": {"pass@1": 0.5}}, indent=2))
    r = subprocess.run([sys.executable, "eval.py", "--probe", str(path), "--config", "micro"], cwd=tp.ROOT,
                       capture_output=True, text=True, timeout=120)
    line = one_error(r.returncode, r.stderr, str(path), "is not a checkpoint", "JSON")
    assert "delete" not in line


def test_probe_takes_config_overrides_and_names_a_bad_one(tmp_path):
    """eval.py --probe applies overrides as train_pipeline.py does (the 24 game: --difficulty.countdown [3]); a key
    the config does not have, or a level the world does not have, is one error line naming it."""
    for extra, expect in ((["--no_such_knob", "3"], "unknown config key 'no_such_knob'"),
                          (["--difficulty.countdown", "[0]"], "difficulty"),
                          (["--difficulty.countdown", "[3]"], f"no model at {tmp_path / 'none.pt'}")):
        r = subprocess.run([sys.executable, "eval.py", "--probe", str(tmp_path / "none.pt"), "--config", "toy",
                            *extra], cwd=tp.ROOT, capture_output=True, text=True, timeout=120)
        one_error(r.returncode, r.stderr, expect)


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(capsys, tmp_path, monkeypatch):
    """pretrain writes ckpt.pt at its step 2: the disk is full then. The previous ckpt.pt stays byte for byte, no
    temp file is left behind, and the run ends with one line naming the file."""
    d = tmp_path / "t" / "pretrain"
    d.mkdir(parents=True)
    before = _checkpoint_at(d / "ckpt.pt")

    def full_disk(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")              # some bytes got out before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    code, _, err = pipeline(capsys, tmp_path, "--stage", "pretrain", "--pretrain.steps", "2")
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert code == 2 and "Traceback" not in err
    assert last == f"error: disk full while writing {d / 'ckpt.pt'}"
    assert (d / "ckpt.pt").read_bytes() == before and load_checkpoint(str(d / "ckpt.pt"))["step"] == 1
    assert sorted(os.listdir(d)) == ["ckpt.pt", "metrics.jsonl"]


# ------------------------------------------------------------------------------------------------ data files
def test_malformed_line_in_a_stage_data_set(capsys, tmp_path):
    """cold_start --resume reuses its cached SFT set: a damaged line names the file and the line."""
    d = tmp_path / "t" / "cold_start"
    d.mkdir(parents=True)
    good = json.dumps({"prompt": "p", "completion": "c", "task": "arith"})
    (d / "data.jsonl").write_text(good + "\n" + good[:20] + "\n")
    (d / "data.json").write_text("{}")
    code, _, err = pipeline(capsys, tmp_path, "--stage", "cold_start", "--resume")
    one_error(code, err, f"{d / 'data.jsonl'}:2: not valid JSON (")


# ----------------------------------------------------------------------------------------------- run folders
def _holder(lock_path):
    """Another process holding the run's lock (as a running train_pipeline does); returns it once it holds it."""
    code = ("import fcntl, os, sys, time\n"
            f"f = open({str(lock_path)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush()\n"
            "print('ready', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_a_second_run_with_the_same_name_is_refused_naming_the_first(capsys, tmp_path):
    lock = tmp_path / "t" / ".lock"
    lock.parent.mkdir(parents=True)
    holder = _holder(lock)
    try:
        code, _, err = pipeline(capsys, tmp_path, "--stage", "pretrain")
        one_error(code, err, "run 't' is in use", f"pid {holder.pid}")
        assert not (tmp_path / "t" / "pretrain").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead: its lock file (its pid still inside) blocks nothing. cold_start then stops at its
    # missing input, past the lock.
    assert lock.read_text().strip() == str(holder.pid)
    code, _, err = pipeline(capsys, tmp_path, "--stage", "cold_start")
    one_error(code, err, "the 'zero' stage has not been run")


def test_only_rank_0_takes_the_lock(capsys, tmp_path, monkeypatch):
    """Under torchrun the other ranks share rank 0's run: they must not be refused by its lock."""
    lock = tmp_path / "t" / ".lock"
    lock.parent.mkdir(parents=True)
    holder = _holder(lock)
    try:
        monkeypatch.setenv("RANK", "1")
        code, _, err = pipeline(capsys, tmp_path, "--stage", "cold_start")
        one_error(code, err, "the 'zero' stage has not been run")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", "..", ".hidden"])
def test_run_names_stay_inside_runs(capsys, tmp_path, name):
    runs = tmp_path / "a" / "runs"
    code, _, err = pipeline(capsys, runs, "--stage", "pretrain", name=name)
    one_error(code, err, "not a valid run name", repr(name))
    assert not list(tmp_path.iterdir())                       # checked before anything is created


def test_a_finished_stage_is_not_redone_without_force(capsys, tmp_path):
    path = tmp_path / "t" / "zero" / "model.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"the finished stage's model")
    code, _, err = pipeline(capsys, tmp_path, "--stage", "zero")
    one_error(code, err, "'zero' stage of run 't' is already finished", str(path), "add --force")
    assert path.read_bytes() == b"the finished stage's model"


def test_missing_input_suggests_the_command_with_the_same_config_and_name(capsys, tmp_path):
    code, _, err = pipeline(capsys, tmp_path, "--stage", "cold_start", name="t2")
    line = one_error(code, err, "the 'zero' stage has not been run for 't2'")
    assert line.endswith(f"Build it with: python train_pipeline.py --stage zero --config {MICRO} --name t2 "
                         f"--runs_dir {tmp_path}")
    assert "--config t2" not in line


def test_a_stage_ends_with_one_summary_line(capsys, tmp_path):
    code, out, err = pipeline(capsys, tmp_path, "--stage", "pretrain", "--pretrain.steps", "2")
    assert code == 0, err
    d = tmp_path / "t" / "pretrain"
    last = out.strip().splitlines()[-1]
    assert last.startswith("[pretrain] done: arith pass@1 ") and "countdown pass@1" in last
    assert f"wrote {d}/ (model.pt, eval.json, metrics.jsonl, samples.jsonl, plots)" in last
    assert "{" not in out                                      # no JSON dump on the console
    assert json.load(open(d / "eval.json"))["arith"]["n"] == 2  # the figures are in the stage's files


# --------------------------------------------------------------------------------------------- the other CLIs
def test_model_cli_takes_config_names_like_the_pipeline(capsys):
    assert run_cli(model.main, ["--config", "v3-671b"]) == 0
    out = capsys.readouterr().out
    assert '"n_routed_experts": 256' in out and "total params" in out
    code = run_cli(model.main, ["--config", "v3-671"])
    one_error(code, capsys.readouterr().err, "config 'v3-671' not found", "v3-671b")


def _bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(tp.ROOT, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_train_writes_results_only_with_out(capsys, tmp_path):
    results = os.path.join(tp.ROOT, "bench", "results")
    before = {f: os.path.getmtime(os.path.join(results, f)) for f in os.listdir(results)}
    bench = _bench("train")
    args = ["--config", "micro", "--steps", "1", "--warmup", "0", "--batch-size", "2", "--seq-len", "16"]
    assert run_cli(bench.main, args) == 0
    assert "| MFU |" in capsys.readouterr().out
    assert {f: os.path.getmtime(os.path.join(results, f)) for f in os.listdir(results)} == before
    out = tmp_path / "t.md"
    assert run_cli(bench.main, args + ["--out", str(out)]) == 0
    assert out.read_text().startswith("| quantity | value |")


def test_committed_bench_results_hold_no_machine_paths():
    results = os.path.join(tp.ROOT, "bench", "results")
    for f in os.listdir(results):
        if f.endswith(".md"):
            text = open(os.path.join(results, f)).read()
            assert "/tmp/" not in text and "/home/" not in text and tp.ROOT not in text, f
    assert _bench("grpo").shown_path("/tmp/x/runs/toy/pretrain/model.pt") == "runs/toy/pretrain/model.pt"


@pytest.mark.parametrize("name, sentence_end", [("kernels", "against log_softmax + gather."),
                                                ("sample", "KV bytes per token).")])
def test_bench_help_is_not_cut_mid_sentence(capsys, name, sentence_end):
    assert run_cli(_bench(name).main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert sentence_end in " ".join(out.split())
