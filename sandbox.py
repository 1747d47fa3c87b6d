"""The code sandbox: model-written code runs here, isolated from the trainer and the machine, and it never decides
its own verdict.

    from sandbox import run_code
    run_code("def add(a, b):\n    return a + b", ["assert add(1, 2) == 3"]).score      # -> 1.0
    python sandbox.py                                      # what this machine's isolation gives
    python -m pytest -q tests/test_sandbox.py              # the red-team suite: hostile programs, every mode

rewards.code_reward (R1 §2.2.2: code accuracy by compiling and running test cases) is the only caller in the
pipeline. The R1 paper avoids neural rewards because a policy optimised against a reward finds its holes; a policy
that writes code is an adversary of the code reward, so this file is built as if every program were an attack.

Tests are value tests, `[setup lines]` + `assert <expr> == <literal>` (either side may be the literal). The
expected value (the literal) never leaves the trainer: the sandbox only evaluates <expr> and sends the result
back as plain data (tagged JSON of None, bool, int, float, str, bytes, list, tuple, set, frozenset, dict; any other
type, including subclasses, is a failure), and the trainer compares it with the literal using builtin types it
decoded itself. So an object whose __eq__ is always True, a harness patched from inside (frames, os.write, json),
or forged result lines gain nothing: the only way to pass is to produce the right values. A test of another form
is refused (check_tests says why; data.load_tasks rejects such files up front).

Process tree (the trainer never runs model code itself; no preexec_fn, so it is safe next to threads):
  trainer --Popen(python -I sandbox.py --child, env={}, new session)--> P0; payload on its stdin (a pipe), results
      on its stdout (a pipe), trusted log on stderr: no file the program can reach holds anything of the trainer's
  P0 (trusted): new namespaces (mount, net, ipc, uts, pid; inside a user namespace when not root); every mount
      private and remounted read-only; empty private tmpfs on /tmp, /var/tmp, /dev/shm, /run and a size-capped one
      on its work dir; the interpreter's directories made reachable for the sandbox uid; fork -> P1
  P1 (trusted; pid 1 of the new pid namespace): a fresh /proc; fork -> P2; then the watchdog: every 20 ms it sums
      the RSS and counts the processes of the namespace and kills them all past memory_mb / max_procs. When P1
      exits the kernel kills everything left in the namespace (setsid'ed daemons, fork-bomb children).
  P2 (untrusted from here on): rlimits; a uid of its own (root: 10**6 + P0's pid, so sandboxes cannot signal or
      starve each other) or, without root, a nested user namespace as an unprivileged uid with every capability
      dropped; no_new_privs; a seccomp filter (x86-64); stdio -> /dev/null; the solution, then each test's <expr>
      under a SIGALRM step timeout; one result line per test on the results pipe.
The trainer SIGKILLs the process group at timeout + START_GRACE seconds of wall clock; P1's death takes the pid
namespace with it.

Where the machine gives no namespaces (a container without CAP_SYS_ADMIN and without user namespaces, macOS), the
sandbox would be rlimits (and, as root, a uid) only: it refuses to run code there (status "refused", score 0)
unless the caller opts in (allow_unisolated=True, MINR1_ALLOW_UNISOLATED=1, or the config key
sandbox_allow_unisolated, which train_pipeline.py turns into that variable), and then warns once, loudly.
What it still does not do: bubblewrap and cgroups are not used (the watchdog polls, so memory can overshoot by
what a tree allocates in 20 ms); world-readable files stay readable (the repo, the data, /etc); the kernel's
attack surface is reduced by seccomp only on x86-64; tests/test_sandbox.py lists each attack and the mode it was
tried in.
"""
import ast
import json
import math
import os
import platform
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_CODE_CHARS = 50_000     # code longer than this is not run (score 0)
MAX_TESTS = 100             # tests per task run in the sandbox
MAX_TEST_CHARS = 10_000     # per test
MAX_VALUE_CHARS = 100_000   # the serialised value of one test's <expr>; longer is a failure
MAX_RESULT_BYTES = 1 << 22  # what the trainer reads from the results pipe (then it stops reading)

