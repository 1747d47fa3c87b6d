"""minR1's command line: the stages of the DeepSeek-R1 pipeline (R1 §2), each a short recipe.

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
    python train_pipeline.py --stage report --config toy                 # rewrite runs/toy/report.md
    torchrun --nproc_per_node=2 train_pipeline.py --stage pretrain --config toy --steps 50
    python train_pipeline.py --stage pretrain --config toy --lr 1e-3 --model.dim 192   # overrides (config.py)
    python train_pipeline.py --config node8 --plan --nodes 1 --gpus-per-node 8   # memory, traffic, step time
                                                                         #   per GPU; refuses what won't fit (plan.py)

A stage that has finished (its model.pt exists) is redone only with --force; one process at a time may use a run
(runs/<name>/.lock). Failures are one "error: ..." line (common.run_cli).

--config is a preset name from configs/ (micro, toy, gpu1, node8, v3-nodes, v2-lite, v3-671b) or a path to a JSON
file. Each stage writes runs/<name>/<stage>/ (model.pt + config.json, metrics.jsonl, samples.jsonl, eval.json,
plots/) and refreshes runs/<name>/report.md. The loops live elsewhere: sft.train for every SFT, grpo.train for every RL stage,
distill.py builds the SFT sets, reward_model.py the reward models, eval.py evaluates, report.py reports.
"""
import argparse
import errno
import fcntl
import json
import math
import os
import re
import shutil
import sys

import torch
from tqdm import tqdm

import data
import datasets_jsonl
import distill
import grpo
import reward_model
import sft
import toychat
import toyworld
from checkpoint import build_model_from_checkpoint, load_checkpoint, save_model
from common import (PeakRSS, barrier, cleanup_distributed, plot_stage, print0, read_json, read_jsonl, read_metrics,
                    release_memory, resident_mb, run_cli, setup_distributed, wrap_model, write_jsonl)
from config import ROOT, apply_overrides, check_values, load_config, resolve, section_config
from eval import FORMATS, REFLECTIVE, effective_reflection, eval_general, run_eval
from model import ModelArgs, Transformer
from report import rl_figures, write_report
from rewards import (accuracy_reward, cold_start_format_reward, format_reward, general_format_reward,
                     general_language_reward, language_reward)
from tokenizer import get_tokenizer

# `--stage all` runs these in order. reward_models needs only the base model, so it runs early: every model
# after it is scored by the reward models in its own evaluation (and the base model is scored by the stage).
STAGES = ["pretrain", "reward_models", "zero", "cold_start", "reasoning_rl", "rejection_sft", "all_rl", "distill"]


# ------------------------------------------------------------------------------------------------ run folders
def run_dir(cfg):
    """runs/<name>/; a top-level "runs_dir" config key puts runs/ elsewhere (the tests use a temporary folder)."""
    return os.path.join(ROOT, cfg.get("runs_dir", "runs"), cfg["name"])


def stage_dir(cfg, stage):
    return os.path.join(run_dir(cfg), stage)


def products(cfg, stage) -> list:
    """The run folders a stage fills, each with a model.pt: the stage is finished when all of them exist."""
    if stage == "reward_models":
        return [f"rm_{which}" for which in reward_model.KINDS]
    if stage == "distill":
        section = cfg["distill"]
        return ([f"{p}_{s}" for s in section["students"] for p in ("pretrain_student", "distill")] +
                [f"rl_student_{section['rl_student']}"])
    return [stage]


def model_products(cfg) -> list:
    """Every policy model of the pipeline, in report order."""
    return [p for st in STAGES if st != "reward_models" and (st != "distill" or "distill" in cfg)
            for p in products(cfg, st)]


def finished(cfg, stage) -> bool:
    return all(os.path.exists(os.path.join(stage_dir(cfg, p), "model.pt")) for p in products(cfg, stage))


# What this process was started with (main sets it): the command suggested for a missing stage repeats it.
INVOCATION = {"config": None, "name": None}


def stage_command(cfg, stage) -> str:
    """The command that builds `stage` for this run: the same --config, --name and --runs_dir as this process."""
    cmd = f"python train_pipeline.py --stage {stage} --config {INVOCATION['config'] or cfg['name']}"
    if INVOCATION["name"]:
        cmd += f" --name {INVOCATION['name']}"
    if cfg.get("runs_dir", "runs") != "runs":
        cmd += f" --runs_dir {cfg['runs_dir']}"
    return cmd


def need_stage(cfg, stage):
    """A missing input names the stage and the command that builds it."""
    if not finished(cfg, stage):
        raise SystemExit(f"error: the '{stage}' stage has not been run for '{cfg['name']}' (no "
                         f"{', '.join(os.path.join(stage_dir(cfg, p), 'model.pt') for p in products(cfg, stage))}). "
                         f"Build it with: {stage_command(cfg, stage)}")


