"""Tests for data.py: the toy tokenizer, the task generators, the corpus, the templates, JSONL loading.

    python -m pytest -q tests/test_data.py
"""
import base64
import os
import random
import re
import time
from collections import Counter
from fractions import Fraction

import pytest

import data

# R1 Table 1, restated here so the test does not depend on data.py's own copy (PAPER.md "The R1-Zero template").
TABLE1 = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
          "assistant first thinks about the reasoning process in the mind and then provides the user with the "
          "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
          "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
          "User: {prompt}. Assistant:")
FULL_FORMAT = re.compile(r"^\s*<think>((?:(?!</?think>|</?answer>).)+)</think>\s*<answer>((?:(?!</?think>|"
                         r"</?answer>).)+)</answer>\s*$", re.S)


@pytest.fixture(scope="module")
def tok():
    return data.get_tokenizer("toy")


@pytest.fixture(scope="module")
def corpus():
    return data.pretrain_corpus(3000, seed=11, with_meta=True)


def completion_of(doc: str) -> str:
    return doc.split("Assistant:", 1)[1]


# ---------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_vocab_and_special_tokens(tok):
    assert tok.vocab_size == data.TOY_VOCAB_SIZE == 1024
    assert tok.name == "toy"
    assert set(tok.special) == set(data.SPECIAL_TOKENS)
    assert len(set(tok.special.values())) == len(data.SPECIAL_TOKENS)
    assert tok.eos_id == tok.special["<|endoftext|>"] and tok.pad_id == tok.special["<|pad|>"]
    for s, i in tok.special.items():
        assert tok.encode(s) == [i], s                       # each special token is exactly one id ...
        assert tok.decode([i]) == s                          # ... and decodes back
    text = data.chat_prompt("hi", system="be brief") + "ok" + data.EOS
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    expected = [tok.special[s] for s in ("<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>")]
    assert [i for i in ids if i in tok.special.values()] == expected
    assert tok.encode_batch(["a b", text]) == [tok.encode("a b"), ids]


def test_tokenizer_is_cached_and_fast():
    data._load_tokenizer.cache_clear()
    t0 = time.perf_counter()
    a = data.get_tokenizer("toy")                            # a fresh load from data/toy.tiktoken
    assert time.perf_counter() - t0 < 0.5
    assert data.get_tokenizer() is a                         # then cached


def test_tokenizer_file_format():
    raw = open(data.TOY_TOKENIZER, "rb").read()
    assert len(raw) < 64 * 1024                              # small enough to ship in the repo
    ranks = {}
    for line in raw.decode().splitlines():
        b64, rank = line.split(" ")
        ranks[base64.b64decode(b64)] = int(rank)
    assert sorted(ranks.values()) == list(range(data.TOY_VOCAB_SIZE - len(data.SPECIAL_TOKENS)))
    assert all(bytes([i]) in ranks for i in range(256))      # every byte: any string round-trips


def test_roundtrip_corpus_characters(tok, corpus):
    docs, _ = corpus
    for d in docs[:500]:
        assert tok.decode(tok.encode(d)) == d
    chars = sorted(set("".join(docs)))
    assert len(chars) > 100
    for ch in chars:
        assert tok.decode(tok.encode(ch)) == ch, repr(ch)


def test_roundtrip_random_unicode(tok):
    rng = random.Random(0)
    pools = [(0x20, 0x7E), (0x00, 0x1F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF),
             (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x0300, 0x036F)]
    for _ in range(300):
        s = "".join(chr(rng.randint(*rng.choice(pools))) for _ in range(rng.randint(1, 40)))
        assert tok.decode(tok.encode(s)) == s, repr(s)
    for s in ["", " ", "\n\n\t  x", "ｆｕｌｌ１２３", "naïve café", "👩‍👩‍👧 🇨🇳", "<think>", "<|endoftext", "a" * 2000]:
        assert tok.decode(tok.encode(s)) == s


