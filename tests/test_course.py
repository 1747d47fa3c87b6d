"""The course (docs/course.md, tools/student_copy.py): every assignment's grader fails on the stub and passes on
the solution, the student copy changes nothing but the stubbed bodies, course.md mirrors the assignment list.

    python -m pytest -q tests/test_course.py
"""
import ast
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import student_copy as sc  # noqa: E402

COURSE = os.path.join(ROOT, "docs", "course.md")

# Runs many pytest sessions in ONE process: torch is imported once, then each session is a forked child that
# imports the repository's modules afresh from its working directory. A plain `python -m pytest` per session
# spends ~3 s of this slow machine importing torch each time; 24 sessions would take this file past 90 s.
# Each job: {"cwd", "args", "overlay": {path: text}} -> the overlay files are written, the session runs in a child,
# the files are put back. No .pyc files are written: a rewritten module of the same size within the same second
# would otherwise be loaded from a stale cache.
DRIVER = r"""
import json, os, sys
sys.dont_write_bytecode = True
import torch  # noqa: F401  (the point: imported once, before the forks)
jobs, out_dir = json.load(sys.stdin), sys.argv[1]
results = []
for i, job in enumerate(jobs):
    saved = {}
    for rel, text in job["overlay"].items():
        path = os.path.join(job["cwd"], rel)
        with open(path, encoding="utf-8", newline="") as f:
            saved[path] = f.read()
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    log = os.path.join(out_dir, f"job{i}.log")
    pid = os.fork()
    if pid == 0:                                   # the child: one pytest session, output into the log
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(job["cwd"])
        sys.path.insert(0, job["cwd"])             # what `python -m pytest` does with the working directory
        import pytest
        rc = pytest.main(job["args"])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(rc))
    _, status = os.waitpid(pid, 0)
    for path, text in saved.items():
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    with open(log, encoding="utf-8", errors="replace") as f:
        results.append({"rc": os.waitstatus_to_exitcode(status), "output": f.read()})
print(json.dumps(results))
"""


def run_sessions(jobs, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], input=json.dumps(jobs), env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def stub_cases():
    """One case per stubbed FUNCTION (not per assignment): an assignment with several functions must have a
    grader that reaches each of them, or a student could leave one unwritten and still pass."""
    return [(a, qualname, what) for a in sc.ASSIGNMENTS for qualname, what in a.functions]


def module_keyword(test_file):
    """The -k keyword that matches exactly one test file: the module's node name (test_x.py) is one of every
    test's keywords, and no test function's name contains '.py'."""
    return os.path.basename(test_file)


