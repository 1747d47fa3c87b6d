"""
Reading an answer out of a model's completion and judging it exactly: the rule-based checks behind R1 §2.2.2's
accuracy reward (rewards.py turns them into rewards).

- extract_answer: the final answer (the last <answer> block, else the last \\boxed{}; for the cold-start layout
  "<|sep|>reasoning<|sep|>summary" the summary's answer);
- math_equal (via normalize_answer, parse_number): the same number exactly (Fractions, never floats) or the
  same normalised string;
- countdown_value / countdown_correct: a countdown expression walked through `ast` with a whitelist, never eval'd;
- extract_code: the fenced code block to run in the sandbox;
- general_equal: normalised exact match for general questions.

Completions are model output, i.e. hostile input: every helper keeps its return type on any input, caps the input
before normalising it (NFKC can expand a character 18x), and parses in linear time (see rewards.py's rules).

    python -m pytest tests/test_rewards.py tests/test_rewards_fuzz.py -q
"""
import ast
import re
import unicodedata
from collections import Counter
from fractions import Fraction

import numpy as np

# Tags of the R1-Zero template (R1 Table 1) and the cold-start separator (our "|special_token|", data.py's "<|sep|>").
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
SEP = "<|sep|>"
# Tokens the decoder may leave at the end of a completion; format rewards ignore them there (and only there).
END_TOKENS = ("<|endoftext|>", "<|pad|>")

# Caps that bound the work done on one completion, whatever its size.
MAX_ANSWER_CHARS = 10_000   # an extracted answer longer than this is wrong (no gold answer is that long)
MAX_NUMBER_CHARS = 200      # longer "numbers" are compared as strings (keeps Fraction/int conversion cheap)
MAX_BOXED_SCAN = 10_000     # how far past "\boxed{" we look for its closing brace
MAX_EXPR_CHARS = 200        # countdown expression length


# ----------------------------------------------------------------------------------------------------------------
# Completions as TRL passes them

