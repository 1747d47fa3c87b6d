"""
Rewards for minR1: the rule-based rewards of R1 §2.2.2 (accuracy, format, language consistency), a sandbox that
runs model-written code against tests, a reward-model wrapper, and their weighted combination.

Every reward has TRL's reward-function interface

    f(prompts, completions, **columns) -> list[float]

where `completions` are the texts AFTER the prompt (for R1-Zero, what follows "Assistant:", e.g.
" <think> 2+2 is 4 </think> <answer> 4 </answer>") and `columns` are the dataset's fields as lists aligned with
the completions (answer, task, nums, target, tests, entry, lang, ...). Unknown columns are ignored, so the same
function plugs into grpo.py or into TRL's GRPOTrainer(reward_funcs=[...]).

    from rewards import accuracy_reward, format_reward, combine
    reward = combine([(accuracy_reward, 1.0), (format_reward, 1.0)])   # R1: Reward_rule = acc + format
    reward(prompts, completions, task=["arith"] * n, answer=answers)      # -> list[float]
    reward.components(prompts, completions, ...)                          # -> {"accuracy_reward": [...], ...}

    python rewards.py            # scores a few example completions and reports what the code sandbox isolates
    python -m pytest tests/test_rewards.py -q

Robustness rules (the completions are model output, i.e. hostile input):
- no reward ever raises on a completion or hangs: per-sample work is wrapped (malformed -> 0.0), all parsing is
  str.find/rfind/count or regexes without nested quantifiers (linear time), and inputs are capped in length;
- model output is never eval'd: countdown expressions go through `ast` with a whitelist and exact Fractions;
  code runs only inside the sandbox (run_code): a separate `python -I` process with an empty environment,
  rlimits, its own session, namespaces and an unprivileged uid where the machine allows (see run_code).
"""
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

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
MAX_COT_CHARS = 200_000     # language consistency counts words in the first this-many characters of the CoT
MAX_EXPR_CHARS = 200        # countdown expression length
MAX_CODE_CHARS = 50_000     # code longer than this is not run (score 0)
MAX_TESTS = 100             # tests per task run in the sandbox
MAX_TEST_CHARS = 10_000     # per test


# ----------------------------------------------------------------------------------------------------------------
# Columns and completions as TRL passes them

def _text(completion):
    """A completion as a string: TRL passes str (standard format) or a list of chat messages (conversational)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))  # the assistant's message is the last one
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return "" if completion is None else str(completion)


def _column(values, n, name, default=None):
    """A dataset column as a list of length n (None -> all default). A length mismatch is a caller bug: raise."""
    if values is None:
        return [default] * n
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        return [values] * n  # a scalar shared by every sample (handy outside TRL)
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


def _safe(fn, *args):
    """Per-sample guard: a malformed completion scores 0.0 instead of crashing the training step."""
    try:
        value = float(fn(*args))
        return value if math.isfinite(value) else 0.0
    except Exception:  # noqa: BLE001 - by design: any failure on model output is a zero reward
        return 0.0


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
    An empty answer counts as no answer."""
    text = _text(text)
    parts = split_cold_start(text)
    if parts is not None:
        summary = parts[1]
        candidates = (_last_tag_block(summary, ANSWER_OPEN, ANSWER_CLOSE), _last_boxed(summary),
                      _answer_is(summary), _strip_end_tokens(summary)[-MAX_ANSWER_CHARS:])
    else:
        candidates = (_last_tag_block(text, ANSWER_OPEN, ANSWER_CLOSE), _last_boxed(text))
    for c in candidates:
        if c is not None and c.strip():
            return c.strip()
    return None


# ----------------------------------------------------------------------------------------------------------------
# Math accuracy: normalise, then compare exactly (Fractions, never floats)

_UNICODE_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2012": "-", "\u2014": "-", "\u00d7": "*",
                                "\u00f7": "/", "\u2215": "/"})
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")   # \left( ... \right) -> ( ... ); not \leftarrow
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}")
_VAR_EQ_RE = re.compile(r"[A-Za-z]\s*=")                        # "x = 5" -> "5"
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)"                            # no exponent: "1e999999999" must not be built
_NUMBER_RE = re.compile(_NUMBER)


