"""Does the token budget bind? From an evaluation's per-question results (eval_questions.jsonl), per set: the share
of samples that ran into the budget, the share in the model's layout (format), and accuracy over all samples and
over the finished ones (in the layout).

    python tools/budget.py docs/toy_run_24_budget384/pretrain/eval_questions.jsonl --budget 384
    python tools/budget.py docs/toy_run_24/pretrain/eval_questions.jsonl docs/toy_run_24/zero/eval_questions.jsonl \
        --budget 768

A sample counts as at the budget when its length (tokens, EOS included) is within 8 tokens of it: the sampler stops
a row at the budget, and a row that ends there has no answer.
"""
import argparse
import json
from collections import defaultdict


def budget_table(rows, budget: int) -> dict:
    """{set: {"samples", "at budget", "format", "pass@1", "pass@1 finished"}} over every sample of every row."""
    cols = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not all(k in r for k in ("length", "format", "correct")):     # general / safety rows: no layout asked
            continue
        for key in ("length", "format", "correct"):
            cols[r["set"]][key] += r[key]
    out = {}
    for name, c in cols.items():
        finished = [ok for ok, f in zip(c["correct"], c["format"]) if f]
        out[name] = {"samples": len(c["length"]),
                     "at budget": sum(n >= budget - 8 for n in c["length"]) / len(c["length"]),
                     "format": sum(c["format"]) / len(c["format"]),
                     "pass@1": sum(c["correct"]) / len(c["correct"]),
                     "pass@1 finished": sum(finished) / max(1, len(finished))}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", help="eval_questions.jsonl files")
    ap.add_argument("--budget", type=int, required=True, help="the evaluation's max_new_tokens")
    a = ap.parse_args()
    for path in a.files:
        with open(path) as f:
            table = budget_table((json.loads(line) for line in f if line.strip()), a.budget)
        for name, m in table.items():
            print(f"{path} {name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in m.items()))