def save_stage_model(model, cfg, stage, step, tok, dist):
    """The stage's product: runs/<name>/<stage>/model.pt (+ config.json), read by the next stage."""
    d = stage_dir(cfg, stage)
    save_model(os.path.join(d, "model.pt"), model, dist, step=step, config=cfg, tokenizer=tok.name)
    if dist.is_main:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)


def load_stage_model(cfg, stage, device):
    """The model of a finished stage (in training mode); a missing one names the stage and its command."""
    path = os.path.join(stage_dir(cfg, stage), "model.pt")
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} does not exist: the '{stage}' stage has not been run for '{cfg['name']}'. "
                         f"Build it with: {stage_command(cfg, stage)}")
    return build_model_from_checkpoint(path, device)[0].train()


# --init PATH (main puts it in cfg["init"], which config.json then records): the stage starts from this model instead
# of its predecessor's, and it is also the KL reference of an RL stage. A minR1 model.pt or a Hugging Face
# DeepseekV3/V2 directory (hf.py).
INIT_STAGES = ("zero", "cold_start", "reasoning_rl", "rejection_sft", "all_rl")


def load_init_model(cfg, init, device):
    """The model a stage trains from: stage `init`'s, or the --init one (its shapes from its checkpoint, the training
    knobs hf.TRAINING_KNOBS, e.g. bias_update_speed, from the config's model section)."""
    if not cfg.get("init"):
        return load_stage_model(cfg, init, device)
    import hf
    model = hf.load_init(cfg["init"], {k: cfg["model"][k] for k in hf.TRAINING_KNOBS if k in cfg["model"]})
    vocab = get_tokenizer(cfg["tokenizer"]).vocab_size
    if model.args.vocab_size < vocab:
        raise SystemExit(f"error: --init {cfg['init']}: the model has {model.args.vocab_size} token embeddings, "
                         f"fewer than the tokenizer '{cfg['tokenizer']}' has tokens ({vocab}); pick its tokenizer")
    return model.to(device)


def rm_paths(cfg):
    """The reward models' model.pt files, or None before the reward_models stage has run."""
    if not finished(cfg, "reward_models"):
        return None
    return [os.path.join(stage_dir(cfg, p), "model.pt") for p in products(cfg, "reward_models")]


