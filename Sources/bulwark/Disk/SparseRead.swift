#if canImport(Glibc)
import Storage
import Glibc
#endif
import SystemPackage
import VirtualDisk

/// Copies virtual bytes into a regular file, leaving the ranges the chain reads as zeros as holes
/// (as `qemu-img convert` does): a half-empty disk costs half the reads and writes.
enum SparseRead {
    /// Whether `fd` is a regular file (so skipped ranges read back as zeros).
    static func isRegularFile(_ fd: FileDescriptor) -> Bool {
        var st = stat()
        return fstat(fd.rawValue, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    /// Writes `start..<start+count` of `chain` into the empty regular file `sink` at offset 0.
    static func copy(_ chain: DiskChain, start: UInt64, count: UInt64, to sink: FileDescriptor, path: String,
                     chunk: Int = 4 << 20, progress: ProgressBar?) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        for run in try chain.map(start..<start + count) where !run.isZero {
            var pos = run.range.lowerBound
            while pos < run.range.upperBound {
                let n = Int(min(UInt64(chunk), run.range.upperBound - pos))
                let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<n])
                try chain.leaf.read(into: slice, at: pos)
                do {
                    _ = try sink.writeAll(toAbsoluteOffset: Int64(pos - start), UnsafeRawBufferPointer(slice))
                } catch let e as Errno {
                    throw StorageError.io(path: path, operation: "write at \(pos - start)", errno: e)
                }
                pos += UInt64(n)
                progress?.update(pos - start, count)
            }
        }
        guard ftruncate(sink.rawValue, off_t(count)) == 0 else {
            throw StorageError.io(path: path, operation: "ftruncate to \(count)", errno: Errno(rawValue: errno))
        }
        progress?.update(count, count)
    }
}