UID_BASE = 1_000_000        # root: the sandbox runs as UID_BASE + pid of P0 (unique among live sandboxes)
NOBODY = 65534              # the uid a non-root sandbox has inside its nested user namespace
START_GRACE = 0.5           # seconds the child may spend starting up and reporting on top of its timeout
WATCHDOG_S = 0.02           # how often P1 measures the tree
ISOLATED = {"mnt", "net", "pid", "proc", "rofs"}   # without these the sandbox refuses unless allowed
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME = 0x10000000, 0x20000000, 0x40000000, 0x00000080
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAPBSET_DROP = 38, 22, 24


@dataclass
class SandboxResult:
    passed: int                 # tests whose value equals the expected one (compared in the trainer)
    total: int                  # tests given
    status: str                 # "ok" | "timeout" | "killed" (watchdog: memory or processes) | "refused" (no
                                # isolation, not allowed) | "skipped" (nothing run: no tests / code too long)
    seconds: float = 0.0        # wall time of the child
    features: tuple = ()        # isolation the child actually got (see sandbox_features)
    errors: list = field(default_factory=list)  # "solution: NameError(...)" / "test 3: got 7" (short)
    log: str = ""               # the trusted part's stderr (setup problems, watchdog kills), truncated

    @property
    def score(self):
        return self.passed / self.total if self.total else 0.0


# ----------------------------------------------------------------------------------------------------------------
# Value tests: what runs in the sandbox (setup, expr) and what stays in the trainer (expected)

class ValueTest(NamedTuple):
    setup: str      # statements run before the expression (from the data set, not from the model)
    expr: str       # evaluated in the sandbox; its value comes back as plain data
    expected: object  # a Python literal, never sent to the sandbox


def parse_test(src: str) -> ValueTest:
    """`[setup]` + `assert <expr> == <literal>[, msg]` -> ValueTest. Raises ValueError saying what is wrong."""
    if not isinstance(src, str) or len(src) > MAX_TEST_CHARS:
        raise ValueError(f"a test is a string of at most {MAX_TEST_CHARS} characters")
    try:
        body = ast.parse(src).body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ValueError(f"not valid Python ({type(e).__name__})") from None
    last = body[-1] if body else None
    if not (isinstance(last, ast.Assert) and isinstance(last.test, ast.Compare) and len(last.test.ops) == 1
            and isinstance(last.test.ops[0], ast.Eq)):
        raise ValueError("the last statement must be `assert <expr> == <literal>`: any other test would let the "
                         "program under test decide its own verdict")
    left, right = last.test.left, last.test.comparators[0]
    for expr, lit in ((left, right), (right, left)):
        try:
            expected = ast.literal_eval(lit)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            continue
        try:
            encode_value(expected)
        except (TypeError, ValueError, RecursionError):
            raise ValueError("the expected value must be plain data (numbers, strings, containers)") from None
        return ValueTest("\n".join(ast.unparse(s) for s in body[:-1]), ast.unparse(expr), expected)
    raise ValueError("neither side of `==` is a literal: the expected value must be written out")


def check_tests(tests) -> list:
    """The tests of a code task as ValueTests; raises ValueError naming the first unusable one (for data loaders)."""
    out = []
    for i, t in enumerate(_tests_list(tests)):
        try:
            out.append(parse_test(t))
        except ValueError as e:
            raise ValueError(f"test {i} ({t[:60]!r}): {e}") from None
    return out


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


# Plain data <-> tagged JSON. JSON objects are always tags, so a value can never be mistaken for one. The encoder
# runs inside the sandbox (where the program may replace it: that gains nothing, see the module docstring); the
# decoder runs in the trainer and builds only builtin types.
_SCALARS = (type(None), bool, int, float, str)


