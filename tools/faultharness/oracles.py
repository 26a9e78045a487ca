"""Oracles: byte comparisons against the expected virtual disk, and the checks of a finished image
(`bulwark disk read` and `disk check`, `qemu-img check` and `compare`, pyvhdi through Debian's python3)."""

import hashlib
import os

from .common import DEBIAN_PYTHON, QEMU_FMT, SECTOR, HarnessCore, run


# ---------------------------------------------------------------------------------------------------
# Bytes: models are bytes objects (the expected virtual disk), written to files when a tool needs them.


def first_diff(a, b):
    n = min(len(a), len(b))
    step = 1 << 16
    for off in range(0, n, step):
        if a[off:off + step] != b[off:off + step]:
            for i in range(off, min(off + step, n)):
                if a[i] != b[i]:
                    return i
    return n if len(a) != len(b) else -1


def same_or_diff(actual, expected, what):
    """None when equal, else a sentence naming the first difference."""
    if actual == expected:
        return None
    if len(actual) != len(expected):
        return f"{what}: {len(actual)} bytes read, {len(expected)} expected"
    i = first_diff(actual, expected)
    return f"{what}: differs from the expected bytes first at offset {i} (0x{i:x})"


def sectors_old_or_new(actual, old, new, what, phase=0):
    """For a non-atomic write: each 512-byte sector must equal the old or the new bytes. A write whose
    offset is not sector-aligned (`phase` = offset % 512) reaches the disk in pieces split on the
    input's own 512-byte grid too, so a sector may also be old up to that point and new after it
    (or the reverse); anything else is torn."""
    if len(actual) != len(new):
        return None, f"{what}: {len(actual)} bytes read, {len(new)} expected"
    step = 1 << 16
    torn, first, newcount = 0, None, 0
    for off in range(0, len(actual), step):
        a, o, n = actual[off:off + step], old[off:off + step], new[off:off + step]
        if a == n:
            if o != n:
                newcount += 1
            continue
        if a == o:
            continue
        for s in range(0, len(a), SECTOR):
            sa, so, sn = a[s:s + SECTOR], o[s:s + SECTOR], n[s:s + SECTOR]
            if sa == so or sa == sn:
                continue
            if phase and (sa[:phase] in (so[:phase], sn[:phase])) and (sa[phase:] in (so[phase:], sn[phase:])):
                continue
            torn += 1
            if first is None:
                first = off + s
    if torn:
        return None, (f"{what}: {torn} sector(s) hold neither the old nor the new bytes, first at offset {first} "
                      f"(0x{first:x})")
    return newcount, None


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------------------------------
# The harness context with its oracles


class Harness(HarnessCore):
    """The context every scenario gets (`H`): HarnessCore plus the oracles applied to images."""

    def read(self, path, d, what=None):
        """(bytes or None, problem or None): the virtual bytes `bulwark disk read` gives for path."""
        out = os.path.join(d, ".read.out")
        r = self.bw(["disk", "read", path, "--output", out])
        what = what or os.path.basename(path)
        try:
            if r.trap:
                return None, f"`disk read {what}` crashed: {r.brief()}"
            if r.rc != 0 or r.timed_out:
                return None, f"`disk read {what}` failed: {r.brief()}"
            with open(out, "rb") as f:
                return f.read(), None
        finally:
            if os.path.exists(out):
                os.remove(out)

    # -- oracles after an operation finished

    def verify_final(self, d, path, chain, fmt, expected, differencing, full=True):
        """Problems found by bulwark read/check, qemu-img check/compare and pyvhdi on a finished image."""
        problems = []
        got, p = self.read(path, d)
        if p:
            problems.append(p)
        else:
            p = same_or_diff(got, expected, f"`disk read {os.path.basename(path)}`")
            if p:
                problems.append(p)
        del got
        r = self.bw(["disk", "check", path])
        if r.rc != 0 or r.trap:
            out = " | ".join(r.out.decode("utf-8", "replace").strip().splitlines()[-4:])
            problems.append(f"`disk check {os.path.basename(path)}` not clean: {r.brief()} stdout: {out}")
        if not full:
            return problems
        ref = None
        try:
            if self.have_qemu and not differencing:
                if fmt == "vhdx":
                    q = run(["qemu-img", "check", "-f", "vhdx", path], self.timeout)
                    if q.rc not in (0, 63):
                        problems.append(f"`qemu-img check` not clean: exit {q.rc}: "
                                        f"{(q.out.decode('utf-8', 'replace') + q.err).strip()[:300]}")
                ref = os.path.join(d, ".expected.raw")
                write_bytes(ref, expected)
                q = run(["qemu-img", "compare", "-f", "raw", "-F", QEMU_FMT[fmt], ref, path], self.timeout)
                if q.rc != 0:
                    problems.append(f"`qemu-img compare` with the expected raw: exit {q.rc}: "
                                    f"{(q.out.decode('utf-8', 'replace') + q.err).strip()[:300]}")
            if self.have_pyvhdi and fmt in ("vhd", "vhdx"):
                if ref is None:
                    ref = os.path.join(d, ".expected.raw")
                    write_bytes(ref, expected)
                p = self.pyvhdi(ref, chain)
                if p:
                    problems.append(p)
        finally:
            if ref and os.path.exists(ref):
                os.remove(ref)
        return problems

    PYVHDI = r"""
import os, sys, pyvhdi
ref, paths = sys.argv[1], sys.argv[2:]
files = []
for p in paths:
    f = pyvhdi.file()
    f.open(p)
    if files:
        f.set_parent(files[-1])
    files.append(f)
leaf = files[-1]
size = leaf.get_media_size()
want_size = os.path.getsize(ref)
note = ""
if size != want_size and paths[-1].endswith(".vhd"):
    # libvhdi 20210425 takes a VHD's size from the footer's "original size" (the size at creation),
    # not its "current size": after a resize, compare what it shows and say so.
    import struct
    with open(paths[-1], "rb") as v:
        v.seek(-512, 2)
        footer = v.read(512)
    original, current = struct.unpack(">QQ", footer[40:56])
    if size == original and current == want_size:
        note = " (libvhdi shows the footer's original size %d, not the current size %d: compared that much)" % (size, current)
        want_size = size
if size != want_size:
    print("pyvhdi: media size %d, expected %d" % (size, want_size)); sys.exit(1)
with open(ref, "rb") as e:
    off = 0
    while off < size:
        n = min(65536, size - off)   # libvhdi 20210425 misreads single reads spanning chain blocks
        got = leaf.read_buffer_at_offset(n, off)
        want = e.read(n)
        if got != want:
            i = next(i for i in range(min(len(got), len(want))) if got[i] != want[i]) if len(got) == len(want) else 0
            print("pyvhdi: differs from the expected bytes first at offset %d (0x%x)" % (off + i, off + i)); sys.exit(1)
        off += n
print("ok" + note)
"""

    def pyvhdi(self, ref, chain):
        r = run([DEBIAN_PYTHON, "-c", self.PYVHDI, ref] + list(chain), self.timeout)
        if r.rc == 0:
            if "original size" in r.out.decode("utf-8", "replace") and "pyvhdi-original-size" not in self.noted:
                self.noted.add("pyvhdi-original-size")
                self.notes.append("pyvhdi: " + r.out.decode("utf-8", "replace").strip()[3:].strip(" ()"))
            return None
        text = (r.out.decode("utf-8", "replace").strip() + " " + r.err.strip()).strip()
        tail = text.splitlines()[-1] if text else r.brief()
        return f"pyvhdi reading {' <- '.join(os.path.basename(c) for c in chain)}: {tail[:300]}"
