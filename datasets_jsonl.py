"""Real reasoning data sets from JSONL files: one problem format, readers for GSM8K-, MATH- and countdown-style
rows, and bad rows reported by file and line (skipped or refused, never silently dropped).

    python train_pipeline.py --stage zero --config toy --data train.jsonl --eval-data test.jsonl
    python eval.py --model runs/toy/zero/model.pt --config toy --eval-data test.jsonl
    python datasets_jsonl.py gsm8k_test.jsonl --bad-rows skip     # check a file: its format, rows, kinds, bad rows
    python datasets_jsonl.py gsm8k_test.jsonl --out problems.jsonl # ... and write it in the problem format

The problem format (one JSON object per line; blank lines are skipped):

    {"prompt": "What is 2+3?",        the question ("question" is accepted as its other name)
     "answer": "5",                   the gold final answer, a string or an integer (code: a reference
                                      solution; countdown: optional, an example solution such as "2*5+3",
                                      which must reach the target)
     "kind": "math",                  "math" | "countdown" | "code"; optional: from data.load_jsonl's "task"
                                      where a row has one, else "code" when "tests" is given, else "math"
     "tests": ["assert f(2) == 4"],   code: value tests, `assert <expr> == <literal>` (sandbox.check_tests)
     "entry": "f",                    code, optional: the function the tests call
     "nums": [2, 5, 3], "target": 13, countdown: the numbers (each used once) and the target
     "lang": "en", "difficulty": 1}   optional ("lang" default: "zh" if the prompt has CJK, else "en")

Each row becomes the task dict every stage already uses (data.task_from_row checks it, as data.load_jsonl does):
"math" is the pipeline's "arith" task (its final answer is compared by rewards.math_reward), "countdown" and
"code" keep their names. Every problem also gets "source" = "<file name>:<line>" (in eval_questions.jsonl it is
the question's "canon", so per-question results name the row they came from).

The readers (--data-format, default auto: chosen per file from the first JSON object in it):
    gsm8k      {"question", "answer": "...reasoning... #### 1,234"}      -> math, answer = the text after "####"
    math       {"problem", "solution": "... \\boxed{\\frac{1}{2}} ..."}  -> math, answer = the last \\boxed{} (nested
               braces kept); an "answer" field, where the row has one, wins; "level": "Level 3" -> difficulty 3
    countdown  {"nums": [...], "target": T}                            -> countdown, prompt written as the toy
                                                                          world writes it
    problems   the format above
A row the reader cannot use (not JSON, a missing field, a "####" answer that is not a number, no \\boxed{}, nums
not a list of integers, ...) is a bad row: --bad-rows refuse (default) stops at the first one with one line
"error: FILE:LINE: what is wrong"; --bad-rows skip prints every skipped row with its file and line and then the
count. A file with no usable row is an error either way.
"""
import argparse
import hashlib
import json
import os
import re
import sys
from collections import Counter

from answers import _last_boxed, countdown_correct, normalize_answer, parse_number
from common import DataError, print0
from data import task_from_row
from toyworld import COUNTDOWN_PROMPTS

FORMATS = ("auto", "problems", "gsm8k", "math", "countdown")
BAD_ROWS = ("refuse", "skip")
KIND_TO_TASK = {"math": "arith", "countdown": "countdown", "code": "code"}   # the pipeline's task names
TASK_TO_KIND = {v: k for k, v in KIND_TO_TASK.items()}
_LEVEL_RE = re.compile(r"Level\s+(\d+)")


class BadRow(ValueError):
    """A row that cannot be used: the message says why (the caller adds the file and the line)."""


# ------------------------------------------------------------------------------------------ the row readers
def _string(row, key) -> str:
    if key not in row:
        raise BadRow(f"missing field '{key}'")
    v = row[key]
    if not isinstance(v, str) or not v.strip():
        raise BadRow(f"'{key}' must be a non-empty string, got {json.dumps(v)[:60]}")
    return v


def _number_answer(ans: str, what: str) -> str:
    """The gold answer of a math row as written, once the checker can read it as a number."""
    try:
        ok = parse_number(normalize_answer(ans)) is not None
    except ValueError:
        ok = False
    if not ok:
        raise BadRow(f"{what} {ans[:60]!r} is not a number the math checker can compare")
    return ans


def from_problem(row: dict) -> dict:
    """The problem format -> the fields data.task_from_row checks."""
    if "prompt" not in row and "question" in row:
        row = {**row, "prompt": row["question"]}
    row = {k: v for k, v in row.items() if k != "question"}
    default = TASK_TO_KIND.get(row.get("task")) or ("code" if "tests" in row else "math")   # data.load_jsonl's "task"
    kind = row.pop("kind", default)
    if kind not in KIND_TO_TASK:
        raise BadRow(f"'kind' must be one of {', '.join(KIND_TO_TASK)}, got {json.dumps(kind)[:60]}")
    if "task" in row and row["task"] != KIND_TO_TASK[kind]:
        raise BadRow(f"'task' {row['task']!r} contradicts 'kind' {kind!r}")
    if kind == "countdown":
        row.setdefault("answer", "")
    return {**row, "task": KIND_TO_TASK[kind]}


