import Storage

/// Reading: BAT entries and (for differencing images) sector bitmaps turned into extents.
extension VHDImage {
    /// Bytes of file data behind a fixed image (the part before the footer).
    var fixedDataSize: UInt64 { footerOffset }

    public func extents(in range: Range<UInt64>) throws -> [DiskExtent] {
        guard range.lowerBound < range.upperBound else { return [] }
        guard let header else {
            let dataEnd = min(range.upperBound, max(range.lowerBound, fixedDataSize))
            var out: [DiskExtent] = []
            if dataEnd > range.lowerBound { out.append(DiskExtent(range: range.lowerBound..<dataEnd, kind: .data(fileOffset: range.lowerBound))) }
            if dataEnd < range.upperBound { out.append(DiskExtent(range: dataEnd..<range.upperBound, kind: .zero)) }
            return out
        }
        let bs = UInt64(header.blockSize)
        var out: [DiskExtent] = []
        var pos = range.lowerBound
        while pos < range.upperBound {
            let index = Int(pos / bs)
            let blockStart = UInt64(index) * bs
            let end = min(range.upperBound, blockStart + bs)
            let entry = index < bat.count ? bat[index] : Self.unused
            if entry == Self.unused {
                out.append(DiskExtent(range: pos..<end, kind: .unallocated))
            } else {
                let dataStart = UInt64(entry) * 512 + UInt64(bitmapBytes)
                if !isDifferencing {
                    out.append(DiskExtent(range: pos..<end, kind: .data(fileOffset: dataStart + pos - blockStart)))
                } else {
                    let bitmap = try self.bitmap(index)
                    var p = pos
                    while p < end {
                        let sector = Int((p - blockStart) / 512)
                        let present = Self.bit(bitmap, sector)
                        var q = (UInt64(sector) + 1) * 512 + blockStart
                        while q < end, Self.bit(bitmap, Int((q - blockStart) / 512)) == present {
                            let s = Int((q - blockStart) / 512)
                            // Skip whole bytes of the bitmap at once.
                            if s % 8 == 0, bitmap[s / 8] == (present ? 0xFF : 0), q + 8 * 512 <= end { q += 8 * 512 } else { q += 512 }
                        }
                        q = min(q, end)
                        out.append(DiskExtent(range: p..<q, kind: present ? .data(fileOffset: dataStart + p - blockStart) : .unallocated))
                        p = q
                    }
                }
            }
            pos = end
        }
        return coalesce(out)
    }

    static func bit(_ bitmap: [UInt8], _ sector: Int) -> Bool {
        bitmap[sector >> 3] & (0x80 >> UInt8(sector & 7)) != 0
    }

    /// The sector bitmap of an allocated block (cached).
    func bitmap(_ index: Int) throws -> [UInt8] {
        if let cached = bitmapCache[index] { return cached }
        let bits = try store.read(count: bitmapBytes, at: UInt64(bat[index]) * 512)
        if bitmapCache.count >= 4096 { bitmapCache.removeAll(keepingCapacity: true) }
        bitmapCache[index] = bits
        return bits
    }
}
