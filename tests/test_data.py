"""Tests for data.py: the templates, the corpus, JSONL loading and the CLI.

    python -m pytest -q tests/test_data.py
"""
import os
import re
from collections import Counter

import pytest
from test_toyworld import _cd_eval

import data
import tokenizer
import toychat
import toyworld

# R1 Table 1, restated here so the test does not depend on data.py's own copy (PAPER.md "The R1-Zero template").
TABLE1 = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
          "assistant first thinks about the reasoning process in the mind and then provides the user with the "
          "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
          "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
          "User: {prompt}. Assistant:")
FULL_FORMAT = re.compile(r"^\s*<think>((?:(?!</?think>|</?answer>).)+)</think>\s*<answer>((?:(?!</?think>|"
                         r"</?answer>).)+)</answer>\s*$", re.S)


@pytest.fixture(scope="module")
def corpus():
    return data.pretrain_corpus(3000, seed=11, with_meta=True)


def completion_of(doc: str) -> str:
    return doc.split("Assistant:", 1)[1]


# ------------------------------------------------------------------------------------------------ templates
def test_r1zero_template_is_verbatim():
    assert data.R1ZERO_TEMPLATE == TABLE1
    here = os.path.dirname(os.path.abspath(__file__))
    for p in (os.path.join(here, "..", "PAPER.md"), os.path.join(here, "..", "docs", "PAPER.md"),
              os.path.join(here, "..", "..", "shared", "PAPER.md")):
        if os.path.exists(p):                                 # also against PAPER.md itself where it is present
            text = open(p).read().split("## The R1-Zero template", 1)[1].split("\n## ", 1)[0]
            block = " ".join(l.strip() for l in text.splitlines() if l.startswith("    "))
            assert data.R1ZERO_TEMPLATE == block
    t = {"prompt": "Compute 347+58"}
    assert data.r1zero_prompt(t) == TABLE1.replace("{prompt}", "Compute 347+58")
    assert data.r1zero_prompt(t).endswith("User: Compute 347+58. Assistant:")


def test_chat_and_cold_start_formats():
    assert data.chat_prompt("hi") == "<|user|>hi<|assistant|>"
    assert data.chat_prompt("hi", system="S") == "<|system|>S<|user|>hi<|assistant|>"
    assert data.cold_start_text("r", "s") == "<|sep|>r<|sep|>s"


# ----------------------------------------------------------------------------------------------- the corpus
def test_corpus_uses_training_problems_only(corpus):
    _, metas = corpus
    canons = [m["canon"] for m in metas if "canon" in m]
    assert len(canons) > 2000
    assert all(toyworld.split_of(c) == "train" for c in canons)
    assert toychat.make_preference_pairs(100, 0, "eval") != toychat.make_preference_pairs(100, 0, "train")


def test_corpus_composition_and_format_rate(corpus):
    docs, metas = corpus
    kinds = Counter(m["kind"] for m in metas)
    assert set(kinds) == set(data.CORPUS_MIX)
    r1 = [d for d, m in zip(docs, metas) if m["kind"] == "r1zero"]
    assert all(d.startswith(data.R1ZERO_TEMPLATE.split("{prompt}")[0]) for d in r1)
    # the full R1-Zero format, judged from the text itself, in about a third of the template documents
    full = [bool(FULL_FORMAT.match(completion_of(d))) for d in r1]
    assert 0.30 <= sum(full) / len(full) <= 0.40
    assert full == [m["full_format"] for m in metas if m["kind"] == "r1zero"]
    comps = [completion_of(d) for d in r1]
    assert sum("<think>" not in c and "<answer>" not in c for c in comps) / len(comps) > 0.3   # untagged answers
    assert sum(("<think>" in c or "<answer>" in c) and not FULL_FORMAT.match(c) for c in comps) / len(comps) > 0.15
    # scratchpads (long) and direct answers (short) both occur
    lens = {s: [len(c) for c, m in zip(comps, [m for m in metas if m["kind"] == "r1zero"]) if m["style"] == s]
            for s in ("tagged_pad", "tagged_direct")}
    mean = {s: sum(v) / len(v) for s, v in lens.items()}
    assert mean["tagged_pad"] > 2 * mean["tagged_direct"]
    chat = [d for d, m in zip(docs, metas) if m["kind"] in ("chat", "chat_reason", "safety")]
    assert chat and all(d.startswith("<|user|>") and d.count("<|assistant|>") == 1 for d in chat)


def test_corpus_quality_mix_and_language_mixing(corpus):
    docs, metas = corpus
    pads = [m for m in metas if m.get("quality") in ("clean", "repaired", "wrong")]
    q = Counter(m["quality"] for m in pads)
    assert 0.15 < q["wrong"] / len(pads) < 0.6            # searches that gave up, slips kept by hasty pads
    assert q["repaired"] > 0.01 * len(pads)               # checks that caught a slip
    assert all(m["correct"] == (m["quality"] != "wrong") for m in pads)
    direct = [m for m in metas if m.get("quality") in ("direct_ok", "direct_wrong")]
    assert 0.6 < sum(m["quality"] == "direct_wrong" for m in direct) / len(direct) < 0.95
    text = "\n".join(docs)
    assert "wait, redo:" in text and "等等, 重算:" in text and "check: " in text and "so maybe" in text
    # language mixing, judged from the text: a reasoning completion with both Chinese and English words
    mixed = []
    for d, m in zip(docs, metas):
        if m["kind"] == "r1zero" and m["task"] != "code" and m.get("quality") in ("clean", "repaired", "wrong"):
            c = re.sub(r"</?(think|answer)>", "", completion_of(d))
            mixed.append(bool(re.search(r"[a-zA-Z]{2,}", c)) and any(map(tokenizer.is_cjk, c)))
    assert 0.05 < sum(mixed) / len(mixed) < 0.25
    zh_docs = sum(m.get("lang") == "zh" for m in metas) / len(metas)
    assert 0.08 < zh_docs < 0.25


