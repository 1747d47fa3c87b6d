"""The toy world's reasoning tasks: arithmetic, countdown and small code problems, and their worked solutions.

    python data.py --show 2              # sample documents of every kind (data.py builds the corpus from these)

DeepSeek-R1-Zero starts from a base model that already reasons a little; RL with accuracy + format rewards then
makes it think longer and better (R1 §2.2). No pretrained weights exist here, so the base model "V3-toy" learns
from a synthetic corpus (data.py) of the problems below, solved in the ways a base model's pretraining data
solves them: direct answers, worked scratchpads, slips, self-checks, language switches. Each generator is
deterministic given its random.Random (never global state), and a problem is held out for evaluation by a stable
hash of its canonical form (numbers + operation, not language or wording), so train and eval never share one.

Tasks are dicts {"task", "prompt", "answer", "lang", "difficulty", "canon", ...} with "nums"/"target"
(countdown), "entry"/"tests" (code). Keys starting with "_" are private to the generator (data.make_tasks drops
them). Prompts carry no final punctuation because the R1-Zero template appends its own ". Assistant:".
"""
import contextlib
import functools
import itertools
import math
import re
import zlib
from collections import Counter

# ======================================================================================== held-out split
EVAL_EVERY = 8   # 1 canonical problem in 8 is held out for evaluation
# ... and 1 in 4 of the 24 game's (countdown level 3): four numbers and the one target 24 admit only a few hundred
# problems, too few for 96 distinct eval questions at 1 in 8. The extra eighth comes from the training side
# (crc32 % 8 == 4), so a problem has one split whichever level draws it.
# Level 2 can draw such a problem too (target 24, numbers up to 9), so its training pool lost those few problems;
# the shipped toy tokenizer was trained on texts drawn before, which data.tokenizer_texts redraws with
# split_before_24_game() so that `python data.py --train-tokenizer` still writes the shipped file byte for byte.
_GAME24 = re.compile(r"countdown:\d+,\d+,\d+,\d+:24")
_game24_split = [True]


def split_of(canon: str) -> str:
    """"eval" or "train", from a stable hash (crc32, not Python's salted hash) of the canonical problem."""
    r = zlib.crc32(canon.encode()) % EVAL_EVERY
    wider = r == EVAL_EVERY // 2 and _game24_split[-1] and _GAME24.fullmatch(canon)
    return "eval" if r == 0 or wider else "train"


@contextlib.contextmanager
def split_before_24_game():
    """Inside the block, the 24 game's problems are held out 1 in 8 like every other (the split of the world the
    shipped toy tokenizer was trained on)."""
    _game24_split.append(False)
    try:
        yield
    finally:
        _game24_split.pop()


def check_split(split):
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


def lang_of(rng) -> str:
    """A task's language: Chinese for ZH_FRAC of the tasks, English otherwise."""
    return "zh" if rng.random() < ZH_FRAC else "en"


