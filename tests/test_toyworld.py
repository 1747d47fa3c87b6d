"""Tests for toyworld.py: the reasoning task generators, their answers and the held-out split.

    python -m pytest -q tests/test_toyworld.py
"""
import itertools
import os
import random
import re
import zlib
from collections import Counter
from fractions import Fraction

import pytest

import data
import tokenizer
import toychat
import toyworld


def test_generators_deterministic_per_seed():
    for kind in data.KINDS:
        a = data.make_tasks(kind, 40, seed=3)
        random.seed(999)                                      # global random state must not matter
        b = data.make_tasks(kind, 40, seed=3)
        assert a == b
        assert a != data.make_tasks(kind, 40, seed=4)
        assert data.make_tasks(kind, 10, seed=3, split="eval") == data.make_tasks(kind, 10, seed=3, split="eval")
    assert data.pretrain_corpus(300, seed=1) == data.pretrain_corpus(300, seed=1)
    assert data.pretrain_corpus(300, seed=1) != data.pretrain_corpus(300, seed=2)
    assert toychat.make_preference_pairs(50, 1) == toychat.make_preference_pairs(50, 1)
    assert toychat.make_safety_examples(50, 1) == toychat.make_safety_examples(50, 1)
    assert data.eval_sets(20, seed=5) == data.eval_sets(20, seed=5)


def test_task_fields_and_languages():
    for kind in data.KINDS:
        tasks = data.make_tasks(kind, 400, seed=0)
        for t in tasks:
            assert t["task"] == kind and t["lang"] in ("en", "zh")
            assert isinstance(t["prompt"], str) and isinstance(t["answer"], str) and t["answer"]
            assert t["difficulty"] in data.GENERATORS[kind][1]
            assert not t["prompt"].endswith((".", "?"))       # the template adds ". Assistant:"
            assert all(not k.startswith("_") for k in t)
            if t.get("type") != "to_en":                     # "What is 猫 in English" is an English prompt
                assert any(map(tokenizer.is_cjk, t["prompt"])) == (t["lang"] == "zh")
        zh = sum(t["lang"] == "zh" for t in tasks) / len(tasks)
        assert 0.08 < zh < 0.25                                    # toyworld.ZH_FRAC = 0.15
        assert {t["difficulty"] for t in tasks} == set(data.GENERATORS[kind][1])
    for d in (1, 2, 3, 4):
        for t in data.make_tasks("arith", 30, seed=1, difficulty=d):
            assert t["difficulty"] == d
            a, b, op = t["a"], t["b"], t["op"]
            assert int(t["answer"]) == (a + b if op == "+" else a - b if op == "-" else a * b) >= 0
            assert f"{a}{op}{b}" in t["prompt"]
    assert all(t["lang"] == "zh" for t in data.make_tasks("arith", 20, seed=0, lang="zh"))


def test_train_eval_disjoint_by_canonical_problem():
    for kind in data.KINDS:
        train = data.make_tasks(kind, 3000, seed=0, split="train")
        ev = data.make_tasks(kind, 150, seed=0, split="eval")
        assert {t["canon"] for t in train}.isdisjoint({t["canon"] for t in ev}), kind
        assert all(toyworld.split_of(t["canon"]) == "train" for t in train)
        assert all(toyworld.split_of(t["canon"]) == "eval" for t in ev)
    # the canonical problem ignores language and wording: the same draws in en and zh are the same problems
    en = data.make_tasks("arith", 50, seed=2, lang="en")
    zh = data.make_tasks("arith", 50, seed=2, lang="zh")
    assert [t["canon"] for t in en] == [t["canon"] for t in zh]
    assert all(a["prompt"] != b["prompt"] for a, b in zip(en, zh))
    # 58+347 and 347+58 are one problem
    assert toyworld._arith_canon("+", 58, 347) == toyworld._arith_canon("+", 347, 58)
    sets = data.eval_sets(60, seed=1)
    assert set(sets) == {"arith", "countdown", "code"} and all(len(v) == 60 for v in sets.values())
    assert len({t["canon"] for t in sets["arith"]}) == 60      # no repeated problem in an eval set


