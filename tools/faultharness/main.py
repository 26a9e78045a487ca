"""Adversarial crash and fault harness for `bulwark disk`.

Drives the release binary as a black box and checks the design's invariants from the outside:

  kill-*      an operation (write, merge, convert, compact, resize) is started and SIGKILLed at a random
              moment of its calibrated duration; the image (or chain leaf) must then read the old or the
              new content (for `disk write`, which is not atomic, each 512-byte sector old or new); the
              same command re-run must complete (a merge resumes); afterwards `bulwark disk check`
              exits 0, `qemu-img check` is clean (VHDX, not differencing), `qemu-img compare` matches
              the expected raw bytes (not differencing) and pyvhdi reads the expected bytes (chains too).
  fault-*     the same operations run under `strace -f -e inject=SYSCALL:error=ERRNO:when=N[+]`; the
              command must exit non-zero with a clear message (never a Swift trap) or exit 0 with a
              correct result; the images must read old or new content, and a re-run must finish clean.
  adv-*       adversarial inputs: huge numbers, a FIFO as a parent, truncated and tiny images, a write
              into a parent that has children, a write or reads racing a merge.

Every scenario prints `NAME: N passed, N failed` and the evidence of each failure; the last line is
`N passed, N failed` over all scenarios; the exit status is 1 when anything failed.

    tools/fault-harness --quick                  # CI-sized (about 2 minutes)
    tools/fault-harness --rounds 4 --seed 7      # more kill rounds and fault points
    tools/fault-harness --only 'merge' --keep -v # a subset, keeping the work folder

Standard library only. pyvhdi is used through Debian's /usr/bin/python3 in a subprocess, so the harness
runs under any python3. `strace` and `qemu-img` come from tools/setup.
"""

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback

from .adversarial import ADVERSARIAL
from .common import Scenario, SetupError, find_bulwark, kill_all_live
from .faults import FAULTS, QUICK_FAULTS, Fixture, fault_case, fault_ops, syscall_counts
from .kill import kill_ops, kill_round
from .oracles import Harness

# ---------------------------------------------------------------------------------------------------
# Driver


def scenario_list(H):
    items = []
    for name, ops in kill_ops(H.quick).items():
        items.append((name, "kill", ops))
    for name, ops in fault_ops().items():
        items.append((name, "fault", ops))
    for name, fn in ADVERSARIAL:
        items.append((name, "adversarial", fn))
    return items


