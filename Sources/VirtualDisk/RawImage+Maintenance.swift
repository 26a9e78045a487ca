import Foundation
import SystemPackage
import Storage

/// Raw images take part in the disk utility like the other formats: resize by truncating (shrinking
/// only over an empty tail), compact by punching holes, and no parent.
extension RawImage: MaintainableImage {
    /// Sets the size of the raw file (growing reads as zeros). Shrinking is refused where the cut-off
    /// tail holds data.
    public func resize(to newSize: UInt64) throws {
        guard newSize <= RawFormat.maximumSize else { throw RawFormat.tooLarge(path, newSize) }
        let old = virtualSize
        if newSize < old, let data = try store.nextData(from: newSize), data < old {
            // The last byte of data decides the smallest size; find the end of the data run it is in.
            var end = try store.nextHole(from: data)
            while end < old, let next = try store.nextData(from: end), next < old { end = try store.nextHole(from: next) }
            throw ResizeOperation.shrinkRefusal(path, to: newSize, dataEnd: min(end, old), alignment: 1)
        }
        try store.truncate(to: newSize)
        virtualSize = newSize
    }

    public func setParent(_ link: ParentLink) throws {
        throw DiskError.unsupported(path: path.string, reason: "a raw image cannot have a parent")
    }

    public func adoptIdentity(_ identity: UUID) throws {
        throw DiskError.unsupported(path: path.string, reason: "a raw image has no identity for children to record")
    }

    /// Punches holes over every 4 KiB-aligned all-zero run of the allocated data; returns the bytes
    /// of file space freed.
    public func compact(progress: ProgressReporter?) throws -> UInt64 {
        let raw = self
        let before = try store.allocatedBytes()
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
                try OperationIO.pace(progress)
            }
        }
        try store.flushData()
        return before - min(before, try store.allocatedBytes())
    }
}