def encode_value(x, depth=0):
    """Plain data -> JSON-able structure; TypeError for anything else (exact types: subclasses are refused)."""
    t = type(x)
    if depth > 50:
        raise ValueError("nested too deeply")
    if t in _SCALARS:
        if t is float and not math.isfinite(x):
            return {"t": "float", "v": repr(x)}
        return x
    if t is bytes:
        return {"t": "bytes", "v": x.hex()}
    if t is list:
        return [encode_value(v, depth + 1) for v in x]
    if t in (tuple, set, frozenset):
        items = [encode_value(v, depth + 1) for v in x]
        return {"t": t.__name__, "v": items}
    if t is dict:
        return {"t": "dict", "v": [[encode_value(k, depth + 1), encode_value(v, depth + 1)] for k, v in x.items()]}
    raise TypeError(f"a value of type {t.__name__} is not plain data")


def decode_value(obj):
    """Inverse of encode_value over json.loads output; ValueError on anything malformed."""
    if isinstance(obj, list):
        return [decode_value(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tag, v = obj.get("t"), obj.get("v")
    if tag == "float" and v in ("nan", "inf", "-inf"):
        return float(v)
    if tag == "bytes" and isinstance(v, str):
        return bytes.fromhex(v)
    if tag in ("tuple", "set", "frozenset") and isinstance(v, list):
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](decode_value(i) for i in v)
    if tag == "dict" and isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 for p in v):
        return {decode_value(k): decode_value(val) for k, val in v}
    raise ValueError(f"malformed value {str(obj)[:40]}")


def _same(got, expected):
    """Python's == between two values built from builtin types only (so no user __eq__ can run)."""
    try:
        return bool(got == expected)
    except (TypeError, RecursionError):
        return False


# ----------------------------------------------------------------------------------------------------------------
# The trainer's side

_warned_unisolated = False


def run_code(code, tests, timeout=4.0, step_timeout=None, memory_mb=256, max_procs=16, file_mb=8,
             allow_unisolated=None, namespaces=True):
    """Run `code`, then evaluate each value test's expression in one sandboxed child; compare in the trainer.

    timeout: seconds of work for the whole child: the solution and each test are stopped after step_timeout
    (SIGALRM inside the child; default = timeout), and the child is killed (its process group and pid namespace)
    at timeout + START_GRACE seconds of wall clock, whatever it does with the alarm;
    memory_mb: RLIMIT_AS per process and the watchdog's bound on the whole tree's RSS; max_procs: processes in the
    tree (watchdog) and RLIMIT_NPROC; file_mb: RLIMIT_FSIZE and the size of each private tmpfs.
    allow_unisolated: run even without namespaces (default: MINR1_ALLOW_UNISOLATED=1 in the environment);
    namespaces=False: do not try them (for tests of that mode). Never raises on model output."""
    global _warned_unisolated
    if allow_unisolated is None:
        allow_unisolated = os.environ.get("MINR1_ALLOW_UNISOLATED") == "1"
    raw = _tests_list(tests)[:MAX_TESTS]
    if not isinstance(code, str) or len(code) > MAX_CODE_CHARS or not raw:
        return SandboxResult(0, len(raw), "skipped")
    parsed, errors = {}, []
    for i, t in enumerate(raw):
        try:
            parsed[i] = parse_test(t)
        except ValueError as e:
            errors.append(f"test {i}: unusable test: {e}")
    payload = json.dumps({
        "code": code, "tests": [[i, t.setup, t.expr] for i, t in parsed.items()],
        "step_timeout": float(step_timeout or timeout), "cpu_s": int(math.ceil(timeout)) + 1,
        "memory_mb": int(memory_mb), "max_procs": int(max_procs), "file_mb": int(file_mb),
        "allow_unisolated": bool(allow_unisolated), "namespaces": bool(namespaces),
    }).encode()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="minr1-sandbox-") as work:   # 0700: covered by a tmpfs in the child
        proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), "--child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work,
            env={}, start_new_session=True, close_fds=True)   # env={}: nothing of the trainer's is inherited
        out, log, timed_out = _pump(proc, payload, timeout + START_GRACE)
        try:  # also reaps stragglers of a finished run that stayed in the group
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    seconds = time.monotonic() - t0
    log_text = log.decode("utf-8", "replace")
    features, got, refused = (), {}, False
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(msg, dict):
            continue
        if "features" in msg and not features:
            features = tuple(str(f) for f in msg["features"])[:32]
            refused = bool(msg.get("refused"))
        elif "solution" in msg and msg["solution"]:
            errors.append("solution: " + str(msg["solution"])[:200])
        elif isinstance(msg.get("i"), int) and msg["i"] in parsed and msg["i"] not in got:  # first report wins
            got[msg["i"]] = msg
    passed = 0
    for i, t in parsed.items():
        msg = got.get(i)
        if msg is None:
            continue
        if "e" in msg:
            errors.append(f"test {i}: {str(msg['e'])[:200]}")
            continue
        try:
            value = decode_value(msg.get("v"))
        except (ValueError, TypeError, RecursionError):
            errors.append(f"test {i}: malformed value")
            continue
        if _same(value, t.expected):
            passed += 1
        else:
            errors.append(f"test {i}: got {str(value)[:80]}")
    status = "refused" if refused else "timeout" if timed_out else \
        "killed" if "watchdog:" in log_text else "ok"
    if refused and not _warned_unisolated:
        _warned_unisolated = True
        warnings.warn("sandbox: this machine gives no namespaces (got " + ",".join(features) + "), so model code is "
                      "NOT run and every code reward is 0. Set MINR1_ALLOW_UNISOLATED=1 (or allow_unisolated=True) to "
                      "run it with rlimits only, knowing that it can then read and signal the trainer's processes.")
    elif allow_unisolated and not ISOLATED <= set(features) and not _warned_unisolated:
        _warned_unisolated = True
        warnings.warn("sandbox: running model code WITHOUT namespace isolation (allow_unisolated); it has "
                      + ",".join(features))
    return SandboxResult(passed if not refused else 0, len(raw), status, seconds, features, errors, log_text[:4000])