def _cd_eval(expr: str):
    """A tiny exact evaluator for + - * / and parentheses: (Fraction value, numbers used)."""
    toks = re.findall(r"\d+|[-+*/()]", expr)
    assert "".join(toks) == expr.replace(" ", ""), expr
    pos, used = 0, []

    def atom():
        nonlocal pos
        t = toks[pos]
        pos += 1
        if t == "(":
            v = add()
            assert toks[pos] == ")"
            pos += 1
            return v
        assert t.isdigit(), expr
        used.append(int(t))
        return Fraction(int(t))

    def mul():
        nonlocal pos
        v = atom()
        while pos < len(toks) and toks[pos] in "*/":
            op = toks[pos]
            pos += 1
            w = atom()
            v = v * w if op == "*" else v / w
        return v

    def add():
        nonlocal pos
        v = mul()
        while pos < len(toks) and toks[pos] in "+-":
            op = toks[pos]
            pos += 1
            w = mul()
            v = v + w if op == "+" else v - w
        return v

    v = add()
    assert pos == len(toks), expr
    return v, used


def test_countdown_answers_reach_their_targets():
    assert _cd_eval("15-4-(14-9)") == (6, [15, 4, 14, 9])
    assert _cd_eval("(9+5)/(15-13)") == (7, [9, 5, 15, 13])
    for split in ("train", "eval"):
        for t in data.make_tasks("countdown", 400, seed=5, split=split):
            value, used = _cd_eval(t["answer"])
            assert value == t["target"], t
            assert sorted(used) == sorted(t["nums"]), t
            assert len(t["nums"]) == (3 if t["difficulty"] == 1 else 4)
            assert str(t["target"]) in t["prompt"] and all(str(n) in t["prompt"] for n in t["nums"])


def test_code_reference_solutions_pass_their_tests():
    tasks = data.make_tasks("code", 300, seed=0) + data.make_tasks("code", 100, seed=0, split="eval")
    assert len({t["canon"].split(":")[1] for t in tasks}) >= 10   # ~10+ templates
    for t in tasks:
        assert 3 <= len(t["tests"]) <= 5
        ns = {}
        exec(t["answer"], ns)                                  # our own reference code
        assert callable(ns[t["entry"]])
        for test in t["tests"]:
            assert test.startswith(f"assert {t['entry']}(")
            exec(test, ns)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="algebra"):
        data.make_tasks("algebra", 1)
    with pytest.raises(ValueError, match="difficulty"):
        data.make_tasks("arith", 1, difficulty=7)
    with pytest.raises(ValueError, match="split"):
        data.make_tasks("arith", 1, split="test")


# ------------------------------------------------------------------- the worked solutions: search and checks
def _solutions(kind, level, n, seed=0, careful=None):
    """n worked solutions (text, answer, meta, task) of training problems, in English."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        t = data._sample_task(kind, rng, "train", level, "en")
        text, ans, meta = toyworld.worked_solution(t, rng)
        if careful is None or meta["careful"] == careful:
            out.append((text, ans, meta, t))
    return out


STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


def _true(a, op, b, v):
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op] == v


def test_every_try_is_computed_and_compared_with_the_target():
    """A search restates its numbers and target, then its tries follow cd_search (each step computed right); only a
    claimed hit may write the target for a step's value, and a careful search then catches it ("check ... not ...
    wait, <step>=<true value>")."""
    for text, ans, meta, t in _solutions("countdown", 1, 400):
        assert text.startswith(f"{', '.join(map(str, t['nums']))} -> {t['target']}.")
        tries = [p for p in re.split(r"(?=\btry\b|试)", text) if p.startswith(("try", "试"))]
        search = toyworld.cd_search(t["nums"], t["target"])
        assert tries and len(tries) <= len(search)
        for written, (steps, expr, hit, _) in zip(tries, search):
            found = STEP.findall(re.split(r", (?:need|要) ", written)[0])
            assert [f"{a}{op}{b}" for a, op, b, _ in found] == [e for e, _ in steps[:len(found)]]
            for a, op, b, v in found[:-1]:
                assert _true(int(a), op, int(b), int(v))
            a, op, b, v = found[-1]
            if not _true(int(a), op, int(b), int(v)):                    # a false hit: the target was written
                assert int(v) == t["target"] and re.search(r", (yes|对)\.", written)
        assert meta["correct"] == (toyworld.countdown_ok(ans, t["nums"], t["target"]))