def test_each_grader_fails_on_its_stub_passes_with_its_needs_and_on_the_solution(tmp_path):
    """Three kinds of sessions, all in one copy of the repository: (1) per stubbed function, its assignment's
    grader with only that function stubbed must fail by reaching the stub; (2) per assignment, its grader must
    pass with every OTHER assignment stubbed except those it `needs` (what course.md tells students to do
    first); (3) all graders together must pass on the repository's own code."""
    copy = tmp_path / "copy"
    sc.make_copy(str(copy), [])                              # the solution, as a student copy without stubs
    jobs, cases = [], stub_cases()
    for a, qualname, what in cases:
        one = {a.file: sc.stub_source((copy / a.file).read_text(encoding="utf-8"),
                                      [(qualname, sc.stub_message(a, what))])}
        jobs.append({"cwd": str(copy), "overlay": one, "args": ["-q", "-x", "-p", "no:cacheprovider",
                                                                 *a.grader_args]})
    for a in sc.ASSIGNMENTS:
        others = [b.name for b in sc.ASSIGNMENTS if b is not a and b.name not in a.needs]
        jobs.append({"cwd": str(copy), "overlay": sc.stubbed_files(others, str(copy)),
                     "args": ["-q", "-x", "-p", "no:cacheprovider", *a.grader_args]})
    # The solution side: every grader's selection in one session, as the union of the per-file selections.
    files = sorted({a.test_file for a in sc.ASSIGNMENTS})
    union = " or ".join(f"({module_keyword(a.test_file)} and ({a.keywords}))" for a in sc.ASSIGNMENTS)
    jobs.append({"cwd": str(copy), "overlay": {}, "args": ["-q", "-p", "no:cacheprovider", *files, "-k", union]})

    results = run_sessions(jobs, tmp_path)
    for (a, qualname, what), res in zip(cases, results[:len(cases)]):
        tail = res["output"][-3000:]
        # rc 1 = tests ran and failed (5 would be "no test selected", 2 a collection error)
        assert res["rc"] == 1, f"{a.name}: grader `{a.command}` exited {res['rc']} with {qualname} stubbed\n{tail}"
        assert f"NotImplementedError: {sc.stub_message(a, what)}" in res["output"], \
            f"{a.name}: grader `{a.command}` failed, but not by reaching the stub of {qualname}\n{tail}"
    for a, res in zip(sc.ASSIGNMENTS, results[len(cases):-1]):
        assert res["rc"] == 0, \
            f"{a.name}: with the other assignments stubbed except its needs {a.needs}, `{a.command}` fails: " \
            f"it needs more (add it to `needs` in tools/student_copy.py and to course.md)\n{res['output'][-3000:]}"
    solution = results[-1]
    assert solution["rc"] == 0, f"a grader fails on the repository's own code\n{solution['output'][-3000:]}"
    m = re.search(r"(\d+) passed", solution["output"])
    assert m and int(m.group(1)) >= len(sc.ASSIGNMENTS), solution["output"][-3000:]


def test_student_copy_changes_only_the_stubbed_bodies(tmp_path):
    out = tmp_path / "student"
    stubbed = sc.make_copy(str(out), [a.name for a in sc.ASSIGNMENTS])
    assert stubbed == sorted({a.file for a in sc.ASSIGNMENTS})
    files = sc.repo_files(ROOT)
    assert "tools/student_copy.py" in files and not any(f.startswith((".venv/", "runs/")) for f in files)
    for rel in files:
        if rel not in stubbed:
            assert (out / rel).read_bytes() == (open(os.path.join(ROOT, rel), "rb").read()), rel
    for a in sc.ASSIGNMENTS:
        orig_text = open(os.path.join(ROOT, a.file), encoding="utf-8").read()
        new_text = (out / a.file).read_text(encoding="utf-8")
        orig, new = ast.parse(orig_text), ast.parse(new_text)
        for qualname, what in a.functions:
            f0, f1 = sc.find_function(orig, qualname), sc.find_function(new, qualname)
            # the signature and the docstring are kept: a student reads the contract there
            assert ast.dump(f0.args) == ast.dump(f1.args) and ast.get_docstring(f0) == ast.get_docstring(f1), qualname
            assert [ast.dump(d) for d in f0.decorator_list] == [ast.dump(d) for d in f1.decorator_list], qualname
            body = f1.body[1:] if ast.get_docstring(f1) is not None else f1.body
            assert len(body) == 1 and isinstance(body[0], ast.Raise), qualname
            assert ast.literal_eval(body[0].exc.args[0]) == sc.stub_message(a, what)
            assert re.fullmatch(r"assignment \d+: .+, see docs/course\.md", sc.stub_message(a, what))
    # outside the stubbed spans every line is the original's: remove the stub lines and the replaced spans
    for rel in stubbed:
        orig_lines = sc._lines(open(os.path.join(ROOT, rel), encoding="utf-8", newline="").read())
        new_lines = sc._lines((out / rel).read_bytes().decode("utf-8"))
        tree = ast.parse("".join(orig_lines))
        spans = sorted(sc.body_span(sc.find_function(tree, q), orig_lines)
                       for a in sc.ASSIGNMENTS if a.file == rel for q, _ in a.functions)
        kept, prev = [], 0
        for first, last in spans:
            kept += orig_lines[prev:first - 1]
            prev = last
        kept += orig_lines[prev:]
        assert [ln for ln in new_lines if "raise NotImplementedError(\"assignment " not in ln] == kept, rel


