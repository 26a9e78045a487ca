import Storage

/// Reads a chain's virtual disk front to back as a stream of chunks, reporting the ranges that read
/// as zeros as holes instead of bytes: what a restore writes to a sparse file or a device, what a
/// backup hashes and stores, what `bulwark disk read` prints.
///
/// Holes come from the chain's map (unallocated everywhere, or zero blocks) and, with `detectZeros`,
/// from stored data that is all zeros (in 64 KiB granules). Reads run ahead of the consumer on a
/// background thread (`CopyPipeline`) with the kernel prefetching further ahead, so a cold disk or a
/// remote store streams at full speed; memory stays bounded (a few chunks).
public struct ChainReader {
    /// One piece of the stream, in virtual offsets, in order. `bytes` is valid only during the call.
    public enum Chunk {
        case data(offset: UInt64, bytes: UnsafeRawBufferPointer)
        case hole(Range<UInt64>)
    }

    public let chain: DiskChain
    /// The virtual ranges streamed, sorted (the whole disk by default, or e.g. a level's changes).
    public let ranges: [Range<UInt64>]
    public let chunkSize: Int
    public let detectZeros: Bool
    /// Zero detection granule.
    static let granule = 64 << 10

    public init(_ chain: DiskChain, ranges: [Range<UInt64>]? = nil, chunkSize: Int = 4 << 20, detectZeros: Bool = true) {
        self.chain = chain
        self.ranges = DiskChain.union((ranges ?? [0..<chain.leaf.virtualSize]).map { $0.clamped(to: 0..<chain.leaf.virtualSize) })
        self.chunkSize = max(Self.granule, chunkSize / Self.granule * Self.granule)
        self.detectZeros = detectZeros
    }

    /// Bytes the stream covers (data and holes).
    public var totalBytes: UInt64 { ranges.reduce(0) { $0 + UInt64($1.count) } }

    private enum Step {
        case data(Range<UInt64>)
        case hole(Range<UInt64>)
    }

    /// Calls `body` for each chunk, in order, covering exactly `ranges`. Progress counts the bytes
    /// covered; a cancelled reporter stops the stream with `OperationCancelled`.
    public func forEach(progress: ProgressReporter? = nil, _ body: (Chunk) throws -> Void) throws {
        // The pipeline runs the consumer on this thread only (one writer), so `body` does not escape.
        try withoutActuallyEscaping(body) { body in try stream(progress: progress, body) }
    }

    private func stream(progress: ProgressReporter?, _ body: @escaping (Chunk) throws -> Void) throws {
        var steps: [Step] = []
        for range in ranges where !range.isEmpty {
            for run in try chain.map(range) {
                if run.isZero {
                    if case .hole(let last)? = steps.last, last.upperBound == run.range.lowerBound {
                        steps[steps.count - 1] = .hole(last.lowerBound..<run.range.upperBound)
                    } else {
                        steps.append(.hole(run.range))
                    }
                } else {
                    steps += OperationIO.chunks(of: run.range, size: chunkSize).map { .data($0) }
                }
            }
        }
        let total = totalBytes
        var done: UInt64 = 0
        progress?.report(0, of: total)
        var next = 0
        func emitHoles(upTo end: Int) throws {
            while next < end {
                if case .hole(let r) = steps[next] {
                    try body(.hole(r))
                    done += UInt64(r.count)
                    progress?.report(done, of: total)
                }
                next += 1
            }
        }
        let indices = steps.indices.filter { if case .data = steps[$0] { true } else { false } }
        let pieces: [(index: Int, range: Range<UInt64>)] = indices.map { i in
            guard case .data(let r) = steps[i] else { preconditionFailure() }
            return (i, r)
        }
        let leaf = chain.leaf
        for level in chain.levels { OperationIO.adviseSequential(level.store) }
        let pipeline = CopyPipeline(pieces: pieces, chunkSize: chunkSize,
                                    lookahead: OperationIO.lookahead(pieceBytes: pieces.map(\.range.count)),
                                    prefetch: { OperationIO.prefetch(leaf, $0.range) }) { piece, buffer in
            try leaf.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<piece.range.count]), at: piece.range.lowerBound)
        }
        try pipeline.run { piece, buffer in
            try emitHoles(upTo: piece.index)
            next = piece.index + 1
            let bytes = UnsafeRawBufferPointer(rebasing: buffer[..<piece.range.count])
            try emit(bytes, at: piece.range.lowerBound, body)
            done += UInt64(piece.range.count)
            progress?.report(done, of: total)
            try OperationIO.pace(progress)
        }
        try emitHoles(upTo: steps.count)
    }

    /// Emits one piece of data, split into data and holes where zero detection finds all-zero granules.
    private func emit(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, _ body: (Chunk) throws -> Void) throws {
        guard detectZeros else { return try body(.data(offset: offset, bytes: bytes)) }
        var pos = 0
        for run in OperationIO.nonZeroRuns(bytes, granule: Self.granule) {
            if run.lowerBound > pos { try body(.hole(offset + UInt64(pos)..<offset + UInt64(run.lowerBound))) }
            try body(.data(offset: offset + UInt64(run.lowerBound), bytes: UnsafeRawBufferPointer(rebasing: bytes[run])))
            pos = run.upperBound
        }
        if pos < bytes.count { try body(.hole(offset + UInt64(pos)..<offset + UInt64(bytes.count))) }
    }
}