def from_gsm8k(row: dict) -> dict:
    """GSM8K: {"question", "answer": "reasoning #### 42"}; the final answer is what follows the last "####"."""
    question, text = _string(row, "question"), _string(row, "answer")
    if "####" not in text:
        raise BadRow("'answer' has no '#### <final answer>'")
    reasoning, _, final = text.rpartition("####")
    final = final.strip()
    if not final:
        raise BadRow("nothing after '####' in 'answer'")
    return {"prompt": question, "answer": _number_answer(final, "the '####' answer"), "task": "arith",
            "solution": reasoning.strip()}


def from_math(row: dict) -> dict:
    """MATH (Hendrycks): {"problem", "solution" with \\boxed{...}, "level": "Level 3", "type"}; the answer is the
    last \\boxed{} of the solution (an "answer" field, as MATH-500 has, wins)."""
    problem, solution = _string(row, "problem"), _string(row, "solution")
    if "answer" in row:
        answer = row["answer"]
        if isinstance(answer, bool) or not isinstance(answer, (str, int)) or not str(answer).strip():
            raise BadRow(f"'answer' must be a non-empty string or an integer, got {json.dumps(answer)[:60]}")
    else:
        answer = _last_boxed(solution)
        if answer is None:
            raise BadRow("'solution' has no \\boxed{...} with balanced braces")
        if not answer.strip():
            raise BadRow("the last \\boxed{} of 'solution' is empty")
    level = _LEVEL_RE.fullmatch(str(row.get("level", "")).strip())
    return {"prompt": problem, "answer": str(answer).strip(), "task": "arith", "solution": solution,
            "difficulty": int(level.group(1)) if level else 0, **({"type": row["type"]} if "type" in row else {})}


def from_countdown(row: dict) -> dict:
    """Countdown ({"nums": [...], "target": T}, as TinyZero's set): the prompt is the toy world's English one."""
    nums, target = row.get("nums"), row.get("target")
    if "nums" not in row or "target" not in row:
        raise BadRow(f"missing field '{'nums' if 'nums' not in row else 'target'}'")
    if not isinstance(nums, list) or not nums or not all(isinstance(x, int) and not isinstance(x, bool)
                                                         for x in nums):
        raise BadRow(f"'nums' must be a non-empty list of integers, got {json.dumps(nums)[:60]}")
    if not isinstance(target, int) or isinstance(target, bool):
        raise BadRow(f"'target' must be an integer, got {json.dumps(target)[:60]}")
    prompt = row.get("prompt") or COUNTDOWN_PROMPTS["en"][0].format(nums=", ".join(map(str, nums)), t=target)
    return {"prompt": prompt, "answer": row.get("answer", ""), "task": "countdown", "nums": nums, "target": target}


READERS = {"problems": from_problem, "gsm8k": from_gsm8k, "math": from_math, "countdown": from_countdown}


def detect_format(row) -> str | None:
    """The reader for a file, from its first JSON object (None: no reader fits)."""
    if not isinstance(row, dict):
        return None
    if "problem" in row and "solution" in row:
        return "math"
    if "question" in row and isinstance(row.get("answer"), str) and "####" in row["answer"] and "kind" not in row:
        return "gsm8k"
    if "prompt" in row or "question" in row:
        return "problems"
    if "nums" in row and "target" in row:
        return "countdown"
    return None