def write_eval(cfg, stage, results, samples, dist, questions=None):
    """eval.json (set -> metrics), eval_questions.jsonl (per-question results, for paired comparisons), samples."""
    if not dist.is_main:
        return
    d = stage_dir(cfg, stage)
    with open(os.path.join(d, "eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    if questions is not None:
        write_jsonl(os.path.join(d, "eval_questions.jsonl"), questions)
    with open(os.path.join(d, "samples.jsonl"), "a") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    write_report(cfg, run_dir(cfg), model_products(cfg))
    print0(summary(d, stage, headline(cfg, results)))


def headline(cfg, results) -> str:
    """A stage's figures in a few words: pass@1 and format on each held-out set (eval.json has the rest)."""
    parts = [f"{s} pass@1 {results[s]['pass@1']:.3f} format {results[s]['format']:.2f}"
             for s in cfg["eval"]["sets"] if isinstance(results.get(s), dict) and "pass@1" in results[s]]
    return ", ".join(parts) or "no held-out evaluation"


def summary(d, stage, figures) -> str:
    """The one line a stage ends with: what it wrote where, and its headline figures."""
    wrote = [f for f in ("model.pt", "eval.json", "data.jsonl", "metrics.jsonl", "samples.jsonl", "plots")
             if os.path.exists(os.path.join(d, f))]
    return f"[{stage}] done: {figures}; wrote {d}/ ({', '.join(wrote)}), report {os.path.dirname(d)}/report.md"


def part(cfg, name, args, fn):
    """One part of a multi-part stage (a student's base, a distilled student, ...): skipped when its model.pt
    exists, unless --force. So a killed `--stage distill` redoes only what it had not finished."""
    if os.path.exists(os.path.join(stage_dir(cfg, name), "model.pt")) and not args.force:
        print0(f"{name}: {stage_dir(cfg, name)}/model.pt exists, skipping (--force redoes it)")
        return
    fn()


def cached_data(cfg, stage, args, dist, build):
    """A stage's SFT set: runs/<name>/<stage>/data.jsonl (+ data.json, what the filters kept and dropped).
    With --resume (always under --stage all) a set already written is reused: a killed stage does not sample
    again. build() -> (records, stats) runs on every rank (sampling is split over ranks and gathered)."""
    d = stage_dir(cfg, stage)
    path, spath = os.path.join(d, "data.jsonl"), os.path.join(d, "data.json")
    if args.resume and os.path.exists(path) and os.path.exists(spath):
        print0(f"{stage}: reusing {path}")
        return read_jsonl(path)
    records, stats = build()
    if dist.is_main:
        write_jsonl(path, records)
        with open(spath, "w") as f:
            json.dump(stats, f, indent=1, ensure_ascii=False)
    print0(f"{stage} data: {json.dumps(stats, ensure_ascii=False)}")
    return records


# ----------------------------------------------------------------------------------------- shared recipes
def train_tasks(cfg, section: dict) -> list:
    """A section's training prompts: its {"kind": n} tasks, its seed, the config's difficulty levels."""
    return data.task_pool(section["tasks"], section["seed"], "train", cfg.get("difficulty"))


def rl_tasks(cfg, section: dict) -> list:
    """An RL stage's reasoning problems: every problem of the config's "data" file (--data PATH, read by
    datasets_jsonl.py) where it names one, else the toy world's (train_tasks). The SFT-set stages (cold_start,
    rejection_sft, distill) keep drawing theirs from the toy world."""
    if not cfg.get("data"):
        return train_tasks(cfg, section)
    tasks, info = datasets_jsonl.config_data(cfg, "data")
    print0(f"training problems: {info['rows']} from {info['path']} ({info['format']}; "
           f"{', '.join(f'{k} {n}' for k, n in info['kinds'].items())})")
    return tasks


def record_data(cfg, stage, dist, train: bool):
    """runs/<name>/<stage>/data_files.json: which JSONL files the stage trained ("train") and evaluated ("eval")
    on (path, sha256, format, rows, skipped bad rows, kinds); nothing when it used the toy world's problems."""
    used = {}
    if train and cfg.get("data"):
        used["train"] = datasets_jsonl.config_data(cfg, "data")[1]
    if cfg.get("eval_data"):
        used["eval"] = datasets_jsonl.config_data(cfg, "eval_data")[1]
    if used and dist.is_main:
        path = os.path.join(stage_dir(cfg, stage), "data_files.json")
        old = read_json(path) or {}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump({**old, **used}, f, indent=1)


def final_eval(model, tok, cfg, stage, fmt, dist):
    """The stage model's held-out evaluation (eval.py) -> eval.json, samples.jsonl, report.md."""
    record_data(cfg, stage, dist, train=False)
    results, samples, questions = run_eval(model, tok, cfg, dist, fmt)
    results.update(eval_general(model, tok, cfg, dist, rm_paths(cfg), questions))   # + the general rows
    write_eval(cfg, stage, results, samples, dist, questions)   # ends with the stage's one-line summary


def sft_stage(cfg, stage, init, records, section, args, dist, fmt="chat"):
    """Fine-tune stage `init`'s model on records (loss on the completions only); R1's SFT recipe:
    section["epochs"] passes (2-3 in R1), cosine decay to lr * min_lr_ratio (R1 §2.3.1: 5e-5 -> 5e-6)."""
    if not records:
        raise SystemExit(f"error: {stage}: no training examples survived the filters (see "
                         f"{stage_dir(cfg, stage)}/data.json); raise min_examples or sample more")
    tok = get_tokenizer(cfg["tokenizer"])
    model = load_init_model(cfg, init, dist.device)
    tokens, mask = sft.pack_examples(distill.sft_examples(tok, records), section["seq_len"], tok.pad_id)
    steps = max(1, math.ceil(section["epochs"] * len(tokens) / section["batch_size"]))
    scfg = section_config(sft.SFTConfig, cfg, section, steps=steps)
    print0(f"{stage}: SFT of {init} on {len(records)} examples ({len(tokens)} rows of {section['seq_len']}), "
           f"{steps} steps")
    d = stage_dir(cfg, stage)
    wrapped = wrap(model, cfg, dist)
    sft.train(wrapped, tokens, mask, scfg, dist, d, resume=args.resume, desc=stage)
    plot_stage(d, ["loss", "lr"], "sft.png")
    save_stage_model(wrapped, cfg, stage, steps, tok, dist)
    final_eval(wrapped, tok, cfg, stage, fmt, dist)


def grpo_stage(cfg, stage, init, section, reward, tasks, args, dist, fmt="chat"):
    """GRPO (grpo.train) from stage `init`'s model, which is also the KL reference (R1 eq. 1), with the section's
    GRPOConfig fields; then the final evaluation and the paper's figures in miniature."""
    tok = get_tokenizer(cfg["tokenizer"])
    gcfg = section_config(grpo.GRPOConfig, cfg, section)
    torch.manual_seed(gcfg.seed)
    policy = load_init_model(cfg, init, dist.device)
    policy = wrap_model(policy, dist, fsdp=cfg.get("fsdp", False), find_unused_parameters=policy.mtp is not None,
                        ep=cfg.get("ep", 1))
    ref = load_init_model(cfg, init, dist.device).eval().requires_grad_(False) if gcfg.beta > 0 else None
    opt = grpo.make_optimizer(policy, gcfg)
    d = stage_dir(cfg, stage)
    record_data(cfg, stage, dist, train=True)
    final = {}

    def final_evaluate(m):      # the whole held-out set after the last step (in between: eval.n_during questions)
        res, samples, final["questions"] = run_eval(m, tok, cfg, dist, fmt)
        return res, samples
    results = grpo.train(policy, ref, opt, tasks, reward, tok, gcfg, d, dist, steps=section["steps"],
                         eval_every=section["eval_every"], final_evaluate=final_evaluate,
                         evaluate=lambda m: run_eval(m, tok, cfg, dist, fmt, during=True)[:2], prompt_fn=FORMATS[fmt][0], resume=args.resume,
                         ckpt_every=cfg.get("ckpt_every", 10), count_words=REFLECTIVE,
                         text_flags={"reflect_eff": effective_reflection}, extra_ckpt={"config": cfg})
    results.update(eval_general(policy, tok, cfg, dist, rm_paths(cfg), final["questions"]))
    save_stage_model(policy, cfg, stage, section["steps"], tok, dist)
    if dist.is_main:
        sets = cfg["eval"]["sets"]
        rl_figures(d, sets, cfg["eval"]["k"])
        plot_stage(d, ["reward", "accuracy", "format", "kl", "clip_low", "clip_high", "entropy"], "training.png",
                   "RL step")
        plot_stage(d, list(reward), "reward_parts.png", "RL step")      # each part: mean over its own rows
        plot_stage(d, [f"eval_{x}_{k}" for x in sets for k in ("mixed", "language")], "language.png", "RL step")
    write_eval(cfg, stage, results, [], dist, final["questions"])


def wrap(model, cfg, dist):
    """DDP, or FSDP2 per block where the config says "fsdp": true, with the routed experts sharded over groups of
    "ep" ranks where it says "ep": N > 1 (common.wrap_model, ep.py)."""
    return wrap_model(model, dist, fsdp=cfg.get("fsdp", False), ep=cfg.get("ep", 1))


def only(kinds, f):
    """Reward f on the rows whose task is one of `kinds`, NaN ("does not apply": adds nothing to the reward, left
    out of its logged mean) on the others: one scenario's reward in a batch that mixes reasoning and general
    prompts (all_rl)."""
    def g(prompts, completions, task=None, **cols):
        n = len(completions)
        idx = [i for i in range(n) if task[i] in kinds]
        out = [math.nan] * n
        if idx:
            sub = {k: ([v[i] for i in idx] if isinstance(v, list) and len(v) == n else v) for k, v in cols.items()}
            for i, r in zip(idx, f([prompts[i] for i in idx], [completions[i] for i in idx],
                                   task=[task[i] for i in idx], **sub)):
                out[i] = r
        return out
    g.__name__ = getattr(f, "__name__", "reward")
    return g


# ------------------------------------------------------------------------------------------------ the stages
def stage_pretrain(cfg, args, dist, stage="pretrain"):
    """Pretrain V3-toy on the synthetic corpus (next-token prediction on every token). `stage` names the run
    folder: distill pretrains its students' bases with it (pretrain_student_<s>, cfg["model"] = the student's)."""
    section = cfg["pretrain"]
    tok = get_tokenizer(cfg["tokenizer"])
    torch.manual_seed(section["seed"])
    model = Transformer(ModelArgs(**{**cfg["model"], "vocab_size": tok.vocab_size})).to(dist.device)
    with toyworld.countdown_traces(section.get("countdown_traces", "search")):     # "scripted": the ablation
        docs = data.pretrain_corpus(section["n_docs"], seed=section["seed"], difficulty=cfg.get("difficulty"))
    # encoded in chunks and packed as they come: the whole corpus as lists of Python ints would be ~1 GB (toy)
    ids = (x for i in range(0, len(docs), 4096) for x in tok.encode_batch(docs[i:i + 4096]))
    tokens, mask = sft.pack_examples(((x + [tok.eos_id], [1] * (len(x) + 1)) for x in ids), section["seq_len"],
                                     tok.pad_id)
    print0(f"pretrain: {len(docs)} documents, {int(mask.sum())} tokens in {len(tokens)} rows of "
           f"{section['seq_len']}; model {sum(q.numel() for q in model.parameters()) / 1e6:.2f}M params")
    scfg = section_config(sft.SFTConfig, cfg, section)
    d = stage_dir(cfg, stage)
    wrapped = wrap(model, cfg, dist)
    sft.train(wrapped, tokens, mask, scfg, dist, d, resume=args.resume, desc=stage)
    plot_stage(d, ["loss", "tokens_per_s"], "pretrain.png")
    save_stage_model(wrapped, cfg, stage, scfg.steps, tok, dist)
    final_eval(wrapped, tok, cfg, stage, "r1zero", dist)


def stage_reward_models(cfg, args, dist):
    """R1 §2.3.4's two reward models on the base model (reward_model.build): helpfulness (Bradley-Terry, scores the
    final answer) and safety (pointwise, scores the whole response). Then every finished model lacking them
    gets the helpfulness/safety columns."""
    section = cfg["reward_models"]
    tok = get_tokenizer(cfg["tokenizer"])
    scfg = section_config(sft.SFTConfig, cfg, section)
    for which in reward_model.KINDS:
        d = stage_dir(cfg, f"rm_{which}")

        def train_one():
            acc = reward_model.build(which, lambda: load_stage_model(cfg, "pretrain", "cpu"), tok, section, scfg,
                                     dist, d, lambda m: wrap_model(m, dist))
            if dist.is_main:
                plot_stage(d, ["loss", "accuracy"], "training.png")
                with open(os.path.join(d, "eval.json"), "w") as f:
                    json.dump({"heldout": {"accuracy": acc, "n": section["n_eval"],
                                           "kind": reward_model.KINDS[which][0]}}, f, indent=1)
            print0(summary(d, f"rm_{which}", f"held-out accuracy {acc:.3f}"))
            barrier(dist)
        part(cfg, f"rm_{which}", args, train_one)
    backfill_general(cfg, dist)


def backfill_general(cfg, dist):
    """Add the general/safety columns to finished models evaluated before the reward models existed. The work
    list is fixed before anything is written, so that every rank runs the same evaluations."""
    todo = []
    for p in model_products(cfg):
        res = read_json(os.path.join(stage_dir(cfg, p), "eval.json"))
        if res is not None and "helpful" not in res.get("general", {}) and os.path.exists(
                os.path.join(stage_dir(cfg, p), "model.pt")):
            todo.append((p, res))
    barrier(dist)
    tok = get_tokenizer(cfg["tokenizer"])
    for p, res in todo:
        general = []                  # the general/safety rows join the stage's per-question results
        res.update(eval_general(load_stage_model(cfg, p, dist.device), tok, cfg, dist, rm_paths(cfg), general))
        if dist.is_main:
            with open(os.path.join(stage_dir(cfg, p), "eval.json"), "w") as f:
                json.dump(res, f, indent=2)
            qpath = os.path.join(stage_dir(cfg, p), "eval_questions.jsonl")
            if os.path.exists(qpath):
                keep = [q for q in read_jsonl(qpath) if q["set"] not in ("general", "safety")]
                write_jsonl(qpath, keep + general)
    if dist.is_main:
        write_report(cfg, run_dir(cfg), model_products(cfg))


def stage_zero(cfg, args, dist):
    """R1-Zero (R1 §2.2): GRPO straight from the base model, the R1-Zero template (R1 Table 1) and rule rewards
    only: Reward_rule = Reward_acc + Reward_format, equal weights (R1 §2.2.2). Nothing rewards length or
    particular words: if responses grow longer or reflective words appear, RL found them useful."""
    if not cfg.get("init") and not os.path.exists(os.path.join(stage_dir(cfg, "pretrain"), "model.pt")):
        print0(f"no pretrain checkpoint for '{cfg['name']}': building it first")
        stage_pretrain(cfg, argparse.Namespace(**{**vars(args), "resume": False}), dist)
    reward = {"accuracy": (accuracy_reward, 1.0), "format": (format_reward, 1.0)}
    grpo_stage(cfg, "zero", "pretrain", cfg["zero"], reward, rl_tasks(cfg, cfg["zero"]), args, dist, fmt="r1zero")


def stage_cold_start(cfg, args, dist):
    """R1 §2.3.1, cold start -> Step1: the BASE model fine-tuned on R1-Zero's correct outputs made readable
    (distill.cold_start_set), answering chat prompts."""
    section = cfg["cold_start"]
    tok = get_tokenizer(cfg["tokenizer"])
    records = cached_data(cfg, "cold_start", args, dist, lambda: distill.cold_start_set(
        load_stage_model(cfg, "zero", dist.device), tok, train_tasks(cfg, section), section, dist,
        cfg.get("difficulty")))
    sft_stage(cfg, "cold_start", "pretrain", records, section, args, dist)


def stage_reasoning_rl(cfg, args, dist):
    """R1 §2.3.2, reasoning-oriented RL -> Step2: GRPO from Step1 on reasoning prompts (chat format) with
    Reward = accuracy + format (cold-start layout) + language consistency, summed directly (R1 §2.2.2)."""
    section = cfg["reasoning_rl"]
    reward = {"accuracy": (accuracy_reward, 1.0), "format": (cold_start_format_reward, 1.0),
              "language": (language_reward, 1.0)}
    grpo_stage(cfg, "reasoning_rl", "cold_start", section, reward, rl_tasks(cfg, section), args, dist)


def stage_rejection_sft(cfg, args, dist):
    """R1 §2.3.3, rejection sampling and SFT -> Step3: the BASE model fine-tuned on Step2's correct, clean samples
    and the base model's own right answers to general queries (distill.rejection_set)."""
    section = cfg["rejection_sft"]
    tok = get_tokenizer(cfg["tokenizer"])
    records = cached_data(cfg, "rejection_sft", args, dist, lambda: distill.rejection_set(
        load_stage_model(cfg, "reasoning_rl", dist.device), load_stage_model(cfg, "pretrain", dist.device), tok,
        train_tasks(cfg, section), section, dist, cfg.get("difficulty")))
    sft_stage(cfg, "rejection_sft", "pretrain", records, section, args, dist)


def stage_all_rl(cfg, args, dist):
    """R1 §2.3.4, RL for all scenarios -> R1. GRPO from Step3 at temperature 0.7 with all_rl_reward's terms:
    reasoning prompts get the rules, general prompts (instructions and safety requests) the reward models and
    the format, and every prompt the language consistency. General prompts join only for the last general_steps
    steps: R1 saw reward hacking when RM-based training ran longer."""
    section = cfg["all_rl"]
    need_stage(cfg, "reward_models")
    tok = get_tokenizer(cfg["tokenizer"])
    helpful, safe = reward_model.rm_rewards(reward_model.load_reward_models(rm_paths(cfg), dist.device), tok,
                                            cfg["reward_models"]["seq_len"])
    reward = all_rl_reward(helpful, safe)
    reasoning = rl_tasks(cfg, section)
    general = (data.make_tasks("general", section["n_general"], seed=section["seed"]) +
               toychat.safety_tasks(section["n_safety"], section["seed"], "train"))
    start = section["steps"] - section["general_steps"]
    grpo_stage(cfg, "all_rl", "rejection_sft", section, reward,
               lambda step: reasoning if step < start else reasoning + general, args, dist)


def all_rl_reward(helpful, safe) -> dict:
    """The final stage's reward terms, R1 §2.3.4 (Nature eq. 10): Reward = Reward_reasoning + Reward_general +
    Reward_language, each term only on the rows it applies to (only(): NaN elsewhere, so it adds nothing there
    and its logged mean is over its own rows; the curves do not dip when the other scenario joins).
      reasoning prompts: accuracy + format (the cold-start layout) + language (over the CoT). Rules only: no
                         neural reward on reasoning data (R1 §2.2.2).
      general prompts:   helpful (helpfulness RM, final answer) + safety (safety RM, whole response)
                         + format_general (the cold-start layout, or the bare answer R1 gives trivial queries:
                         rewards.general_format_reward) + language_general (over the CoT where there is one:
                         rewards.general_language_reward).
    Format and language are logged per scenario (format / format_general, language / language_general): the two
    layouts are different checks. helpful, safe: reward_model.rm_rewards's two functions."""
    R, G = distill.REASONING, distill.GENERAL
    return {"accuracy": (only(R, accuracy_reward), 1.0), "format": (only(R, cold_start_format_reward), 1.0),
            "language": (only(R, language_reward), 1.0), "helpful": (only(G, helpful), 1.0),
            "safety": (only(G, safe), 1.0), "format_general": (only(G, general_format_reward), 1.0),
            "language_general": (only(G, general_language_reward), 1.0)}


def student_cfg(cfg, name) -> dict:
    """The config of student `name`: its model section (a small DENSE model: n_dense_layers = n_layers) over the
    teacher's, and its pretraining overrides over the teacher's pretrain section."""
    student = cfg["distill"]["students"][name]
    model = {**cfg["model"], **student["model"]}
    if "_" in name or model["n_dense_layers"] != model["n_layers"]:
        raise SystemExit(f"error: distill.students.{name}: a student is named without '_' and is dense "
                         f"(n_dense_layers == n_layers, like R1's Qwen/Llama students), got n_dense_layers "
                         f"{model['n_dense_layers']}, n_layers {model['n_layers']}")
    return {**cfg, "model": model, "pretrain": {**cfg["pretrain"], **student.get("pretrain", {})}}


def stage_distill(cfg, args, dist):
    """R1 §2.4, distillation, and R1 Table 6's comparison. R1's correct, clean answers to the SFT prompts are the
    distillation set (distill.distillation_set). Each student, a small DENSE model, is pretrained on the same
    corpus as its own base (pretrain_student_<s>), then fine-tuned on the set: SFT only, no RL (distill_<s>).
    The RL-only student runs the R1-Zero recipe on its base for the same training FLOPs (rl_student_<s>)."""
    section, rejection = cfg["distill"], cfg["rejection_sft"]
    tok = get_tokenizer(cfg["tokenizer"])

    def fallback():
        need_stage(cfg, "rejection_sft")
        return read_jsonl(os.path.join(stage_dir(cfg, "rejection_sft"), "data.jsonl"))
    records = cached_data(cfg, "distill", args, dist, lambda: distill.distillation_set(
        load_stage_model(cfg, "all_rl", dist.device), tok, train_tasks(cfg, rejection),
        data.make_tasks("general", rejection["general"]["n"], seed=rejection["seed"]), section, dist, fallback))
    for name in section["students"]:
        scfg = student_cfg(cfg, name)
        part(cfg, f"pretrain_student_{name}", args,
             lambda: stage_pretrain(scfg, args, dist, stage=f"pretrain_student_{name}"))
        part(cfg, f"distill_{name}", args,
             lambda: sft_stage(cfg, f"distill_{name}", f"pretrain_student_{name}", records, section["sft"], args,
                               dist))
    part(cfg, f"rl_student_{section['rl_student']}", args,
         lambda: rl_student(cfg, section["rl_student"], records, args, dist))


def rl_student(cfg, name, records, args, dist):
    """GRPO with the R1-Zero recipe (zero's section, overridden by distill.rl) on student `name`'s base. With
    steps = 0, as many steps as make its training FLOPs match the distillation's (estimated from the prompts
    and the teacher's completion lengths; the measured FLOPs of both go to distill/compute.json)."""
    sft_cfg = cfg["distill"]["sft"]
    section = {**cfg["zero"], **cfg["distill"]["rl"]}
    tok = get_tokenizer(cfg["tokenizer"])
    student = load_stage_model(cfg, f"pretrain_student_{name}", "cpu")
    step = load_checkpoint(os.path.join(stage_dir(cfg, f"distill_{name}"), "model.pt"))["step"]
    budget = distill.sft_flops(student, step, sft_cfg["batch_size"], sft_cfg["seq_len"])
    pool = rl_tasks(cfg, section)
    with_ref = section.get("beta", 0.0) > 0
    if not section.get("steps"):
        completion = sum(len(tok.encode(r["completion"])) + 1 for r in records) / max(len(records), 1)
        prompt = sum(len(tok.encode(data.r1zero_prompt(t))) for t in pool[:64]) / min(len(pool), 64)
        rows = section["group_size"] * section["prompts_per_step"] * section.get("n_minibatches", 1)
        section["steps"] = distill.rl_steps_matching(budget, student, sft_cfg["seq_len"], with_ref, rows, prompt,
                                                     completion)
        section["eval_every"] = section["steps"]
        print0(f"rl_student_{name}: {section['steps']} GRPO steps match the distillation's {budget:.3g} FLOPs")
    reward = {"accuracy": (accuracy_reward, 1.0), "format": (format_reward, 1.0)}
    grpo_stage(cfg, f"rl_student_{name}", f"pretrain_student_{name}", section, reward, pool, args, dist,
               fmt="r1zero")
    if dist.is_main:
        rows = read_metrics(os.path.join(stage_dir(cfg, f"rl_student_{name}"), "metrics.jsonl"))
        with open(os.path.join(stage_dir(cfg, "distill"), "compute.json"), "w") as f:
            json.dump({"distill_flops": budget, "rl_steps": section["steps"], "student": name,
                       "rl_flops": distill.rl_flops(student, distill.rl_tokens(rows), sft_cfg["seq_len"], with_ref)},
                      f, indent=1)
        write_report(cfg, run_dir(cfg), model_products(cfg))


def stage_all(cfg, args, dist):
    """Every stage of STAGES in order. A finished stage (all its model.pt files exist) is skipped unless --force,
    which deletes its folders and redoes it. The others run with --resume, so a killed run picks up where it
    stopped: cached SFT sets, SFT and RL checkpoints (ckpt.pt), finished parts of multi-part stages."""
    bar = tqdm(STAGES, desc="stages", unit="stage", disable=not dist.is_main)
    for stage in bar:
        bar.set_postfix_str(stage)
        if finished(cfg, stage) and not args.force:
            print0(f"[all] {stage}: finished, skipping (--force redoes every stage)")
            continue
        if args.force and dist.is_main:
            for p in products(cfg, stage) + [stage]:
                shutil.rmtree(stage_dir(cfg, p), ignore_errors=True)
        barrier(dist)
        print0(f"[all] {stage}")
        with PeakRSS() as mem:
            STAGE_FNS[stage](cfg, argparse.Namespace(**{**vars(args), "resume": not args.force}), dist)
        release_memory()
        log_memory(cfg, stage, mem, dist)
    bar.close()
    backfill_general(cfg, dist)


def log_memory(cfg, stage, mem, dist):
    """One line per stage of `--stage all` in runs/<name>/memory.jsonl and on the console: the stage's wall time
    (this invocation's: a resumed stage counts from the resume), this rank's resident memory (MB) at its peak during
    the stage (common.PeakRSS), at its end, after release_memory, and the process's peak so far (VmHWM). A peak that
    keeps growing from stage to stage means something outlives its stage."""
    now = resident_mb()
    row = {"stage": stage, "seconds": mem.seconds, "peak_rss_mb": mem.peak_mb, "end_rss_mb": mem.end_mb,
           "released_rss_mb": now["rss_mb"], "process_peak_mb": now["peak_mb"]}
    print0(f"[all] {stage}: {mem.seconds / 60:.1f} min")
    if mem.peak_mb is not None:
        print0(f"[all] {stage}: resident memory {mem.peak_mb:.0f} MB at the stage's peak, {mem.end_mb:.0f} MB at its "
               f"end, {now['rss_mb']:.0f} MB after release (process peak {now['peak_mb']:.0f} MB)")
    if dist.is_main:
        with open(os.path.join(run_dir(cfg), "memory.jsonl"), "a") as f:
            f.write(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}) + "\n")


