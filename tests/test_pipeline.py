"""The R1 pipeline (train_pipeline.py's stages) on the micro config.

    python -m pytest -q tests/test_pipeline.py

What is checked: every stage runs end to end (`--stage all`), a killed run resumes (mid-RL from its checkpoint, a
killed SFT stage from its cached data) and finished stages are skipped (`--force` redoes them); a stage started
without its input names the missing stage and the command that builds it; the students are dense; the report has
a row per model; the all-scenario reward masks the other scenario.
"""
import math
import os

import pytest

import data
import distill
import grpo
import sft
import tokenizer
import train_pipeline as tp
from common import read_json, read_jsonl
from model import MoE

MICRO = os.path.join(tp.ROOT, "configs", "micro.json")
SEP = tokenizer.SEP


pytestmark = pytest.mark.usefixtures("one_thread")


def run(stage, runs, name="t", *extra):
    tp.main(["--stage", stage, "--config", MICRO, "--name", name, "--runs_dir", str(runs), *extra])


def test_only_masks_other_scenarios():
    """A scenario's reward is NaN ("does not apply") on the other rows: it adds 0 to their reward, and the logged
    mean of each part is taken over the rows it applies to (no part drops because the other scenario joined)."""
    f = tp.only(("general",), lambda prompts, completions, **c: [0.5] * len(completions))
    out = f(["a", "b", "c"], ["x", "y", "z"], task=["arith", "general", "safety"])
    assert math.isnan(out[0]) and out[1] == 0.5 and math.isnan(out[2])
    fmt = tp.only(("arith",), lambda prompts, completions, **c: [1.0] * len(completions))
    total, parts = grpo.score({"helpful": (f, 1.0), "format": (fmt, 1.0)}, ["a", "b", "c"], ["x", "y", "z"],
                              {"task": ["arith", "general", "safety"]})
    assert total.tolist() == [1.0, 0.5, 0.0]
    assert parts["helpful"].nansum() / (~parts["helpful"].isnan()).sum() == 0.5


# ========================================================================================= the pipeline
def test_missing_input_names_the_stage_and_its_command(tmp_path):
    with pytest.raises(SystemExit) as e:
        run("cold_start", tmp_path)
    msg = str(e.value)
    # the command that builds it: this run's --config, --name and --runs_dir (the name is not a config)
    assert "'zero' stage" in msg and f"python train_pipeline.py --stage zero --config {MICRO} --name t" in msg
    with pytest.raises(SystemExit) as e:
        run("all_rl", tmp_path)
    msg = str(e.value)
    assert "'reward_models' stage" in msg and "--stage reward_models" in msg


def test_students_must_be_dense():
    cfg = tp.load_config(MICRO)
    cfg["distill"]["students"]["s"]["model"]["n_dense_layers"] = 0
    with pytest.raises(SystemExit, match="dense"):
        tp.student_cfg(cfg, "s")


def test_all_stages_end_to_end_kill_resume_skip_force(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    d = runs / "t"

    # 1. killed inside reasoning_rl (the first chat-format RL stage) at its second step, after its first ckpt
    real_step = grpo.grpo_step

    def dying_step(*a, **k):
        if k.get("prompt_fn") is data.chat_task_prompt and a[7] == 1:
            raise KeyboardInterrupt("killed")
        return real_step(*a, **k)
    monkeypatch.setattr(grpo, "grpo_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run("all", runs)
    monkeypatch.setattr(grpo, "grpo_step", real_step)
    assert (d / "cold_start" / "model.pt").exists() and not (d / "reasoning_rl" / "model.pt").exists()
    done = {p: os.path.getmtime(d / p / "model.pt") for p in ("pretrain", "rm_helpful", "zero", "cold_start")}

    # 2. killed inside rejection_sft's SFT, after its data set was written
    real_train = sft.train

    def dying_train(*a, **k):
        if k.get("desc") == "rejection_sft":
            raise KeyboardInterrupt("killed")
        return real_train(*a, **k)
    monkeypatch.setattr(sft, "train", dying_train)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        run("all", runs)
    monkeypatch.setattr(sft, "train", real_train)
    out = capsys.readouterr().out
    assert "resumed reasoning_rl" in out and "at step 1" in out
    assert "[all] pretrain: finished, skipping" in out and "[all] cold_start: finished, skipping" in out
    assert (d / "rejection_sft" / "data.jsonl").exists() and not (d / "rejection_sft" / "model.pt").exists()

    # 3. the rest: the cached SFT set is reused, nothing finished is redone
    run("all", runs)
    out = capsys.readouterr().out
    assert "rejection_sft: reusing" in out
    assert all(os.path.getmtime(d / p / "model.pt") == t for p, t in done.items())
    cfg = tp.apply_overrides(tp.load_config(MICRO), "all", ["--runs_dir", str(runs)])
    cfg["name"] = "t"
    for stage in tp.STAGES:
        assert tp.finished(cfg, stage), stage
    for p in tp.model_products(cfg):
        res = read_json(str(d / p / "eval.json"))
        assert {"arith", "countdown", "general", "safety"} <= set(res), p
        assert {"pass@1", "cons@2", "format", "language", "mixed", "length"} <= set(res["arith"])
        assert "helpful" in res["general"] and "violation" in res["safety"]
    for name in ("s", "m"):                                   # the students are dense (no MoE block)
        student = tp.load_stage_model(cfg, f"distill_{name}", "cpu")
        assert student.args.n_dense_layers == student.args.n_layers
        assert not any(isinstance(m, MoE) for m in student.modules())
    teacher = tp.load_stage_model(cfg, "all_rl", "cpu")
    assert any(isinstance(m, MoE) for m in teacher.modules())
    for stage in ("cold_start", "rejection_sft", "distill"):
        recs = read_jsonl(str(d / stage / "data.jsonl"))
        assert recs and all(r["prompt"].startswith(tokenizer.USER) and r["prompt"].endswith(tokenizer.ASSISTANT)
                            for r in recs)
        assert all(distill.format_ok(r["completion"], "cold_start") for r in recs if r["task"] in distill.REASONING)
    comp = read_json(str(d / "distill" / "compute.json"))
    assert comp["rl_steps"] >= 1 and comp["distill_flops"] > 0 and comp["rl_flops"] > 0
    report = (d / "report.md").read_text()
    for row in ("base (V3-toy)", "R1-Zero", "Step1 (cold start)", "Step2 (reasoning RL)", "Step3 (rejection SFT)",
                "R1 (all-scenario RL)", "student s distilled", "student m distilled", "student s RL-only"):
        assert f"| {row} |" in report, row
    for col in ("arith pass@1", "countdown cons@2", "format", "language", "mixed", "helpful RM", "unsafe",
                "length", "rm_helpful", "Language mixing, R1-Zero -> Step2"):
        assert col in report, col

    (d / "report.md").unlink()                              # --stage report rewrites it from the run alone
    run("report", runs)
    assert (d / "report.md").read_text() == report

    # 4. everything finished: skipped; --force redoes a stage
    run("all", runs)
    assert "[all] distill: finished, skipping" in capsys.readouterr().out
    assert all(os.path.getmtime(d / p / "model.pt") == t for p, t in done.items())
    before = os.path.getmtime(d / "rm_safety" / "model.pt")
    with pytest.raises(SystemExit, match="'reward_models' stage of run 't' is already finished.*add --force"):
        run("reward_models", runs)                           # a finished stage alone is refused, untouched
    assert os.path.getmtime(d / "rm_safety" / "model.pt") == before
    run("reward_models", runs, "t", "--force")
    assert os.path.getmtime(d / "rm_safety" / "model.pt") > before
