import Crypto
import Dispatch
import Storage
import Synchronization
import SystemPackage
import Targets
import VirtualDisk

/// Captures one disk of a point: reads the point-in-time copy through its chain, checksums it in 4 MiB
/// chunks, and writes into a staged VHDX on the target what the point must store:
/// - a full: every chunk that is not all zeros, into a dynamic VHDX (holes and zero blocks are never
///   stored);
/// - an incremental: every chunk whose checksum differs from the parent point's, into a differencing
///   VHDX whose parent is the parent point's image (relative locator `../<version>/diskN.vhdx`).
///
/// Which chunks may have changed comes from the snapshot provider when it knows (the frozen
/// differencing child's own extents: only those chunks are read) or else from reading the whole
/// copy once and comparing checksums with the parent's (raw files and block devices get true
/// incrementals). The image blocks are 4 MiB, the checksum chunk: a changed chunk is one block.
///
/// Blocking; run it on `BlockingPool.disk`. Nothing is visible until the caller publishes the point's
/// manifest; the image itself is published (renamed into the point's folder) at the end of `run`.
public struct DiskCapture {
    /// The checksum chunk and the image block size.
    public static let chunkSize = 4 << 20

    public struct Parent {
        /// The parent point's image, in the target's space.
        public var image: FilePath
        /// The parent's chunk checksums (the virtual disk as the parent point reads it).
        public var chunks: [String]
        public init(image: FilePath, chunks: [String]) {
            self.image = image
            self.chunks = chunks
        }
    }

    public struct Result: Sendable {
        public var chunks: [String]
        /// Virtual bytes of the chunks that differ from the parent (all data chunks for a full).
        public var changedBytes: UInt64
        /// Virtual bytes read from the copy.
        public var bytesRead: UInt64
        /// Virtual bytes written into the image.
        public var bytesWritten: UInt64
        public var imageSize: UInt64
        public var imageSHA256: String
        public var virtualSize: UInt64
        public var logicalSectorSize: Int
        public var physicalSectorSize: Int
    }

    /// The point-in-time copy.
    public var source: DiskChain
    /// Where the image is published (e.g. `<point>/disk0.vhdx`), in `space`.
    public var destination: FilePath
    public var space: any StoreSpace
    public var parent: Parent?
    /// Virtual ranges the provider says may have changed since the parent (nil: unknown, read all).
    public var knownChanges: [Range<UInt64>]?
    public var progress: ProgressReporter?

    public init(source: DiskChain, destination: FilePath, space: any StoreSpace, parent: Parent?, knownChanges: [Range<UInt64>]?, progress: ProgressReporter?) {
        self.source = source
        self.destination = destination
        self.space = space
        self.parent = parent
        self.knownChanges = knownChanges
        self.progress = progress
    }