def _pump(proc, payload, wall):
    """Feed the payload to the child's stdin and read its stdout and stderr (capped) until both close or the wall
    clock runs out. Returns (stdout bytes, stderr bytes, timed_out). A selector (epoll), not select(): a trainer
    may hold more than 1024 file descriptors."""
    deadline = time.monotonic() + wall
    out, err = bytearray(), bytearray()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin, selectors.EVENT_WRITE)
    sent, reading = 0, 2
    try:
        while reading:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(out), bytes(err), True
            for key, _ in sel.select(left):
                if key.fileobj is proc.stdin:
                    try:
                        sent += os.write(key.fd, payload[sent:sent + 65536])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:   # the child is gone: nothing more to send
                        sent = len(payload)
                    if sent >= len(payload):
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    reading -= 1
                elif len(key.data) < MAX_RESULT_BYTES:
                    key.data.extend(chunk)
        return bytes(out), bytes(err), False
    finally:
        sel.close()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if not f.closed:
                f.close()


_FEATURES = None


def sandbox_features():
    """The isolation this machine gives sandboxed code (cached): a subset of
    user (user namespace, non-root only), mnt, net, ipc, uts, pid (namespaces), rofs (the whole file system
    read-only), tmpfs (private work dir, /tmp, /var/tmp, /dev/shm, /run), proc (own /proc), watchdog (tree-wide
    memory and process bound), rlimits, uid (a uid of its own, root only), caps (no capabilities, non-root),
    nnp (no_new_privs), seccomp (syscall filter), stdlib (the standard library is importable at the sandbox uid)."""
    global _FEATURES
    if _FEATURES is None:
        _FEATURES = frozenset(run_code("", ["assert 1 == 1"]).features)
    return _FEATURES


# ----------------------------------------------------------------------------------------------------------------
# The child (P0 -> P1 -> P2)

def _libc_call(libc, fn, *args):
    """A libc call through ctypes: True on success."""
    return getattr(libc, fn)(*args) == 0


