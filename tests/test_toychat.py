"""Tests for toychat.py: general instructions, preference pairs and safety requests, and the held-out split.

    python -m pytest -q tests/test_toychat.py
"""
import random

import data
import toychat


def test_general_preference_and_safety_data():
    for t in data.make_tasks("general", 300, seed=0):
        assert t["type"] in toychat.GENERAL_PROMPTS and t["answer"].strip()
        if t["type"] == "upper":
            assert t["answer"].isupper()
    pairs = toychat.make_preference_pairs(300, seed=0)
    assert all(p["chosen"] != p["rejected"] and p["prompt"] for p in pairs)
    for t in data.make_tasks("general", 300, seed=0):
        ts = toychat.general_task(random.Random(t["canon"]), 1, t["lang"])
        assert ts["_wrong"] != ts["answer"], ts
    assert {p["lang"] for p in pairs} == {"en", "zh"}
    ex = toychat.make_safety_examples(400, seed=0)
    assert {e["unsafe"] for e in ex} == {True, False}
    for e in ex:
        if not e["harmful_request"]:
            assert not e["unsafe"]                             # benign help or a refusal is always safe
        if e["unsafe"]:
            assert any(s in e["response"] for s in ("First,", "先"))   # it spells the harm out somewhere
    refused = [e for e in ex if e["harmful_request"] and not e["unsafe"]]
    assert refused and all("First," not in e["response"] and "先" not in e["response"] for e in refused)
    train = {e["prompt"] for e in toychat.make_safety_examples(300, 0, "train")}
    ev = {e["prompt"] for e in toychat.make_safety_examples(100, 0, "eval")}
    assert train.isdisjoint(ev)
