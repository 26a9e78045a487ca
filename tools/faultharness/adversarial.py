"""adv-* scenarios: adversarial inputs (huge numbers, FIFOs, truncated and tiny images, a write into a
parent, writes and reads racing a merge, a replaced parent)."""

import os
import re
import shutil
import threading
import time

from .common import EXT, KiB, MiB, SECTOR, short_path
from .kill import calibrate
from .oracles import same_or_diff, sha, write_bytes
from .ops import MergeOp, build_chain


# ---------------------------------------------------------------------------------------------------
# Adversarial inputs


def expect_refusal(r, what, allow_empty=False, message=None):
    """Problems unless r is a clean refusal: non-zero exit, no trap, no hang, a message (on standard
    error, or `message` when the command reports on standard output, as `check` lists its findings)."""
    if r.timed_out:
        return [f"{what}: hung ({r.brief()})"]
    if r.trap:
        return [f"{what}: crashed: {r.brief(600)}"]
    if r.rc == 0:
        return [f"{what}: exited 0 (expected a refusal)"]
    if not allow_empty and not (r.err if message is None else message).strip():
        return [f"{what}: exit {r.rc} without a message"]
    return []


def adv_large_numbers(H, sc):
    d = H.case_dir(sc.name)
    rng = H.rng(sc.name)
    imgs = {}
    for fmt in ("vhd", "vhdx", "raw"):
        imgs[fmt] = build_chain(H, d, fmt, 0, rng, size=4 * MiB, name=f"n-{fmt}-", extents=2)
    big, huge = "9223372036854775808", "18446744073709551615"
    one = os.path.join(d, "one.bin")
    write_bytes(one, b"\xab" * SECTOR)
    cases = []
    for fmt in ("vhd", "vhdx"):
        p = imgs[fmt].leaf
        cases += [
            (f"read {fmt} --length 2^63", ["disk", "read", p, "--length", big], p, None),
            (f"read {fmt} --offset 1 --length 2^64-1", ["disk", "read", p, "--offset", "1", "--length", huge], p, None),
            (f"read {fmt} --offset 2^64-1", ["disk", "read", p, "--offset", huge, "--length", "1"], p, None),
            (f"write {fmt} --offset 2^63", ["disk", "write", p, "--offset", big, "--input", one], p, None),
            (f"write {fmt} --offset 2^64-1", ["disk", "write", p, "--offset", huge, "--input", one], p, None),
            (f"resize {fmt} --size 2^63", ["disk", "resize", p, "--size", big], p, None),
            (f"resize {fmt} --size 2^64-1", ["disk", "resize", p, "--size", huge], p, None),
        ]
    cases += [(f"resize raw --size 2^63", ["disk", "resize", imgs["raw"].leaf, "--size", big], imgs["raw"].leaf, None)]
    for fmt, typ in (("vhd", "dynamic"), ("vhdx", "dynamic"), ("vhd", "fixed"), ("vhdx", "fixed"), ("raw", None)):
        target = os.path.join(d, f"huge-{typ or 'raw'}{EXT[fmt]}")
        args = ["disk", "create", target, "--size", big] + (["--type", typ] if typ else [])
        cases.append((f"create {fmt} {typ or ''} --size 2^63".replace("  ", " "), args, None, target))
    cases.append(("create vhdx --size 2^64-1", ["disk", "create", os.path.join(d, "huge2.vhdx"), "--size", huge],
                  None, os.path.join(d, "huge2.vhdx")))
    hashes = {c.leaf: sha(c.leaf) for c in imgs.values()}
    for label, args, image, created in cases:
        before = set(os.listdir(d))
        r = H.bw(args, timeout=min(H.timeout, 30), stdout_file=os.devnull)
        problems = expect_refusal(r, f"`bulwark {' '.join(short_path(a) for a in args)}`")
        if image:
            if sha(image) != hashes[image]:
                problems.append(f"{os.path.basename(image)} was modified")
                hashes[image] = sha(image)
            if image.endswith((".vhd", ".vhdx")):
                c = H.bw(["disk", "check", image])
                if c.rc != 0:
                    problems.append(f"`disk check {os.path.basename(image)}` not clean afterwards: {c.brief()}")
        new = sorted(set(os.listdir(d)) - before)
        if new:
            problems.append(f"left file(s) behind: {', '.join(new)}")
            for n in new:
                try:
                    os.remove(os.path.join(d, n))
                except OSError:
                    pass
        sc.record(label, problems, H.verbose)