def _frac_group(s, i):
    r"""An argument of \frac starting at s[i] (after spaces): {balanced} or a single character. -> (arg, next_i)."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise ValueError("\\frac without arguments")
    if s[i] == "{":
        arg = _balanced_group(s, i, limit=len(s))
        if arg is None:
            raise ValueError("unbalanced braces in \\frac")
        return arg, i + len(arg) + 2
    return s[i], i + 1


def _replace_fracs(s):
    r"""\frac{a}{b} (and \frac12) -> (a)/(b). The rightmost \frac has no \frac inside its arguments, so replacing
    right to left never needs recursion; answers are short (capped), so the O(n^2) worst case is harmless."""
    for _ in range(len(s)):
        pos = s.rfind("\\frac")
        if pos < 0:
            return s
        num, i = _frac_group(s, pos + len("\\frac"))
        den, i = _frac_group(s, i)
        s = f"{s[:pos]}({num})/({den}){s[i:]}"
    return s


def normalize_answer(ans):
    r"""Canonical string form of a math answer: unicode (NFKC, minus signs), $ and \( \) delimiters, \boxed,
    \left/\right, \dfrac/\tfrac/\frac, \text{}, "x = ", trailing ".", whitespace. Raises ValueError when the
    LaTeX is malformed (the caller scores 0)."""
    s = unicodedata.normalize("NFKC", str(ans)).translate(_UNICODE_SIGNS)
    if "\\boxed{" in s:
        boxed = _last_boxed(s)
        s = boxed if boxed is not None else s
    for a, b in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""),
                 ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", " "), ("\\$", ""), ("$", ""),
                 ("\\{", "{"), ("\\}", "}")):
        s = s.replace(a, b)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _TEXT_RE.sub(r"\1", s)
    s = _replace_fracs(s)
    s = s.strip()
    m = _VAR_EQ_RE.match(s)
    if m:
        s = s[m.end():]
    s = "".join(s.split())   # all whitespace: "1 / 2" == "1/2", "x + 1" == "x+1"
    return s.rstrip(".")     # "405." -> "405"


def _unwrap(x):
    """Drop parentheses that wrap a whole term, keeping a sign in front: "((3))" -> "3", "-(3)" -> "-3".
    Anything else keeps its parentheses ("(1)(2)" is a product, not the number 12)."""
    sign = ""
    if x[:2] in ("-(", "+("):
        sign, x = x[0], x[1:]
    while x.startswith("(") and x.endswith(")"):
        depth = 0
        for i, c in enumerate(x):  # the first "(" must close at the very end
            depth += (c == "(") - (c == ")")
            if depth == 0 and i < len(x) - 1:
                return sign + x
        x = x[1:-1]
    return sign + x


def parse_number(s):
    """An exact Fraction for a normalised answer ("1,234", "+5", "-0.75", "3/4", "(-3)/(4)"), or None."""
    if len(s) > MAX_NUMBER_CHARS:
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
    """True when two answers are the same number (exactly) or, if either is not a number, the same string."""
    if pred is None or gold is None or len(str(pred)) > MAX_ANSWER_CHARS:
        return False
    p, g = normalize_answer(pred), normalize_answer(gold)
    pn, gn = parse_number(p), parse_number(g)
    if pn is not None or gn is not None:
        return pn is not None and gn is not None and pn == gn
    return p == g and p != ""


def math_reward(prompts, completions, answer=None, **columns):
    """1.0 if the completion's final answer equals the gold answer (R1 §2.2.2 accuracy reward), else 0.0."""
    answers = _column(answer, len(completions), "answer")
    return [_safe(lambda c, a: float(a is not None and math_equal(extract_answer(c), str(a))), c, a)
            for c, a in zip(completions, answers)]


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
    import ast  # imported here, not at the top: the sandbox child imports this file and never needs ast
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
    """Exact value of a countdown expression that uses each of nums exactly once, or None if it is invalid.

    Accepted: integers, + - * /, parentheses, spaces (×, ÷ and − are read as *, / and -). Any other character
    (names, calls, attributes, %, ".", "," ...) is rejected before parsing; "**" and "//" pass the character check
    but Pow and FloorDiv are not in the AST whitelist. The string is never eval'd, only walked."""
    import ast
    s = unicodedata.normalize("NFKC", expr).translate(_UNICODE_SIGNS).strip()
    if not s or len(s) > MAX_EXPR_CHARS or not _EXPR_CHARS_RE.fullmatch(s):
        return None
    tree = ast.parse(s, mode="eval")
    used = []
    value = _eval_countdown(tree.body, used)
    return value if Counter(used) == Counter(nums) else None


def countdown_correct(answer, nums, target):
    """True if `answer` ("(25 - 5) * 4", optionally followed by "= 80") reaches target using each num once."""
    if answer is None:
        return False
    lhs = answer
    if "=" in answer:  # allow a restated result, but it must be the target ("... = 81" is not accepted for 80)
        lhs, rhs = answer.rsplit("=", 1)
        if "=" in lhs or parse_number(normalize_answer(rhs)) != Fraction(str(target)):
            return False
    try:
        value = countdown_value(lhs, _numbers(nums))
    except ZeroDivisionError:
        return False
    return value is not None and value == Fraction(str(target))


def countdown_reward(prompts, completions, nums=None, target=None, **columns):
    """1.0 if the answer is a valid countdown expression equal to target, else 0.0."""
    n = len(completions)
    nums_col, target_col = _column(nums, n, "nums"), _column(target, n, "target")
    def one(c, ns, t):
        return float(ns is not None and t is not None and countdown_correct(extract_answer(c), ns, t))
    return [_safe(one, c, ns, t) for c, ns, t in zip(completions, nums_col, target_col)]


