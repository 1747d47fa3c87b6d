"""Configs: JSON presets in configs/, `--key value` overrides, and a strict check of every key before any work starts.

    python train_pipeline.py --stage zero --config toy --lr 1e-4 --model.dim 192 --eval.n_per_set=96

A config is plain data: one section per stage (pretrain, zero, cold_start, ...), a "model" section (model.ModelArgs),
an "eval" section and a few top-level keys. The RL stages (zero, reasoning_rl, all_rl) inherit every GRPO knob
from the "grpo" section and override what differs. A preset may start from another ("extends": "toy") and state
only what differs: its sections are merged key by key into the other's. Every key of a file and of the command
line is checked against the fields the code reads (SCHEMA): a typo is an error that names the file, the section
and the key, never a silently ignored setting. Every value is then checked against its allowed type and range (RULES: every
numeric key states one) and every section against the keys the code reads without a default (REQUIRED), and the
trainers' own dataclasses (grpo.GRPOConfig, sft.SFTConfig, model.ModelArgs) check how values relate, all before the
first stage starts: a bad value is one line naming the key and what it may be, never a traceback ten minutes in.
"""
import json
import math
import os
from dataclasses import dataclass, fields

from grpo import GRPOConfig
from model import ModelArgs
from sft import SFTConfig
from tokenizer import tokenizer_spec_error

ROOT = os.path.dirname(os.path.abspath(__file__))
RL_STAGES = ("zero", "reasoning_rl", "all_rl")

_MODEL = {f.name for f in fields(ModelArgs)}
_SFT = {f.name for f in fields(SFTConfig)}
_GRPO = {f.name for f in fields(GRPOConfig)}
_SAMPLING = {"samples_per_prompt", "keep_per_prompt", "temperature", "top_p", "max_new_tokens", "min_examples", "seed",
             "sample_batch_size", "compile_decode"}   # the last two: how the outputs are generated (distill.sample)
_SFT_SET = (_SFT - {"steps"}) | {"epochs", "tasks", "filters"} | _SAMPLING     # an SFT stage that builds its data
_RL = _GRPO | {"steps", "eval_every", "tasks"}
_FILTERS = {"ngram", "max_repeats", "max_paragraph_chars"}
ANY = None   # a section whose keys are names chosen by the user (task kinds, student names)

TOP_DEFAULTS = {"name": "", "tokenizer": "toy", "fsdp": False, "precision": "auto", "ckpt_every": 10, "runs_dir": "runs",
                "sandbox_allow_unisolated": False,   # run model code even where the sandbox gets no namespaces
                # real data (datasets_jsonl.py): the RL stages' training problems and the evaluation's problems
                # from JSONL files instead of the toy world ("" = the toy world); how to read them
                "data": "", "eval_data": "", "data_format": "auto", "bad_rows": "refuse"}
TOP_DEFAULTS["ep"] = 1   # expert parallelism: the routed experts sharded over groups of ep ranks (ep.py); 1 = off
TOP_DEFAULTS["_comment"] = ""   # what a preset is for (configs/*.json); read by people, not by the code
TOP_KEYS = set(TOP_DEFAULTS)                      # the top-level values (the other top-level keys are sections)
# section path -> the keys it may hold; "*" stands for a user-chosen name (a student).
SCHEMA = {
    "": TOP_KEYS | {"difficulty", "model", "pretrain", "eval", "grpo", "zero", "reward_models", "cold_start",
                    "reasoning_rl", "rejection_sft", "all_rl", "distill"},
    "model": _MODEL,
    "pretrain": _SFT | {"n_docs", "countdown_traces"},
    "eval": {"sets", "n_per_set", "n_during", "k", "temperature", "top_p", "max_new_tokens", "seed", "compile_decode",
             "batch_size"},
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
    "distill.students.*.pretrain": _SFT | {"n_docs", "countdown_traces"},
    "difficulty": ANY,
    "cold_start.filters": _FILTERS, "rejection_sft.filters": _FILTERS, "distill.filters": _FILTERS,
    "zero.tasks": ANY, "reasoning_rl.tasks": ANY, "all_rl.tasks": ANY, "cold_start.tasks": ANY,
    "rejection_sft.tasks": ANY, "distill.rl.tasks": ANY,
}


