"""
Tests for rewards.py: answer extraction, math normalisation, countdown, format, language consistency, the
combination, the reward-model hook, hostile strings (time-bounded), and the code sandbox against hostile code.

    python -m pytest tests/test_rewards.py -q
"""
import json
import os
import random
import socket
import subprocess
import time

import pytest

import rewards as R
from rewards import (RewardModelReward, accuracy_reward, code_reward, cold_start_format_reward, combine,
                     countdown_correct, countdown_reward, extract_answer, extract_code, format_reward,
                     general_reward, language_reward, math_equal, math_reward, run_code, sandbox_features)

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
    assert extract_answer(text) == expected


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
])
def test_math_equal(pred, gold):
    assert math_equal(pred, gold), (pred, gold, R.normalize_answer(pred), R.normalize_answer(gold))


@pytest.mark.parametrize("pred, gold", [
    ("405", "406"), ("-5", "5"), ("0.75", "3/5"), ("1,23", "123"),   # "1,23" is not a thousands grouping
    ("1e3", "1000"),                                                 # no exponents: "1e999999999" must stay cheap
    ("5%", "5"), ("", "5"), (None, "5"), ("5", None), ("abc", "abd"), ("3/0", "3"), ("\\frac{1}{", "1"),
    ("9" * 300, "9" * 300 + "0"), ("x", ""),
    ("(1)(2)", "12"), ("(1)+(2)", "12"), ("1/2/2", "1/4"), ("(3", "3"), ("--3", "3"),  # parentheses are kept
])
def test_math_not_equal(pred, gold):
    assert not R._safe(math_equal, pred, gold)


def test_math_reward_columns_and_ints():
    comps = [rz("4*100+5", "405"), rz("hm", "\\frac{810}{2}"), rz("no", "404"), "405", rz("a", "1,000,000")]
    assert math_reward(None, comps, answer=[405, "405", "405", "405", 10 ** 6]) == [1.0, 1.0, 0.0, 0.0, 1.0]


# ---------------------------------------------------------------------------------------------------------------
# countdown

@pytest.mark.parametrize("answer, nums, target", [
    ("(25 - 5) * 4", [25, 5, 4], 80), ("4*(25-5)", [4, 5, 25], 80), ("(25\u22125)\u00d74", [25, 5, 4], 80),
    ("(25 - 5) * 4 = 80", [25, 5, 4], 80), ("80 + 0 / 5", [80, 5, 0], 80),
    ("8 / (3 - 8 / 3)", [3, 3, 8, 8], 24),                 # exact: the float value is 23.999999999999996
    ("-3 + 5", [-3, 5], 2), ("5 - -3", [5, -3], 8),        # unary minus only as a given negative number's sign
    ("(25 - 5) * 4", "[25, 5, 4]", "80"),                   # columns as strings
])
def test_countdown_valid(answer, nums, target):
    assert countdown_correct(answer, nums, target)


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
])
def test_countdown_invalid(answer, nums, target):
    t0 = time.monotonic()
    assert not R._safe(countdown_correct, answer, nums, target)
    assert time.monotonic() - t0 < 1.0


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
])
def test_format_r1zero(text, ok):
    assert format_reward(None, [text]) == [float(ok)]


