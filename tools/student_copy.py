"""Make a student copy of minR1: the repository with the bodies of the course's functions replaced by a stub.

    python tools/student_copy.py OUT_DIR                                  # every assignment stubbed
    python tools/student_copy.py OUT_DIR --assignment advantages --assignment kl
    python tools/student_copy.py --list                                   # the assignments and their graders

The copy holds the files git knows about (tracked, plus untracked ones that .gitignore does not exclude), so no
runs/, .venv or caches. In it, each chosen function keeps its decorators, signature and docstring; everything
after the docstring becomes

    raise NotImplementedError("assignment N: <what to implement>, see docs/course.md")

and every other byte of every file is the original's. A student's work is done when the assignment's grader
command (docs/course.md; --list prints them) passes in the copy.

ASSIGNMENTS below is the one list of the course: docs/course.md mirrors it (tests/test_course.py checks that
course.md names every assignment and its exact grader command, and that each grader fails on the stub and
passes on the repository's solution).
"""
import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Assignment:
    name: str            # what --assignment takes
    file: str            # the module, relative to the repository root
    functions: tuple     # ((qualified name in the module, what the stub says to implement), ...)
    paper: str           # where the formula comes from (docs/PAPER.md's numbering)
    test_file: str       # the grader: python -m pytest -q TEST_FILE -k "KEYWORDS"
    keywords: str
    needs: tuple = ()    # other assignments whose functions this grader also runs (do those first)

    @property
    def grader_args(self) -> list:
        """The grader's pytest arguments (after `python -m pytest -q`)."""
        return [self.test_file, "-k", self.keywords]

    @property
    def command(self) -> str:
        """The grader as a student types it, from the root of the copy (the form docs/course.md quotes)."""
        return f'python -m pytest -q {self.test_file} -k "{self.keywords}"'


# Order = course order: a later grader may run an earlier assignment's function (see `needs`).
ASSIGNMENTS = (
    Assignment(
        "advantages", "grpo.py",
        (("group_advantages", "group-relative advantages A_i = (r_i - mean) / std per group (R1 eq. 3)"),),
        "R1 eq. 3", "tests/test_grpo.py", "group_advantages"),
    Assignment(
        "kl", "grpo.py",
        (("kl_penalty", "the per-token KL estimators k1, k2, k3 = r - log r - 1 and k3+ (R1 eq. 2)"),),
        "R1 eq. 2", "tests/test_grpo.py",
        "k3_is_non_negative or monte_carlo or k3plus or expected_gradients or rejects_unknown_estimator"),
    Assignment(
        "grpo_loss", "grpo.py",
        (("grpo_loss", "the clipped GRPO objective with the KL term, per-token mean, loss = -J (R1 eq. 1)"),),
        "R1 eq. 1 (DeepSeekMath eq. 3)", "tests/test_grpo.py",
        "loss_hand_computed or policy_gradient or clipped_tokens or eps_high or aggregation_formulas or denom_makes",
        needs=("advantages", "kl")),
    Assignment(
        "nucleus", "sample.py",
        (("truncate", "top-k and top-p (nucleus) truncation of the logits (R1 §3: top-p 0.95)"),),
        "R1 §3", "tests/test_sample.py", "truncate_keeps"),
    Assignment(
        "chunked_logprobs", "kernels.py",
        (("_lse_entropy_chunked", "online logsumexp and entropy over vocabulary chunks"),
         ("_logprob_grad_chunked", "d logp / d logits = onehot - softmax, chunk by chunk")),
        "log-softmax identities (kernels.py op 4)", "tests/test_kernels.py", "token_logprobs_chunked_torch"),
    Assignment(
        "routing", "model.py",
        (("Gate.forward", "sigmoid scores, top-k over s + b in the best groups, g = s / sum (V3 eq. 12-16)"),),
        "V3 eq. 12-16", "tests/test_model.py",
        "gate_weights or bias_changes_selection or group_limited or softmax_scores_are_not"),
    Assignment(
        "bias_update", "model.py",
        (("Gate.update_bias", "aux-loss-free balancing b_i += gamma * sign(mean_load - load_i) (V3 §2.1.2)"),),
        "V3 §2.1.2", "tests/test_model.py", "bias_update_balances",
        needs=("routing",)),
    Assignment(
        "mla_decode", "model.py",
        (("MLA.decode", "decoding over the KV cache, naive and absorbed MLA (V3 eq. 1-11)"),),
        "V3 eq. 1-11", "tests/test_model.py", "decode_naive_and_absorbed or multi_token_decode",
        needs=("routing",)),
    Assignment(
        "sampling", "sample.py",
        (("sample_next", "temperature / top-p sampling that returns each token's logprob (R1 §3, eq. 1's pi_old)"),),
        "R1 §3 and the pi_old of R1 eq. 1", "tests/test_sample.py", "sampled_logprobs or seed_reproducible",
        needs=("nucleus", "chunked_logprobs", "routing", "mla_decode")),
    Assignment(
        "countdown", "answers.py",
        (("_eval_countdown", "the whitelisted AST walk with exact Fractions (R1 §2.2.2 accuracy reward)"),
         ("countdown_value", "the countdown value: character check, ast.parse, each number used once"),
         ("countdown_correct", "the countdown check: optional '= target', value == target")),
        "R1 §2.2.2 (rule-based accuracy reward)", "tests/test_rewards.py", "countdown"),
)

BY_NAME = {a.name: a for a in ASSIGNMENTS}


