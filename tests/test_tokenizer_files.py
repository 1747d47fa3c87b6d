"""Real tokenizers from local files (tokenizer.py): tiktoken ranks files, Hugging Face tokenizer.json converted to
tiktoken ranks without network, minR1's special tokens and chat format on them, and the errors.

    python -m pytest -q tests/test_tokenizer_files.py
"""
import json
import random

import pytest

import config
import data
import tokenizer as T

TEXTS = ["The cat sat on the mat 12345 and 6789.", "naïve café 猫猫 写5进1 <think> ok </think> <answer> 4 </answer>",
         "  spaces\n\nand\ttabs", "Ann's 1,200 beads; -3.5 + \\frac{1}{2} = ?"] * 10


def random_texts(n=200, seed=0):
    rng = random.Random(seed)
    pools = [(0x20, 0x7E), (0x00, 0x1F), (0x80, 0x7FF), (0x4E00, 0x4E40), (0x1F300, 0x1F320)]
    return ["".join(chr(rng.randint(*rng.choice(pools))) for _ in range(rng.randint(1, 30))) for _ in range(n)]


# --------------------------------------------------------------------------------------------- tiktoken files
def test_tiktoken_ranks_file_round_trip(tmp_path):
    path = str(tmp_path / "tiny.tiktoken")
    ranks = T.train_bpe(TEXTS, 300)
    T.save_ranks(ranks, path)
    tok = T.get_tokenizer(f"tiktoken:{path}")
    assert tok.vocab_size == len(ranks) + len(T.SPECIAL_TOKENS) == 300
    assert tok.special == {s: len(ranks) + i for i, s in enumerate(T.SPECIAL_TOKENS)}
    assert tok.eos_id == tok.special[T.EOS] and tok.pad_id == tok.special[T.PAD]
    for s in TEXTS[:4] + random_texts():
        assert tok.decode(tok.encode(s)) == s, repr(s)
    longest = max(ranks, key=len)                                   # a learned merge: one token again
    assert len(longest) > 2 and tok.encode(longest.decode()) == [ranks[longest]]
    text = data.chat_prompt("hi", system="be brief") + "ok" + T.EOS
    assert tok.decode(tok.encode(text)) == text
    assert [i for i in tok.encode(text) if i >= len(ranks)] == [tok.special[s] for s in (T.SYSTEM, T.USER,
                                                                                          T.ASSISTANT, T.EOS)]
    assert T.get_tokenizer(f"tiktoken:{path}") is tok                 # cached


def test_public_encoding_file_offline_gets_its_regex_and_specials(tmp_path, monkeypatch):
    """A local file named after a public encoding: tiktoken's own regex and special ids for it, nothing fetched."""
    import tiktoken.load
    import tiktoken_ext.openai_public as public

    def no_network(*a, **k):
        raise AssertionError("tried to download")
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    path = str(tmp_path / "cl100k_base.tiktoken")
    T.save_ranks({bytes([i]): i for i in range(256)}, path)
    tok = T.get_tokenizer(f"tiktoken:{path}")
    monkeypatch.setattr(public, "load_tiktoken_bpe", lambda *a, **k: {})
    want = public.cl100k_base()
    assert tok.enc._pat_str == want["pat_str"]
    assert tok.eos_id == want["special_tokens"]["<|endoftext|>"] == 100257
    assert tok.special[T.PAD] == max(want["special_tokens"].values()) + 1
    assert tok.decode(tok.encode("héllo 123")) == "héllo 123"


def test_public_encoding_offline_is_a_clear_error(tmp_path, monkeypatch):
    import requests
    import tiktoken.load

    def offline(*a, **k):
        raise requests.ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")
    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))          # nothing cached: it must try to download
    T._load_tokenizer.cache_clear()
    try:
        with pytest.raises(SystemExit) as e:
            T.get_tokenizer("o200k_base")
    finally:
        T._load_tokenizer.cache_clear()
    msg = str(e.value)
    assert "'o200k_base'" in msg and "no network" in msg and '"tiktoken:/path/o200k_base.tiktoken"' in msg
    assert "\n" not in msg and "hf:/path/tokenizer.json" in msg


