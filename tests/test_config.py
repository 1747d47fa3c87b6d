"""Tests for config.py: presets load, every key is checked, overrides find their section, the "grpo" base section.

    python -m pytest -q tests/test_config.py
"""
import json
import os

import pytest

import config
import train_pipeline as tp

PRESETS = sorted(f[:-5] for f in os.listdir(os.path.join(config.ROOT, "configs")) if f.endswith(".json"))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_its_values_check(name):
    cfg = config.resolve(config.load_config(name))
    stages = [s for s in tp.STAGES if s in cfg]
    config.check_values(cfg, stages)


def write(tmp_path, cfg, name="c.json"):
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return str(path)


@pytest.mark.parametrize("where, key", [((), "nmae"), (("zero",), "lrr"), (("model",), "dimm"),
                                        (("distill", "students", "s", "model"), "n_layer"),
                                        (("rejection_sft", "general"), "temprature"),
                                        (("distill", "sft"), "epoch")])
def test_an_unknown_key_names_the_file_the_section_and_the_key(tmp_path, where, key):
    cfg = config.load_config("micro")
    section = cfg
    for w in where:
        section = section[w]
    section[key] = 1
    path = write(tmp_path, cfg)
    with pytest.raises(SystemExit) as e:
        config.load_config(path)
    msg = str(e.value)
    assert path in msg and ".".join((*where, key)) in msg and "\n" not in msg


def test_a_malformed_file_is_a_one_line_error(tmp_path):
    path = write(tmp_path, '{"name": "x",\n "model": {')
    with pytest.raises(SystemExit, match=r"c\.json:2:.*not valid JSON"):
        config.load_config(path)
    with pytest.raises(SystemExit, match="a config is a JSON object"):
        config.load_config(write(tmp_path, "[1, 2]"))


def test_a_preset_extends_another_with_only_what_differs(tmp_path):
    """configs/toy24.json is the toy config with the overrides docs/toy_run_24 was made with, and 3000 pretraining
    steps (docs/toy_run_24_p3k); an extending file's typo, a missing base and a cycle are one-line errors."""
    toy24 = config.load_config("toy24")
    toy = config.apply_overrides(config.load_config("toy"), "zero", [
        "--difficulty.countdown", "[3]", "--model.max_seq_len", "1024", "--pretrain.seq_len", "1024",
        "--pretrain.batch_size", "4", "--pretrain.steps", "3000", "--grpo.max_new_tokens", "768", "--eval.max_new_tokens", "768"])
    assert toy24.pop("name") == "toy24" and toy.pop("name") == "toy" and toy24 == toy
    assert toy24["difficulty"]["arith"] == [1, 2]                    # sections merge key by key
    path = write(tmp_path, {"extends": "toy", "pretrain": {"seqlen": 1}})
    with pytest.raises(SystemExit, match=f"{path}.*pretrain.seqlen"):
        config.load_config(path)
    with pytest.raises(SystemExit, match="config 'toy_nope' not found"):
        config.load_config(write(tmp_path, {"extends": "toy_nope"}))
    a, b = str(tmp_path / "a.json"), str(tmp_path / "b.json")
    write(tmp_path, {"extends": b}, "a.json")
    write(tmp_path, {"extends": a}, "b.json")
    with pytest.raises(SystemExit, match="chain back to itself"):
        config.load_config(a)


def test_rl_stages_inherit_the_grpo_section_and_override_it():
    cfg = config.load_config("micro")
    assert "lr" not in cfg["zero"] and cfg["all_rl"]["temperature"] == 0.7
    cfg = config.resolve(config.apply_overrides(cfg, "zero", ["--lr", "0.5"]))
    assert cfg["zero"]["lr"] == 0.5                               # a bare key goes to the stage's own section
    assert cfg["reasoning_rl"]["lr"] == cfg["grpo"]["lr"] == 0.0001   # the others keep the shared value
    assert cfg["all_rl"]["temperature"] == 0.7 and cfg["zero"]["temperature"] == cfg["grpo"]["temperature"]


def test_overrides_accept_key_equals_value_and_check_types():
    cfg = config.apply_overrides(config.load_config("micro"), "pretrain",
                                 ["--steps=7", "--model.dim", "48", "--eval.sets=[\"arith\"]"])
    assert cfg["pretrain"]["steps"] == 7 and cfg["model"]["dim"] == 48 and cfg["eval"]["sets"] == ["arith"]
    with pytest.raises(SystemExit, match="--steps expects a int"):
        config.apply_overrides(cfg, "pretrain", ["--steps", "many"])
    with pytest.raises(SystemExit, match="unknown config key 'stepz'"):
        config.apply_overrides(cfg, "pretrain", ["--stepz", "1"])
    with pytest.raises(SystemExit, match="has no value"):
        config.apply_overrides(cfg, "pretrain", ["--steps"])


def test_every_value_key_has_a_stated_rule():
    """Every key of SCHEMA that holds a value (not a section) has a type and range in RULES or SECTION_RULES."""
    for path, keys in config.SCHEMA.items():
        if keys is config.ANY:
            continue
        where = path.replace("*", "s")                          # a student's sections, under a name
        for key in keys:
            if (f"{path}.{key}" if path else key) in config.SCHEMA:   # a section, not a value
                continue
            assert config.rule_of(where, key) is not None, f"{path}.{key}"


@pytest.mark.parametrize("key, value, words", [
    ("lr", float("nan"), "a finite number > 0"), ("lr", 0, "a finite number > 0"),
    ("batch_size", 0, "an integer >= 1"), ("batch_size", 2.5, "an integer >= 1"), ("batch_size", True, "integer"),
    ("min_lr_ratio", 1.5, "in [0, 1]"), ("precision", "fp16", 'one of "auto", "bf16", "fp32"'),
    ("countdown_traces", "random", 'one of "search", "scripted"')])
def test_a_value_out_of_range_names_the_key_and_its_range(key, value, words):
    cfg = config.load_config("micro")
    cfg["pretrain"][key] = value
    with pytest.raises(SystemExit) as e:
        config.check_values(cfg, ["pretrain"], "c.json")
    msg = str(e.value)
    assert msg.startswith(f"error: c.json: pretrain.{key} must be ") and words in msg and "\n" not in msg


def test_bad_values_fail_before_any_work(tmp_path, capsys):
    for bad in (["--group_size", "1"], ["--lr", "-1"], ["--kl_estimator", "k9"]):
        with pytest.raises(SystemExit, match="error: config"):
            tp.main(["--stage", "zero", "--config", "micro", "--runs_dir", str(tmp_path), *bad])
    assert not (tmp_path / "micro").exists()                       # nothing was built or written