# ------------------------------------------------------------------------------------------------ loading
def read_problems(path: str, fmt: str = "auto", bad_rows: str = "refuse", log=print0) -> tuple:
    """A data file -> (tasks, info). tasks: task dicts as data.task_from_row makes them, plus "source"
    ("<file name>:<line>"). info: {"path", "sha256", "format", "rows", "skipped", "kinds"}, what the run records.
    A bad row: DataError "<path>:<line>: ..." (refuse), or one log line per skipped row and a count (skip)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; formats: {', '.join(FORMATS)}")
    if bad_rows not in BAD_ROWS:
        raise DataError(f"bad_rows must be one of {', '.join(BAD_ROWS)}, got {bad_rows!r}")
    if not os.path.isfile(path):
        raise DataError(f"data file {path} does not exist (a JSONL file of problems; see datasets_jsonl.py)")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    name, tasks, skipped = os.path.basename(path), [], []
    for ln, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{ln}"
        try:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadRow(f"not valid JSON ({e.msg} at column {e.colno})") from None
            if fmt == "auto":
                fmt = detect_format(row) or fmt
                if fmt == "auto":
                    raise BadRow("cannot tell the format from this row (want 'prompt'/'question' + 'answer', "
                                 "GSM8K's 'question' + 'answer' with '####', MATH's 'problem' + 'solution', or "
                                 "countdown's 'nums' + 'target'); name it with --data-format")
            if not isinstance(row, dict):
                raise BadRow(f"expected a JSON object, got {type(row).__name__}")
            task = task_from_row(READERS[fmt](row), where)
            if task["task"] == "countdown" and task["answer"] and not countdown_correct(
                    task["answer"], task["nums"], task["target"]):
                raise BadRow(f"'answer' {task['answer'][:60]!r} does not make {task['target']} from {task['nums']}")
        except ValueError as e:      # BadRow, or task_from_row's message (which already names the place)
            msg = str(e) if str(e).startswith(where + ":") else f"{where}: {e}"
            if bad_rows == "refuse":
                raise DataError(f"{msg} (--bad-rows skip skips such rows)") from None
            skipped.append(msg)
            log(f"skipped {msg}")
            continue
        task["source"] = f"{name}:{ln}"
        task.setdefault("canon", task["source"])
        tasks.append(task)
    if skipped:
        log(f"{path}: skipped {len(skipped)} bad row(s), kept {len(tasks)}")
    if not tasks:
        raise DataError(f"{path}: no usable problem in the file" + (f" ({len(skipped)} bad rows skipped)"
                                                                     if skipped else ""))
    info = {"path": os.path.abspath(path), "sha256": hashlib.sha256(raw).hexdigest(), "format": fmt,
            "rows": len(tasks), "skipped": len(skipped),
            "kinds": dict(Counter(TASK_TO_KIND[t["task"]] for t in tasks))}
    return tasks, info


_CACHE = {}


def load_problems(path: str, fmt: str = "auto", bad_rows: str = "refuse") -> tuple:
    """read_problems, once per file version: the check before any stage starts and the stage itself read the
    file once, so each skipped row is reported once. Returns (tasks, info); callers must not modify them."""
    st = os.stat(path) if os.path.isfile(path) else None
    key = (os.path.abspath(path), st and st.st_mtime_ns, st and st.st_size, fmt, bad_rows)
    if key not in _CACHE:
        _CACHE[key] = read_problems(path, fmt, bad_rows)
    return _CACHE[key]


def config_data(cfg: dict, which: str) -> tuple:
    """The config's "data" (training problems) or "eval_data" (evaluation problems) file -> (tasks, info)."""
    return load_problems(cfg[which], cfg.get("data_format", "auto"), cfg.get("bad_rows", "refuse"))


def eval_sets_from(tasks: list, n: int | None = None) -> dict:
    """Evaluation sets from file problems: one set per task kind (arith, countdown, code), in file order; the
    first n of each where n is given (the evaluations in the middle of an RL stage)."""
    sets = {}
    for t in tasks:
        sets.setdefault(t["task"], []).append(t)
    return {k: v[:n] if n else v for k, v in sets.items()}


def apply_to_config(cfg: dict) -> dict:
    """Read the config's data files now (a bad row stops the run before any stage starts) and make the eval
    section name the sets the eval file holds: with "eval_data", cfg["eval"]["sets"] = its task kinds (report.py
    and the figures read that list). Returns {"train": info, "eval": info} for the files given."""
    used = {}
    if cfg.get("data"):
        used["train"] = config_data(cfg, "data")[1]
    if cfg.get("eval_data"):
        tasks, used["eval"] = config_data(cfg, "eval_data")
        if "eval" in cfg:
            cfg["eval"]["sets"] = list(eval_sets_from(tasks))
    return used


# ------------------------------------------------------------------------------------------------ the CLI
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="a JSONL file")
    ap.add_argument("--data-format", default="auto", choices=FORMATS)
    ap.add_argument("--bad-rows", default="refuse", choices=BAD_ROWS)
    ap.add_argument("--show", type=int, default=2, metavar="N", help="print the first N problems")
    ap.add_argument("--out", default=None, help="write the problems in the problem format to this JSONL file")
    args = ap.parse_args(argv)
    tasks, info = read_problems(args.path, args.data_format, args.bad_rows)
    print(json.dumps(info, indent=1))
    for t in tasks[:args.show]:
        print(json.dumps(t, ensure_ascii=False))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for t in tasks:
                row = {"prompt": t["prompt"], "answer": t["answer"], "kind": TASK_TO_KIND[t["task"]]}
                row.update({k: t[k] for k in ("tests", "entry", "nums", "target", "lang", "difficulty") if k in t})
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(tasks)} problems to {args.out}")


if __name__ == "__main__":
    from common import run_cli
    sys.exit(run_cli(main))