def test_the_verdict_audit_finds_no_misjudged_try_in_the_corpus():
    """tools/countdown_verdicts.py on the corpus's own searches: every "yes" follows the target and every "no" a
    miss, no hit is written past, and wrong step values are rarer than hits (only a claimed hit writes one); on a
    hand-made sample it counts each kind of mistake once."""
    from tools.countdown_verdicts import audit
    rows = [{"set": "countdown", "completion": text} for text, *_ in _solutions("countdown", 1, 400)]
    c = audit(rows)
    assert c["tries"] > 400 and c["'yes' after the target"] > 50
    assert c["'yes' after a miss"] == c["'no' after the target"] == c["a hit written past"] == 0
    # wrong values only where a hit is claimed (test_every_try_is_computed_and_compared_with_the_target pins which)
    assert 0 < c["wrong step values"] < c["'yes' after the target"]
    made = ("6, 6, 1 -> 11. try 6+6=12, 12-1=11, 12/1=12, need 11, no. try 6*6=36, 36-1=34, need 11, no. "
            "try 6+1=7, 7*6=42, need 11, yes. try 6+6=12, 12-1=11, need 11, yes.")
    assert audit([{"set": "countdown", "completion": made}]) == Counter(
        {"tries": 4, "'no' after a miss": 2, "a hit written past": 1, "wrong step values": 1,
         "'yes' after a miss": 1, "'yes' after the target": 1})


def test_teacher_forced_verdicts_of_the_shipped_models():
    """tools/countdown_verdicts.py --model on the shipped bf16 models: every verdict of the world's own searches is
    asked once, and the README's reading holds: the base rarely says yes even at a hit, R1-Zero says it more often
    at a hit than at a miss; asked the drills' comparisons, the base is near a coin flip."""
    from tools.countdown_verdicts import teacher_forced
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = teacher_forced(os.path.join(root, "docs", "toy_run", "pretrain", "model.pt"), n_problems=40)
    zero = teacher_forced(os.path.join(root, "docs", "toy_run", "zero", "model.pt"), n_problems=40)
    assert base["hit"][0] == zero["hit"][0] > 5 and base["miss"][0] == zero["miss"][0] > 50
    assert base["hit"][2] < 0.5 and base["miss"][2] < 0.1
    assert zero["hit"][1] > zero["miss"][1] + 0.1
    # in the drills' own balanced comparisons the base barely tells a hit from a miss: it cannot compare at all
    drill = teacher_forced(os.path.join(root, "docs", "toy_run", "pretrain", "model.pt"), n_problems=30, where="drill")
    assert drill["hit"][0] > 20 and drill["miss"][0] > 20
    assert abs(drill["hit"][1] - drill["miss"][1]) < 0.25 and drill["miss"][2] > 0.3


def test_learn_to_compare_runs_and_reports_verdicts_by_hit_and_miss(capsys):
    """tools/learn_to_compare.py (a fresh model on comparisons only): one step runs, and its report gives the
    share of "yes" at hits and at misses."""
    from tools.learn_to_compare import main
    main(["--steps", "1"])
    out = capsys.readouterr().out
    m = re.fullmatch(r"step 0: loss (\d+\.\d+), says yes at (\d\.\d\d) of hits and (\d\.\d\d) of misses \(\d+ s\)\n",
                     out)
    assert m and float(m.group(1)) > 5                  # an untrained model over a 1024-token vocabulary


