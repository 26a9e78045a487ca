"""Shared machinery of the fault harness: constants, the engine's slow-down hook, running commands in
their own process groups with timeouts and kills, the run's context (work and case folders, seeded random
numbers, the bulwark binary and its discovery) and the per-scenario report."""

import atexit
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KiB, MiB = 1 << 10, 1 << 20
SECTOR = 512
DEBIAN_PYTHON = "/usr/bin/python3"
EXT = {"vhd": ".vhd", "vhdx": ".vhdx", "raw": ".img"}
QEMU_FMT = {"vhd": "vpc", "vhdx": "vhdx", "raw": "raw"}

# ---------------------------------------------------------------------------------------------------
# The engine's slow-down hook. ONE place: today an environment variable read by the copy loops; if it
# becomes a (hidden) command-line option, set BULWARK_HARNESS_SLOW_IO_OPTION=--the-option (or change
# this function) and every scenario follows.


def slow_io(microseconds):
    """(environment additions, extra arguments) that make bulwark sleep `microseconds` per copy step."""
    if not microseconds:
        return {}, []
    option = os.environ.get("BULWARK_HARNESS_SLOW_IO_OPTION")
    if option:
        return {}, [option, str(int(microseconds))]
    return {"BULWARK_TEST_SLOW_IO": str(int(microseconds))}, []


# ---------------------------------------------------------------------------------------------------
# Processes: every child runs in its own process group, is registered while alive, and is killed (the
# whole group, by its id) on timeout, on SIGKILL rounds and when the harness exits for any reason.

_live = {}
_live_lock = threading.Lock()


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all_live():
    with _live_lock:
        procs = list(_live.values())
        _live.clear()
    for p in procs:
        _kill_group(p.pid)
    for p in procs:
        try:
            p.wait(timeout=10)
        except Exception:
            pass


atexit.register(kill_all_live)

TRAP_TEXT = ("Fatal error", "SIGILL", "Illegal instruction", "Program crashed", "Segmentation fault",
             "SIGSEGV", "SIGABRT", "SIGTRAP", "SIGBUS", "Backtrace", "Crashed thread", "\U0001f4a3")
TRAP_CODES = {132, 133, 134, 135, 136, 139, -4, -5, -6, -7, -8, -11}


class Result:
    def __init__(self, argv, rc, out, err, elapsed, timed_out=False, killed=False):
        self.argv, self.rc, self.out, self.err = argv, rc, out, err
        self.elapsed, self.timed_out, self.killed = elapsed, timed_out, killed

    @property
    def trap(self):
        """Why this run looks like a crash (Swift trap, signal, backtrace), or None."""
        if self.killed or self.timed_out:
            return None
        for t in TRAP_TEXT:
            if t in self.err:
                return f"'{t}' on stderr"
        if self.rc in TRAP_CODES:
            return f"exit status {self.rc} (a signal)"
        return None

    @property
    def message(self):
        """stderr with the harness's own paths reduced to their file names, so that matching words in
        it never matches a folder name (scenario folders are named after what they test)."""
        w = HarnessCore.current.work if HarnessCore.current else None
        text = self.err
        if w:
            text = re.sub(re.escape(w) + r"/[^\s:,;'\"]*/([^/\s:,;'\"]+)", r"\1", text)
        return text

    def brief(self, limit=300):
        err = " | ".join(l.strip() for l in self.message.strip().splitlines() if l.strip())
        if len(err) > limit:
            err = err[:limit] + "..."
        state = "killed" if self.killed else ("TIMED OUT" if self.timed_out else f"exit {self.rc}")
        return f"{state} after {self.elapsed:.2f}s" + (f", stderr: {err}" if err else "")

    def cmdline(self):
        return " ".join(short_path(a) for a in self.argv)


def short_path(a):
    a = str(a)
    w = HarnessCore.current.work if HarnessCore.current else None
    if w and a.startswith(w):
        return "$W" + a[len(w):]
    return a


