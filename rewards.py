"""
Rewards for minR1: the rule-based rewards of R1 §2.2.2 (accuracy, format, language consistency) and their weighted
combination. The answer is read out of a completion and compared with the gold one in answers.py; model-written
code runs in sandbox.py; learned reward models live in reward_model.py.

Every reward has TRL's reward-function interface

    f(prompts, completions, **columns) -> list[float]

where `completions` are the texts AFTER the prompt (for R1-Zero, what follows "Assistant:", e.g.
" <think> 2+2 is 4 </think> <answer> 4 </answer>") and `columns` are the dataset's fields as lists aligned with
the completions (answer, task, nums, target, tests, entry, lang, ...). Unknown columns are ignored, so the same
function plugs into grpo.py or into TRL's GRPOTrainer(reward_funcs=[...]).

    from rewards import accuracy_reward, format_reward, combine
    reward = combine([(accuracy_reward, 1.0), (format_reward, 1.0)])   # R1: Reward_rule = acc + format
    reward(prompts, completions, task=["arith"] * n, answer=answers)      # -> list[float]
    reward.components(prompts, completions, ...)                          # -> {"accuracy_reward": [...], ...}

    python rewards.py            # scores a few example completions and reports what the code sandbox isolates
    python rewards.py --help
    python -m pytest tests/test_rewards.py tests/test_rewards_fuzz.py -q

Robustness rules, here and in answers.py (the completions are model output, i.e. hostile input):
- no reward ever raises on a completion or hangs: per-sample work is wrapped (malformed -> 0.0), and the public
  helpers keep their documented return types on any input (countdown_correct is a bool even for "1 2");
- every input is capped in length BEFORE it is normalised or parsed (NFKC can expand a character 18x, so the
  result is capped again), and all parsing is single passes, str.find/rfind/count/split, numpy, or regexes whose
  repetitions cannot overlap (linear time); the one quadratic helper (_unwrap) only sees MAX_NUMBER_CHARS;
- the checkers are built not to pay for a wrong answer: whitespace between digits is kept ("4 2" is not 42),
  superscripts stay exponents ("4²" is not 42), an empty <answer></answer> is an empty answer, and the format
  rewards want visible text in each block (zero-width, control and format characters are not content);
- model output is never eval'd: countdown expressions go through `ast` with a whitelist and exact Fractions;
  code runs only inside the sandbox (run_code): a separate `python -I` process with an empty environment,
  rlimits, its own session, namespaces and an unprivileged uid where the machine allows (see run_code).
"""
import argparse
import math
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from answers import (ANSWER_CLOSE, ANSWER_OPEN, SEP, THINK_CLOSE, THINK_OPEN, _strip_end_tokens, _text, _visible,
                     countdown_correct, extract_answer, extract_code, general_equal, math_equal, split_cold_start)
from sandbox import run_code, sandbox_features

MAX_COT_CHARS = 200_000     # language consistency counts words in the first this-many characters of the CoT


# ----------------------------------------------------------------------------------------------------------------
# Columns as TRL passes them

def _column(values, n, name, default=None):
    """A dataset column as a list of length n (None -> all default). A length mismatch is a caller bug: raise."""
    if values is None:
        return [default] * n
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        return [values] * n  # a scalar shared by every sample (handy outside TRL)
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


def _safe(fn, *args):
    """Per-sample guard: a malformed completion scores 0.0 instead of crashing the training step."""
    try:
        value = float(fn(*args))
        return value if math.isfinite(value) else 0.0
    except Exception:  # noqa: BLE001 - by design: any failure on model output is a zero reward
        return 0.0

def math_reward(prompts, completions, answer=None, **columns):
    """1.0 if the completion's final answer equals the gold answer (R1 §2.2.2 accuracy reward), else 0.0."""
    answers = _column(answer, len(completions), "answer")
    return [_safe(lambda c, a: float(a is not None and math_equal(extract_answer(c), str(a))), c, a)
            for c, a in zip(completions, answers)]