def number(a: Assignment) -> int:
    return ASSIGNMENTS.index(a) + 1


def stub_message(a: Assignment, what: str) -> str:
    return f"assignment {number(a)}: {what}, see docs/course.md"


# ------------------------------------------------------------------------------------------ rewriting one file
def _lines(text: str) -> list:
    """Lines with their endings, split on "\\n" only: ast counts lines that way ("\\r\\n" included), while
    str.splitlines also splits on form feeds and Unicode separators, which would shift every line number."""
    if re.search(r"\r(?!\n)", text):
        raise ValueError("a lone carriage return: ast and this tool would count lines differently")
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def find_function(tree: ast.Module, qualname: str):
    """The def of `qualname` ("f" or "Class.method") at module level, or a KeyError naming what is missing."""
    scope, node = tree.body, None
    for part in qualname.split("."):
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            raise KeyError(f"{qualname}: no {part!r} found")
        scope = node.body
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise KeyError(f"{qualname} is not a function")
    return node


def body_span(node, lines: list) -> tuple:
    """1-based inclusive (first, last) lines of the body after the docstring: what the stub replaces. The
    span starts right after the docstring, so comments between it and the first statement go too (they are
    hints), and it ends with the last statement's last line."""
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        and isinstance(body[0].value.value, str)
    if has_doc and len(body) == 1:
        raise ValueError(f"{node.name}: only a docstring, nothing to stub")
    first = body[0].end_lineno + 1 if has_doc else body[0].lineno
    start = body[1] if has_doc else body[0]
    if start.lineno <= node.lineno or lines[start.lineno - 1][:start.col_offset].strip():
        raise ValueError(f"{node.name}: the body does not start on a line of its own")
    return first, node.end_lineno


def stub_source(text: str, stubs: list) -> str:
    """`text` with each (qualname, message) function's body after its docstring replaced by one raise."""
    tree = ast.parse(text)
    lines = _lines(text)
    spans = []
    for qualname, message in stubs:
        node = find_function(tree, qualname)
        first, last = body_span(node, lines)
        doc_or_first = node.body[0]
        indent = re.match(r"[ \t]*", lines[doc_or_first.lineno - 1]).group(0)
        ending = lines[last - 1][len(lines[last - 1].rstrip("\r\n")):] or "\n"
        literal = '"' + message.replace("\\", "\\\\").replace('"', '\\"') + '"'
        spans.append((first, last, f"{indent}raise NotImplementedError({literal}){ending}"))
    for first, last, stub in sorted(spans, reverse=True):     # bottom up: earlier line numbers stay valid
        lines[first - 1:last] = [stub]
    out = "".join(lines)
    ast.parse(out)                                             # the copy must still import
    return out


def stubbed_files(names, root: str = ROOT) -> dict:
    """{relative path: stubbed source} for the chosen assignments (several may share a file)."""
    per_file = {}
    for name in names:
        a = BY_NAME[name]
        per_file.setdefault(a.file, []).extend((q, stub_message(a, what)) for q, what in a.functions)
    out = {}
    for path, stubs in per_file.items():
        with open(os.path.join(root, path), encoding="utf-8", newline="") as f:
            out[path] = stub_source(f.read(), stubs)
    return out


# --------------------------------------------------------------------------------------------- copying the repo
def repo_files(root: str = ROOT) -> list:
    """Tracked files plus untracked ones .gitignore does not exclude, that exist in the working tree."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"student_copy: {root} must be a git checkout with git on PATH ({e})")
    paths = sorted({p.decode() for p in listed.split(b"\0") if p})
    return [p for p in paths if os.path.lexists(os.path.join(root, p))]   # deleted but still tracked: skip


def make_copy(out_dir: str, names, root: str = ROOT) -> list:
    """Write the student copy into out_dir (absent or empty); returns the files that were stubbed."""
    out_dir = os.path.abspath(out_dir)
    if os.path.commonpath([out_dir, os.path.abspath(root)]) == os.path.abspath(root):
        raise SystemExit(f"student_copy: {out_dir} is inside the repository; pick a directory outside it")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise SystemExit(f"student_copy: {out_dir} exists and is not empty")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"student_copy: unknown assignment(s) {unknown}; known: {list(BY_NAME)}")
    stubbed = stubbed_files(names, root)              # before writing anything: a failure leaves no half copy
    for rel in repo_files(root):
        dst = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if rel in stubbed:
            with open(dst, "w", encoding="utf-8", newline="") as f:
                f.write(stubbed[rel])
        else:
            shutil.copy2(os.path.join(root, rel), dst, follow_symlinks=False)
    return sorted(stubbed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", nargs="?", help="where to write the copy (absent or empty, outside the repository)")
    p.add_argument("--assignment", action="append", choices=list(BY_NAME), metavar="NAME",
                   help=f"stub only these (repeatable; default: all). One of {', '.join(BY_NAME)}")
    p.add_argument("--list", action="store_true", help="print the assignments and their grader commands")
    args = p.parse_args(argv)
    if args.list:
        for a in ASSIGNMENTS:
            fns = ", ".join(q for q, _ in a.functions)
            print(f"{number(a):2d}. {a.name:17s} {a.file}: {fns}  [{a.paper}]\n    {a.command}")
        return 0
    if not args.out_dir:
        p.error("OUT_DIR is required (or --list)")
    names = args.assignment or [a.name for a in ASSIGNMENTS]
    files = make_copy(args.out_dir, names)
    print(f"student copy in {args.out_dir}: stubbed {', '.join(names)} in {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
