"""
Fuzz test of rewards.py: every reward function and public helper on hostile model output (long, deeply nested,
regex bait, unicode that NFKC expands, NUL and invisible characters, up to ~1 MB), checking that each call
returns its documented type (rewards: floats in [0, 1]), never raises and stays under a per-call time bound.

    python -m pytest tests/test_rewards_fuzz.py -q

The code reward is fuzzed without its sandbox (run_code is replaced by a stub): the sandbox has its own tests,
and a child process per input would make this file slow; what is fuzzed here is the extraction in front of it.
"""
import random
import time
import types
from fractions import Fraction

import pytest

import answers as A
import rewards as R

SEED = 20240611
MB = 1 << 20
# Per-call bound, in CPU seconds of this process (time.process_time: other jobs on a shared machine do not count).
# Measured on the shared 2-core dev box: the slowest single call on these inputs takes ~0.08 s (NFKC of 9,000
# characters that expand 18x, just under the cap; a language count over a megabyte); the quadratic and NFKC-first
# bugs this file guards against took 3.6 s to >10 s on the same inputs. 0.5 s is a 6x margin for slower machines
# and still catches any of them.
BOUND_S = 0.5

NUMS, TARGET, GOLD = [1, 2], 3, "42"


# ---------------------------------------------------------------------------------------------------------------
# inputs