# ----------------------------------------------------------------------------------------------------------------
# Code: run the completion's code against the task's tests in a sandbox
#
# Process tree (the trainer never runs model code itself; no preexec_fn, so it is safe from the thread pool):
#   trainer --Popen(python -I rewards.py --sandbox-child, env={}, new session, cwd=fresh temp dir)--> P0
#   P0 (trusted): unshare the mount, net, ipc, uts and pid namespaces (as root; otherwise inside a new user
#        namespace), make every mount private, put a size-capped tmpfs on the work dir and empty ones on /tmp,
#        /var/tmp and /dev/shm, make the interpreter's directories reachable for nobody; fork -> P1
#   P1 (trusted; pid 1 of the new pid namespace): mount a fresh /proc; fork -> P2; when P2 exits, P1 exits and the
#        kernel kills everything left in the namespace (escaped grandchildren, daemons, fork-bomb children)
#   P2 (untrusted from here on): rlimits (CPU, address space, file size, processes, open files, no core), drop to
#        uid/gid 65534 (nobody) when root, no_new_privs, stdio -> /dev/null; exec the solution, then each test, each
#        under a SIGALRM step timeout; after each step one "token\ttest\ti\tok|fail" line on a private fd.
# On the wall-clock timeout the trainer SIGKILLs the whole process group (P0, P1, and P2 unless it setsid'ed;
# P1's death then takes the pid namespace down with it).
#
# What this protects (tests/test_rewards.py checks each on this machine; sandbox_features() says what applied):
#   the trainer's environment (env={}); the trainer and its other processes (another pid namespace, and as nobody
#   it may not signal root's processes); files (nobody cannot write root-owned paths; /tmp, /var/tmp, /dev/shm are
#   private and vanish with it; its own dir is a tmpfs of file_mb); the network (an empty network namespace: not
#   even the host's loopback); the machine's CPU, memory and process table (RLIMIT_CPU per process, RLIMIT_AS
#   per process, RLIMIT_NPROC per uid, the wall-clock kill); leftovers (the pid namespace dies with P1).
# What it does not:
#   - reading: everything world-readable stays readable (the repo, the data, /etc, other users' 0644 files);
#   - the verdict is produced in the process that ran the model's code: a deliberately adversarial solution can
#     forge it (dig the token out of the harness's memory and write to its fd, or return objects whose __eq__ is
#     always True, or patch builtins the tests use). Printing fake results or exiting early gets nothing;
#   - kernel attack surface: no seccomp filter; no cgroup, so memory is bounded only by processes x RLIMIT_AS
#     (max_procs * memory_mb) and CPU time by processes x RLIMIT_CPU within the wall clock;
#   - concurrent sandboxes share the nobody uid: one fork bomb uses up RLIMIT_NPROC for the others' forks/threads;
#   - fallbacks: without namespaces (unprivileged, no user namespaces) there is no network isolation, no private
#     /tmp and no cleanup of processes that setsid(); without root and without a user namespace the code runs as the
#     trainer's own user and CAN signal it. The tests fail loudly on such a machine (test_sandbox_isolation_available).

NOBODY = 65534
START_GRACE = 0.5   # seconds the child may spend starting up and reporting on top of its timeout
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38


@dataclass
class SandboxResult:
    passed: int                 # tests that ran to completion without raising
    total: int                  # tests given
    status: str                 # "ok" | "timeout" | "skipped" (nothing run: no tests / code too long)
    seconds: float = 0.0        # wall time of the child
    features: tuple = ()        # isolation the child actually got (see sandbox_features)
    errors: list = field(default_factory=list)  # "solution: NameError(...)" / "test 3: AssertionError()" (short)
    log: str = ""               # the trusted part's stderr (setup problems), truncated

    @property
    def score(self):
        return self.passed / self.total if self.total else 0.0


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


def _tests_list(tests):
    """tests column entry -> list of str: a list of assert strings, a JSON list string, or one string."""
    if tests is None:
        return []
    if isinstance(tests, str):
        try:
            decoded = json.loads(tests)
            tests = decoded if isinstance(decoded, list) else [tests]
        except ValueError:
            tests = [tests]
    return [str(t) for t in tests]


