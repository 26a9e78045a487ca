"""Fixtures built with the CLI itself, and the operations (write, merge, convert, compact, resize) the
kill and fault scenarios drive."""

import glob
import os
import re

from .common import EXT, KiB, MiB, SECTOR
from .oracles import same_or_diff, sectors_old_or_new, sha, write_bytes


# ---------------------------------------------------------------------------------------------------
# Fixtures, built with the CLI itself (the harness treats the engine as a black box)


class Chain:
    def __init__(self, fmt, paths, views):
        self.fmt, self.paths, self.views = fmt, paths, views

    @property
    def leaf(self):
        return self.paths[-1]


def populate(H, d, path, view, rng, extents, zero_share=0.15):
    size = len(view)
    inp = os.path.join(d, ".input")
    for _ in range(extents):
        length = rng.choice([4 * KiB, 60 * KiB, 300 * KiB, 1 * MiB + 512, 2 * MiB, 3 * MiB - 4 * KiB])
        length = min(length, size // 4)
        off = rng.randrange(0, size - length)
        if rng.random() < 0.8:
            off -= off % SECTOR
        data = bytes(length) if rng.random() < zero_share else rng.randbytes(length)
        write_bytes(inp, data)
        H.bw_ok(["disk", "write", path, "--offset", str(off), "--input", inp])
        view[off:off + length] = data
    if os.path.exists(inp):
        os.remove(inp)


def build_chain(H, d, fmt, depth, rng, base_type="dynamic", block=None, name="disk", extents=4, size=None):
    size = size or H.size
    paths, views = [], []
    base = os.path.join(d, f"{name}0{EXT[fmt]}")
    args = ["disk", "create", base, "--size", str(size)]
    if fmt != "raw":
        args += ["--type", base_type]
    if block:
        args += ["--block-size", block]
    H.bw_ok(args)
    view = bytearray(size)
    populate(H, d, base, view, rng, extents)
    paths.append(base)
    views.append(bytes(view))
    for level in range(1, depth + 1):
        p = os.path.join(d, f"{name}{level}{EXT[fmt]}")
        H.bw_ok(["disk", "create", p, "--parent", paths[-1]])
        populate(H, d, p, view, rng, extents)
        paths.append(p)
        views.append(bytes(view))
    return Chain(fmt, paths, views)


def leftovers(d, patterns):
    found = []
    for pat in patterns:
        found += glob.glob(os.path.join(d, pat))
    return sorted(set(found))


# ---------------------------------------------------------------------------------------------------
# Operations: each knows how to set itself up, its command, what may be seen after a kill or a fault
# (old or new), whether a re-run is due, and what must hold once it is complete.


class Op:
    name = "op"
    fmt = "vhdx"
    paced_by_engine = True   # its loops honour slow_io()

    def label(self):
        return self.name


class WriteOp(Op):
    """`disk write` of a large input into a dynamic image or a differencing leaf."""
    paced_by_engine = False

    def __init__(self, fmt, differencing):
        self.fmt, self.differencing = fmt, differencing
        self.name = f"write-{fmt}-{'diff' if differencing else 'dynamic'}"

    def prepare(self, H, d, rng):
        block = rng.choice([None, "1M"]) if not self.differencing else None
        self.chain = build_chain(H, d, self.fmt, 1 if self.differencing else 0, rng, block=block)
        self.leaf = self.chain.leaf
        self.old = self.chain.views[-1]
        size = len(self.old)
        length = size * 45 // 100 + rng.randrange(0, 64) * SECTOR + rng.choice([0, 0, 1000])
        self.offset = rng.randrange(0, size - length)
        if rng.random() < 0.7:
            self.offset -= self.offset % SECTOR
        self.data = rng.randbytes(length)
        self.input = os.path.join(d, "input.bin")
        write_bytes(self.input, self.data)
        new = bytearray(self.old)
        new[self.offset:self.offset + length] = self.data
        self.new = bytes(new)
        self.parent_hashes = {p: sha(p) for p in self.chain.paths[:-1]}
        self.d = d

    def argv(self):
        return ["disk", "write", self.leaf, "--offset", str(self.offset), "--input", self.input]

    def stdin_argv(self):
        return ["disk", "write", self.leaf, "--offset", str(self.offset)]

    def parents_unchanged(self):
        return [f"parent {os.path.basename(p)} changed (its file's bytes differ)"
                for p, h in self.parent_hashes.items() if sha(p) != h]

    def check_state(self, H):
        got, p = H.read(self.leaf, self.d)
        if p:
            return [p]
        n, p = sectors_old_or_new(got, self.old, self.new, f"`disk read {os.path.basename(self.leaf)}`",
                                  phase=self.offset % SECTOR)
        return ([p] if p else []) + self.parents_unchanged()

    def needs_rerun(self):
        return True

    def check_final(self, H, full=True):
        return H.verify_final(self.d, self.leaf, self.chain.paths, self.fmt, self.new, self.differencing,
                              full) + self.parents_unchanged()


class MergeOp(Op):
    """`disk merge` of a 3-level chain: the leaf into its parent, or (--into) both levels into the base."""

    def __init__(self, fmt, into_base):
        self.fmt, self.into_base = fmt, into_base
        self.name = f"merge-{fmt}-{'into-base' if into_base else 'into-parent'}"

    def prepare(self, H, d, rng):
        block = {"vhd": "512K", "vhdx": "1M"}[self.fmt]
        self.chain = build_chain(H, d, self.fmt, 2, rng, block=block, extents=5)
        self.base, self.mid, self.leaf = self.chain.paths
        self.expected = self.chain.views[2]
        self.base_view = self.chain.views[0]
        self.ancestor = self.base if self.into_base else self.mid
        self.record = self.leaf + ".merge.json"
        self.base_hash = sha(self.base)
        self.d = d

    def argv(self):
        a = ["disk", "merge", self.leaf]
        return a + (["--into", self.base] if self.into_base else [])

    def check_state(self, H):
        problems = []
        readable = self.leaf if os.path.exists(self.leaf) else self.ancestor
        got, p = H.read(readable, self.d)
        if p:
            problems.append(p)
        else:
            p = same_or_diff(got, self.expected, f"`disk read {os.path.basename(readable)}` (old = new content)")
            if p:
                problems.append(p)
        if not self.into_base and sha(self.base) != self.base_hash:
            problems.append(f"{os.path.basename(self.base)} (not part of the merge) changed")
        r = H.bw(["disk", "check", readable])
        text = r.out.decode("utf-8", "replace").replace(H.work, "") + r.message
        if r.trap or r.timed_out:
            problems.append(f"`disk check {os.path.basename(readable)}` after the kill: {r.brief()}")
        elif r.rc != 0 and not re.search(r"merge|pending", text, re.I):
            problems.append(f"`disk check {os.path.basename(readable)}` after the kill reports problems that are "
                            f"not a pending merge: {' | '.join(text.strip().splitlines()[-3:])[:300]}")
        return problems

    def needs_rerun(self):
        return os.path.exists(self.leaf) or os.path.exists(self.record)

    def check_final(self, H, full=True):
        problems = []
        gone = [self.leaf] + ([self.mid] if self.into_base else [])
        for p in gone + [self.record]:
            if os.path.exists(p):
                problems.append(f"{os.path.basename(p)} still exists after the merge completed")
        stale = leftovers(self.d, [".*.tmp-*", "*.merge.json"])
        if stale:
            problems.append(f"stale files left: {', '.join(os.path.basename(s) for s in stale)}")
        chain = [self.base] if self.into_base else [self.base, self.mid]
        if not self.into_base and sha(self.base) != self.base_hash:
            problems.append(f"{os.path.basename(self.base)} (not part of the merge) changed")
        return problems + H.verify_final(self.d, self.ancestor, chain, self.fmt, self.expected,
                                         not self.into_base, full)


class ConvertOp(Op):
    """`disk convert` of a differencing chain into a new image (fixed or dynamic, VHD/VHDX/raw)."""

    def __init__(self, src_fmt, dst_fmt, dst_type):
        self.fmt, self.dst_fmt, self.dst_type = src_fmt, dst_fmt, dst_type
        self.name = f"convert-{src_fmt}-to-{dst_fmt}-{dst_type}"

    def prepare(self, H, d, rng):
        self.chain = build_chain(H, d, self.fmt, 1, rng, extents=5)
        self.expected = self.chain.views[-1]
        self.dst = os.path.join(d, "out" + EXT[self.dst_fmt])
        self.src_hashes = {p: sha(p) for p in self.chain.paths}
        self.d = d

    def argv(self):
        a = ["disk", "convert", self.chain.leaf, self.dst, "--format", self.dst_fmt]
        return a + (["--type", self.dst_type] if self.dst_fmt != "raw" else [])

    def src_unchanged(self):
        return [f"source {os.path.basename(p)} changed" for p, h in self.src_hashes.items() if sha(p) != h]

    def check_state(self, H):
        problems = self.src_unchanged()
        if os.path.exists(self.dst):
            got, p = H.read(self.dst, self.d)
            p = p or same_or_diff(got, self.expected, f"visible destination {os.path.basename(self.dst)} is incomplete")
            if p:
                problems.append(p)
        return problems

    def needs_rerun(self):
        return not os.path.exists(self.dst)

    def check_final(self, H, full=True):
        problems = self.src_unchanged()
        if not os.path.exists(self.dst):
            return problems + [f"{os.path.basename(self.dst)} does not exist after the convert completed"]
        stale = leftovers(self.d, [".*.partial-*"])
        if stale:
            problems.append(f"stale partial files left: {', '.join(os.path.basename(s) for s in stale)}")
        return problems + H.verify_final(self.d, self.dst, [self.dst], self.dst_fmt, self.expected, False, full)


class CompactOp(Op):
    """`disk compact` of a dynamic image, or of a differencing leaf whose zero blocks hide parent data."""

    def __init__(self, fmt, differencing):
        self.fmt, self.differencing = fmt, differencing
        self.name = f"compact-{fmt}-{'diff' if differencing else 'dynamic'}"

    def prepare(self, H, d, rng):
        block = {"vhd": "512K", "vhdx": "1M"}[self.fmt]
        self.chain = build_chain(H, d, self.fmt, 1 if self.differencing else 0, rng, block=block, extents=4)
        leaf = self.chain.leaf
        view = bytearray(self.chain.views[-1])
        inp = os.path.join(d, ".input")
        size = len(view)
        # Whole blocks (and a partial one) of data, flushed, then overwritten with stored zeros.
        for _ in range(3):
            length = rng.choice([MiB, 2 * MiB, 3 * MiB, 700 * KiB])
            off = rng.randrange(0, size - length) // MiB * MiB
            write_bytes(inp, rng.randbytes(length))
            H.bw_ok(["disk", "write", leaf, "--offset", str(off), "--input", inp])
            write_bytes(inp, bytes(length))
            H.bw_ok(["disk", "write", leaf, "--offset", str(off), "--input", inp])
            view[off:off + length] = bytes(length)
        os.remove(inp)
        self.expected = bytes(view)
        self.leaf = leaf
        self.parent_hashes = {p: sha(p) for p in self.chain.paths[:-1]}
        self.d = d

    def argv(self):
        return ["disk", "compact", self.leaf]

    def check_state(self, H):
        got, p = H.read(self.leaf, self.d)
        p = p or same_or_diff(got, self.expected, f"`disk read {os.path.basename(self.leaf)}` (compact changed the content)")
        return ([p] if p else []) + [f"parent {os.path.basename(q)} changed" for q, h in self.parent_hashes.items()
                                     if sha(q) != h]

    def needs_rerun(self):
        return True

    def check_final(self, H, full=True):
        return self.check_state(H)[1:] + H.verify_final(self.d, self.leaf, self.chain.paths, self.fmt, self.expected,
                                                        self.differencing, full)


class ResizeOp(Op):
    """`disk resize` (expand) of a fixed or dynamic image."""

    def __init__(self, fmt, kind):
        self.fmt, self.kind = fmt, kind
        self.name = f"resize-{fmt}-{kind}"

    def prepare(self, H, d, rng):
        self.chain = build_chain(H, d, self.fmt, 0, rng, base_type=self.kind, extents=4)
        self.path = self.chain.leaf
        self.old = self.chain.views[0]
        self.new_size = len(self.old) * 2 + rng.choice([0, 3 * MiB, 5 * MiB])
        self.expected = self.old + bytes(self.new_size - len(self.old))
        self.d = d

    def argv(self):
        return ["disk", "resize", self.path, "--size", str(self.new_size)]

    def check_state(self, H):
        got, p = H.read(self.path, self.d)
        if p:
            return [p]
        if len(got) not in (len(self.old), self.new_size):
            return [f"virtual size {len(got)} is neither the old {len(self.old)} nor the new {self.new_size}"]
        p = same_or_diff(got, self.expected[:len(got)], f"`disk read {os.path.basename(self.path)}` ({len(got)} bytes)")
        return [p] if p else []

    def needs_rerun(self):
        return True

    def check_final(self, H, full=True):
        return H.verify_final(self.d, self.path, [self.path], self.fmt, self.expected, False, full)