def stage_report(cfg, args, dist):
    """Rewrite runs/<name>/report.md from what the run holds (after `python eval.py --probe ...`, say)."""
    if dist.is_main:
        write_report(cfg, run_dir(cfg), model_products(cfg))
        print0(f"report: {os.path.join(run_dir(cfg), 'report.md')}")


STAGE_FNS = {"pretrain": stage_pretrain, "reward_models": stage_reward_models, "zero": stage_zero,
             "cold_start": stage_cold_start, "reasoning_rl": stage_reasoning_rl, "rejection_sft": stage_rejection_sft,
             "all_rl": stage_all_rl, "distill": stage_distill, "all": stage_all, "report": stage_report}


# A run name is one folder under runs/: letters, digits, "-", "_" and "." (no "/", no "..", not absolute).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str, where: str):
    if not NAME_RE.fullmatch(name or "") or ".." in name:
        raise SystemExit(f"error: {where} {name!r} is not a valid run name: it names one folder under runs/, "
                         f"so use letters, digits, '-', '_' and '.' only (no '/', no '..', not a path)")


def lock_run(cfg):
    """Take runs/<name>/.lock for this process's lifetime (main releases it): a second process on the same run
    would overwrite the first one's checkpoints and data. flock's lock dies with its process, so the lock file of a
    killed run never blocks the next one. Returns the open lock file (closing it releases the lock)."""
    d = run_dir(cfg)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, ".lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            f.close()
            raise
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise SystemExit(f"error: run '{cfg['name']}' is in use by another process (pid {holder}, lock {path}); "
                         f"wait for it to finish, or pick another --name") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--plan" in argv:   # what a run needs per GPU, before renting any (plan.py): no training, no process group
        import plan
        plan.main(argv)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", required=True, help=f"one of: {', '.join(STAGES)}, all, report")
    ap.add_argument("--config", default="toy", help="preset name in configs/ or a JSON path")
    ap.add_argument("--name", default=None, help="run name (default: the config's name)")
    ap.add_argument("--resume", action="store_true", help="continue a killed stage from its last checkpoint")
    ap.add_argument("--init", default=None, metavar="PATH", help=f"start the stage ({', '.join(INIT_STAGES)}) from "
                    f"this model instead of its predecessor's: a minR1 model.pt or a Hugging Face DeepseekV3/V2 "
                    f"directory (python model.py --import-hf converts one once)")
    ap.add_argument("--force", action="store_true", help="redo finished work (a finished stage is refused without "
                    "it; --stage all: every stage; distill and reward_models: their finished parts)")
    args, rest = ap.parse_known_args(argv)
    if args.stage not in STAGE_FNS:
        raise SystemExit(f"error: unknown stage '{args.stage}'; stages: {', '.join(STAGE_FNS)}")
    stages = STAGES if args.stage == "all" else [] if args.stage == "report" else [args.stage]
    cfg = resolve(apply_overrides(load_config(args.config), args.stage, rest))
    missing = [st for st in stages if st not in cfg]
    if missing:
        raise SystemExit(f"error: config '{args.config}' has no section for stage(s) {', '.join(missing)} "
                         f"(configs/toy.json has one for every stage)")
    check_values(cfg, stages, f"config '{args.config}'")
    datasets_jsonl.apply_to_config(cfg)   # --data / --eval-data: read now, so a bad row stops the run before it starts
    if args.name:
        check_name(args.name, "--name")
        cfg["name"] = args.name
    else:
        check_name(cfg["name"], f"config '{args.config}': name")
    INVOCATION.update(config=args.config, name=args.name)
    cfg.pop("init", None)
    if args.init:
        if args.stage not in INIT_STAGES:
            raise SystemExit(f"error: --init applies to one stage that starts from a model "
                             f"({', '.join(INIT_STAGES)}), not to --stage {args.stage}")
        if not os.path.exists(args.init):
            raise SystemExit(f"error: --init {args.init}: no such file or directory")
        cfg["init"] = args.init     # config.json records where the weights came from
    if cfg.get("sandbox_allow_unisolated"):   # sandbox.run_code reads it; without it, code is refused there
        os.environ["MINR1_ALLOW_UNISOLATED"] = "1"
        print0("warning: sandbox_allow_unisolated: model-written code runs even where the sandbox gets no "
               "namespaces (it can then read and signal this user's processes)")
    if args.stage in STAGES and finished(cfg, args.stage) and not args.force:
        where = ", ".join(os.path.join(stage_dir(cfg, p), "model.pt") for p in products(cfg, args.stage))
        raise SystemExit(f"error: the '{args.stage}' stage of run '{cfg['name']}' is already finished ({where}); "
                         f"add --force to redo it (its model is overwritten)")
    # one process per run folder; under torchrun rank 0 holds the lock for all ranks (the others share its run).
    # Taken before the process group, so that a refused run stops at once. `report` only reads, and may run beside
    # a training run.
    lock = lock_run(cfg) if args.stage != "report" and int(os.environ.get("RANK", 0)) == 0 else None
    try:
        dist = setup_distributed()
        try:
            STAGE_FNS[args.stage](cfg, args, dist)
        finally:
            cleanup_distributed()
    finally:
        if lock is not None:
            lock.close()


if __name__ == "__main__":
    sys.exit(run_cli(main))