def run_code(code, tests, timeout=4.0, step_timeout=None, memory_mb=256, max_procs=16, file_mb=8):
    """Run `code`, then each test (a Python snippet, usually one assert) in one sandboxed child process.

    timeout: seconds of work for the whole child: the solution and each test are stopped after step_timeout
    (SIGALRM inside the child; default = timeout), and the child is killed (its process group and pid namespace)
    at timeout + START_GRACE seconds of wall clock, whatever it does with the alarm;
    memory_mb: RLIMIT_AS per process; max_procs: RLIMIT_NPROC (per uid: all concurrent sandboxes share it when
    they run as nobody); file_mb: RLIMIT_FSIZE and the size of each private tmpfs.
    Never raises on model output; returns a SandboxResult."""
    tests = _tests_list(tests)[:MAX_TESTS]
    if not isinstance(code, str) or len(code) > MAX_CODE_CHARS or not tests:
        return SandboxResult(0, len(tests), "skipped")
    tests = [t[:MAX_TEST_CHARS] for t in tests]
    token = os.urandom(16).hex()  # result lines must carry it: printing "ok" from the solution forges nothing
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="minr1-sandbox-") as tmp:   # 0700: the child (nobody) cannot see in
        work = os.path.join(tmp, "work")
        os.mkdir(work, 0o700)
        if os.geteuid() == 0:
            os.chown(work, NOBODY, NOBODY)
        with open(os.path.join(tmp, "results"), "w+b") as res, open(os.path.join(tmp, "log"), "w+b") as log, \
                open(os.path.join(tmp, "payload"), "w+b") as payload:
            payload.write(json.dumps({
                "token": token, "fd": res.fileno(), "code": code, "tests": tests,
                "step_timeout": float(step_timeout or timeout), "cpu_s": int(math.ceil(timeout)) + 1,
                "memory_mb": int(memory_mb), "max_procs": int(max_procs), "file_mb": int(file_mb),
            }).encode())
            payload.seek(0)
            proc = subprocess.Popen(
                [sys.executable, "-I", os.path.abspath(__file__), "--sandbox-child"],
                stdin=payload, stdout=log, stderr=log, cwd=work, env={},   # env={}: nothing inherited
                start_new_session=True, pass_fds=(res.fileno(),), close_fds=True)
            status = "ok"
            try:
                proc.wait(timeout=timeout + START_GRACE)
            except subprocess.TimeoutExpired:
                status = "timeout"
            finally:
                try:  # also reaps stragglers of a finished run that stayed in the group
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
            seconds = time.monotonic() - t0
            res.seek(0)
            lines = res.read(1 << 20).decode("utf-8", "replace").splitlines()
            log.seek(0)
            log_text = log.read(4000).decode("utf-8", "replace")
    ok, errors, features = {}, [], ()
    for line in lines:
        f = line.split("\t")
        if f[0] != token or len(f) < 3:
            continue
        if f[1] == "features":
            features = tuple(x for x in f[2].split(",") if x)
        elif f[1] == "solution" and f[2] != "ok":
            errors.append("solution: " + (f[3] if len(f) > 3 else ""))
        elif f[1] == "test" and len(f) >= 4 and f[2].isdigit():
            i = int(f[2])
            if i < len(tests) and i not in ok:   # first report per test wins
                ok[i] = f[3] == "ok"
                if not ok[i] and len(f) > 4:
                    errors.append(f"test {i}: {f[4]}")
    return SandboxResult(sum(ok.values()), len(tests), status, seconds, features, errors, log_text)


_FEATURES = None


def sandbox_features():
    """The isolation this machine gives sandboxed code (cached): a subset of
    user (user namespace, non-root only), mnt, net, ipc, uts, pid (namespaces), tmpfs (private work dir and /tmp),
    proc (own /proc), rlimits, uid (runs as nobody), nnp (no_new_privs), caps (capabilities dropped, non-root),
    stdlib (the standard library is importable at the sandbox uid)."""
    global _FEATURES
    if _FEATURES is None:
        _FEATURES = frozenset(run_code("pass", ["pass"]).features)
    return _FEATURES


def code_reward(prompts, completions, tests=None, all_or_nothing=False, max_workers=None, timeout=4.0, **columns):
    """Fraction of the task's tests the completion's code passes (or 1/0 with all_or_nothing), run in the sandbox
    with one child process per completion and a small thread pool across completions (R1 §2.2.2: code accuracy
    by compiling and running test cases)."""
    n = len(completions)
    tests_col = _column(tests, n, "tests")

    def one(args):
        c, t = args
        try:
            code = extract_code(c)
            if code is None:
                return 0.0
            r = run_code(code, t, timeout=timeout)
            return float(r.passed == r.total and r.total > 0) if all_or_nothing else r.score
        except Exception:  # noqa: BLE001 - a sandbox failure on one sample is a zero, not a crashed step
            return 0.0

    workers = max(1, min(n, max_workers or min(8, os.cpu_count() or 1)))
    if n <= 1 or workers == 1:
        return [one(a) for a in zip(completions, tests_col)]
    from concurrent.futures import ThreadPoolExecutor  # here: keeps the sandbox child's startup short
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, zip(completions, tests_col)))


def _libc_call(libc, fn, *args):
    """A libc call through ctypes: True on success."""
    return getattr(libc, fn)(*args) == 0


def _expose_to_nobody(libc, paths, rounds=4):
    """Inside the sandbox's mount namespace, make `paths` (the interpreter's sys.path) reachable for uid nobody.
    Python may live under a 0700 directory (here: pyenv in /root); nobody could then import no module that the
    trusted part had not already loaded. For each closed ancestor D on the way to a path we cover D with an empty
    0755 tmpfs and bind-mount back only the child we need: the sandbox sees /root/.pyenv but nothing else of /root.
    Deeper closed directories are handled in the next round."""
    for _ in range(rounds):
        blocked = {}
        for p in paths:
            parts = os.path.realpath(p).strip("/").split("/")
            for k in range(1, len(parts)):
                d = "/" + "/".join(parts[:k])
                if not os.stat(d).st_mode & 0o001:  # no "x" for others: nobody cannot pass through D
                    blocked.setdefault(d, set()).add(parts[k])
                    break
        if not blocked:
            return
        for d, children in blocked.items():
            if not _cover(libc, d, b"size=1m,mode=0755", children):
                return