# ----------------------------------------------------------------------------------------- allowed values
@dataclass(frozen=True)
class Range:
    """A numeric key's type and allowed interval [lo, hi] (None: unbounded; open ends excluded). NaN and inf are
    never allowed. An int is accepted where a float is expected, never a bool (JSON true is not a number here)."""
    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v) -> bool:
        kinds = (int, float) if self.kind is float else (int,)
        if isinstance(v, bool) or not isinstance(v, kinds) or not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.lo is not None and self.hi is not None:
            return f"{what} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
        return what


@dataclass(frozen=True)
class OneOf:
    """A key with a few named values (or true/false)."""
    values: tuple

    def ok(self, v) -> bool:
        return any(v is x if isinstance(x, bool) else (type(v) is type(x) and v == x) for x in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(json.dumps(x) for x in self.values)


@dataclass(frozen=True)
class Kind:
    """A string or a list of strings, optionally from a known set (task kinds)."""
    list_of: bool = False
    choices: tuple | None = None

    def ok(self, v) -> bool:
        items = v if self.list_of else [v]
        if self.list_of and (not isinstance(v, list) or not v):
            return False
        return all(isinstance(x, str) and (self.choices is None or x in self.choices) for x in items)

    def describe(self) -> str:
        what = "a non-empty list of strings" if self.list_of else "a string"
        return what + (f" from: {', '.join(self.choices)}" if self.choices else "")


COUNT = Range(int, 1)             # sizes, steps, batch rows: at least one
COUNT0 = Range(int, 0)            # counts where 0 means none / off / automatic (see the key's comment)
SEED = Range(int, 0)
POSITIVE = Range(float, 0, lo_open=True)
NONNEG = Range(float, 0)
FRACTION = Range(float, 0, 1)
TOP_P = Range(float, 0, 1, lo_open=True)
BETA = Range(float, 0, 1, hi_open=True)   # Adam's moment decays
BOOL = OneOf((True, False))
_TASK_KINDS = ("arith", "countdown", "code")   # data.KINDS holds "general" too, which has no eval set

# key -> its allowed values, wherever the key appears (SECTION_RULES below: where a section differs). Every key of
# SCHEMA that holds a value (not a section) has a rule here; tests/test_config.py checks that none is missing.
RULES = {
    # top level
    "ep": COUNT,
    "_comment": Kind(),
    "name": Kind(), "tokenizer": Kind(), "runs_dir": Kind(), "fsdp": BOOL, "sandbox_allow_unisolated": BOOL,
    "data": Kind(), "eval_data": Kind(), "data_format": OneOf(("auto", "problems", "gsm8k", "math", "countdown")),
    "bad_rows": OneOf(("refuse", "skip")),
    "precision": OneOf(("auto", "bf16", "fp32")), "ckpt_every": COUNT,
    # model.ModelArgs (how they relate, e.g. n_dense_layers <= n_layers, is ModelArgs.__post_init__'s check)
    "vocab_size": COUNT, "dim": COUNT, "inter_dim": COUNT, "moe_inter_dim": COUNT, "n_layers": COUNT,
    "n_dense_layers": COUNT0, "n_heads": COUNT, "n_routed_experts": COUNT0, "n_shared_experts": COUNT0,
    "n_activated_experts": COUNT0, "n_expert_groups": COUNT0, "n_limited_groups": COUNT0,
    "score_func": OneOf(("sigmoid", "softmax")), "route_scale": POSITIVE, "q_lora_rank": COUNT0,
    "kv_lora_rank": COUNT, "qk_nope_head_dim": COUNT, "qk_rope_head_dim": Range(int, 2), "v_head_dim": COUNT,
    "max_seq_len": COUNT, "rope_theta": POSITIVE, "rope_factor": Range(float, 1), "original_seq_len": COUNT,
    "beta_fast": COUNT0, "beta_slow": COUNT0, "mscale": NONNEG, "mtp_depth": Range(int, 0, 1),
    "mtp_lambda": NONNEG, "bias_update_speed": NONNEG, "seq_aux_alpha": NONNEG,
    "activation_checkpointing": BOOL,
    # sft.SFTConfig (+ pretrain's corpus size, an SFT set's epochs)
    "steps": COUNT, "batch_size": COUNT, "grad_accum": COUNT, "seq_len": COUNT, "lr": POSITIVE,
    "min_lr_ratio": FRACTION, "warmup": COUNT0, "weight_decay": NONNEG, "beta1": BETA, "beta2": BETA,
    "grad_clip": NONNEG, "log_every": COUNT, "seed": SEED, "n_docs": COUNT, "epochs": POSITIVE,
    "countdown_traces": OneOf(("search", "scripted")),   # toyworld.COUNTDOWN_TRACES; "scripted": an ablation
    # grpo.GRPOConfig (+ an RL stage's schedule)
    "group_size": Range(int, 2), "prompts_per_step": COUNT, "max_new_tokens": COUNT, "temperature": POSITIVE,
    "top_p": TOP_P, "mu": COUNT, "n_minibatches": COUNT, "micro_batch_size": COUNT0, "beta": NONNEG,
    "kl_estimator": OneOf(("k1", "k2", "k3", "k3+")), "eps_low": NONNEG, "eps_high": NONNEG,
    "loss_agg": OneOf(("grpo", "dr_grpo", "dapo")), "dr_grpo_constant": COUNT0, "scale_rewards": OneOf(("group", "none")),
    "adv_eps": POSITIVE, "dynamic_sampling": BOOL, "mask_truncated": BOOL, "recompute_old": BOOL,
    "compile_decode": BOOL,
    "ref_update_every": COUNT0, "eval_every": COUNT, "n_general": COUNT0, "n_safety": COUNT0, "general_steps": COUNT0,
    # evaluation
    "sets": Kind(list_of=True, choices=_TASK_KINDS), "n_per_set": COUNT, "n_during": COUNT, "k": COUNT,
    # reward models
    "n_train": COUNT, "n_eval": COUNT, "eval_general": COUNT0, "eval_safety": COUNT0, "eval_k": COUNT,
    "eval_max_new_tokens": COUNT,
    # building an SFT set by rejection sampling
    "samples_per_prompt": COUNT, "keep_per_prompt": COUNT, "min_examples": COUNT0, "n": COUNT0, "sample_batch_size": COUNT,
    "rl_student": Kind(),
    # distill filters (distill.reject_reason)
    "ngram": COUNT, "max_repeats": COUNT, "max_paragraph_chars": COUNT,
}
# (section, key) -> a rule that differs from RULES[key]
SECTION_RULES = {
    ("eval", "temperature"): NONNEG,                 # evaluation may decode greedily (0)
    ("distill.rl", "steps"): COUNT0,                 # 0: as many steps as match the distillation's FLOPs
    ("distill.rl", "eval_every"): COUNT0,            #   (and one evaluation, at the end)
}
for _s in ("cold_start", "rejection_sft", "rejection_sft.general", "distill", "distill.general"):
    SECTION_RULES[(_s, "temperature")] = NONNEG     # sampling an SFT set may be greedy; GRPO needs temperature > 0
# the values of the sections whose keys the user names: task kind -> count, task kind -> difficulty levels
ANY_RULES = {"tasks": COUNT0, "difficulty": Kind()}

# section -> the keys the code reads from it without a default: a config file without one is an error naming it
_SAMPLED_SFT = {"tasks", "seed", "epochs", "batch_size", "seq_len", "samples_per_prompt", "temperature",
                "max_new_tokens", "min_examples"}
_RL_REQUIRED = {"steps", "eval_every", "tasks", "seed"}
REQUIRED = {
    "": {"model"},                                    # + "eval" for any training stage (check_values): the
                                                      #   shape-only presets (v2-lite, v3-671b) have no "eval"
    "eval": {"sets", "n_per_set", "k", "temperature", "top_p", "max_new_tokens", "seed"},
    "pretrain": {"n_docs", "seed", "seq_len"},
    "zero": _RL_REQUIRED, "reasoning_rl": _RL_REQUIRED,
    "all_rl": _RL_REQUIRED | {"n_general", "n_safety", "general_steps"},
    "reward_models": {"n_train", "n_eval", "seq_len", "seed", "eval_general", "eval_safety", "eval_max_new_tokens"},
    "cold_start": _SAMPLED_SFT,
    "rejection_sft": _SAMPLED_SFT | {"general"},
    "rejection_sft.general": {"n"},
    "distill": {"students", "rl_student", "samples_per_prompt", "temperature", "max_new_tokens", "min_examples",
                "general", "sft", "rl"},
    "distill.sft": {"epochs", "batch_size", "seq_len"},
    "distill.students.*": {"model"},
}


def rule_of(path: str, key: str):
    """The rule of key `key` in section `path` (None: a section, or a key without a value rule)."""
    pattern = _pattern(path)
    if _schema_of(path) is ANY:
        return ANY_RULES.get(pattern.split(".")[-1])
    return SECTION_RULES.get((pattern, key), RULES.get(key))


def check_config(cfg: dict, source: str, path: str = ""):
    """Every value against its rule and every section against REQUIRED: the first problem is an error naming the
    source, the key (section.key) and what it may be."""
    missing = sorted(REQUIRED.get(_pattern(path), set()) - set(cfg))
    if missing:
        where = f"section '{path}'" if path else "the top level"
        raise SystemExit(f"error: {source}: {where} is missing required key(s): {', '.join(missing)}")
    for key, value in cfg.items():
        where = f"{path}.{key}" if path else key
        if _pattern(where) in SCHEMA:                 # a section: its own keys and values
            if not isinstance(value, dict):
                raise SystemExit(f"error: {source}: '{where}' is a section (a JSON object), got {value!r}")
            check_config(value, source, where)
            continue
        rule = rule_of(path, key)
        if rule is None:
            continue
        if _pattern(path) == "difficulty":            # task kind -> a list of levels
            ok = isinstance(value, list) and all(COUNT.ok(x) for x in value)
            if not ok:
                raise SystemExit(f"error: {source}: {where} must be a list of levels (integers >= 1), "
                                 f"got {value!r}")
            continue
        if not rule.ok(value):
            raise SystemExit(f"error: {source}: {where} must be {rule.describe()}, got {json.dumps(value)}")


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


def load_config(name_or_path: str, _extending: tuple = ()) -> dict:
    """A preset name from configs/ (toy, micro, ...) or a path to a JSON file; its keys are checked (check_keys).
    _extending: the presets whose "extends" led here, to refuse a cycle."""
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
    if "extends" in cfg:                                    # {"extends": "toy", ...}: only what differs from toy
        base = cfg.pop("extends")
        if not isinstance(base, str) or len(_extending) > 8 or base in _extending:
            raise SystemExit(f"error: {path}: \"extends\" must name another preset, not a chain back to itself "
                             f"(got {base!r})")
        cfg = _merged(load_config(base, _extending + (base,)), cfg)
    check_keys(cfg, path)
    return cfg


def _merged(base: dict, over: dict) -> dict:
    """base with over's keys: a section (dict) in both is merged key by key, any other value is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


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


def check_values(cfg: dict, stages: list, source: str | None = None):
    """Check every value against its rule (check_config), then build every dataclass the given stages will build,
    so that a bad value fails now, in one line, and not after ten minutes of an earlier stage. source names the
    config in messages (default: its name)."""
    source = source or f"config '{cfg.get('name')}'"
    check_config(cfg, source)
    n_ep, world = cfg.get("ep", 1), int(os.environ.get("WORLD_SIZE", 1))
    if n_ep > 1:   # expert parallelism (ep.py): ep ranks share out every MoE layer's routed experts
        n_experts = cfg["model"].get("n_routed_experts", ModelArgs.n_routed_experts)
        for ok, why in ((n_experts % n_ep == 0, f"must divide model.n_routed_experts={n_experts}"),
                        (world % n_ep == 0, f"must divide the number of processes ({world}): launch with torchrun "
                                            f"--nproc_per_node={n_ep} (or a multiple)")):
            if not ok:
                raise SystemExit(f"error: {source}: ep={n_ep} {why}")
    if stages and "eval" not in cfg:
        raise SystemExit(f"error: {source}: the top level is missing required key(s): eval (every stage evaluates)")
    problem = tokenizer_spec_error(cfg.get("tokenizer", "toy"))
    if problem:
        raise SystemExit(f"error: {source}: tokenizer: {problem}")
    for key in ("data", "eval_data"):     # read later by datasets_jsonl (a bad row is reported there)
        if cfg.get(key) and not os.path.isfile(cfg[key]):
            raise SystemExit(f"error: {source}: {key}: no file {cfg[key]} (a JSONL file of problems, see "
                             f"datasets_jsonl.py)")
    if cfg.get("all_rl", {}).get("general_steps", 0) > cfg.get("all_rl", {}).get("steps", 0):
        raise SystemExit(f"error: {source}: all_rl.general_steps must be <= all_rl.steps "
                         f"({cfg['all_rl']['general_steps']} > {cfg['all_rl']['steps']})")
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
        raise SystemExit(f"error: {source}: {e}") from None
