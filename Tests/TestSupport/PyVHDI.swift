import Foundation
import SystemPackage

/// libvhdi (pyvhdi in Debian's /usr/bin/python3) as a reader of whole chains: the oracle for images,
/// differencing chains included, that qemu-img cannot open.
public enum PyVHDI {
    /// What libvhdi reads through `paths` (base first, each level's parent set to the one before), or
    /// its error (its identity checks refuse a child whose parent link does not match); nil without
    /// pyvhdi outside CI. Reads go in 64 KiB pieces: libvhdi returns wrong bytes for single reads that
    /// span more than one block of a differencing chain whose levels interleave sectors within a block.
    public static func read(_ paths: [FilePath]) throws -> Result<[UInt8], TestFailure>? {
        guard try TestEnv.prerequisite(TestEnv.pyvhdiAvailable(), "pyvhdi in /usr/bin/python3") else { return nil }
        let script = """
        import sys, pyvhdi
        files = []
        for p in sys.argv[1:]:
            f = pyvhdi.file()
            f.open(p)
            if files:
                f.set_parent(files[-1])
            files.append(f)
        leaf = files[-1]
        size = leaf.get_media_size()
        off = 0
        while off < size:
            n = min(64 << 10, size - off)
            sys.stdout.buffer.write(leaf.read_buffer_at_offset(n, off))
            off += n
        """
        let r = try run("/usr/bin/python3", ["-c", script] + paths.map(\.string))
        return r.status == 0 ? .success([UInt8](r.stdout)) : .failure(TestFailure("pyvhdi: \(r.err)"))
    }
}
