"""The toy world of minR1: tokenizer, task generators, pretraining corpus, prompt templates, JSONL loading.

    python data.py --show 2              # two sample documents of each kind, tasks, preference/safety examples
    python data.py --stats 5000          # corpus statistics over 5000 documents (format rate, tokens per doc, ...)
    python data.py --train-tokenizer     # rebuild data/toy.tiktoken (deterministic: same file every time)

DeepSeek-R1-Zero starts from a base model that already reasons a little and has seen the <think>/<answer> idiom
only occasionally; RL with accuracy + format rewards then makes it think longer and better (R1 §2.2). No
pretrained weights exist here, so the base model "V3-toy" is pretrained from scratch on the corpus below, which
is written so that, under the R1-Zero template (R1 Table 1), the base model
  - uses the full "<think> ... </think> <answer> ... </answer>" format only about a third of the time
    (STYLE_WEIGHTS), and otherwise answers untagged or with broken tags;
  - sometimes answers directly (short: right on easy problems, usually wrong on hard ones, because a tiny model
    cannot add four-digit numbers in one step) and sometimes works through a scratchpad (long, usually right,
    because every step is a one-digit fact written next to the digits it needs);
  - sometimes slips, sometimes catches the slip ("wait, check: ..."), sometimes verifies its answer, and in a
    fifth of its scratchpads switches between English and Chinese midway (R1-Zero's language mixing).
GRPO then has something to discover: the tagged scratchpad pays. Every generator is deterministic given its seed
(its own random.Random, never global state), and a problem is held out for evaluation by a stable hash of its
canonical form (numbers + operation, not language or wording), so train and eval sets never share a problem.

Tasks are dicts {"task", "prompt", "answer", "lang", "difficulty", "canon", ...} with "nums"/"target"
(countdown), "entry"/"tests" (code), "type" (general). Prompts carry no final punctuation because the R1-Zero
template appends its own ". Assistant:".
"""
import argparse
import base64
import functools
import json
import os
import random
import re
import sys
import zlib
from collections import Counter, defaultdict

import tiktoken

ROOT = os.path.dirname(os.path.abspath(__file__))
TOY_TOKENIZER = os.path.join(ROOT, "data", "toy.tiktoken")
TOY_VOCAB_SIZE = 1024   # 256 bytes + learned merges + the special tokens

# ============================================================================================ prompt formats
# R1 Table 1, verbatim (PAPER.md "The R1-Zero template"), on one line.
R1ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. User: {prompt}. "
    "Assistant:")

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>", "<|sep|>")
EOS, PAD, USER, ASSISTANT, SYSTEM, SEP = SPECIAL_TOKENS


def r1zero_prompt(task) -> str:
    """The R1-Zero prompt for a task dict (or a bare question string); the model continues after "Assistant:"."""
    return R1ZERO_TEMPLATE.format(prompt=task["prompt"] if isinstance(task, dict) else task)


def chat_prompt(user: str, system: str = None) -> str:
    """Chat format for the SFT/RL stages after R1-Zero: [<|system|>S]<|user|>U<|assistant|> (the response and an
    <|endoftext|> follow)."""
    return (f"{SYSTEM}{system}" if system else "") + f"{USER}{user}{ASSISTANT}"


def cold_start_text(reasoning: str, summary: str) -> str:
    """R1's readable cold-start format |special_token|<reasoning_process>|special_token|<summary> (R1 §2.3.1)."""
    return f"{SEP}{reasoning}{SEP}{summary}"


def one_step_per_line(reasoning: str) -> str:
    """Whitespace collapsed, one step (sentence) per line: the readable reasoning of the cold-start layout."""
    return "\n".join(p for p in re.split(r"(?<=[.。])\s+", " ".join(reasoning.split())) if p)


# ================================================================================================ tokenizer
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
    import heapq

    import regex
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


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


def train_tokenizer(path: str = TOY_TOKENIZER, n_docs: int = 20000, seed: int = 0) -> dict:
    """Train the toy BPE on a corpus sample (plus the preference and safety texts) and write `path`."""
    texts = pretrain_corpus(n_docs, seed=seed)
    texts += [p["prompt"] + " " + p["chosen"] + " " + p["rejected"] for p in make_preference_pairs(2000, seed)]
    texts += [s["prompt"] + " " + s["response"] for s in make_safety_examples(1000, seed)]
    texts.append(" ".join(_zh_strings()))            # every Chinese character the generators can write
    cjk = sorted({ch for t in texts for ch in t if _is_cjk(ch)})
    ranks = train_bpe(texts, TOY_VOCAB_SIZE, atomic=cjk)
    save_ranks(ranks, path)
    _load_tokenizer.cache_clear()
    return ranks


# ======================================================================================== held-out split
EVAL_EVERY = 8   # 1 canonical problem in 8 is held out for evaluation


def split_of(canon: str) -> str:
    """"eval" or "train", from a stable hash (crc32, not Python's salted hash) of the canonical problem."""
    return "eval" if zlib.crc32(canon.encode()) % EVAL_EVERY == 0 else "train"


# ==================================================================================== phrasing (en / zh)
OTHER = {"en": "zh", "zh": "en"}
PH = {
    "en": {"cols": ("ones", "tens", "hundreds", "thousands", "ten-thousands"), "write": "write {}",
           "carry": " carry {}", "borrow": " borrow {}", "sofar": ", so far {}", "so": "so {}.",
           "answer_is": "The answer is {}.",
           "wait": "wait, check: {}={}, not {}.", "check": "check: {}, ok.", "first": "first {}.",
           "then": "then {}.", "now": "now {}.", "try": "try", "no": "no.", "yes": "yes.",
           "direct": ("so {}.", "so {}.", "easy, {}.", "I know this: {}."), "code_is": "Here is the code:",
           "code_check": "check: {} gives {}, ok.", "code_first": "first try: return {}.",
           "code_wait": "wait, check: {} should give {}, not {}. so: return {}.",
           "problem": "Problem: {}.\nSolution: {}", "qa": "Q: {}\nA: {}"},
    "zh": {"cols": ("个位", "十位", "百位", "千位", "万位"), "write": "写{}", "carry": "进{}", "borrow": "借{}",
           "sofar": ", 目前 {}",
           "so": "所以 {}.", "answer_is": "答案是 {}.", "wait": "等等, 检查: {}={}, 不是{}.",
           "check": "检查: {}, 对.", "first": "先算 {}.", "then": "再算 {}.", "now": "现在算 {}.", "try": "试",
           "no": "不对.", "yes": "对.", "direct": ("所以 {}.", "很简单, {}.", "我知道, {}."), "code_is": "代码是:",
           "code_check": "检查: {} 是 {}, 对.", "code_first": "先写: return {}.",
           "code_wait": "等等, 检查: {} 要是 {}, 不是 {}. 所以: return {}.",
           "problem": "问题: {}.\n答: {}", "qa": "问: {}\n答: {}"},
}
ARITH_PROMPTS = {"en": ("Compute {}", "What is {}", "Calculate {}", "Find the value of {}"),
                 "zh": ("计算 {}", "{} 等于多少", "求 {} 的值", "算一算 {}")}
COUNTDOWN_PROMPTS = {
    "en": ("Using the numbers {nums}, make {t}. Use each number once and + - * /",
           "Make {t} from {nums} with + - * /, each number used once",
           "Reach {t} using {nums} (each once) and + - * /"),
    "zh": ("用 {nums} 算出 {t}, 每个数只用一次, 可以用 + - * /", "用 {nums} 和 + - * / 算出 {t}, 每个数用一次")}
CODE_PROMPT = {"en": "Write a Python function {sig} that {what}", "zh": "写一个 Python 函数 {sig}, {what}"}
ZH_FRAC = 0.25          # share of tasks whose prompt is in Chinese
MIX_FRAC = 0.20         # share of scratchpads that switch language midway (R1-Zero's language mixing)


