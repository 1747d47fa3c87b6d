"""The tokenizer: tiktoken's BPE with minR1's special tokens, and a byte-level BPE trainer for the toy world.

    python data.py --train-tokenizer     # rebuild data/toy.tiktoken from the toy corpus (the same file every time)

The toy tokenizer is trained by us on the toy corpus (train_bpe below) and shipped as a tiktoken ranks file, so
nothing is downloaded at run time; tiktoken loads it and does the encoding. Any of tiktoken's public encodings
(o200k_base, cl100k_base, ...) can be used instead where there is a network.
"""
import base64
import functools
import heapq
import os
from collections import Counter, defaultdict

import regex
import tiktoken

ROOT = os.path.dirname(os.path.abspath(__file__))
TOY_TOKENIZER = os.path.join(ROOT, "data", "toy.tiktoken")
TOY_VOCAB_SIZE = 1024   # 256 bytes + learned merges + the special tokens

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>", "<|sep|>")
EOS, PAD, USER, ASSISTANT, SYSTEM, SEP = SPECIAL_TOKENS

# The pre-tokenizer (a GPT-style regex): the four tags as whole pieces (so BPE can make each one token), words
# with their leading space, EVERY DIGIT ALONE (the models do arithmetic digit by digit, so "405" must be 4|0|5
# and "5" the same token wherever it stands), punctuation runs, whitespace runs.
PAT_STR = (r""" ?</?(?:think|answer)>|'(?:[sdmt]|ll|ve|re)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
           r"""|\s+(?!\S)|\s+""")


class Tokenizer:
    """A tiktoken Encoding plus the ids the trainers need. Special tokens written in text are recognised."""

    def __init__(self, enc: "tiktoken.Encoding", name: str):
        self.enc, self.name = enc, name
        self.special = {s: enc.encode_single_token(s) for s in SPECIAL_TOKENS if s in enc.special_tokens_set}
        self.eos_id = self.special[EOS]
        self.pad_id = self.special.get(PAD, self.eos_id)
        self.vocab_size = enc.n_vocab

    def encode(self, text: str) -> list:
        return self.enc.encode(text, allowed_special="all")

    def encode_batch(self, texts: list) -> list:
        return self.enc.encode_batch(texts, allowed_special="all")

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))

    def __repr__(self):
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"


def load_ranks(path: str) -> dict:
    """tiktoken's ranks format: one "base64(token bytes) rank" per line."""
    ranks = {}
    with open(path, "rb") as f:
        for ln, line in enumerate(f, 1):
            if line.strip():
                try:
                    tok, rank = line.split()
                    ranks[base64.b64decode(tok)] = int(rank)
                except ValueError as e:
                    raise ValueError(f"{path}:{ln}: not a 'base64 rank' line ({e})") from None
    return ranks


def save_ranks(ranks: dict, path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(tok).decode()} {rank}\n")
    os.replace(tmp, path)


def get_tokenizer(name: str = "toy") -> Tokenizer:
    """"toy": the BPE shipped in data/toy.tiktoken. Anything else: a tiktoken encoding by name (o200k_base,
    cl100k_base, ...; tiktoken downloads it on first use) with our special tokens appended after its own.
    Cached: every call with the same name returns the same object."""
    return _load_tokenizer(name)


@functools.lru_cache(maxsize=None)
def _load_tokenizer(name: str) -> Tokenizer:
    if name == "toy":
        if not os.path.exists(TOY_TOKENIZER):
            raise FileNotFoundError(f"{TOY_TOKENIZER} is missing: build it with `python data.py --train-tokenizer`")
        ranks = load_ranks(TOY_TOKENIZER)
        special = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
        return Tokenizer(tiktoken.Encoding("minr1-toy", pat_str=PAT_STR, mergeable_ranks=ranks,
                                           special_tokens=special), "toy")
    base = tiktoken.get_encoding(name)
    special, nxt = dict(base._special_tokens), base.n_vocab
    for s in SPECIAL_TOKENS:
        if s not in special:
            special[s], nxt = nxt, nxt + 1
    enc = tiktoken.Encoding(f"{name}+minr1", pat_str=base._pat_str, mergeable_ranks=base._mergeable_ranks,
                            special_tokens=special)
    return Tokenizer(enc, name)


def train_bpe(texts, vocab_size: int, pat_str: str = PAT_STR, n_special: int = len(SPECIAL_TOKENS),
              atomic=()) -> dict:
    """Byte-level BPE (GPT-2 style) on the regex pieces of `texts`: returns tiktoken ranks {bytes: rank} with
    vocab_size - n_special entries. Ranks 0-255 are the single bytes (so every string round-trips); then each
    character of `atomic` (the corpus' CJK characters) is made one token by giving its UTF-8 prefixes the next
    ranks, lower than any learned merge, so tiktoken always assembles them first; then the learned merges, most
    frequent pair first, ties broken by the pair's bytes (deterministic). Special tokens are cut out of the
    text before counting."""
    pat = regex.compile(pat_str)
    cut = regex.compile("|".join(regex.escape(s) for s in SPECIAL_TOKENS))
    counts = Counter()
    for text in texts:
        for part in cut.split(text):
            counts.update(pat.findall(part))
    ranks = {bytes([i]): i for i in range(256)}
    atoms = sorted(set(atomic))
    for ch in atoms:
        b = ch.encode()
        for k in range(2, len(b) + 1):
            ranks.setdefault(b[:k], len(ranks))
    atoms = set(atoms)
    words, freqs = [], []
    for piece, f in sorted(counts.items()):
        syms = []
        for ch in piece:
            syms.extend([ch.encode()] if ch in atoms else [bytes([x]) for x in ch.encode()])
        words.append(syms)
        freqs.append(f)
    pair_count, where = defaultdict(int), defaultdict(set)
    for wi, w in enumerate(words):
        for p in zip(w, w[1:]):
            pair_count[p] += freqs[wi]
            where[p].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    target = vocab_size - n_special
    while len(ranks) < target and heap:
        c, best = heapq.heappop(heap)
        if pair_count.get(best, 0) != -c or c == 0:
            continue                                        # a stale heap entry
        merged = best[0] + best[1]
        if merged not in ranks:
            ranks[merged] = len(ranks)
        changed = set()
        for wi in sorted(where.pop(best)):
            w, f = words[wi], freqs[wi]
            for p in zip(w, w[1:]):
                pair_count[p] -= f
                changed.add(p)
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == best[0] and w[i + 1] == best[1]:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                pair_count[p] += f
                where[p].add(wi)
                changed.add(p)
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
            else:
                pair_count.pop(p, None)
                where.pop(p, None)
    return ranks


def is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"



def train_tokenizer(texts: list, path: str = TOY_TOKENIZER) -> dict:
    """Train the toy BPE on `texts` (each CJK character they hold becomes one token) and write `path`."""
    cjk = sorted({ch for t in texts for ch in t if is_cjk(ch)})
    ranks = train_bpe(texts, TOY_VOCAB_SIZE, atomic=cjk)
    save_ranks(ranks, path)
    _load_tokenizer.cache_clear()
    return ranks
