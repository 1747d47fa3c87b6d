"""Tests for toyworld.py: the reasoning task generators, their answers and the held-out split.

    python -m pytest -q tests/test_toyworld.py
"""
import random
import re
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
        assert 0.15 < zh < 0.35
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