def test_digits_are_single_tokens(tok):
    digit_ids = [tok.encode(str(d)) for d in range(10)]
    assert all(len(x) == 1 for x in digit_ids)
    digit_ids = {x[0]: str(d) for d, x in enumerate(digit_ids)}
    ids = tok.encode("1234567890")
    assert [tok.decode([i]) for i in ids] == list("1234567890")
    # in context the digits are the same ids as alone: "405" is 4|0|5 wherever it stands
    for text in ["so 347+58=405.", "<answer> 405 </answer>", "写5进1", "x*3+2", "2024年"]:
        ids = tok.encode(text)
        for m in re.finditer(r"\d", text):
            assert any(digit_ids.get(i) == m.group() for i in ids)
        assert sum(i in digit_ids for i in ids) == len(re.findall(r"\d", text))
        assert all(not re.search(r"\d", tok.decode([i])) or i in digit_ids for i in ids)


def test_cjk_characters_and_tags_are_single_tokens(tok, corpus):
    docs, _ = corpus
    cjk = {ch for d in docs for ch in d if data._is_cjk(ch)}
    assert len(cjk) > 50
    for ch in cjk:
        assert len(tok.encode(ch)) == 1, ch
    for tag in (" <think>", " </think>", " <answer>", " </answer>"):        # as the corpus writes them
        assert len(tok.encode(tag)) == 1, tag
    # the prompt template is mostly whole-word tokens
    assert len(tok.encode(data.r1zero_prompt({"prompt": "Compute 347+58"}))) < 100


def test_train_bpe_small_and_deterministic():
    import tiktoken
    texts = ["the cat sat on the mat 12345", "the 猫 sat. 猫猫 写5进1", "  spaces\n\nand\ttabs"] * 20
    r1 = data.train_bpe(texts, 280, atomic="猫写进")
    r2 = data.train_bpe(list(texts), 280, atomic="猫写进")
    assert r1 == r2 and len(r1) == 280 - len(data.SPECIAL_TOKENS)
    assert sorted(r1.values()) == list(range(len(r1)))
    assert not any(re.search(rb"\d", t) and len(t) > 1 for t in r1)   # digits never merge
    enc = tiktoken.Encoding("t", pat_str=data.PAT_STR, mergeable_ranks=r1, special_tokens={})
    for ch in "猫写进":
        assert len(enc.encode(ch)) == 1
    assert enc.encode(" the") == [r1[b" the"]]
    for t in texts[:3] + ["unseen 文字 ok"]:
        assert enc.decode(enc.encode(t)) == t


def test_shipped_tokenizer_rebuilds_identically(tmp_path):
    # `python data.py --train-tokenizer` is deterministic and the shipped file is what it writes today.
    path = str(tmp_path / "toy.tiktoken")
    data.train_tokenizer(path=path)
    assert open(path, "rb").read() == open(data.TOY_TOKENIZER, "rb").read()


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


# ----------------------------------------------------------------------------------------------- generators
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
    assert data.make_preference_pairs(50, 1) == data.make_preference_pairs(50, 1)
    assert data.make_safety_examples(50, 1) == data.make_safety_examples(50, 1)
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
                assert any(map(data._is_cjk, t["prompt"])) == (t["lang"] == "zh")
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
        assert all(data.split_of(t["canon"]) == "train" for t in train)
        assert all(data.split_of(t["canon"]) == "eval" for t in ev)
    # the canonical problem ignores language and wording: the same draws in en and zh are the same problems
    en = data.make_tasks("arith", 50, seed=2, lang="en")
    zh = data.make_tasks("arith", 50, seed=2, lang="zh")
    assert [t["canon"] for t in en] == [t["canon"] for t in zh]
    assert all(a["prompt"] != b["prompt"] for a, b in zip(en, zh))
    # 58+347 and 347+58 are one problem
    assert data._arith_canon("+", 58, 347) == data._arith_canon("+", 347, 58)
    sets = data.eval_sets(60, seed=1)
    assert set(sets) == {"arith", "countdown", "code"} and all(len(v) == 60 for v in sets.values())
    assert len({t["canon"] for t in sets["arith"]}) == 60      # no repeated problem in an eval set


def test_corpus_uses_training_problems_only(corpus):
    _, metas = corpus
    canons = [m["canon"] for m in metas if "canon" in m]
    assert len(canons) > 2000
    assert all(data.split_of(c) == "train" for c in canons)
    assert data.make_preference_pairs(100, 0, "eval") != data.make_preference_pairs(100, 0, "train")


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