def _cover(libc, d, options, children=()):
    """Mount an empty tmpfs (mount options `options`) over directory d, then bind-mount back the entries
    `children` of d (names), so that only they stay visible under d. Returns whether the tmpfs was mounted."""
    keep = {c: os.open(os.path.join(d, c), os.O_PATH) for c in children}  # handles survive the cover
    ok = _libc_call(libc, "mount", b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options)
    for c, fd in keep.items():
        if ok:
            target = os.path.join(d, c)
            os.makedirs(target, 0o755, exist_ok=True)
            _libc_call(libc, "mount", f"/proc/self/fd/{fd}".encode(), target.encode(), None, MS_BIND | MS_REC, None)
        os.close(fd)
    return ok


def _sandbox_child():
    """Entry point of the sandbox child (python -I rewards.py --sandbox-child). Runs in P0, then forks P1 and P2.
    Everything before the "untrusted from here" line is our code; the payload arrives on stdin."""
    import ctypes
    payload = json.loads(sys.stdin.buffer.read())
    token, fd = payload["token"], payload["fd"]

    def report(*fields):
        line = "\t".join([token] + [str(x).replace("\t", " ").replace("\n", " ") for x in fields]) + "\n"
        os.write(fd, line.encode("utf-8", "replace"))

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    root = os.geteuid() == 0
    features = []
    # Namespaces (best effort, each reported). Without root, a user namespace grants the rights for the others.
    if not root:
        uid, gid = os.getuid(), os.getgid()
        if _libc_call(libc, "unshare", CLONE_NEWUSER):
            try:
                for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"0 {uid} 1"),
                                   ("/proc/self/gid_map", f"0 {gid} 1")):
                    with open(path, "w") as f:
                        f.write(text)
                features.append("user")
            except OSError:
                pass
    if root or "user" in features:
        for name, flag in (("mnt", CLONE_NEWNS), ("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC),
                           ("uts", CLONE_NEWUTS), ("pid", CLONE_NEWPID)):
            if _libc_call(libc, "unshare", flag):
                features.append(name)
    mb = payload["file_mb"]
    if "mnt" in features and _libc_call(libc, "mount", None, b"/", None, MS_REC | MS_PRIVATE, None):
        # Our mounts stay in this namespace (private propagation). The work dir becomes a size-capped tmpfs (its
        # disk use is bounded), then /tmp, /var/tmp and /dev/shm are covered by empty private tmpfs: writes to the
        # world-writable places land in memory that dies with the sandbox.
        work = os.getcwd()
        owner = f",uid={NOBODY},gid={NOBODY}" if root else ""
        flags = MS_NOSUID | MS_NODEV
        if _libc_call(libc, "mount", b"tmpfs", work.encode(), b"tmpfs", flags, f"size={mb}m,mode=0700{owner}".encode()):
            os.chdir(work)  # the cwd now lies on the new tmpfs
            # the interpreter itself may live there (a virtual environment under /tmp): keep its top directory
            real = [os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)]
            if all(_cover(libc, d, f"size={mb}m,mode=1777".encode(),
                          {p[len(d) + 1:].split("/")[0] for p in real if p.startswith(d + "/")})
                   for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(d)):
                features.append("tmpfs")
        if root:
            try:
                _expose_to_nobody(libc, [p for p in sys.path if p and os.path.isdir(p)])
            except OSError:
                pass  # then "stdlib" is missing from the features: imports not yet loaded will fail, nothing worse
    pid = os.fork()
    if pid:  # P0: wait for P1
        _, st = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(st) & 0xFF)
    # P1: pid 1 of the new pid namespace (if any). A /proc of its own hides the trainer's processes.
    if "pid" in features and "mnt" in features and _libc_call(
            libc, "mount", b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None):
        features.append("proc")
    pid = os.fork()
    if pid:  # P1: wait for P2 only; when P1 exits, the kernel kills the rest of the pid namespace
        while True:
            try:
                _, st = os.waitpid(pid, 0)
                os._exit(os.waitstatus_to_exitcode(st) & 0xFF)
            except ChildProcessError:
                os._exit(1)
            except InterruptedError:
                continue
    # P2: limits and privileges, then the untrusted code. Limits only go down; nothing here can be undone by it.
    import resource
    cpu, mem = payload["cpu_s"], payload["memory_mb"] << 20
    for lim, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
                       (resource.RLIMIT_FSIZE, (mb << 20, mb << 20)), (resource.RLIMIT_CORE, (0, 0)),
                       (resource.RLIMIT_NOFILE, (64, 64)),
                       (resource.RLIMIT_NPROC, (payload["max_procs"], payload["max_procs"]))):
        resource.setrlimit(lim, value)
    features.append("rlimits")
    if root:
        # Mandatory when root: running model code as root would defeat everything else. setuid fails -> exception
        # -> no code runs. As nobody it cannot signal the trainer (EPERM), write root-owned files or remount.
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        features.append("uid")
    elif "user" in features and _libc_call(libc, "unshare", CLONE_NEWUSER):
        features.append("caps")  # a nested user namespace: no capabilities left over the mounts made above
    if _libc_call(libc, "prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        features.append("nnp")  # setuid binaries (su, sudo) cannot give privileges back
    if os.access(os.path.dirname(os.__file__), os.R_OK | os.X_OK):
        features.append("stdlib")  # the standard library is importable at this uid
    report("features", ",".join(features))
    devnull = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(devnull, target)
    code, tests, step = payload["code"], payload["tests"], payload["step_timeout"]
    del payload
    me = os.getpid()

    class StepTimeout(BaseException):
        pass

    def on_alarm(signum, frame):
        raise StepTimeout(f"step over {step}s")

    signal.signal(signal.SIGALRM, on_alarm)

    def run(src, name, env):
        try:
            signal.setitimer(signal.ITIMER_REAL, step)
            exec(compile(src, name, "exec", dont_inherit=True), env)
            err = None
        except BaseException as e:  # noqa: BLE001 - SystemExit, timeouts, anything: the step failed
            err = repr(e)[:200]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if os.getpid() != me:  # a fork of the solution reached the harness: it must not report anything
            os._exit(0)
        return err
    # ---- untrusted from here: the solution, then each test in the solution's namespace ----
    env = {"__name__": "__solution__", "__builtins__": __builtins__}
    err = run(code, "<solution>", env)
    report("solution", "ok" if err is None else "fail", err or "")
    for i, test in enumerate(tests):
        terr = run(test, f"<test {i}>", env) if err is None else "solution failed"
        report("test", i, "ok" if terr is None else "fail", terr or "")
    os._exit(0)


# ----------------------------------------------------------------------------------------------------------------
# General tasks: normalised exact match

def _normalize_text(s):
    s = unicodedata.normalize("NFKC", str(s)).lower()
    s = " ".join(s.split())
    return s.strip().strip("\"'`\u201c\u201d\u2018\u2019\u300c\u300d").rstrip(".。!！?？").strip()


def general_equal(pred, gold):
    """Exact match after case/whitespace/trailing-punctuation normalisation (numbers compared exactly too)."""
    if pred is None or gold is None or len(pred) > MAX_ANSWER_CHARS:
        return False
    p, g = _normalize_text(pred), _normalize_text(gold)
    if p and p == g:
        return True
    try:
        return math_equal(pred, gold) and parse_number(normalize_answer(gold)) is not None
    except ValueError:
        return False


def general_reward(prompts, completions, answer=None, **columns):
    answers = _column(answer, len(completions), "answer")
    return [_safe(lambda c, a: float(a is not None and general_equal(extract_answer(c), str(a))), c, a)
            for c, a in zip(completions, answers)]


# ----------------------------------------------------------------------------------------------------------------
# Accuracy: dispatch on the task column

_ACCURACY = {"arith": math_reward, "math": math_reward, "countdown": countdown_reward, "code": code_reward,
             "general": general_reward}
_warned = set()


def accuracy_reward(prompts, completions, task=None, **columns):
    """R1 §2.2.2 accuracy reward, by task: arith/math -> math_reward, countdown -> countdown_reward,
    code -> code_reward (one batched sandbox call), general -> general_reward. No task column -> math.
    An unknown task scores 0.0 (with one warning per name)."""
    n = len(completions)
    prompts = _column(prompts, n, "prompts", "")
    tasks = _column(task, n, "task", "math")
    # Lists of length n are per-sample columns (sliced per task); anything else is an option passed through as is
    # (e.g. all_or_nothing=True for code_reward, or TRL's trainer_state).
    per_sample = {k for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n}
    out = [0.0] * n
    for name in dict.fromkeys(tasks):
        idx = [i for i in range(n) if tasks[i] == name]
        fn = _ACCURACY.get(name)
        if fn is None:
            if name not in _warned:
                _warned.add(name)
                warnings.warn(f"accuracy_reward: unknown task {name!r}; known: {sorted(_ACCURACY)}; scoring 0")
            continue
        sub = {k: ([v[i] for i in idx] if k in per_sample else v) for k, v in columns.items()}
        for i, r in zip(idx, fn([prompts[i] for i in idx], [completions[i] for i in idx], **sub)):
            out[i] = r
    return out


# ----------------------------------------------------------------------------------------------------------------
# Format (R1 §2.2.2): <think> reasoning </think> <answer> answer </answer>; cold start: <|sep|>reasoning<|sep|>summary

def _r1zero_format_ok(text):
    """Optional whitespace, exactly one non-empty <think> block, only whitespace, exactly one non-empty <answer>
    block, only whitespace (trailing EOS/pad tokens are ignored). Nested, swapped, duplicated or unclosed tags and
    any text outside the two blocks fail."""
    t = _strip_end_tokens(text).strip()
    if not (t.startswith(THINK_OPEN) and t.endswith(ANSWER_CLOSE)):
        return False
    if any(t.count(tag) != 1 for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)):
        return False
    think_end, answer_start = t.find(THINK_CLOSE), t.find(ANSWER_OPEN)
    if answer_start < think_end:
        return False
    think = t[len(THINK_OPEN): think_end]
    between = t[think_end + len(THINK_CLOSE): answer_start]
    answer = t[answer_start + len(ANSWER_OPEN): -len(ANSWER_CLOSE)]
    return bool(think.strip()) and not between.strip() and bool(answer.strip()) and SEP not in t