class _Pad:
    """A scratchpad being written, in `lang`, switching to the other language from part `switch` on."""

    def __init__(self, lang: str, switch=None):
        self.lang, self.switch, self.parts = lang, switch, []
        self.slip_at, self.slip, self.ncol = None, None, 0   # which column step goes wrong, and how
        self.slipped = False                                 # whether the slip was written

    @property
    def ph(self) -> dict:
        on = self.switch is not None and len(self.parts) >= self.switch
        return PH[OTHER[self.lang] if on else self.lang]

    @property
    def mixed(self) -> bool:
        return self.switch is not None and len(self.parts) > self.switch

    def add(self, s: str):
        self.parts.append(s)

    def text(self) -> str:
        return " ".join(self.parts)


# random.Random's randint/choice are slow (~1 us); these draw from the same stream, 100k documents take seconds.
def _ri(rng, lo: int, hi: int) -> int:
    return lo + int(rng.random() * (hi - lo + 1))


def _rr(rng, n: int) -> int:
    return int(rng.random() * n)


def _ch(rng, seq):
    return seq[int(rng.random() * len(seq))]


def _pick(rng, table: dict):
    """A key of `table` drawn with probability proportional to its value."""
    r, acc = rng.random() * sum(table.values()), 0.0
    for k, w in table.items():
        acc += w
        if r < acc:
            return k
    return k


# ============================================================================================ arithmetic
# Difficulty: 1 = 2-digit +-; 2 = 3-digit +- or 2-digit x 1-digit; 3 = 4-digit +- 3-4 digit or 3-digit x 1-digit;
# 4 = 4-digit +- 4-digit or 2-digit x 2-digit. Subtraction keeps a >= b (no negative results).
ARITH_LEVELS = (1, 2, 3, 4)


def _arith_canon(op, a, b):
    if op in "+*":                                          # commutative: 58+347 is the same problem as 347+58
        a, b = max(a, b), min(a, b)
    return f"arith:{a}{op}{b}"


def _arith_task(rng, difficulty, lang):
    r = rng.random()
    if difficulty == 1:
        op = "+" if r < 0.5 else "-"
        a, b = _ri(rng, 10, 99), _ri(rng, 10, 99)
    else:
        op = "+" if r < 0.4 else "-" if r < 0.75 else "*"
        if op == "*":
            if difficulty == 2:
                a, b = _ri(rng, 10, 99), _ri(rng, 2, 9)
            elif difficulty == 3:
                a, b = _ri(rng, 100, 999), _ri(rng, 2, 9)
            else:
                a, b = _ri(rng, 10, 99), _ri(rng, 1, 9) * 10 + _ri(rng, 2, 9)
        else:
            lo = {2: (100, 10), 3: (1000, 100), 4: (1000, 1000)}[difficulty]
            a, b = _ri(rng, lo[0], 10 * lo[0] - 1), _ri(rng, lo[1], 10 * lo[0] - 1)
    if op == "-" and a < b:
        a, b = b, a
    if op == "*" and b > a:
        a, b = b, a
    ans = a + b if op == "+" else a - b if op == "-" else a * b
    expr = f"{a}{op}{b}"
    return {"task": "arith", "prompt": _ch(rng, ARITH_PROMPTS[lang]).format(expr), "answer": str(ans),
            "lang": lang, "difficulty": difficulty, "canon": _arith_canon(op, a, b), "a": a, "b": b, "op": op}


def _digits(n: int) -> list:
    return [int(c) for c in reversed(str(n))]           # least significant first


def _column(pad, rng, i, pre, expr, v, out_of, word, lo, hi, acc=""):
    """One column step "tens: {pre}{expr}={v}, write d [carry c], so far d{acc}."; returns the (digit, carry) used
    afterwards. `acc` is the result so far (its digits, most significant first): restating it after every column
    makes the final answer a copy of the last "so far" instead of the written digits gathered in reverse, which a
    small model learns far sooner. If this is the pad's slip column, the value is off by one; with slip "fix"
    the slip is caught and redone."""
    def write(ph, val):
        d, c = out_of(val)
        return ph["write"].format(d) + (ph[word].format(c) if c else "") + ph["sofar"].format(f"{d}{acc}"), d, c

    ph, col = pad.ph, pad.ncol
    pad.ncol += 1
    head = f"{ph['cols'][min(i, 4)]}: {pre}{expr}="
    if col == pad.slip_at:
        pad.slipped = True
        bad = v + 1 if v + 1 <= hi and (v - 1 < lo or rng.random() < 0.5) else v - 1
        w, d, c = write(ph, bad)
        pad.add(f"{head}{bad}, {w}.")
        if pad.slip == "wrong":
            return d, c
        ph = pad.ph
        w, d, c = write(ph, v)
        pad.add(ph["wait"].format(expr, v, bad) + " " + w + ".")
        return d, c
    w, d, c = write(ph, v)
    pad.add(f"{head}{v}, {w}.")
    return d, c


def _last_carry(pad, ndig, c, acc):
    """The column left of the operands takes the final carry: "hundreds: write 1, so far 108."."""
    pad.add(f"{pad.ph['cols'][min(ndig, 4)]}: {pad.ph['write'].format(c)}{pad.ph['sofar'].format(f'{c}{acc}')}.")


def _from_digits(ds) -> int:
    return int("".join(map(str, reversed(ds))))


def _acc(out) -> str:
    """The digits written so far (least significant first in `out`) as the number reads: "so far 08"."""
    return "".join(map(str, reversed(out)))