def countdown_reward(prompts, completions, nums=None, target=None, **columns):
    """1.0 if the answer is a valid countdown expression equal to target, else 0.0."""
    n = len(completions)
    nums_col, target_col = _column(nums, n, "nums"), _column(target, n, "target")
    def one(c, ns, t):
        return float(ns is not None and t is not None and countdown_correct(extract_answer(c), ns, t))
    return [_safe(one, c, ns, t) for c, ns, t in zip(completions, nums_col, target_col)]



def code_reward(prompts, completions, tests=None, all_or_nothing=False, max_workers=None, timeout=4.0, **columns):
    """Fraction of the task's tests the completion's code passes (or 1/0 with all_or_nothing), run in the sandbox
    with one child process per completion and a small thread pool across completions (R1 §2.2.2: code accuracy
    by compiling and running test cases)."""
    n = len(completions)
    tests_col = _column(tests, n, "tests")

    def one(args):
        c, t = args
        try:
            code = extract_code(c)
            if code is None:
                return 0.0
            r = run_code(code, t, timeout=timeout)
            return float(r.passed == r.total and r.total > 0) if all_or_nothing else r.score
        except Exception:  # noqa: BLE001 - a sandbox failure on one sample is a zero, not a crashed step
            return 0.0

    workers = max(1, min(n, max_workers or min(8, os.cpu_count() or 1)))
    if n <= 1 or workers == 1:
        return [one(a) for a in zip(completions, tests_col)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, zip(completions, tests_col)))



def general_reward(prompts, completions, answer=None, **columns):
    answers = _column(answer, len(completions), "answer")
    return [_safe(lambda c, a: float(a is not None and general_equal(extract_answer(c), str(a))), c, a)
            for c, a in zip(completions, answers)]


# ----------------------------------------------------------------------------------------------------------------
# Accuracy: dispatch on the task column

_ACCURACY = {"arith": math_reward, "math": math_reward, "countdown": countdown_reward, "code": code_reward,
             "general": general_reward}
_warned = set()


def accuracy_reward(prompts, completions, task=None, **columns):
    """R1 §2.2.2 accuracy reward (Reward_acc: rule-based, no neural reward on reasoning), by task: arith/math ->
    math_reward, countdown -> countdown_reward, code -> code_reward (one batched sandbox call), general ->
    general_reward. No task column -> math. An unknown task scores 0.0 (with one warning per name)."""
    n = len(completions)
    prompts = _column(prompts, n, "prompts", "")
    tasks = _column(task, n, "task", "math")
    # Lists of length n are per-sample columns (sliced per task); anything else is an option passed through as is
    # (e.g. all_or_nothing=True for code_reward, or TRL's trainer_state).
    per_sample = {k for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n}
    out = [0.0] * n
    for name in dict.fromkeys(tasks):
        idx = [i for i in range(n) if tasks[i] == name]
        fn = _ACCURACY.get(name)
        if fn is None:
            if name not in _warned:
                _warned.add(name)
                warnings.warn(f"accuracy_reward: unknown task {name!r}; known: {sorted(_ACCURACY)}; scoring 0")
            continue
        sub = {k: ([v[i] for i in idx] if k in per_sample else v) for k, v in columns.items()}
        for i, r in zip(idx, fn([prompts[i] for i in idx], [completions[i] for i in idx], **sub)):
            out[i] = r
    return out


# ----------------------------------------------------------------------------------------------------------------
# Format (R1 §2.2.2): <think> reasoning </think> <answer> answer </answer>; cold start: <|sep|>reasoning<|sep|>summary

