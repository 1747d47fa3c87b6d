"""minR1's command line: every stage of the DeepSeek-R1 pipeline (R1 §2), its evaluation and the run report.

    python train_pipeline.py --stage pretrain --config toy               # the toy base model "V3-toy"
    python train_pipeline.py --stage zero --config toy                   # R1-Zero: GRPO + rule rewards
    python train_pipeline.py --stage reward_models --config toy          # helpfulness + safety RMs (R1 §2.3.4)
    python train_pipeline.py --stage cold_start --config toy             # Step1 (R1 §2.3.1)
    python train_pipeline.py --stage reasoning_rl --config toy           # Step2 (R1 §2.3.2)
    python train_pipeline.py --stage rejection_sft --config toy          # Step3 (R1 §2.3.3)
    python train_pipeline.py --stage all_rl --config toy                 # R1 (R1 §2.3.4)
    python train_pipeline.py --stage distill --config toy                # dense students + RL-only (R1 §2.4)
    python train_pipeline.py --stage all --config toy                    # every stage; skips finished ones,
                                                                         #   resumes a killed run; --force redoes
    torchrun --nproc_per_node=2 train_pipeline.py --stage pretrain --config toy --steps 50
    python train_pipeline.py --stage pretrain --config toy --lr 1e-3 --model.dim 192   # overrides

--config is a preset name from configs/ (toy, laptop, node, ...) or a path to a JSON file. Any config value can
be overridden with `--key value`: a bare key is looked up in the stage's section, then in "model", then at the
top level; `--section.key value` names it exactly. An unknown key or a value of the wrong type is an error that
names it. Each stage writes runs/<name>/<stage>/ (model.pt + config.json, metrics.jsonl, samples.jsonl,
eval.json, plots/) and refreshes runs/<name>/report.md.
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
from collections import Counter
from dataclasses import asdict

import torch
from tqdm import tqdm

import data
import distill
import tokenizer
import toychat
from common import (MetricsLogger, barrier, cleanup_distributed, get_rng_state, load_checkpoint, load_model_state_dict,
                    load_optimizer_state_dict, model_state_dict, optimizer_state_dict, plot_metrics, print0,
                    save_checkpoint, set_rng_state, setup_distributed, unwrap, wrap_model)
from model import ModelArgs, Transformer
from rewards import (RewardModelReward, accuracy_reward, cold_start_format_reward, extract_answer, format_reward,
                     language_reward)
from sample import generate

ROOT = os.path.dirname(os.path.abspath(__file__))
# `--stage all` runs these in order. reward_models needs only the base model, so it runs early: every model
# after it is scored by the reward models in its own evaluation (and the base model is scored by the stage).
STAGES = ["pretrain", "reward_models", "zero", "cold_start", "reasoning_rl", "rejection_sft", "all_rl", "distill"]
BUILDS = {"zero": "pretrain",          # stage -> the stage whose checkpoint (or outputs) it starts from
          "reward_models": "pretrain", "cold_start": "zero", "reasoning_rl": "cold_start",
          "rejection_sft": "reasoning_rl", "all_rl": "rejection_sft", "distill": "all_rl"}
REFLECTIVE = ("wait", "check", "等等", "检查")   # the "aha moment" words whose frequency RL is watched for


# ---------------------------------------------------------------------------------------------- configuration
def load_config(name_or_path: str) -> dict:
    path = name_or_path if name_or_path.endswith(".json") else os.path.join(ROOT, "configs", name_or_path + ".json")
    if not os.path.exists(path):
        presets = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".json"))
        raise SystemExit(f"error: config '{name_or_path}' not found ({path}); presets: {', '.join(presets)}")
    with open(path) as f:
        return json.load(f)


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
        raise SystemExit(f"error: --{key} expects a {type(old).__name__} (like {old!r}), got {raw!r}")


def apply_overrides(cfg: dict, stage: str, pairs: list[str]) -> dict:
    """Apply `--key value` pairs to cfg in place (see the module docstring for how keys are found)."""
    if len(pairs) % 2:
        raise SystemExit(f"error: override {pairs[-1]!r} has no value (use --key value)")
    model_fields = set(ModelArgs.__dataclass_fields__)
    for flag, raw in zip(pairs[::2], pairs[1::2]):
        if not flag.startswith("--"):
            raise SystemExit(f"error: expected --key before {flag!r}")
        key = flag[2:].replace("-", "_")
        if "." in key:
            section, name = key.split(".", 1)
            if section not in cfg or not isinstance(cfg[section], dict):
                raise SystemExit(f"error: unknown config section '{section}' in --{key}")
            where = cfg[section]
            if name not in where and not (section == "model" and name in model_fields):
                raise SystemExit(f"error: unknown config key '{key}'; '{section}' has: {', '.join(sorted(where))}")
        else:
            name = key
            for where in (cfg.get(stage, {}), cfg.get("model", {}), cfg):
                if name in where and not isinstance(where[name], dict):
                    break
            else:
                raise SystemExit(f"error: unknown config key '{key}' (not in '{stage}', 'model' or the top level)")
        old = where.get(name, getattr(ModelArgs(), name, None))
        where[name] = _parse_value(key, raw, old)
    return cfg


# ------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, tok, sets: dict, *, k: int, temperature: float, top_p: float, max_new_tokens: int,
             dist, batch_size: int = 64, prompt_fn=data.r1zero_prompt, n_samples: int = 4, style: str = "r1zero"):
    """R1 §3's protocol on held-out sets: k samples per question at temperature 0.6 / top-p 0.95 (no greedy).

    pass@1 = mean correctness over the k samples; pass@k = some sample correct; cons@k = the majority answer
    (over the k extracted final answers) correct. Also the format rate, language consistency, mean response
    length, the reflective-word rate and the language-mixing rate (share of CoTs with a word of another language,
    distill.mixed_language). style: the layout the format rate checks ("r1zero" | "cold_start"). Questions are
    split over ranks and the sums reduced.
    Returns (metrics: set -> dict, samples: a few rollouts for samples.jsonl)."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    results, samples = {}, []
    for name, tasks in sets.items():
        mine = tasks[dist.rank::dist.world_size]
        sums = torch.zeros(9, dtype=torch.float64)
        per = max(1, batch_size // k)                            # questions per generate() call
        for i in tqdm(range(0, len(mine), per), desc=f"eval {name}", disable=not dist.is_main, leave=False):
            chunk = mine[i:i + per]
            prompts = [prompt_fn(t) for t in chunk for _ in range(k)]
            cols = {c: [t.get(c) for t in chunk for _ in range(k)] for c in ("answer", "task", "nums", "target",
                                                                            "tests", "entry", "lang")}
            gen = generate(model, [tok.encode(p) for p in prompts], max_new_tokens, temperature=temperature,
                           top_p=top_p, eos_id=tok.eos_id, pad_id=tok.pad_id,
                           seed=1000 * dist.rank + i)
            texts = [tok.decode(gen.tokens[j, :gen.lengths[j]].tolist()).replace("<|endoftext|>", "")
                     for j in range(len(prompts))]
            acc = accuracy_reward(prompts, texts, **cols)
            fmt = format_reward(prompts, texts, style=style)
            lang = language_reward(prompts, texts, **cols)
            for q in range(len(chunk)):
                a = acc[q * k:(q + 1) * k]
                answers = [extract_answer(t) for t in texts[q * k:(q + 1) * k]]
                votes = Counter(x.strip() for x in answers if x is not None and x.strip())
                cons = 0.0
                if votes:
                    top = votes.most_common(1)[0][0]
                    cons = float(next(a[j] for j in range(k) if answers[j] is not None and answers[j].strip() == top))
                sums += torch.tensor([sum(a) / k, float(max(a) > 0.999), cons, 1.0, 0, 0, 0, 0, 0], dtype=torch.float64)
            sums[4] += sum(fmt)
            sums[5] += sum(lang)
            sums[6] += gen.lengths.sum().item()
            sums[7] += sum(any(w in t.lower() for w in REFLECTIVE) for t in texts)
            sums[8] += sum(distill.mixed_language(t, lg or "en") for t, lg in zip(texts, cols["lang"]))
            if dist.is_main and len(samples) < n_samples * (list(sets).index(name) + 1):
                samples += [{"set": name, "prompt": chunk[0]["prompt"], "answer": chunk[0]["answer"],
                             "completion": texts[0], "correct": acc[0]}]
        if dist.world_size > 1:
            torch.distributed.all_reduce(sums)
        nq, ns = max(sums[3].item(), 1), max(sums[3].item() * k, 1)
        results[name] = {"pass@1": sums[0].item() / nq, f"pass@{k}": sums[1].item() / nq,
                         f"cons@{k}": sums[2].item() / nq, "format": sums[4].item() / ns,
                         "language": sums[5].item() / ns, "length": sums[6].item() / ns,
                         "reflect": sums[7].item() / ns, "mixed": sums[8].item() / ns, "n": int(sums[3].item())}
    model.train(was_training)
    return results, samples


def task_pool(counts: dict, seed: int, split: str = "train", difficulty: dict | None = None) -> list:
    """{"arith": n, "countdown": n, ...} -> task dicts (data.make_tasks), drawn evenly from the difficulty
    levels that `difficulty` lists for a kind ({"arith": [1, 2]}; a kind not listed: every level)."""
    out = []
    for kind, n in counts.items():
        levels = (difficulty or {}).get(kind) or [None]
        for i, level in enumerate(levels):
            k = n // len(levels) + (i < n % len(levels))
            out += data.make_tasks(kind, k, seed=seed + 7 * i, split=split, difficulty=level)
    return out


def eval_sets(cfg: dict) -> dict:
    """The held-out reasoning sets (split "eval": problems never seen in training), one per kind."""
    e = cfg["eval"]
    return {name: task_pool({name: e["n_per_set"]}, e["seed"], "eval", cfg.get("difficulty"))
            for name in e["sets"]}


def chat_task_prompt(task) -> str:
    """The prompt of every stage after R1-Zero: the chat format <|user|>question<|assistant|>."""
    return data.chat_prompt(task["prompt"] if isinstance(task, dict) else task)


# A model's format: (prompt_fn, the layout its format rate checks). R1-Zero and the bases answer the R1-Zero
# template (R1 Table 1); from the cold start on, models answer chat prompts in the cold-start layout (R1 §2.3.1).
FORMATS = {"r1zero": (data.r1zero_prompt, "r1zero"), "chat": (chat_task_prompt, "cold_start")}


def run_eval(model, tok, cfg, dist, fmt="r1zero"):
    e = cfg["eval"]
    prompt_fn, style = FORMATS[fmt]
    return evaluate(model, tok, eval_sets(cfg), k=e["k"], temperature=e["temperature"], top_p=e["top_p"],
                    max_new_tokens=e["max_new_tokens"], dist=dist, prompt_fn=prompt_fn, style=style)


# ------------------------------------------------------------------------------------------------ run folder
def run_dir(cfg):
    """runs/<name>/; a top-level "runs_dir" config key puts runs/ elsewhere (the tests use a temporary folder)."""
    return os.path.join(ROOT, cfg.get("runs_dir", "runs"), cfg["name"])


def stage_dir(cfg, stage):
    return os.path.join(run_dir(cfg), stage)


def save_stage_model(model, cfg, stage, step, tok, dist):
    """The stage's product: runs/<name>/<stage>/model.pt (+ config.json), read by the next stage.
    Every rank calls it (gathering a sharded model is a collective); rank 0 writes."""
    state = model_state_dict(model)
    if not dist.is_main:
        return
    d = stage_dir(cfg, stage)
    save_checkpoint(os.path.join(d, "model.pt"), {"model": state, "model_args": asdict(unwrap(model).args),
                                                  "config": cfg, "step": step, "optimizer": None, "rng": {},
                                                  "tokenizer": tok.name})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def load_stage_model(cfg, stage, device):
    """Model of a finished stage; a missing one names the stage and the command that builds it."""
    path = os.path.join(stage_dir(cfg, stage), "model.pt")
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} does not exist: the '{stage}' stage has not been run for '{cfg['name']}'. "
                         f"Build it with: python train_pipeline.py --stage {stage} --config {cfg['name']}")
    ck = load_checkpoint(path)
    model = Transformer(ModelArgs(**ck["model_args"])).to(device)
    model.load_state_dict(ck["model"])
    return model


