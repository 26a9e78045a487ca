#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CLinux
import SystemPackage
import Storage

/// Shared pieces of the disk operations' copy loops: the chunk size, a page-aligned buffer, zero
/// detection and the test slow-down.
enum OperationIO {
    /// Bytes moved per read/write in copy loops: large and aligned, so I/O stays sequential (256 KiB
    /// when `FaultInjection` slows I/O down, so that small test images still take many paced steps).
    static var chunkSize: Int { FaultInjection.current.slowIOMicroseconds > 0 ? 256 << 10 : 8 << 20 }

    /// Called once per chunk by every copy loop: sleeps when `FaultInjection` asks for slow I/O, so
    /// that a test's `kill -9` lands in the middle of an operation.
    @inline(__always) static func pace() {
        let slow = FaultInjection.current.slowIOMicroseconds
        if slow > 0 { usleep(slow) }
    }

    /// A page-aligned buffer of `count` bytes; the caller deallocates it.
    static func buffer(_ count: Int = chunkSize) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 4096)
    }

    /// Whether every byte of `bytes` is zero (vectorised through `memcmp` against itself shifted by one).
    static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return true }
        if base.load(as: UInt8.self) != 0 { return false }
        if bytes.count >= 16 {
            // Cheap early exit: most non-zero data shows it in its first words.
            if base.loadUnaligned(fromByteOffset: 8, as: UInt64.self) != 0 { return false }
        }
        return memcmp(base, base + 1, bytes.count - 1) == 0
    }

    /// Runs of non-zero data inside `bytes`, at `granule` granularity (relative to `bytes`, whose
    /// start is aligned to `granule`); all-zero granules are left out and neighbours joined.
    static func nonZeroRuns(_ bytes: UnsafeRawBufferPointer, granule: Int) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        var start = 0
        while start < bytes.count {
            let end = min(start + granule, bytes.count)
            if !isZero(UnsafeRawBufferPointer(rebasing: bytes[start..<end])) {
                if let last = runs.last, last.upperBound == start {
                    runs[runs.count - 1] = last.lowerBound..<end
                } else {
                    runs.append(start..<end)
                }
            }
            start = end
        }
        return runs
    }

    /// Splits `range` into pieces of at most `chunk` bytes whose boundaries fall on multiples of `chunk`.
    static func chunks(of range: Range<UInt64>, size chunk: Int = chunkSize) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        var pos = range.lowerBound
        let c = UInt64(chunk)
        while pos < range.upperBound {
            let end = min((pos / c + 1) * c, range.upperBound)
            out.append(pos..<end)
            pos = end
        }
        return out
    }

    /// Writes `count` zero bytes into `image` at `offset`, in chunks.
    static func writeZeros(_ image: any DiskImage, at offset: UInt64, count: UInt64, zeros: UnsafeRawBufferPointer) throws {
        var done: UInt64 = 0
        while done < count {
            let n = Int(min(UInt64(zeros.count), count - done))
            try image.write(UnsafeRawBufferPointer(rebasing: zeros[..<n]), at: offset + done)
            done += UInt64(n)
        }
    }

    /// The absolute, symlink-resolved path as a string (for comparing files).
    static func key(_ path: FilePath) -> String { FileOps.canonical(path).string }

    /// Starts writing `store`'s dirty pages to disk without waiting, once every `writebackInterval` bytes
    /// written (`written` counts them), so the final fsync is short and writeback overlaps the copy.
    static func startWriteback(_ store: any ByteStore, written: inout UInt64) {
        guard written >= writebackInterval else { return }
        written = 0
        store.advise(.startWriteback(nil))
    }
    static let writebackInterval: UInt64 = 128 << 20

    /// Tells the kernel `store` will be read front to back (a larger readahead window for cold reads).
    static func adviseSequential(_ store: any ByteStore) {
        store.advise(.sequential)
    }

    /// How many pieces ahead of the reader to prefetch so that about 64 MiB is in flight: copies often
    /// move many small runs (single 1-2 MiB blocks), and a fixed count of pieces would keep too little
    /// in flight on a cold cache.
    static func lookahead(pieceBytes: [Int]) -> Int {
        let average = max(1, pieceBytes.reduce(0, +) / max(1, pieceBytes.count))
        return min(128, max(4, (64 << 20) / average))
    }

    /// Asks the kernel to start reading, in the background, the file ranges that hold `range` of
    /// `image` (through its parents where it holds nothing), so later reads find them cached.
    static func prefetch(_ image: any DiskImage, _ range: Range<UInt64>) {
        guard let extents = try? image.extents(in: range) else { return }
        for e in extents {
            switch e.kind {
            case .data(let fileOffset):
                image.store.advise(.willNeed(fileOffset..<fileOffset + UInt64(e.range.count)))
            case .unallocated:
                if let parent = image.parent, e.range.lowerBound < parent.virtualSize {
                    prefetch(parent, e.range.lowerBound..<min(e.range.upperBound, parent.virtualSize))
                }
            case .zero:
                break
            }
        }
    }

    /// Drops the page cache over the file ranges holding `range` of `image` itself (not its parents):
    /// for levels read once and deleted next, whose cached pages would only cost time at the unlink.
    static func evict(_ image: any DiskImage, _ range: Range<UInt64>) {
        guard let extents = try? image.extents(in: range) else { return }
        for e in extents {
            if case .data(let fileOffset) = e.kind {
                image.store.advise(.dontNeed(fileOffset..<fileOffset + UInt64(e.range.count)))
            }
        }
    }


    /// Whether process `pid` is still running.
    static func isRunning(_ pid: Int32) -> Bool {
        pid > 0 && (kill(pid, 0) == 0 || errno == EPERM)
    }
}