def test_missing_files_and_bad_specs_are_clear(tmp_path):
    missing = tmp_path / "nope.tiktoken"
    with pytest.raises(FileNotFoundError, match=f"no file {missing} .*copy it to this machine"):
        T.get_tokenizer(f"tiktoken:{missing}")
    with pytest.raises(FileNotFoundError, match=f"no file {tmp_path}/tokenizer.json .*Hugging Face"):
        T.get_tokenizer(f"hf:{tmp_path}")                              # a folder: its tokenizer.json
    assert "names no file" in T.tokenizer_spec_error("hf:")
    assert "unknown tokenizer 'gpt5'" in T.tokenizer_spec_error("gpt5")
    assert T.tokenizer_spec_error("toy") is None and T.tokenizer_spec_error("cl100k_base") is None
    cfg = config.load_config("micro")
    cfg["tokenizer"] = f"hf:{tmp_path}/tokenizer.json"
    with pytest.raises(SystemExit, match=r"error: config 'micro': tokenizer: no file .*tokenizer.json"):
        config.check_values(cfg, ["zero"], "config 'micro'")


# ------------------------------------------------------------------------------------------ tokenizer.json
def test_byte_alphabet_is_gpt2s():
    table = T.byte_unicode_table()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("\t")] == "ĉ" and table[0] == "Ā"
    assert table[ord("a")] == "a" and table[0xAD] == "Ń" and table[0xC3] == "Ã" and table[0x7F] == "ġ"


ADDED = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜▁pad▁｜>",
         "<｜place▁holder▁no▁0｜>"]


