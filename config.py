"""Configs: JSON presets in configs/, `--key value` overrides, and a strict check of every key before any work starts.

    python train_pipeline.py --stage zero --config toy --lr 1e-4 --model.dim 192 --eval.n_per_set=96

A config is plain data: one section per stage (pretrain, zero, cold_start, ...), a "model" section (model.ModelArgs),
an "eval" section and a few top-level keys. The RL stages (zero, reasoning_rl, all_rl) inherit every GRPO knob
from the "grpo" section and override what differs. Every key of a file and of the command line is checked
against the fields the code reads (SCHEMA): a typo is an error that names the file, the section and the key,
never a silently ignored setting. Values are checked by the trainers' own dataclasses (grpo.GRPOConfig,
sft.SFTConfig, model.ModelArgs) before the first stage starts.
"""
import json
import os
from dataclasses import fields

from grpo import GRPOConfig
from model import ModelArgs
from sft import SFTConfig

ROOT = os.path.dirname(os.path.abspath(__file__))
RL_STAGES = ("zero", "reasoning_rl", "all_rl")

_MODEL = {f.name for f in fields(ModelArgs)}
_SFT = {f.name for f in fields(SFTConfig)}
_GRPO = {f.name for f in fields(GRPOConfig)}
_SAMPLING = {"samples_per_prompt", "keep_per_prompt", "temperature", "top_p", "max_new_tokens", "min_examples", "seed"}
_SFT_SET = (_SFT - {"steps"}) | {"epochs", "tasks", "filters"} | _SAMPLING     # an SFT stage that builds its data
_RL = _GRPO | {"steps", "eval_every", "tasks"}
_FILTERS = {"ngram", "max_repeats", "max_paragraph_chars"}
ANY = None   # a section whose keys are names chosen by the user (task kinds, student names)

TOP_DEFAULTS = {"name": "", "tokenizer": "toy", "fsdp": False, "precision": "auto", "ckpt_every": 10, "runs_dir": "runs"}
TOP_KEYS = set(TOP_DEFAULTS)                      # the top-level values (the other top-level keys are sections)
# section path -> the keys it may hold; "*" stands for a user-chosen name (a student).
SCHEMA = {
    "": TOP_KEYS | {"difficulty", "model", "pretrain", "eval", "grpo", "zero", "reward_models", "cold_start",
                    "reasoning_rl", "rejection_sft", "all_rl", "distill"},
    "model": _MODEL,
    "pretrain": _SFT | {"n_docs"},
    "eval": {"sets", "n_per_set", "n_during", "k", "temperature", "top_p", "max_new_tokens", "seed"},
    "grpo": _GRPO,
    "zero": _RL,
    "reasoning_rl": _RL,
    "all_rl": _RL | {"n_general", "n_safety", "general_steps"},
    "reward_models": _SFT | {"n_train", "n_eval", "eval_general", "eval_safety", "eval_k", "eval_max_new_tokens"},
    "cold_start": _SFT_SET,
    "rejection_sft": _SFT_SET | {"general"},
    "rejection_sft.general": {"n"} | _SAMPLING,
    "distill": _SAMPLING | {"students", "rl_student", "filters", "general", "sft", "rl"},
    "distill.general": _SAMPLING,
    "distill.sft": (_SFT - {"steps"}) | {"epochs"},
    "distill.rl": _RL,
    "distill.students": ANY,
    "distill.students.*": {"model", "pretrain"},
    "distill.students.*.model": _MODEL,
    "distill.students.*.pretrain": _SFT | {"n_docs"},
    "difficulty": ANY,
    "cold_start.filters": _FILTERS, "rejection_sft.filters": _FILTERS, "distill.filters": _FILTERS,
    "zero.tasks": ANY, "reasoning_rl.tasks": ANY, "all_rl.tasks": ANY, "cold_start.tasks": ANY,
    "rejection_sft.tasks": ANY, "distill.rl.tasks": ANY,
}


def _pattern(path: str) -> str:
    """A section's SCHEMA key: "distill.students.s.model" -> "distill.students.*.model"."""
    parts = path.split(".") if path else []
    if len(parts) >= 3 and parts[:2] == ["distill", "students"]:
        parts[2] = "*"
    return ".".join(parts)


def _schema_of(path: str):
    return SCHEMA.get(_pattern(path), ANY)


def check_keys(cfg: dict, source: str, path: str = ""):
    """Every key of every section must be one the code reads: an unknown one is an error naming file, section, key."""
    allowed = _schema_of(path)
    for key, value in cfg.items():
        where = f"{path}.{key}" if path else key
        if allowed is not ANY and key not in allowed:
            section = f"section '{path}'" if path else "the top level"
            raise SystemExit(f"error: {source}: unknown key '{where}'; {section} takes: {', '.join(sorted(allowed))}")
        if isinstance(value, dict) and _pattern(where) in SCHEMA:
            check_keys(value, source, where)


