"""Evaluation as R1 §3 does it: k samples per held-out question, pass@1, pass@k, cons@k, format and language.

    python train_pipeline.py --stage zero --config toy       # evaluates the base and every eval_every RL steps

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
from common import unwrap
from reward_model import load_reward_models, rm_rewards
from rewards import accuracy_reward, extract_answer, format_reward, language_reward
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
def evaluate(model, tok, sets: dict, *, k: int, temperature: float, top_p: float, max_new_tokens: int,
             dist, batch_size: int = 64, prompt_fn=data.r1zero_prompt, n_samples: int = 4, style: str = "r1zero"):
    """R1 §3's protocol on held-out sets (see the module docstring). style: the layout the format rate checks
    ("r1zero" | "cold_start"). Questions are split over ranks and the sums reduced.
    Returns (metrics: set -> dict, samples: a few rollouts for samples.jsonl)."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    results, samples = {}, []
    names = ("pass1", "passk", "cons", "questions", "format", "language", "length", "reflect", "mixed")
    for name, tasks in sets.items():
        mine = tasks[dist.rank::dist.world_size]
        sums = torch.zeros(len(names), dtype=torch.float64)
        at = {n: i for i, n in enumerate(names)}
        per = max(1, batch_size // k)                            # questions per generate() call
        for i in tqdm(range(0, len(mine), per), desc=f"eval {name}", disable=not dist.is_main, leave=False):
            chunk = mine[i:i + per]
            prompts = [prompt_fn(t) for t in chunk for _ in range(k)]
            cols = {c: [t.get(c) for t in chunk for _ in range(k)] for c in COLUMNS}
            gen = generate(model, [tok.encode(p) for p in prompts], max_new_tokens, temperature=temperature,
                           top_p=top_p, eos_id=tok.eos_id, pad_id=tok.pad_id, seed=1000 * dist.rank + i)
            texts = [tok.decode(gen.tokens[j, :gen.lengths[j]].tolist()).replace("<|endoftext|>", "")
                     for j in range(len(prompts))]
            acc = accuracy_reward(prompts, texts, **cols)
            for q in range(len(chunk)):
                a = acc[q * k:(q + 1) * k]
                answers = [extract_answer(t) for t in texts[q * k:(q + 1) * k]]
                row = torch.zeros(len(names), dtype=torch.float64)
                row[[at["pass1"], at["passk"], at["cons"], at["questions"]]] = torch.tensor(
                    [sum(a) / k, float(max(a) > 0.999), _consensus(a, answers), 1.0], dtype=torch.float64)
                sums += row
            sums[at["format"]] += sum(format_reward(prompts, texts, style=style))
            sums[at["language"]] += sum(language_reward(prompts, texts, **cols))
            sums[at["length"]] += gen.lengths.sum().item()
            sums[at["reflect"]] += sum(any(w in t.lower() for w in REFLECTIVE) for t in texts)
            sums[at["mixed"]] += sum(distill.mixed_language(t, lg or "en") for t, lg in zip(texts, cols["lang"]))
            if dist.is_main and len(samples) < n_samples * (list(sets).index(name) + 1):
                samples += [{"set": name, "prompt": chunk[0]["prompt"], "answer": chunk[0]["answer"],
                             "completion": texts[0], "correct": acc[0]}]
        if dist.world_size > 1:
            torch.distributed.all_reduce(sums)
        s = dict(zip(names, sums.tolist()))
        nq, ns = max(s["questions"], 1), max(s["questions"] * k, 1)
        results[name] = {"pass@1": s["pass1"] / nq, f"pass@{k}": s["passk"] / nq, f"cons@{k}": s["cons"] / nq,
                         "format": s["format"] / ns, "language": s["language"] / ns, "length": s["length"] / ns,
                         "reflect": s["reflect"] / ns, "mixed": s["mixed"] / ns, "n": int(s["questions"])}
    model.train(was_training)
    return results, samples


def run_eval(model, tok, cfg, dist, fmt="r1zero"):
    """The config's held-out reasoning sets (cfg["eval"]) in the model's format (FORMATS)."""
    e = cfg["eval"]
    prompt_fn, style = FORMATS[fmt]
    sets = data.eval_sets(e["n_per_set"], e["seed"], e["sets"], cfg.get("difficulty"))
    return evaluate(model, tok, sets, k=e["k"], temperature=e["temperature"], top_p=e["top_p"],
                    max_new_tokens=e["max_new_tokens"], dist=dist, prompt_fn=prompt_fn, style=style)


@torch.no_grad()
def eval_general(model, tok, cfg, dist, rm_paths=None) -> dict:
    """Held-out general queries and harmful requests in the chat format, k samples each at the eval
    temperature (k = reward_models.eval_k, default eval.k). general: pass@1 (exact answer,
    distill.general_correct), helpful (mean helpfulness reward), length. safety: violation (a harmful step
    spelled out, reasoning included: the toy world's ground truth), rm_unsafe (share the safety RM calls
    unsafe), length. {} for a config without a reward_models section; no RM values without rm_paths (the
    reward_models stage fills them in afterwards)."""
    if "reward_models" not in cfg:
        return {}
    rm_cfg, e = cfg["reward_models"], cfg["eval"]
    rms = load_reward_models(rm_paths, dist.device) if rm_paths else None
    fns = rm_rewards(rms, tok, rm_cfg["seq_len"]) if rms else None
    sets = {"general": data.make_tasks("general", rm_cfg["eval_general"], seed=e["seed"], split="eval"),
            "safety": toychat.safety_tasks(rm_cfg["eval_safety"], e["seed"], "eval", harmful_only=True)}
    out = {}
    for name, tasks in sets.items():
        outs = distill.sample(unwrap(model), tok, tasks[dist.rank::dist.world_size], data.chat_task_prompt,
                              n=rm_cfg.get("eval_k", e["k"]), temperature=e["temperature"], top_p=e["top_p"],
                              max_new_tokens=rm_cfg["eval_max_new_tokens"], seed=e["seed"] + 1000 * dist.rank)
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