def _r1zero_format_ok(text):
    """Optional whitespace, exactly one <think> block, only whitespace, exactly one <answer> block, only whitespace
    (trailing EOS/pad tokens are ignored); both blocks hold visible text (see _visible: "\u200b" or NUL is not
    content). Nested, swapped, duplicated or unclosed tags and any text outside the two blocks fail."""
    t = _strip_end_tokens(text).strip()
    if not (t.startswith(THINK_OPEN) and t.endswith(ANSWER_CLOSE)):
        return False
    if any(t.count(tag) != 1 for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)):
        return False
    think_end, answer_start = t.find(THINK_CLOSE), t.find(ANSWER_OPEN)
    if answer_start < think_end:
        return False
    think = t[len(THINK_OPEN): think_end]
    between = t[think_end + len(THINK_CLOSE): answer_start]
    answer = t[answer_start + len(ANSWER_OPEN): -len(ANSWER_CLOSE)]
    return _visible(think) and not between.strip() and _visible(answer) and SEP not in t


def _cold_start_format_ok(text):
    """Optional whitespace, <|sep|>, visible reasoning, <|sep|>, visible summary; exactly two separators, no
    <think> tags (that is the other layout), at most one well-formed <answer> block, inside the summary and with
    visible content."""
    t = _strip_end_tokens(text).strip()
    if not t.startswith(SEP) or t.count(SEP) != 2:
        return False
    if THINK_OPEN in t or THINK_CLOSE in t:
        return False
    reasoning, summary = split_cold_start(t)
    if not _visible(reasoning) or not _visible(summary):
        return False
    n_open, n_close = t.count(ANSWER_OPEN), t.count(ANSWER_CLOSE)
    if n_open != n_close or n_open > 1:
        return False
    if n_open == 0:
        return True
    start, end = summary.find(ANSWER_OPEN), summary.find(ANSWER_CLOSE)
    return 0 <= start < end and _visible(summary[start + len(ANSWER_OPEN): end])


def _general_format_ok(text):
    """The layout of an answer to a general (non-reasoning) query. R1's general data comes in two layouts: a CoT
    and then the summary, and, for trivial queries, the answer alone ("for simpler queries, such as 'hello', we do
    not provide a CoT", R1 §2.3.3). So: either the cold-start layout (_cold_start_format_ok), or a direct answer:
    visible text with no separator, no <think>/<answer> tag and no other special token (a reply that runs on into
    "<|user|>" is not an answer). Which of the two suits a query is the reward model's business, not the format's."""
    t = _strip_end_tokens(text).strip()
    if SEP in t:
        return _cold_start_format_ok(t)
    if any(tag in t for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)) or _SPECIAL_RE.search(t):
        return False
    return _visible(t)


def format_reward(prompts, completions, style="r1zero", **columns):
    """R1 §2.2.2 format reward: 1.0 if the completion has the required layout, else 0.0. style: "r1zero"
    (<think> R </think> <answer> A </answer>, R1 Table 1) | "cold_start" (<|sep|>R<|sep|>summary, R1 §2.3.1) |
    "general" (a general query's answer: the cold-start layout or the bare answer, _general_format_ok)."""
    check = {"r1zero": _r1zero_format_ok, "cold_start": _cold_start_format_ok,
             "general": _general_format_ok}.get(style)
    if check is None:
        raise ValueError(f"format_reward: unknown style {style!r} (r1zero | cold_start | general)")
    return [_safe(lambda c: float(check(_text(c))), c) for c in completions]


def cold_start_format_reward(prompts, completions, **columns):
    """format_reward with style="cold_start" (a named function, so TRL logs it under its own name)."""
    return format_reward(prompts, completions, style="cold_start")


def general_format_reward(prompts, completions, **columns):
    """format_reward with style="general": the format half of R1's Reward_general = reward model + format
    (R1 §2.3.4, Nature eq. 10)."""
    return format_reward(prompts, completions, style="general")