def test_corpus_arithmetic_is_true_in_correct_solutions(corpus):
    # every equation in a clean solution, and in a drill, is true: the model learns from these
    docs, metas = corpus
    n = 0
    for d, m in zip(docs, metas):
        if m.get("quality") == "clean" or m["kind"] == "drill":
            body = completion_of(d) if "Assistant:" in d else d
            body = body.split("<|assistant|>")[-1]
            for lhs, rhs in re.findall(r"([\d+\-*/()]*\d\)?)=(\d+)", body):
                lhs = lhs.lstrip("+-*/)")
                if lhs.count("(") != lhs.count(")") or not re.match(r"^[\d(]", lhs):
                    continue
                assert _cd_eval(lhs)[0] == int(rhs), (lhs, rhs, d)
                n += 1
            if m.get("task") == "arith" and m["kind"] != "drill":
                assert m["correct"]
    assert n > 5000


def test_running_result_is_the_written_digits(corpus):
    # after each column "so far" restates every digit written so far (most significant first), so the last one
    # of an operation is its result: the final answer is a copy, not the written digits gathered in reverse
    docs, metas = corpus
    n = 0
    for d, m in zip(docs, metas):
        if m.get("task") != "arith" or m.get("quality") != "clean" or "Assistant:" not in d:
            continue
        body = completion_of(d)
        digits = ""
        for d_new, acc in re.findall(r"(?:write |写)(\d)[^.]*?(?:so far|目前) (\d+)\.", body):
            digits = d_new + (digits if len(acc) > 1 else "")       # a one-digit "so far": an operation starts
            assert acc == digits, (acc, digits, d)
            n += 1
        result = re.findall(r"(?:so|所以) \d+[-+*]\d+=(\d+)\.", body)[-1]
        assert int(digits) == int(result), d                   # the last "so far" is the result (leading 0s aside)
    assert n > 500


def test_corpus_difficulty_filter():
    docs, metas = data.pretrain_corpus(600, seed=2, with_meta=True, difficulty={"arith": [1], "countdown": [2]})
    seen = {(m["task"], m["difficulty"]) for m in metas if m["kind"] == "r1zero" and m["task"] != "code"}
    assert seen == {("arith", 1), ("countdown", 2)}
    everything = {(m["task"], m["difficulty"]) for m in data.pretrain_corpus(600, seed=2, with_meta=True)[1]
                  if m["kind"] == "r1zero" and m["task"] == "arith"}
    assert everything == {("arith", lv) for lv in toyworld.ARITH_LEVELS}


def test_corpus_is_deterministic_per_seed():
    a, b = data.pretrain_corpus(2000, seed=3), data.pretrain_corpus(2000, seed=3)
    assert len(a) == 2000 and a == b and a != data.pretrain_corpus(2000, seed=4)


# ----------------------------------------------------------------------------------------------- load_jsonl
def test_load_jsonl(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "1+1", "answer": "2"}\n\n{"prompt": "2+2", "answer": 4, "difficulty": 1}\n'
                    '{"prompt": "写函数", "answer": "def f(x):\\n    return x", "tests": ["assert f(1) == 1"], '
                    '"entry": "f"}\n', encoding="utf-8")
    rows = data.load_jsonl(str(good))
    assert [r["task"] for r in rows] == ["arith", "arith", "code"]
    assert rows[1]["answer"] == "4" and rows[2]["lang"] == "zh" and rows[0]["lang"] == "en"
    cd = tmp_path / "cd.jsonl"
    cd.write_text('{"prompt": "make 10", "answer": "2*5", "nums": [2, 5], "target": 10}\n')
    assert data.load_jsonl(str(cd), kind="countdown")[0]["nums"] == [2, 5]
    bad_lines = {
        '{"prompt": "x", "answer": "1"': "not valid JSON",
        '{"prompt": "x"}': "missing field 'answer'",
        '{"answer": "1"}': "missing field 'prompt'",
        '{"prompt": 3, "answer": "1"}': "'prompt' must be",
        '{"prompt": "x", "answer": [1]}': "'answer' must be",
        '{"prompt": "x", "answer": "1", "tests": "assert f()"}': "needs 'tests'",
        '["prompt", "answer"]': "expected a JSON object",
        '{"prompt": "x", "answer": "1", "task": "poetry"}': "unknown task",
    }
    for line, msg in bad_lines.items():
        p = tmp_path / "bad.jsonl"
        p.write_text('{"prompt": "ok", "answer": "1"}\n\n' + line + "\n", encoding="utf-8")
        with pytest.raises(ValueError) as e:
            data.load_jsonl(str(p))
        assert f"{p}:3" in str(e.value) and msg in str(e.value), str(e.value)
    p = tmp_path / "bad_cd.jsonl"
    p.write_text('{"prompt": "x", "answer": "1", "nums": [1, "2"], "target": 3}\n')
    with pytest.raises(ValueError, match=r"bad_cd.jsonl:1: .*nums"):
        data.load_jsonl(str(p), kind="countdown")


def test_cli_show_and_stats(capsys):
    data.main(["--show", "1"])
    out = capsys.readouterr().out
    for kind in data.DOC_MAKERS:
        assert f"===== {kind} " in out
    assert "Assistant: " in out and "<|user|>" in out and "===== preference" in out and "===== safety" in out
    stats = data.corpus_stats(500, seed=0)
    assert 0.25 < stats["r1zero_full_format"] < 0.45 and stats["tokens_per_doc"]["mean"] > 50