def _sandbox_child():
    """Entry point of the sandbox child (python -I sandbox.py --child). Runs in P0, then forks P1 and P2.
    Everything before _run_untrusted is our code; the payload arrives on stdin, results leave on stdout."""
    import ctypes
    payload = json.loads(sys.stdin.buffer.read())
    results = os.dup(1)

    def report(**msg):
        os.write(results, (json.dumps(msg) + "\n").encode())

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    root = os.geteuid() == 0
    uid = UID_BASE + os.getpid() if root else NOBODY
    features = _unshare(libc, root) if payload["namespaces"] else []
    _private_mounts(libc, payload["file_mb"], root, uid, features)
    _fork_and_wait(loop=False)  # P0 waits for P1
    # P1: pid 1 of the new pid namespace (if any). A /proc of its own hides the trainer's processes.
    if "pid" in features and "mnt" in features and _libc_call(
            libc, "mount", b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None):
        features.append("proc")
    if not ISOLATED <= set(features) and not payload["allow_unisolated"]:
        report(features=features, refused=True)
        os._exit(0)
    if "proc" in features:
        child = os.fork()
        if child:
            _watchdog(child, payload["memory_mb"] << 20, payload["max_procs"])
        features.append("watchdog")
    _limit_and_drop(libc, payload, root, uid, features)
    report(features=features)
    _run_untrusted(payload, report, results)


def _unshare(libc, root) -> list:
    """New namespaces (best effort, each reported). Without root, a user namespace grants the rights for the others."""
    features = []
    if not root:
        uid, gid = os.getuid(), os.getgid()
        if _libc_call(libc, "unshare", CLONE_NEWUSER) and _map_ids(0, uid, 0, gid):
            features.append("user")
    if root or "user" in features:
        for name, flag in (("mnt", CLONE_NEWNS), ("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC),
                           ("uts", CLONE_NEWUTS), ("pid", CLONE_NEWPID)):
            if _libc_call(libc, "unshare", flag):
                features.append(name)
    return features


def _map_ids(inside_uid, outside_uid, inside_gid, outside_gid) -> bool:
    """Write this process's fresh user namespace's one-line uid/gid maps (what an unprivileged process may write)."""
    try:
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{inside_uid} {outside_uid} 1"),
                           ("/proc/self/gid_map", f"{inside_gid} {outside_gid} 1")):
            with open(path, "w") as f:
                f.write(text)
        return True
    except OSError:
        return False