# ==================================================================================== phrasing (en / zh)
OTHER = {"en": "zh", "zh": "en"}
PH = {
    "en": {"cols": ("ones", "tens", "hundreds", "thousands", "ten-thousands"), "write": "write {}",
           "carry": " carry {}", "borrow": " borrow {}", "sofar": ", so far {}", "so": "so {}.",
           "answer_is": "The answer is {}.", "check": "check: {},", "ok": "ok.", "not": "not {}.",
           "redo": "wait, redo:", "wait": "wait, {},", "try": "try", "need": "need {},", "group": "{} and {}, then {}:", "yes": "yes.", "no": "no.",
           "maybe": "so maybe {}.",
           "first": "first {}.", "then": "then {}.", "now": "now {}.",
           "direct": ("so {}.", "so {}.", "easy, {}.", "I know this: {}."), "code_is": "Here is the code:",
           "code_check": "check: {} gives {}, ok.", "code_first": "first try: return {}.",
           "code_wait": "wait, check: {} should give {}, not {}. so: return {}.",
           "problem": "Problem: {}.\nSolution: {}", "qa": "Q: {}\nA: {}"},
    "zh": {"cols": ("个位", "十位", "百位", "千位", "万位"), "write": "写{}", "carry": "进{}", "borrow": "借{}",
           "sofar": ", 目前 {}", "so": "所以 {}.", "answer_is": "答案是 {}.", "check": "检查: {},", "ok": "对.",
           "not": "不是 {}.", "redo": "等等, 重算:", "wait": "等等, {},", "try": "试", "need": "要 {},", "group": "{} 和 {}, 再 {}:", "yes": "对.", "no": "不对.",
           "maybe": "那就 {}.", "first": "先算 {}.", "then": "再算 {}.", "now": "现在算 {}.",
           "direct": ("所以 {}.", "很简单, {}.", "我知道, {}."), "code_is": "代码是:",
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
ZH_FRAC = 0.15          # share of tasks whose prompt is in Chinese
MIX_FRAC = 0.15         # share of scratchpads that switch language midway (R1-Zero's language mixing)


class _Pad:
    """A scratchpad being written, in `lang`, switching to the other language from part `switch` on."""

    def __init__(self, lang: str, switch=None):
        self.lang, self.switch, self.parts = lang, switch, []
        self.careful = False        # checks its steps (arithmetic columns, countdown hits)
        self.repaired = False       # a check caught a slip and the step was redone
        self.slip = None            # code: "wrong" (a wrong first body kept) | "fixed" (caught by a test run)

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
def rand_int(rng, lo: int, hi: int) -> int:
    return lo + int(rng.random() * (hi - lo + 1))


def rand_index(rng, n: int) -> int:
    return int(rng.random() * n)


def rand_choice(rng, seq):
    return seq[int(rng.random() * len(seq))]


def pick(rng, table: dict):
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
#
# A worked solution goes column by column from the right and restates the result so far after each column (the
# final answer is then a copy, not the written digits gathered in reverse). A column is the step a small model
# gets wrong: a digit fact off by one (more often where a carry or borrow enters), at about the rate of P_SLIP.
# A careful pad (P_CAREFUL of them) checks every column by the inverse operation ("check: 14-9-1=4, ok."); a
# check on a slip fails ("check: 15-9-1=5, not 4.") and the column is redone ("wait, redo: 4+9+1=14, ..."), which
# changes the answer to the right one. A hasty pad keeps its slips: its answer is wrong. Writing the checks is
# what makes the answer right, so thinking longer pays where the model itself errs.
ARITH_LEVELS = (1, 2, 3, 4)
P_CAREFUL = 0.3                           # share of arithmetic pads that check every column
P_SLIP = {"carry": 0.08, "plain": 0.03}   # per column: a digit fact off by one (with / without an incoming carry)


def _arith_canon(op, a, b):
    if op in "+*":                                          # commutative: 58+347 is the same problem as 347+58
        a, b = max(a, b), min(a, b)
    return f"arith:{a}{op}{b}"


def arith_task(rng, difficulty, lang):
    r = rng.random()
    if difficulty == 1:
        op = "+" if r < 0.5 else "-"
        a, b = rand_int(rng, 10, 99), rand_int(rng, 10, 99)
    else:
        op = "+" if r < 0.4 else "-" if r < 0.75 else "*"
        if op == "*":
            if difficulty == 2:
                a, b = rand_int(rng, 10, 99), rand_int(rng, 2, 9)
            elif difficulty == 3:
                a, b = rand_int(rng, 100, 999), rand_int(rng, 2, 9)
            else:
                a, b = rand_int(rng, 10, 99), rand_int(rng, 1, 9) * 10 + rand_int(rng, 2, 9)
        else:
            lo = {2: (100, 10), 3: (1000, 100), 4: (1000, 1000)}[difficulty]
            a, b = rand_int(rng, lo[0], 10 * lo[0] - 1), rand_int(rng, lo[1], 10 * lo[0] - 1)
    if op == "-" and a < b:
        a, b = b, a
    if op == "*" and b > a:
        a, b = b, a
    ans = a + b if op == "+" else a - b if op == "-" else a * b
    expr = f"{a}{op}{b}"
    return {"task": "arith", "prompt": rand_choice(rng, ARITH_PROMPTS[lang]).format(expr), "answer": str(ans),
            "lang": lang, "difficulty": difficulty, "canon": _arith_canon(op, a, b), "a": a, "b": b, "op": op}


def _digits(n: int) -> list:
    return [int(c) for c in reversed(str(n))]           # least significant first


def _from_digits(ds) -> int:
    return int("".join(map(str, reversed(ds))))


def _acc(out) -> str:
    """The digits written so far (least significant first in `out`) as the number reads: "so far 08"."""
    return "".join(map(str, reversed(out)))


def _column(pad, rng, i, pre, expr, v, out_of, word, acc, inverse, slip_value):
    """One column "tens: {pre}{expr}={v}, write d [carry c], so far d{acc}." -> (digit, carry) written.
    With probability P_SLIP the value written is slip_value(v) (a wrong digit fact). In a careful pad the column
    is then checked: inverse(value) -> (the inverse step, its result, the digit it must give back); a failed
    check redoes the column with the right value."""
    def write(ph, val):
        d, c = out_of(val)
        return ph["write"].format(d) + (ph[word].format(c) if c else "") + ph["sofar"].format(f"{d}{acc}"), d, c

    ph = pad.ph
    carry_in = "+1" in expr or "-1" in expr or bool(pre)
    val = slip_value(v) if rng.random() < P_SLIP["carry" if carry_in else "plain"] else v
    w, d, c = write(ph, val)
    pad.add(f"{ph['cols'][min(i, 4)]}: {pre}{expr}={val}, {w}.")
    if pad.careful:
        step, got, want = inverse(val)
        pad.add(ph["check"].format(f"{step}={got}") + " " + (ph["ok"] if got == want else ph["not"].format(want)))
        if got != want:
            w, d, c = write(ph, v)
            pad.add(f"{ph['redo']} {pre}{expr}={v}, {w}.")
            pad.repaired = True
    return d, c


def _off_by_one(v, hi, rng):
    return v + 1 if v < hi and (v == 0 or rng.random() < 0.5) else v - 1


def _last_carry(pad, ndig, c, acc):
    """The column left of the operands takes the final carry: "hundreds: write 1, so far 108."."""
    pad.add(f"{pad.ph['cols'][min(ndig, 4)]}: {pad.ph['write'].format(c)}{pad.ph['sofar'].format(f'{c}{acc}')}.")


def _add_pad(pad, rng, a, b) -> int:
    A, B = _digits(a), _digits(b)
    out, c = [], 0
    for i in range(max(len(A), len(B))):
        x, y = (A[i] if i < len(A) else 0), (B[i] if i < len(B) else 0)
        inverse = lambda val, x=x, y=y, c=c: (f"{val}-{y}" + ("-1" if c else ""), val - y - c, x)   # noqa: E731
        d, c = _column(pad, rng, i, "", f"{x}+{y}" + ("+1" if c else ""), x + y + c, lambda v: (v % 10, v // 10),
                       "carry", _acc(out), inverse, lambda v: _off_by_one(v, 19, rng))
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
            pre, expr, nb, top = "", f"{x}{tail}", 0, x
        else:                                               # borrow: "4-5-1<0, 14-5-1=8, write 8 borrow 1."
            pre, expr, nb, v, top = f"{x}{tail}<0, ", f"1{x}{tail}", 1, v + 10, 10 + x
        inverse = lambda val, y=y, br=br, top=top: (f"{val}+{y}" + ("+1" if br else ""), val + y + br, top)  # noqa
        d, _ = _column(pad, rng, i, pre, expr, v, lambda v, nb=nb: (v, nb), "borrow", _acc(out), inverse,
                       lambda v: _off_by_one(v, 9, rng))
        out.append(d)
        br = nb
    return _from_digits(out)


def _mul1_pad(pad, rng, a, m) -> int:
    out, c = [], 0
    for i, x in enumerate(_digits(a)):
        p = x * m
        if c:       # "2*8=16, 16+4=20": the check undoes the carry (20-4=16), a slip is off by one
            pre, expr, v = f"{x}*{m}={p}, ", f"{p}+{c}", p + c
            inverse = lambda val, c=c, p=p: (f"{val}-{c}", val - c, p)                       # noqa: E731
            slip = lambda v: _off_by_one(v, 89, rng)                                          # noqa: E731
        else:       # "7*8=56": the check divides (56/8=7), a slip is a neighbour in the table (48 or 64)
            pre, expr, v = "", f"{x}*{m}", p
            inverse = (lambda val, x=x: (f"{val}/{m}", val // m, x)) if m > 1 else \
                (lambda val, x=x: (f"{x}*{m}", x * m, val))                      # x*0, x*1: checked by redoing
            slip = lambda v: v + m if v + m <= 9 * m and (v == 0 or rng.random() < 0.5) else v - m   # noqa: E731
        d, c = _column(pad, rng, i, pre, expr, v, lambda v: (v % 10, v // 10), "carry", _acc(out), inverse, slip)
        out.append(d)
    if c:
        _last_carry(pad, len(out), c, _acc(out))
        out.append(c)
    return _from_digits(out)


def _arith_scratch(pad, rng, t) -> str:
    """The problem restated ("87-43."), then digit-by-digit working from the right; returns the final answer as
    written (wrong after a kept slip)."""
    a, b, op = t["a"], t["b"], t["op"]
    pad.add(f"{a}{op}{b}.")
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


def _near_miss(ans: str, rng) -> str:
    """A plausible wrong number: one digit changed, or off by one in some column (a dropped carry)."""
    n = int(ans)
    for _ in range(10):
        if rng.random() < 0.5:
            w = n + rand_choice(rng, (-1, 1)) * 10 ** rand_index(rng, len(ans))
        else:
            i = rand_index(rng, len(ans))
            w = int(ans[:i] + str(rand_index(rng, 10)) + ans[i + 1:])
        if w != n and w >= 0:
            return str(w)
    return str(n + 1)


# ============================================================================================= countdown
# Reach a target with every given number once and + - * /. Level 1: three numbers in 1..9; level 2: four; level 3:
# the 24 game, four numbers in 1..13 and the target always 24. With one target, whether a try hits is whether it
# ends in "=24": a small model learns that at once (tools/learn_to_compare.py --target 24), where matching two
# numbers that both vary takes it most of its pretraining, so at level 3 the search can judge its own tries.
# A worked solution is a written depth-first search (cd_search): the pairs in the order the prompt gives the
# numbers, each pair's moves in a fixed order (x+y, x*y, big-small, big/small), then toward the target with the
# remaining numbers (a closeness heuristic: below the target add or multiply, at or above it subtract or divide).
# Every try is computed and compared with the target ("try 3*5=15, 15+7=22, need 24, no."). A search gives up after
# each failed try with probability P_QUIT (a budget: "so maybe (3*5)+7." is then a wrong answer), so how long the
# model searches decides whether it gets there. A careful search (P_CD_CHECK) checks a hit by the inverse
# operation; a search may claim a hit it did not compute (writing the target for a step's value, the slip a
# small model makes): the check catches it ("check: 24-7=17, not 15. wait, 15+7=22, need 24, no.") and the search
# goes on; unchecked, the false hit is the (wrong) answer.
# The target is a value the search reaches, drawn with weight 1 / (1 + p)^3 where p counts the fixed patterns
# (_cd_patterns) that also reach it, and never the sum or the product of all the numbers nor big*mid-small: no
# pattern a policy could apply without searching solves more than ~10% of the problems.
CD_NUMS = {1: 3, 2: 4, 3: 4}    # how many numbers a problem gives
CD_MAX = {1: 9, 2: 9, 3: 13}    # the numbers are 1..CD_MAX (level 3: the cards of the 24 game)
GAME24 = 24                     # level 3's target, always the same
P_QUIT = {1: 0.3, 2: 0.3, 3: 0.2}   # after each failed try, the written search gives up with this probability
# (level 3's first hit comes ~8 tries in, not ~3: it gives up less readily, and still 3 searches in 4 end wrong)
P_CD_CHECK = 0.5      # share of careful searches: a claimed hit is checked by the inverse operation
P_FALSE_HIT = 0.15    # share of searches that claim a hit they did not compute (at a random failed try)


def _op(x, o, y):
    """x o y for positive integers, or None when the step is not a positive integer (or an input is None)."""
    if x is None or y is None:
        return None
    if o == "/":
        return x // y if y and x % y == 0 else None
    v = x + y if o == "+" else x - y if o == "-" else x * y
    return v if v > 0 else None


def _cd_first(x, y):
    """The moves on a pair, in the order the search tries them: x+y, x*y (times table only), big-small, big/small."""
    hi, lo = max(x, y), min(x, y)
    moves = [(f"{x}+{y}", "+", x + y)]
    if x <= 9 and y <= 9:
        moves.append((f"{x}*{y}", "*", x * y))
    if hi > lo:
        moves.append((f"{hi}-{lo}", "-", hi - lo))
    if lo > 1 and hi % lo == 0:
        moves.append((f"{hi}/{lo}", "/", hi // lo))
    return moves


def _cd_toward(v, r, t):
    """The moves from v with r that head toward t: below it + and a times-table *, at or above it a positive - and
    an exact /; when there is none, v+r."""
    if v < t:
        return [(f"{v}+{r}", "+", v + r)] + ([(f"{v}*{r}", "*", v * r)] if v <= 9 and r <= 9 else [])
    moves = ([(f"{v}-{r}", "-", v - r)] if v > r else []) + ([(f"{v}/{r}", "/", v // r)] if v % r == 0 else [])
    return moves or [(f"{v}+{r}", "+", v + r)]


def cd_search(nums, t) -> list:
    """The written search for target t: a list of tries (steps [(expr, value)], answer expression, hit, group),
    group = (the pair, then the numbers left). Middle steps (four numbers) take the move closest to t; the last
    step writes each move toward t until one hits."""
    tries, n = [], len(nums)
    for i in range(n):
        for j in range(i + 1, n):
            rest = [nums[k] for k in range(n) if k not in (i, j)]
            for e1, _, v in _cd_first(nums[i], nums[j]):
                steps, expr = [(e1, v)], f"({e1})"
                for r in rest[:-1]:
                    e, op, v = min(_cd_toward(v, r, t), key=lambda m: abs(m[2] - t))
                    steps.append((e, v))
                    expr = f"({expr}{op}{r})"
                for e, op, w in _cd_toward(v, rest[-1], t):
                    steps.append((e, w))
                    if w == t:
                        break
                tries.append((steps, f"{expr}{op}{rest[-1]}", steps[-1][1] == t, (nums[i], nums[j], *rest)))
    return tries


@functools.lru_cache(maxsize=None)
def _cd_patterns(nums: tuple) -> Counter:
    """value -> how many fixed patterns reach it. A pattern is what a policy could apply without searching: the
    numbers in the given, ascending or descending order, folded from the left or from the right, with one
    sequence of operations (96 patterns for three numbers)."""
    vals = []
    for xs in (nums, tuple(sorted(nums)), tuple(sorted(nums, reverse=True))):
        for ops in itertools.product("+-*/", repeat=len(xs) - 1):
            left, right = xs[0], xs[-1]
            for x, o in zip(xs[1:], ops):
                left = _op(left, o, x)
            for x, o in zip(xs[-2::-1], ops[::-1]):
                right = _op(x, o, right)
            vals += (left, right)
    return Counter(v for v in vals if v is not None)


@functools.lru_cache(maxsize=None)
def _cd_values(nums: tuple) -> tuple:
    """The values the search's steps reach, heading low, middling or high, and the targets no problem may have:
    the sum and the product of all numbers, a number itself, and big*mid-small."""
    s = sorted(nums)
    excluded = {sum(nums), math.prod(nums), s[-1] * s[-2] - s[0], *nums}
    return {v for t in (1, 50, 1000) for steps, *_ in cd_search(list(nums), t) for _, v in steps}, excluded


def _cd_hit(nums: tuple, t: int):
    """Index of the search's first hit of target t, or None when t is not a target of these numbers (_cd_targets)."""
    hit = next((i for i, tr in enumerate(cd_search(list(nums), t)) if tr[2]), None)
    values, excluded = _cd_values(nums) if hit is not None else ((), ())
    return hit if t in values and 2 <= t <= 99 and t not in excluded else None


@functools.lru_cache(maxsize=None)
def _cd_targets(nums: tuple) -> dict:
    """target -> index of the search's first hit, for every target in 2..99 the search reaches (except the sum
    and the product of all numbers, a number itself, and big*mid-small)."""
    hits = {t: _cd_hit(nums, t) for t in sorted(_cd_values(nums)[0])}
    return {t: k for t, k in hits.items() if k is not None}


def countdown_task(rng, difficulty, lang):
    while True:
        nums = [rand_int(rng, 1, CD_MAX[difficulty]) for _ in range(CD_NUMS[difficulty])]
        if difficulty == 3:
            # the same weight, on the problem: without it, a+b+c-d in descending order would solve 21% of them
            hit = _cd_hit(tuple(nums), GAME24)
            if hit is not None and rng.random() < 1 / (1 + _cd_patterns(tuple(nums))[GAME24]) ** 3:
                t = GAME24
                break
        elif targets := _cd_targets(tuple(nums)):
            patterns = _cd_patterns(tuple(nums))
            t = pick(rng, {x: 1 / (1 + patterns[x]) ** 3 for x in targets})
            hit = targets[t]
            break
    nums_s = ", ".join(map(str, nums))
    return {"task": "countdown", "prompt": rand_choice(rng, COUNTDOWN_PROMPTS[lang]).format(nums=nums_s, t=t),
            "answer": cd_search(nums, t)[hit][1], "lang": lang, "difficulty": difficulty,
            "canon": f"countdown:{','.join(map(str, sorted(nums)))}:{t}", "nums": nums, "target": t, "hit_at": hit}


def _inverse(expr: str, value: int):
    """"15+9", 24 -> ("24-9", 15, 15): a step checked by its inverse -> (inverse step, its result, what it must
    give back); the result is None when the inverse is not exact."""
    a, op, b = re.fullmatch(r"(\d+)([-+*/])(\d+)", expr).groups()
    a, b = int(a), int(b)
    inv = {"+": "-", "-": "+", "*": "/", "/": "*"}[op]
    return f"{value}{inv}{b}", _op(value, inv, b), a


# An ablation of the real search (pretrain.countdown_traces "scripted"): the same layout, but the search is a script, as
# in the first toy world. A few dead ends drawn independently of the problem, then the solution with "yes", every
# time: how long it searches never decides whether it gets there, and it never gives up or slips.
COUNTDOWN_TRACES = ("search", "scripted")
_traces = ["search"]


@contextlib.contextmanager
def countdown_traces(kind: str):
    """Write countdown worked solutions as `kind` ("search": the real search above; "scripted": the ablation)
    inside the block (data.pretrain_corpus under the pretrain section's countdown_traces)."""
    if kind not in COUNTDOWN_TRACES:
        raise ValueError(f"countdown_traces must be one of {COUNTDOWN_TRACES}, got {kind!r}")
    _traces.append(kind)
    try:
        yield
    finally:
        _traces.pop()


def _cd_write_try(pad, group, pair_rest, steps, target, yes: bool):
    """One written try ("try 9+3=12, 12*2=24, need 24, yes."), after naming its pair and what is left when the pair
    is new ("9 and 3, then 2:"); returns the pair now named."""
    if pair_rest != group:
        pad.add(pad.ph["group"].format(*pair_rest[:2], ", ".join(map(str, pair_rest[2:]))))
    body = ", ".join(f"{x}={y}" for x, y in steps)
    pad.add(f"{pad.ph['try']} {body}, {pad.ph['need'].format(target)} " + (pad.ph["yes"] if yes else pad.ph["no"]))
    return pair_rest


def _countdown_scripted(pad, rng, t) -> str:
    """The ablation's trace: 0-3 dead ends (misses of the search, in its order), then the search's first hit."""
    target, tries = t["target"], cd_search(t["nums"], t["target"])
    hit = next(i for i, tr in enumerate(tries) if tr[2])
    misses = [i for i, tr in enumerate(tries) if not tr[2]]
    shown = sorted(rng.sample(misses, min(len(misses), rand_choice(rng, (0, 1, 1, 2, 2, 3))))) + [hit]
    pad.add(f"{', '.join(map(str, t['nums']))} -> {target}.")
    group = None
    for i in shown:
        steps, _, is_hit, pair_rest = tries[i]
        group = _cd_write_try(pad, group, pair_rest, steps, target, is_hit)
    step, got, _ = _inverse(tries[hit][0][-1][0], target)
    if pad.careful and got is not None:
        pad.add(pad.ph["check"].format(f"{step}={got}") + " " + pad.ph["ok"])
    pad.add(pad.ph["so"].format(f"{tries[hit][1]}={target}"))
    return tries[hit][1]


def _countdown_scratch(pad, rng, t) -> str:
    """The search written out: the numbers and the target restated ("2, 7, 3 -> 17."), then, pair by pair ("2 and 7,
    then 3:"), tries until a (checked) hit, or until it gives up; returns the answer written. Every number a try
    needs stands a few tokens before it, and each try ends by restating the target next to the values it compares
    ("9+3=12, 9*3=27, need 17, no."): what a small model cannot do over long distances, it does not have to."""
    if _traces[-1] == "scripted":
        return _countdown_scripted(pad, rng, t)
    target, tries = t["target"], cd_search(t["nums"], t["target"])
    careful = rng.random() < P_CD_CHECK
    false_at = rand_index(rng, len(tries)) if rng.random() < P_FALSE_HIT else -1
    pad.add(f"{', '.join(map(str, t['nums']))} -> {target}.")
    best, group = None, None                                # (distance to the target, expression) of the closest try
    for i, (steps, expr, hit, pair_rest) in enumerate(tries):
        e, v = steps[-1]
        claimed = i == false_at and not hit
        group = _cd_write_try(pad, group, pair_rest, steps[:-1] + [(e, target if claimed else v)], target,
                              hit or claimed)
        if hit or claimed:
            step, got, want = _inverse(e, target)
            if careful and got is not None:
                pad.add(pad.ph["check"].format(f"{step}={got}") + " " +
                        (pad.ph["ok"] if got == want else pad.ph["not"].format(want)))
            if claimed and careful and got is not None:
                pad.add(f"{pad.ph['wait'].format(f'{e}={v}')} {pad.ph['need'].format(target)} {pad.ph['no']}")
                pad.repaired = True
            else:
                pad.add(pad.ph["so"].format(f"{expr}={target}"))
                return expr
        if best is None or abs(v - target) < best[0]:
            best = (abs(v - target), expr)
        if rng.random() < P_QUIT[t["difficulty"]]:
            break
    pad.add(pad.ph["maybe"].format(best[1]))
    return best[1]


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


def _spec(key, entry, en, zh, expr, wrong, plan_en, plan_zh) -> dict:
    return dict(key=key, entry=entry, en=en, zh=zh, expr=expr, wrong=wrong, plan_en=plan_en, plan_zh=plan_zh)


def code_spec(name: str, rng) -> dict:
    """Template `name` with its constants drawn -> {key, entry, en, zh, expr, wrong, plan_en, plan_zh}."""
    for make in (_number_spec, _string_spec, _list_or_int_spec):
        s = make(name, rng)
        if s is not None:
            return s
    raise ValueError(f"unknown code template {name!r}")


def _number_spec(name: str, rng):
    if name == "affine":
        a, b, sign = rand_int(rng, 2, 12), rand_int(rng, 0, 20), rand_choice(rng, "+-")
        e = f"x*{a}{sign}{b}"
        return _spec(f"{a}{sign}{b}", rand_choice(rng, "fgh"), f"returns {e}", f"返回 {e}", e, f"x*{b}{sign}{a}",
                    f"multiply x by {a}, then {'add' if sign == '+' else 'subtract'} {b}.",
                    f"x 乘 {a}, 再{'加' if sign == '+' else '减'} {b}.")
    if name == "clamp":
        k = rand_int(rng, 0, 20)
        return _spec(k, f"at_most_{k}", f"returns the smaller of x and {k}", f"返回 x 和 {k} 里小的那个",
                    f"min(x, {k})", f"max(x, {k})", "use min.", "用 min.")
    if name == "square_plus":
        a = rand_int(rng, 1, 20)
        return _spec(a, rand_choice(rng, "fgh"), f"returns x*x+{a}", f"返回 x*x+{a}", f"x*x+{a}", f"x*2+{a}",
                    f"square x, then add {a}.", f"x 乘 x, 再加 {a}.")
    if name == "mod":
        k = rand_int(rng, 2, 12)
        return _spec(k, f"mod_{k}", f"returns the remainder of x divided by {k}", f"返回 x % {k}", f"x % {k}",
                    f"x // {k}", f"use x % {k}.", f"用 x % {k}.")
    return None


def _string_spec(name: str, rng):
    if name == "reverse":
        return _spec(None, rand_choice(rng, ("reverse", "rev", "flip", "backwards", "mirror")),
                    "returns the string s reversed", "返回倒过来的 s", "s[::-1]", "s[1:]", "slice with step -1.",
                    "用 s[::-1].")
    if name == "first_k":
        k = rand_int(rng, 1, 5)
        return _spec(k, f"first_{k}", f"returns the first {k} characters of the string s", f"返回 s 的前 {k} 个字母",
                    f"s[:{k}]", f"s[{k}:]", f"slice s[:{k}].", f"用 s[:{k}].")
    if name == "last_k":
        k = rand_int(rng, 1, 5)
        return _spec(k, f"last_{k}", f"returns the last {k} characters of the string s", f"返回 s 的后 {k} 个字母",
                    f"s[-{k}:]", f"s[:-{k}]", f"slice s[-{k}:].", f"用 s[-{k}:].")
    if name == "repeat":
        k = rand_int(rng, 2, 6)
        return _spec(k, f"repeat_{k}", f"returns the string s repeated {k} times", f"返回 s 写 {k} 次",
                    f"s*{k}", f"s*{k + 1}", f"multiply the string by {k}.", f"用 s*{k}.")
    if name == "has_char":
        c = rand_choice(rng, LETTERS)
        return _spec(c, f"has_{c}", f"returns True if the string s contains '{c}'", f"s 里有 '{c}' 就返回 True",
                    f"'{c}' in s", f"s.startswith('{c}')", "use the in operator.", "用 in.")
    if name == "count_char":
        c = rand_choice(rng, LETTERS)
        return _spec(c, f"count_{c}", f"returns how many times '{c}' appears in the string s",
                    f"返回 s 里有几个 '{c}'", f"s.count('{c}')", "len(s)", f"use s.count('{c}').",
                    f"用 s.count('{c}').")
    return None


def _list_or_int_spec(name: str, rng):
    if name == "max":
        return _spec(None, rand_choice(rng, ("biggest", "largest", "max_of", "top", "maximum")),
                    "returns the largest number in the list xs", "返回 xs 里最大的数", "max(xs)", "xs[-1]",
                    "use max.", "用 max.")
    if name == "min":
        return _spec(None, rand_choice(rng, ("smallest", "min_of", "lowest", "minimum")),
                    "returns the smallest number in the list xs", "返回 xs 里最小的数", "min(xs)", "xs[0]",
                    "use min.", "用 min.")
    if name == "sum":
        return _spec(None, rand_choice(rng, ("total", "sum_all", "add_up", "list_sum")),
                    "returns the sum of the numbers in the list xs", "返回 xs 里的数的和", "sum(xs)", "len(xs)",
                    "use sum.", "用 sum.")
    if name == "scale":
        k = rand_int(rng, 2, 12)
        return _spec(k, f"times_{k}", f"returns the list xs with every number multiplied by {k}",
                    f"返回 xs 里每个数乘 {k}", f"[x*{k} for x in xs]", f"[x+{k} for x in xs]",
                    f"a list comprehension with x*{k}.", f"每个 x 乘 {k}.")
    if name == "shift":
        k = rand_int(rng, 1, 20)
        return _spec(k, f"plus_{k}", f"returns the list xs with {k} added to every number",
                    f"返回 xs 里每个数加 {k}", f"[x+{k} for x in xs]", f"[x*{k} for x in xs]",
                    f"a list comprehension with x+{k}.", f"每个 x 加 {k}.")
    if name == "count_over":
        k = rand_int(rng, 0, 20)
        return _spec(k, f"count_over_{k}", f"returns how many numbers in the list xs are greater than {k}",
                    f"返回 xs 里有几个数大于 {k}", f"len([x for x in xs if x > {k}])",
                    f"len([x for x in xs if x >= {k}])", f"count the x with x > {k}.", f"数一数有几个 x > {k}.")
    if name == "divisible":
        k = rand_int(rng, 2, 12)
        return _spec(k, "is_even" if k == 2 else f"div_by_{k}",
                    "returns True if n is even" if k == 2 else f"returns True if n is divisible by {k}",
                    f"n 是 {k} 的倍数就返回 True", f"n % {k} == 0", f"n % {k} == 1", f"n % {k} == 0 means divisible.",
                    f"n % {k} 要是 0.")
    if name == "digit_sum":
        return _spec(None, rand_choice(rng, ("digit_sum", "sum_digits", "dsum", "digits_total")),
                    "returns the sum of the digits of the positive integer n", "返回 n 的每一位数字的和",
                    "sum(int(d) for d in str(n))", "len(str(n))", "turn n into a string and add up its digits.",
                    "把每一位数字加起来.")
    return None


def _code_input(arg: str, rng):
    if arg == "x":
        return rand_int(rng, -5, 20)
    if arg == "s":
        return rand_choice(rng, WORDS)
    if arg == "xs":
        return [rand_int(rng, 0, 20) for _ in range(rand_int(rng, 2, 5))]
    return rand_int(rng, 10, 9999)


@functools.lru_cache(maxsize=4096)
def _compiled(code: str, entry: str):
    """The function defined by one of our own template solutions (never model output: that runs in the sandbox
    of rewards.py). Cached: the template space is small."""
    ns = {}
    exec(code, ns)
    return ns[entry]


def code_task(rng, difficulty, lang):
    name = rand_choice(rng, [k for k, (level, _) in CODE_TEMPLATES.items() if level == difficulty])
    arg = CODE_TEMPLATES[name][1]
    s = code_spec(name, rng)
    s["arg"] = arg
    inputs = []
    for _ in range(40):                                     # 3-5 distinct inputs
        x = _code_input(arg, rng)
        if x not in inputs:
            inputs.append(x)
        if len(inputs) == 5:
            break
    inputs = inputs[:rand_int(rng, 3, 5)]
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
    x = rand_choice(rng, t["_inputs"])
    call = f"{s['entry']}({x!r})"
    if pad.slip is not None:
        diff = [x for x in t["_inputs"] if s["fn"](x) != s["wfn"](x)]
        if diff:
            x = rand_choice(rng, diff)
            call = f"{s['entry']}({x!r})"
            pad.add(pad.ph["code_first"].format(s["wrong"]))
            if pad.slip == "wrong":
                return f"def {s['entry']}({s['arg']}):\n    return {s['wrong']}"
            pad.add(pad.ph["code_wait"].format(call, repr(s["fn"](x)), repr(s["wfn"](x)), s["expr"]))
            pad.repaired = True
            return t["answer"]
    pad.add(pad.ph["code_check"].format(call, repr(s["fn"](x))))
    return t["answer"]


# ============================================================================ worked solutions and direct answers
P_CODE_SLIP = {"wrong": 0.10, "fixed": 0.15}    # code: a wrong first body, kept or caught by running a test
# A direct answer is right about as often as a small model answers without working: rarely once the problem has
# more than a couple of columns or a search behind it.
P_DIRECT_RIGHT = {"arith": {1: 0.35, 2: 0.12, 3: 0.04, 4: 0.02}, "countdown": {1: 0.08, 2: 0.04, 3: 0.04},
                  "code": {1: 0.8, 2: 0.8}}


def worked_solution(t, rng):
    """A worked solution of reasoning task t -> (scratchpad text, final answer as written, meta). meta: quality
    ("clean" | "repaired": a check caught a slip and the answer changed | "wrong"), correct, careful, mixed."""
    switch = rand_int(rng, 1, 2) if rng.random() < MIX_FRAC else None
    pad = _Pad(t["lang"], switch)
    pad.careful = rng.random() < (P_CD_CHECK if t["task"] == "countdown" else P_CAREFUL)
    if t["task"] == "code":
        pad.slip = pick(rng, {**P_CODE_SLIP, None: 1 - sum(P_CODE_SLIP.values())})
    ans = {"arith": _arith_scratch, "countdown": _countdown_scratch, "code": _code_scratch}[t["task"]](pad, rng, t)
    correct = countdown_ok(ans, t["nums"], t["target"]) if t["task"] == "countdown" else ans == t["answer"]
    quality = "wrong" if not correct else "repaired" if pad.repaired else "clean"
    meta = {"quality": quality, "correct": correct, "careful": pad.careful, "mixed": pad.mixed,
            "end_lang": "zh" if pad.ph is PH["zh"] else "en"}
    return pad.text(), ans, meta


def countdown_ok(expr: str, nums, target) -> bool:
    """Whether one of our own countdown expressions (never model output: answers.countdown_correct judges those)
    uses each number once and reaches the target."""
    value = eval(expr, {"__builtins__": {}})                # our generator's "(3*5)+7": digits, + - * / ( )
    return value == target and sorted(int(x) for x in re.findall(r"\d+", expr)) == sorted(nums)


def direct_answer(t, rng):
    """A direct answer -> (answer, right?), right with probability P_DIRECT_RIGHT (a plausible wrong one else)."""
    if rng.random() < P_DIRECT_RIGHT[t["task"]][t["difficulty"]]:
        return t["answer"], True
    if t["task"] == "arith":
        return _near_miss(t["answer"], rng), False
    if t["task"] == "countdown":
        misses = [expr for _, expr, hit, _ in cd_search(t["nums"], t["target"]) if not hit]
        return (rand_choice(rng, misses), False) if misses else (t["answer"], True)
    s = t["_spec"]
    return f"def {s['entry']}({s['arg']}):\n    return {s['wrong']}", False


def direct_think(t, ans, lang, rng) -> str:
    ph = PH[lang]
    if t["task"] == "arith":
        return rand_choice(rng, ph["direct"]).format(f"{t['a']}{t['op']}{t['b']}={ans}")
    if t["task"] == "countdown":
        return rand_choice(rng, ph["direct"]).format(f"{ans}={t['target']}")
    return t["_spec"]["plan_" + lang]


def answer_is(t, ans, lang) -> str:
    if t["task"] == "code":
        return PH[lang]["code_is"] + "\n" + ans
    return PH[lang]["answer_is"].format(ans)