def test_a_search_ends_at_a_hit_or_gives_up_at_its_budget():
    ends = Counter()
    for text, ans, meta, t in _solutions("countdown", 1, 600):
        tries = toyworld.cd_search(t["nums"], t["target"])
        if text.endswith(f"={t['target']}.") and not re.search("so maybe|那就", text):
            ends["hit"] += 1
            assert re.search(f"(so|所以) {re.escape(ans)}={t['target']}\\.$", text)
        else:
            ends["gave up"] += 1
            assert re.search(r"(so maybe|那就) \S+\.$", text) and not meta["correct"]
            assert text.count("try") <= len(tries)
    # a good share of searches exhausts its budget and ends wrong; most reach their hit
    assert 0.25 < ends["gave up"] / sum(ends.values()) < 0.75


def test_a_caught_false_hit_changes_the_answer():
    seen = 0
    for text, ans, meta, t in _solutions("countdown", 1, 1500, careful=True):
        for m in re.finditer(r"(\d+[-+*/]\d+)=(\d+), (?:need|要) \d+, (?:yes|对)\. (?:check|检查): [^.]*(?:not|不是) "
                             r"\d+\. (?:wait|等等), (\d+[-+*/]\d+)=(\d+), (?:need|要)", text):
            assert m.group(1) == m.group(3) and m.group(2) == str(t["target"]) != m.group(4)
            assert _true(*[int(x) if x.isdigit() else x for x in re.match(r"(\d+)([-+*/])(\d+)", m.group(3)).groups()],
                         int(m.group(4)))
            seen += 1
    assert seen > 5


def test_the_ablations_scripted_searches_always_end_at_the_hit():
    """pretrain.countdown_traces "scripted" (the ablation of the real search): the same layout and correct steps, but 0-3 dead
    ends whatever the problem, then the search's first hit, so every trace ends right; outside the block the real
    search is back, and an unknown kind is named."""
    with toyworld.countdown_traces("scripted"):
        sols = _solutions("countdown", 1, 300)
    dead = Counter()
    for text, ans, meta, t in sols:
        tries = re.findall(r"(?:try|试) ([^.]*?), (?:need|要) (\d+), (yes|no|对|不对)\.", text)
        assert all(v == "no" or v == "不对" for *_, v in tries[:-1]) and tries[-1][2] in ("yes", "对")
        for body, need, _ in tries:
            assert int(need) == t["target"] and all(_true(int(a), op, int(b), int(v)) for a, op, b, v in STEP.findall(body))
        hit = next(tr for tr in toyworld.cd_search(t["nums"], t["target"]) if tr[2])
        assert ans == hit[1] and meta["correct"] and text.endswith(f"={t['target']}.")
        dead[len(tries) - 1] += 1
    assert set(dead) <= {0, 1, 2, 3} and len(dead) == 4
    assert any("so maybe" in text for text, *_ in _solutions("countdown", 1, 300))   # the real search gives up
    with pytest.raises(ValueError, match="countdown_traces"):
        with toyworld.countdown_traces("random"):
            pass


def test_careful_arithmetic_catches_every_slip_and_the_repair_is_right():
    """Every column of a careful pad is checked by its inverse; a failed check is followed by a redo whose value
    is the true one: careful pads are always right, and their repairs changed the answer."""
    n_repaired = 0
    for text, ans, meta, t in _solutions("arith", 2, 600, careful=True):
        assert meta["correct"] and ans == t["answer"], text
        for m in re.finditer(r"(\S+)=(\d+), (?:write|写)[^.]*\. (?:check|检查): [^,]*, (?:not|不是) \d+\. "
                             r"(?:wait, redo|等等, 重算): (?:\S+<0, |\d+\*\d+=\d+, )?(\S+)=(\d+)", text):
            assert m.group(1).split(",")[-1] == m.group(3) and m.group(2) != m.group(4)
            n_repaired += 1
    assert n_repaired > 10
    hasty = _solutions("arith", 2, 600, careful=False)
    assert not re.search("check:|检查:", " ".join(x[0] for x in hasty))
    assert 0.02 < sum(not x[2]["correct"] for x in hasty) / len(hasty) < 0.4       # kept slips: wrong answers