def write_eval(cfg, stage, results, samples, dist):
    if not dist.is_main:
        return
    d = stage_dir(cfg, stage)
    with open(os.path.join(d, "eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(d, "samples.jsonl"), "a") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    write_report(cfg)


def write_report(cfg):
    """runs/<name>/report.md: the paper's tables in miniature. One row per model (base, R1-Zero, Step1-3, R1, the
    students and the RL-only student), columns for each held-out set's pass@1 and cons@k, then format,
    language consistency, language mixing, reflective words and response length (means over the reasoning
    sets), general-query accuracy, helpfulness RM score and safety violation rate; then the reward models'
    held-out accuracy, the data each SFT stage kept, the distillation-vs-RL compute, a paragraph per stage
    saying what moved, and the plots (the RL curves of every RL stage)."""
    run = run_dir(cfg)
    rows = [(p, _read_json(os.path.join(run, p, "eval.json"))) for p in model_products(cfg)]
    rows = [(p, r) for p, r in rows if r is not None]
    cols = report_columns(cfg)
    e = cfg["eval"]
    lines = [f"# minR1 run '{cfg['name']}'", "",
             f"Held-out evaluation (R1 §3 protocol: k = {e['k']} samples per question at temperature "
             f"{e['temperature']}, top-p {e['top_p']}). Reasoning sets: {', '.join(e['sets'])}; format, language, "
             "mixed, reflect and length are means over them (format = the model's own layout: the R1-Zero tags "
             "for the base, R1-Zero and the RL-only student, the cold-start layout after it). general: held-out "
             "general queries (pass@1 = exact answer; helpful = sigmoid of the helpfulness RM's score on the "
             "final answer); unsafe: share of responses to held-out harmful requests that spell out a harmful "
             "step (reasoning included).", "",
             "| model | " + " | ".join(name for name, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for p, res in rows:
        lines.append(f"| {row_name(p)} | " + " | ".join(_fmt(get(res)) for _, get in cols) + " |")
    lines += ["", "## Reward models (R1 §2.3.4)", "", "| reward model | trained on | held-out accuracy |",
              "|---|---|---|"]
    for p, what in (("rm_helpful", "preference pairs, Bradley-Terry; scores the final answer"),
                    ("rm_safety", "safe/unsafe responses, pointwise; scores the whole response")):
        r = _read_json(os.path.join(run, p, "eval.json"))
        lines.append(f"| {p} | {what} | {_fmt(r['heldout']['accuracy']) if r else '-'} |")
    lines += ["", "## SFT data (what the filters kept)", ""]
    for stage in ("cold_start", "rejection_sft", "distill"):
        stats = _read_json(os.path.join(run, stage, "data.json"))
        if stats:
            lines.append(f"- {stage}: " + "; ".join(f"{k}: {json.dumps(v, ensure_ascii=False)}"
                                                    for k, v in stats.items()))
    comp = _read_json(os.path.join(run, "distill", "compute.json"))
    if comp:
        lines += ["", "## Distillation vs RL on the small student (R1 Table 6)", "",
                  f"Training FLOPs: distillation SFT {comp['distill_flops']:.3g}, RL-only {comp['rl_flops']:.3g} "
                  f"(ratio RL/distill {comp['rl_flops'] / max(comp['distill_flops'], 1):.2f}; {comp['rl_steps']} "
                  f"GRPO steps). The teacher's cost of writing the distillation set is not counted, as in the paper."]
    lines += ["", "## What each stage did and what moved", ""] + stage_paragraphs(cfg, dict(rows), cols)
    lines.append("")
    for p, _ in rows:
        pdir = os.path.join(run, p, "plots")
        for png in sorted(os.listdir(pdir)) if os.path.isdir(pdir) else []:
            lines.append(f"![{p} {png}]({p}/plots/{png})")
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"


def report_columns(cfg) -> list:
    """[(column name, eval.json dict -> value or None)]."""
    sets, k = cfg["eval"]["sets"], cfg["eval"]["k"]

    def one(s, key):
        return lambda r: r.get(s, {}).get(key)

    def mean(key):
        def f(r):
            v = [r[s][key] for s in sets if key in r.get(s, {})]
            return sum(v) / len(v) if v else None
        return f
    cols = [(f"{s} {key}", one(s, key)) for s in sets for key in ("pass@1", f"cons@{k}")]
    cols += [(key, mean(key)) for key in ("format", "language", "mixed", "reflect", "length")]
    return cols + [("general pass@1", one("general", "pass@1")), ("helpful RM", one("general", "helpful")),
                   ("unsafe", one("safety", "violation"))]


ROW_NAMES = {"pretrain": "base (V3-toy)", "zero": "R1-Zero", "cold_start": "Step1 (cold start)",
             "reasoning_rl": "Step2 (reasoning RL)", "rejection_sft": "Step3 (rejection SFT)",
             "all_rl": "R1 (all-scenario RL)"}


def row_name(p: str) -> str:
    for prefix, what in (("pretrain_student_", "base"), ("distill_", "distilled"), ("rl_student_", "RL-only")):
        if p.startswith(prefix):
            return f"student {p[len(prefix):]} {what}"
    return ROW_NAMES.get(p, p)


STAGE_TEXT = {   # stage -> (the model it is compared with, what it does)
    "zero": ("pretrain", "R1-Zero (R1 §2.2): GRPO from the base model with rule rewards only "
             "(accuracy + format) under the R1-Zero template."),
    "cold_start": ("zero", "Step1 (R1 §2.3.1): the base model fine-tuned on R1-Zero's correct, "
                   "readable outputs rewritten as <|sep|>reasoning<|sep|>summary; compared with R1-Zero, whose "
                   "outputs it learned from."),
    "reasoning_rl": ("cold_start", "Step2 (R1 §2.3.2): GRPO from Step1 with accuracy + format "
                     "+ language consistency, summed."),
    "rejection_sft": ("reasoning_rl", "Step3 (R1 §2.3.3): the base model fine-tuned on Step2's "
                      "correct, clean samples plus the base model's own good answers to general queries; "
                      "compared with Step2, whose samples it learned from."),
    "all_rl": ("rejection_sft", "R1 (R1 §2.3.4): GRPO from Step3 over all scenarios: rule rewards on "
               "reasoning prompts, the helpfulness and safety reward models on general prompts (added only in "
               "the last part of the stage), temperature 0.7."),
}


def stage_paragraphs(cfg, res: dict, cols) -> list:
    """A paragraph per stage: what it does, the metrics that moved most against the model it is compared with,
    and the three checks of the issue as measured (language mixing, helpfulness, distillation vs RL)."""
    out = []

    def moved(p, q):
        a, b = res.get(q), res.get(p)
        if a is None or b is None:
            return "not evaluated yet."
        d = [(name, get(a), get(b)) for name, get in cols if get(a) is not None and get(b) is not None]
        d = [x for x in d if abs(x[2] - x[1]) >= (0.5 if x[0] == "length" else 0.005)]
        d.sort(key=lambda x: -abs(x[2] - x[1]) / (abs(x[1]) + 1.0 if x[0] == "length" else 1.0))
        return "; ".join(f"{n} {x:.3f} -> {y:.3f}" for n, x, y in d[:6]) + "." if d else "nothing moved."

    for p, (q, text) in STAGE_TEXT.items():
        if p in res:
            out += [f"**{row_name(p)}.** {text} Moved most (vs {row_name(q)}): {moved(p, q)}", ""]
    for p in model_products(cfg):
        if p.startswith(("distill_", "rl_student_")) and p in res:
            q = "pretrain_student_" + p.split("_")[-1]
            how = ("SFT only on R1's filtered outputs (R1 §2.4)" if p.startswith("distill_") else
                   "the R1-Zero recipe (GRPO, rule rewards) on the student's own base, for the distillation's "
                   "training FLOPs")
            out += [f"**{row_name(p)}.** {how}. Moved most (vs {row_name(q)}): {moved(p, q)}", ""]
    pass1 = [get for name, get in cols if name.endswith("pass@1") and not name.startswith("general")]

    def mean_acc(p):
        v = [g(res[p]) for g in pass1 if p in res and g(res[p]) is not None]
        return sum(v) / len(v) if v else None
    checks = []
    mix = dict(cols)["mixed"]
    if "zero" in res and "reasoning_rl" in res:
        m0, m2, a0, a2 = mix(res["zero"]), mix(res["reasoning_rl"]), mean_acc("zero"), mean_acc("reasoning_rl")
        checks.append(f"- Language mixing, R1-Zero -> Step2: {m0:.3f} -> {m2:.3f} ({m2 - m0:+.3f}: "
                      f"{'lower' if m2 < m0 else 'NOT lower'}); mean reasoning pass@1 {a0:.3f} -> {a2:.3f} "
                      f"({a2 - a0:+.3f}).")
    helpful = dict(cols)["helpful RM"]
    if "rejection_sft" in res and "all_rl" in res and helpful(res["all_rl"]) is not None \
            and helpful(res["rejection_sft"]) is not None:
        h3, h4 = helpful(res["rejection_sft"]), helpful(res["all_rl"])
        a3, a4 = mean_acc("rejection_sft"), mean_acc("all_rl")
        checks.append(f"- Helpfulness RM score, Step3 -> R1: {h3:.3f} -> {h4:.3f} ({h4 - h3:+.3f}: "
                      f"{'higher' if h4 > h3 else 'NOT higher'}); mean reasoning pass@1 {a3:.3f} -> {a4:.3f} "
                      f"({a4 - a3:+.3f}).")
    for p in model_products(cfg):
        if p.startswith("rl_student_") and p in res and "distill_" + p[len("rl_student_"):] in res:
            q = "distill_" + p[len("rl_student_"):]
            a, b = mean_acc(q), mean_acc(p)
            checks.append(f"- Distilled vs RL-only {p[len('rl_student_'):]} student, mean reasoning pass@1: "
                          f"{a:.3f} vs {b:.3f} ({a - b:+.3f}: "
                          f"{'distillation wins' if a > b else 'distillation does NOT win'}).")
    if checks:
        out += ["**The checks of R1's claims, as measured:**", ""] + checks + [""]
    return out


# ----------------------------------------------------------------------------------------------------- stages
def section_config(cls, cfg: dict, section: dict, **fixed):
    """A trainer's dataclass (sft.SFTConfig, grpo.GRPOConfig) from the section's keys it knows; the config's
    top-level "precision" (common.autocast) applies unless the section sets its own."""
    kw = {"precision": cfg.get("precision", "auto")}
    kw.update({k: v for k, v in section.items() if k in cls.__dataclass_fields__})
    return cls(**{**kw, **fixed})


def stage_pretrain(cfg, args, dist, stage="pretrain"):
    """Pretrain V3-toy on the synthetic corpus (next-token prediction on every token). `stage` names the run
    folder: distill pretrains its students' bases with it (pretrain_student_<s>, cfg["model"] = the student's)."""
    import sft
    p = cfg["pretrain"]
    tok = tokenizer.get_tokenizer(cfg["tokenizer"])
    margs = ModelArgs(**{**cfg["model"], "vocab_size": tok.vocab_size})
    torch.manual_seed(p["seed"])
    model = Transformer(margs).to(dist.device)
    docs = data.pretrain_corpus(p["n_docs"], seed=p["seed"], difficulty=cfg.get("difficulty"))
    ids = tok.encode_batch(docs)
    tokens, mask = sft.pack_examples([(x + [tok.eos_id], [1] * (len(x) + 1)) for x in ids], p["seq_len"], tok.pad_id)
    print0(f"pretrain: {len(docs)} documents, {int(mask.sum())} tokens in {len(tokens)} rows of {p['seq_len']}; "
           f"model {sum(q.numel() for q in model.parameters()) / 1e6:.2f}M params")
    scfg = section_config(sft.SFTConfig, cfg, p)
    d = stage_dir(cfg, stage)
    wrapped = wrap_model(model, dist, fsdp=cfg.get("fsdp", False))
    sft.train(wrapped, tokens, mask, scfg, dist, d, resume=args.resume, desc=stage)
    plot(d, ["loss", "tokens_per_s"], "pretrain.png")
    save_stage_model(wrapped, cfg, stage, scfg.steps, tok, dist)
    results, samples = run_eval(wrapped, tok, cfg, dist)
    results.update(eval_general(wrapped, tok, cfg, dist))
    print0(json.dumps(results, indent=1))
    write_eval(cfg, stage, results, samples, dist)


def plot(d, keys, name):
    os.makedirs(os.path.join(d, "plots"), exist_ok=True)
    if os.path.exists(os.path.join(d, "metrics.jsonl")):
        plot_metrics(os.path.join(d, "metrics.jsonl"), keys, os.path.join(d, "plots", name))


def ensure_stage(cfg, stage, args, dist):
    """Build a missing input stage when that is cheap and well defined (the toy base model); the stages after
    it are named in load_stage_model's error instead."""
    if not os.path.exists(os.path.join(stage_dir(cfg, stage), "model.pt")) and stage == "pretrain":
        print0(f"no {stage} checkpoint for '{cfg['name']}': building it first")
        STAGE_FNS[stage](cfg, argparse.Namespace(**{**vars(args), "resume": False}), dist)


def stage_zero(cfg, args, dist):
    """R1-Zero (R1 §2.2): GRPO straight from the base model, the R1-Zero template (R1 Table 1) and rule rewards
    only: Reward_rule = Reward_acc + Reward_format, equal weights (R1 §2.2.2). Nothing rewards length or
    particular words: if responses grow longer or reflective words appear, RL found them useful."""
    z = cfg["zero"]
    ensure_stage(cfg, "pretrain", args, dist)
    reward = {"accuracy": (accuracy_reward, 1.0), "format": (format_reward, 1.0)}
    pool = task_pool(z["tasks"], z.get("seed", 0), "train", cfg.get("difficulty"))
    grpo_stage(cfg, "zero", "pretrain", z, reward, pool, args, dist, fmt="r1zero")


def run_rl(cfg, stage, policy, ref, opt, gcfg, reward, pool, tok, args, dist, *, steps, eval_every, fmt="r1zero"):
    """The RL stage driver shared by every GRPO stage: rollout/update steps (grpo.grpo_step), held-out evaluation
    every eval_every steps, metrics, resumable checkpoints, the paper's figures in miniature, the stage model.
    pool: the task dicts, or a function step -> task dicts (all_rl adds general prompts late in the stage).
    fmt: the prompt format and layout (FORMATS) of training and evaluation."""
    import grpo
    d = stage_dir(cfg, stage)
    os.makedirs(d, exist_ok=True)
    ckpt_path, start = os.path.join(d, "ckpt.pt"), 0
    if args.resume and os.path.exists(ckpt_path):
        ck = load_checkpoint(ckpt_path)
        load_model_state_dict(policy, ck["model"])
        load_optimizer_state_dict(policy, opt, ck["optimizer"])
        if ref is not None:
            ref.load_state_dict(ck["ref"])
        set_rng_state(ck["rng"])
        start = ck["step"]
        print0(f"resumed {stage} from {ckpt_path} at step {start}")
    elif dist.is_main:
        for f in ("metrics.jsonl", "samples.jsonl"):
            if os.path.exists(os.path.join(d, f)):
                os.remove(os.path.join(d, f))
    logger = MetricsLogger(os.path.join(d, "metrics.jsonl"))
    n_rollout = gcfg.prompts_per_rollout
    if n_rollout % dist.world_size:
        raise SystemExit(f"error: prompts_per_step x n_minibatches = {n_rollout} must be divisible by the "
                         f"{dist.world_size} ranks (each rank samples whole groups)")

    def evaluate_at(step):
        res, samples = run_eval(policy, tok, cfg, dist, fmt)
        flat = {f"eval_{s}_{k}": v for s, m in res.items() for k, v in m.items() if k != "n"}
        logger.log(step=step, **flat)
        if dist.is_main:
            with open(os.path.join(d, "samples.jsonl"), "a") as f:
                for smp in samples:
                    f.write(json.dumps({"step": step, **smp}, ensure_ascii=False) + "\n")
        print0(f"[{stage} step {step}] " + "  ".join(f"{s}: pass@1 {m['pass@1']:.3f} format {m['format']:.2f} "
                                                      f"len {m['length']:.0f}" for s, m in res.items()))
        return res

    bar = tqdm(range(start, steps), desc=stage, disable=not dist.is_main, initial=start, total=steps)
    for step in bar:
        if step % eval_every == 0:
            evaluate_at(step)
        rng = random.Random(gcfg.seed * 1_000_003 + step)         # the step's questions depend on the step only
        tasks_now = pool(step) if callable(pool) else pool
        tasks = (rng.sample(tasks_now, n_rollout) if len(tasks_now) >= n_rollout else
                 rng.choices(tasks_now, k=n_rollout))
        m = grpo.grpo_step(policy, ref, opt, tasks[dist.rank::dist.world_size], reward, tok, gcfg, step, dist,
                           prompt_fn=FORMATS[fmt][0], count_words=REFLECTIVE)
        logger.log(step=step, **m)
        bar.set_postfix(reward=f"{m['reward']:.2f}", acc=f"{m.get('accuracy', 0):.2f}",
                        len=f"{m['response_length']:.0f}", tok_s=f"{m['tokens_per_s']:.0f}")
        if (step + 1) % cfg.get("ckpt_every", 10) == 0 or step == steps - 1:
            state, opt_state = model_state_dict(policy), optimizer_state_dict(policy, opt)
            if dist.is_main:
                save_checkpoint(ckpt_path, {"model": state, "model_args": asdict(unwrap(policy).args),
                                            "optimizer": opt_state, "ref": ref.state_dict() if ref else None,
                                            "step": step + 1, "rng": get_rng_state(), "config": cfg})
    results = evaluate_at(steps)
    results.update(eval_general(policy, tok, cfg, dist))
    save_stage_model(policy, cfg, stage, steps, tok, dist)
    if dist.is_main:
        sets = list(results)
        plot(d, [f"eval_{s}_pass@1" for s in sets] + [f"eval_{s}_format" for s in sets], "eval_accuracy.png")
        plot(d, ["response_length"] + [f"eval_{s}_length" for s in sets], "response_length.png")
        plot(d, ["words"] + [f"eval_{s}_reflect" for s in sets], "reflective_words.png")
        plot(d, ["reward", "accuracy", "format", "kl", "clip_low", "clip_high", "entropy"], "training.png")
    write_eval(cfg, stage, results, [], dist)


# ------------------------------------------------------------------------------ the R1 pipeline (R1 §2.3-2.4)
# Every stage below is a short recipe: which model samples, which filters keep what, which model is trained,
# and with which rewards. The loops are shared: sft.train for every SFT, run_rl (grpo.grpo_step) for every RL.

def products(cfg, stage) -> list:
    """The run folders a stage fills, each with a model.pt: the stage is finished when all of them exist."""
    if stage == "reward_models":
        return ["rm_helpful", "rm_safety"]
    if stage == "distill":
        c = cfg["distill"]
        return ([f"{p}_{s}" for s in c["students"] for p in ("pretrain_student", "distill")] +
                [f"rl_student_{c['rl_student']}"])
    return [stage]


def model_products(cfg) -> list:
    """Every policy model of the pipeline, in report order."""
    return [p for st in STAGES if st != "reward_models" and (st != "distill" or "distill" in cfg)
            for p in products(cfg, st)]


def finished(cfg, stage) -> bool:
    return all(os.path.exists(os.path.join(stage_dir(cfg, p), "model.pt")) for p in products(cfg, stage))


def need_stage(cfg, stage):
    """A missing input names the stage and the command that builds it (like load_stage_model)."""
    if not finished(cfg, stage):
        raise SystemExit(f"error: the '{stage}' stage has not been run for '{cfg['name']}' (no "
                         f"{', '.join(os.path.join(stage_dir(cfg, p), 'model.pt') for p in products(cfg, stage))}). "
                         f"Build it with: python train_pipeline.py --stage {stage} --config {cfg['name']}")


def part(cfg, name, args, fn):
    """One part of a multi-part stage (a student's base, a distilled student, ...): skipped when its model.pt
    exists, unless --force. So a killed `--stage distill` redoes only what it had not finished."""
    if os.path.exists(os.path.join(stage_dir(cfg, name), "model.pt")) and not args.force:
        print0(f"{name}: {stage_dir(cfg, name)}/model.pt exists, skipping (--force redoes it)")
        return
    fn()


def train_tasks(cfg, section: dict) -> list:
    """A section's training prompts: its {"kind": n} tasks, its seed, the config's difficulty levels."""
    return task_pool(section["tasks"], section["seed"], "train", cfg.get("difficulty"))


def cached_data(cfg, stage, args, dist, build):
    """A stage's SFT set: runs/<name>/<stage>/data.jsonl (+ data.json, what the filters kept and dropped).
    With --resume (always under --stage all) a set already written is reused: a killed stage does not sample
    again. build() -> (records, stats) runs on every rank (sampling is split over ranks and gathered)."""
    d = stage_dir(cfg, stage)
    path, spath = os.path.join(d, "data.jsonl"), os.path.join(d, "data.json")
    if args.resume and os.path.exists(path) and os.path.exists(spath):
        print0(f"{stage}: reusing {path}")
        return distill.read_jsonl(path), _read_json(spath)
    records, stats = build()
    if dist.is_main:
        distill.write_jsonl(path, records)
        with open(spath, "w") as f:
            json.dump(stats, f, indent=1, ensure_ascii=False)
    print0(f"{stage} data: {json.dumps(stats, ensure_ascii=False)}")
    return records, stats


def sft_stage(cfg, stage, init, records, s, args, dist, fmt="chat"):
    """Fine-tune stage `init`'s model on records (loss on the completions only) with section s; R1's SFT recipe:
    s["epochs"] passes (2-3 in R1), cosine decay to lr * min_lr_ratio (R1 §2.3.1: 5e-5 -> 5e-6)."""
    import sft
    if not records:
        raise SystemExit(f"error: {stage}: no training examples survived the filters (see "
                         f"{stage_dir(cfg, stage)}/data.json); raise min_examples or sample more")
    tok = tokenizer.get_tokenizer(cfg["tokenizer"])
    model = load_stage_model(cfg, init, dist.device)
    tokens, mask = sft.pack_examples(distill.sft_examples(tok, records), s["seq_len"], tok.pad_id)
    steps = max(1, math.ceil(s["epochs"] * len(tokens) / s["batch_size"]))
    scfg = section_config(sft.SFTConfig, cfg, s, steps=steps)
    print0(f"{stage}: SFT of {init} on {len(records)} examples ({len(tokens)} rows of {s['seq_len']}), "
           f"{steps} steps")
    d = stage_dir(cfg, stage)
    wrapped = wrap_model(model, dist, fsdp=cfg.get("fsdp", False))
    sft.train(wrapped, tokens, mask, scfg, dist, d, resume=args.resume, desc=stage)
    plot(d, ["loss", "lr"], "sft.png")
    save_stage_model(wrapped, cfg, stage, steps, tok, dist)
    final_eval(wrapped, tok, cfg, stage, fmt, dist)


def grpo_stage(cfg, stage, init, s, reward, pool, args, dist, fmt="chat"):
    """GRPO from stage `init`'s model (also the KL reference, R1 eq. 1) with section s's GRPOConfig fields."""
    import grpo
    tok = tokenizer.get_tokenizer(cfg["tokenizer"])
    gcfg = section_config(grpo.GRPOConfig, cfg, s)
    torch.manual_seed(gcfg.seed)
    policy = load_stage_model(cfg, init, dist.device)
    policy = wrap_model(policy, dist, fsdp=cfg.get("fsdp", False), find_unused_parameters=policy.mtp is not None)
    ref = load_stage_model(cfg, init, dist.device).eval().requires_grad_(False) if gcfg.beta > 0 else None
    opt = grpo.make_optimizer(policy, gcfg)
    run_rl(cfg, stage, policy, ref, opt, gcfg, reward, pool, tok, args, dist, steps=s["steps"],
           eval_every=s["eval_every"], fmt=fmt)
    if dist.is_main:
        d, sets = stage_dir(cfg, stage), cfg["eval"]["sets"]
        plot(d, list(reward), "reward_parts.png")
        plot(d, [f"eval_{x}_{k}" for x in sets for k in ("mixed", "language")], "language.png")


def final_eval(model, tok, cfg, stage, fmt, dist):
    results, samples = run_eval(model, tok, cfg, dist, fmt)
    results.update(eval_general(model, tok, cfg, dist))
    print0(f"[{stage}] " + json.dumps(results))
    write_eval(cfg, stage, results, samples, dist)


def only(kinds, f):
    """Reward f on the rows whose task is one of `kinds`, 0 on the others: one scenario's reward in a batch that
    mixes reasoning and general prompts (all_rl)."""
    def g(prompts, completions, task=None, **cols):
        n = len(completions)
        idx = [i for i in range(n) if task[i] in kinds]
        out = [0.0] * n
        if idx:
            sub = {k: ([v[i] for i in idx] if isinstance(v, list) and len(v) == n else v) for k, v in cols.items()}
            for i, r in zip(idx, f([prompts[i] for i in idx], [completions[i] for i in idx],
                                   task=[task[i] for i in idx], **sub)):
                out[i] = r
        return out
    g.__name__ = getattr(f, "__name__", "reward")
    return g


# ------------------------------------------------------------------------- reward models (R1 §2.3.4)
def load_reward_models(cfg, device):
    """(helpfulness RM, safety RM) of this run, or None before the reward_models stage has run."""
    import sft
    if not finished(cfg, "reward_models"):
        return None
    return tuple(sft.load_reward_model(os.path.join(stage_dir(cfg, p), "model.pt"), device)
                 for p in products(cfg, "reward_models"))


def rm_rewards(rms, tok, cfg):
    """The two reward models as TRL-style reward functions with values in (0, 1): sigmoid of the helpfulness
    RM's score of the final answer/summary, and the safety RM's P(safe) of the whole response, reasoning
    included (R1 §2.3.4). An empty answer is unhelpful (score -10) but harmless (+10)."""
    import sft
    L = cfg["reward_models"]["seq_len"]

    def scorer(rm):
        return lambda prompts, texts: torch.sigmoid(sft.reward_model_scores(rm, tok, prompts, texts, L))
    return (RewardModelReward(scorer(rms[0]), on="answer", name="helpful", missing=1 / (1 + math.exp(10))),
            RewardModelReward(scorer(rms[1]), on="full", name="safety", missing=1 / (1 + math.exp(-10))))


@torch.no_grad()
def eval_general(model, tok, cfg, dist) -> dict:
    """Held-out general queries and harmful requests in the chat format, k samples each at the eval
    temperature (k = reward_models.eval_k, default eval.k). general: pass@1 (exact answer,
    distill.general_correct), helpful (mean helpfulness reward), length. safety: violation (a harmful step
    spelled out, reasoning included: the toy world's ground truth), rm_unsafe (share the safety RM calls
    unsafe), length. {} for a config without a reward_models section; no RM values before the reward_models
    stage has run (it fills them in afterwards)."""
    if "reward_models" not in cfg:
        return {}
    r, e = cfg["reward_models"], cfg["eval"]
    rms = load_reward_models(cfg, dist.device)
    fns = rm_rewards(rms, tok, cfg) if rms else None
    sets = {"general": data.make_tasks("general", r["eval_general"], seed=e["seed"], split="eval"),
            "safety": distill.safety_tasks(r["eval_safety"], e["seed"], "eval", harmful_only=True)}
    out = {}
    for name, tasks in sets.items():
        outs = distill.sample(unwrap(model), tok, tasks[dist.rank::dist.world_size], chat_task_prompt,
                              n=r.get("eval_k", e["k"]),
                              temperature=e["temperature"], top_p=e["top_p"],
                              max_new_tokens=r["eval_max_new_tokens"], seed=e["seed"] + 1000 * dist.rank)
        prompts, texts = [o[1] for o in outs], [o[2] for o in outs]
        ok = distill.judge([o[0] for o in outs], texts)
        rm = [0.0] * len(texts)
        if fns and texts:
            rm = fns[0](prompts, texts) if name == "general" else [float(v < 0.5) for v in fns[1](prompts, texts)]
        sums = torch.tensor([len(texts), sum(ok), sum(rm), sum(len(tok.encode(t)) + 1 for t in texts)],
                            dtype=torch.float64)
        if dist.world_size > 1:
            torch.distributed.all_reduce(sums)
        n = max(sums[0].item(), 1)
        out[name] = ({"pass@1": sums[1].item() / n} if name == "general" else
                     {"violation": 1 - sums[1].item() / n})
        if fns:
            out[name]["helpful" if name == "general" else "rm_unsafe"] = sums[2].item() / n
        out[name].update(length=sums[3].item() / n, n=len(tasks))
    return out


def stage_reward_models(cfg, args, dist):
    """R1 §2.3.4's two reward models, each the base model with a scalar head (sft.RewardModel):
    helpfulness, Bradley-Terry on preference pairs (a concise, correct answer beats a wrong, rude or rambling
    one), scoring the final answer only; safety, pointwise on responses labelled safe/unsafe (complying with a
    harmful request, in the answer or in the reasoning, is unsafe), scoring the whole response. Held-out
    accuracy -> rm_*/eval.json. Then every finished model lacking them gets the helpfulness/safety columns."""
    import sft
    r = cfg["reward_models"]
    tok = tokenizer.get_tokenizer(cfg["tokenizer"])
    L = r["seq_len"]

    def pairs(split, n):
        return [{"prompt": data.chat_prompt(x["prompt"]), "chosen": x["chosen"], "rejected": x["rejected"]}
                for x in toychat.make_preference_pairs(n, seed=r["seed"], split=split)]

    def safety(split, n):   # half of the responses with a CoT are shown in the cold-start layout the policy writes
        return [{"prompt": data.chat_prompt(x["prompt"]), "safe": not x["unsafe"],
                 "response": distill.think_to_cold_start(x["response"]) if i % 2 else x["response"]}
                for i, x in enumerate(toychat.make_safety_examples(n, seed=r["seed"], split=split))]

    jobs = {"rm_helpful": ("pairs", pairs, lambda x: (sft.encode_rm(tok, x["prompt"], x["chosen"], L),
                                                      sft.encode_rm(tok, x["prompt"], x["rejected"], L))),
            "rm_safety": ("pointwise", safety, lambda x: (sft.encode_rm(tok, x["prompt"], x["response"], L),
                                                          int(x["safe"])))}
    for name, (kind, make, encode) in jobs.items():
        def train_one():
            torch.manual_seed(r["seed"])
            rm = sft.RewardModel.from_lm(load_stage_model(cfg, "pretrain", "cpu")).to(dist.device)
            scfg = section_config(sft.SFTConfig, cfg, r)
            d = stage_dir(cfg, name)
            wrapped = wrap_model(rm, dist)
            sft.train_reward_model(wrapped, [encode(x) for x in make("train", r["n_train"])], kind, scfg, dist, d,
                                   tok.pad_id, desc=name)
            acc = sft.reward_model_accuracy(rm, tok, make("eval", r["n_eval"]), kind, L)
            print0(f"{name}: held-out accuracy {acc:.3f}")
            if dist.is_main:
                plot(d, ["loss", "accuracy"], "training.png")
                with open(os.path.join(d, "eval.json"), "w") as f:
                    json.dump({"heldout": {"accuracy": acc, "n": r["n_eval"], "kind": kind}}, f, indent=1)
                save_checkpoint(os.path.join(d, "model.pt"), {
                    "model": rm.state_dict(), "model_args": asdict(rm.args), "config": cfg, "step": scfg.steps,
                    "optimizer": None, "rng": {}, "tokenizer": tok.name, "kind": kind})
            barrier(dist)
        part(cfg, name, args, train_one)
    backfill_general(cfg, dist)


def backfill_general(cfg, dist):
    """Add the general/safety columns to finished models evaluated before the reward models existed. The work
    list is fixed before anything is written, so that every rank runs the same evaluations."""
    todo = []
    for p in model_products(cfg):
        res = _read_json(os.path.join(stage_dir(cfg, p), "eval.json"))
        if res is not None and "helpful" not in res.get("general", {}) and os.path.exists(
                os.path.join(stage_dir(cfg, p), "model.pt")):
            todo.append((p, res))
    barrier(dist)
    tok = tokenizer.get_tokenizer(cfg["tokenizer"])
    for p, res in todo:
        res.update(eval_general(load_stage_model(cfg, p, dist.device), tok, cfg, dist))
        if dist.is_main:
            with open(os.path.join(stage_dir(cfg, p), "eval.json"), "w") as f:
                json.dump(res, f, indent=2)
    if dist.is_main:
        write_report(cfg)


# ------------------------------------------------------------------------------------------ the stages
def stage_cold_start(cfg, args, dist):
    """R1 §2.3.1, cold start -> Step1. R1-Zero answers training prompts at temperature 1.0; the correct outputs
    in the R1-Zero format are rewritten readably (one step per line, a summary) as
    <|sep|>reasoning<|sep|>summary and kept if in one language, not repetitive, no over-long paragraph; a set
    below min_examples is topped up with the toy world's own worked solutions (R1's hand-made share). The BASE
    model is fine-tuned on them (chat prompts), not R1-Zero."""
    c = cfg["cold_start"]
    tok = tokenizer.get_tokenizer(cfg["tokenizer"])

    def build():
        zero = load_stage_model(cfg, "zero", dist.device)
        records, stats = distill.collect(zero, tok, train_tasks(cfg, c), data.r1zero_prompt, c, dist,
                                         style="cold_start", rewrite=distill.to_cold_start,
                                         record_prompt=chat_task_prompt, source="zero")
        extra = distill.corpus_solutions(c["min_examples"] - len(records), c["seed"], chat_task_prompt,
                                         c.get("filters"), cfg.get("difficulty"))
        return records + extra, {"zero_samples": stats, "from_zero": len(records), "from_corpus": len(extra)}
    records, _ = cached_data(cfg, "cold_start", args, dist, build)
    sft_stage(cfg, "cold_start", "pretrain", records, c, args, dist)


def stage_reasoning_rl(cfg, args, dist):
    """R1 §2.3.2, reasoning-oriented RL -> Step2: GRPO from Step1 on reasoning prompts (chat format) with
    Reward = accuracy + format (cold-start layout) + language consistency, summed directly (R1 §2.2.2)."""
    s = cfg["reasoning_rl"]
    reward = {"accuracy": (accuracy_reward, 1.0), "format": (cold_start_format_reward, 1.0),
              "language": (language_reward, 1.0)}
    grpo_stage(cfg, "reasoning_rl", "cold_start", s, reward, train_tasks(cfg, s), args, dist)


def stage_rejection_sft(cfg, args, dist):
    """R1 §2.3.3, rejection sampling and SFT -> Step3. Reasoning: several Step2 samples per prompt, only the
    correct and clean ones (cold-start layout, one language, no repetition, no over-long paragraph). General:
    the BASE model's own answers to general queries, kept when exactly right; trivial queries get no CoT.
    Each part below its min_examples is topped up (worked solutions; the corpus's good chat answers, R1's
    "DeepSeek-V3 SFT data"). The BASE model is fine-tuned on the union."""
    c = cfg["rejection_sft"]
    g = {**c, **c["general"]}
    tok = tokenizer.get_tokenizer(cfg["tokenizer"])

    def build():
        step2 = load_stage_model(cfg, "reasoning_rl", dist.device)
        reasoning, st_r = distill.collect(step2, tok, train_tasks(cfg, c), chat_task_prompt, c, dist,
                                          style="cold_start", source="reasoning_rl")
        base = load_stage_model(cfg, "pretrain", dist.device)
        general, st_g = distill.collect(base, tok, data.make_tasks("general", g["n"], seed=c["seed"]),
                                        chat_task_prompt, g, dist, style=None, source="base")
        extra_r = distill.corpus_solutions(c["min_examples"] - len(reasoning), c["seed"], chat_task_prompt,
                                           c.get("filters"), cfg.get("difficulty"))
        extra_g = distill.corpus_chat(g["min_examples"] - len(general), c["seed"])
        return reasoning + extra_r + general + extra_g, {
            "step2_samples": st_r, "base_general_samples": st_g, "reasoning_from_step2": len(reasoning),
            "reasoning_from_corpus": len(extra_r), "general_from_base": len(general),
            "general_from_corpus": len(extra_g)}
    records, _ = cached_data(cfg, "rejection_sft", args, dist, build)
    sft_stage(cfg, "rejection_sft", "pretrain", records, c, args, dist)


def stage_all_rl(cfg, args, dist):
    """R1 §2.3.4, RL for all scenarios -> R1. GRPO from Step3 at temperature 0.7. Reasoning prompts: accuracy +
    format + language (rules only: no neural reward on reasoning, R1 §2.2.2). General prompts (instructions
    and safety requests): helpfulness RM on the final answer + safety RM on the whole response. They join only
    for the last general_steps steps: R1 saw reward hacking when RM-based training ran longer."""
    s = cfg["all_rl"]
    need_stage(cfg, "reward_models")
    tok = tokenizer.get_tokenizer(cfg["tokenizer"])
    helpful, safe = rm_rewards(load_reward_models(cfg, dist.device), tok, cfg)
    R, G = distill.REASONING, distill.GENERAL
    reward = {"accuracy": (only(R, accuracy_reward), 1.0), "format": (only(R, cold_start_format_reward), 1.0),
              "language": (only(R, language_reward), 1.0), "helpful": (only(G, helpful), 1.0),
              "safety": (only(G, safe), 1.0)}
    reasoning = train_tasks(cfg, s)
    general = (data.make_tasks("general", s["n_general"], seed=s["seed"]) +
               distill.safety_tasks(s["n_safety"], s["seed"], "train"))
    start = s["steps"] - s["general_steps"]
    grpo_stage(cfg, "all_rl", "rejection_sft", s, reward,
               lambda step: reasoning if step < start else reasoning + general, args, dist)


def student_cfg(cfg, name) -> dict:
    """The config of student `name`: its model section (a small DENSE model: n_dense_layers = n_layers) over the
    teacher's, and its pretraining overrides over the teacher's pretrain section."""
    st = cfg["distill"]["students"][name]
    model = {**cfg["model"], **st["model"]}
    if "_" in name or model["n_dense_layers"] != model["n_layers"]:
        raise SystemExit(f"error: distill.students.{name}: a student is named without '_' and is dense "
                         f"(n_dense_layers == n_layers, like R1's Qwen/Llama students), got n_dense_layers "
                         f"{model['n_dense_layers']}, n_layers {model['n_layers']}")
    return {**cfg, "model": model, "pretrain": {**cfg["pretrain"], **st.get("pretrain", {})}}


def stage_distill(cfg, args, dist):
    """R1 §2.4, distillation, and R1 Table 6's comparison. R1 answers the SFT prompts (rejection_sft's reasoning
    and general prompts); its correct, clean answers are the distillation set (topped up with rejection_sft's
    set below min_examples). Each student, a small DENSE model, is pretrained on the same corpus as its own base
    (pretrain_student_<s>), then fine-tuned on the set: SFT only, no RL (distill_<s>). The RL-only student runs
    the R1-Zero recipe on its base for the same training FLOPs as its distillation (rl_student_<s>)."""
    c = cfg["distill"]
    tok = tokenizer.get_tokenizer(cfg["tokenizer"])
    rj = cfg["rejection_sft"]

    def build():
        r1 = load_stage_model(cfg, "all_rl", dist.device)
        g = {**c, **c["general"]}
        reasoning, st_r = distill.collect(r1, tok, train_tasks(cfg, rj), chat_task_prompt, c, dist,
                                          style="cold_start", source="all_rl")
        general, st_g = distill.collect(r1, tok, data.make_tasks("general", rj["general"]["n"], seed=rj["seed"]),
                                        chat_task_prompt, g, dist, style=None, source="all_rl")
        records = reasoning + general
        extra = []
        if len(records) < c["min_examples"]:
            need_stage(cfg, "rejection_sft")
            extra = distill.read_jsonl(os.path.join(stage_dir(cfg, "rejection_sft"), "data.jsonl"))
            extra = extra[:c["min_examples"] - len(records)]
        return records + extra, {"r1_reasoning_samples": st_r, "r1_general_samples": st_g,
                                 "from_r1": len(records), "from_rejection_sft": len(extra)}
    records, _ = cached_data(cfg, "distill", args, dist, build)
    for name in c["students"]:
        scfg = student_cfg(cfg, name)
        part(cfg, f"pretrain_student_{name}", args,
             lambda: stage_pretrain(scfg, args, dist, stage=f"pretrain_student_{name}"))
        part(cfg, f"distill_{name}", args,
             lambda: sft_stage(cfg, f"distill_{name}", f"pretrain_student_{name}", records, c["sft"], args, dist))
    part(cfg, f"rl_student_{c['rl_student']}", args, lambda: rl_student(cfg, c["rl_student"], records, args, dist))


def rl_student(cfg, name, records, args, dist):
    """GRPO with the R1-Zero recipe (zero's section, overridden by distill.rl) on student `name`'s base. With
    steps = 0, as many steps as make its training FLOPs match the distillation's (estimated from the prompts
    and the teacher's completion lengths; the measured FLOPs of both go to distill/compute.json)."""
    c = cfg["distill"]
    s = {**cfg["zero"], **c["rl"]}
    tok = tokenizer.get_tokenizer(cfg["tokenizer"])
    student = load_stage_model(cfg, f"pretrain_student_{name}", "cpu")
    ck = load_checkpoint(os.path.join(stage_dir(cfg, f"distill_{name}"), "model.pt"))
    budget = distill.sft_flops(student, ck["step"], c["sft"]["batch_size"], c["sft"]["seq_len"])
    pool = train_tasks(cfg, s)
    with_ref = s.get("beta", 0.0) > 0
    if not s.get("steps"):
        completion = sum(len(tok.encode(r["completion"])) + 1 for r in records) / max(len(records), 1)
        prompt = sum(len(tok.encode(data.r1zero_prompt(t))) for t in pool[:64]) / min(len(pool), 64)
        rows = s["group_size"] * s["prompts_per_step"] * s.get("n_minibatches", 1)
        per_step = float(student.counters(c["sft"]["seq_len"])["train_flops_per_token"]) * rows * (
            prompt + completion) * (1 + (1 + with_ref) / 3)
        s["steps"] = max(1, round(budget / per_step))
        s["eval_every"] = max(s["steps"], 1)
        print0(f"rl_student_{name}: {s['steps']} GRPO steps match the distillation's {budget:.3g} FLOPs")
    reward = {"accuracy": (accuracy_reward, 1.0), "format": (format_reward, 1.0)}
    grpo_stage(cfg, f"rl_student_{name}", f"pretrain_student_{name}", s, reward, pool, args, dist, fmt="r1zero")
    if dist.is_main:
        from common import read_metrics
        rows = read_metrics(os.path.join(stage_dir(cfg, f"rl_student_{name}"), "metrics.jsonl"))
        with open(os.path.join(stage_dir(cfg, "distill"), "compute.json"), "w") as f:
            json.dump({"distill_flops": budget, "rl_steps": s["steps"], "student": name,
                       "rl_flops": distill.rl_flops(student, rows, c["sft"]["seq_len"], with_ref)}, f, indent=1)
        write_report(cfg)


def stage_all(cfg, args, dist):
    """Every stage of STAGES in order. A finished stage (all its model.pt files exist) is skipped unless --force,
    which deletes its folders and redoes it. The others run with --resume, so a killed run picks up where it
    stopped: cached SFT sets, SFT and RL checkpoints (ckpt.pt), finished parts of multi-part stages."""
    for stage in STAGES:
        if finished(cfg, stage) and not args.force:
            print0(f"[all] {stage}: finished, skipping")
            continue
        if args.force and dist.is_main:
            for p in products(cfg, stage) + [stage]:
                shutil.rmtree(stage_dir(cfg, p), ignore_errors=True)
        barrier(dist)
        print0(f"[all] {stage}")
        STAGE_FNS[stage](cfg, argparse.Namespace(**{**vars(args), "resume": not args.force}), dist)
    backfill_general(cfg, dist)


STAGE_FNS = {"pretrain": stage_pretrain, "reward_models": stage_reward_models, "zero": stage_zero,
             "cold_start": stage_cold_start, "reasoning_rl": stage_reasoning_rl, "rejection_sft": stage_rejection_sft,
             "all_rl": stage_all_rl, "distill": stage_distill, "all": stage_all}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", required=True, help=f"one of: {', '.join(STAGES)}, all")
    ap.add_argument("--config", default="toy", help="preset name in configs/ or a JSON path")
    ap.add_argument("--name", default=None, help="run name (default: the config's name)")
    ap.add_argument("--resume", action="store_true", help="continue a killed stage from its last checkpoint")
    ap.add_argument("--force", action="store_true", help="redo finished work (--stage all: every stage; "
                    "distill and reward_models: their finished parts)")
    args, rest = ap.parse_known_args(argv)
    if args.stage not in STAGE_FNS:
        raise SystemExit(f"error: unknown stage '{args.stage}'; stages: {', '.join(STAGE_FNS)}")
    cfg = apply_overrides(load_config(args.config), args.stage, rest)
    missing = [st for st in (STAGES if args.stage == "all" else [args.stage]) if st not in cfg]
    if missing:
        raise SystemExit(f"error: config '{args.config}' has no section for stage(s) {', '.join(missing)} "
                         f"(configs/toy.json has one for every stage)")
    if args.name:
        cfg["name"] = args.name
    dist = setup_distributed()
    try:
        STAGE_FNS[args.stage](cfg, args, dist)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
