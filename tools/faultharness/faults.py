"""fault-* scenarios: operations run under strace with an error injected into one system call."""

import os
import re
import shutil

from .common import SetupError, run
from .ops import CompactOp, ConvertOp, MergeOp, ResizeOp, WriteOp


# ---------------------------------------------------------------------------------------------------
# Fault injection with strace

FAULTS = [("fsync", "EIO"), ("fdatasync", "EIO"), ("pwrite64", "ENOSPC"), ("pwrite64", "EIO"),
          ("rename", "EIO"), ("renameat", "EIO"), ("renameat2", "EIO"), ("ftruncate", "EIO"),
          ("fallocate", "ENOSPC"), ("unlink", "EIO"), ("unlinkat", "EIO"), ("write", "ENOSPC")]
QUICK_FAULTS = {"fsync", "fdatasync", "pwrite64", "rename", "renameat", "renameat2", "ftruncate", "unlink", "write"}
ERRNO_TEXT = {
    "EIO": r"Input/output error|\bEIO\b|errno 5\b|I/O error",
    "ENOSPC": r"No space left|\bENOSPC\b|errno 28\b|not enough (free )?space|insufficient space",
}
CLEAR_MESSAGE = r"error|failed|cannot|could not|not enough|no space|refus"


class Fixture:
    """An operation's images prepared once and restored to the very same paths before each case (so
    parent locators, relative or absolute, stay valid and the op's expected bytes still apply)."""

    def __init__(self, H, scenario, op, seed_parts):
        self.H = H
        self.d = H.case_dir(scenario)
        op.prepare(H, self.d, H.rng(*seed_parts))
        self.template = self.d + ".template"
        shutil.copytree(self.d, self.template, symlinks=True)

    def restore(self):
        shutil.rmtree(self.d, ignore_errors=True)
        shutil.copytree(self.template, self.d, symlinks=True)
        return self.d

    def keep_copy(self, tag):
        shutil.copytree(self.d, f"{self.d}.{tag}", symlinks=True)

    def remove(self):
        shutil.rmtree(self.d, ignore_errors=True)
        shutil.rmtree(self.template, ignore_errors=True)


def syscall_counts(H, op, fixture):
    """{syscall: largest number of calls made by one thread} among the fault candidates, from one
    traced run of the operation on a fresh copy of its fixture."""
    names = sorted({s for s, _ in FAULTS})
    d = fixture.restore()
    trace = os.path.join(d, ".trace")
    r = run(["strace", "-f", "-qq", "-o", trace, "-e", "trace=" + ",".join(names), H.bulwark] + op.argv(), H.timeout)
    if r.rc != 0:
        raise SetupError(f"`{r.cmdline()}` under strace failed: {r.brief()}")
    per = {}
    with open(trace, errors="replace") as f:
        for line in f:
            m = re.match(r"^(\d+)\s+(\w+)\(", line)
            if m and "resumed>" not in line:
                per.setdefault(m.group(2), {}).setdefault(m.group(1), 0)
                per[m.group(2)][m.group(1)] += 1
    return {s: max(v.values()) for s, v in per.items()}


def fault_case(H, sc, op, fixture, syscall, err, when, persistent):
    d = fixture.restore()
    trace = os.path.join(d, ".trace")
    spec = f"{syscall}:error={err}:when={when}{'+' if persistent else ''}"
    r = run(["strace", "-f", "-qq", "-o", trace, "-e", "trace=" + syscall, "-e", "inject=" + spec,
             H.bulwark] + op.argv(), H.timeout)
    injected = []
    if os.path.exists(trace):
        with open(trace, errors="replace") as f:
            injected = [l.strip() for l in f if "(INJECTED)" in l]
    label = f"{op.label()} {spec}"
    problems, warnings = [], []
    if not injected:
        label += " (not reached)"
    if syscall == "write" and any(re.search(r'write\(\d+, "\\1\\0\\0\\0\\0\\0\\0\\0", 8\)', l) for l in injected):
        # An 8-byte counter write is the runtime waking a thread through an eventfd, not an I/O path
        # of the engine: a failure there says nothing about bulwark. Not counted.
        return label + " (hit an eventfd wake-up: not counted)", [], [], d, False
    msg = r.message.strip()
    if r.trap:
        where = f" (injected: {injected[0][:100]})" if injected else ""
        problems.append(f"crashed instead of reporting the error{where}: {r.brief(600)}")
    elif r.timed_out:
        problems.append(f"hung: {r.brief()}")
    elif r.rc != 0:
        if not injected:
            problems.append(f"failed although no fault was injected: {r.brief()}")
        elif not msg:
            problems.append(f"exit {r.rc} with no message on stderr")
        elif not re.search(ERRNO_TEXT[err], msg, re.I):
            if re.search(CLEAR_MESSAGE, msg, re.I):
                warnings.append(f"exit {r.rc}; the message does not name {err}: {msg[:200]}")
            else:
                problems.append(f"exit {r.rc} with an unclear message: {msg[:300]}")
    # The state right after the faulted run: old or new content, never anything else.
    state = [f"after the fault: {p}" for p in op.check_state(H)]
    problems += state
    if r.rc == 0 and not r.trap and not r.timed_out:
        if injected and syscall in ("fsync", "fdatasync"):
            w = f"exit 0 although {syscall} failed with {err} ({injected[0][:120]})"
            (problems if H.args.strict_fsync else warnings).append(w)
        # Exit 0 promises the operation is complete: check it as it is, without re-running.
        if not state:
            problems += [f"exit 0 but the result is wrong: {p}" for p in op.check_final(H, full=False)]
    else:
        # The same command without the fault must finish the job and leave everything clean.
        rerun_ok = True
        if op.needs_rerun():
            rr = H.bw(op.argv())
            if rr.rc != 0 or rr.trap or rr.timed_out:
                rerun_ok = False
                problems.append(f"re-run without the fault did not complete: `{rr.cmdline()}`: {rr.brief()}")
        if rerun_ok:
            before = len(problems)
            problems += [f"after the re-run: {p}" for p in op.check_final(H, full=not H.quick)]
            if before and len(problems) == before:
                problems.append("(a re-run without the fault then completed and the final checks passed)")
    return label, problems, warnings, d, bool(injected)


def fault_ops():
    return {
        "fault-write": [WriteOp("vhdx", False), WriteOp("vhd", True), WriteOp("vhdx", True), WriteOp("vhd", False)],
        "fault-merge": [MergeOp("vhdx", True), MergeOp("vhd", False), MergeOp("vhdx", False), MergeOp("vhd", True)],
        "fault-convert": [ConvertOp("vhdx", "vhdx", "dynamic"), ConvertOp("vhd", "vhd", "fixed"),
                          ConvertOp("vhdx", "raw", "fixed")],
        "fault-compact": [CompactOp("vhdx", False), CompactOp("vhd", False)],
        "fault-resize": [ResizeOp("vhdx", "dynamic"), ResizeOp("vhd", "fixed")],
    }