def test_no_fixed_pattern_solves_many_countdown_problems():
    """A policy that applies one fixed expression (the numbers in the given, ascending or descending order, any
    bracketing of 3, any operations) without searching solves at most ~10% of the problems, in training and in
    evaluation (the sum of all numbers: never)."""
    shapes = ("({a}{o1}{b}){o2}{c}", "{a}{o1}({b}{o2}{c})")
    for split in ("train", "eval"):
        tasks = data.make_tasks("countdown", 1500, seed=3, split=split, difficulty=1)
        solved = Counter()
        for t in tasks:
            s = sorted(t["nums"])
            assert t["target"] != sum(t["nums"])
            for name, (a, b, c) in (("given", t["nums"]), ("sorted", s), ("reverse", s[::-1])):
                for shape in shapes:
                    for o1 in "+-*/":
                        for o2 in "+-*/":
                            try:
                                v, _ = _cd_eval(shape.format(a=a, b=b, c=c, o1=o1, o2=o2))
                            except ZeroDivisionError:
                                continue
                            solved[(name, shape, o1, o2)] += v == t["target"]
        worst = max(solved.values()) / len(tasks)
        assert worst < 0.11, (split, solved.most_common(3))


def test_the_24_game_level():
    """Countdown level 3, the 24 game: four numbers in 1..13, the target always 24, answers that reach it; 1 in 4 of
    its problems held out (the 1 in 8 of every kind, plus a quarter from the training side: one split per problem,
    whichever level draws it); no fixed expression (any order of given / ascending / descending, folded from either
    side, any three operations, exact fractions) solves more than ~10% of them, as at level 1 (measured: ~1.5% of
    training draws; ~8% of a 96-question eval set, whose distinct problems undo part of the weighting)."""
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
           "/": lambda x, y: x / y if y else None}

    def fold(xs, three, right):
        v = Fraction(xs[-1] if right else xs[0])
        for x, o in (zip(xs[-2::-1], three[::-1]) if right else zip(xs[1:], three)):
            v = None if v is None else ops[o](Fraction(x), v) if right else ops[o](v, Fraction(x))
        return v

    for split in ("train", "eval"):
        tasks = data.make_tasks("countdown", 400 if split == "train" else 96, seed=3, split=split, difficulty=3)
        solved = Counter()
        for t in tasks:
            assert t["target"] == 24 and len(t["nums"]) == 4 and all(1 <= n <= 13 for n in t["nums"])
            value, used = _cd_eval(t["answer"])
            assert value == 24 and sorted(used) == sorted(t["nums"]), t
            assert "24" in t["prompt"] and toyworld.split_of(t["canon"]) == split
            s = sorted(t["nums"])
            for name, xs in (("given", t["nums"]), ("sorted", s), ("reverse", s[::-1])):
                for three in itertools.product("+-*/", repeat=3):
                    for right in (False, True):
                        solved[(name, three, right)] += fold(xs, three, right) == 24
        assert max(solved.values()) / len(tasks) < 0.11, (split, solved.most_common(3))
    canons = {f"countdown:{','.join(map(str, c))}:24" for c in itertools.combinations_with_replacement(range(1, 14), 4)}
    held = {c for c in canons if toyworld.split_of(c) == "eval"}
    assert 0.2 < len(held) / len(canons) < 0.3
    assert all(toyworld.split_of(c) == "eval" for c in canons if zlib.crc32(c.encode()) % 8 == 0)
    assert all(toyworld.split_of(c.replace(":24", ":23")) == ("eval" if zlib.crc32(c.replace(":24", ":23").encode())
                                                               % 8 == 0 else "train") for c in canons)


def test_direct_answers_are_right_at_a_small_models_rate():
    rng = random.Random(0)
    for kind, level in (("arith", 2), ("countdown", 1)):
        ok = [toyworld.direct_answer(data._sample_task(kind, rng, "train", level, "en"), rng)[1] for _ in range(2000)]
        assert abs(sum(ok) / len(ok) - toyworld.P_DIRECT_RIGHT[kind][level]) < 0.03