def run(argv, timeout, env=None, stdin_file=None, stdout_file=None, feed=None, kill_after=None):
    """Runs argv in a new process group; returns a Result. `feed` = (path, piece, pause) streams a file
    into standard input in pieces; `kill_after` (seconds) sends SIGKILL to the group at that moment."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    out_tmp = tempfile.TemporaryFile() if stdout_file is None else None
    out_fh = open(stdout_file, "wb") if stdout_file is not None else None
    err_tmp = tempfile.TemporaryFile()
    in_fh = open(stdin_file, "rb") if stdin_file else None
    stdin = subprocess.PIPE if feed else (in_fh or subprocess.DEVNULL)
    start = time.monotonic()
    p = subprocess.Popen([str(a) for a in argv], stdin=stdin, stdout=out_fh or out_tmp, stderr=err_tmp,
                         env=full_env, start_new_session=True, close_fds=True)
    with _live_lock:
        _live[p.pid] = p
    feeder = None
    if feed:
        feeder = threading.Thread(target=_feed, args=(p, feed), daemon=True)
        feeder.start()
    killed = timed_out = False
    try:
        deadline = start + timeout
        kill_at = start + kill_after if kill_after is not None else None
        pause = 0.0005
        while True:
            # Wait without reaping, so the group id stays ours until the group is killed below.
            try:
                st = os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                st = True
            if st:
                break
            now = time.monotonic()
            if kill_at is not None and now >= kill_at:
                _kill_group(p.pid)
                killed = True
                break
            if now >= deadline:
                _kill_group(p.pid)
                timed_out = True
                break
            nxt = min(deadline, kill_at) if kill_at is not None else deadline
            time.sleep(max(0.0, min(pause, nxt - now)))
            pause = min(pause * 1.5, 0.02)
        _kill_group(p.pid)  # anything the command left in its group (it is gone or killed by now)
        rc = p.wait()
    finally:
        if p.poll() is None:
            _kill_group(p.pid)
            p.wait()
        with _live_lock:
            _live.pop(p.pid, None)
        if feeder:
            feeder.join(timeout=5)
        if in_fh:
            in_fh.close()
        if out_fh:
            out_fh.close()
    elapsed = time.monotonic() - start
    out = b""
    if out_tmp:
        out_tmp.seek(0)
        out = out_tmp.read(1 << 20)
        out_tmp.close()
    err_tmp.seek(0)
    err = err_tmp.read(1 << 20).decode("utf-8", "replace")
    err_tmp.close()
    if killed and rc == 0:
        killed = False  # it finished in the same instant; the kill found only the exited process
    return Result(argv, rc, out, err, elapsed, timed_out=timed_out, killed=killed)


def _feed(p, feed):
    path, piece, pause = feed
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(piece)
                if not chunk:
                    break
                p.stdin.write(chunk)
                p.stdin.flush()
                if pause:
                    time.sleep(pause)
    except (BrokenPipeError, OSError, ValueError):
        pass
    finally:
        try:
            p.stdin.close()
        except Exception:
            pass


# ---------------------------------------------------------------------------------------------------
# Harness context


class SetupError(Exception):
    """A fixture step failed (the engine refused to build a test image): reported as a failure."""


class Scenario:
    def __init__(self, name, kind):
        self.name, self.kind = name, kind
        self.passed = self.failed = 0
        self.failures = []  # (case label, [problems])
        self.notes = []
        self.seconds = 0.0

    def record(self, label, problems, verbose):
        if problems:
            self.failed += 1
            self.failures.append((label, problems))
            print(f"  FAIL {label}: {problems[0]}", flush=True)
            for p in problems[1:]:
                print(f"       {p}", flush=True)
        else:
            self.passed += 1
            if verbose:
                print(f"  pass {label}", flush=True)


class HarnessCore:
    """The run's context: options, the binary, the work folder and its case folders, seeded random
    numbers; oracles.Harness adds the checks made on images."""
    current = None

    def __init__(self, args, bulwark, work):
        HarnessCore.current = self
        self.args, self.bulwark, self.work = args, bulwark, work
        self.quick = args.quick
        self.verbose = args.verbose
        self.timeout = args.timeout
        self.size = (16 if args.quick else 48) * MiB
        self.rounds = args.rounds
        self.seed = args.seed
        self.case_counter = 0
        self.calibrations = {}
        self.notes = []      # harness-wide notes (oracle limitations met), printed at the end
        self.noted = set()
        self.have_qemu = shutil.which("qemu-img") is not None
        self.have_strace = shutil.which("strace") is not None
        self.have_pyvhdi = os.path.exists(DEBIAN_PYTHON) and subprocess.run(
            [DEBIAN_PYTHON, "-c", "import pyvhdi"], capture_output=True).returncode == 0

    # -- bulwark

    def bw(self, args, slow=0, timeout=None, **kw):
        env, extra = slow_io(slow)
        return run([self.bulwark] + list(args) + extra, timeout or self.timeout, env=env, **kw)

    def bw_ok(self, args, **kw):
        r = self.bw(args, **kw)
        if r.rc != 0 or r.trap:
            raise SetupError(f"`bulwark {' '.join(short_path(a) for a in args)}` failed: {r.brief()}")
        return r

    def rng(self, *parts):
        return random.Random(":".join(str(p) for p in (self.seed,) + parts))

    def case_dir(self, scenario):
        self.case_counter += 1
        d = os.path.join(self.work, f"{self.case_counter:04d}-{scenario}")
        os.makedirs(d)
        return d


# ---------------------------------------------------------------------------------------------------
# Binary discovery


def find_bulwark(explicit):
    if explicit:
        return os.path.abspath(explicit)
    # The build tools/build makes: `swift build -c release --static-swift-stdlib --product bulwark`.
    if shutil.which("swift"):
        try:
            r = subprocess.run(["swift", "build", "-c", "release", "--static-swift-stdlib", "--product", "bulwark",
                                "--show-bin-path"], cwd=REPO, capture_output=True, text=True, timeout=120)
            p = os.path.join(r.stdout.strip(), "bulwark")
            if r.returncode == 0 and os.access(p, os.X_OK):
                return p
        except (subprocess.TimeoutExpired, OSError):
            pass
    p = os.path.join(REPO, ".build", "release", "bulwark")
    if os.access(p, os.X_OK):
        return p
    return None