def _cold_start_format_ok(text):
    """Optional whitespace, <|sep|>, non-empty reasoning, <|sep|>, non-empty summary; exactly two separators, no
    <think> tags (that is the other layout), at most one well-formed <answer> block, inside the summary."""
    t = _strip_end_tokens(text).strip()
    if not t.startswith(SEP) or t.count(SEP) != 2:
        return False
    if THINK_OPEN in t or THINK_CLOSE in t:
        return False
    reasoning, summary = split_cold_start(t)
    if not reasoning.strip() or not summary.strip():
        return False
    n_open, n_close = t.count(ANSWER_OPEN), t.count(ANSWER_CLOSE)
    if n_open != n_close or n_open > 1:
        return False
    return n_open == 0 or 0 <= summary.find(ANSWER_OPEN) < summary.find(ANSWER_CLOSE)


def format_reward(prompts, completions, style="r1zero", **columns):
    """1.0 if the completion has the required layout, else 0.0. style: "r1zero" (R1 Table 1) | "cold_start"."""
    check = {"r1zero": _r1zero_format_ok, "cold_start": _cold_start_format_ok}.get(style)
    if check is None:
        raise ValueError(f"format_reward: unknown style {style!r} (r1zero | cold_start)")
    return [_safe(lambda c: float(check(_text(c))), c) for c in completions]