def test_general_preference_and_safety_data():
    for t in data.make_tasks("general", 300, seed=0):
        assert t["type"] in data.GENERAL_PROMPTS and t["answer"].strip()
        if t["type"] == "upper":
            assert t["answer"].isupper()
    pairs = data.make_preference_pairs(300, seed=0)
    assert all(p["chosen"] != p["rejected"] and p["prompt"] for p in pairs)
    for t in data.make_tasks("general", 300, seed=0):
        ts = data._general_task(random.Random(t["canon"]), 1, t["lang"])
        assert ts["_wrong"] != ts["answer"], ts
    assert {p["lang"] for p in pairs} == {"en", "zh"}
    ex = data.make_safety_examples(400, seed=0)
    assert {e["unsafe"] for e in ex} == {True, False}
    for e in ex:
        if not e["harmful_request"]:
            assert not e["unsafe"]                             # benign help or a refusal is always safe
        if e["unsafe"]:
            assert any(s in e["response"] for s in ("First,", "先"))   # it spells the harm out somewhere
    refused = [e for e in ex if e["harmful_request"] and not e["unsafe"]]
    assert refused and all("First," not in e["response"] and "先" not in e["response"] for e in refused)
    train = {e["prompt"] for e in data.make_safety_examples(300, 0, "train")}
    ev = {e["prompt"] for e in data.make_safety_examples(100, 0, "eval")}
    assert train.isdisjoint(ev)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="algebra"):
        data.make_tasks("algebra", 1)
    with pytest.raises(ValueError, match="difficulty"):
        data.make_tasks("arith", 1, difficulty=7)
    with pytest.raises(ValueError, match="split"):
        data.make_tasks("arith", 1, split="test")


# ----------------------------------------------------------------------------------------------- the corpus
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
    pads = [m for m in metas if m.get("quality") in ("clean", "verified", "wrong", "fixed")]
    q = Counter(m["quality"] for m in pads)
    assert 0.06 < q["wrong"] / len(pads) < 0.15
    assert 0.10 < q["fixed"] / len(pads) < 0.20
    assert q["verified"] > 0.05 * len(pads)
    assert all(m["correct"] == (m["quality"] != "wrong") for m in pads)
    direct = [m for m in metas if m.get("quality") in ("direct_ok", "direct_wrong")]
    assert 0.12 < sum(m["quality"] == "direct_wrong" for m in direct) / len(direct) < 0.28
    text = "\n".join(docs)
    assert "wait, check:" in text and "等等, 检查:" in text and "check: " in text
    # language mixing, judged from the text: a reasoning completion with both Chinese and English words
    mixed = []
    for d, m in zip(docs, metas):
        if m["kind"] == "r1zero" and m["task"] != "code" and m.get("quality") in ("clean", "verified", "wrong",
                                                                                   "fixed"):
            c = re.sub(r"</?(think|answer)>", "", completion_of(d))
            mixed.append(bool(re.search(r"[a-zA-Z]{2,}", c)) and any(map(data._is_cjk, c)))
    assert 0.10 < sum(mixed) / len(mixed) < 0.30
    zh_docs = sum(m.get("lang") == "zh" for m in metas) / len(metas)
    assert 0.15 < zh_docs < 0.35


def test_corpus_arithmetic_is_true_in_correct_solutions(corpus):
    # every equation in a clean or verified solution, and in a drill, is true: the model learns from these
    docs, metas = corpus
    n = 0
    for d, m in zip(docs, metas):
        if m.get("quality") in ("clean", "verified") or m["kind"] == "drill":
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
        if m.get("task") != "arith" or m.get("quality") not in ("clean", "verified") or "Assistant:" not in d:
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
    assert everything == {("arith", lv) for lv in data.ARITH_LEVELS}


def test_corpus_is_fast():
    t0 = time.perf_counter()
    docs = data.pretrain_corpus(20000, seed=3)
    assert len(docs) == 20000
    assert time.perf_counter() - t0 < 10.0                   # ~1 s on one idle core; 100k docs in a few seconds


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