# ----------------------------------------------------------------------------------------------------------------
# Language consistency (R1 §2.2.2): Num(words in target language) / Num(words), over the CoT

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef\U00030000-\U0003134f"
_EN_WORD_RE = re.compile(r"[A-Za-z]+")                     # "en": a run of ASCII letters
_ZH_WORD_RE = re.compile(f"[{_CJK}]")                      # "zh": each CJK character is one word
_OTHER_WORD_RE = re.compile(f"(?:(?![A-Za-z{_CJK}])[^\\W\\d_])+")  # other letters (é, Cyrillic): other words
_SPECIAL_RE = re.compile(r"<\|[A-Za-z_]{1,32}\|>")


def cot_text(text):
    """The chain of thought: the <think> block (to the end if unclosed), else the cold-start reasoning part, else
    the text after a single leading <|sep|>, else the whole completion."""
    start = text.find(THINK_OPEN)
    if start >= 0:
        end = text.find(THINK_CLOSE, start)
        return text[start + len(THINK_OPEN): end if end >= 0 else len(text)]
    parts = split_cold_start(text)
    if parts is not None:
        return parts[0]
    first = text.find(SEP)
    return text[first + len(SEP):] if first >= 0 else text


def word_counts(text):
    """{"en": n, "zh": n, "other": n} for a text: tags and special tokens, digits and symbols are not words."""
    s = text[:MAX_COT_CHARS]
    for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE):
        s = s.replace(tag, " ")
    s = _SPECIAL_RE.sub(" ", s)
    return {"en": len(_EN_WORD_RE.findall(s)), "zh": len(_ZH_WORD_RE.findall(s)),
            "other": len(_OTHER_WORD_RE.findall(s))}


def language_consistency(text, lang, no_words=0.0):
    """Fraction of the CoT's words in `lang` ("en" | "zh"). No words at all -> no_words (default 0.0): 0/0 is
    undefined, and 1.0 would pay for an empty or wordless CoT; with 0.0 the language term is only earned by
    reasoning written in the target language (a digits-only CoT still earns accuracy and format)."""
    counts = word_counts(cot_text(_text(text)))
    total = sum(counts.values())
    if lang not in ("en", "zh"):
        raise ValueError(f"unknown language {lang!r} (en | zh)")
    return counts[lang] / total if total else float(no_words)   # R1 §2.3.2 (Nature eq. 7-10): Reward_language


def language_reward(prompts, completions, lang=None, **columns):
    """R1 language-consistency reward: Num(words in the target language) / Num(words) over the CoT; lang column
    "en" | "zh" (default "en"). Mixed-language words split: "café" = en "caf" + other "é"."""
    langs = _column(lang, len(completions), "lang", "en")
    return [_safe(language_consistency, c, lg or "en") for c, lg in zip(completions, langs)]


def has_cot(text):
    """True when the response writes a chain of thought: a <think> block or the cold-start <|sep|>R<|sep|> part."""
    t = _text(text)
    return THINK_OPEN in t or split_cold_start(t) is not None


def general_language_reward(prompts, completions, lang=None, **columns):
    """The language-consistency reward on general queries (R1 §2.3.4 sums Reward_language over all the data): over
    the CoT where the response has one (has_cot), as language_reward; 1.0 for a direct answer with no CoT (the
    layout R1 gives trivial queries, R1 §2.3.3): it has no CoT to mix. The answer itself is not counted: the right
    answer to "把 cat 写成大写字母" is "CAT", English words in a Chinese conversation."""
    langs = _column(lang, len(completions), "lang", "en")
    return [_safe(lambda c, lg: language_consistency(c, lg or "en") if has_cot(c) else 1.0, c, lg)
            for c, lg in zip(completions, langs)]


# ----------------------------------------------------------------------------------------------------------------
# Reward models (R1 final stage): a hook that feeds a learned scorer the right part of the response

def response_summary(text):
    """The final answer/summary a helpfulness RM scores: after the last <|sep|> of a cold-start output, else after
    the last </think>, else the whole response (trivial queries get no CoT). Empty -> None."""
    text = _strip_end_tokens(_text(text))
    if split_cold_start(text) is not None:
        s = text[text.rfind(SEP) + len(SEP):]
    elif THINK_CLOSE in text:
        s = text[text.rfind(THINK_CLOSE) + len(THINK_CLOSE):]
    else:
        s = text
    return s.strip() or None