def _text(completion):
    """A completion as a string: TRL passes str (standard format) or a list of chat messages (conversational)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))  # the assistant's message is the last one
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    try:
        return "" if completion is None else str(completion)
    except ValueError:   # str() of an int over Python's 4300-digit limit: not text, so no answer in it
        return ""



def _strip_end_tokens(s):
    """Remove trailing EOS/pad tokens (and whitespace). Bounded number of passes: each pass copies the string."""
    s = s.rstrip()
    for _ in range(16):
        for tok in END_TOKENS:
            if s.endswith(tok):
                s = s[: -len(tok)].rstrip()
                break
        else:
            break
    return s


# Characters of a printing category (letter, number, punctuation, symbol) that nevertheless render as blank space:
# the Hangul fillers and the empty Braille pattern. Without them "<think>\u3164</think>" would count as reasoning.
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_ASCII_VISIBLE_RE = re.compile(r"[!-~]")


def _shows(c):
    return unicodedata.category(c)[0] in "LNPS" and c not in _BLANK_GLYPHS


def _visible(s):
    """True if s has a character that shows: a letter, number, punctuation mark or symbol. Whitespace, control and
    format characters (NUL, zero-width spaces and joiners, BOM, bidi marks: categories Cc/Cf/Zs/Zl/Zp),
    unassigned, private-use and surrogate code points, lone combining marks (variation selectors, the grapheme
    joiner) and _BLANK_GLYPHS are not content. Normal text answers from its first characters. A long invisible
    string costs C-speed passes (an ASCII regex, an encode, a numpy bincount of its code points) and then one
    unicodedata lookup per DISTINCT code point: linear, at worst ~0.3 s for a megabyte of distinct invisible ones."""
    if any(_shows(c) for c in s[:64]) or _ASCII_VISIBLE_RE.search(s):
        return True
    try:
        raw = s.encode("utf-32-le")
    except UnicodeEncodeError:   # lone surrogates (invisible anyway): UTF-8's "ignore" drops them at C speed
        raw = s.encode("utf-8", "ignore").decode("utf-8").encode("utf-32-le")
    counts = np.bincount(np.frombuffer(raw, dtype="<u4"), minlength=1)
    return any(_shows(chr(c)) for c in np.flatnonzero(counts).tolist())


_NON_ASCII_RE = re.compile(r"[^\x00-\x7f]")
_UNICODE_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2012": "-", "\u2014": "-", "\u00d7": "*",
                                "\u00f7": "/", "\u2215": "/"})


def _keep_script(m):
    """One non-ASCII character, made safe for NFKC: a superscript or subscript keeps its role ("²" -> "^2",
    "₂" -> "_2"; plain NFKC would make "4²" the number 42) and another compatibility number is parenthesised so its
    digits cannot fuse with a neighbour ("4①" -> "4(1)", not 41). Anything else is left for NFKC."""
    c = m.group()
    decomposition = unicodedata.decomposition(c)
    if decomposition.startswith("<super>"):
        return "^" + unicodedata.normalize("NFKC", c)
    if decomposition.startswith("<sub>"):
        return "_" + unicodedata.normalize("NFKC", c)
    if decomposition.startswith("<") and unicodedata.category(c) == "No":
        return "(" + unicodedata.normalize("NFKC", c) + ")"
    return c


def _nfkc(s, limit):
    """NFKC (full-width digits, ligatures, ...) plus unicode minus/times/divide signs, for a string already capped
    by the caller. NFKC can expand one character 18x ("\ufdfa"), so the result is capped again: longer -> ValueError."""
    if not s.isascii():
        s = unicodedata.normalize("NFKC", _NON_ASCII_RE.sub(_keep_script, s))
        if len(s) > limit:
            raise ValueError("too long after unicode normalisation")
    return s.translate(_UNICODE_SIGNS)


# ----------------------------------------------------------------------------------------------------------------
# Answer extraction

def _last_tag_block(text, open_tag, close_tag):
    """Content of the LAST open_tag ... close_tag block (the innermost one if nested), or None. O(len) via rfind."""
    end = text.rfind(close_tag)
    if end < 0:
        return None
    start = text.rfind(open_tag, 0, end)
    if start < 0:
        return None
    return text[start + len(open_tag): end]


def _balanced_group(text, brace_pos, limit=MAX_BOXED_SCAN):
    """text[brace_pos] == "{": the content up to the matching "}" (nested braces balanced), or None."""
    depth = 0
    stop = min(len(text), brace_pos + limit)
    for i in range(brace_pos, stop):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[brace_pos + 1: i]
    return None


def _last_boxed(text):
    r"""Content of the last \boxed{...} with balanced braces, or None. Tries the last 3 occurrences at most."""
    end = len(text)
    for _ in range(3):
        pos = text.rfind("\\boxed{", 0, end)
        if pos < 0:
            return None
        content = _balanced_group(text, pos + len("\\boxed"))
        if content is not None:
            return content
        end = pos  # unbalanced: try the previous one
    return None


def _answer_is(text):
    """The X in a closing "... the answer is X" (or "答案是 X"), up to the end of its line, or None."""
    tail = text[-MAX_ANSWER_CHARS:]
    low = tail.lower()
    best, best_len = -1, 0
    for phrase in ("answer is", "答案是", "答案为"):
        pos = low.rfind(phrase)
        if pos > best:
            best, best_len = pos, len(phrase)
    if best < 0:
        return None
    rest = tail[best + best_len:].lstrip(" :：\t")
    line = rest.split("\n", 1)[0].strip().strip("*").strip()
    return line.rstrip(".。").strip() or None


def split_cold_start(text):
    """(reasoning, summary) of a cold-start output "<|sep|>reasoning<|sep|>summary", or None if not that shape.

    With more than two separators the reasoning is everything between the first and the last one."""
    first = text.find(SEP)
    last = text.rfind(SEP)
    if first < 0 or last == first:
        return None
    return text[first + len(SEP): last], text[last + len(SEP):]


def extract_answer(text):
    r"""The final answer of a completion, stripped, or None.

    R1-Zero layout: the content of the LAST <answer>...</answer> block, else the last \boxed{...}.
    Cold-start layout "<|sep|>reasoning<|sep|>summary": the answer lives in the summary: its last <answer> block,
    else its last \boxed{}, else the X of "the answer is X", else the whole summary.
    An answer without visible characters counts as no answer, and an empty answer block IS the answer: only text
    after it may still supply one (a \boxed{} inside <think> must not stand in for an answer the model left empty)."""
    text = _text(text)
    parts = split_cold_start(text)
    if parts is not None:
        text = parts[1]
    block = _last_tag_block(text, ANSWER_OPEN, ANSWER_CLOSE)
    if block is not None:
        if _visible(block):
            return block.strip()
        text = text[text.rfind(ANSWER_CLOSE) + len(ANSWER_CLOSE):]
    candidates = [_last_boxed(text)]
    if parts is not None:
        candidates += [_answer_is(text), _strip_end_tokens(text)[-MAX_ANSWER_CHARS:]]
    for c in candidates:
        if c is not None and _visible(c):
            return c.strip()
    return None


# ----------------------------------------------------------------------------------------------------------------
# Math accuracy: normalise, then compare exactly (Fractions, never floats)

_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")   # \left( ... \right) -> ( ... ); not \leftarrow
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}")
_VAR_EQ_RE = re.compile(r"[A-Za-z]\s*=")                        # "x = 5" -> "5"
_ANSWER_PHRASE_RE = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*[:：]?|答案[是为][:：]?", re.IGNORECASE)
# "42 apples", "5 cm", "3 square meters": a number, then one to three words of two or more letters. Single letters
# ("2 x") and the names below are algebra, not units: "2 pi" must not read as 2.
_UNIT_RE = re.compile(r"(\S+)\s+([A-Za-z]{2,}(?:\s+[A-Za-z]{2,}){0,2})")
_NOT_UNITS = {"pi", "sqrt", "mod", "times", "cdot", "and", "or", "plus", "minus", "over", "squared", "cubed"}
# After whitespace runs are collapsed to one space: drop every space except one between a digit (or a comma or a
# decimal point) and a digit. "1 / 2" == "1/2" and "x + 1" == "x+1", but "4 2" stays two numbers, and "2, 333" a list
# (only "2,333", without the space, is a thousands grouping).
_SPACE_RE = re.compile(r"(?<![\d,.]) | (?!\d)")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")
# A decimal with an optional exponent of at most three digits: "1e2" is 100, but "1e999999999" is not a number we
# build (it would be a billion-digit integer), so it is compared as a string.
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?"
_NUMBER_RE = re.compile(_NUMBER)


def _replace_fracs(s):
    r"""\frac{a}{b} (and \frac12, \frac 3 4) -> (a)/(b), in one left-to-right pass: a stack remembers, for each open
    brace, whether it opened a numerator, a denominator or plain braces, so nested fractions never rescan the string
    (linear on any input). Raises ValueError when a \frac lacks an argument or one of its braces never closes."""
    if "\\frac" not in s:
        return s
    out, stack = [], []   # stack: "num" | "den" | "{" per open brace
    need = 0              # arguments the last \frac still waits for: 2 (numerator), 1 (denominator) or 0
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if need and c == " ":          # "\frac 3 4": spaces before an argument are skipped
            pass
        elif need and c == "{":        # a braced argument: its content is scanned as usual, fractions included
            stack.append("num" if need == 2 else "den")
            out.append("(")
            need = 0
        elif need:                     # a one-character argument: "\frac12"
            out.append(f"({c})/" if need == 2 else f"({c})")
            need -= 1
        elif s.startswith("\\frac", i):
            need = 2
            i += len("\\frac")
            continue
        elif c == "{":
            stack.append("{")
            out.append("{")
        elif c == "}" and stack:
            role = stack.pop()
            out.append({"num": ")/", "den": ")", "{": "}"}[role])
            need = 1 if role == "num" else 0
        else:
            out.append(c)
        i += 1
    if need or "num" in stack or "den" in stack:
        raise ValueError("\\frac without its two arguments")
    return "".join(out)


def normalize_answer(ans):
    r"""Canonical string form of a math answer: unicode (NFKC with superscripts kept as exponents, minus signs),
    $ and \( \) delimiters, \boxed, \left/\right, \dfrac/\tfrac/\frac, \text{}, "10{,}000", "the answer is"/"答案是",
    "x = ", a trailing \% or unit ("5 \text{ cm}", "42 apples"), trailing "." or "。", whitespace (kept only between
    digits). Raises ValueError when the LaTeX is malformed or the answer is longer than MAX_ANSWER_CHARS, before or
    after unicode normalisation (the caller scores 0): the length is checked before any other work."""
    s = str(ans)
    if len(s) > MAX_ANSWER_CHARS:
        raise ValueError(f"answer longer than {MAX_ANSWER_CHARS} characters")
    s = _nfkc(s, MAX_ANSWER_CHARS)
    if "\\boxed{" in s:
        boxed = _last_boxed(s)
        s = boxed if boxed is not None else s
    for a, b in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""),
                 ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", " "), ("\\$", ""), ("$", ""),
                 ("\\{", "{"), ("\\}", "}"), ("{,}", ",")):
        s = s.replace(a, b)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _TEXT_RE.sub(r" \1 ", s)   # spaced: "5\text{cm}" is a number and a unit, not the string "5cm"
    s = _replace_fracs(s)
    s = s.strip().rstrip(".。").strip()
    m = _ANSWER_PHRASE_RE.match(s)
    if m:
        s = s[m.end():].strip()
    m = _VAR_EQ_RE.match(s)
    if m:
        s = s[m.end():].strip()
    if s.endswith("\\%"):          # "75\%": MATH-style answers typeset the percent sign; the gold keeps the number
        s = s[:-2].rstrip()
    m = _UNIT_RE.fullmatch(s)
    if m and m.group(2).split()[0].lower() not in _NOT_UNITS and parse_number(m.group(1)) is not None:
        s = m.group(1)
    s = _SPACE_RE.sub("", " ".join(s.split()))
    return s.rstrip(".")           # "405." -> "405"


_CLOSER = {"(": ")", "{": "}"}


def _unwrap(x):
    """Drop parentheses (or braces) that wrap a whole term, keeping a sign in front: "((3))" -> "3", "-(3)" -> "-3",
    "{6}" -> "6". Anything else keeps them ("(1)(2)" is a product, not the number 12). Quadratic in the nesting
    depth, so callers pass short strings only (parse_number: at most MAX_NUMBER_CHARS)."""
    sign = ""
    if x[:2] in ("-(", "+(", "-{", "+{"):
        sign, x = x[0], x[1:]
    while len(x) >= 2 and x[0] in _CLOSER and x[-1] == _CLOSER[x[0]]:
        opener, closer, depth = x[0], x[-1], 0
        for i, c in enumerate(x):  # the first opener must close at the very end
            depth += (c == opener) - (c == closer)
            if depth == 0 and i < len(x) - 1:
                return sign + x
        x = x[1:-1]
    return sign + x


def parse_number(s):
    """An exact Fraction for a normalised answer ("1,234", "+5", "-0.75", "1e2", "3/4", "(-3)/(4)", "{6}"), or None
    (also for a non-string or one longer than MAX_NUMBER_CHARS, checked first)."""
    if not isinstance(s, str) or len(s) > MAX_NUMBER_CHARS:
        return None
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    t = _unwrap(s)
    if _NUMBER_RE.fullmatch(t):
        return Fraction(t)
    if t.count("/") == 1:
        a, b = (_unwrap(x) for x in t.split("/"))
        if _NUMBER_RE.fullmatch(a) and _NUMBER_RE.fullmatch(b) and Fraction(b) != 0:
            return Fraction(a) / Fraction(b)
    return None


def math_equal(pred, gold):
    """True when two answers are the same number (exactly) or, if either is not a number, the same string (spaces
    aside). Always a bool: a malformed or over-long answer (normalize_answer's ValueError) is not equal."""
    if pred is None or gold is None:
        return False
    try:
        p, g = normalize_answer(pred), normalize_answer(gold)
    except ValueError:
        return False
    pn, gn = parse_number(p), parse_number(g)
    if pn is not None or gn is not None:
        return pn is not None and gn is not None and pn == gn
    return p != "" and p.replace(" ", "") == g.replace(" ", "")

# ----------------------------------------------------------------------------------------------------------------
# Countdown: reach `target` with every number of `nums` used exactly once, + - * / and parentheses

_EXPR_CHARS_RE = re.compile(r"[\d\s+\-*/()]*")
_INT_RE = re.compile(r"-?\d+")
_BINOPS = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b,
           "Mult": lambda a, b: a * b, "Div": lambda a, b: a / b}   # Fraction / 0 raises -> reward 0


