"""Audit the countdown searches in saved samples: does the model's "yes"/"no" after each try match its own values?

    python tools/countdown_verdicts.py docs/toy_run/pretrain/samples.jsonl docs/toy_run/zero/samples.jsonl
    python tools/countdown_verdicts.py --model runs/toy/pretrain/model.pt     # teacher-forced verdicts (~1 min)
    python tools/countdown_verdicts.py --model runs/toy24/pretrain/model.pt --level 3     # on the 24 game

For every written try ("try 6+6=12, 12-1=11, need 11, no.") it compares the try's last value with the target
restated at the start of the search ("6, 6, 1 -> 11."), and counts: verdicts by whether that value is the target,
tries in which an earlier last move (one that used every number) already reached the target (a hit written past),
and steps whose arithmetic is wrong.

--model asks a checkpoint the verdict question on the toy world's own searches instead (teacher forcing: the trace
is the world's, right up to "need T,"): its P(yes) / (P(yes) + P(no)) at each verdict, split by hit and miss. It
separates "cannot compare" from "compares, but its own earlier errors mislead it". It then asks the same of the
corpus's drill comparisons, half of them hits, where nothing but the comparison decides the verdict.
"""
import argparse
import json
import os
import random
import re
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRY = re.compile(r"try ([^.]*?), need (\d+), (yes|no)\.")
STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


def true_value(a: int, op: str, b: int):
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]


def audit(rows) -> Counter:
    c = Counter()
    for r in rows:
        if r.get("set") != "countdown":
            continue
        head = re.search(r"((?:\d+, )+\d+) -> (\d+)\.", r.get("completion", ""))
        if not head:
            continue
        n_nums, target = head.group(1).count(",") + 1, int(head.group(2))
        for tr in TRY.finditer(r["completion"]):
            steps = [(int(a), op, int(b), int(v)) for a, op, b, v in STEP.findall(tr.group(1))]
            if not steps:
                continue
            c["tries"] += 1
            c[f"'{tr.group(3)}' after the target" if steps[-1][3] == target else f"'{tr.group(3)}' after a miss"] += 1
            # the steps from the (n-1)th on are last moves (all numbers used): one of them at the target, then more
            c["a hit written past"] += any(v == target for *_, v in steps[n_nums - 2:-1])
            c["wrong step values"] += sum(true_value(a, op, b) != v for a, op, b, v in steps)
    return c


def teacher_forced(path: str, n_problems: int = 150, seed: int = 5, where: str = "search", level: int = 1) -> dict:
    """{"hit" | "miss": (verdicts, mean P(yes), share with P(yes) > 1/2)} over the verdicts of `where`:
    "search": the worked searches of n_problems fresh training problems of countdown level `level` (English;
    level 3: the 24 game), each in the R1-Zero template as the corpus writes it; "drill": n_problems of the
    corpus's drill documents, whose comparisons ("4*8=32, need 32, yes.") are half hits and stand alone, so a model
    that fails there cannot compare at all."""
    import torch

    import data
    import toyworld
    from sample import load_model
    from tokenizer import get_tokenizer
    model, _, tok_name = load_model(path)
    tok = get_tokenizer(tok_name or "toy")
    yes, no = tok.encode(" yes"), tok.encode(" no")
    rng, seen = random.Random(seed), {"hit": [], "miss": []}
    for _ in range(n_problems):
        if where == "drill":
            doc = data._doc_drill(rng, None)[0]
        else:
            t = data._sample_task("countdown", rng, "train", level, "en")
            doc = data.r1zero_prompt(t) + " <think> " + toyworld.worked_solution(t, rng)[0]
        for m in re.finditer(r"=(\d+), need (\d+),", doc):
            ids = tok.encode(doc[:m.end()])[-model.args.max_seq_len:]
            with torch.no_grad():
                p = torch.softmax(model(torch.tensor([ids]))[0, -1].float(), -1)
            seen["hit" if m.group(1) == m.group(2) else "miss"].append(float(p[yes[0]] / (p[yes[0]] + p[no[0]])))
    return {k: (len(v), sum(v) / max(len(v), 1), sum(x > 0.5 for x in v) / max(len(v), 1)) for k, v in seen.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("samples", nargs="*", help="samples.jsonl files of a run's evaluations")
    ap.add_argument("--model", help="a model.pt: teacher-forced verdicts on the toy world's own searches")
    ap.add_argument("--level", type=int, default=1, help="--model: the searches' countdown level (3: the 24 game)")
    a = ap.parse_args()
    for path in a.samples:
        with open(path) as f:
            print(path, dict(audit(json.loads(line) for line in f if line.strip())))
    if a.model:
        for where in ("search", "drill"):
            for kind, (n, p, share) in teacher_forced(a.model, where=where, level=a.level).items():
                print(f"{a.model}: {where}, at a {kind}: {n} verdicts, mean P(yes) {p:.3f}, says yes {share:.3f}")