def _mounts():
    """(mount point, per-mount options) of this mount namespace, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")   # "\040" -> " "
            out.append((point, fields[5].split(",")))
    return out


def _read_only_everywhere(libc) -> bool:
    """Remount every mount of this (private) namespace read-only, keeping its other flags (a user namespace may add
    MS_RDONLY but not drop a locked nosuid/nodev/noexec). Writes then succeed only on the tmpfs mounted after.
    True when everything outside /proc and /sys took it (those are replaced or read-only to the sandbox anyway)."""
    names = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
             "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
    ok = True
    for point, opts in _mounts():
        if "ro" in opts:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for o in opts:
            flags |= names.get(o, 0)
        if not _libc_call(libc, "mount", None, point.encode(), None, flags, None):
            if not (point == "/proc" or point.startswith(("/proc/", "/sys"))):
                print(f"sandbox: could not make {point} read-only (errno {__import__('ctypes').get_errno()})",
                      file=sys.stderr)
                ok = False
    return ok


def _private_mounts(libc, mb, root, uid, features):
    """Our mounts stay in this namespace (private propagation); the whole tree becomes read-only; then the work dir
    gets a size-capped tmpfs (its disk use is bounded) and /tmp, /var/tmp, /dev/shm and /run get empty private
    ones: writes to the world-writable places (/run/lock too) land in memory that dies with the sandbox."""
    if "mnt" not in features or not _libc_call(libc, "mount", None, b"/", None, MS_REC | MS_PRIVATE, None):
        if root:   # no mount namespace: the work dir itself must be writable by the sandbox uid
            os.chown(".", uid, uid)
        return
    if _read_only_everywhere(libc):
        features.append("rofs")
    work = os.getcwd()
    owner = f",uid={uid},gid={uid}" if root else ""
    flags = MS_NOSUID | MS_NODEV
    if _libc_call(libc, "mount", b"tmpfs", work.encode(), b"tmpfs", flags, f"size={mb}m,mode=0700{owner}".encode()):
        os.chdir(work)  # the cwd now lies on the new tmpfs
        # the interpreter itself may live there (a virtual environment under /tmp): keep its top directory
        real = [os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)]
        if all(_cover(libc, d, f"size={mb}m,mode=1777".encode(),
                      {p[len(d) + 1:].split("/")[0] for p in real if p.startswith(d + "/")})
               for d in ("/tmp", "/var/tmp", "/dev/shm", "/run") if os.path.isdir(d) and not os.path.islink(d)):
            features.append("tmpfs")
    if root:
        try:
            _expose(libc, [p for p in sys.path if p and os.path.isdir(p)])
        except OSError:
            pass  # then "stdlib" is missing from the features: imports not yet loaded will fail, nothing worse


def _expose(libc, paths, rounds=4):
    """Inside the sandbox's mount namespace, make `paths` (the interpreter's sys.path) reachable for the sandbox
    uid. Python may live under a 0700 directory (here: pyenv in /root); the sandbox could then import no module
    that the trusted part had not already loaded. For each closed ancestor D on the way to a path we cover D with
    an empty 0755 tmpfs and bind-mount back only the child we need: the sandbox sees /root/.pyenv but nothing else
    of /root. Deeper closed directories are handled in the next round."""
    for _ in range(rounds):
        blocked = {}
        for p in paths:
            parts = os.path.realpath(p).strip("/").split("/")
            for k in range(1, len(parts)):
                d = "/" + "/".join(parts[:k])
                if not os.stat(d).st_mode & 0o001:  # no "x" for others: the sandbox uid cannot pass through D
                    blocked.setdefault(d, set()).add(parts[k])
                    break
        if not blocked:
            return
        for d, children in blocked.items():
            if not _cover(libc, d, b"size=1m,mode=0755", children):
                return


def _cover(libc, d, options, children=()):
    """Mount an empty tmpfs (mount options `options`) over directory d, then bind-mount back the entries
    `children` of d (names), so that only they stay visible under d (read-only, like their source). Returns
    whether the tmpfs was mounted."""
    keep = {c: os.open(os.path.join(d, c), os.O_PATH) for c in children}  # handles survive the cover
    ok = _libc_call(libc, "mount", b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options)
    for c, fd in keep.items():
        if ok:
            target = os.path.join(d, c)
            os.makedirs(target, 0o755, exist_ok=True)
            _libc_call(libc, "mount", f"/proc/self/fd/{fd}".encode(), target.encode(), None, MS_BIND | MS_REC, None)
        os.close(fd)
    return ok


def _fork_and_wait(loop: bool):
    """Fork; the parent waits for the child and exits with its status, the child returns."""
    pid = os.fork()
    if not pid:
        return
    while True:
        try:
            _, st = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(st) & 0xFF)
        except ChildProcessError:
            if not loop:
                raise
            os._exit(1)
        except InterruptedError:
            if not loop:
                raise
            continue


def _watchdog(child, max_bytes, max_procs):
    """P1 (pid 1 of the namespace, trusted): wait for P2 while bounding the whole tree. Every WATCHDOG_S it reads
    the private /proc; past max_bytes of total RSS or max_procs processes it kills every process of the namespace
    (kill(-1) from pid 1 reaches all of them, setsid or not). Exits when P2 does, which ends the namespace."""
    page = os.sysconf("SC_PAGE_SIZE")
    while True:
        try:
            pid, st = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            os._exit(1)
        if pid:
            os._exit(os.waitstatus_to_exitcode(st) & 0xFF)
        rss, procs = 0, 0
        for entry in os.listdir("/proc"):
            if entry.isdigit() and entry != "1":
                try:
                    with open(f"/proc/{entry}/statm") as f:
                        rss += int(f.read().split()[1]) * page
                    procs += 1
                except (OSError, ValueError, IndexError):
                    pass
        if rss > max_bytes or procs > max_procs:
            what = f"{rss >> 20} MB resident" if rss > max_bytes else f"{procs} processes"
            os.write(2, f"watchdog: killed the sandbox at {what}\n".encode())
            os.kill(-1, signal.SIGKILL)
            os._exit(1)
        time.sleep(WATCHDOG_S)


def _limit_and_drop(libc, payload, root, uid, features):
    """P2: limits and privileges, before the untrusted code. Limits only go down; nothing here can be undone by it."""
    import resource
    cpu, mem, mb = payload["cpu_s"], payload["memory_mb"] << 20, payload["file_mb"]
    nproc = payload["max_procs"]
    if not root:   # RLIMIT_NPROC counts every process of the (shared) real uid: allow max_procs more than now
        nproc += _processes_of(os.getuid())
    for lim, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
                       (resource.RLIMIT_FSIZE, (mb << 20, mb << 20)), (resource.RLIMIT_CORE, (0, 0)),
                       (resource.RLIMIT_NOFILE, (64, 64)), (resource.RLIMIT_NPROC, (nproc, nproc))):
        resource.setrlimit(lim, value)
    features.append("rlimits")
    if root:
        # Mandatory when root: running model code as root would defeat everything else. setuid fails -> exception
        # -> no code runs. A uid of its own: it cannot signal the trainer or other sandboxes, write root-owned
        # files, remount, or share a process quota with anyone. setuid away from 0 clears every capability.
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        features.append("uid")
    elif "user" in features and _libc_call(libc, "unshare", CLONE_NEWUSER) and _map_ids(NOBODY, 0, NOBODY, 0) \
            and _drop_capabilities(libc):
        # a nested user namespace where we are an unprivileged uid (nobody), and no capabilities at all: it owns
        # none of the mounts made above, and execve cannot give root's capabilities back
        features.append("caps")
    if _libc_call(libc, "prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        features.append("nnp")  # setuid binaries (su, sudo) cannot give privileges back
        if _seccomp(libc):
            features.append("seccomp")
    if os.access(os.path.dirname(os.__file__), os.R_OK | os.X_OK):
        features.append("stdlib")  # the standard library is importable at this uid


def _processes_of(uid) -> int:
    """Tasks (threads included, as RLIMIT_NPROC counts them) of real uid `uid`, read from /proc."""
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    st = dict(line.split(":", 1) for line in f if ":" in line)
                if int(st["Uid"].split()[0]) == uid:
                    n += int(st["Threads"])
            except (OSError, KeyError, ValueError):
                pass
    return n


def _drop_capabilities(libc) -> bool:
    """Empty the bounding set and the permitted/effective/inheritable sets (capset, version 3)."""
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and cap < 38:   # caps past the kernel's last are EINVAL
            return False
    header = struct.pack("Ii", 0x20080522, 0)
    data = bytes(24)   # two __user_cap_data_struct {effective, permitted, inheritable} = 0
    return libc.syscall(126 if platform.machine() == "x86_64" else 91, header, data) == 0   # capset


# seccomp (x86-64): syscalls the sandboxed program never needs and that an attacker would use: tracing and reading
# other processes, new namespaces and mounts, kernel keyrings, eBPF, io_uring (which bypasses this filter),
# module loading; socket(AF_UNIX, ...) too (a path socket of the host, like a session bus, would otherwise be
# reachable: the network namespace does not cover the file system's sockets). socketpair stays allowed.
_SYSCALLS_DENIED = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "unshare": 272, "setns": 308, "mount": 165,
    "umount2": 166, "pivot_root": 155, "chroot": 161, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "keyctl": 250, "add_key": 248, "request_key": 249, "kexec_load": 246, "kexec_file_load": 320,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "open_by_handle_at": 304, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "personality": 135,
}
_NR_CLONE, _NR_CLONE3, _NR_SOCKET = 56, 435, 41
_NEW_NAMESPACES = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | \
    CLONE_NEWNET | CLONE_NEWTIME


def _seccomp_program():
    """The classic-BPF program, as (code, jt, jf, k) tuples. Offsets into struct seccomp_data: nr 0, arch 4,
    args[0] 16 (low 32 bits on little-endian)."""
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, 0xC000003E), (RET, 0, 0, ALLOW),   # other arch (never installed there)
            (LD, 0, 0, 0), (JGE, 0, 1, 0x40000000), (RET, 0, 0, EPERM)]    # x32 ABI numbers: refused
    for nr in _SYSCALLS_DENIED.values():
        prog += [(JEQ, 0, 1, nr), (RET, 0, 0, EPERM)]
    prog += [(JEQ, 0, 1, _NR_CLONE3), (RET, 0, 0, ENOSYS),   # clone3 hides its flags in memory: libc falls back
             (JEQ, 0, 4, _NR_CLONE), (LD, 0, 0, 16), (JSET, 0, 1, _NEW_NAMESPACES), (RET, 0, 0, EPERM),
             (RET, 0, 0, ALLOW),
             (JEQ, 0, 3, _NR_SOCKET), (LD, 0, 0, 16), (JEQ, 0, 1, 1), (RET, 0, 0, EPERM),   # AF_UNIX == 1
             (RET, 0, 0, ALLOW)]
    return prog


def _seccomp(libc) -> bool:
    """Install the filter (after no_new_privs, which lets an unprivileged process do it). x86-64 only."""
    import ctypes
    if platform.machine() != "x86_64":
        return False
    prog = _seccomp_program()
    filt = (ctypes.c_uint64 * len(prog))(*(c | (jt << 16) | (jf << 24) | (k << 32) for c, jt, jf, k in prog))
    fprog = struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(filt))
    return libc.prctl(PR_SET_SECCOMP, 2, ctypes.c_char_p(fprog), 0, 0) == 0


def _run_untrusted(payload, report, results):
    """P2, untrusted from here: stdio to /dev/null, the solution, then each test's setup and expression in the
    solution's namespace, each under a SIGALRM step timeout, one result line after each. Nothing here decides a
    verdict: the expected values are not in this process."""
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

    def run(fn):
        try:
            signal.setitimer(signal.ITIMER_REAL, step)
            value, err = fn(), None
        except BaseException as e:  # noqa: BLE001 - SystemExit, timeouts, anything: the step failed
            value, err = None, repr(e)[:200]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if os.getpid() != me:  # a fork of the solution reached the harness: it must not report anything
            os._exit(0)
        return value, err

    env = {"__name__": "__solution__", "__builtins__": __builtins__}
    _, err = run(lambda: exec(compile(code, "<solution>", "exec", dont_inherit=True), env))
    report(solution=err)
    for i, setup, expr in tests:
        if err is not None:
            report(i=i, e="solution failed")
            continue
        value, terr = run(lambda: (exec(compile(setup, f"<test {i}>", "exec", dont_inherit=True), env),
                                   eval(compile(expr, f"<test {i}>", "eval", dont_inherit=True), env))[1])
        if terr is None:
            try:
                text = json.dumps(encode_value(value))
                if len(text) > MAX_VALUE_CHARS:
                    raise ValueError("value too large")
                os.write(results, ('{"i": %d, "v": %s}\n' % (i, text)).encode())
                continue
            except (TypeError, ValueError, RecursionError) as e:
                terr = repr(e)[:200]
        report(i=i, e=terr)
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        _sandbox_child()
    import argparse
    argparse.ArgumentParser(description="Print the isolation this machine gives sandboxed code "
                                        "(see the module docstring for what each feature means).").parse_args()
    print("sandbox isolation on this machine:", ",".join(sorted(sandbox_features())))