def test_stub_source_edge_cases():
    src = ("import torch\n\n\nclass A:\n    @staticmethod\n    def f(x):\n        '''Doc.'''\n        # a hint\n"
           "        y = x + 1\n        return y  # done\n\n    def g(self): return 1\n\n\ndef h(a,\n      b):\n"
           "    return a\r\n")
    out = sc.stub_source(src, [("A.f", "assignment 9: f"), ("h", "assignment 9: h")])
    assert out == ("import torch\n\n\nclass A:\n    @staticmethod\n    def f(x):\n        '''Doc.'''\n"
                   "        raise NotImplementedError(\"assignment 9: f\")\n\n    def g(self): return 1\n\n\n"
                   "def h(a,\n      b):\n    raise NotImplementedError(\"assignment 9: h\")\r\n")
    with pytest.raises(ValueError, match="own"):
        sc.stub_source(src, [("A.g", "x")])                   # a one-line def has no body lines to replace
    with pytest.raises(KeyError, match="nope"):
        sc.stub_source(src, [("A.nope", "x")])


def test_cli_copies_the_chosen_assignments_and_refuses_bad_targets(tmp_path):
    tool = os.path.join(ROOT, "tools", "student_copy.py")
    out = tmp_path / "two"
    r = subprocess.run([sys.executable, tool, str(out), "--assignment", "kl", "--assignment", "countdown"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    grpo_src = (out / "grpo.py").read_text(encoding="utf-8")
    assert sc.stub_message(sc.BY_NAME["kl"], sc.BY_NAME["kl"].functions[0][1]) in grpo_src
    assert grpo_src.count("raise NotImplementedError(") == 1          # group_advantages, grpo_loss untouched
    assert (out / "model.py").read_bytes() == open(os.path.join(ROOT, "model.py"), "rb").read()
    assert (out / "answers.py").read_text(encoding="utf-8").count("raise NotImplementedError(\"assignment 10") == 3
    again = subprocess.run([sys.executable, tool, str(out)], capture_output=True, text=True)
    assert again.returncode != 0 and "not empty" in again.stderr
    inside = subprocess.run([sys.executable, tool, os.path.join(ROOT, "student")], capture_output=True, text=True)
    assert inside.returncode != 0 and "inside the repository" in inside.stderr
    listed = subprocess.run([sys.executable, tool, "--list"], capture_output=True, text=True)
    assert listed.returncode == 0 and all(a.command in listed.stdout for a in sc.ASSIGNMENTS)


def test_course_md_mirrors_the_assignment_list():
    text = open(COURSE, encoding="utf-8").read()
    for a in sc.ASSIGNMENTS:
        n = sc.number(a)
        assert re.search(rf"^## Assignment {n}: .*\(`{a.name}`\)", text, re.M), f"course.md: no heading for {n}"
        section = text.split(f"## Assignment {n}:")[1].split("\n## ")[0]
        assert a.command in section, f"course.md, assignment {n}: the grader must be quoted as `{a.command}`"
        assert a.paper in section, f"course.md, assignment {n}: cite {a.paper}"
        for qualname, _ in a.functions:
            assert f"{a.file.removesuffix('.py')}.{qualname}" in section, f"course.md, assignment {n}: {qualname}"
        for need in a.needs:
            assert f"`{need}`" in section, f"course.md, assignment {n}: say that its grader needs `{need}`"


def test_course_md_names_every_grader_test_that_pins_an_open_choice():
    """A grader test whose docstring says "Paper leaves this open" must be listed in course.md, so that a student
    knows which failures are about a convention of this repository rather than the paper's formula."""
    text = open(COURSE, encoding="utf-8").read()
    marked = []
    for name in sorted({a.test_file for a in sc.ASSIGNMENTS}):
        tree = ast.parse(open(os.path.join(ROOT, name), encoding="utf-8").read())
        marked += [f.name for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")
                   and "Paper leaves this open" in (ast.get_docstring(f) or "")]
    assert len(marked) >= 5, marked
    missing = [t for t in marked if t not in text]
    assert not missing, f"course.md does not list these open-choice tests: {missing}"
