"""Tests for sandbox.py: value tests judged in the trainer, and hostile programs in every isolation mode.

    python -m pytest -q tests/test_sandbox.py
    python tests/sandbox_attacks.py --table          # the red-team table per mode (README quotes it)
"""
import os
import socket
import subprocess
import time
import warnings

import pytest

import sandbox
from sandbox import check_tests, decode_value, encode_value, parse_test, run_code, sandbox_features
from tests import sandbox_attacks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IS_ROOT = os.geteuid() == 0

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def test_value_tests_parse():
    """`[setup] assert <expr> == <literal>`: the literal stays here, only the expression goes to the sandbox."""
    assert parse_test("assert add(1, 2) == 3") == ("", "add(1, 2)", 3)
    assert parse_test("assert [1, (2, 3)] == f('x')") == ("", "f('x')", [1, (2, 3)])
    assert parse_test("x = 5\nassert sq(x) == -25, 'msg'") == ("x = 5", "sq(x)", -25)
    assert parse_test("assert s() == {1, 2}").expected == {1, 2}
    for bad, why in (("assert add(1, 2)", "last statement"), ("assert f(1) == g(2)", "neither side"),
                     ("assert f(1) < 3", "last statement"), ("print(1)", "last statement"),
                     ("assert f(", "not valid Python"), ("x" * 20_000, "at most")):
        with pytest.raises(ValueError, match=why):
            parse_test(bad)
    with pytest.raises(ValueError, match=r"test 1 \('assert f\(1\)'\)"):
        check_tests(["assert f(1) == 2", "assert f(1)"])


def test_values_are_plain_data_both_ways():
    for v in (None, True, 3, -2.5, float("inf"), "s", b"\x00b", [1, [2]], (1, "a"), {1, 2}, frozenset({3}),
              {"k": [1, (2,)], 4: None}, []):
        back = decode_value(sandbox.json.loads(sandbox.json.dumps(encode_value(v))))
        assert back == v and type(back) is type(v), v
    class Int(int):
        pass
    for bad in (Int(3), object(), [1, Int(2)], {"a": object()}, lambda: 1):
        with pytest.raises(TypeError):
            encode_value(bad)
    for bad in ({"t": "eval", "v": "1"}, {"x": 1}, {"t": "dict", "v": [[1]]}):
        with pytest.raises(ValueError):
            decode_value(bad)


def test_sandbox_isolation_available():
    """What run_code's docstring promises on this machine (root: a uid of its own; otherwise a user namespace)."""
    need = {"mnt", "net", "pid", "proc", "rofs", "tmpfs", "watchdog", "rlimits", "nnp", "seccomp", "stdlib"}
    need |= {"uid"} if IS_ROOT else {"user", "caps"}
    assert need <= sandbox_features(), f"sandbox lacks {sorted(need - sandbox_features())} on this machine"


def test_sandbox_scores():
    good = "def add(a, b):\n    return a + b\n"
    assert run_code(good, ADD_TESTS).score == 1.0
    partial = run_code("def add(a, b):\n    return a + b if a > 0 else 7\n", ADD_TESTS)
    assert (partial.passed, partial.total, partial.score) == (2, 3, pytest.approx(2 / 3))
    assert "test 1: got 7" in partial.errors, partial.errors
    assert run_code("def add(a, b) return", ADD_TESTS).score == 0.0           # syntax error
    assert run_code(good, []).status == "skipped"
    r = run_code(good, ["raise SystemExit(0)", "assert add(1, 1) == 2"])        # an unusable test fails alone
    assert r.passed == 1 and any("unusable test" in e for e in r.errors)
    with_imports = "import numpy, json, collections\ndef add(a, b): return int(numpy.add(a, b))"
    assert run_code(with_imports, ADD_TESTS).score == 1.0
    # values compare as Python's == would on builtin types: 3.0 == 3, but a list is not a tuple
    assert run_code("def f():\n    return 3.0", ["assert f() == 3"]).score == 1.0
    assert run_code("def f():\n    return [1, 2]", ["assert f() == (1, 2)"]).score == 0.0
    assert run_code("def f():\n    return {'a': {1, 2}}", ["assert f() == {'a': {2, 1}}"]).score == 1.0
    # a hanging test costs only itself: the others still count
    spin = good + "def spin():\n    while True:\n        pass\n"
    r = run_code(spin, ["assert add(1, 2) == 3", "assert spin() == 1", "assert add(2, 2) == 4"],
                 timeout=3.0, step_timeout=0.5)
    assert (r.passed, r.status) == (2, "ok")


def test_sandbox_results_cannot_be_forged_by_printing():
    forge = ("import sys\nfor i in range(3):\n    print('{\"i\": %d, \"v\": 3}' % i)\n"
             "    sys.stderr.write('x\\ttest\\t%d\\tok\\n' % i)\n")
    assert run_code(forge, ADD_TESTS).score == 0.0
    assert run_code("import os\nos._exit(0)", ADD_TESTS).score == 0.0


