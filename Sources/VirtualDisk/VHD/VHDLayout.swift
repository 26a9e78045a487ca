import Storage

/// Where the structures and blocks of a dynamic or differencing VHD lie, and the file space between
/// them that nothing references.
///
/// A block is appended (bitmap, data, then the footer after it) before its BAT entry is written, so
/// that a crash never leaves an entry pointing at lost data; the price is that a write killed part
/// way leaves appended blocks no entry references. `check` reports that space, `check --repair` and
/// `compact` reclaim it, and the next writable session reuses the tail before appending.
struct VHDLayout {
    /// The footer copy, the dynamic header, the BAT and the parent locator data.
    var structures: [Range<UInt64>]
    /// Every block a BAT entry references (sector bitmap and data).
    var blocks: [Range<UInt64>]
    /// Bytes of one block slot (bitmap and data).
    var slot: UInt64

    /// `fileSize` only decides which locator data counts (data past the end is ignored, as on open).
    init(footer: VHDFooter, header: VHDDynamicHeader, bat: [UInt32], fileSize: UInt64) {
        slot = UInt64(header.bitmapBytes) + UInt64(header.blockSize)
        structures = [0..<512, footer.dataOffset..<footer.dataOffset + UInt64(VHDDynamicHeader.size),
                      header.tableOffset..<header.tableOffset + header.tableBytes]
        for l in header.locators where l.isUsed && l.dataOffset < fileSize {
            structures.append(l.dataOffset..<l.dataOffset + l.spaceBytes)
        }
        let slot = self.slot
        blocks = bat.filter { $0 != VHDImage.unused }.map { UInt64($0) * 512..<UInt64($0) * 512 + slot }
    }

    /// The end of the last structure or block, rounded to a sector: where the end footer belongs.
    var end: UInt64 {
        VHDBytes.roundUp((structures + blocks).map(\.upperBound).max() ?? 512, 512)
    }

    /// Whole block slots between the first block and the end that no structure or block covers: left
    /// when a later session appended past the blocks of a killed one. Smaller gaps (such as locator
    /// data a reparent replaced) cannot hold a block and are left alone.
    var orphanedSlots: [UInt64] {
        guard let first = blocks.map(\.lowerBound).min() else { return [] }
        var out: [UInt64] = []
        var covered = first
        for r in (structures + blocks).sorted(by: { $0.lowerBound < $1.lowerBound }) where r.upperBound > first {
            var at = covered
            while at + slot <= r.lowerBound {
                out.append(at)
                at += slot
            }
            covered = max(covered, r.upperBound)
        }
        return out
    }
}
