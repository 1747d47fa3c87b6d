"""minR1's command line: every stage of the DeepSeek-R1 pipeline (R1 §2), its evaluation and the run report.

    python train_pipeline.py --stage pretrain --config toy               # the toy base model "V3-toy"
    python train_pipeline.py --stage zero --config toy                   # R1-Zero: GRPO + rule rewards
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
import os
import random
import sys
from collections import Counter
from dataclasses import asdict

import torch

import data
from common import (MetricsLogger, cleanup_distributed, get_rng_state, load_checkpoint, load_model_state_dict,
                    load_optimizer_state_dict, model_state_dict, optimizer_state_dict, plot_metrics, print0,
                    save_checkpoint, set_rng_state, setup_distributed, unwrap, wrap_model)
from model import ModelArgs, Transformer
from rewards import accuracy_reward, extract_answer, format_reward, language_reward
from sample import generate

ROOT = os.path.dirname(os.path.abspath(__file__))
STAGES = ["pretrain", "zero"]
BUILDS = {"zero": "pretrain"}          # stage -> the stage whose checkpoint it starts from
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
             dist, batch_size: int = 64, prompt_fn=data.r1zero_prompt, n_samples: int = 4):
    """R1 §3's protocol on held-out sets: k samples per question at temperature 0.6 / top-p 0.95 (no greedy).

    pass@1 = mean correctness over the k samples; pass@k = some sample correct; cons@k = the majority answer
    (over the k extracted final answers) correct. Also the format rate, language consistency, mean response
    length and the reflective-word rate. Questions are split over ranks and the sums reduced.
    Returns (metrics: set -> dict, samples: a few rollouts for samples.jsonl)."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    results, samples = {}, []
    for name, tasks in sets.items():
        mine = tasks[dist.rank::dist.world_size]
        sums = torch.zeros(8, dtype=torch.float64)
        for i in range(0, len(mine), max(1, batch_size // k)):
            chunk = mine[i:i + max(1, batch_size // k)]
            prompts = [prompt_fn(t) for t in chunk for _ in range(k)]
            cols = {c: [t.get(c) for t in chunk for _ in range(k)] for c in ("answer", "task", "nums", "target",
                                                                            "tests", "entry", "lang")}
            gen = generate(model, [tok.encode(p) for p in prompts], max_new_tokens, temperature=temperature,
                           top_p=top_p, eos_id=tok.eos_id, pad_id=tok.pad_id,
                           seed=1000 * dist.rank + i)
            texts = [tok.decode(gen.tokens[j, :gen.lengths[j]].tolist()).replace("<|endoftext|>", "")
                     for j in range(len(prompts))]
            acc = accuracy_reward(prompts, texts, **cols)
            fmt = format_reward(prompts, texts, **cols)
            lang = language_reward(prompts, texts, **cols)
            for q in range(len(chunk)):
                a = acc[q * k:(q + 1) * k]
                answers = [extract_answer(t) for t in texts[q * k:(q + 1) * k]]
                votes = Counter(x.strip() for x in answers if x is not None and x.strip())
                cons = 0.0
                if votes:
                    top = votes.most_common(1)[0][0]
                    cons = float(next(a[j] for j in range(k) if answers[j] is not None and answers[j].strip() == top))
                sums += torch.tensor([sum(a) / k, float(max(a) > 0.999), cons, 1.0, 0, 0, 0, 0], dtype=torch.float64)
            sums[4] += sum(fmt)
            sums[5] += sum(lang)
            sums[6] += gen.lengths.sum().item()
            sums[7] += sum(any(w in t.lower() for w in REFLECTIVE) for t in texts)
            if dist.is_main and len(samples) < n_samples * (list(sets).index(name) + 1):
                samples += [{"set": name, "prompt": chunk[0]["prompt"], "answer": chunk[0]["answer"],
                             "completion": texts[0], "correct": acc[0]}]
        if dist.world_size > 1:
            torch.distributed.all_reduce(sums)
        nq, ns = max(sums[3].item(), 1), max(sums[3].item() * k, 1)
        results[name] = {"pass@1": sums[0].item() / nq, f"pass@{k}": sums[1].item() / nq,
                         f"cons@{k}": sums[2].item() / nq, "format": sums[4].item() / ns,
                         "language": sums[5].item() / ns, "length": sums[6].item() / ns,
                         "reflect": sums[7].item() / ns, "n": int(sums[3].item())}
    model.train(was_training)
    return results, samples


def eval_sets(cfg: dict) -> dict:
    e = cfg["eval"]
    sets = data.eval_sets(e["n_per_set"], seed=e["seed"])
    return {name: sets[name] for name in e["sets"]}


def run_eval(model, tok, cfg, dist):
    e = cfg["eval"]
    return evaluate(model, tok, eval_sets(cfg), k=e["k"], temperature=e["temperature"], top_p=e["top_p"],
                    max_new_tokens=e["max_new_tokens"], dist=dist)


# ------------------------------------------------------------------------------------------------ run folder
def stage_dir(cfg, stage):
    return os.path.join(ROOT, "runs", cfg["name"], stage)


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
    """runs/<name>/report.md: one row per stage's model, the held-out metrics as columns, then the plots."""
    run = os.path.join(ROOT, "runs", cfg["name"])
    rows, cols = [], []
    for stage in STAGES:
        p = os.path.join(run, stage, "eval.json")
        if os.path.exists(p):
            with open(p) as f:
                res = json.load(f)
            rows.append((stage, res))
            for s, m in res.items():
                cols += [(s, key) for key in m if key != "n" and (s, key) not in cols]
    lines = [f"# minR1 run '{cfg['name']}'", "", "Held-out evaluation (R1 §3 protocol: k samples per question at "
             f"temperature {cfg['eval']['temperature']}, top-p {cfg['eval']['top_p']}).", "",
             "| model | " + " | ".join(f"{s} {key}" for s, key in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for stage, res in rows:
        lines.append(f"| {stage} | " + " | ".join(f"{res.get(s, {}).get(key, float('nan')):.3f}"
                                                 for s, key in cols) + " |")
    lines.append("")
    for stage, _ in rows:
        for png in sorted(os.listdir(os.path.join(run, stage, "plots")) if os.path.isdir(
                os.path.join(run, stage, "plots")) else []):
            lines.append(f"![{stage} {png}]({stage}/plots/{png})")
    with open(os.path.join(run, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------- stages
def stage_pretrain(cfg, args, dist):
    """Pretrain V3-toy on the synthetic corpus (next-token prediction on every token)."""
    import sft
    p = cfg["pretrain"]
    tok = data.get_tokenizer(cfg["tokenizer"])
    margs = ModelArgs(**{**cfg["model"], "vocab_size": tok.vocab_size})
    torch.manual_seed(p["seed"])
    model = Transformer(margs).to(dist.device)
    docs = data.pretrain_corpus(p["n_docs"], seed=p["seed"])
    ids = tok.encode_batch(docs) if hasattr(tok, "encode_batch") else [tok.encode(d) for d in docs]
    tokens, mask = sft.pack_examples([(x + [tok.eos_id], [1] * (len(x) + 1)) for x in ids], p["seq_len"], tok.pad_id)
    print0(f"pretrain: {len(docs)} documents, {int(mask.sum())} tokens in {len(tokens)} rows of {p['seq_len']}; "
           f"model {sum(q.numel() for q in model.parameters()) / 1e6:.2f}M params")
    scfg = sft.SFTConfig(**{k: v for k, v in p.items() if k in sft.SFTConfig.__dataclass_fields__})
    d = stage_dir(cfg, "pretrain")
    wrapped = wrap_model(model, dist, fsdp=cfg.get("fsdp", False))
    sft.train(wrapped, tokens, mask, scfg, dist, d, resume=args.resume, desc="pretrain")
    plot(d, ["loss", "tokens_per_s"], "pretrain.png")
    save_stage_model(wrapped, cfg, "pretrain", scfg.steps, tok, dist)
    results, samples = run_eval(wrapped, tok, cfg, dist)
    print0(json.dumps(results, indent=1))
    write_eval(cfg, "pretrain", results, samples, dist)


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
    import grpo
    z = cfg["zero"]
    tok = data.get_tokenizer(cfg["tokenizer"])
    ensure_stage(cfg, "pretrain", args, dist)
    gcfg = grpo.GRPOConfig(**{k: v for k, v in z.items() if k in grpo.GRPOConfig.__dataclass_fields__})
    torch.manual_seed(gcfg.seed)
    policy = load_stage_model(cfg, "pretrain", dist.device)
    # the MTP module gets no gradient from GRPO's loss: DDP must then be told to expect unused parameters
    policy = wrap_model(policy, dist, fsdp=cfg.get("fsdp", False), find_unused_parameters=policy.mtp is not None)
    ref = None
    if gcfg.beta > 0:                                     # the KL anchor: starts as the base model (R1 eq. 1)
        ref = load_stage_model(cfg, "pretrain", dist.device).eval().requires_grad_(False)
    opt = grpo.make_optimizer(policy, gcfg)
    reward = {"accuracy": (accuracy_reward, 1.0), "format": (format_reward, 1.0)}
    pool = [t for kind, n in z["tasks"].items() for t in data.make_tasks(kind, n, seed=gcfg.seed, split="train")]
    run_rl(cfg, "zero", policy, ref, opt, gcfg, reward, pool, tok, args, dist, steps=z["steps"],
           eval_every=z["eval_every"])


def run_rl(cfg, stage, policy, ref, opt, gcfg, reward, pool, tok, args, dist, *, steps, eval_every):
    """The RL stage driver shared by every GRPO stage: rollout/update steps (grpo.grpo_step), held-out evaluation
    every eval_every steps, metrics, resumable checkpoints, the paper's figures in miniature, the stage model."""
    import grpo
    from tqdm import tqdm
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
        res, samples = run_eval(policy, tok, cfg, dist)
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
        tasks = rng.sample(pool, n_rollout) if len(pool) >= n_rollout else rng.choices(pool, k=n_rollout)
        m = grpo.grpo_step(policy, ref, opt, tasks[dist.rank::dist.world_size], reward, tok, gcfg, step, dist,
                           count_words=REFLECTIVE)
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
    save_stage_model(policy, cfg, stage, steps, tok, dist)
    if dist.is_main:
        sets = list(results)
        plot(d, [f"eval_{s}_pass@1" for s in sets] + [f"eval_{s}_format" for s in sets], "eval_accuracy.png")
        plot(d, ["response_length"] + [f"eval_{s}_length" for s in sets], "response_length.png")
        plot(d, ["words"] + [f"eval_{s}_reflect" for s in sets], "reflective_words.png")
        plot(d, ["reward", "accuracy", "format", "kl", "clip_low", "clip_high", "entropy"], "training.png")
    write_eval(cfg, stage, results, [], dist)


STAGE_FNS = {"pretrain": stage_pretrain, "zero": stage_zero}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", required=True, help=f"one of: {', '.join(STAGES)}")
    ap.add_argument("--config", default="toy", help="preset name in configs/ or a JSON path")
    ap.add_argument("--name", default=None, help="run name (default: the config's name)")
    ap.add_argument("--resume", action="store_true", help="continue a killed stage from its last checkpoint")
    args, rest = ap.parse_known_args(argv)
    if args.stage not in STAGE_FNS:
        raise SystemExit(f"error: unknown stage '{args.stage}'; stages: {', '.join(STAGE_FNS)}")
    cfg = apply_overrides(load_config(args.config), args.stage, rest)
    if args.name:
        cfg["name"] = args.name
    dist = setup_distributed()
    try:
        STAGE_FNS[args.stage](cfg, args, dist)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