    public func run() throws -> Result {
        let leaf = source.leaf
        let size = leaf.virtualSize
        let chunkSize = Self.chunkSize
        let count = Int((size + UInt64(chunkSize) - 1) / UInt64(chunkSize))
        guard size > 0 else {
            throw ProtectionError.sourceChanged(source: leaf.path.string, reason: "it is empty (0 bytes): nothing to back up")
        }
        if let parent, parent.chunks.count != count {
            // The plan compared the sizes; a source that changed size since (truncated, resized) fails here.
            throw ProtectionError.sourceChanged(source: leaf.path.string, reason: "it is \(size) bytes now, not the size of the parent point's disk (\(parent.chunks.count) chunks of \(chunkSize) bytes)")
        }
        var options = CreateOptions(format: .vhdx, type: parent == nil ? .dynamic : .differencing, virtualSize: size, blockSize: chunkSize,
                                    logicalSectorSize: leaf.logicalSectorSize, physicalSectorSize: leaf.physicalSectorSize)
        if let parent {
            options.virtualSize = 0
            options.parentPath = parent.image
        }
        // A store that shrinks while it is read (a truncated file, a device going away) reads as
        // holes past its new end: the sizes at the start are checked again at the end.
        let sizes = try source.levels.map { try $0.store.size() }
        let staged = try StagedImage(at: destination, options: options, in: space)
        var chunks = parent?.chunks ?? [String](repeating: "", count: count)
        var changed: UInt64 = 0, read: UInt64 = 0, written: UInt64 = 0

        // Chunks to read: all of them, or those the provider's changes touch.
        var ranges: [Range<UInt64>]? = nil
        if let known = knownChanges, parent != nil {
            var touched = Set<Int>()
            for r in known where !r.isEmpty {
                for i in Int(r.lowerBound / UInt64(chunkSize))...Int((r.upperBound - 1) / UInt64(chunkSize)) where i < count { touched.insert(i) }
            }
            ranges = touched.sorted().map { (UInt64($0) * UInt64(chunkSize))..<min(UInt64($0 + 1) * UInt64(chunkSize), size) }
        }

        let image = staged.image
        let fileDigest = Mutex<Swift.Result<(UInt64, String), any Error>?>(nil)
        let hasher = ParallelDigest()
        let assembler = ChunkAssembler(chunkSize: chunkSize, virtualSize: size)
        let zeroDigest = Digest.zeros(chunkSize)
        func finish(_ chunk: ChunkAssembler.Complete) throws {
            let i = chunk.index
            let length = chunk.length
            read += UInt64(length)
            let offset = UInt64(i) * UInt64(chunkSize)
            if parent == nil {
                // A full: every chunk with data is stored, whatever its checksum, so the checksum runs
                // on the other core while the data runs are written (a new dynamic image reads zeros
                // where nothing is written: holes and zero granules are never stored).
                if chunk.isAllZero {
                    chunks[i] = length == chunkSize ? zeroDigest : Digest.zeros(length)
                    return
                }
                let digest = try chunk.withBytes { bytes in
                    try hasher.digest(bytes) {
                        try chunk.forEachDataRun { run, data in
                            try image.write(data, at: offset + UInt64(run.lowerBound))
                            written += UInt64(run.count)
                        }
                    }
                }
                chunks[i] = digest
                changed += UInt64(length)
                return
            }
            let digest = chunk.isAllZero ? (length == chunkSize ? zeroDigest : Digest.zeros(length)) : chunk.withBytes { Digest.sha256($0) }
            let before = parent?.chunks[i]
            chunks[i] = digest
            guard digest != before else { return }
            changed += UInt64(length)
            do {
                // A differencing image must hide its parent: the whole chunk, zeros included.
                try chunk.withBytes { try image.write($0, at: offset) }
                written += UInt64(length)
            }
        }
        do {
            let reader = ChainReader(source, ranges: ranges, chunkSize: chunkSize)
            try reader.forEach(progress: progress) { piece in
                switch piece {
                case let .data(offset, bytes):
                    try assembler.add(data: bytes, at: offset, finish)
                case let .hole(range):
                    try assembler.add(hole: range, finish)
                }
            }
            try assembler.flush(finish)
            try progress?.checkCancelled()
            for (level, size) in zip(source.levels, sizes) {
                let now = try level.store.size()
                if now < size {
                    throw ProtectionError.sourceChanged(source: level.path.string, reason: "it shrank from \(size) to \(now) bytes while it was read")
                }
            }
            // The image file's checksum is taken while the publish makes it durable.
            let temporary = staged.temporaryPath, space = self.space
            try staged.publish(alongside: { fileDigest.withLock { $0 = Swift.Result { try Digest.file(temporary, in: space) } } })
        } catch {
            staged.discard()
            throw error
        }
        guard let (imageSize, imageDigest) = try fileDigest.withLock({ $0 })?.get() else {
            preconditionFailure("publish runs the checksum before it returns")
        }
        return Result(chunks: chunks, changedBytes: changed, bytesRead: read, bytesWritten: written, imageSize: imageSize,
                      imageSHA256: imageDigest, virtualSize: size, logicalSectorSize: leaf.logicalSectorSize, physicalSectorSize: leaf.physicalSectorSize)
    }
}

/// Checksums a buffer on another thread while the caller's thread does other work with it (reads
/// only), so a full backup's hashing and writing share the two cores.
final class ParallelDigest: @unchecked Sendable {
    // Unchecked: `buffer` is only read, by both threads, and `digest` waits for the hash before it
    // returns, so the buffer outlives every use.
    private let queue = DispatchQueue(label: "bulwark.digest")