def _sized(piece, size):
    """piece repeated to about `size` characters."""
    return piece * max(1, size // max(1, len(piece)))


def hostile_bodies():
    """(label, text): each a known way to make a parser slow or wrong, about 1 MB unless the name says otherwise."""
    yield "digits", "1" * MB
    yield "frac12", "1+2 = " + _sized("\\frac12", MB)                 # was quadratic: 3.6 s at 280 KB
    yield "frac{ nested", _sized("\\frac{", MB // 2) + "1" + "}" * (MB // 2 // 6)
    yield "frac balanced deep", "\\frac{" * 20_000 + "1" + "}{2}" * 20_000
    yield "braces", "{" * MB
    yield "parens balanced", "(" * (MB // 2) + "1" + ")" * (MB // 2)
    yield "boxed open", _sized("\\boxed{", MB)
    yield "boxed deep", "\\boxed{" * 100_000 + "6" + "}" * 100_000
    yield "ufdfa", "\ufdfa" * MB                                       # NFKC: 18 characters each (was 4.3 s)
    yield "ufdfa countdown", "1+2 = " + "\ufdfa" * MB
    yield "ufdfa short", "\ufdfa" * 9_000                              # under the cap before NFKC, over it after
    yield "zero width", "\u200b" * MB
    yield "NUL", "\x00" * MB
    yield "invisible mix", _sized("\u200b\u200c\u200d\u2060\ufeff\x00\u3164\ufe0f\u034f", MB)
    yield "distinct private use", "".join(map(chr, range(0xF0000, 0xF0000 + 65_000))) * 16   # 1M distinct-ish
    yield "superscripts", _sized("4\u00b2\u2070\u2074\u2075\u2081", MB)
    yield "answer-is bait", _sized("the answer is ", MB)
    yield "thousands bait", _sized("1,", MB)
    yield "spaced digits", _sized("1 ", MB)
    yield "var-eq bait", _sized("x = ", MB)
    yield "text/left bait", _sized("\\text{", MB // 2) + _sized("\\left", MB // 2)
    yield "unit bait", "1 " + _sized("apples ", MB)
    yield "huge fraction", "9" * 5000 + "/" + "9" * 5000
    yield "huge exponent", "1e" + "9" * 1000
    yield "fences", _sized("```python\n", MB)
    yield "separators", _sized("<|sep|>", MB)
    yield "eos", _sized("<|endoftext|>", MB)
    yield "tags", _sized("<think></think><answer></answer>", MB)
    yield "surrogates", _sized("\ud800\udfff\uffff\U0010ffff", MB)
    yield "cjk", _sized("答案是四十二。", MB)


PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<|sep|>", "<|endoftext|>", "\\boxed{", "{", "}", "\\frac",
          "\\dfrac", "(", ")", "```", "```python\n", "1,234", "{,}", "\\%", "%", "1e2", "e", "-", "/", "*", "+", "=",
          "3", "42", ".", "。", " ", "\n", "答案是", "the answer is", "x = ", "\\text{", "\\left(", "\\right)", "$",
          "\u00b2", "\ufdfa", "\u200b", "\x00", "\ufeff", "\u3164", "é", "你", "\u2212", "\ud83d", "apples"]


def random_texts(rng, n):
    """Random mixtures of the pieces above and random code points, from empty to ~1 MB (a short random pattern
    repeated: long inputs are where a superlinear parser shows)."""
    for i in range(n):
        pattern = "".join(rng.choice(PIECES) if rng.random() < 0.8 else chr(rng.randrange(0x20, 0x30000))
                          for _ in range(rng.randrange(1, 12)))
        size = rng.choice([0, 10, 100, 1000, 10_000, 100_000, MB])
        yield f"random {i} ({size} chars)", _sized(pattern, size)[:size]


def layouts(body):
    """The places a body can sit in a completion: raw, as the answer, as the reasoning, as a cold-start summary."""
    yield "raw", body
    yield "answer", f"<think> ok </think> <answer>{body}</answer>"
    yield "think", f"<think>{body}</think><answer></answer>"
    yield "cold", f"<|sep|>r<|sep|>{body}"


def cases():
    rng = random.Random(SEED)
    for label, body in hostile_bodies():
        for where, text in layouts(body):
            yield f"{label} [{where}]", text
    yield from random_texts(rng, 120)


# ---------------------------------------------------------------------------------------------------------------
# the calls and their documented types

def _sandbox_stub(code, tests, timeout=4.0, **kw):
    """Stands in for sandbox.run_code: checks what code_reward hands over, runs nothing."""
    assert isinstance(code, str)
    return types.SimpleNamespace(passed=0, total=1, score=0.0)


def _reward(fn, **cols):
    def call(text):
        out = fn(None, [text], **cols)
        assert isinstance(out, list) and len(out) == 1, out
        v = out[0]
        assert isinstance(v, float) and 0.0 <= v <= 1.0, v
    return call


def _returns(fn, *types_, before=(), after=()):
    """A call of fn(*before, text, *after) whose result must be an instance of one of types_."""
    def call(text):
        v = fn(*before, text, *after)
        assert isinstance(v, types_), (type(v), types_)
        if isinstance(v, str) and fn in (A.extract_answer, A.extract_code):
            assert len(v) <= len(text)   # a substring of the completion, never something larger
    return call


def _normalize(text):
    """normalize_answer documents a ValueError for malformed or over-long answers; anything else is a bug."""
    try:
        assert isinstance(A.normalize_answer(text), str)
    except ValueError:
        pass


CALLS = {
    "accuracy[arith]": _reward(R.accuracy_reward, task=["arith"], answer=[GOLD]),
    "accuracy[countdown]": _reward(R.accuracy_reward, task=["countdown"], nums=[NUMS], target=[TARGET]),
    "accuracy[general]": _reward(R.accuracy_reward, task=["general"], answer=[GOLD]),
    "accuracy[code]": _reward(R.accuracy_reward, task=["code"], tests=[["assert True"]]),
    "format_reward": _reward(R.format_reward),
    "cold_start_format_reward": _reward(R.cold_start_format_reward),
    "language_reward[en]": _reward(R.language_reward, lang=["en"]),
    "language_reward[zh]": _reward(R.language_reward, lang=["zh"]),
    "extract_answer": _returns(A.extract_answer, str, type(None)),
    "extract_code": _returns(A.extract_code, str, type(None)),
    "normalize_answer": _normalize,
    "parse_number": _returns(A.parse_number, Fraction, type(None)),
    "math_equal(text, gold)": _returns(A.math_equal, bool, after=(GOLD,)),
    "math_equal(gold, text)": _returns(A.math_equal, bool, before=(GOLD,)),
    "general_equal": _returns(A.general_equal, bool, after=(GOLD,)),
    "countdown_correct": _returns(A.countdown_correct, bool, after=(NUMS, TARGET)),
    "countdown_value": _returns(A.countdown_value, Fraction, type(None), after=(NUMS,)),
    "split_cold_start": _returns(A.split_cold_start, tuple, type(None)),
    "cot_text": _returns(R.cot_text, str),
    "response_summary": _returns(R.response_summary, str, type(None)),
}


def test_fuzz_every_reward(monkeypatch):
    monkeypatch.setattr(R, "run_code", _sandbox_stub)
    slowest = (0.0, "", "")
    n = 0
    for label, text in cases():
        for name, call in CALLS.items():
            t0 = time.process_time()
            try:
                call(text)
            except Exception as e:  # noqa: BLE001 - report which input broke which function
                pytest.fail(f"{name} on {label!r} ({len(text)} chars): {type(e).__name__}: {e}")
            dt = time.process_time() - t0
            assert dt < BOUND_S, f"{name} took {dt:.2f} s on {label!r} ({len(text)} chars)"
            slowest = max(slowest, (dt, name, label))
            n += 1
    print(f"\n{n} calls; slowest {slowest[0] * 1000:.0f} ms: {slowest[1]} on {slowest[2]!r}")
