import Storage

/// What the levels of a chain store, in virtual offsets: the basis of incremental backups (a frozen
/// differencing child holds exactly what changed since its parent was taken) and of replicating only
/// what changed.
extension DiskChain {
    /// The ranges level `level` (0 = leaf) defines itself, as ordered, coalesced extents of kind
    /// `.data` (stored in its file) or `.zero` (defined as zeros without storing them); the ranges it
    /// leaves to its parent are left out. For a base level this is everything it stores.
    public func changedExtents(level: Int, in range: Range<UInt64>? = nil) throws -> [DiskExtent] {
        guard levels.indices.contains(level) else {
            throw DiskError.invalidArgument("\(leaf.path.string): the chain has \(levels.count) level(s); there is no level \(level)")
        }
        let image = levels[level]
        let whole = (range ?? 0..<image.virtualSize).clamped(to: 0..<image.virtualSize)
        guard !whole.isEmpty else { return [] }
        return coalesce(try image.extents(in: whole).filter { $0.kind != .unallocated })
    }

    /// The virtual ranges that any of `levels` (leaf-relative indices, e.g. `0..<2`: the leaf and its
    /// parent) defines, sorted and joined: what a reader of those levels' changes must copy.
    public func changedRanges(levels selected: Range<Int>, in range: Range<UInt64>? = nil) throws -> [Range<UInt64>] {
        guard !selected.isEmpty, selected.lowerBound >= 0, selected.upperBound <= levels.count else {
            throw DiskError.invalidArgument("\(leaf.path.string): the chain has \(levels.count) level(s); levels \(selected.lowerBound)..<\(selected.upperBound) do not exist")
        }
        var all: [Range<UInt64>] = []
        for level in selected { all += try changedExtents(level: level, in: range).map(\.range) }
        return Self.union(all)
    }

    /// Sorted, non-overlapping, non-adjacent union of `ranges`.
    static func union(_ ranges: [Range<UInt64>]) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        for r in ranges.filter({ !$0.isEmpty }).sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = out.last, r.lowerBound <= last.upperBound {
                out[out.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
            } else {
                out.append(r)
            }
        }
        return out
    }
}