def _numbers(value):
    """The nums column as a list of ints: [3, 5, 7], ["3", "5"], "3 5 7" or "[3, 5, 7]"."""
    if isinstance(value, str):
        return [int(x) for x in _INT_RE.findall(value[:1000])]
    return [int(x) for x in value]


def _eval_countdown(node, used):
    """Exact value of a whitelisted AST node; appends every number literal to `used`. Anything else -> ValueError.
    Unary minus is allowed only as the sign of a literal (a given negative number): with positive nums it would
    only add ways to spell subtraction, and "-a" alone is not a Countdown move."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and type(node.operand.value) is int:
        used.append(-node.operand.value)
        return Fraction(-node.operand.value)
    if isinstance(node, ast.BinOp) and type(node.op).__name__ in _BINOPS:
        return _BINOPS[type(node.op).__name__](_eval_countdown(node.left, used), _eval_countdown(node.right, used))
    raise ValueError(f"not allowed in a countdown expression: {type(node).__name__}")


def countdown_value(expr, nums):
    """Exact value of a countdown expression that uses each of nums exactly once, or None if it is invalid (not a
    string, longer than MAX_EXPR_CHARS, not an expression, a division by zero, a number used twice, ...).

    Accepted: integers, + - * /, parentheses, spaces (×, ÷ and − are read as *, / and -). Any other character
    (names, calls, attributes, %, ".", "," ...) is rejected before parsing; "**" and "//" pass the character check
    but Pow and FloorDiv are not in the AST whitelist. The string is never eval'd, only walked. The length is
    checked before unicode normalisation (which can expand a character 18x) and again after it."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        return None
    try:
        s = _nfkc(expr, MAX_EXPR_CHARS).strip()
    except ValueError:
        return None
    if not s or not _EXPR_CHARS_RE.fullmatch(s):
        return None
    used = []
    try:   # "1 2" passes the character check but is no expression; the length cap bounds the nesting depth
        value = _eval_countdown(ast.parse(s, mode="eval").body, used)
        return value if Counter(used) == Counter(nums) else None
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, RecursionError, MemoryError):
        return None