def test_sandbox_refuses_without_isolation():
    """No namespaces: nothing runs (status refused, score 0, one loud warning) unless the caller opts in."""
    sandbox._warned_unisolated = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run_code("def add(a, b):\n    return a + b\n", ADD_TESTS, namespaces=False)
    assert (r.status, r.score) == ("refused", 0.0), r
    assert any("NOT run" in str(w.message) for w in caught)
    opted = run_code("def add(a, b):\n    return a + b\n", ADD_TESTS, namespaces=False, allow_unisolated=True)
    assert (opted.status, opted.score) == ("ok", 1.0), opted


@pytest.mark.parametrize("mode", sandbox_attacks.available_modes())
def test_red_team(mode):
    """Every attack of tests/sandbox_attacks.py, with the trainer as root and as an unprivileged user, with and
    without namespaces. Reward hacking scores 0 in every mode; with namespaces every attack is contained (score 0,
    no file, process, signal or secret escapes); without them the sandbox refuses by default, and what an opted-in
    run still lets through is printed (README's table)."""
    run = sandbox_attacks.run_mode(mode)
    results = run["results"]
    assert set(results) == set(sandbox_attacks.ATTACKS)
    table = "\n".join(f"{n}: {'contained' if r['contained'] else 'NOT: ' + str(r['harm'] or r['score'])}"
                      for n, r in results.items())
    print(f"{mode}: contained {sum(r['contained'] for r in results.values())}/{len(results)}\n{table}")
    hacks = {n: r for n, r in results.items() if r["kind"] == "hack"}
    assert all(r["score"] == 0.0 for r in hacks.values()), table
    if mode.endswith("-ns"):
        assert run["default_status"] == "ok"
        assert all(r["contained"] for r in results.values()), table
    else:
        assert run["default_status"] == "refused"


def _assert_no_leftovers(marker, within_s=3.0):
    deadline = time.monotonic() + within_s
    while sandbox_attacks.marked(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sandbox_attacks.marked(marker), f"sandboxed processes named {marker} survived"



# name -> (code, how it may end: substrings of the errors, or "timeout" for the wall-clock kill). Code that swallows
# the step alarm is usually stopped by the wall clock, but the alarm can land outside its try: either is fine.
HOSTILE_CODE = {
    "infinite_loop": ("while True:\n    pass\n", ("StepTimeout", "timeout")),  # the alarm, or the wall clock under load
    "loop_swallowing_timeouts": ("while True:\n    try:\n        while True:\n            pass\n"
                                 "    except BaseException:\n        pass\n", ("timeout", "StepTimeout")),
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except BaseException:\n        pass\n",
                  ("killed", "timeout", "StepTimeout")),   # the watchdog, usually
    "escaping_daemon": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                        "        time.sleep(60)\ndef add(a, b):\n    return None\n", ("test 0: got None",)),
    "memory_hog": ("a = []\nwhile True:\n    a.append(bytearray(10 ** 7))\n", ("MemoryError",)),
    "memory_at_once": ("x = bytearray(8 << 30)\ndef add(a, b):\n    return a + b\n", ("MemoryError",)),
    "disk_filler": ("with open('big', 'wb') as f:\n    for _ in range(200):\n        f.write(b'x' * (1 << 20))\n"
                    "def add(a, b):\n    return a + b\n", ("OSError(27, 'File too large')",)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CODE))
def test_sandbox_stops_hostile_code(name):
    """Each attack scores 0, ends by the mechanism meant for it within its limit, and leaves no process behind."""
    marker = f"mr1x{sorted(HOSTILE_CODE).index(name)}x{os.getpid() % 100000}"
    code, endings = HOSTILE_CODE[name]
    timeout = 1.5
    t0 = time.monotonic()
    r = run_code(sandbox_attacks.NAME_SELF.format(marker=marker) + code, ADD_TESTS, timeout=timeout)
    elapsed = time.monotonic() - t0
    assert r.score == 0.0, (r, name)
    assert r.status in endings or (r.status == "ok" and any(x in e for x in endings for e in r.errors)), r
    assert elapsed < timeout + 1.5, f"{name} ran {elapsed:.1f}s"
    _assert_no_leftovers(marker)
    os.kill(os.getpid(), 0)  # the test process is alive (trivially, if we got here)