def cold_start_format_reward(prompts, completions, **columns):
    """format_reward with style="cold_start" (a named function, so TRL logs it under its own name)."""
    return format_reward(prompts, completions, style="cold_start")


# ----------------------------------------------------------------------------------------------------------------
# Language consistency (R1 §2.2.2): Num(words in target language) / Num(words), over the CoT

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef\U00030000-\U0003134f"
_EN_WORD_RE = re.compile(r"[A-Za-z]+")                     # "en": a run of ASCII letters
_ZH_WORD_RE = re.compile(f"[{_CJK}]")                      # "zh": each CJK character is one word
_OTHER_WORD_RE = re.compile(f"(?:(?![A-Za-z{_CJK}])[^\\W\\d_])+")  # other letters (é, Cyrillic): other words
_SPECIAL_RE = re.compile(r"<\|[A-Za-z_]{1,32}\|>")


def cot_text(text):
    """The chain of thought: the <think> block (to the end if unclosed), else the cold-start reasoning part, else
    the text after a single leading <|sep|>, else the whole completion."""
    start = text.find(THINK_OPEN)
    if start >= 0:
        end = text.find(THINK_CLOSE, start)
        return text[start + len(THINK_OPEN): end if end >= 0 else len(text)]
    parts = split_cold_start(text)
    if parts is not None:
        return parts[0]
    first = text.find(SEP)
    return text[first + len(SEP):] if first >= 0 else text


def word_counts(text):
    """{"en": n, "zh": n, "other": n} for a text: tags and special tokens, digits and symbols are not words."""
    s = text[:MAX_COT_CHARS]
    for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE):
        s = s.replace(tag, " ")
    s = _SPECIAL_RE.sub(" ", s)
    return {"en": len(_EN_WORD_RE.findall(s)), "zh": len(_ZH_WORD_RE.findall(s)),
            "other": len(_OTHER_WORD_RE.findall(s))}


def language_consistency(text, lang, no_words=0.0):
    """Fraction of the CoT's words in `lang` ("en" | "zh"). No words at all -> no_words (default 0.0): 0/0 is
    undefined, and 1.0 would pay for an empty or wordless CoT; with 0.0 the language term is only earned by
    reasoning written in the target language (a digits-only CoT still earns accuracy and format)."""
    counts = word_counts(cot_text(_text(text)))
    total = sum(counts.values())
    if lang not in ("en", "zh"):
        raise ValueError(f"unknown language {lang!r} (en | zh)")
    return counts[lang] / total if total else float(no_words)


def language_reward(prompts, completions, lang=None, **columns):
    """R1 language-consistency reward: Num(words in the target language) / Num(words) over the CoT; lang column
    "en" | "zh" (default "en"). Mixed-language words split: "café" = en "caf" + other "é"."""
    langs = _column(lang, len(completions), "lang", "en")
    return [_safe(language_consistency, c, lg or "en") for c, lg in zip(completions, langs)]


# ----------------------------------------------------------------------------------------------------------------
# Reward models (R1 final stage): a hook that feeds a learned scorer the right part of the response