def hand_made(tmp_path, pre_tokenizer, with_config=True, added=ADDED):
    """A byte-level BPE tokenizer.json written by hand: 256 byte tokens (ids in character order, not byte order),
    five merges, DeepSeek-style added tokens."""
    table = T.byte_unicode_table()
    vocab = {c: i for i, c in enumerate(sorted(table.values()))}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ã", "©"), ("3", "4")]   # " the", "é" (C3 A9), "34"
    for a, b in merges:
        vocab[a + b] = len(vocab)
    added = [{"id": len(vocab) + i, "content": c, "special": True} for i, c in enumerate(added)]
    tj = {"version": "1.0", "added_tokens": added, "normalizer": None, "pre_tokenizer": pre_tokenizer,
          "decoder": {"type": "ByteLevel"},
          "model": {"type": "BPE", "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]}}
    d = tmp_path / "ckpt"
    d.mkdir(exist_ok=True)
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    if with_config:
        (d / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": {"content": ADDED[0]}, "eos_token": {"content": ADDED[1]}, "pad_token": ADDED[4]}))
    return d, vocab


BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}


def test_hand_made_tokenizer_json(tmp_path):
    d, vocab = hand_made(tmp_path, BYTELEVEL)
    tok = T.get_tokenizer(f"hf:{d}")
    n = len(vocab)                                                   # 261: the added tokens follow
    assert tok.encode(" the") == [vocab["Ġthe"]] and tok.encode("é") == [vocab["Ã©"]]
    assert tok.encode("a 34") == [vocab["a"], vocab["Ġ"], vocab["34"]]
    assert tok.encode("\n") == [vocab["Ċ"]]
    for s in TEXTS[:4] + random_texts():                             # bytes exact
        assert tok.decode(tok.encode(s)) == s, repr(s)
    # minR1's names are the checkpoint's own tokens where it has them (DeepSeek's system prompt follows its BOS),
    # else a reserved one: no id beyond the checkpoint's table
    assert tok.bos_id == n and tok.eos_id == n + 1 and tok.pad_id == n + 4
    assert tok.special == {T.EOS: n + 1, T.PAD: n + 4, T.USER: n + 2, T.ASSISTANT: n + 3, T.SYSTEM: n, T.SEP: n + 5}
    assert tok.aliases[T.USER] == "<｜User｜>" and tok.aliases[T.SEP] == ADDED[5] and tok.vocab_size == n + 6
    for name, native in ((T.USER, "<｜User｜>"), (T.EOS, "<｜end▁of▁sentence｜>")):
        assert tok.encode(name) == tok.encode(native) == [tok.special[name]]
        assert tok.decode(tok.encode(native)) == name               # decoded as the pipeline writes it
    # the chat format is DeepSeek's template: <｜User｜>question<｜Assistant｜>answer<｜end▁of▁sentence｜>
    ids = tok.encode(data.chat_prompt("hi") + " the" + T.EOS)
    assert ids == [n + 2, vocab["h"], vocab["i"], n + 3, vocab["Ġthe"], n + 1]
    assert tok.encode(data.chat_prompt("hi", system="S")) == [n, vocab["S"], n + 2, vocab["h"], vocab["i"], n + 3]
    prompt = data.r1zero_prompt({"prompt": "2+2"})                    # <think>/<answer> are ordinary text
    assert tok.decode(tok.encode(prompt)) == prompt and not set(tok.encode(prompt)) & set(tok.special.values())


def test_tokenizer_json_pre_tokenizer_splits(tmp_path):
    """A Split step runs before ByteLevel's regex: digits in groups of three keep "34" apart in "1234"."""
    split = {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": False}
    d, vocab = hand_made(tmp_path, {"type": "Sequence", "pretokenizers": [split, BYTELEVEL]})
    tok = T.hf_tokenizer(str(d / "tokenizer.json"))
    assert tok.encode("1234") == [vocab["1"], vocab["2"], vocab["3"], vocab["4"]]
    assert tok.encode("x34 the") == [vocab["x"], vocab["34"], vocab["Ġthe"]]
    only_split = {"type": "Sequence", "pretokenizers": [split, {**BYTELEVEL, "use_regex": False}]}
    d, vocab = hand_made(tmp_path, only_split)
    tok = T.hf_tokenizer(str(d / "tokenizer.json"))                  # one regex: tiktoken's, gaps kept as pieces
    assert tok.presplit is None
    assert tok.encode("a 1234 the") == [vocab["a"], vocab["Ġ"], vocab["1"], vocab["2"], vocab["3"], vocab["4"],
                                        vocab["Ġthe"]]                 # pieces "a ", "123", "4", " the"
    for s in TEXTS[:4] + random_texts(50):
        assert tok.decode(tok.encode(s)) == s, repr(s)


def test_tokenizer_json_without_config_finds_roles_by_name(tmp_path):
    d, vocab = hand_made(tmp_path, BYTELEVEL, with_config=False, added=ADDED[:5])   # and no reserved token
    tok = T.hf_tokenizer(str(d))
    n = len(vocab)
    assert tok.eos_id == n + 1 and tok.bos_id == n and tok.pad_id == n + 4
    assert tok.special[T.SEP] == n + 5 and tok.aliases[T.SEP] is None and tok.vocab_size == n + 6     # a new id
    assert tok.decode(tok.encode(T.SEP + "x")) == T.SEP + "x"


def test_tokenizer_json_matches_hugging_face_tokenizers(tmp_path):
    """Trained with the `tokenizers` library (a test-only dependency, with transformers): the same ids on every
    text, for a plain ByteLevel pre-tokenizer, Split + ByteLevel, and a Split alone."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer
    digits = pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), "isolated")
    layouts = {"bytelevel": pre_tokenizers.ByteLevel(add_prefix_space=False),
               "split+bytelevel": pre_tokenizers.Sequence([digits, pre_tokenizers.ByteLevel(add_prefix_space=False)]),
               "split": pre_tokenizers.Sequence([digits, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                   use_regex=False)])}
    for name, pre in layouts.items():
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer, hf.decoder = pre, decoders.ByteLevel()
        hf.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=400, special_tokens=ADDED[:4],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        path = tmp_path / f"{name}.json"
        hf.save(str(path))
        tok = T.hf_tokenizer(str(path))
        for s in TEXTS[:4] + random_texts(300, seed=1) + ["x <｜User｜>hi<｜Assistant｜> 12345<｜end▁of▁sentence｜>"]:
            assert tok.encode(s) == hf.encode(s).ids, (name, s)


@pytest.mark.parametrize("change, msg", [
    (lambda tj: tj["model"].update(type="WordPiece"), "only BPE tokenizers"),
    (lambda tj: tj["model"]["vocab"].pop("Ā"), "of the 256 single bytes have no token"),
    (lambda tj: tj["model"]["merges"].reverse(), "do not follow the merge order"),
    (lambda tj: tj["model"]["merges"].append("q z"), "not in the vocab"),
    (lambda tj: tj.update(normalizer={"type": "Lowercase"}), "normalizer"),
    (lambda tj: tj.update(pre_tokenizer={"type": "Whitespace"}), "pre-tokenizer"),
    (lambda tj: tj["model"].update(byte_fallback=True), "byte_fallback"),
])
def test_unconvertible_tokenizer_json_is_refused(tmp_path, change, msg):
    d, _ = hand_made(tmp_path, BYTELEVEL)
    tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    change(tj)
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match=msg) as e:
        T.hf_tokenizer(str(d))
    assert str(d / "tokenizer.json") in str(e.value)


def test_tokenizer_json_normalizers(tmp_path):
    """DeepSeek V3 writes "no normalizer" as an empty Sequence; NFC is applied before the BPE; others refused."""
    d, vocab = hand_made(tmp_path, BYTELEVEL)
    tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    for norm, text, want in (({"type": "Sequence", "normalizers": []}, "e\u0301", "e\u0301"),
                             ({"type": "NFC"}, "e\u0301", "é")):
        tj["normalizer"] = norm
        (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
        tok = T.hf_tokenizer(str(d))
        assert tok.decode(tok.encode(text)) == want
    assert tok.encode("e\u0301") == [vocab["Ã©"]]