def countdown_correct(answer, nums, target):
    """True if `answer` ("(25 - 5) * 4", optionally followed by "= 80") reaches target using each num once.
    Always a bool: a malformed answer, nums or target is False."""
    if not isinstance(answer, str):
        return False
    lhs = answer
    try:
        goal = Fraction(str(target))
        if "=" in answer:  # allow a restated result, but it must be the target ("... = 81" is not accepted for 80)
            lhs, rhs = answer.rsplit("=", 1)
            # the restated result is a number: anything longer is wrong, and is not normalised at all
            if "=" in lhs or len(rhs) > MAX_NUMBER_CHARS or parse_number(normalize_answer(rhs)) != goal:
                return False
        value = countdown_value(lhs, _numbers(nums))
    except (ValueError, TypeError, ArithmeticError):   # malformed nums/target columns, or an unparsable rhs
        return False
    return value is not None and value == goal


# ----------------------------------------------------------------------------------------------------------------
# Code: the block to run

def extract_code(text):
    """The code to run: the last ```python / ```py / ``` fenced block of the answer (of the whole completion when
    there is no answer), else the raw answer; None when there is neither. Only closed blocks among the last 40
    fences count; str.count/rsplit keep it linear (no regex backtracking)."""
    text = _text(text)
    answer = extract_answer(text)
    source = answer if answer is not None else text
    if "```" not in source:
        return answer
    # Fences pair up from the start (1-2, 3-4, ...). Split only the last 40 off the end: the text between fence j
    # and fence j+1 is a block when j is odd, and parts[-1 - m] lies between fences n - m and n - m + 1.
    n = source.count("```")
    k = min(n, 40)
    parts = source.rsplit("```", k)
    for m in range(1, k):
        if (n - m) % 2 == 0:
            continue
        first, _, body = parts[-1 - m].partition("\n")
        if first.strip().lower() in ("", "python", "py", "python3") and body.strip():
            return body.strip("\n")
    return None

