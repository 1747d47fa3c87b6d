"""Evaluation as R1 §3 does it: k samples per held-out question, pass@1, pass@k, cons@k, format and language.

    python train_pipeline.py --stage zero --config toy       # evaluates the base and every eval_every RL steps
    python eval.py --probe runs/toy/pretrain/model.pt --config toy   # does thinking pay for this model? -> probe.json
    python eval.py --probe M --config toy --difficulty.countdown '[3]' --max_new_tokens 768 --top 12  # overrides
    python eval.py --model runs/toy/zero/model.pt --config toy --eval-data test.jsonl   # a JSONL set (datasets_jsonl.py)
    python eval.py --model runs/toy/zero/model.pt --config toy --seed 1 --out DIR   # another draw of the toy sets

R1 §3's protocol: sample k outputs per question at temperature 0.6 and top-p 0.95 (no greedy decoding).
  pass@1  = the mean correctness over the k samples (averaged over questions)
  pass@k  = some sample of the k is correct
  cons@k  = the majority answer (over the k extracted final answers) is correct
and, per sample: format (the layout the model is asked for), language consistency (R1 §2.3.2), response length in
tokens, the share with reflective words ("wait", "check", ...) and the share whose chain of thought mixes
languages. General queries and harmful requests (eval_general) are scored by rule and by the reward models.
"""
import re
from collections import Counter

import numpy as np
import torch
from tqdm import tqdm

import data
import distill
import toychat
from answers import extract_answer
from common import on_full_params, trim_heap, unwrap
from reward_model import load_reward_models, rm_rewards
from rewards import accuracy_reward, format_reward, language_reward
from sample import generate

REFLECTIVE = ("wait", "check", "等等", "检查")   # the "aha moment" words whose frequency RL is watched for

# A model's format: (prompt_fn, the layout its format rate checks). R1-Zero and the bases answer the R1-Zero
# template (R1 Table 1); from the cold start on, models answer chat prompts in the cold-start layout (R1 §2.3.1).
FORMATS = {"r1zero": (data.r1zero_prompt, "r1zero"), "chat": (data.chat_task_prompt, "cold_start")}
COLUMNS = ("answer", "task", "nums", "target", "tests", "entry", "lang")   # the task fields the rewards read


STEP_RE = re.compile(r"(\d+(?:[-+*/]\d+)+)=(\d+)")                # a computed step "15+7=22"
MARKER_RE = re.compile(r"wait|check|等等|检查", re.I)


def effective_reflection(text: str) -> bool:
    """True when a reflection changes something: after a reflective marker ("wait", "check", ...), a step that was
    written before is written again with a different value ("4+9+1=17 ... wait, redo: 4+9+1=14"). A check that
    only says "ok", or a "wait" followed by the same value, is reflection in words only."""
    steps = [(m.start(), m.group(1), m.group(2)) for m in STEP_RE.finditer(text)]
    for marker in MARKER_RE.finditer(text):
        before = {}
        for pos, expr, val in steps:
            if pos < marker.start():
                before[expr] = val
            elif expr in before and before[expr] != val:
                return True
    return False


def paired_bootstrap(before, after, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """The change of a per-question score (after - before, the same questions in the same order) with a paired
    bootstrap interval: resample the questions with replacement n_boot times and take the central `level` range
    of the mean difference. -> {"before", "after", "diff", "lo", "hi", "n"}."""
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_bootstrap: want two equal-length 1-D score lists, got {a.shape} and {b.shape}")
    d = b - a
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"before": float(a.mean()), "after": float(b.mean()), "diff": float(d.mean()), "lo": float(lo),
            "hi": float(hi), "n": len(d)}


def _consensus(acc: list, answers: list) -> float:
    """cons@k: the correctness of the most frequent non-empty final answer (0 when there is none)."""
    votes = Counter(x.strip() for x in answers if x is not None and x.strip())
    if not votes:
        return 0.0
    top = votes.most_common(1)[0][0]
    return float(next(a for a, x in zip(acc, answers) if x is not None and x.strip() == top))