    func digest(_ bytes: UnsafeRawBufferPointer, while work: () throws -> Void) throws -> String {
        nonisolated(unsafe) let shared = bytes
        let result = Mutex<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        queue.async {
            result.withLock { $0 = Digest.sha256(shared) }
            done.signal()
        }
        do { try work() } catch {
            done.wait()
            throw error
        }
        done.wait()
        return result.withLock { $0 }!
    }
}

/// Collects a stream of data pieces and holes (in order, not aligned) into whole chunks aligned to
/// `chunkSize` in the virtual disk, remembering which parts were holes so an all-hole chunk is known
/// zero without looking at it.
final class ChunkAssembler {
    let chunkSize: Int
    let virtualSize: UInt64
    private let buffer: UnsafeMutableRawBufferPointer
    private var index = -1
    private var filled = 0
    private var dataRuns: [Range<Int>] = []

    struct Complete {
        let index: Int
        let length: Int
        let bytes: UnsafeRawBufferPointer
        let dataRuns: [Range<Int>]
        var isAllZero: Bool { dataRuns.isEmpty }
        func withBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T { try body(bytes) }
        func forEachDataRun(_ body: (Range<Int>, UnsafeRawBufferPointer) throws -> Void) rethrows {
            for run in dataRuns { try body(run, UnsafeRawBufferPointer(rebasing: bytes[run])) }
        }
    }

    init(chunkSize: Int, virtualSize: UInt64) {
        self.chunkSize = chunkSize
        self.virtualSize = virtualSize
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
    }

    deinit { buffer.deallocate() }

    private func length(of i: Int) -> Int { Int(min(UInt64(chunkSize), virtualSize - UInt64(i) * UInt64(chunkSize))) }

    /// Starts chunk `i` if the stream moved to it, finishing the previous one.
    private func position(at offset: UInt64, _ done: (Complete) throws -> Void) throws {
        let i = Int(offset / UInt64(chunkSize))
        if i != index {
            if index >= 0 { try complete(done) }
            index = i
            filled = 0
            dataRuns = []
        }
        let within = Int(offset - UInt64(i) * UInt64(chunkSize))
        precondition(within == filled, "the stream covers whole chunks in order")
    }

    private func complete(_ done: (Complete) throws -> Void) throws {
        let n = length(of: index)
        precondition(filled == n, "chunk \(index) covered \(filled) of \(n) bytes")
        let merged = dataRuns.reduce(into: [Range<Int>]()) { out, r in
            if let last = out.last, last.upperBound == r.lowerBound { out[out.count - 1] = last.lowerBound..<r.upperBound } else { out.append(r) }
        }
        try done(Complete(index: index, length: n, bytes: UnsafeRawBufferPointer(rebasing: buffer[..<n]), dataRuns: merged))
        index = -1
    }

    func add(data: UnsafeRawBufferPointer, at offset: UInt64, _ done: (Complete) throws -> Void) throws {
        var pos = 0
        while pos < data.count {
            try position(at: offset + UInt64(pos), done)
            let n = min(data.count - pos, length(of: index) - filled)
            UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<filled + n]).copyMemory(from: UnsafeRawBufferPointer(rebasing: data[pos..<pos + n]))
            dataRuns.append(filled..<filled + n)
            filled += n
            pos += n
            if filled == length(of: index) { try complete(done) }
        }
    }

    func add(hole: Range<UInt64>, _ done: (Complete) throws -> Void) throws {
        var pos = hole.lowerBound
        while pos < hole.upperBound {
            try position(at: pos, done)
            let n = Int(min(hole.upperBound - pos, UInt64(length(of: index) - filled)))
            memset(buffer.baseAddress! + filled, 0, n)
            filled += n
            pos += UInt64(n)
            if filled == length(of: index) { try complete(done) }
        }
    }

    func flush(_ done: (Complete) throws -> Void) throws {
        if index >= 0 && filled > 0 { try complete(done) }
    }
}

#if canImport(Glibc)
import Glibc
#endif
