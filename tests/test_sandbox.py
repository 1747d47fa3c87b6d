"""Tests for sandbox.py: model-written code against hostile programs, on this machine's isolation.

    python -m pytest -q tests/test_sandbox.py
"""
import os
import socket
import subprocess
import time

import pytest

from sandbox import run_code, sandbox_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IS_ROOT = os.geteuid() == 0

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def test_sandbox_isolation_available():
    """What run_code's docstring promises on this machine (root: a nobody uid; otherwise a user namespace)."""
    need = {"mnt", "net", "pid", "proc", "tmpfs", "rlimits", "nnp", "stdlib"}
    need |= {"uid"} if IS_ROOT else {"user", "caps"}
    assert need <= sandbox_features(), f"sandbox lacks {sorted(need - sandbox_features())} on this machine"


def test_sandbox_scores():
    good = "def add(a, b):\n    return a + b\n"
    assert run_code(good, ADD_TESTS).score == 1.0
    partial = run_code("def add(a, b):\n    return a + b if a > 0 else 7\n", ADD_TESTS)
    assert (partial.passed, partial.total, partial.score) == (2, 3, pytest.approx(2 / 3))
    assert any(e.startswith("test 1: AssertionError") for e in partial.errors)
    assert run_code("def add(a, b) return", ADD_TESTS).score == 0.0           # syntax error
    assert run_code(good, []).status == "skipped"
    assert run_code(good, ["raise SystemExit(0)", "assert add(1, 1) == 2"]).passed == 1
    with_imports = "import numpy, json, collections\ndef add(a, b): return int(numpy.add(a, b))"
    assert run_code(with_imports, ADD_TESTS).score == 1.0
    # a hanging test costs only itself: the others still count
    r = run_code(good, ["assert add(1, 2) == 3", "while True: pass", "assert add(2, 2) == 4"],
                 timeout=3.0, step_timeout=0.5)
    assert (r.passed, r.status) == (2, "ok")



def test_sandbox_results_cannot_be_forged_by_printing():
    forge = ("import sys\nfor i in range(3):\n    print('x\\ttest\\t%d\\tok' % i)\n"
             "    sys.stderr.write('x\\ttest\\t%d\\tok\\n' % i)\n")
    assert run_code(forge, ADD_TESTS).score == 0.0
    assert run_code("import os\nos._exit(0)", ADD_TESTS).score == 0.0


def _marked_processes(marker):
    """Host pids whose name (comm) is `marker`: hostile code names itself so its leftovers can be found."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == marker:
                    found.append(int(pid))
        except (OSError, ValueError):
            pass
    return found


def _assert_no_leftovers(marker, within_s=3.0):
    deadline = time.monotonic() + within_s
    while _marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _marked_processes(marker), f"sandboxed processes named {marker} survived"


# prctl(PR_SET_NAME): the process (and every child it forks) is named `marker` in /proc/<pid>/comm
NAME_SELF = "import ctypes\nctypes.CDLL(None).prctl(15, {marker!r}.encode(), 0, 0, 0)\n"

# name -> (code, how it may end: substrings of the errors, or "timeout" for the wall-clock kill). Code that swallows
# the step alarm is usually stopped by the wall clock, but the alarm can land outside its try: either is fine.
HOSTILE_CODE = {
    "infinite_loop": ("while True:\n    pass\n", ("StepTimeout", "timeout")),  # the alarm, or the wall clock under load
    "loop_swallowing_timeouts": ("while True:\n    try:\n        while True:\n            pass\n"
                                 "    except BaseException:\n        pass\n", ("timeout", "StepTimeout")),
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except BaseException:\n        pass\n",
                  ("timeout", "StepTimeout")),
    "escaping_daemon": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                        "        time.sleep(60)\ndef add(a, b):\n    return None\n", ("test 0: AssertionError",)),
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
    r = run_code(NAME_SELF.format(marker=marker) + code, ADD_TESTS, timeout=timeout)
    elapsed = time.monotonic() - t0
    assert r.score == 0.0, (r, name)
    assert ("timeout" in endings and r.status == "timeout") or \
        (r.status == "ok" and any(x in e for x in endings for e in r.errors)), r
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
                            f"import os\nassert not os.access({ROOT!r}, os.W_OK)",
                            f"import os\nassert not os.path.exists({victim!r})"])
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
    probe = ["import os\nassert set(os.environ) <= {'LC_CTYPE'}, dict(os.environ)",
             f"try:\n    data = open('/proc/{os.getpid()}/environ', 'rb').read()\nexcept OSError:\n    data = b''\n"
             "assert b'hunter2' not in data"]
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
             "except OSError as e:\n    err = e.errno\nassert err in (errno.ENETUNREACH, errno.ECONNREFUSED), err",
             "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n    ok = True\n"
             "except OSError:\n    ok = False\nassert not ok"]
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
        probe = [f"import os\ntry:\n    os.kill({me}, 0)\n    ok = False\nexcept OSError:\n    ok = True\nassert ok"]
        assert run_code("", probe).score == 1.0
    finally:
        bystander.kill()
        bystander.wait()
