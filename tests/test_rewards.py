"""
Tests for rewards.py: answer extraction, math normalisation (and the checker's known false positives and
negatives), countdown, format (visible content), language consistency, the combination, the reward-model hook,
hostile strings (time-bounded), documented return types on odd inputs, the command line, the code reward's
extraction and batching. The random fuzz of every reward is tests/test_rewards_fuzz.py.

    python -m pytest tests/test_rewards.py -q
"""
import json
import os
import random
import subprocess
import sys
import time
from fractions import Fraction

import pytest

import answers as A
import rewards as R
from answers import countdown_correct, extract_answer, extract_code, math_equal
from rewards import (accuracy_reward, code_reward, cold_start_format_reward, combine, countdown_reward, format_reward,
                     general_reward, language_reward, math_reward)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IS_ROOT = os.geteuid() == 0


def rz(think, answer):
    """An R1-Zero completion (the text after "Assistant:")."""
    return f" <think> {think} </think> <answer> {answer} </answer>"


# ---------------------------------------------------------------------------------------------------------------
# extract_answer

@pytest.mark.parametrize("text, expected", [
    (rz("400 + 5", "405"), "405"),
    (" <think> a </think> <answer> 1 </answer> <answer> 2 </answer>", "2"),       # the LAST block
    ("<answer> <answer> 7 </answer>", "7"),                                        # nested: innermost of the last
    ("<think> x </think> <answer> 5", None),                                       # unclosed
    ("5 </answer>", None),                                                         # close without open
    ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),                                  # balanced braces
    ("\\boxed{3} then \\boxed{4}", "4"),
    ("\\boxed{3} then \\boxed{4", "3"),                                            # unbalanced last one skipped
    ("<answer>5</answer> \\boxed{6}", "5"),                                        # the tag wins
    ("<answer>   </answer> \\boxed{6}", "6"),                                      # empty answer = no answer
    ("<answer>   </answer>", None),
    ("<think> \\boxed{42} </think> <answer></answer>", None),                    # empty block: no fallback before it
    ("<think> \\boxed{42} </think> <answer>\u200b\x00</answer>", None),         # invisible = empty
    ("<answer>\ufeff</answer>", None), ("\\boxed{\u200b}", None),
    ("<|sep|> r \\boxed{4} <|sep|> <answer> </answer>", None),                    # cold start: the same rule
    ("<|sep|> r <|sep|> \\boxed{3} <answer> </answer> \\boxed{4}", "4"),
    ("no answer here", None),
    ("", None),
    ("<|sep|> thinking <|sep|> So the answer is 42.", "42"),                        # cold start: the summary
    ("<|sep|> r <|sep|> Summary. <answer> 7 </answer>", "7"),
    ("<|sep|> r <answer> 1 </answer> <|sep|> \\boxed{8}", "8"),                     # reasoning's tags ignored
    ("<|sep|> 我想 <|sep|> 答案是 9。", "9"),
    ("<|sep|> r <|sep|> Paris", "Paris"),                                          # the whole summary
    ("<|sep|> r <|sep|> Paris<|endoftext|>", "Paris"),
    ("<|sep|> reasoning only <answer> 3 </answer>", "3"),                          # one sep: not cold start
    ([{"role": "assistant", "content": "<answer>1</answer>"}], "1"),              # TRL conversational
    (None, None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected, (text, extract_answer(text))


# ---------------------------------------------------------------------------------------------------------------
# math: normalisation and exact comparison

@pytest.mark.parametrize("pred, gold", [
    ("405", "405"), (" 405 ", "405"), ("405.", "405"), ("+5", "5"), ("\u22125", "-5"), ("\u20135", "-5"),
    ("1,234", "1234"), ("1,234,567.5", "1234567.5"), ("-1,000", "-1000"),
    ("5.0", "5"), ("5.", "5"), (".5", "1/2"), ("0.75", "3/4"), ("10/2", "5"), ("-3/4", "-0.75"),
    ("\\frac{3}{4}", "3/4"), ("\\dfrac{3}{4}", "0.75"), ("\\tfrac34", "0.75"), ("\\frac 3 4", "0.75"),
    ("-\\frac{3}{4}", "-0.75"), ("\\frac{-3}{4}", "-3/4"), ("\\left( \\frac{1}{2} \\right)", "0.5"),
    ("$\\frac{1}{2}$", "1/2"), ("\\(42\\)", "42"), ("\\[42\\]", "42"), ("\\boxed{42}", "42"),
    ("x = 5", "5"), ("\uff11\uff12\uff13", "123"), ("\\text{7}", "7"), ("1 / 2", "0.5"), ("(3/4)", "0.75"),
    ("\\frac{12}{16}", "3/4"), ("00012", "12"), ("x + 1", "x+1"), ("\\sqrt{2}", "\\sqrt{2}"), ("abc", " abc "),
    ("((3))", "3"), ("-(3)", "-3"), ("(-3)/(4)", "-0.75"), ("-\\left(\\frac{3}{4}\\right)", "-3/4"),
    ("1e2", "100"), ("2.5E-1", "1/4"), ("10{,}000", "10000"), ("2,333", "2333"), ("75\\%", "75"),
    ("42 apples", "42"), ("5 \\text{ cm}", "5"), ("5\\text{cm}", "5"), ("3 square meters", "3"), ("0 dollars", "0"),
    ("{6}", "6"), ("{{6}}", "6"), ("42\u3002", "42"), ("\u7b54\u6848\u662f 42", "42"), ("The answer is: 42", "42"),
    ("x\u00b2", "x^2"), ("\u2460", "1"),
    ("(1, 2)", "(1,2)"),                                               # a tuple: spaces after commas do not matter
])
def test_math_equal(pred, gold):
    assert math_equal(pred, gold), (pred, gold, A.normalize_answer(pred), A.normalize_answer(gold))


@pytest.mark.parametrize("pred, gold", [
    ("405", "406"), ("-5", "5"), ("0.75", "3/5"), ("1,23", "123"),   # "1,23" is not a thousands grouping
    ("1e999999999", "1"), ("1e1000", "1e1001"),    # an exponent over 3 digits is a string: no huge int is built
    ("5%", "5"), ("", "5"), (None, "5"), ("5", None), ("abc", "abd"), ("3/0", "3"), ("\\frac{1}{", "1"),
    ("9" * 300, "9" * 300 + "0"), ("x", ""),
    ("(1)(2)", "12"), ("(1)+(2)", "12"), ("1/2/2", "1/4"), ("(3", "3"), ("--3", "3"),  # parentheses are kept
    ("4 2", "42"), ("1 000", "1000"), ("4 2", "4"),                  # whitespace between digits separates numbers
    ("2, 333", "2333"), ("2, 333", "2,333"),                          # ", " is a list, not a thousands grouping
    ("4\u00b2", "42"), ("4\u00b2", "4"), ("4\u2082", "42"), ("4\u2460", "41"),   # super/subscripts stay apart
    ("2 pi", "2"), ("2 x", "2"), ("3 apples", "4"), ("{1,234}", "1234"),   # algebra is not a unit; a set is a set
    ("\ufdfa" * 1000, "\ufdfa" * 1000),                                # 1,000 chars, 18,000 after NFKC: too long
])
def test_math_not_equal(pred, gold):
    assert math_equal(pred, gold) is False, (pred, gold)   # a bool, never an exception


@pytest.mark.parametrize("latex, expected", [
    ("\\frac{3}{4}", "(3)/(4)"), ("\\frac12", "(1)/(2)"), ("\\frac 3 4", "(3)/(4)"), ("\\frac1{2}", "(1)/(2)"),
    ("\\frac{\\frac{1}{2}}{3}", "((1)/(2))/(3)"), ("\\frac1{\\frac12}", "(1)/((1)/(2))"),
    ("\\frac{a{b}}{c}", "(a{b})/(c)"), ("{x} + \\frac12 }", "{x} + (1)/(2) }"), ("no fraction", "no fraction"),
])
def test_replace_fracs(latex, expected):
    assert A._replace_fracs(latex) == expected


@pytest.mark.parametrize("latex", ["\\frac", "\\frac1", "\\frac{1}", "\\frac{1}{", "\\frac{1{}{2}"])
def test_replace_fracs_malformed_is_a_value_error(latex):
    with pytest.raises(ValueError, match="frac"):
        A._replace_fracs(latex)


def test_replace_fracs_is_linear():
    # The old right-to-left replacement copied the string once per \frac: 3.6 s for 280 KB of "\frac12".
    times = []
    for n in (10_000, 100_000):
        t0 = time.process_time()
        out = A._replace_fracs("\\frac12" * n)
        times.append(time.process_time() - t0)
        assert out == "(1)/(2)" * n
    assert times[1] < 0.5 and times[1] < 20 * times[0] + 0.05, times   # 10x the input, ~10x the time


def test_math_reward_columns_and_ints():
    comps = [rz("4*100+5", "405"), rz("hm", "\\frac{810}{2}"), rz("no", "404"), "405", rz("a", "1,000,000")]
    assert math_reward(None, comps, answer=[405, "405", "405", "405", 10 ** 6]) == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_math_reward_false_positives_and_negatives():
    """Known checker traps, end to end through the answer block: wrong answers earn 0, right spellings earn 1."""
    wrong = [rz("x", "4 2"), rz("x", "2, 333"), rz("x", "4\u00b2"), " <think> \\boxed{42} </think> <answer></answer>",
             " <think> \\boxed{42} </think> <answer>\u200b</answer>", rz("x", "4\u00b2 apples")]
    assert math_reward(None, wrong, answer=["42", "2333", "42", "42", "42", "42"]) == [0.0] * len(wrong)
    right = [rz("x", "1e2"), rz("x", "10{,}000"), rz("x", "75\\%"), rz("x", "42 apples"), rz("x", "5 \\text{ cm}"),
             rz("x", "{6}"), rz("x", "42\u3002"), rz("x", "\u7b54\u6848\u662f 42"), rz("x", "2,333")]
    golds = ["100", "10000", "75", "42", "5", "6", "42", "42", "2333"]
    assert math_reward(None, right, answer=golds) == [1.0] * len(right)


# ---------------------------------------------------------------------------------------------------------------
# countdown

@pytest.mark.parametrize("answer, nums, target", [
    ("(25 - 5) * 4", [25, 5, 4], 80), ("4*(25-5)", [4, 5, 25], 80), ("(25\u22125)\u00d74", [25, 5, 4], 80),
    ("(25 - 5) * 4 = 80", [25, 5, 4], 80), ("80 + 0 / 5", [80, 5, 0], 80),
    ("8 / (3 - 8 / 3)", [3, 3, 8, 8], 24),                 # exact: the float value is 23.999999999999996
    ("-3 + 5", [-3, 5], 2), ("5 - -3", [5, -3], 8),        # unary minus only as a given negative number's sign
    ("(25 - 5) * 4", "[25, 5, 4]", "80"),                   # columns as strings
    ("(" * 99 + "1" + ")" * 99, [1], 1),                    # as deep as the length cap allows: parsed, no crash
])
def test_countdown_valid(answer, nums, target):
    """Expressions that reach the target with each number once (R1 §2.2.2: a rule-checked answer).
    Paper leaves this open: the task's rules (a restated "= target", unicode operators, unary minus only as a given
    number's sign, exact Fractions) are this repository's countdown."""
    assert countdown_correct(answer, nums, target) is True, f"{answer!r} reaches {target} with {nums}"


@pytest.mark.parametrize("answer, nums, target", [
    ("(25 - 5) * 4 = 81", [25, 5, 4], 80),     # restated result must be the target
    ("25 * 4 - 20", [25, 5, 4], 80),           # 20 is not given
    ("25 * 4", [25, 5, 4], 100),               # 5 unused
    ("(25 - 5) * 4 + 5 - 5", [25, 5, 4], 80),  # 5 reused
    ("(25 - 5) * 4 * 1", [25, 5, 4], 80),      # extra number
    ("-3 + 5", [3, 5], 2),                     # unary minus on a positive number
    ("(25 - 5) ** 1 * 4", [25, 5, 4, 1], 80),  # power
    ("100 // 5 * 4", [100, 5, 4], 80),         # floor division
    ("80 % 100", [80, 100], 80), ("80.0", [80], 80), ("abs(-80)", [80], 80), ("__import__('os')", [], 0),
    ("x", [], 0), ("(25 - 5) 4", [25, 5, 4], 80), ("", [1], 1), (None, [1], 1),
    ("80 + 5 / 0", [80, 5, 0], 80),            # division by zero
    ("(" * 5000 + "1" + ")" * 5000, [1], 1),   # deep nesting: over the length cap, never parsed
    ("9" * 1_000_000, [9], 9), ("1" + "*1" * 5000, [1] * 5001, 1),
    ("1 2", [1, 2], 12), ("1 + 2 3", [1, 2, 3], 24),   # parse as no expression: False, not a SyntaxError
    ("5\u00b2", [52], 52), ("5\u00b2", [5], 25),        # a superscript is neither a digit nor a power here
    ("(" * 150 + "1" + ")" * 150, [1], 1),              # 301 characters: over the cap before any parsing
    ("1+2 = " + "\\frac12" * 100_000, [1, 2], 3),      # 700 KB: was 10 s (normalised before any cap)
    ("1+2 = " + "\ufdfa" * 1_000_000, [1, 2], 3), ("\ufdfa" * 1_000_000, [1], 1), ("\ufdfa" * 150, [1], 1),
    ("1 + 2", [1, 2], "three"), ("1 + 2", ["x"], 3), ("1 + 2", None, 3), ("1 + 2", [1, 2], None),   # bad columns
    (12, [1, 2], 12), (["1+2"], [1, 2], 3),              # not a string
])
def test_countdown_invalid(answer, nums, target):
    """Wrong, malformed or hostile answers are False, quickly.
    Paper leaves this open: which spellings are refused (** // % and decimals, a 200-character cap)."""
    t0 = time.process_time()
    assert countdown_correct(answer, nums, target) is False   # the documented bool, whatever the input
    assert time.process_time() - t0 < 1.0


def test_countdown_value_returns_fraction_or_none():
    assert A.countdown_value("(25 - 5) * 4", [25, 5, 4]) == 80
    assert A.countdown_value("8 / (3 - 8 / 3)", [3, 3, 8, 8]) == 24
    for expr in ("1 2", "1 / 0", "((1)", "", "1" * 300, None, 5, "\ufdfa" * 20):
        assert A.countdown_value(expr, [1, 2]) is None, expr
    assert A.countdown_value("1 + 2", None) is None


def test_countdown_reward_reads_the_answer_block():
    comps = [rz("25-5=20, 20*4=80", "(25 - 5) * 4"), rz("x", "25 * 4 - 20"), "(25 - 5) * 4"]
    assert countdown_reward(None, comps, nums=[[25, 5, 4]] * 3, target=[80] * 3) == [1.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------------------------
# format

@pytest.mark.parametrize("text, ok", [
    (" <think> a </think> <answer> b </answer>", True),
    ("<think>a</think><answer>b</answer>", True),
    ("\n<think>\nstep\n</think>\n\n<answer>\n5\n</answer>\n", True),
    (" <think> a </think> <answer> b </answer><|endoftext|>", True),          # trailing EOS is ignored
    (" <think> a </think> <answer> b </answer> <|pad|><|pad|>", True),
    (" <think>  </think> <answer> b </answer>", False),                       # empty think
    (" <think> a </think> <answer> </answer>", False),                        # empty answer
    (" <answer> b </answer> <think> a </think>", False),                      # swapped
    (" <think> a <think> b </think> </think> <answer> c </answer>", False),   # nested
    (" <think> a </think> <answer> b </answer> <answer> c </answer>", False), # duplicated
    (" <think> a </think> <think> a </think> <answer> b </answer>", False),
    (" <think> a </think>", False), (" <think> a <answer> b </answer>", False),  # missing / unclosed
    ("x <think> a </think> <answer> b </answer>", False),                    # text before
    (" <think> a </think> <answer> b </answer> bye", False),                  # text after
    (" <think> a </think> so <answer> b </answer>", False),                   # text between
    (" <think> a <answer> b </answer> </think>", False),                      # answer inside think
    (" <think> a </answer> </think> <answer> b <think>", False),
    (" <think> a </think> <answer> b <|sep|> </answer>", False),
    ("<|endoftext|> <think> a </think> <answer> b </answer>", False),
    ("", False), ("   ", False), ("<think></think><answer></answer>", False),
    ("<think>\u200b</think><answer>\u200b</answer>", False),                    # invisible content is no content
    ("<think> a </think><answer>\x00</answer>", False), ("<think>\x00</think><answer> b </answer>", False),
    ("<think> a </think><answer>\u200c\u200d\u2060\ufeff</answer>", False),
    ("<think>\u3164</think><answer> b </answer>", False),                        # Hangul filler: a blank letter
    ("<think> a </think><answer>\ufe0f\u034f</answer>", False),                  # lone combining marks
    ("<think> a </think><answer>\U000f0000\ue000</answer>", False),              # private use
    ("<think>\u2028\u3000\xa0</think><answer> b </answer>", False),             # unicode spaces and separators
    ("<think>\u60f3</think><answer>\u56db</answer>", True),                      # visible non-ASCII text
    ("<think>\u2026</think><answer>\u2205</answer>", True),                      # punctuation and symbols show
    ("<think> a\u200b </think><answer> 4\u200b </answer>", True),                # invisible next to visible is fine
])
def test_format_r1zero(text, ok):
    assert format_reward(None, [text]) == [float(ok)], text


@pytest.mark.parametrize("text, ok", [
    ("<|sep|> reasoning <|sep|> summary", True),
    (" <|sep|>reasoning<|sep|>The answer is <answer> 4 </answer>.<|endoftext|>", True),
    ("<|sep|>  <|sep|> summary", False), ("<|sep|> reasoning <|sep|>  ", False),
    ("<|sep|> reasoning", False), ("<|sep|> a <|sep|> b <|sep|> c", False), ("x <|sep|> a <|sep|> b", False),
    ("<|sep|> <think> a </think> <|sep|> b", False), ("<|sep|> a <|sep|> <answer> b", False),
    ("<|sep|> a <answer> 1 </answer> <|sep|> b", False), ("<|sep|> a <|sep|> </answer> 1 <answer>", False),
    ("<|sep|> a <|sep|> <answer>1</answer><answer>2</answer>", False),
    (" <think> a </think> <answer> b </answer>", False),
    ("<|sep|>\u200b<|sep|> summary", False), ("<|sep|> reasoning <|sep|>\x00\ufeff", False),
    ("<|sep|> reasoning <|sep|> so <answer>\u200b</answer>", False),              # the answer block is empty
    ("<|sep|>\u6211\u60f3<|sep|>\u56db", True),
])
def test_format_cold_start(text, ok):
    assert cold_start_format_reward(None, [text]) == [float(ok)]
    assert format_reward(None, [text], style="cold_start") == [float(ok)]


def test_format_bad_style_is_a_clear_error():
    with pytest.raises(ValueError, match="style"):
        format_reward(None, ["x"], style="nope")


# ---------------------------------------------------------------------------------------------------------------
# language consistency

@pytest.mark.parametrize("text, lang, expected", [
    (rz("the sum is five", "5"), "en", 1.0),
    (rz("the sum is five", "5"), "zh", 0.0),
    (rz("我们 compute 加法", "5"), "zh", 0.8),              # 我 们 加 法 = 4 zh words, "compute" = 1 en word
    (rz("我们 compute 加法", "5"), "en", 0.2),
    (rz("12 * 34 = 408 !", "408"), "en", 0.0),             # no words: 0.0 (nothing earned without words)
    (" <think> hello <answer> </think> <answer> x </answer>", "en", 1.0),   # tags are not words
    (rz("привет hello", "x"), "en", 0.5),                  # another script counts against the target
    (rz("caf\u00e9", "x"), "en", 0.5),                     # "caf" + "é": words are split at the script change
    (" <think> one two 三", "en", 2 / 3),                  # unclosed think: to the end
    ("<|sep|>我想想<|sep|> the answer is 5", "zh", 1.0),   # cold start: only the reasoning part
    ("<|sep|>我想想 ok", "zh", 0.75),                      # single sep: everything after it
    ("plain words no tags 好", "en", 0.8),                 # no tags: the whole completion
    ("<think> a <|user|> b </think>", "en", 1.0),          # special tokens are not words
    (rz("hello", "x"), "fr", 0.0),                         # unknown language: 0 (no crash)
])
def test_language_reward(text, lang, expected):
    assert language_reward(None, [text], lang=[lang]) == [pytest.approx(expected)]


def test_language_no_words_option():
    assert R.language_consistency(rz("1 + 1 = 2", "2"), "en", no_words=1.0) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# dispatch, combination, TRL interface, reward models

def test_accuracy_dispatch_and_trl_columns():
    comps = [rz("a", "405"), rz("b", "(25 - 5) * 4"), rz("c", "Paris"), rz("d", "406"),
             rz("e", "```python\ndef add(a, b):\n    return a + b\n```"), rz("f", "1")]
    cols = dict(task=["arith", "countdown", "general", "math", "code", "poetry"],
                answer=["405", None, "paris.", "405", None, "1"],
                nums=[None, [25, 5, 4], None, None, None, None], target=[None, 80, None, None, None, None],
                tests=[None, None, None, None, ["assert add(1, 2) == 3", "assert add(2, 2) == 5"], None],
                completion_ids=[[1]] * 6, trainer_state=object())  # extra TRL columns are ignored
    with pytest.warns(UserWarning, match="poetry"):
        out = accuracy_reward(["p"] * 6, comps, **cols)
    assert out == [1.0, 1.0, 1.0, 0.0, 0.5, 0.0]
    assert accuracy_reward(None, [rz("x", "3")], answer=["3"]) == [1.0]           # no task column: math
    assert accuracy_reward(None, comps[4:5], task=["code"], tests=[cols["tests"][4]],
                           all_or_nothing=True) == [0.0]                         # options pass through


def test_general_reward():
    comps = [rz("x", "  Paris. "), rz("x", "paris is nice"), rz("x", "1,000"), "<|sep|>r<|sep|>\u201cParis\u201d",
             rz("x", "Lyon")]
    assert general_reward(None, comps, answer=["paris", "paris", "1000", "paris", "paris"]) == [1.0, 0.0, 1.0, 1.0, 0.0]
    comps = [rz("x", "4\u00b2"), rz("x", "3 oranges"), rz("x", "1000 people"), rz("x", "4 2"), rz("x", "\u200b")]
    assert general_reward(None, comps, answer=["42", "3 apples", "1000", "42", "\u200b"]) == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_combine_weights_and_components():
    comps = [rz("the answer", "405"), "405", rz("我的", "404")]
    reward = combine([(accuracy_reward, 1.0), (format_reward, 0.5), (language_reward, 2.0), (format_reward, 1.0)])
    cols = dict(task=["arith"] * 3, answer=["405"] * 3, lang=["en"] * 3)
    parts = reward.components(None, comps, **cols)
    assert parts["accuracy_reward"] == [1.0, 0.0, 0.0]
    assert parts["format_reward"] == parts["format_reward_2"] == [1.0, 0.0, 1.0]
    assert parts["language_reward"] == [1.0, 0.0, 0.0]
    assert parts["reward"] == [4.5, 0.0, 1.5] == reward(None, comps, **cols)
    assert reward.__name__ == "accuracy_reward+format_reward+language_reward+format_reward_2"
    with pytest.raises(ValueError, match="returned 1 rewards for 3"):
        combine([(lambda p, c, **k: [0.0], 1.0)])(None, comps)
    with pytest.raises(ValueError, match="no reward terms"):
        combine([])
    with pytest.raises(ValueError, match="column 'answer' has 2 values for 3"):
        math_reward(None, comps, answer=["1", "2"])


# ---------------------------------------------------------------------------------------------------------------
# hostile strings: every rule reward returns a value in [0, 1] within a time bound

MB = 1 << 20


def hostile_strings():
    """Huge, nested, unbalanced and backtracking-bait inputs (generated one at a time: some are 40 MB in memory)."""
    yield "a" * (10 * MB)
    yield "<think>" * (10 * MB // 7)
    yield "<answer>" * (10 * MB // 8)
    yield "</answer>" * (10 * MB // 9)
    yield "\\boxed{" * (10 * MB // 7)
    yield "{" * (10 * MB)
    yield "```" * (10 * MB // 3)
    yield "<|sep|>" * (10 * MB // 7)
    yield "<|endoftext|>" * (10 * MB // 13)
    yield "你" * (10 * MB)
    yield "ab " * (10 * MB // 3)
    yield "answer is " * MB
    yield "<think>" * 10_000 + "x" + "</think>" * 10_000 + "<answer>1</answer>"   # 10k nested tags
    yield "<answer>" * 10_000 + "1" + "</answer>" * 10_000
    for body in ("1" * (10 * MB), "\\frac{" * 100_000, "(" * 100_000 + "1" + ")" * 100_000, "1," * 100_000,
                 " " * MB + "x = " * 10_000, "\\left" * 100_000 + "\\text{" * 10_000, "9" * 5000 + "/" + "9" * 5000,
                 "\\boxed{" * 100_000 + "}" * 99_999, "```python\n" * 100_000):
        yield " <think> x </think> <answer>" + body + "</answer>"
    yield "<|pad|>" * 100_000 + "x"
    yield "\x00\ud800\uffff\U0010ffff" * 1000
    yield ""


def _random_texts(n, seed=0):
    """Random mixtures of tags, braces, separators, numbers and unicode."""
    rng = random.Random(seed)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "<|sep|>", "\\boxed{", "{", "}", "\\frac", "```",
              "```python\n", "1,234", "-", "/", "3", ".", " ", "\n", "答案是", "the answer is", "<|endoftext|>",
              "(", ")", "*", "=", "é", "你", "\u2212", "\ud83d", "\x00"]
    return ["".join(rng.choice(pieces) if rng.random() < 0.7 else chr(rng.randrange(0x20, 0x30000))
                    for _ in range(rng.randrange(0, 200))) for _ in range(n)]


RULE_REWARDS = [format_reward, cold_start_format_reward, math_reward, countdown_reward, language_reward,
                general_reward, accuracy_reward]


def _check_all(texts, bound_s):
    n = len(texts)
    cols = dict(answer=["1"] * n, nums=[[1, 2]] * n, target=[3] * n, lang=["zh"] * n,
                task=(["arith", "countdown", "general"] * n)[:n])
    for f in RULE_REWARDS:
        t0 = time.monotonic()
        out = f(["p"] * n, texts, **cols)
        assert time.monotonic() - t0 < bound_s, f.__name__
        assert len(out) == n and all(0.0 <= v <= 1.0 for v in out), f.__name__
    for t in texts:
        t0 = time.monotonic()
        extract_answer(t)
        extract_code(t)
        assert time.monotonic() - t0 < bound_s


def test_hostile_huge_strings():
    for text in hostile_strings():
        _check_all([text], bound_s=2.0)


def test_hostile_random_unicode():
    _check_all(_random_texts(400), bound_s=2.0)


def test_issue_inputs_are_fast():
    """Inputs that were once slow: each was normalised or rewritten before any length cap (quadratic \\frac
    replacement, NFKC expanding a character 18x); now each reward is capped first. process_time: CPU seconds of
    this process only, so other jobs on a shared machine do not fail the bound."""
    for body in ("1+2 = " + "\\frac12" * 100_000, "\ufdfa" * 1_000_000, "1+2 = " + "\ufdfa" * 1_000_000,
                 "\ufdfa" * 9_000, "\u200b" * 1_000_000):
        for text in (rz("x", body), "<|sep|>r<|sep|>" + body, "<think>" + body + "</think><answer>3</answer>"):
            t0 = time.process_time()
            _check_all([text], bound_s=2.0)
            assert time.process_time() - t0 < 1.0, (body[:20], len(body))


def test_helpers_keep_their_types_on_odd_inputs():
    odd = [None, 12, 10 ** 5000, 1.5, b"42", ["<answer>1</answer>"], {"content": "<answer>1</answer>"}, "", "\x00",
           "1 2", "\\frac{", "}" * 100, "\ufdfa" * 600]
    for x in odd:
        assert isinstance(extract_answer(x), (str, type(None))), x
        assert isinstance(extract_code(x), (str, type(None))), x
        assert isinstance(A.parse_number(x), (Fraction, type(None))), x
        assert isinstance(math_equal(x, "42"), bool) and isinstance(math_equal("42", x), bool), x
        assert isinstance(A.general_equal(x, "42"), bool) and isinstance(A.general_equal("42", x), bool), x
        assert isinstance(countdown_correct(x, [1, 2], 3), bool) and isinstance(countdown_correct("1+2", [1, 2], x),
                                                                                bool), x
        assert isinstance(A.countdown_value(x, [1, 2]), (Fraction, type(None))), x
        try:   # documented: a str, or ValueError for malformed or over-long LaTeX
            assert isinstance(A.normalize_answer(x), str), x
        except ValueError:
            pass
    with pytest.raises(ValueError, match="longer than"):
        A.normalize_answer("1" * (A.MAX_ANSWER_CHARS + 1))
    with pytest.raises(ValueError, match="too long after unicode"):
        A.normalize_answer("\ufdfa" * 1000)   # under the cap as written, 18x over it after NFKC


def test_cli_help():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "rewards.py"), "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:") and "rule-based rewards" in out.stdout, out.stdout
    assert "sandbox isolation" not in out.stdout, "--help must not run the demo"


def test_code_reward_on_garbage_never_raises():
    garbage = _random_texts(6, seed=1) + ["{" * MB, "```" * MB, rz("x", "```python\n" + "(" * 100_000 + "\n```"),
                                          rz("x", "```python\nimport os\nos._exit(0)\n```")]
    out = code_reward(None, garbage, tests=[["assert True"]] * len(garbage), timeout=2.0)
    assert len(out) == len(garbage) and all(0.0 <= v <= 1.0 for v in out)


# ---------------------------------------------------------------------------------------------------------------
# the code reward (the sandbox itself: tests/test_sandbox.py)

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def test_code_reward_extraction_options_and_parallel():
    comps = [rz("x", "```python\ndef add(a, b):\n    return a + b\n```"),
             rz("x", "def add(a, b):\n    return a * b"),                        # passes 1 of 3
             " <think> ```python\ndef add(a, b): return a + b\n``` </think>",     # no answer: fenced code anywhere
             rz("x", "```js\nfunction add(a, b) { return a + b }\n```"),
             rz("x", "def add(a, b):\n    return a + b if a != 2 else 0"), "no code at all"]
    tests = [ADD_TESTS] * len(comps)
    assert code_reward(None, comps, tests=tests, max_workers=3) == pytest.approx([1.0, 1 / 3, 1.0, 0.0, 2 / 3, 0.0])
    assert code_reward(None, comps[:2], tests=tests[:2], all_or_nothing=True) == [1.0, 0.0]
    assert code_reward(None, comps[:1], tests=[json.dumps(ADD_TESTS)]) == [1.0]    # tests as a JSON string
