import Storage
import SystemPackage

/// Sharing blocks instead of copying them, on filesystems with reflinks (xfs, btrfs): merge folds a
/// level into its ancestor, and convert fills a fixed or raw image, without reading or writing the data.
enum Reflink {
    /// Reflinks the pieces that a level stores into `target` where both sides allow it: the target
    /// stores the range in place (`inPlaceFileOffset`) and every offset and length is aligned to the
    /// filesystem block. No data is read or written for them. Pieces without a level (zeros to write)
    /// are left alone. The pieces shared are removed from `pieces` (`done` hears each one's size), and
    /// the bytes shared returned; the first refusal (a filesystem without reflinks, such as ext4, or two
    /// filesystems) stops the attempt.
    static func clone<Piece>(_ pieces: inout [Piece], range: (Piece) -> Range<UInt64>, level: (Piece) -> Int?,
                             from levels: [any DiskImage], into target: any DiskImage, done: (UInt64) throws -> Void) throws -> UInt64 {
        var cloned = Set<Int>()
        defer { if !cloned.isEmpty { pieces = pieces.indices.filter { !cloned.contains($0) }.map { pieces[$0] } } }
        let unit = target.store.allocationUnit
        let block = UInt64(max(target.blockSize, 1))
        var bytes: UInt64 = 0
        for (index, piece) in pieces.enumerated() {
            guard let level = level(piece) else { continue }
            let pieceRange = range(piece)
            // Every segment: stored in the level, in place in the target (one target block each).
            var segments: [(source: UInt64, destination: UInt64, length: UInt64)] = []
            var cloneable = true
            for e in try levels[level].extents(in: pieceRange) {
                guard case .data(let sourceOffset) = e.kind else { cloneable = false; break }
                var pos = e.range.lowerBound
                while pos < e.range.upperBound {
                    let end = min(e.range.upperBound, (pos / block + 1) * block)
                    let source = sourceOffset + (pos - e.range.lowerBound)
                    guard source % unit == 0, pos % unit == 0, (end - pos) % unit == 0,
                          let destination = try target.inPlaceFileOffset(forWriting: pos..<end), destination % unit == 0 else {
                        cloneable = false
                        break
                    }
                    segments.append((source, destination, end - pos))
                    pos = end
                }
                if !cloneable { break }
            }
            guard cloneable else { continue }
            for s in segments {
                guard try target.store.cloneRange(from: levels[level].store, sourceOffset: s.source, to: s.destination, length: s.length) else {
                    // No reflinks here; a piece cut short is written in full by the copy.
                    return bytes
                }
            }
            cloned.insert(index)
            bytes += UInt64(pieceRange.count)
            try done(UInt64(pieceRange.count))
        }
        return bytes
    }
}