@pytest.mark.parametrize("text, ok", [
    ("<|sep|> reasoning <|sep|> summary", True),
    (" <|sep|>reasoning<|sep|>The answer is <answer> 4 </answer>.<|endoftext|>", True),
    ("<|sep|>  <|sep|> summary", False), ("<|sep|> reasoning <|sep|>  ", False),
    ("<|sep|> reasoning", False), ("<|sep|> a <|sep|> b <|sep|> c", False), ("x <|sep|> a <|sep|> b", False),
    ("<|sep|> <think> a </think> <|sep|> b", False), ("<|sep|> a <|sep|> <answer> b", False),
    ("<|sep|> a <answer> 1 </answer> <|sep|> b", False), ("<|sep|> a <|sep|> </answer> 1 <answer>", False),
    ("<|sep|> a <|sep|> <answer>1</answer><answer>2</answer>", False),
    (" <think> a </think> <answer> b </answer>", False),
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


def test_reward_model_wrapper():
    seen = {}

    def score_fn(prompts, texts):
        seen["texts"] = texts
        import torch
        return torch.tensor([float(len(t)) for t in texts])

    comps = ["<|sep|> long reasoning <|sep|> Short.", " <think> r </think> Final!<|endoftext|>", "direct",
             "<|sep|>r<|sep|> "]
    helpful = RewardModelReward(score_fn, on="answer", name="helpful", missing=-1.0)
    assert helpful(["q"] * 4, comps) == [6.0, 6.0, 6.0, -1.0]
    assert seen["texts"] == ["Short.", "Final!", "direct"]
    safety = RewardModelReward(lambda p, t: [1.0 if "reasoning" in x else 0.0 for x in t], on="full")
    assert safety(None, comps) == [1.0, 0.0, 0.0, 0.0]
    assert combine([(helpful, 1.0), (safety, 1.0)]).components(None, comps)["helpful"][0] == 6.0
    with pytest.raises(ValueError, match="on must be"):
        RewardModelReward(score_fn, on="cot")


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


def test_code_reward_on_garbage_never_raises():
    garbage = _random_texts(6, seed=1) + ["{" * MB, "```" * MB, rz("x", "```python\n" + "(" * 100_000 + "\n```"),
                                          rz("x", "```python\nimport os\nos._exit(0)\n```")]
    out = code_reward(None, garbage, tests=[["assert True"]] * len(garbage), timeout=2.0)
    assert len(out) == len(garbage) and all(0.0 <= v <= 1.0 for v in out)


# ---------------------------------------------------------------------------------------------------------------
# the code sandbox

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def test_sandbox_isolation_available():
    """What run_code's docstring promises on this machine (root: a nobody uid; otherwise a user namespace)."""
    need = {"mnt", "net", "pid", "proc", "tmpfs", "rlimits", "nnp", "stdlib"}
    need |= {"uid"} if IS_ROOT else {"user", "caps"}
    assert need <= sandbox_features(), f"sandbox lacks {sorted(need - sandbox_features())} on this machine"


def test_sandbox_scores():
    good = "def add(a, b):\n    return a + b\n"
    assert run_code(good, ADD_TESTS).score == 1.0
    partial = run_code("def add(a, b):\n    return a + b if a > 0 else 7\n", ADD_TESTS)
    assert (partial.passed, partial.total, partial.score) == (2, 3, pytest.approx(2 / 3))
    assert any(e.startswith("test 1: AssertionError") for e in partial.errors)
    assert run_code("def add(a, b) return", ADD_TESTS).score == 0.0           # syntax error
    assert run_code(good, []).status == "skipped"
    assert run_code(good, ["raise SystemExit(0)", "assert add(1, 1) == 2"]).passed == 1
    with_imports = "import numpy, json, collections\ndef add(a, b): return int(numpy.add(a, b))"
    assert run_code(with_imports, ADD_TESTS).score == 1.0
    # a hanging test costs only itself: the others still count
    r = run_code(good, ["assert add(1, 2) == 3", "while True: pass", "assert add(2, 2) == 4"],
                 timeout=3.0, step_timeout=0.5)
    assert (r.passed, r.status) == (2, "ok")


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


def test_sandbox_results_cannot_be_forged_by_printing():
    forge = ("import sys\nfor i in range(3):\n    print('x\\ttest\\t%d\\tok' % i)\n"
             "    sys.stderr.write('x\\ttest\\t%d\\tok\\n' % i)\n")
    assert run_code(forge, ADD_TESTS).score == 0.0
    assert run_code("import os\nos._exit(0)", ADD_TESTS).score == 0.0


def _marked_processes(marker):
    """Host pids whose name (comm) is `marker`: hostile code names itself so its leftovers can be found."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == marker:
                    found.append(int(pid))
        except (OSError, ValueError):
            pass
    return found


def _assert_no_leftovers(marker, within_s=3.0):
    deadline = time.monotonic() + within_s
    while _marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _marked_processes(marker), f"sandboxed processes named {marker} survived"


# prctl(PR_SET_NAME): the process (and every child it forks) is named `marker` in /proc/<pid>/comm
NAME_SELF = "import ctypes\nctypes.CDLL(None).prctl(15, {marker!r}.encode(), 0, 0, 0)\n"

# name -> (code, how it may end: substrings of the errors, or "timeout" for the wall-clock kill). Code that swallows
# the step alarm is usually stopped by the wall clock, but the alarm can land outside its try: either is fine.
HOSTILE_CODE = {
    "infinite_loop": ("while True:\n    pass\n", ("StepTimeout", "timeout")),  # the alarm, or the wall clock under load
    "loop_swallowing_timeouts": ("while True:\n    try:\n        while True:\n            pass\n"
                                 "    except BaseException:\n        pass\n", ("timeout", "StepTimeout")),
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except BaseException:\n        pass\n",
                  ("timeout", "StepTimeout")),
    "escaping_daemon": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                        "        time.sleep(60)\ndef add(a, b):\n    return None\n", ("test 0: AssertionError",)),
    "memory_hog": ("a = []\nwhile True:\n    a.append(bytearray(10 ** 7))\n", ("MemoryError",)),
    "memory_at_once": ("x = bytearray(8 << 30)\ndef add(a, b):\n    return a + b\n", ("MemoryError",)),
    "disk_filler": ("with open('big', 'wb') as f:\n    for _ in range(200):\n        f.write(b'x' * (1 << 20))\n"
                    "def add(a, b):\n    return a + b\n", ("OSError(27, 'File too large')",)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CODE))
def test_sandbox_stops_hostile_code(name):
    """Each attack scores 0, ends by the mechanism meant for it within its limit, and leaves no process behind."""
    marker = f"mr1x{sorted(HOSTILE_CODE).index(name)}x{os.getpid() % 100000}"
    code, endings = HOSTILE_CODE[name]
    timeout = 1.5
    t0 = time.monotonic()
    r = run_code(NAME_SELF.format(marker=marker) + code, ADD_TESTS, timeout=timeout)
    elapsed = time.monotonic() - t0
    assert r.score == 0.0, (r, name)
    assert ("timeout" in endings and r.status == "timeout") or \
        (r.status == "ok" and any(x in e for x in endings for e in r.errors)), r
    assert elapsed < timeout + 1.5, f"{name} ran {elapsed:.1f}s"
    _assert_no_leftovers(marker)
    os.kill(os.getpid(), 0)  # the test process is alive (trivially, if we got here)


def test_sandbox_blocks_writes_outside_its_directory():
    """The child runs as nobody in a private mount namespace: root-owned paths are read-only to it, and /tmp,
    /var/tmp and /dev/shm are private empty tmpfs, so even a world-writable file in a world-writable directory of
    /tmp (which uid nobody alone could overwrite, delete or rename) is out of its reach."""
    import shutil
    import tempfile
    shared = tempfile.mkdtemp(prefix="minr1-victim-", dir="/tmp")
    os.chmod(shared, 0o777)
    victim, locked = os.path.join(shared, "victim.txt"), os.path.join(shared, "locked.txt")
    for path, mode in ((victim, 0o666), (locked, 0o644)):
        with open(path, "w") as f:
            f.write("original")
        os.chmod(path, mode)
    tag = os.urandom(4).hex()  # fresh names: a leftover of an earlier (broken) run cannot mask or fake a result
    in_repo = os.path.join(ROOT, f"pwned_by_sandbox_{tag}")
    targets = [in_repo, os.path.join(shared, "new.txt"), victim, locked] + \
        [f"{d}/minr1_pwned_by_sandbox_{tag}" for d in ("/tmp", "/var/tmp", "/dev/shm")]
    # The attack never touches existing repo files: if the sandbox were broken it must not damage the checkout.
    code = ("import os\nfor p in %r:\n    try:\n        with open(p, 'a') as f:\n            f.write('pwned')\n"
            "    except OSError:\n        pass\nfor p in %r:\n    try:\n        os.remove(p)\n    except OSError:\n"
            "        pass\n" % (targets, [victim, locked]))
    try:
        # Probe tests: its own directory is writable; the repo is not; the test's /tmp files are invisible to it.
        r = run_code(code, ["open('mine.txt', 'w').write('ok')\nassert open('mine.txt').read() == 'ok'",
                            f"import os\nassert not os.access({ROOT!r}, os.W_OK)",
                            f"import os\nassert not os.path.exists({victim!r})"])
        assert r.score == 1.0, r
        for path in (victim, locked):
            assert open(path).read() == "original"
        for path in [in_repo, os.path.join(shared, "new.txt")] + targets[4:]:
            assert not os.path.exists(path), path
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        for path in [in_repo] + targets[4:]:
            if os.path.exists(path):
                os.remove(path)


def test_sandbox_environment_is_empty(monkeypatch):
    monkeypatch.setenv("MINR1_SECRET", "hunter2")
    leak = "import os\nif os.environ.get('MINR1_SECRET') == 'hunter2':\n    def add(a, b):\n        return a + b\n"
    assert run_code(leak, ADD_TESTS).score == 0.0                               # would score 1 if it leaked
    # Probe: the child's environment holds at most what Python itself sets (PEP 538 LC_CTYPE); the parent's
    # environment is not readable through /proc either.
    probe = ["import os\nassert set(os.environ) <= {'LC_CTYPE'}, dict(os.environ)",
             f"try:\n    data = open('/proc/{os.getpid()}/environ', 'rb').read()\nexcept OSError:\n    data = b''\n"
             "assert b'hunter2' not in data"]
    assert run_code("", probe).score == 1.0


def test_sandbox_has_no_network():
    """A listener in the test process: the child cannot reach it (it has its own empty network namespace, so
    connecting fails with ENETUNREACH rather than reaching 127.0.0.1 of the host), and nothing arrives."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n" \
           "    def add(a, b):\n        return a + b\nexcept OSError:\n    pass\n"
    assert run_code(code, ADD_TESTS).score == 0.0
    probe = [f"import socket, errno\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
             "    err = None\n"
             "except OSError as e:\n    err = e.errno\nassert err in (errno.ENETUNREACH, errno.ECONNREFUSED), err",
             "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n    ok = True\n"
             "except OSError:\n    ok = False\nassert not ok"]
    assert run_code("", probe, timeout=4.0).score == 1.0
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


def test_sandbox_cannot_kill_its_parent_or_bystanders():
    # Without a pid namespace or a uid of its own the attack below would really kill pytest: fail loudly instead.
    assert {"pid", "uid"} & sandbox_features(), "no pid namespace and no uid drop: not safe to run"
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        me, other = os.getpid(), bystander.pid
        code = "import os, signal\n" + "".join(
            f"try:\n    {call}\nexcept OSError:\n    pass\n" for call in (
                f"os.kill({me}, 9)", f"os.kill({other}, 9)", "os.kill(os.getppid(), 9)", "os.kill(-1, 9)",
                f"os.killpg(os.getpgid({me}), 9)", "os.killpg(0, 9)")) + "def add(a, b):\n    return None\n"
        r = run_code(code, ADD_TESTS)
        assert r.score == 0.0
        assert bystander.poll() is None, "the sandbox killed a process of the test"
        # Probe: signalling the test process fails (invisible in the pid namespace / not permitted as nobody).
        probe = [f"import os\ntry:\n    os.kill({me}, 0)\n    ok = False\nexcept OSError:\n    ok = True\nassert ok"]
        assert run_code("", probe).score == 1.0
    finally:
        bystander.kill()
        bystander.wait()