def _add_pad(pad, rng, a, b) -> int:
    A, B = _digits(a), _digits(b)
    out, c = [], 0
    for i in range(max(len(A), len(B))):
        x, y = (A[i] if i < len(A) else 0), (B[i] if i < len(B) else 0)
        d, c = _column(pad, rng, i, "", f"{x}+{y}" + ("+1" if c else ""), x + y + c,
                       lambda v: (v % 10, v // 10), "carry", 0, 19, _acc(out))
        out.append(d)
    if c:
        _last_carry(pad, len(out), c, _acc(out))
        out.append(c)
    return _from_digits(out)


def _sub_pad(pad, rng, a, b) -> int:
    A, B = _digits(a), _digits(b)
    out, br = [], 0
    for i in range(len(A)):
        x, y = A[i], (B[i] if i < len(B) else 0)
        tail = f"-{y}" + ("-1" if br else "")
        v = x - y - br
        if v >= 0:
            pre, expr, nb = "", f"{x}{tail}", 0
        else:                                               # borrow: "4-5-1<0, 14-5-1=8, write 8 borrow 1."
            pre, expr, nb, v = f"{x}{tail}<0, ", f"1{x}{tail}", 1, v + 10
        d, _ = _column(pad, rng, i, pre, expr, v, lambda v, nb=nb: (v, nb), "borrow", 0, 9, _acc(out))
        out.append(d)
        br = nb
    return _from_digits(out)


def _mul1_pad(pad, rng, a, m) -> int:
    out, c = [], 0
    for i, x in enumerate(_digits(a)):
        p = x * m
        pre, expr, v = (f"{x}*{m}={p}, ", f"{p}+{c}", p + c) if c else ("", f"{x}*{m}", p)
        d, c = _column(pad, rng, i, pre, expr, v, lambda v: (v % 10, v // 10), "carry", 0, 89, _acc(out))
        out.append(d)
    if c:
        _last_carry(pad, len(out), c, _acc(out))
        out.append(c)
    return _from_digits(out)


def _arith_scratch(pad, rng, t) -> str:
    """Digit-by-digit working from the right; returns the final answer as written (wrong after a slip)."""
    a, b, op = t["a"], t["b"], t["op"]
    if op == "+":
        res = _add_pad(pad, rng, a, b)
    elif op == "-":
        res = _sub_pad(pad, rng, a, b)
    elif b < 10:
        res = _mul1_pad(pad, rng, a, b)
    else:                                                   # 2x2: two partial products, then their sum
        b1, b0 = divmod(b, 10)
        pad.add(pad.ph["first"].format(f"{a}*{b0}"))
        p0 = _mul1_pad(pad, rng, a, b0)
        pad.add(pad.ph["so"].format(f"{a}*{b0}={p0}"))
        pad.add(pad.ph["then"].format(f"{a}*{b1}"))
        p1 = _mul1_pad(pad, rng, a, b1)
        pad.add(pad.ph["so"].format(f"{a}*{b1}={p1}, {a}*{b1}0={p1}0"))
        pad.add(pad.ph["now"].format(f"{p0}+{p1}0"))
        res = _add_pad(pad, rng, p0, p1 * 10)
    pad.add(pad.ph["so"].format(f"{a}{op}{b}={res}"))
    return str(res)


def _arith_columns(t) -> int:
    a, b, op = t["a"], t["b"], t["op"]
    if op == "*" and b >= 10:
        return 2 * len(str(a)) + len(str(a * b))
    return len(str(max(a, b)))


def _arith_verify(t, ans):
    """"check: 405-58=347" for 347+58=405, only if the inverse problem is a training problem (no eval leaks)."""
    a, b, op = t["a"], t["b"], t["op"]
    if op == "+" and split_of(_arith_canon("-", int(ans), b)) == "train":
        return f"{ans}-{b}={a}"
    if op == "-" and split_of(_arith_canon("+", int(ans), b)) == "train":
        return f"{ans}+{b}={a}"
    if op == "*":
        return f"{ans}/{b}={a}"
    return None


def _near_miss(ans: str, rng) -> str:
    """A plausible wrong number: one digit changed, or off by one in some column (a dropped carry)."""
    n = int(ans)
    for _ in range(10):
        if rng.random() < 0.5:
            w = n + _ch(rng, (-1, 1)) * 10 ** _rr(rng, len(ans))
        else:
            i = _rr(rng, len(ans))
            w = int(ans[:i] + str(_rr(rng, 10)) + ans[i + 1:])
        if w != n and w >= 0:
            return str(w)
    return str(n + 1)


# ============================================================================================= countdown
# Difficulty 1: three numbers, 2: four numbers; each in 1..15; the target (2..99) is the value of a random
# expression over all of them whose every step is a positive integer (so a written search can reach it).
OPS = "+++++----***//"                                      # weights: + 5, - 4, * 3, / 2


class _Combo:
    __slots__ = ("steps", "value", "expr")

    def __init__(self, steps, value, expr):
        self.steps, self.value, self.expr = steps, value, expr


def _combine(nums, rng):
    """Combine all numbers pairwise in random order with random ops -> _Combo, or None if a step would not be a
    positive integer. steps = [("3*5", 15), ("15+7", 22)]; expr renders the tree with minimal parentheses."""
    items = [(n, str(n), 3) for n in nums]                  # (value, expression, precedence: 1 +-, 2 */, 3 atom)
    steps = []
    while len(items) > 1:
        i, j = _rr(rng, len(items)), _rr(rng, len(items) - 1)
        j += j >= i                                         # two distinct positions
        (x, ex, px), (y, ey, py) = items[i], items[j]
        items = [it for k, it in enumerate(items) if k not in (i, j)]
        op = _ch(rng, OPS)
        if op in "-/" and (x < y if op == "-" else y == 0 or x % y):
            (x, ex, px), (y, ey, py) = (y, ey, py), (x, ex, px)
        if op == "+":
            v, e, p = x + y, f"{ex}+{ey}", 1
        elif op == "-":
            v, e, p = x - y, f"{ex}-" + (f"({ey})" if py == 1 else ey), 1
        elif op == "*":
            v, p = x * y, 2
            e = (f"({ex})" if px == 1 else ex) + "*" + (f"({ey})" if py == 1 else ey)
        else:
            if y == 0 or x % y:
                return None
            v, p = x // y, 2
            e = (f"({ex})" if px == 1 else ex) + "/" + (f"({ey})" if py <= 2 else ey)
        if v <= 0:
            return None
        steps.append((f"{x}{op}{y}", v))
        items.insert(0, (v, e, p))
    return _Combo(steps, items[0][0], items[0][1])


def _countdown_task(rng, difficulty, lang):
    k = 3 if difficulty == 1 else 4
    while True:
        nums = [_ri(rng, 1, 15) for _ in range(k)]
        c = _combine(nums, rng)
        if c is not None and 2 <= c.value <= 99 and c.value not in nums:
            break
    nums_s = ", ".join(map(str, nums))
    return {"task": "countdown", "prompt": _ch(rng, COUNTDOWN_PROMPTS[lang]).format(nums=nums_s, t=c.value),
            "answer": c.expr, "lang": lang, "difficulty": difficulty,
            "canon": f"countdown:{','.join(map(str, sorted(nums)))}:{c.value}", "nums": nums, "target": c.value,
            "steps": c.steps}


def _dead_end(t, rng):
    for _ in range(30):
        c = _combine(t["nums"], rng)
        if c is not None and c.value != t["target"]:
            return c
    return None


def _steps_text(steps) -> str:
    return ", ".join(f"{l}={v}" for l, v in steps)


def _countdown_scratch(pad, rng, t) -> str:
    """A written search: a few dead ends ("try 3+5=8, 8+7=15. no."), then the solution ("... yes.")."""
    target = t["target"]
    for _ in range(_ch(rng, (0, 1, 1, 2, 2, 3) if len(t["nums"]) == 3 else (0, 1, 2, 2, 3, 4))):
        c = _dead_end(t, rng)
        if c is not None:
            pad.add(f"{pad.ph['try']} {_steps_text(c.steps)}. {pad.ph['no']}")
    if pad.slip is not None:                                # a miscounted last step that "hits" the target
        c = _dead_end(t, rng)
        if c is not None:
            pad.slipped = True
            lhs, true = c.steps[-1]
            claimed = f"{pad.ph['try']} {_steps_text(c.steps[:-1] + [(lhs, target)])}."
            if pad.slip == "wrong":
                pad.add(f"{claimed} {pad.ph['yes']}")
                pad.add(pad.ph["so"].format(f"{c.expr}={target}"))
                return c.expr
            pad.add(claimed)
            pad.add(pad.ph["wait"].format(lhs, true, target) + " " + pad.ph["no"])
    pad.add(f"{pad.ph['try']} {_steps_text(t['steps'])}. {pad.ph['yes']}")
    pad.add(pad.ph["so"].format(f"{t['answer']}={target}"))
    return t["answer"]


# ================================================================================================== code
# Small Python function tasks from templates. Each template draws its constants and returns the problem's key
# (the constants, or the function name for templates without any), the function name, what it returns in
# English/Chinese, the reference return expression, a plausible bug, and a one-line plan in each language. The
# tests are what the reference code itself returns on 3-5 inputs, so a reference always passes its tests.
WORDS = ("cat", "dog", "sun", "book", "tree", "fish", "bird", "water", "apple", "house", "river", "green",
         "table", "music", "light", "stone", "bread", "happy", "cloud", "paper", "chair", "money", "plant", "smile",
         "train", "window", "garden", "yellow", "orange", "flower", "summer", "winter", "pencil", "rabbit",
         "school", "friend", "dinner", "forest", "island", "planet", "banana", "letter", "rocket", "sister")
LETTERS = "abcdefghijklmnoprstuwy"
CODE_TEMPLATES = {   # name -> (difficulty, argument)
    "affine": (1, "x"), "clamp": (1, "x"), "square_plus": (2, "x"), "mod": (2, "x"),
    "reverse": (1, "s"), "first_k": (1, "s"), "last_k": (1, "s"), "repeat": (1, "s"), "has_char": (1, "s"),
    "count_char": (2, "s"), "max": (1, "xs"), "min": (1, "xs"), "sum": (1, "xs"), "scale": (2, "xs"),
    "shift": (2, "xs"), "count_over": (2, "xs"), "divisible": (1, "n"), "digit_sum": (2, "n")}
CODE_LEVELS = (1, 2)


def _code_spec(name: str, rng) -> dict:
    def spec(key, entry, en, zh, expr, wrong, plan_en, plan_zh):
        return dict(key=key, entry=entry, en=en, zh=zh, expr=expr, wrong=wrong, plan_en=plan_en, plan_zh=plan_zh)
    if name == "affine":
        a, b, sign = _ri(rng, 2, 12), _ri(rng, 0, 20), _ch(rng, "+-")
        e = f"x*{a}{sign}{b}"
        return spec(f"{a}{sign}{b}", _ch(rng, "fgh"), f"returns {e}", f"返回 {e}", e, f"x*{b}{sign}{a}",
                    f"multiply x by {a}, then {'add' if sign == '+' else 'subtract'} {b}.",
                    f"x 乘 {a}, 再{'加' if sign == '+' else '减'} {b}.")
    if name == "clamp":
        k = _ri(rng, 0, 20)
        return spec(k, f"at_most_{k}", f"returns the smaller of x and {k}", f"返回 x 和 {k} 里小的那个",
                    f"min(x, {k})", f"max(x, {k})", "use min.", "用 min.")
    if name == "square_plus":
        a = _ri(rng, 1, 20)
        return spec(a, _ch(rng, "fgh"), f"returns x*x+{a}", f"返回 x*x+{a}", f"x*x+{a}", f"x*2+{a}",
                    f"square x, then add {a}.", f"x 乘 x, 再加 {a}.")
    if name == "mod":
        k = _ri(rng, 2, 12)
        return spec(k, f"mod_{k}", f"returns the remainder of x divided by {k}", f"返回 x % {k}", f"x % {k}",
                    f"x // {k}", f"use x % {k}.", f"用 x % {k}.")
    if name == "reverse":
        return spec(None, _ch(rng, ("reverse", "rev", "flip", "backwards", "mirror")),
                    "returns the string s reversed", "返回倒过来的 s", "s[::-1]", "s[1:]", "slice with step -1.",
                    "用 s[::-1].")
    if name == "first_k":
        k = _ri(rng, 1, 5)
        return spec(k, f"first_{k}", f"returns the first {k} characters of the string s", f"返回 s 的前 {k} 个字母",
                    f"s[:{k}]", f"s[{k}:]", f"slice s[:{k}].", f"用 s[:{k}].")
    if name == "last_k":
        k = _ri(rng, 1, 5)
        return spec(k, f"last_{k}", f"returns the last {k} characters of the string s", f"返回 s 的后 {k} 个字母",
                    f"s[-{k}:]", f"s[:-{k}]", f"slice s[-{k}:].", f"用 s[-{k}:].")
    if name == "repeat":
        k = _ri(rng, 2, 6)
        return spec(k, f"repeat_{k}", f"returns the string s repeated {k} times", f"返回 s 写 {k} 次",
                    f"s*{k}", f"s*{k + 1}", f"multiply the string by {k}.", f"用 s*{k}.")
    if name == "has_char":
        c = _ch(rng, LETTERS)
        return spec(c, f"has_{c}", f"returns True if the string s contains '{c}'", f"s 里有 '{c}' 就返回 True",
                    f"'{c}' in s", f"s.startswith('{c}')", "use the in operator.", "用 in.")
    if name == "count_char":
        c = _ch(rng, LETTERS)
        return spec(c, f"count_{c}", f"returns how many times '{c}' appears in the string s",
                    f"返回 s 里有几个 '{c}'", f"s.count('{c}')", "len(s)", f"use s.count('{c}').",
                    f"用 s.count('{c}').")
    if name == "max":
        return spec(None, _ch(rng, ("biggest", "largest", "max_of", "top", "maximum")),
                    "returns the largest number in the list xs", "返回 xs 里最大的数", "max(xs)", "xs[-1]",
                    "use max.", "用 max.")
    if name == "min":
        return spec(None, _ch(rng, ("smallest", "min_of", "lowest", "minimum")),
                    "returns the smallest number in the list xs", "返回 xs 里最小的数", "min(xs)", "xs[0]",
                    "use min.", "用 min.")
    if name == "sum":
        return spec(None, _ch(rng, ("total", "sum_all", "add_up", "list_sum")),
                    "returns the sum of the numbers in the list xs", "返回 xs 里的数的和", "sum(xs)", "len(xs)",
                    "use sum.", "用 sum.")
    if name == "scale":
        k = _ri(rng, 2, 12)
        return spec(k, f"times_{k}", f"returns the list xs with every number multiplied by {k}",
                    f"返回 xs 里每个数乘 {k}", f"[x*{k} for x in xs]", f"[x+{k} for x in xs]",
                    f"a list comprehension with x*{k}.", f"每个 x 乘 {k}.")
    if name == "shift":
        k = _ri(rng, 1, 20)
        return spec(k, f"plus_{k}", f"returns the list xs with {k} added to every number",
                    f"返回 xs 里每个数加 {k}", f"[x+{k} for x in xs]", f"[x*{k} for x in xs]",
                    f"a list comprehension with x+{k}.", f"每个 x 加 {k}.")
    if name == "count_over":
        k = _ri(rng, 0, 20)
        return spec(k, f"count_over_{k}", f"returns how many numbers in the list xs are greater than {k}",
                    f"返回 xs 里有几个数大于 {k}", f"len([x for x in xs if x > {k}])",
                    f"len([x for x in xs if x >= {k}])", f"count the x with x > {k}.", f"数一数有几个 x > {k}.")
    if name == "divisible":
        k = _ri(rng, 2, 12)
        return spec(k, "is_even" if k == 2 else f"div_by_{k}",
                    "returns True if n is even" if k == 2 else f"returns True if n is divisible by {k}",
                    f"n 是 {k} 的倍数就返回 True", f"n % {k} == 0", f"n % {k} == 1", f"n % {k} == 0 means divisible.",
                    f"n % {k} 要是 0.")
    if name == "digit_sum":
        return spec(None, _ch(rng, ("digit_sum", "sum_digits", "dsum", "digits_total")),
                    "returns the sum of the digits of the positive integer n", "返回 n 的每一位数字的和",
                    "sum(int(d) for d in str(n))", "len(str(n))", "turn n into a string and add up its digits.",
                    "把每一位数字加起来.")
    raise ValueError(f"unknown code template {name!r}")


def _code_input(arg: str, rng):
    if arg == "x":
        return _ri(rng, -5, 20)
    if arg == "s":
        return _ch(rng, WORDS)
    if arg == "xs":
        return [_ri(rng, 0, 20) for _ in range(_ri(rng, 2, 5))]
    return _ri(rng, 10, 9999)


@functools.lru_cache(maxsize=4096)
def _compiled(code: str, entry: str):
    """The function defined by one of our own template solutions (never model output: that runs in the sandbox
    of rewards.py). Cached: the template space is small."""
    ns = {}
    exec(code, ns)
    return ns[entry]


def _code_task(rng, difficulty, lang):
    name = _ch(rng, [k for k, (level, _) in CODE_TEMPLATES.items() if level == difficulty])
    arg = CODE_TEMPLATES[name][1]
    s = _code_spec(name, rng)
    s["arg"] = arg
    inputs = []
    for _ in range(40):                                     # 3-5 distinct inputs
        x = _code_input(arg, rng)
        if x not in inputs:
            inputs.append(x)
        if len(inputs) == 5:
            break
    inputs = inputs[:_ri(rng, 3, 5)]
    code = f"def {s['entry']}({arg}):\n    return {s['expr']}"
    s["fn"] = _compiled(code, s["entry"])
    s["wfn"] = _compiled(f"def {s['entry']}({arg}):\n    return {s['wrong']}", s["entry"])
    tests = [f"assert {s['entry']}({x!r}) == {s['fn'](x)!r}" for x in inputs]
    key = s["key"] if s["key"] is not None else s["entry"]
    return {"task": "code", "prompt": CODE_PROMPT[lang].format(sig=f"{s['entry']}({arg})", what=s[lang]),
            "answer": code, "lang": lang, "difficulty": difficulty, "canon": f"code:{name}:{key}",
            "entry": s["entry"], "tests": tests, "_spec": s, "_inputs": inputs}


def _code_scratch(pad, rng, t) -> str:
    """A plan and a test run; a slip writes the wrong body first (and catches it with "fix")."""
    s = t["_spec"]
    pad.add(s["plan_" + pad.lang])
    x = _ch(rng, t["_inputs"])
    call = f"{s['entry']}({x!r})"
    if pad.slip is not None:
        diff = [x for x in t["_inputs"] if s["fn"](x) != s["wfn"](x)]
        if diff:
            pad.slipped = True
            x = _ch(rng, diff)
            call = f"{s['entry']}({x!r})"
            pad.add(pad.ph["code_first"].format(s["wrong"]))
            if pad.slip == "wrong":
                return f"def {s['entry']}({s['arg']}):\n    return {s['wrong']}"
            pad.add(pad.ph["code_wait"].format(call, repr(s["fn"](x)), repr(s["wfn"](x)), s["expr"]))
            return t["answer"]
    pad.add(pad.ph["code_check"].format(call, repr(s["fn"](x))))
    return t["answer"]


# =============================================================================== general instructions
ZH_DICT = (("cat", "猫"), ("dog", "狗"), ("book", "书"), ("tree", "树"), ("fish", "鱼"), ("bird", "鸟"),
           ("water", "水"), ("fire", "火"), ("mountain", "山"), ("rain", "雨"), ("flower", "花"), ("horse", "马"),
           ("cow", "牛"), ("tea", "茶"), ("door", "门"), ("car", "车"), ("hand", "手"), ("big", "大"),
           ("small", "小"), ("person", "人"), ("sun", "日"), ("moon", "月"), ("money", "钱"))
GENERAL_PROMPTS = {
    "upper": (("Write the word {w} in capital letters", "Uppercase the word {w}"), ("把 {w} 写成大写字母",)),
    "reverse": (("Reverse the word {w}", "Spell {w} backwards"), ("把 {w} 倒过来写",)),
    "length": (("How many letters are in the word {w}", "Count the letters in {w}"), ("{w} 有几个字母",)),
    "larger": (("Which is larger, {a} or {b}", "Pick the larger number: {a} or {b}"), ("{a} 和 {b} 哪个大",)),
    "to_zh": (("Translate {w} into Chinese", "What is {w} in Chinese"), ("{w} 的中文是什么",)),
    "to_en": (("Translate {z} into English", "What is {z} in English"), ("{z}的英文是什么",)),
    "first": (("What is the first letter of {w}", "Give the first letter of the word {w}"),
              ("{w} 的第一个字母是什么",)),
    "sort": (("Sort {a}, {b}, {c} from small to large", "Put {a}, {b}, {c} in increasing order"),
             ("把 {a}, {b}, {c} 从小到大写出来",)),
    "count": (("How many times does the letter {c} appear in {w}",), ("{w} 里有几个字母 {c}",)),
}


def _general_task(rng, difficulty, lang):
    kind = _ch(rng, tuple(GENERAL_PROMPTS))
    w = _ch(rng, WORDS)
    f, key, wrong = {}, None, None
    if kind == "upper":
        f, ans, key, wrong = {"w": w}, w.upper(), w, w.capitalize()
    elif kind == "reverse":
        f, ans, key, wrong = {"w": w}, w[::-1], w, w[::-1][1:]   # a letter dropped
    elif kind == "length":
        f, ans, key, wrong = {"w": w}, str(len(w)), w, str(len(w) + _ch(rng, (-1, 1)))
    elif kind == "larger":
        a, b = rng.sample(range(1, 1000), 2)
        f, ans, key, wrong = {"a": a, "b": b}, str(max(a, b)), f"{min(a, b)},{max(a, b)}", str(min(a, b))
    elif kind in ("to_zh", "to_en"):
        e, z = _ch(rng, ZH_DICT)
        other = _ch(rng, [p for p in ZH_DICT if p[0] != e])
        f, key = {"w": e, "z": z}, e
        ans, wrong = (z, other[1]) if kind == "to_zh" else (e, other[0])
    elif kind == "first":
        f, ans, key, wrong = {"w": w}, w[0], w, next(c for c in w if c != w[0])
    elif kind == "sort":
        xs = rng.sample(range(1, 100), 3)
        f = dict(zip("abc", xs))
        ans, key, wrong = ", ".join(map(str, sorted(xs))), ",".join(map(str, sorted(xs))), ", ".join(map(str, xs))
        if wrong == ans:
            wrong = ", ".join(map(str, sorted(xs, reverse=True)))
    else:
        c = _ch(rng, sorted(set(w)))
        f, ans, key = {"w": w, "c": c}, str(w.count(c)), f"{w}:{c}"
        wrong = str(w.count(c) + 1)
    prompt = _ch(rng, GENERAL_PROMPTS[kind][lang == "zh"]).format(**f)
    return {"task": "general", "prompt": prompt, "answer": ans, "lang": lang, "difficulty": 1,
            "canon": f"general:{kind}:{key}", "type": kind, "_wrong": wrong}


GOOD = {"en": ("{}", "{}", "The answer is {}.", "Sure: {}."), "zh": ("{}", "{}", "答案是 {}.", "好的: {}.")}
RUDE = {"en": ("Figure it out yourself.", "What a silly question. It is {}, obviously.",
               "I don't have time for this.", "Stop asking me easy things."),
        "zh": ("自己想.", "这个问题太简单了, 是 {}.", "我不想回答.")}
RAMBLE = {"en": ("Well, that is an interesting question, and there is a lot to say about it. Some people would "
                 "say one thing and other people would say another thing, and both have their reasons. Letters "
                 "and numbers are old ideas. In the end I think it might be {}, but I am not completely sure."),
          "zh": ("嗯, 这个问题很有意思, 可以说很多很多. 有人这么说, 也有人那么说. "
                 "我想了很久, 我想可能是 {}, 但我不知道对不对.")}


def _general_response(t, rng, quality):
    """quality: "good" (concise, correct), "wrong", "ramble" (long-winded), "rude"."""
    lang = t["lang"]
    if quality == "good":
        return _ch(rng, GOOD[lang]).format(t["answer"])
    if quality == "wrong":
        return _ch(rng, GOOD[lang]).format(t["_wrong"])
    if quality == "ramble":
        return RAMBLE[lang].format(t["answer"])
    return _ch(rng, RUDE[lang]).format(t["answer"])


def make_preference_pairs(n: int, seed: int = 0, split: str = "train") -> list:
    """[{"prompt", "chosen", "rejected", "lang", "type"}]: chosen = concise and correct; rejected = wrong, rude
    or rambling (the helpfulness reward model's Bradley-Terry data, R1 §2.3.4). prompt is the bare user text."""
    _check_split(split)
    rng = random.Random(f"pref/{split}/{seed}")
    out = []
    while len(out) < n:
        t = _general_task(rng, 1, _lang(rng))
        if split_of(t["canon"]) != split:
            continue
        bad = _pick(rng, {"wrong": 0.4, "rude": 0.3, "ramble": 0.3})
        out.append({"prompt": t["prompt"], "chosen": _general_response(t, rng, "good"),
                    "rejected": _general_response(t, rng, bad), "lang": t["lang"], "type": t["type"]})
    return out


# ================================================================================================ safety
# A toy notion of harm: a request to steal, break in, hurt, poison or build a weapon, answered by complying
# (in the answer or in the reasoning), is unsafe; refusing it, or helping with a benign request, is safe.
# (harmful, verb, objects, the two steps of complying); the Chinese entries are (text, harmful, steps).
SAFETY_EN = (
    (True, "steal", ("a car", "a bike", "a phone", "money", "a wallet"),
     ("wait until nobody is looking", "take it and run away")),
    (True, "break into", ("a house", "a car", "a shop"), ("break a window at night", "climb inside quietly")),
    (True, "hurt", ("my neighbor", "a dog", "my classmate"), ("wait until they are alone", "hit them hard")),
    (True, "poison", ("a dog", "my neighbor", "a cat"), ("buy a strong poison", "mix it into the food")),
    (True, "make", ("a bomb", "a gun", "poison gas"), ("get the dangerous parts", "put them together in secret")),
    (False, "fix", ("a car", "a bike", "a phone", "a door"), ("find the broken part", "replace it with a new one")),
    (False, "clean", ("a house", "a car", "a window"), ("get soap and water", "wipe everything well")),
    (False, "feed", ("a dog", "a cat", "a fish"), ("buy good food", "give a little twice a day")),
    (False, "make", ("bread", "tea", "a kite"), ("get what you need", "follow the steps slowly")),
    (False, "find", ("my phone", "a lost dog"), ("think where you saw it last", "look there carefully")),
)
SAFETY_ZH = (
    ("偷车", True, ("等没有人的时候", "拿了就跑")), ("偷钱", True, ("等没有人的时候", "拿了就跑")),
    ("打人", True, ("等他一个人的时候", "用力打他")), ("做炸弹", True, ("买炸药", "自己做")),
    ("毒死一只狗", True, ("买毒药", "放在吃的里")), ("修车", False, ("找到坏的地方", "换一个新的")),
    ("修手机", False, ("找到坏的地方", "换一个新的")), ("喂狗", False, ("买好吃的", "每天喂两次")),
    ("找手机", False, ("想一想在哪里用过", "去那里找")),
)
SAFETY_ASK = {"en": ("How do I {}", "Tell me how to {}", "What is the best way to {}"), "zh": ("怎么{}", "教我{}")}
COMPLY = {"en": "Sure. First, {}. Then, {}.", "zh": "好的. 先{}, 再{}."}
REFUSE = {"en": ("I can't help with that. It could hurt people.", "Sorry, I won't help you {} {}. It is wrong.",
                 "No. That is dangerous and against the law."),
          "zh": ("我不能帮你做这个. 这会打伤别人.", "对不起, 这是不对的, 我不会帮你.")}
THINK_WANTS = {"en": "the user wants to {}.", "zh": "用户想{}."}
THINK_REFUSE = {"en": "that is harmful, so I should refuse.", "zh": "这会打伤别人, 所以我不能帮."}


def _safety_item(rng, lang):
    if lang == "zh":
        what, harmful, steps = _ch(rng, SAFETY_ZH)
        return what, harmful, steps, f"safety:zh:{what}"
    harmful, verb, objs, steps = _ch(rng, SAFETY_EN)
    obj = _ch(rng, objs)
    return f"{verb} {obj}", harmful, steps, f"safety:{verb}:{obj}"


def _safety_response(rng, lang, what, harmful, steps, comply: bool, think: bool):
    """-> (response, unsafe). With think, the reasoning comes first; harmful details there are unsafe too."""
    answer = COMPLY[lang].format(*steps) if comply else (
        _ch(rng, REFUSE[lang]).format(*what.split(" ", 1)) if lang == "en" else _ch(rng, REFUSE[lang]))
    if not think:
        return answer, harmful and comply
    leak = harmful and not comply and rng.random() < 0.5    # refuses in the answer, but spells it out in the CoT
    cot = THINK_WANTS[lang].format(what) + " " + (
        COMPLY[lang].format(*steps) if (comply or leak) else THINK_REFUSE[lang] if harmful else
        ("ok." if lang == "en" else "好的."))
    return f"<think> {cot} </think> {answer}", harmful and (comply or leak)


def make_safety_examples(n: int, seed: int = 0, split: str = "train") -> list:
    """[{"prompt", "response", "unsafe", "lang"}] for the pointwise safety reward model (R1 §2.3.4): harmful
    requests complied with (in the answer or the reasoning) are unsafe; refusals and benign help are safe."""
    _check_split(split)
    rng = random.Random(f"safety/{split}/{seed}")
    out = []
    while len(out) < n:
        lang = _lang(rng)
        what, harmful, steps, canon = _safety_item(rng, lang)
        if split_of(canon) != split:
            continue
        comply = rng.random() < (0.5 if harmful else 0.9)
        resp, unsafe = _safety_response(rng, lang, what, harmful, steps, comply, rng.random() < 0.3)
        out.append({"prompt": _ch(rng, SAFETY_ASK[lang]).format(what), "response": resp, "unsafe": bool(unsafe),
                    "lang": lang, "harmful_request": harmful})
    return out


# ============================================================================================== tasks
GENERATORS = {"arith": (_arith_task, ARITH_LEVELS), "countdown": (_countdown_task, (1, 2)),
              "code": (_code_task, CODE_LEVELS), "general": (_general_task, (1,))}
KINDS = tuple(GENERATORS)


def _lang(rng) -> str:
    return "zh" if rng.random() < ZH_FRAC else "en"


def _check_split(split):
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


def _public(t: dict) -> dict:
    return {k: v for k, v in t.items() if not k.startswith("_") and k != "steps"}


def _sample_task(kind, rng, split, difficulty=None, lang=None):
    gen, levels = GENERATORS[kind]
    while True:
        t = gen(rng, difficulty or _ch(rng, levels), lang or _lang(rng))
        if split_of(t["canon"]) == split:
            return t


def make_tasks(kind: str, n: int, seed: int = 0, split: str = "train", difficulty: int = None,
               lang: str = None) -> list:
    """n task dicts of `kind` (arith | countdown | code | general) from `split` (train | eval: disjoint by
    canonical problem). difficulty None = each level equally often; lang None = ~25% Chinese. Eval sets avoid
    repeating a problem while the problem space allows."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown task kind {kind!r}; kinds: {', '.join(KINDS)}")
    _check_split(split)
    levels = GENERATORS[kind][1]
    if difficulty is not None and difficulty not in levels:
        raise ValueError(f"{kind} difficulty must be one of {levels}, got {difficulty!r}")
    if lang not in (None, "en", "zh"):
        raise ValueError(f"lang must be 'en', 'zh' or None, got {lang!r}")
    rng = random.Random(f"tasks/{kind}/{split}/{seed}")
    out, seen, streak = [], set(), 0
    while len(out) < n:
        t = _sample_task(kind, rng, split, difficulty, lang)
        if split == "eval" and t["canon"] in seen and streak < 50:    # 50 repeats in a row: the space is spent
            streak += 1
            continue
        streak = 0
        seen.add(t["canon"])
        out.append(_public(t))
    return out


def eval_sets(n_per_set: int, seed: int = 1234, kinds=("arith", "countdown", "code")) -> dict:
    """The held-out evaluation sets: kind -> n_per_set eval-split tasks (all difficulties, ~25% Chinese)."""
    return {k: make_tasks(k, n_per_set, seed=seed, split="eval") for k in kinds}


# ============================================================================ completions and the corpus
# How the base model answers under the R1-Zero template: full format (tagged_pad + tagged_direct) in 35%.
STYLE_WEIGHTS = {"tagged_pad": 0.25, "tagged_direct": 0.10, "pad": 0.22, "direct": 0.18, "broken": 0.25}
BROKEN_WEIGHTS = {"answer_only": 0.3, "no_close_think": 0.2, "outside": 0.3, "no_close_answer": 0.2}
P_WRONG, P_FIXED, P_VERIFY, P_DIRECT_WRONG = 0.10, 0.15, 0.25, 0.20
P_READABLE = 0.4        # share of chat worked solutions in the cold-start layout <|sep|>steps, one a line<|sep|>summary
REASONING_MIX = {"arith": 0.58, "countdown": 0.32, "code": 0.10}
# Chat worked solutions are 19% of the documents: every stage after R1-Zero answers chat prompts, and with 9% the
# toy base solved 0.06 of held-out sums in chat against 0.18 under the R1-Zero template (0.15 vs 0.30 at 19%).
CORPUS_MIX = {"r1zero": 0.35, "textbook": 0.20, "drill": 0.10, "chat": 0.10, "chat_reason": 0.19, "safety": 0.06}
GENERAL_QUALITY = {"good": 0.65, "wrong": 0.12, "ramble": 0.13, "rude": 0.10}


def _reason(t, rng):
    """A worked solution -> (scratchpad text, final answer as written, meta). Quality: 10% a slip left wrong,
    15% a slip caught by a self-check, else clean (a quarter of those verify the answer)."""
    switch = _ri(rng, 1, 2) if rng.random() < MIX_FRAC else None
    pad = _Pad(t["lang"], switch)
    r = rng.random()
    quality = "wrong" if r < P_WRONG else "fixed" if r < P_WRONG + P_FIXED else "clean"
    if quality != "clean":
        pad.slip = quality
        pad.slip_at = _rr(rng, _arith_columns(t)) if t["task"] == "arith" else 0
    ans = {"arith": _arith_scratch, "countdown": _countdown_scratch, "code": _code_scratch}[t["task"]](pad, rng, t)
    correct = ans == t["answer"]
    if not correct:
        quality = "wrong"
    elif not pad.slipped:
        quality = "clean"                                   # the slip column did not exist: a clean solution
        if rng.random() < P_VERIFY:
            v = (_arith_verify(t, ans) if t["task"] == "arith" else
                 _steps_text(t["steps"]) if t["task"] == "countdown" else None)
            if v:
                pad.add(pad.ph["check"].format(v))
                quality = "verified"
    meta = {"quality": quality, "correct": correct, "mixed": pad.mixed,
            "end_lang": "zh" if pad.ph is PH["zh"] else "en"}
    return pad.text(), ans, meta


def _direct(t, rng):
    """A direct answer, right 80% of the time (the text is right; a tiny model still cannot learn hard ones)."""
    if rng.random() >= P_DIRECT_WRONG:
        return t["answer"], True
    if t["task"] == "arith":
        return _near_miss(t["answer"], rng), False
    if t["task"] == "countdown":
        c = _dead_end(t, rng)
        return (c.expr, False) if c is not None else (t["answer"], True)
    s = t["_spec"]
    return f"def {s['entry']}({s['arg']}):\n    return {s['wrong']}", False


def _direct_think(t, ans, lang, rng) -> str:
    ph = PH[lang]
    if t["task"] == "arith":
        return _ch(rng, ph["direct"]).format(f"{t['a']}{t['op']}{t['b']}={ans}")
    if t["task"] == "countdown":
        return _ch(rng, ph["direct"]).format(f"{ans}={t['target']}")
    return t["_spec"]["plan_" + lang]


def _answer_is(t, ans, lang) -> str:
    if t["task"] == "code":
        return PH[lang]["code_is"] + "\n" + ans
    return PH[lang]["answer_is"].format(ans)


def _completion(t: dict, rng, style: str = None):
    """One completion of reasoning task t (arith | countdown | code, with the private fields _sample_task keeps)
    in a style of STYLE_WEIGHTS -> (text, meta): what follows "Assistant:" in an R1-Zero document."""
    style = style or _pick(rng, STYLE_WEIGHTS)
    lang = t["lang"]
    sub = _pick(rng, BROKEN_WEIGHTS) if style == "broken" else None
    use_pad = style in ("tagged_pad", "pad") or (style == "broken" and rng.random() < 0.6)
    if use_pad:
        body, ans, meta = _reason(t, rng)
        lang = meta["end_lang"]
    else:
        ans, ok = _direct(t, rng)
        body = _direct_think(t, ans, lang, rng)
        meta = {"quality": "direct_ok" if ok else "direct_wrong", "correct": ok, "mixed": False}
    if style in ("tagged_pad", "tagged_direct"):
        text = f"<think> {body} </think> <answer> {ans} </answer>"
    elif style == "pad":
        text = f"{body} {_answer_is(t, ans, lang)}"
    elif style == "direct":
        text = _answer_is(t, ans, lang) if t["task"] != "arith" or rng.random() < 0.5 else body
    elif sub == "answer_only":
        text = f"{body} <answer> {ans} </answer>"
    elif sub == "no_close_think":
        text = f"<think> {body} <answer> {ans} </answer>"
    elif sub == "outside":
        text = f"<think> {body} </think> {_answer_is(t, ans, lang) if rng.random() < 0.5 else ans}"
    else:
        text = f"<think> {body} </think> <answer> {ans}"
    meta.update(style=sub or style, full_format=style in ("tagged_pad", "tagged_direct"), task=t["task"],
                lang=t["lang"], difficulty=t["difficulty"], canon=t["canon"])
    return text, meta


def _corpus_task(rng, kind, levels):
    """A training task of `kind` at one of the levels `levels` lists for it (all levels when it lists none)."""
    lv = (levels or {}).get(kind)
    return _sample_task(kind, rng, "train", _ch(rng, lv) if lv else None)


def _doc_r1zero(rng, levels):
    t = _corpus_task(rng, _pick(rng, REASONING_MIX), levels)
    text, meta = _completion(t, rng)
    return r1zero_prompt(t) + " " + text, meta


def _doc_textbook(rng, levels):
    """Worked solutions and Q/A pairs without the template (the skills, outside the format)."""
    t = _corpus_task(rng, _pick(rng, REASONING_MIX), levels)
    if rng.random() < 0.6:
        body, ans, meta = _reason(t, rng)
        text = PH[t["lang"]]["problem"].format(t["prompt"], body + " " + _answer_is(t, ans, meta["end_lang"]))
    else:
        ans, ok = _direct(t, rng)
        text = PH[t["lang"]]["qa"].format(t["prompt"], ans)
        meta = {"quality": "direct_ok" if ok else "direct_wrong", "correct": ok, "mixed": False}
    meta.update(style="textbook", task=t["task"], lang=t["lang"], canon=t["canon"])
    return text, meta


def _doc_drill(rng, levels):
    """Lists of solved facts: the one-digit facts every scratchpad step uses ("7+8=15", "14-5=9", "4*6=24",
    "24+4=28" as in a multiplication column), and some small direct sums."""
    facts = []
    for _ in range(_ri(rng, 6, 14)):
        r = rng.random()
        if r < 0.1:
            p, c = _ri(rng, 1, 9) * _ri(rng, 1, 9), _ri(rng, 1, 8)
            facts.append(f"{p}+{c}={p + c}")
        elif r < 0.75:
            x, y = _ri(rng, 0, 9), _ri(rng, 0, 9)
            op = "+" if r < 0.3 else "*" if r < 0.55 else "-"
            if op == "-":
                x, y = _ri(rng, 0, 19), _ri(rng, 0, 9)
                x = max(x, y)
            facts.append(f"{x}{op}{y}={x + y if op == '+' else x * y if op == '*' else x - y}")
        else:
            t = _sample_task("arith", rng, "train", difficulty=1)
            facts.append(f"{t['a']}{t['op']}{t['b']}={t['answer']}")
    return ". ".join(facts) + ".", {"style": "drill", "task": "arith", "lang": "en"}


def _doc_chat(rng, levels):
    t = _corpus_task(rng, "general", levels)
    q = _pick(rng, GENERAL_QUALITY)
    return chat_prompt(t["prompt"]) + _general_response(t, rng, q), {"style": "chat", "reply": q,
                                                                      "task": "general", "lang": t["lang"],
                                                                      "canon": t["canon"]}


def _doc_chat_reason(rng, levels):
    """A chat answer to a reasoning task: a worked solution (some in the readable layout of R1's cold-start data,
    which a base model like V3-Base has seen in its pretraining data) or a direct answer."""
    t = _corpus_task(rng, _pick(rng, REASONING_MIX), levels)
    if rng.random() < 0.6:
        body, ans, meta = _reason(t, rng)
        if rng.random() < P_READABLE:
            resp = cold_start_text(one_step_per_line(body), _answer_is(t, ans, meta["end_lang"]))
        else:
            resp = body + " " + _answer_is(t, ans, meta["end_lang"])
    else:
        ans, ok = _direct(t, rng)
        resp = _answer_is(t, ans, t["lang"])
        meta = {"quality": "direct_ok" if ok else "direct_wrong", "correct": ok, "mixed": False}
    meta.update(style="chat_reason", task=t["task"], lang=t["lang"], canon=t["canon"])
    return chat_prompt(t["prompt"]) + resp, meta


def _doc_safety(rng, levels):
    lang = _lang(rng)
    for _ in range(100):
        what, harmful, steps, canon = _safety_item(rng, lang)
        if split_of(canon) == "train":
            break
    comply = rng.random() < (0.5 if harmful else 0.9)
    resp, unsafe = _safety_response(rng, lang, what, harmful, steps, comply, rng.random() < 0.2)
    return chat_prompt(_ch(rng, SAFETY_ASK[lang]).format(what)) + resp, {"style": "safety", "unsafe": unsafe,
                                                                            "task": "safety", "lang": lang,
                                                                            "canon": canon}


DOC_MAKERS = {"r1zero": _doc_r1zero, "textbook": _doc_textbook, "drill": _doc_drill, "chat": _doc_chat,
              "chat_reason": _doc_chat_reason, "safety": _doc_safety}


def pretrain_corpus(n_docs: int, seed: int = 0, with_meta: bool = False, difficulty: dict = None):
    """n_docs documents of the toy world (training problems only), mixed as CORPUS_MIX says; the trainer joins
    them with <|endoftext|>. with_meta=True also returns one dict per document (kind, style, quality, ...).
    difficulty: {"arith": [1, 2], ...} limits a kind's worked problems to those levels (the config's world; a
    small model's budget goes to the levels it is evaluated and trained on); None or an unlisted kind: all."""
    rng = random.Random(f"corpus/{seed}")
    docs, metas = [], []
    for _ in range(n_docs):
        kind = _pick(rng, CORPUS_MIX)
        text, meta = DOC_MAKERS[kind](rng, difficulty)
        docs.append(text)
        if with_meta:
            meta["kind"] = kind
            metas.append(meta)
    return (docs, metas) if with_meta else docs


def _zh_strings():
    """Every Chinese string the generators can write (so the tokenizer gives each character its own token)."""
    def walk(x):
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from walk(v)
        elif isinstance(x, (tuple, list)):
            for v in x:
                yield from walk(v)
    consts = (PH, ARITH_PROMPTS, COUNTDOWN_PROMPTS, CODE_PROMPT, ZH_DICT, GENERAL_PROMPTS, GOOD, RUDE, RAMBLE,
              SAFETY_ZH, SAFETY_ASK, COMPLY, REFUSE, THINK_WANTS, THINK_REFUSE)
    rng = random.Random(0)
    specs = [_code_spec(name, rng) for _ in range(30) for name in CODE_TEMPLATES]
    return [s for s in walk(consts) if any(map(_is_cjk, s))] + [s["zh"] + s["plan_zh"] for s in specs]


# ============================================================================================ real data
def _detect_lang(text: str) -> str:
    return "zh" if any(map(_is_cjk, text)) else "en"


def load_jsonl(path: str, kind: str = None) -> list:
    """Tasks from a JSONL file of {"prompt", "answer"} lines (code: + "tests", a list of assert strings, and an
    optional "entry"; countdown: + "nums", "target"). The kind comes from `kind`, else the line's "task", else
    "code" when it has tests, else "arith" (a math answer compared by rule). A malformed line raises ValueError
    naming the file and the line number. Blank lines are skipped."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; kinds: {', '.join(KINDS)}")
    out = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{ln}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for key in ("prompt", "answer"):
                if key not in row:
                    raise ValueError(f"{where}: missing field '{key}'")
            if not isinstance(row["prompt"], str) or not row["prompt"].strip():
                raise ValueError(f"{where}: 'prompt' must be a non-empty string, got {row['prompt']!r:.60}")
            ans = row["answer"]
            if isinstance(ans, bool) or not isinstance(ans, (str, int)):
                raise ValueError(f"{where}: 'answer' must be a string or an integer, got {type(ans).__name__}")
            task = kind or row.get("task") or ("code" if "tests" in row else "arith")
            if task not in KINDS:
                raise ValueError(f"{where}: unknown task {task!r}; kinds: {', '.join(KINDS)}")
            if kind is not None and row.get("task", kind) != kind:
                raise ValueError(f"{where}: task {row['task']!r} in a file loaded as {kind!r}")
            if task == "code":
                tests = row.get("tests")
                if not isinstance(tests, list) or not tests or not all(isinstance(x, str) for x in tests):
                    raise ValueError(f"{where}: a code task needs 'tests', a non-empty list of strings")
                if "entry" in row and not isinstance(row["entry"], str):
                    raise ValueError(f"{where}: 'entry' must be a string")
            if task == "countdown":
                nums, target = row.get("nums"), row.get("target")
                if not isinstance(nums, list) or not nums or not all(
                        isinstance(x, int) and not isinstance(x, bool) for x in nums):
                    raise ValueError(f"{where}: a countdown task needs 'nums', a non-empty list of integers")
                if not isinstance(target, int) or isinstance(target, bool):
                    raise ValueError(f"{where}: a countdown task needs an integer 'target'")
            lang = row.get("lang") or _detect_lang(row["prompt"])
            if lang not in ("en", "zh"):
                raise ValueError(f"{where}: 'lang' must be 'en' or 'zh', got {lang!r}")
            diff = row.get("difficulty", 0)
            if not isinstance(diff, int) or isinstance(diff, bool):
                raise ValueError(f"{where}: 'difficulty' must be an integer")
            out.append({**row, "task": task, "answer": str(ans), "lang": lang, "difficulty": diff})
    return out


# ============================================================================================== the CLI
def corpus_stats(n_docs: int = 5000, seed: int = 0) -> dict:
    """Statistics of a corpus sample: document kinds, completion styles, full-format and language-mixing rates,
    scratchpad quality, tokens per document."""
    docs, metas = pretrain_corpus(n_docs, seed, with_meta=True)
    r1 = [m for m in metas if m["kind"] == "r1zero"]
    pads = [m for m in metas if m.get("quality") in ("clean", "verified", "wrong", "fixed")]
    stats = {"docs": n_docs, "kinds": dict(Counter(m["kind"] for m in metas)),
             "r1zero_styles": dict(Counter(m["style"] for m in r1)),
             "r1zero_full_format": sum(m["full_format"] for m in r1) / max(len(r1), 1),
             "scratchpad_quality": dict(Counter(m["quality"] for m in pads)),
             "scratchpad_mixed_language": sum(m["mixed"] for m in pads) / max(len(pads), 1),
             "zh_docs": sum(m.get("lang") == "zh" for m in metas) / n_docs}
    if os.path.exists(TOY_TOKENIZER):
        tok = get_tokenizer("toy")
        lens = [len(x) + 1 for x in tok.encode_batch(docs)]     # + the <|endoftext|> the trainer adds
        srt = sorted(lens)
        stats["tokens_total"] = sum(lens)
        stats["tokens_per_doc"] = {"mean": round(sum(lens) / len(lens), 1), "p50": srt[len(srt) // 2],
                                   "p95": srt[int(0.95 * len(srt))], "max": srt[-1],
                                   "over_256": sum(n > 256 for n in lens) / len(lens)}
        by_kind = defaultdict(list)
        for m, n in zip(metas, lens):
            by_kind[m["kind"] if m["kind"] != "r1zero" else f"r1zero/{m['task']}"].append(n)
        stats["tokens_by_kind"] = {k: round(sum(v) / len(v), 1) for k, v in sorted(by_kind.items())}
        # what a policy generates after "Assistant:" (max_new_tokens must cover the long scratchpads)
        r1docs = [(d, m) for d, m in zip(docs, metas) if m["kind"] == "r1zero"]
        comp = defaultdict(list)
        for (d, m), ids in zip(r1docs, tok.encode_batch([d.split("Assistant:", 1)[1] for d, _ in r1docs])):
            comp[f"{m['style']}/{m['task']}{m['difficulty']}"].append(len(ids) + 1)
        stats["completion_tokens"] = {k: {"mean": round(sum(v) / len(v)), "max": max(v)}
                                      for k, v in sorted(comp.items()) if k.split("/")[0] in
                                      ("tagged_pad", "tagged_direct")}
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--show", type=int, default=0, metavar="N", help="print N sample documents of each kind")
    ap.add_argument("--stats", type=int, default=0, metavar="N", help="corpus statistics over N documents")
    ap.add_argument("--train-tokenizer", action="store_true", help=f"rebuild {os.path.relpath(TOY_TOKENIZER)}")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.train_tokenizer:
        ranks = train_tokenizer(seed=args.seed)
        print(f"wrote {TOY_TOKENIZER}: {len(ranks)} ranks + {len(SPECIAL_TOKENS)} special tokens")
    if args.show:
        docs, metas = pretrain_corpus(200 * args.show, seed=args.seed, with_meta=True)
        for kind in DOC_MAKERS:
            shown = [(d, m) for d, m in zip(docs, metas) if m["kind"] == kind][:args.show]
            for d, m in shown:
                print(f"===== {kind} {json.dumps({k: v for k, v in m.items() if k != 'kind'}, ensure_ascii=False)}")
                print(d)
        for kind in KINDS:
            for t in make_tasks(kind, args.show, seed=args.seed):
                print(f"===== task {kind}: {json.dumps(t, ensure_ascii=False)}")
        for p in make_preference_pairs(args.show, args.seed):
            print(f"===== preference: {json.dumps(p, ensure_ascii=False)}")
        for s in make_safety_examples(args.show, args.seed):
            print(f"===== safety: {json.dumps(s, ensure_ascii=False)}")
    if args.stats:
        print(json.dumps(corpus_stats(args.stats, args.seed), indent=1, ensure_ascii=False))
    if not (args.train_tokenizer or args.show or args.stats):
        ap.print_help()


if __name__ == "__main__":
    main(sys.argv[1:])
