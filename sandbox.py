"""The code sandbox: model-written code runs here against a task's tests, isolated from the trainer and the machine.

    from sandbox import run_code
    run_code("def add(a, b):\n    return a + b", ["assert add(1, 2) == 3"]).score      # -> 1.0
    python -m pytest -q tests/test_sandbox.py            # hostile programs against this machine's isolation

rewards.code_reward (R1 §2.2.2: code accuracy by compiling and running test cases) is the only caller in the
pipeline. The child process is this same file run as `python -I sandbox.py --child`.
"""
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

MAX_CODE_CHARS = 50_000     # code longer than this is not run (score 0)
MAX_TESTS = 100             # tests per task run in the sandbox
MAX_TEST_CHARS = 10_000     # per test

# Process tree (the trainer never runs model code itself; no preexec_fn, so it is safe from the thread pool):
#   trainer --Popen(python -I sandbox.py --child, env={}, new session, cwd=fresh temp dir)--> P0
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
# What this protects (tests/test_sandbox.py checks each on this machine; sandbox_features() says what applied):
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
                [sys.executable, "-I", os.path.abspath(__file__), "--child"],
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
    """Entry point of the sandbox child (python -I sandbox.py --child). Runs in P0, then forks P1 and P2.
    Everything before _run_untrusted is our code; the payload arrives on stdin."""
    import ctypes
    payload = json.loads(sys.stdin.buffer.read())
    token, fd = payload["token"], payload["fd"]

    def report(*fields):
        line = "\t".join([token] + [str(x).replace("\t", " ").replace("\n", " ") for x in fields]) + "\n"
        os.write(fd, line.encode("utf-8", "replace"))

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    root = os.geteuid() == 0
    features = _unshare(libc, root)
    _private_mounts(libc, payload["file_mb"], root, features)
    _fork_and_wait(loop=False)  # P0 waits for P1
    # P1: pid 1 of the new pid namespace (if any). A /proc of its own hides the trainer's processes.
    if "pid" in features and "mnt" in features and _libc_call(
            libc, "mount", b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None):
        features.append("proc")
    _fork_and_wait(loop=True)  # P1 waits for P2 only; when P1 exits, the kernel kills the rest of the namespace
    _limit_and_drop(libc, payload, root, features)
    report("features", ",".join(features))
    _run_untrusted(payload, report)


def _unshare(libc, root) -> list:
    """New namespaces (best effort, each reported). Without root, a user namespace grants the rights for the others."""
    features = []
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
    return features


def _private_mounts(libc, mb, root, features):
    """Our mounts stay in this namespace (private propagation). The work dir becomes a size-capped tmpfs (its disk
    use is bounded), then /tmp, /var/tmp and /dev/shm are covered by empty private tmpfs: writes to the
    world-writable places land in memory that dies with the sandbox."""
    if "mnt" not in features or not _libc_call(libc, "mount", None, b"/", None, MS_REC | MS_PRIVATE, None):
        return
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


def _limit_and_drop(libc, payload, root, features):
    """P2: limits and privileges, before the untrusted code. Limits only go down; nothing here can be undone by it."""
    import resource
    cpu, mem, mb = payload["cpu_s"], payload["memory_mb"] << 20, payload["file_mb"]
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


def _run_untrusted(payload, report):
    """P2, untrusted from here: stdio to /dev/null, the solution, then each test in the solution's namespace, each
    under a SIGALRM step timeout, one report line after each."""
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
    env = {"__name__": "__solution__", "__builtins__": __builtins__}
    err = run(code, "<solution>", env)
    report("solution", "ok" if err is None else "fail", err or "")
    for i, test in enumerate(tests):
        terr = run(test, f"<test {i}>", env) if err is None else "solution failed"
        report("test", i, "ok" if terr is None else "fail", terr or "")
    os._exit(0)

if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        _sandbox_child()
    print("sandbox isolation on this machine:", ",".join(sorted(sandbox_features())))