# ----------------------------------------------------------------------------------------------------------------
# Weighted combination

class combine:
    """R1's reward is a plain weighted sum of its parts (R1 §2.2.2: Reward_rule = Reward_acc + Reward_format; later
    + Reward_language, + the reward models, Nature eq. 7-10). combine({name: (f, w), ...}) -> a reward function
    returning sum_k w_k * f_k; .components(...) -> {name: values} plus "reward", the weighted sum. A list
    [(f, w), ...] names each part by its function's __name__ (duplicates get _2, _3, ...). The sum is taken in
    float32, the dtype of the trainer's reward tensors (grpo.score). A part may be NaN where it does not apply
    (train_pipeline.only): it adds nothing there, and its logged mean is over the rows it applies to."""

    def __init__(self, terms):
        items = list(terms.items()) if isinstance(terms, dict) else [(None, fw) for fw in terms]
        if not items:
            raise ValueError("combine: no reward terms")
        self.terms, names = [], []
        for name, (f, w) in items:
            if not callable(f):
                raise ValueError(f"combine: {f!r} is not callable")
            base = name or getattr(f, "__name__", type(f).__name__)
            name, k = base, 2
            while name in names:
                name, k = f"{base}_{k}", k + 1
            names.append(name)
            self.terms.append((name, f, float(w)))
        self.__name__ = "+".join(names)

    def components(self, prompts, completions, **columns):
        n = len(completions)
        out = {}
        total = np.zeros(n, dtype=np.float32)
        for name, f, w in self.terms:
            values = [float(v) for v in f(prompts, completions, **columns)]
            if len(values) != n:
                raise ValueError(f"combine: {name} returned {len(values)} rewards for {n} completions")
            out[name] = values
            total += np.float32(w) * np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
        out["reward"] = total.tolist()
        return out

    def __call__(self, prompts, completions, **columns):
        return self.components(prompts, completions, **columns)["reward"]


# ----------------------------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(
        description="minR1's rule-based rewards (R1 §2.2.2: accuracy, format, language consistency). Without "
                    "options: score a few example completions (one line each: every reward, then their sum) and "
                    "report which isolation the code sandbox has on this machine. The rewards themselves are used "
                    "from Python: from rewards import accuracy_reward, format_reward, combine.")
    parser.parse_args(argv)
    examples = [
        (" <think> 400 plus 5 is 405 </think> <answer> 405 </answer>",
         {"task": "arith", "answer": "405", "lang": "en"}),
        (" <think> 400 加 5 is 405 </think> <answer> 405 </answer>", {"task": "arith", "answer": "405", "lang": "en"}),
        (" 405", {"task": "arith", "answer": "405", "lang": "en"}),
        (" <think> 25-5=20, 20*4=80 </think> <answer> (25 - 5) * 4 </answer>",
         {"task": "countdown", "nums": [4, 5, 25], "target": 80, "lang": "en"}),
        (" <think> easy </think> <answer>\n```python\ndef add(a, b):\n    return a + b\n```\n</answer>",
         {"task": "code", "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], "lang": "en"}),
    ]
    cols = {k: [ex[1].get(k) for ex in examples] for k in ("task", "answer", "nums", "target", "tests", "lang")}
    reward = combine([(accuracy_reward, 1.0), (format_reward, 1.0), (language_reward, 1.0)])
    comps = reward.components([""] * len(examples), [ex[0] for ex in examples], **cols)
    for i, (c, _) in enumerate(examples):
        print(" ".join(f"{k}={v[i]:.2f}" for k, v in comps.items()), "|", c.strip()[:60].replace("\n", " "))
    print("sandbox isolation on this machine:", ",".join(sorted(sandbox_features())))


if __name__ == "__main__":
    main()
