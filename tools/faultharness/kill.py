"""kill-* scenarios: an operation SIGKILLed at random moments of its calibrated duration."""

import shutil

from .common import KiB, SetupError
from .ops import CompactOp, ConvertOp, MergeOp, ResizeOp, WriteOp


def kill_ops(quick):
    """Per kill scenario, the operation configurations its rounds rotate through."""
    return {
        "kill-write-vhd": [WriteOp("vhd", False), WriteOp("vhd", True)],
        "kill-write-vhdx": [WriteOp("vhdx", False), WriteOp("vhdx", True)],
        "kill-merge-vhd": [MergeOp("vhd", True), MergeOp("vhd", False)],
        "kill-merge-vhdx": [MergeOp("vhdx", True), MergeOp("vhdx", False)],
        "kill-convert": [ConvertOp("vhdx", "vhdx", "dynamic"), ConvertOp("vhd", "vhdx", "fixed"),
                         ConvertOp("vhdx", "vhd", "dynamic"), ConvertOp("vhdx", "raw", "fixed"),
                         ConvertOp("vhd", "vhd", "fixed"), ConvertOp("vhdx", "vhdx", "fixed")],
        "kill-compact": [CompactOp("vhdx", False), CompactOp("vhd", False), CompactOp("vhdx", True),
                         CompactOp("vhd", True)],
        "kill-resize": [ResizeOp("vhdx", "dynamic"), ResizeOp("vhd", "dynamic"), ResizeOp("vhd", "fixed"),
                        ResizeOp("vhdx", "fixed")],
    }


# ---------------------------------------------------------------------------------------------------
# Kill rounds

TARGET_SPAN = {True: 0.5, False: 1.0}   # seconds an operation should take while we aim kills at it


def calibrate(H, op, seed_parts, target=None):
    """(slow-io microseconds, seconds the op takes) for this configuration, measured on an identical
    fixture (same seed) in a scratch folder: once at full speed, then slowed until it takes about
    TARGET_SPAN seconds. An operation whose loops do not honour slow_io() keeps its own duration."""
    target = target or TARGET_SPAN[H.quick]
    key = f"{op.label()}@{target}"
    if key in H.calibrations:
        return H.calibrations[key]
    if not op.paced_by_engine:
        # `disk write` has no paced loop (it reads its input in 4 MiB pieces): the harness paces the
        # input it streams into standard input instead, over `target` seconds (see kill_round).
        H.calibrations[key] = (0, target)
        return H.calibrations[key]

    def measure(slow):
        d = H.case_dir("calibrate")
        try:
            op.prepare(H, d, H.rng(*seed_parts))
            r = H.bw(op.argv(), slow=slow)
            if r.rc != 0 or r.trap or r.timed_out:
                raise SetupError(f"calibration run `{r.cmdline()}` failed: {r.brief()}")
            return r.elapsed
        finally:
            if not H.args.keep:
                shutil.rmtree(d, ignore_errors=True)

    base = measure(0)
    probe = 20000
    slowed = measure(probe)
    extra = slowed - base
    if H.verbose:
        print(f"  calibrate {key}: {base:.3f}s at full speed, {slowed:.3f}s at {probe}us per step", flush=True)
    if extra < 0.1:
        # Not slowed down: the engine does not pace this operation; aim kills at its own duration.
        H.calibrations[key] = (0, base)
        return H.calibrations[key]
    steps = extra / (probe / 1e6)
    slow = max(200, min(50000, int((target - base) / steps * 1e6)))
    span = base + steps * slow / 1e6
    H.calibrations[key] = (slow, span)
    return H.calibrations[key]


def kill_round(H, sc, op, rnd, kills_per_round):
    seed_parts = (sc.name, op.label(), rnd)
    slow, span = calibrate(H, op, seed_parts)
    rng = H.rng(*seed_parts, "kills")
    d = H.case_dir(sc.name)
    op.prepare(H, d, H.rng(*seed_parts))
    problems, delays, killed = [], [], 0
    for k in range(kills_per_round):
        if not op.needs_rerun():
            break
        if isinstance(op, WriteOp) and k % 2 == 0:
            # Input streamed through a pipe at a steady pace (a backup stream), killed part way.
            piece = 256 * KiB
            delay = rng.uniform(0.0, span * 1.1)
            r = H.bw(op.stdin_argv(), feed=(op.input, piece, span * piece / len(op.data)), kill_after=delay)
        elif isinstance(op, WriteOp):
            # The same write from a file at full speed (a few tenths of a second at most).
            delay = rng.uniform(0.0, 0.3)
            r = H.bw(op.argv(), kill_after=delay)
        else:
            # Unpaced operations spend their first ~30 ms starting up: aim at the part that works.
            delay = rng.uniform(0.01 if slow else span * 0.35, span * 0.98)
            r = H.bw(op.argv(), slow=slow, kill_after=delay)
        delays.append(f"{delay:.3f}s")
        if r.killed:
            killed += 1
        elif r.rc != 0 or r.trap or r.timed_out:
            problems.append(f"run {k + 1} (not killed) failed: `{r.cmdline()}`: {r.brief()}")
        for p in op.check_state(H):
            problems.append(f"after kill {k + 1} at {delay:.3f}s: {p}")
        if problems:
            break  # no more kills; still see whether a re-run recovers, for the evidence
    rerun_ok = True
    before = len(problems)
    if op.needs_rerun():
        r = H.bw(op.argv())
        if r.rc != 0 or r.trap or r.timed_out:
            rerun_ok = False
            problems.append(f"re-run `{r.cmdline()}` did not complete: {r.brief()}")
    if rerun_ok:
        problems += [f"after the re-run: {p}" for p in op.check_final(H)]
        if before and len(problems) == before:
            problems.append("(the re-run then completed and every final check passed)")
    label = f"{op.label()} round {rnd + 1} (slow {slow}us, span {span:.2f}s, kills at {', '.join(delays) or '-'}, {killed} landed)"
    return label, problems, d