@torch.no_grad()
@on_full_params   # FSDP2: whole weights for sampling (common.full_params)
def evaluate(model, tok, sets: dict, *, k: int, temperature: float, top_p: float, max_new_tokens: int,
             dist, batch_size: int = 64, prompt_fn=data.r1zero_prompt, n_samples: int = 4, style: str = "r1zero",
             compiled: bool = False):
    """R1 §3's protocol on held-out sets (see the module docstring). style: the layout the format rate checks
    ("r1zero" | "cold_start"). compiled: sample with the torch.compile'd decode step (sample.generate). Questions are
    split over ranks and their results gathered.
    Returns (metrics: set -> dict (summarize), samples: a few rollouts for samples.jsonl, questions: one row per
    question, in set order: {"set", "i", "canon", "prompt", "answer", "correct": k values, "length": k token
    counts, "reflect_eff", "mixed", "format": k flags}, what paired comparisons between models are computed from)."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    results, samples, questions = {}, [], []
    for name, tasks in sets.items():
        idx = list(range(len(tasks)))[dist.rank::dist.world_size]
        rows = []
        per = max(1, batch_size // k)                            # questions per generate() call
        for c in tqdm(range(0, len(idx), per), desc=f"eval {name}", disable=not dist.is_main, leave=False):
            chunk = [tasks[i] for i in idx[c:c + per]]
            prompts = [prompt_fn(t) for t in chunk for _ in range(k)]
            cols = {col: [t.get(col) for t in chunk for _ in range(k)] for col in COLUMNS}
            gen = generate(model, [tok.encode(p) for p in prompts], max_new_tokens, temperature=temperature,
                           top_p=top_p, eos_id=tok.eos_id, pad_id=tok.pad_id, seed=1000 * dist.rank + c,
                           compiled=compiled)
            texts = [tok.decode(gen.tokens[j, :gen.lengths[j]].tolist()).replace("<|endoftext|>", "")
                     for j in range(len(prompts))]
            per_sample = {"correct": accuracy_reward(prompts, texts, **cols),
                          "format": format_reward(prompts, texts, style=style),
                          "language": language_reward(prompts, texts, **cols),
                          "length": gen.lengths.tolist(),
                          "reflect": [float(any(w in t.lower() for w in REFLECTIVE)) for t in texts],
                          "reflect_eff": [float(effective_reflection(t)) for t in texts],
                          "mixed": [float(distill.mixed_language(t, lg or "en")) for t, lg in zip(texts, cols["lang"])]}
            for q, t in enumerate(chunk):
                row = {key: v[q * k:(q + 1) * k] for key, v in per_sample.items()}
                row["cons"] = _consensus(row["correct"], [extract_answer(x) for x in texts[q * k:(q + 1) * k]])
                rows.append({"set": name, "i": idx[c + q], "canon": t.get("canon"), "prompt": t["prompt"],
                             "answer": t["answer"], **row})
            if dist.is_main and len(samples) < n_samples * (list(sets).index(name) + 1):
                samples += [{"set": name, "prompt": chunk[0]["prompt"], "answer": chunk[0]["answer"],
                             "completion": texts[0], "correct": per_sample["correct"][0]}]
            trim_heap()                          # this batch's freed cache back to the system (common.trim_heap)
            for j in range(len(texts)):          # "aha" samples: right after catching its own slip (R1 §2.2.4)
                if dist.is_main and per_sample["reflect_eff"][j] and per_sample["correct"][j] > 0.999 and \
                        sum(s.get("aha", False) and s["set"] == name for s in samples) < 3:
                    samples.append({"set": name, "prompt": chunk[j // k]["prompt"], "answer": chunk[j // k]["answer"],
                                    "completion": texts[j], "correct": 1.0, "aha": True})
        rows = sorted(distill.gather(rows, dist), key=lambda r: r["i"])
        results[name] = summarize(rows, k)
        questions += [{key: r[key] for key in ("set", "i", "canon", "prompt", "answer", "correct", "length",
                                               "reflect_eff", "mixed", "format")} for r in rows]
    model.train(was_training)
    return results, samples, questions


def summarize(rows: list, k: int) -> dict:
    """Per-question rows (evaluate) -> the set's metrics. pass@1, pass@k, cons@k are means over questions (pass@1_se,
    cons@k_se: their standard errors over questions); format,
    language, length (tokens, EOS included), reflect (a reflective word), reflect_eff (effective_reflection) and
    mixed are means over samples; length_correct / length_wrong over the correct / incorrect samples only."""
    def mean(xs):
        xs = list(xs)
        return sum(xs) / len(xs) if xs else None
    samples = [(c, n) for r in rows for c, n in zip(r["correct"], r["length"])]
    out = {"pass@1": mean(sum(r["correct"]) / k for r in rows),
           f"pass@{k}": mean(float(max(r["correct"]) > 0.999) for r in rows),
           f"cons@{k}": mean(r["cons"] for r in rows)}
    # standard errors over questions (the plots' 95% error bars: +-1.96 se; the report's intervals are bootstraps)
    for key, per_q in (("pass@1", [sum(r["correct"]) / k for r in rows]), (f"cons@{k}", [r["cons"] for r in rows])):
        out[f"{key}_se"] = float(np.std(per_q, ddof=1) / np.sqrt(len(per_q))) if len(per_q) > 1 else None
    for key in ("format", "language", "length", "reflect", "reflect_eff", "mixed"):
        out[key] = mean(v for r in rows for v in r[key])
    out["length_correct"] = mean(n for c, n in samples if c > 0.999)
    out["length_wrong"] = mean(n for c, n in samples if c <= 0.999)
    out["n"] = len(rows)
    return out


def run_eval(model, tok, cfg, dist, fmt="r1zero", during: bool = False):
    """The config's held-out reasoning sets (cfg["eval"]) in the model's format (FORMATS): n_per_set questions per
    set, or n_during (default n_per_set) for the evaluations in the middle of an RL stage. With the config's
    "eval_data" (a JSONL file, datasets_jsonl.py): every problem of the file, one set per task kind, and the first
    n_during of each set in the middle of a stage (all of them without n_during)."""
    e = cfg["eval"]
    prompt_fn, style = FORMATS[fmt]
    if cfg.get("eval_data"):
        from datasets_jsonl import config_data, eval_sets_from
        sets = eval_sets_from(config_data(cfg, "eval_data")[0], e.get("n_during") if during else None)
    else:
        n = e.get("n_during", e["n_per_set"]) if during else e["n_per_set"]
        sets = data.eval_sets(n, e["seed"], e["sets"], cfg.get("difficulty"))
    return evaluate(model, tok, sets, k=e["k"], temperature=e["temperature"], top_p=e["top_p"],
                    max_new_tokens=e["max_new_tokens"], dist=dist, prompt_fn=prompt_fn, style=style,
                    batch_size=e.get("batch_size", 64), compiled=e.get("compile_decode", False))


@on_full_params   # FSDP2: whole weights for sampling (common.full_params)
@torch.no_grad()
def eval_general(model, tok, cfg, dist, rm_paths=None, questions: list | None = None) -> dict:
    """Held-out general queries and harmful requests in the chat format, k samples each at the eval
    temperature (k = reward_models.eval_k, default eval.k). general: pass@1 (exact answer,
    distill.general_correct: a rule, on held-out queries, that no stage optimises; all-scenario RL optimises the
    helpfulness RM, so pass@1 is the measure of helpfulness the report rests on), helpful (mean helpfulness RM
    reward: the reward all-scenario RL optimises, not an independent measure), format (the general layout,
    rewards.general_format_reward), length. safety: violation (a harmful step spelled out, reasoning included:
    the toy world's ground truth), rm_unsafe (share the safety RM calls unsafe), length. {} for a config
    without a reward_models section; no RM values without rm_paths (the reward_models stage fills them in
    afterwards). questions: a list that gets one row per question (on every rank, in set order), for paired
    comparisons: {"set", "i", "canon", "prompt", "answer", "length": k token counts} + general: "correct",
    "format", "helpful_rm" (k values each); safety: "unsafe", "rm_unsafe" (k flags each)."""
    if "reward_models" not in cfg:
        return {}
    rm_cfg, e = cfg["reward_models"], cfg["eval"]
    k = rm_cfg.get("eval_k", e["k"])
    rms = load_reward_models(rm_paths, dist.device) if rm_paths else None
    fns = rm_rewards(rms, tok, rm_cfg["seq_len"]) if rms else None
    sets = {"general": data.make_tasks("general", rm_cfg["eval_general"], seed=e["seed"], split="eval"),
            "safety": toychat.safety_tasks(rm_cfg["eval_safety"], e["seed"], "eval", harmful_only=True)}
    out = {}
    for name, tasks in sets.items():
        outs = distill.sample(unwrap(model), tok, tasks[dist.rank::dist.world_size], data.chat_task_prompt,
                              n=k, temperature=e["temperature"], top_p=e["top_p"],
                              max_new_tokens=rm_cfg["eval_max_new_tokens"], seed=e["seed"] + 1000 * dist.rank,
                              desc=f"eval {name}" if dist.is_main else None)
        prompts, texts = [o[1] for o in outs], [o[2] for o in outs]
        ok = distill.judge([o[0] for o in outs], texts)
        rm = [0.0] * len(texts)
        if fns and texts:
            rm = fns[0](prompts, texts) if name == "general" else [float(v < 0.5) for v in fns[1](prompts, texts)]
        fmt = format_reward(prompts, texts, style="general")
        lengths = [len(tok.encode(t)) + 1 for t in texts]
        sums = torch.tensor([len(texts), sum(ok), sum(rm), sum(lengths), sum(fmt)], dtype=torch.float64)
        if dist.world_size > 1:
            torch.distributed.all_reduce(sums)
        n = max(sums[0].item(), 1)
        out[name] = ({"pass@1": sums[1].item() / n, "format": sums[4].item() / n} if name == "general" else
                     {"violation": 1 - sums[1].item() / n})
        if fns:
            out[name]["helpful" if name == "general" else "rm_unsafe"] = sums[2].item() / n
        out[name].update(length=sums[3].item() / n, n=len(tasks))
        if questions is not None:
            rows = []
            for j, t in enumerate(tasks[dist.rank::dist.world_size]):
                q = slice(j * k, (j + 1) * k)
                row = {"set": name, "i": dist.rank + j * dist.world_size, "canon": t.get("canon"),
                       "prompt": t["prompt"], "answer": t["answer"], "length": lengths[q]}
                if name == "general":
                    row.update(correct=[float(x) for x in ok[q]], format=fmt[q])
                    if fns:
                        row["helpful_rm"] = [float(x) for x in rm[q]]
                else:
                    row["unsafe"] = [float(not x) for x in ok[q]]
                    if fns:
                        row["rm_unsafe"] = [float(x) for x in rm[q]]
                rows.append(row)
            questions += sorted(distill.gather(rows, dist), key=lambda r: r["i"])
    return out


# ------------------------------------------------------------------------------------------- the premise probe
# R1-Zero can only discover that thinking pays if it does pay for the base model: searching longer and checking
# more must make its answers right more often. These prefixes (task -> text) force a style right after
# "Assistant:": a direct answer, or the worked way (which starts by restating the problem).
FORCED = {"arith": {"direct": lambda t: " <think> so", "worked": lambda t: f" <think> {t['a']}{t['op']}{t['b']}."},
          "countdown": {"direct": lambda t: " <think> so",
                        "worked": lambda t: f" <think> {', '.join(map(str, t['nums']))} -> {t['target']}."}}
WORK_RE = {"arith": re.compile(r"check:|检查:"), "countdown": re.compile(r"\btry\b|试")}
RESTATE_RE = re.compile(r"\s*<think>\s*\d")     # a pad that opens by restating the problem (a direct one: "so ...")


def restated_right(kind: str, tasks: list, texts: list) -> list:
    """[how many samples open by restating the problem, the share of them that restate it exactly (FORCED's worked
    prefix)]. A base that copies the problem wrong searches the wrong problem (docs/toy_run_24_seed7)."""
    said = [text.startswith(FORCED[kind]["worked"](t)) for t, text in zip(tasks, texts) if RESTATE_RE.match(text)]
    return [len(said), sum(said) / max(1, len(said))]


@on_full_params   # FSDP2: whole weights for sampling (common.full_params)
@torch.no_grad()
def premise_probe(model, tok, cfg, dist, n: int = 48, k: int = 8, top: int = 4) -> dict:
    """On n English held-out questions per set, k samples each at the eval temperature: accuracy by how much work a
    sample writes (countdown: tries; arithmetic: checks; buckets 0..top-1 and top+), and accuracy when the
    completion is forced to start the direct or the worked way (FORCED). -> {set: {"by_work": {bucket: [samples,
    accuracy]}, "free", "direct", "worked", "restated": restated_right of the free samples}}; every rank returns
    the same."""
    e = cfg["eval"]
    out = {}
    for kind in (s for s in e["sets"] if s in FORCED):
        tasks = [t for t in data.eval_sets(4 * n, e["seed"], [kind], cfg.get("difficulty"))[kind]
                 if t["lang"] == "en"][:n]
        res, work = {}, {}
        for style, prefix in (("free", lambda t: ""), *FORCED[kind].items()):
            outs = distill.gather(distill.sample(
                unwrap(model), tok, tasks[dist.rank::dist.world_size],
                lambda t, p=prefix: data.r1zero_prompt(t) + p(t), n=k, temperature=e["temperature"],
                top_p=e["top_p"], max_new_tokens=e["max_new_tokens"], seed=e["seed"]), dist)
            texts = [prefix(o[0]) + o[2] for o in outs]
            cols = {c: [o[0].get(c) for o in outs] for c in COLUMNS}
            correct = accuracy_reward([o[1] for o in outs], texts, **cols)
            res[style] = sum(correct) / max(1, len(correct))
            if style == "free":
                res["restated"] = restated_right(kind, [o[0] for o in outs], texts)
                for text, ok in zip(texts, correct):
                    work.setdefault(min(len(WORK_RE[kind].findall(text)), top), []).append(ok)
        res["by_work"] = {(f"{top}+" if b == top else str(b)): [len(v), sum(v) / len(v)]
                          for b, v in sorted(work.items())}
        out[kind] = res
    return out


def main(argv=None):
    import argparse
    import json
    import os

    from checkpoint import build_model_from_checkpoint
    from common import Dist
    from config import apply_overrides, check_values, load_config
    from tokenizer import get_tokenizer
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", metavar="MODEL_PT", help="a base model (e.g. runs/toy/pretrain/model.pt)")
    ap.add_argument("--model", metavar="MODEL_PT", help="evaluate this model on --eval-data, or on the config's "
                    "held-out toy sets (its eval section; e.g. --seed 1 for another draw) into --out")
    ap.add_argument("--out", metavar="DIR", help="--model on the toy sets: the folder for eval.json and "
                    "eval_questions.jsonl (what report.py compares)")
    ap.add_argument("--eval-data", metavar="JSONL", help="the problems to evaluate on (datasets_jsonl.py)")
    ap.add_argument("--data-format", default="auto", help="how to read --eval-data: auto, problems, gsm8k, math, "
                    "countdown")
    ap.add_argument("--bad-rows", default="refuse", help="refuse (stop at the first bad row) or skip (report each)")
    ap.add_argument("--format", default="r1zero", choices=sorted(FORMATS), help="the prompt layout: r1zero (bases, "
                    "R1-Zero) or chat (every model from the cold start on)")
    ap.add_argument("--config", default="toy", help="the config whose eval section and difficulty levels to use")
    ap.add_argument("-n", type=int, default=48, help="English held-out questions per set")
    ap.add_argument("-k", type=int, default=None, help="samples per question (probe: 8; --model: the config's)")
    ap.add_argument("--top", type=int, default=4, help="probe: the last bucket of work written is 'top or more'")
    args, rest = ap.parse_known_args(argv)
    if bool(args.probe) == bool(args.model):
        raise SystemExit("error: give --probe MODEL_PT, or --model MODEL_PT --eval-data FILE")
    if args.model:
        return eval_file(args, rest)
    cfg = apply_overrides(load_config(args.config), "eval", rest)     # e.g. --difficulty.countdown [3]
    check_values(cfg, [], f"config '{args.config}'")
    if not os.path.isfile(args.probe):
        raise SystemExit(f"error: no model at {args.probe}")
    args.k = args.k or 8
    model, ck = build_model_from_checkpoint(args.probe)
    res = premise_probe(model, get_tokenizer(ck.get("tokenizer") or cfg["tokenizer"]), cfg, Dist(), args.n, args.k,
                        args.top)
    path = os.path.join(os.path.dirname(os.path.abspath(args.probe)), "probe.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    for kind, r in res.items():
        work = "  ".join(f"{b}: {acc:.3f} ({cnt})" for b, (cnt, acc) in r["by_work"].items())
        print(f"{kind}: free {r['free']:.3f}  forced direct {r['direct']:.3f}  forced worked {r['worked']:.3f}")
        print(f"  accuracy by {'tries' if kind == 'countdown' else 'checks'} written: {work}")
        print(f"  the problem restated exactly in {r['restated'][1]:.3f} of the {r['restated'][0]} free samples that "
              "restate it")
    print(f"wrote {path} (`python train_pipeline.py --stage report --config NAME` puts it into report.md)")


def eval_file(args, overrides=()):
    """`python eval.py --model M --eval-data FILE [--max_new_tokens 512 ...]`: R1 §3's protocol (the config's eval
    section: k, temperature, top_p, max_new_tokens; overrides as train_pipeline.py takes them, a bare key being
    one of the eval section's) on every problem of FILE -> eval_<file>.json (set -> metrics, and which file) and
    eval_<file>_questions.jsonl (one row per question) beside the model.
    `python eval.py --model M --out DIR [--seed 1 ...]`: the config's own held-out toy sets (n_per_set questions
    each, drawn with its eval seed) -> DIR/eval.json and DIR/eval_questions.jsonl, a stage folder's layout, so
    that `python report.py DIR OTHER` pairs it with any stage evaluated on the same draw."""
    import json
    import os

    from checkpoint import build_model_from_checkpoint
    from common import Dist, write_jsonl
    from config import apply_overrides, check_values, load_config
    from datasets_jsonl import apply_to_config
    from tokenizer import get_tokenizer
    if bool(args.eval_data) == bool(args.out):
        raise SystemExit("error: --model needs --eval-data FILE (the problems to evaluate on) or --out DIR (the "
                         "config's held-out toy sets, written to DIR), not both")
    if not os.path.isfile(args.model):
        raise SystemExit(f"error: no model at {args.model}")
    cfg = apply_overrides(load_config(args.config), "eval", list(overrides))
    if args.eval_data:
        cfg.update(eval_data=args.eval_data, data_format=args.data_format, bad_rows=args.bad_rows)
    if args.k:
        cfg["eval"]["k"] = args.k
    check_values(cfg, [], f"config '{args.config}'")
    used = apply_to_config(cfg).get("eval") or {"toy_sets": cfg["eval"]["sets"], "seed": cfg["eval"]["seed"]}
    model, ck = build_model_from_checkpoint(args.model)
    results, _, questions = run_eval(model, get_tokenizer(ck.get("tokenizer") or cfg["tokenizer"]), cfg, Dist(),
                                     args.format)
    if args.eval_data:
        stem = os.path.splitext(os.path.basename(args.eval_data))[0]
        base = os.path.join(os.path.dirname(os.path.abspath(args.model)), f"eval_{stem}")
        qpath = base + "_questions.jsonl"
    else:
        os.makedirs(args.out, exist_ok=True)
        base, qpath = os.path.join(args.out, "eval"), os.path.join(args.out, "eval_questions.jsonl")
    with open(base + ".json", "w") as f:
        json.dump({**results, "eval_data": used}, f, indent=1)
    write_jsonl(qpath, questions)
    for name, m in results.items():
        print(f"{name}: pass@1 {m['pass@1']:.3f} format {m['format']:.2f} ({m['n']} questions)")
    print(f"wrote {base}.json and {qpath}")


if __name__ == "__main__":
    import sys

    from common import run_cli
    sys.exit(run_cli(main))
