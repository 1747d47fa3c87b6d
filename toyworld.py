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
import functools
import zlib

# ======================================================================================== held-out split
EVAL_EVERY = 8   # 1 canonical problem in 8 is held out for evaluation


def split_of(canon: str) -> str:
    """"eval" or "train", from a stable hash (crc32, not Python's salted hash) of the canonical problem."""
    return "eval" if zlib.crc32(canon.encode()) % EVAL_EVERY == 0 else "train"


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
ARITH_LEVELS = (1, 2, 3, 4)


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
            w = n + rand_choice(rng, (-1, 1)) * 10 ** rand_index(rng, len(ans))
        else:
            i = rand_index(rng, len(ans))
            w = int(ans[:i] + str(rand_index(rng, 10)) + ans[i + 1:])
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
        i, j = rand_index(rng, len(items)), rand_index(rng, len(items) - 1)
        j += j >= i                                         # two distinct positions
        (x, ex, px), (y, ey, py) = items[i], items[j]
        items = [it for k, it in enumerate(items) if k not in (i, j)]
        op = rand_choice(rng, OPS)
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


def countdown_task(rng, difficulty, lang):
    k = 3 if difficulty == 1 else 4
    while True:
        nums = [rand_int(rng, 1, 15) for _ in range(k)]
        c = _combine(nums, rng)
        if c is not None and 2 <= c.value <= 99 and c.value not in nums:
            break
    nums_s = ", ".join(map(str, nums))
    return {"task": "countdown", "prompt": rand_choice(rng, COUNTDOWN_PROMPTS[lang]).format(nums=nums_s, t=c.value),
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
    for _ in range(rand_choice(rng, (0, 1, 1, 2, 2, 3) if len(t["nums"]) == 3 else (0, 1, 2, 2, 3, 4))):
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
            pad.slipped = True
            x = rand_choice(rng, diff)
            call = f"{s['entry']}({x!r})"
            pad.add(pad.ph["code_first"].format(s["wrong"]))
            if pad.slip == "wrong":
                return f"def {s['entry']}({s['arg']}):\n    return {s['wrong']}"
            pad.add(pad.ph["code_wait"].format(call, repr(s["fn"](x)), repr(s["wfn"](x)), s["expr"]))
            return t["answer"]
    pad.add(pad.ph["code_check"].format(call, repr(s["fn"](x))))
    return t["answer"]


# ============================================================================ worked solutions and direct answers
P_WRONG, P_FIXED, P_VERIFY, P_DIRECT_WRONG = 0.10, 0.15, 0.25, 0.20


def worked_solution(t, rng):
    """A worked solution -> (scratchpad text, final answer as written, meta). Quality: 10% a slip left wrong,
    15% a slip caught by a self-check, else clean (a quarter of those verify the answer)."""
    switch = rand_int(rng, 1, 2) if rng.random() < MIX_FRAC else None
    pad = _Pad(t["lang"], switch)
    r = rng.random()
    quality = "wrong" if r < P_WRONG else "fixed" if r < P_WRONG + P_FIXED else "clean"
    if quality != "clean":
        pad.slip = quality
        pad.slip_at = rand_index(rng, _arith_columns(t)) if t["task"] == "arith" else 0
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


def direct_answer(t, rng):
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

