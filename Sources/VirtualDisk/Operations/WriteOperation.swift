#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemPackage
import Storage

/// What `write` is asked to do beyond the image, offset and input.
public struct WriteOptions: Sendable {
    /// Extra images (or folders to scan) that may be children of the image written.
    public var children: [FilePath]
    /// Write even though the image is the parent of differencing children (which it breaks).
    public var force: Bool
    public init(children: [FilePath] = [], force: Bool = false) {
        self.children = children
        self.force = force
    }
}

/// What a write did.
public struct WriteResult: Codable, Sendable, Equatable {
    public var path: String
    /// The virtual offset written at.
    public var offset: UInt64
    /// Bytes taken from the input (the virtual range `offset..<offset + bytesRead` now reads them).
    public var bytesRead: UInt64
    /// Of `bytesRead`, the all-zero bytes not stored because the image already read zeros there.
    public var zeroBytesSkipped: UInt64
}

/// Writes bytes from a file or pipe into an image (the leaf of its chain) at a virtual offset.
///
/// A parent's content is what its differencing children are built on: writing into it changes what a
/// VHD child reads and, for VHDX, breaks the child's link (the parent gets a new DataWriteGuid). So an
/// image that has children is refused (`DiskError.hasChildren`, naming them) unless `force`, as merge,
/// resize and compact do; children are looked for beside the image and in `options.children`. A
/// level of a running or interrupted merge is refused too (`DiskError.mergePending`, by the chain open).
///
/// All-zero input over a range that already reads as zeros is not stored (as `convert` does), so
/// writing a mostly-empty disk image into a new dynamic image allocates only the blocks with data;
/// zeros over existing data are written, so the image always reads back the input.
public enum WriteOperation {
    /// Writes everything `input` delivers (to its end) at `offset`. `inputName` names the input in
    /// errors. Progress is reported when the input's size is known (a regular file), and the operation
    /// stops with `OperationCancelled` between chunks once `progress` is cancelled.
    public static func write(into path: FilePath, at offset: UInt64, from input: FileDescriptor, inputName: String,
                             options: WriteOptions = WriteOptions(), progress: ProgressReporter? = nil) throws -> WriteResult {
        // Closed through `use`: the close is the write's last flush (a VHDX header update), and its
        // failure is the write's.
        return try DiskChain.open(path, writable: true).use { chain in
            let found = try ChildFinder(near: [path], extra: options.children).children(of: path)
            if !found.isEmpty, !options.force {
                throw DiskError.hasChildren(path: FileOps.absolute(path).string, children: found.map(\.string))
            }
            let image = chain.leaf
            // An offset past the end is refused even when the input turns out to be empty.
            guard offset <= image.virtualSize else {
                throw DiskError.outOfRange(path: path.string, offset: offset, length: 0, virtualSize: image.virtualSize)
            }
            let total = knownSize(of: input)
            if let total {
                // Refused before anything is written, rather than failing halfway through.
                try image.checkRange(offset: offset, length: Int(clamping: total))
            }
            let granule = UInt64(min(max(image.blockSize, 4096), 1 << 20))
            let chunk = OperationIO.chunkSize
            let buffer = OperationIO.buffer(chunk)
            defer { buffer.deallocate() }
            var position = offset
            var skipped: UInt64 = 0
            if let total { progress?.report(0, of: total) }
            while true {
                try progress?.checkCancelled()
                let filled = try fill(buffer, from: input, inputName: inputName)
                if filled == 0 { break }
                skipped += try store(UnsafeRawBufferPointer(rebasing: buffer[..<filled]), at: position, in: chain, granule: granule)
                position += UInt64(filled)
                if let total { progress?.report(min(position - offset, total), of: total) }
                try OperationIO.pace(progress)
                if filled < chunk { break }
            }
            try image.flush()
            return WriteResult(path: FileOps.absolute(path).string, offset: offset, bytesRead: position - offset, zeroBytesSkipped: skipped)
        }
    }

    /// Writes `bytes` at virtual `offset` of the chain's leaf, granule by granule (granules aligned to
    /// the virtual grid, at most a block): an all-zero granule where the chain already reads zeros is
    /// skipped, one over data is written where the data is. Returns the bytes skipped.
    static func store(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, in chain: DiskChain, granule: UInt64) throws -> UInt64 {
        let image = chain.leaf
        try image.checkRange(offset: offset, length: bytes.count)
        var skipped: UInt64 = 0
        var runStart: Int?
        func flushRun(_ end: Int) throws {
            guard let start = runStart, start < end else { runStart = nil; return }
            try image.write(UnsafeRawBufferPointer(rebasing: bytes[start..<end]), at: offset + UInt64(start))
            runStart = nil
        }
        var i = 0
        while i < bytes.count {
            let v = offset + UInt64(i)
            let end = min(bytes.count, i + Int(granule - v % granule))
            let segment = UnsafeRawBufferPointer(rebasing: bytes[i..<end])
            if !OperationIO.isZero(segment) {
                if runStart == nil { runStart = i }
            } else {
                try flushRun(i)
                let range = v..<v + UInt64(segment.count)
                for m in try chain.map(range) {
                    if m.isZero {
                        skipped += UInt64(m.range.count)
                    } else {
                        let from = Int(m.range.lowerBound - offset)
                        try image.write(UnsafeRawBufferPointer(rebasing: bytes[from..<from + m.range.count]), at: m.range.lowerBound)
                    }
                }
            }
            i = end
        }
        try flushRun(bytes.count)
        return skipped
    }

    /// Reads from `input` until `buffer` is full or the input ends (pipes deliver short reads, and
    /// full chunks keep the writes large). Returns the bytes read.
    static func fill(_ buffer: UnsafeMutableRawBufferPointer, from input: FileDescriptor, inputName: String) throws -> Int {
        var filled = 0
        while filled < buffer.count {
            let n: Int
            do {
                n = try input.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]))
            } catch let e as Errno {
                throw StorageError.io(path: inputName, operation: "read", errno: e)
            }
            if n == 0 { break }
            filled += n
        }
        return filled
    }

    /// The bytes left to read in `input` when it is a regular file (from its current offset), else nil.
    static func knownSize(of input: FileDescriptor) -> UInt64? {
        var st = stat()
        guard fstat(input.rawValue, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        let position = lseek(input.rawValue, 0, SEEK_CUR)
        guard position >= 0, Int64(st.st_size) >= Int64(position) else { return nil }
        return UInt64(st.st_size) - UInt64(position)
    }
}