# ----------------------------------------------------------------------------------------------------------------
# General tasks: normalised exact match

def _normalize_text(s):
    """Lower case, NFKC (superscripts kept, see _nfkc), single spaces, no quotes or trailing punctuation. For a
    string already capped by the caller."""
    s = _nfkc(str(s), MAX_ANSWER_CHARS).lower()
    s = " ".join(s.split())
    return s.strip().strip("\"'`\u201c\u201d\u2018\u2019\u300c\u300d").rstrip(".。!！?？").strip()


_LETTER_RE = re.compile(r"[^\W\d_]")


def general_equal(pred, gold):
    """Exact match after case/whitespace/trailing-punctuation normalisation; a gold answer that is a bare number
    (no letters) also matches any spelling of that number ("1,000", "1000 people"). Always a bool; answers longer
    than MAX_ANSWER_CHARS (checked before normalising) are not equal."""
    if pred is None or gold is None:
        return False
    try:
        pred, gold = str(pred), str(gold)
        if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
            return False
        p, g = _normalize_text(pred), _normalize_text(gold)
    except ValueError:   # str() of a huge int, or too long after unicode normalisation
        return False
    if p and p == g:
        return True
    # A gold like "3 apples" is text: "3 oranges" must not match it through the number-with-unit rule.
    return not _LETTER_RE.search(g) and math_equal(pred, gold) and parse_number(normalize_answer(gold)) is not None
