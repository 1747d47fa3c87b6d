"""Tests for tokenizer.py: the toy BPE (tiktoken ranks), its special tokens, its trainer and the shipped file.

    python -m pytest -q tests/test_tokenizer.py
"""
import base64
import random
import re
import time

import pytest

import data
import tokenizer



@pytest.fixture(scope="module")
def corpus():
    return data.pretrain_corpus(3000, seed=11, with_meta=True)



def test_tokenizer_vocab_and_special_tokens(tok):
    assert tok.vocab_size == tokenizer.TOY_VOCAB_SIZE == 1024
    assert tok.name == "toy"
    assert set(tok.special) == set(tokenizer.SPECIAL_TOKENS)
    assert len(set(tok.special.values())) == len(tokenizer.SPECIAL_TOKENS)
    assert tok.eos_id == tok.special["<|endoftext|>"] and tok.pad_id == tok.special["<|pad|>"]
    for s, i in tok.special.items():
        assert tok.encode(s) == [i], s                       # each special token is exactly one id ...
        assert tok.decode([i]) == s                          # ... and decodes back
    text = data.chat_prompt("hi", system="be brief") + "ok" + tokenizer.EOS
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    expected = [tok.special[s] for s in ("<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>")]
    assert [i for i in ids if i in tok.special.values()] == expected
    assert tok.encode_batch(["a b", text]) == [tok.encode("a b"), ids]


def test_tokenizer_is_cached_and_fast():
    tokenizer._load_tokenizer.cache_clear()
    t0 = time.perf_counter()
    a = tokenizer.get_tokenizer("toy")                            # a fresh load from data/toy.tiktoken
    assert time.perf_counter() - t0 < 0.5
    assert tokenizer.get_tokenizer() is a                         # then cached


def test_tokenizer_file_format():
    raw = open(tokenizer.TOY_TOKENIZER, "rb").read()
    assert len(raw) < 64 * 1024                              # small enough to ship in the repo
    ranks = {}
    for line in raw.decode().splitlines():
        b64, rank = line.split(" ")
        ranks[base64.b64decode(b64)] = int(rank)
    assert sorted(ranks.values()) == list(range(tokenizer.TOY_VOCAB_SIZE - len(tokenizer.SPECIAL_TOKENS)))
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
    cjk = {ch for d in docs for ch in d if tokenizer.is_cjk(ch)}
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
    r1 = tokenizer.train_bpe(texts, 280, atomic="猫写进")
    r2 = tokenizer.train_bpe(list(texts), 280, atomic="猫写进")
    assert r1 == r2 and len(r1) == 280 - len(tokenizer.SPECIAL_TOKENS)
    assert sorted(r1.values()) == list(range(len(r1)))
    assert not any(re.search(rb"\d", t) and len(t) > 1 for t in r1)   # digits never merge
    enc = tiktoken.Encoding("t", pat_str=tokenizer.PAT_STR, mergeable_ranks=r1, special_tokens={})
    for ch in "猫写进":
        assert len(enc.encode(ch)) == 1
    assert enc.encode(" the") == [r1[b" the"]]
    for t in texts[:3] + ["unseen 文字 ok"]:
        assert enc.decode(enc.encode(t)) == t


def test_shipped_tokenizer_rebuilds_identically(tmp_path):
    # `python data.py --train-tokenizer` is deterministic and the shipped file is what it writes today.
    path = str(tmp_path / "toy.tiktoken")
    tokenizer.train_tokenizer(data.tokenizer_texts(), path=path)
    assert open(path, "rb").read() == open(tokenizer.TOY_TOKENIZER, "rb").read()