def load_config(name_or_path: str) -> dict:
    """A preset name from configs/ (toy, micro, ...) or a path to a JSON file; its keys are checked (check_keys)."""
    path = name_or_path if name_or_path.endswith(".json") else os.path.join(ROOT, "configs", name_or_path + ".json")
    if not os.path.exists(path):
        presets = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".json"))
        raise SystemExit(f"error: config '{name_or_path}' not found ({path}); presets: {', '.join(presets)}")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(cfg, dict):
        raise SystemExit(f"error: {path}: a config is a JSON object, got {type(cfg).__name__}")
    check_keys(cfg, path)
    return cfg


def _parse_value(key: str, raw: str, old):
    """Parse `raw` to the type of the config's current value `old`; a mismatch names the key."""
    try:
        if isinstance(old, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if isinstance(old, int):
            return int(raw)
        if isinstance(old, float):
            return float(raw)
        if isinstance(old, (list, dict)) or old is None:
            return json.loads(raw)
        return raw
    except ValueError:
        raise SystemExit(f"error: --{key} expects a {type(old).__name__} (like {old!r}), got {raw!r}") from None


def _split_pairs(args: list) -> list:
    """["--a", "1", "--b=2"] -> [("--a", "1"), ("--b", "2")]."""
    pairs, i = [], 0
    while i < len(args):
        flag = args[i]
        if not flag.startswith("--"):
            raise SystemExit(f"error: expected --key before {flag!r}")
        if "=" in flag:
            pairs.append(tuple(flag.split("=", 1)))
            i += 1
        elif i + 1 < len(args):
            pairs.append((flag, args[i + 1]))
            i += 2
        else:
            raise SystemExit(f"error: override {flag!r} has no value (use --key value)")
    return pairs


def _default(section: str, name: str):
    """The value a key takes when its section does not set it (the dataclass default): the type to parse to."""
    if section == "":
        return TOP_DEFAULTS.get(name)
    if section == "model":
        return getattr(ModelArgs(), name, None)
    for cls, keys in ((GRPOConfig, _GRPO), (SFTConfig, _SFT)):
        if name in keys:
            return getattr(cls(), name)
    return None


def apply_overrides(cfg: dict, stage: str, args: list) -> dict:
    """Apply `--key value` (or `--key=value`) overrides to cfg in place. `--section.key` names the key exactly; a
    bare key is looked up in the stage's section (keys the stage may set, e.g. an RL stage's GRPO knobs, count),
    then in "model", then at the top level."""
    for flag, raw in _split_pairs(args):
        key = flag[2:].replace("-", "_")
        if "." in key:
            section, name = key.rsplit(".", 1)
            where = cfg
            for part in section.split("."):
                if not isinstance(where.get(part), dict):
                    raise SystemExit(f"error: unknown config section '{section}' in --{key}")
                where = where[part]
            allowed = _schema_of(section)
            if allowed is not ANY and name not in allowed:
                raise SystemExit(f"error: unknown config key '{key}'; '{section}' takes: {', '.join(sorted(allowed))}")
        else:
            name = key
            for section, where in ((stage, cfg.get(stage)), ("model", cfg.get("model")), ("", cfg)):
                allowed = _schema_of(section) if section else TOP_KEYS
                if isinstance(where, dict) and (name in where or (allowed is not ANY and name in allowed)) \
                        and not isinstance(where.get(name), dict):
                    break
            else:
                raise SystemExit(f"error: unknown config key '{key}' (not in '{stage}', 'model' or the top level)")
        old = where.get(name, cfg.get("grpo", {}).get(name) if section in RL_STAGES else None)
        where[name] = _parse_value(key, raw, old if old is not None else _default(section.split(".")[-1], name))
    return cfg


def resolve(cfg: dict) -> dict:
    """Each RL stage's section over the shared "grpo" section (the stage's own keys win)."""
    base = cfg.get("grpo", {})
    for stage in RL_STAGES:
        if stage in cfg:
            cfg[stage] = {**base, **cfg[stage]}
    return cfg


def section_config(cls, cfg: dict, section: dict, **fixed):
    """A trainer's dataclass (sft.SFTConfig, grpo.GRPOConfig) from the section's keys it knows; the config's
    top-level "precision" (common.autocast) applies unless the section sets its own."""
    kw = {"precision": cfg.get("precision", "auto")}
    kw.update({k: v for k, v in section.items() if k in cls.__dataclass_fields__})
    return cls(**{**kw, **fixed})


def check_values(cfg: dict, stages: list):
    """Build every dataclass the given stages will build, so that a bad value fails now, in one line, and not
    after ten minutes of an earlier stage."""
    try:
        ModelArgs(**cfg["model"])
        for stage in stages:
            section = cfg.get(stage)
            if stage in RL_STAGES:
                section_config(GRPOConfig, cfg, section)
            elif stage in ("pretrain", "reward_models"):
                section_config(SFTConfig, cfg, section)
            elif stage in ("cold_start", "rejection_sft"):
                section_config(SFTConfig, cfg, section, steps=1)
            elif stage == "distill":
                section_config(SFTConfig, cfg, section["sft"], steps=1)
                section_config(GRPOConfig, cfg, {**cfg["zero"], **section["rl"]})
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: config '{cfg.get('name')}': {e}") from None
