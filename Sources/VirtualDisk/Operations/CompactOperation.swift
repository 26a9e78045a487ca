import SystemPackage
import Storage

/// What a compaction reclaimed.
public struct CompactResult: Codable, Sendable, Equatable {
    public var path: String
    public var format: DiskFormat
    /// File space released (as the format reports it; for raw images the allocated bytes freed).
    public var bytesReclaimed: UInt64
    public var allocatedBefore: UInt64
    public var allocatedAfter: UInt64
    /// Children re-pointed because the image's identity changed (only with `force`).
    public var repointed: [String]
}

/// Releases file space that holds only zeros, without changing any byte read through the chain.
///
/// VHD and VHDX images compact through `MaintainableImage.compact` (crash-safe in the format); raw
/// images get holes punched over all-zero runs (which cannot change their contents at any moment).
public enum CompactOperation {
    public static func compact(path: FilePath, children: [FilePath] = [], force: Bool = false,
                               progress: ProgressReporter? = nil) throws -> CompactResult {
        let found = try ChildFinder(near: [path], extra: children).children(of: path)
        if !found.isEmpty, !force { throw DiskError.hasChildren(path: path.string, children: found.map(\.string)) }
        // The whole chain: a differencing level compares its zero blocks with what its parent reads.
        let chain = try DiskChain.open(path, writable: true)
        let image = chain.leaf
        var closed = false
        defer { if !closed { try? chain.close() } }
        let before = try image.store.allocatedBytes()
        let oldID = image.identity
        var reclaimed: UInt64
        if let raw = image as? RawImage {
            try punchZeros(raw, progress: progress)
            try raw.flush()
            reclaimed = before - min(before, try raw.store.allocatedBytes())
        } else if let maintainable = image as? any MaintainableImage {
            reclaimed = try maintainable.compact(progress: progress)
            try maintainable.flush()
        } else {
            throw DiskError.unsupported(path: path.string, reason: "compacting \(image.format.rawValue) images is not supported")
        }
        let after = try image.store.allocatedBytes()
        if image.format == .raw { reclaimed = before - min(before, after) }
        let newID = image.identity
        try chain.close()
        closed = true
        var repointed: [String] = []
        if newID != oldID {
            for c in found {
                let level = try DiskImages.openLevel(c, writable: true)
                defer { try? level.close() }
                guard let m = level as? any MaintainableImage else { continue }
                try m.setParent(ParentLink(expectedID: newID, locators: ParentLocator.locators(child: c, parent: path)))
                repointed.append(c.string)
            }
        }
        return CompactResult(path: FileOps.absolute(path).string, format: image.format, bytesReclaimed: reclaimed,
                             allocatedBefore: before, allocatedAfter: after, repointed: repointed)
    }

    /// Punches holes over every 4 KiB-aligned all-zero run of a raw image's allocated data.
    static func punchZeros(_ raw: RawImage, progress: ProgressReporter?) throws {
        let all = try raw.extents(in: 0..<raw.virtualSize)
        // What SEEK_DATA calls a hole reads as zeros but may still hold preallocated (unwritten)
        // extents: punch those without reading them.
        for e in all where e.kind == .unallocated { try raw.store.punchHole(at: e.range.lowerBound, length: UInt64(e.range.count)) }
        let extents = all.filter { if case .data = $0.kind { return true } else { return false } }
        let total = extents.reduce(UInt64(0)) { $0 + UInt64($1.range.count) }
        let buffer = OperationIO.buffer()
        defer { buffer.deallocate() }
        let page = 4096
        var done: UInt64 = 0
        progress?.report(0, of: total)
        for e in extents {
            for piece in OperationIO.chunks(of: e.range) {
                let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<piece.count])
                try raw.store.read(into: slice, at: piece.lowerBound)
                // Pages aligned to file offsets: skip the unaligned head, keep the partial tail.
                let head = Int((UInt64(page) - piece.lowerBound % UInt64(page)) % UInt64(page))
                if head < piece.count {
                    let aligned = UnsafeRawBufferPointer(rebasing: slice[head..<(head + (piece.count - head) / page * page)])
                    var zeroStart: Int?
                    var offset = 0
                    func flushRun(_ end: Int) throws {
                        if let start = zeroStart {
                            try raw.store.punchHole(at: piece.lowerBound + UInt64(head + start), length: UInt64(end - start))
                            zeroStart = nil
                        }
                    }
                    while offset < aligned.count {
                        if OperationIO.isZero(UnsafeRawBufferPointer(rebasing: aligned[offset..<offset + page])) {
                            if zeroStart == nil { zeroStart = offset }
                        } else {
                            try flushRun(offset)
                        }
                        offset += page
                    }
                    try flushRun(aligned.count)
                }
                done += UInt64(piece.count)
                progress?.report(done, of: total)
                OperationIO.pace()
            }
        }
    }
}