def test_sandbox_blocks_writes_outside_its_directory():
    """The child runs as nobody in a private mount namespace: root-owned paths are read-only to it, and /tmp,
    /var/tmp and /dev/shm are private empty tmpfs, so even a world-writable file in a world-writable directory of
    /tmp (which uid nobody alone could overwrite, delete or rename) is out of its reach."""
    import shutil
    import tempfile
    shared = tempfile.mkdtemp(prefix="minr1-victim-", dir="/tmp")
    os.chmod(shared, 0o777)
    victim, locked = os.path.join(shared, "victim.txt"), os.path.join(shared, "locked.txt")
    for path, mode in ((victim, 0o666), (locked, 0o644)):
        with open(path, "w") as f:
            f.write("original")
        os.chmod(path, mode)
    tag = os.urandom(4).hex()  # fresh names: a leftover of an earlier (broken) run cannot mask or fake a result
    in_repo = os.path.join(ROOT, f"pwned_by_sandbox_{tag}")
    targets = [in_repo, os.path.join(shared, "new.txt"), victim, locked] + \
        [f"{d}/minr1_pwned_by_sandbox_{tag}" for d in ("/tmp", "/var/tmp", "/dev/shm")]
    # The attack never touches existing repo files: if the sandbox were broken it must not damage the checkout.
    code = ("import os\nfor p in %r:\n    try:\n        with open(p, 'a') as f:\n            f.write('pwned')\n"
            "    except OSError:\n        pass\nfor p in %r:\n    try:\n        os.remove(p)\n    except OSError:\n"
            "        pass\n" % (targets, [victim, locked]))
    try:
        # Probe tests: its own directory is writable; the repo is not; the test's /tmp files are invisible to it.
        r = run_code(code, ["open('mine.txt', 'w').write('ok')\nassert open('mine.txt').read() == 'ok'",
                            f"import os\nassert os.access({ROOT!r}, os.W_OK) == False",
                            f"import os\nassert os.path.exists({victim!r}) == False"])
        assert r.score == 1.0, r
        for path in (victim, locked):
            assert open(path).read() == "original"
        for path in [in_repo, os.path.join(shared, "new.txt")] + targets[4:]:
            assert not os.path.exists(path), path
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        for path in [in_repo] + targets[4:]:
            if os.path.exists(path):
                os.remove(path)


def test_sandbox_environment_is_empty(monkeypatch):
    monkeypatch.setenv("MINR1_SECRET", "hunter2")
    leak = "import os\nif os.environ.get('MINR1_SECRET') == 'hunter2':\n    def add(a, b):\n        return a + b\n"
    assert run_code(leak, ADD_TESTS).score == 0.0                               # would score 1 if it leaked
    # Probe: the child's environment holds at most what Python itself sets (PEP 538 LC_CTYPE); the parent's
    # environment is not readable through /proc either.
    probe = ["import os\nassert (set(os.environ) <= {'LC_CTYPE'}) == True",
             f"try:\n    data = open('/proc/{os.getpid()}/environ', 'rb').read()\nexcept OSError:\n    data = b''\n"
             "assert (b'hunter2' in data) == False"]
    assert run_code("", probe).score == 1.0


def test_sandbox_has_no_network():
    """A listener in the test process: the child cannot reach it (it has its own empty network namespace, so
    connecting fails with ENETUNREACH rather than reaching 127.0.0.1 of the host), and nothing arrives."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n" \
           "    def add(a, b):\n        return a + b\nexcept OSError:\n    pass\n"
    assert run_code(code, ADD_TESTS).score == 0.0
    probe = [f"import socket, errno\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
             "    err = None\n"
             "except OSError as e:\n    err = e.errno\nassert (err in (errno.ENETUNREACH, errno.ECONNREFUSED)) == True",
             "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n    ok = True\n"
             "except OSError:\n    ok = False\nassert ok == False"]
    assert run_code("", probe, timeout=4.0).score == 1.0
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


def test_sandbox_cannot_kill_its_parent_or_bystanders():
    # Without a pid namespace or a uid of its own the attack below would really kill pytest: fail loudly instead.
    assert {"pid", "uid"} & sandbox_features(), "no pid namespace and no uid drop: not safe to run"
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        me, other = os.getpid(), bystander.pid
        code = "import os, signal\n" + "".join(
            f"try:\n    {call}\nexcept OSError:\n    pass\n" for call in (
                f"os.kill({me}, 9)", f"os.kill({other}, 9)", "os.kill(os.getppid(), 9)", "os.kill(-1, 9)",
                f"os.killpg(os.getpgid({me}), 9)", "os.killpg(0, 9)")) + "def add(a, b):\n    return None\n"
        r = run_code(code, ADD_TESTS)
        assert r.score == 0.0
        assert bystander.poll() is None, "the sandbox killed a process of the test"
        # Probe: signalling the test process fails (invisible in the pid namespace / not permitted as nobody).
        probe = [f"import os\ntry:\n    os.kill({me}, 0)\n    ok = False\nexcept OSError:\n    ok = True\nassert ok == True"]
        assert run_code("", probe).score == 1.0
    finally:
        bystander.kill()
        bystander.wait()