def adv_fifo_parent(H, sc):
    """A FIFO where a parent (or the image itself) should be: every command must fail quickly, not
    block in open(2) or read(2). The commands run side by side, so hangs cost one timeout in all."""
    limit = 3.0 if H.quick else 5.0
    cases = []
    for fmt in ("vhd", "vhdx"):
        d = H.case_dir(sc.name)
        p = os.path.join(d, "P" + EXT[fmt])
        c = os.path.join(d, "C" + EXT[fmt])
        H.bw_ok(["disk", "create", p, "--size", "4M"])
        H.bw_ok(["disk", "create", c, "--parent", p])
        os.remove(p)
        os.mkfifo(p)
        for args in (["disk", "read", c, "--output", os.path.join(d, "out.raw")], ["disk", "check", c],
                     ["disk", "info", c, "--chain"], ["disk", "merge", c]):
            cases.append((f"{fmt} {args[1]} with a FIFO parent", args, "parent is a FIFO"))
        f = os.path.join(d, "F" + EXT[fmt])
        os.mkfifo(f)
        for args in (["disk", "read", f, "--output", os.path.join(d, "out2.raw")], ["disk", "check", f]):
            cases.append((f"{fmt} {args[1]} of a FIFO image", args, "image is a FIFO"))
    results = {}
    threads = [threading.Thread(target=lambda i=i, a=a: results.__setitem__(i, H.bw(a, timeout=limit + 3)), daemon=True)
               for i, (_, a, _) in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (label, args, why) in enumerate(cases):
        r = results[i]
        # `check` lists what it found on standard output (exit 1); the others refuse on standard error.
        out = r.out.decode("utf-8", "replace") if isinstance(r.out, bytes) else r.out
        text = out + r.err if args[1] == "check" else r.err
        problems = expect_refusal(r, f"`bulwark {' '.join(short_path(a) for a in args)}` ({why})", message=text)
        if not problems and "FIFO" not in text:
            problems.append(f"`bulwark {' '.join(short_path(a) for a in args)}` ({why}): the message does not say the file is a FIFO: {text.strip()[:200]}")
        if not problems and r.elapsed > limit:
            problems.append(f"took {r.elapsed:.1f}s to fail (expected within {limit:.0f}s)")
        sc.record(label, problems, H.verbose)


def seen_as(H, path):
    """How `bulwark disk info` takes the file, e.g. ' (bulwark takes it for a raw image)', or ''."""
    r = H.bw(["disk", "info", path], timeout=10)
    m = re.search(r"^\s*format\s+(\S+)", r.out.decode("utf-8", "replace"), re.M)
    return f" (bulwark takes it for a {m.group(1)} image)" if r.rc == 0 and m else ""


def adv_truncated_fixed_vhd(H, sc):
    d = H.case_dir(sc.name)
    rng = H.rng(sc.name)
    size = 4 * MiB
    chain = build_chain(H, d, "vhd", 0, rng, base_type="fixed", size=size, name="fixed", extents=3)
    src = chain.leaf
    total = os.path.getsize(src)
    cuts = [1, 511, 512, 513, 4096, MiB, 2 * MiB + 1, 3 * MiB + 7, total - 1024, total - 513, total - 512,
            total - 511, total - 256, total - 2, total - 1, total // 2 + 3]
    for cut in cuts:
        p = os.path.join(d, f"cut-{cut}.vhd")
        shutil.copyfile(src, p)
        os.truncate(p, cut)
        problems = []
        r = H.bw(["disk", "check", p], timeout=30)
        if r.trap or r.timed_out:
            problems.append(f"`disk check` crashed or hung: {r.brief(600)}")
        elif r.rc == 0:
            problems.append(f"`disk check` exit 0 ('{r.out.decode('utf-8', 'replace').replace(d + '/', '').strip()[:120]}') "
                            f"on a fixed VHD truncated from {total} to {cut} bytes{seen_as(H, p)}")
        rr = H.bw(["disk", "read", p, "--output", os.path.join(d, "out.raw")], timeout=30)
        if rr.trap or rr.timed_out:
            problems.append(f"`disk read` crashed or hung: {rr.brief(600)}")
        sc.record(f"fixed VHD of {total} bytes cut to {cut}", problems, H.verbose)
        os.remove(p)


def adv_tiny_files(H, sc):
    d = H.case_dir(sc.name)
    for n in (0, 1):
        for fmt in ("vhd", "vhdx"):
            p = os.path.join(d, f"tiny{n}{EXT[fmt]}")
            write_bytes(p, b"\0" * n if n == 0 else b"c")
            problems = []
            r = H.bw(["disk", "check", p], timeout=30)
            if r.trap or r.timed_out:
                problems.append(f"`disk check` crashed or hung: {r.brief(600)}")
            elif r.rc == 0:
                problems.append(f"`disk check` exit 0 on a {n}-byte {fmt} file{seen_as(H, p)}: "
                                f"{r.out.decode('utf-8', 'replace').replace(d + '/', '').strip()[:120]}")
            for args in (["disk", "read", p, "--output", os.path.join(d, "o.raw")], ["disk", "info", p]):
                problems += expect_refusal(H.bw(args, timeout=30), f"`disk {args[1]}` of a {n}-byte {fmt} file")
            sc.record(f"{n}-byte {fmt}", problems, H.verbose)


def adv_write_into_parent(H, sc):
    for fmt in ("vhd", "vhdx"):
        d = H.case_dir(sc.name)
        rng = H.rng(sc.name, fmt)
        chain = build_chain(H, d, fmt, 1, rng, size=8 * MiB, name="wp", extents=2)
        parent, child = chain.paths
        h = sha(parent)
        inp = os.path.join(d, "in.bin")
        write_bytes(inp, rng.randbytes(64 * KiB))
        r = H.bw(["disk", "write", parent, "--offset", "0", "--input", inp])
        problems = expect_refusal(r, f"`disk write {os.path.basename(parent)}` (it has child {os.path.basename(child)}, no --force)")
        if sha(parent) != h:
            problems.append(f"{os.path.basename(parent)} was modified")
        got, p = H.read(child, d)
        p = p or same_or_diff(got, chain.views[1], f"child {os.path.basename(child)} afterwards")
        if p:
            problems.append(p)
        c = H.bw(["disk", "check", child])
        if c.rc != 0:
            problems.append(f"`disk check {os.path.basename(child)}` not clean: {c.brief()} {c.out.decode('utf-8', 'replace').strip()[:200]}")
        sc.record(f"{fmt}: write into a parent with a child", problems, H.verbose)


def _merge_fixture(H, sc, fmt, rnd):
    """A 3-level chain and the slow-down that makes merging it into the base last a few seconds."""
    op = MergeOp(fmt, True)
    seed = (sc.name, fmt, rnd)
    slow, span = calibrate(H, op, seed, target=2.5 if H.quick else 4.0)
    d = H.case_dir(sc.name)
    op.prepare(H, d, H.rng(*seed))
    return op, d, slow, span


def adv_write_during_merge(H, sc):
    for rnd in range(max(1, H.rounds // 2)):
        for fmt in ("vhd", "vhdx"):
            op, d, slow, span = _merge_fixture(H, sc, fmt, rnd)
            rng = H.rng(sc.name, fmt, rnd, "w")
            data = rng.randbytes(128 * KiB)
            off = rng.randrange(0, H.size - len(data)) // SECTOR * SECTOR
            inp = os.path.join(d, "in.bin")
            write_bytes(inp, data)
            problems = []
            holder = {}
            t = threading.Thread(target=lambda: holder.setdefault("r", H.bw(op.argv(), slow=slow)), daemon=True)
            t.start()
            # Wait until the merge is under way (its record exists), then write into the leaf.
            t0 = time.monotonic()
            while not os.path.exists(op.record) and t.is_alive() and time.monotonic() - t0 < 20:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.05, 0.5) * span)
            merge_running = t.is_alive() and os.path.exists(op.record)
            w = H.bw(["disk", "write", op.leaf, "--offset", str(off), "--input", inp], timeout=30)
            t.join(H.timeout + 5)
            m = holder.get("r")
            if m is None or m.rc != 0 or m.trap:
                problems.append(f"the merge failed: {m.brief() if m else 'no result'}")
                if op.needs_rerun():
                    rr = H.bw(op.argv())
                    if rr.rc != 0:
                        problems.append(f"merge re-run failed: {rr.brief()}")
            label = f"{fmt} round {rnd + 1}: write into the leaf during its merge"
            if not merge_running:
                label += " (the merge had ended before the write: inconclusive)"
            elif w.rc == 0:
                label += " (write accepted)"
            else:
                label += " (write refused)"
            if w.trap or w.timed_out:
                problems.append(f"the write crashed or hung: {w.brief(600)}")
                expected = op.expected
            elif w.rc != 0:
                expected = op.expected  # refused: the merged disk must not have it
                if not re.search(r"merge|busy|in use|lock", w.message, re.I):
                    sc.notes.append(f"{fmt} round {rnd + 1}: the write was refused, but the message does not "
                                    f"name the merge in progress: {w.brief()}")
            else:
                e = bytearray(op.expected)
                e[off:off + len(data)] = data
                expected = bytes(e)
            if os.path.exists(op.ancestor):
                got, p = H.read(op.ancestor, d)
                if p:
                    problems.append(p)
                elif got != expected:
                    if w.rc == 0 and got == op.expected:
                        problems.append(f"`disk write` into the leaf exited 0 during the merge, but its 128 KiB at "
                                        f"offset {off} are missing from the merged disk (the write was lost)")
                    else:
                        problems.append(same_or_diff(got, expected, "merged disk"))
            c = H.bw(["disk", "check", op.ancestor])
            if c.rc != 0:
                problems.append(f"`disk check` of the merged disk not clean: {c.brief()}")
            sc.record(label, problems, H.verbose)
            if not H.args.keep:
                shutil.rmtree(d, ignore_errors=True)


def adv_read_during_merge(H, sc):
    for rnd in range(max(1, H.rounds // 2)):
        for fmt in ("vhdx", "vhd"):
            op, d, slow, span = _merge_fixture(H, sc, fmt, rnd)
            holder = {}
            t = threading.Thread(target=lambda: holder.setdefault("r", H.bw(op.argv(), slow=slow)), daemon=True)
            t.start()
            good = refused = gone = 0
            problems = []
            while t.is_alive() and len(problems) < 3:
                out = os.path.join(d, ".concurrent.raw")
                r = H.bw(["disk", "read", op.leaf, "--output", out], timeout=30)
                if r.rc == 0 and not r.trap:
                    with open(out, "rb") as f:
                        got = f.read()
                    if got == op.expected:
                        good += 1
                    else:
                        problems.append("a read during the merge returned mixed bytes: " +
                                        same_or_diff(got, op.expected, f"`disk read {os.path.basename(op.leaf)}`"))
                elif r.trap or r.timed_out:
                    problems.append(f"a read during the merge crashed or hung: {r.brief(600)}")
                elif re.search(r"merge.*(progress|pending)|(progress|pending).*merge", r.message, re.I):
                    refused += 1
                elif re.search(r"no such file", r.message, re.I) and not os.path.exists(op.leaf):
                    gone += 1
                else:
                    problems.append(f"a read during the merge failed without naming the merge: {r.brief()}")
                if os.path.exists(out):
                    os.remove(out)
            t.join(H.timeout + 5)
            m = holder.get("r")
            if m is None or m.rc != 0:
                problems.append(f"the merge itself failed: {m.brief() if m else 'no result'}")
            elif not problems:
                problems += [f"after the merge: {p}" for p in op.check_final(H, full=False)]
            sc.record(f"{fmt} round {rnd + 1}: reads of the leaf during a merge ({good} right, {refused} refused "
                      f"as merge in progress, {gone} after the leaf was removed)", problems, H.verbose)
            if not H.args.keep:
                shutil.rmtree(d, ignore_errors=True)


def adv_replaced_parent(H, sc):
    """A parent replaced by another image of the same name and size: reads must refuse, not mix."""
    for fmt in ("vhd", "vhdx"):
        d = H.case_dir(sc.name)
        rng = H.rng(sc.name, fmt)
        chain = build_chain(H, d, fmt, 1, rng, size=4 * MiB, name="rp", extents=2)
        parent, child = chain.paths
        os.remove(parent)
        H.bw_ok(["disk", "create", parent, "--size", str(4 * MiB)])
        r = H.bw(["disk", "read", child, "--output", os.path.join(d, "o.raw")])
        problems = expect_refusal(r, "`disk read` of a child whose parent was replaced")
        if not problems and not re.search(r"parent|id", r.message, re.I):
            problems.append(f"the refusal does not name the parent: {r.brief()}")
        sc.record(f"{fmt}: child of a replaced parent", problems, H.verbose)


ADVERSARIAL = [
    ("adv-large-numbers", adv_large_numbers),
    ("adv-fifo-parent", adv_fifo_parent),
    ("adv-truncated-fixed-vhd", adv_truncated_fixed_vhd),
    ("adv-tiny-files", adv_tiny_files),
    ("adv-write-into-parent", adv_write_into_parent),
    ("adv-write-during-merge", adv_write_during_merge),
    ("adv-read-during-merge", adv_read_during_merge),
    ("adv-replaced-parent", adv_replaced_parent),
]