def run_scenario(H, name, kind, what):
    sc = Scenario(name, kind)
    print(f"== {name}", flush=True)
    t0 = time.monotonic()

    def guarded(label, fn):
        try:
            return fn()
        except SetupError as e:
            sc.record(label, [f"fixture: {e}"], H.verbose)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            tb = traceback.format_exc().strip().splitlines()
            sc.record(label, [f"harness error: {e!r}"] + tb[-4:], H.verbose)
        return None

    if kind == "kill":
        ops = what
        kills = 2 if H.quick else 3
        rounds = H.rounds if not H.quick else max(1, min(H.rounds, len(ops) // 2 or 1))
        for rnd in range(max(rounds, 1) if H.quick else max(rounds, len(ops))):
            op = ops[rnd % len(ops)]

            def one():
                label, problems, d = kill_round(H, sc, op, rnd, kills)
                sc.record(label, problems, H.verbose)
                if not H.args.keep:
                    shutil.rmtree(d, ignore_errors=True)
            guarded(f"{op.label()} round {rnd + 1}", one)
    elif kind == "fault":
        if not H.have_strace:
            sc.record("strace", ["strace is not installed (apt-get install strace; tools/setup installs it)"], H.verbose)
        else:
            ops = what
            samples = 1 if H.quick else max(1, H.rounds // 2 + 1)
            not_reached = 0
            op_list = ops[:2] if H.quick else ops
            for oi, op in enumerate(op_list):
                fixture = guarded(f"{op.label()} fixture", lambda: Fixture(H, sc.name, op, (sc.name, op.label(), "fault")))
                if fixture is None:
                    continue
                counts = guarded(f"{op.label()} syscall count", lambda: syscall_counts(H, op, fixture))
                if counts is None:
                    fixture.remove()
                    continue
                rng = H.rng(sc.name, op.label(), "points")
                faults = [(s, e) for s, e in FAULTS if counts.get(s)]
                if H.quick:
                    faults = [(s, e) for s, e in faults if s in QUICK_FAULTS]
                    # One errno per syscall in quick mode.
                    seen, f2 = set(), []
                    for s, e in faults:
                        if s not in seen:
                            seen.add(s)
                            f2.append((s, e))
                    faults = f2
                for s, e in faults:
                    # The first and last call, then calls drawn at random; one drawn call in quick mode.
                    n = counts[s]
                    candidates = [rng.randint(1, n)] if H.quick else [1, n] + [rng.randint(1, n) for _ in range(samples)]
                    points = list(dict.fromkeys(candidates))[:samples]
                    for i, when in enumerate(points):
                        persistent = (i + oi) % 2 == 1

                        def one():
                            nonlocal not_reached
                            label, problems, warnings, d, reached = fault_case(H, sc, op, fixture, s, e, when, persistent)
                            if not reached and not problems:
                                not_reached += 1
                                if H.verbose:
                                    print(f"  skip {label}", flush=True)
                            else:
                                sc.record(label, problems, H.verbose)
                            for w in warnings:
                                sc.notes.append(f"{label}: {w}")
                                print(f"  warn {label}: {w}", flush=True)
                            if problems and H.args.keep:
                                fixture.keep_copy(f"{s}-{e}-{when}{'+' if persistent else ''}")
                        guarded(f"{op.label()} {s}:{e}@{when}", one)
                if not H.args.keep:
                    fixture.remove()
            if not_reached:
                sc.notes.append(f"{not_reached} injection point(s) not counted: not reached by that thread, or an eventfd wake-up of the runtime")
    else:
        guarded(name, lambda: what(H, sc))
    sc.seconds = time.monotonic() - t0
    print(f"{name}: {sc.passed} passed, {sc.failed} failed ({sc.seconds:.1f}s)", flush=True)
    return sc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--bulwark", help="the binary (default: the release build of tools/build, else .build/release/bulwark)")
    ap.add_argument("--rounds", type=int, default=None, help="kill rounds per kill scenario and fault points per "
                    "syscall (default 4; 1 with --quick)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: time-based, printed)")
    ap.add_argument("--quick", action="store_true", help="CI-sized run (about 2 minutes)")
    ap.add_argument("--work", help="work folder (default: a new temporary folder, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--only", help="run only scenarios whose name matches this regular expression")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for any one command (default 120)")
    ap.add_argument("--strict-fsync", action="store_true", help="count exit 0 after an injected fsync/fdatasync "
                    "error as a failure (default: a warning)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 4
    if args.seed is None:
        args.seed = int(time.time()) % 100000

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    made_work = args.work is None
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="bulwark-fault-")
    os.makedirs(work, exist_ok=True)
    H = Harness(args, None, work)
    items = scenario_list(H)
    if args.only:
        items = [i for i in items if re.search(args.only, i[0])]
    if args.list:
        for name, kind, _ in items:
            print(f"{name}  ({kind})")
        if made_work:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    bulwark = find_bulwark(args.bulwark)
    if not bulwark or not os.access(bulwark, os.X_OK):
        print("fault-harness: no bulwark binary: run tools/build or pass --bulwark PATH", file=sys.stderr)
        return 2
    H.bulwark = bulwark
    missing = [n for n, ok in (("qemu-img", H.have_qemu), ("pyvhdi", H.have_pyvhdi), ("strace", H.have_strace)) if not ok]
    print(f"fault-harness: {bulwark}, seed {args.seed}, rounds {args.rounds}{', quick' if args.quick else ''}, "
          f"work {work}" + (f"; missing oracles: {', '.join(missing)}" if missing else ""), flush=True)
    t0 = time.monotonic()
    results = []
    interrupted = False
    try:
        for name, kind, what in items:
            results.append(run_scenario(H, name, kind, what))
    except KeyboardInterrupt as e:
        interrupted = True
        print(f"fault-harness: interrupted ({e})", file=sys.stderr)
    finally:
        kill_all_live()
        if made_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"fault-harness: work folder kept: {work}")

    total = time.monotonic() - t0
    print()
    print(f"{'scenario':<26} {'kind':<12} {'passed':>6} {'failed':>6} {'time':>7}")
    for sc in results:
        print(f"{sc.name:<26} {sc.kind:<12} {sc.passed:>6} {sc.failed:>6} {sc.seconds:>6.1f}s")
    failures = [sc for sc in results if sc.failures]
    if failures:
        print("\nfailures (scenario / case / evidence):")
        for sc in failures:
            for label, problems in sc.failures:
                print(f"- {sc.name} / {label}")
                for p in problems[:6]:
                    print(f"    {p}")
    notes = [(sc.name, n) for sc in results for n in sc.notes] + [("oracles", n) for n in H.notes]
    if notes:
        print("\nnotes:")
        for name, n in notes:
            print(f"- {name}: {n}")
    passed = sum(sc.passed for sc in results)
    failed = sum(sc.failed for sc in results)
    print(f"\nseed {args.seed}, {total:.0f}s; re-run with: tools/fault-harness --seed {args.seed} --rounds {args.rounds}"
          f"{' --quick' if args.quick else ''}" + (f" --only '{args.only}'" if args.only else ""))
    print(f"{passed} passed, {failed} failed")
    if interrupted:
        return 130
    return 1 if failed else 0
