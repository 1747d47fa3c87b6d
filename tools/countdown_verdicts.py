"""Audit the countdown searches in saved samples: does the model's "yes"/"no" after each try match its own values?

    python tools/countdown_verdicts.py docs/toy_run/pretrain/samples.jsonl docs/toy_run/zero/samples.jsonl

For every written try ("try 6+6=12, 12-1=11, need 11, no.") it compares the try's last value with the target
restated at the start of the search ("6, 6, 1 -> 11."), and counts: verdicts by whether that value is the target,
tries in which an earlier last move (one that used every number) already reached the target (a hit written past),
and steps whose arithmetic is wrong.
"""
import json
import re
import sys
from collections import Counter

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


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            print(path, dict(audit(json.loads(line) for line in f if line.strip())))