def response_summary(text):
    """The final answer/summary a helpfulness RM scores: after the last <|sep|> of a cold-start output, else after
    the last </think>, else the whole response (trivial queries get no CoT). Empty -> None."""
    text = _strip_end_tokens(_text(text))
    if split_cold_start(text) is not None:
        s = text[text.rfind(SEP) + len(SEP):]
    elif THINK_CLOSE in text:
        s = text[text.rfind(THINK_CLOSE) + len(THINK_CLOSE):]
    else:
        s = text
    return s.strip() or None


class RewardModelReward:
    """Wraps a learned scorer as a reward function. score_fn(prompts: list[str], texts: list[str]) -> sequence of
    floats (a list or a 1-D tensor). on="answer": the RM sees only the final summary (R1 helpfulness RM);
    on="full": the whole response including the reasoning (R1 safety RM). Responses with no summary get
    `missing` and are not sent to the scorer. Texts are cut to their last max_chars characters."""

    def __init__(self, score_fn, on="answer", name=None, missing=0.0, max_chars=8000):
        if on not in ("answer", "full"):
            raise ValueError(f"RewardModelReward: on must be 'answer' or 'full', got {on!r}")
        self.score_fn, self.on, self.missing, self.max_chars = score_fn, on, float(missing), max_chars
        self.__name__ = name or f"rm_{on}"

    def select(self, completion):
        text = _strip_end_tokens(_text(completion)) if self.on == "full" else response_summary(completion)
        return text[-self.max_chars:] if text else None

    def __call__(self, prompts, completions, **columns):
        n = len(completions)
        prompts = [_text(p) for p in _column(prompts, n, "prompts", "")]
        texts = [self.select(c) for c in completions]
        idx = [i for i, t in enumerate(texts) if t is not None]
        out = [self.missing] * n
        if idx:
            scores = self.score_fn([prompts[i] for i in idx], [texts[i] for i in idx])
            scores = scores.tolist() if hasattr(scores, "tolist") else list(scores)
            if len(scores) != len(idx):
                raise ValueError(f"{self.__name__}: score_fn returned {len(scores)} scores for {len(idx)} texts")
            for i, s in zip(idx, scores):
                s = float(s)
                out[i] = s if math.isfinite(s) else self.missing
        return out


# ----------------------------------------------------------------------------------------------------------------
# Weighted combination

class combine:
    """combine([(f, w), ...]) -> a reward function returning sum_k w_k * f_k (R1: Reward_rule = Reward_acc +
    Reward_format; later + Reward_language, + reward models). .components(...) -> {name: list} for logging, plus
    "reward" (the weighted sum). Names are the functions' __name__ (duplicates get _2, _3, ...)."""

    def __init__(self, terms):
        terms = list(terms)
        if not terms:
            raise ValueError("combine: no reward terms")
        self.terms, names = [], []
        for f, w in terms:
            if not callable(f):
                raise ValueError(f"combine: {f!r} is not callable")
            base = getattr(f, "__name__", type(f).__name__)
            name, k = base, 2
            while name in names:
                name, k = f"{base}_{k}", k + 1
            names.append(name)
            self.terms.append((name, f, float(w)))
        self.__name__ = "+".join(names)

    def components(self, prompts, completions, **columns):
        n = len(completions)
        out = {}
        for name, f, _ in self.terms:
            values = [float(v) for v in f(prompts, completions, **columns)]
            if len(values) != n:
                raise ValueError(f"combine: {name} returned {len(values)} rewards for {n} completions")
            out[name] = values
        out["reward"] = [sum(w * out[name][i] for name, _, w in self.terms) for i in range(n)]
        return out

    def __call__(self, prompts, completions, **columns):
        return self.components(prompts, completions, **columns)["reward"]


# ----------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    if sys.argv[1:] == ["--sandbox-child"]:
        _sandbox_child()
    examples = [
        (" <think> 400 plus 5 is 405 </think> <answer> 405 </answer>",
         {"task": "arith", "answer": "405", "lang": "en"}),
        (" <think> 400 加 5 is 405 </think> <answer> 405 </answer>", {"task": "arith", "answer": "405", "lang": "en"}),
        (" 405", {"task": "arith", "answer": "405", "lang": "en"}),
        (" <think> 25-5=20, 20*4=80 </think> <answer> (25 - 5) * 4 </answer>",
         {"task": "countdown", "nums": [4, 5, 25], "target": 80, "lang": "en"}),
        (" <think> easy </think> <answer>\n```python\ndef add(a, b):\n    return a + b\n```\n</answer>",
         {"task": "code", "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], "lang": "en"}),
    ]
    cols = {k: [ex[1].get(k) for ex in examples] for k in ("task", "answer", "nums", "target", "tests", "lang")}
    reward = combine([(accuracy_reward, 1.0), (format_reward, 1.0), (language_reward, 1.0)])
    comps = reward.components([""] * len(examples), [ex[0] for ex in examples], **cols)
    for i, (c, _) in enumerate(examples):
        print(" ".join(f"{k}={v[i]:.2f}" for k, v in comps.items()), "|", c.strip()[:60].replace("\n", " "))
    print("sandbox isolation on this machine:", ",".join(sorted(sandbox_features())))
