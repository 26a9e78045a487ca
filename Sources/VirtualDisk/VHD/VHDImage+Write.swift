import Storage

/// Writing and allocation: new blocks are appended where the footer was; their BAT entries reach the
/// file only after the data is durable (`commitAllocations`).
extension VHDImage {
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try checkRange(offset: offset, length: buffer.count)
        guard store.isWritable else { throw StorageError.readOnly(path: path.string) }
        guard !buffer.isEmpty else { return }
        guard let header else {
            guard offset + UInt64(buffer.count) <= fixedDataSize else {
                throw DiskError.corrupt(path: path.string, reason: "the fixed image's data area ends at \(fixedDataSize), before the virtual size \(virtualSize)")
            }
            try store.write(buffer, at: offset)
            return
        }
        let bs = UInt64(header.blockSize)
        var pos = offset
        let end = offset + UInt64(buffer.count)
        while pos < end {
            let index = Int(pos / bs)
            let blockStart = UInt64(index) * bs
            let pieceEnd = min(end, blockStart + bs)
            let piece = UnsafeRawBufferPointer(rebasing: buffer[Int(pos - offset)..<Int(pieceEnd - offset)])
            try writeBlock(index, from: Int(pos - blockStart), piece)
            pos = pieceEnd
        }
        if dirtyEntries.count >= Self.commitThreshold { try commitAllocations() }
    }

    /// Writes `piece` at byte `start` of block `index`.
    func writeBlock(_ index: Int, from start: Int, _ piece: UnsafeRawBufferPointer) throws {
        guard index < bat.count else {
            throw DiskError.corrupt(path: path.string, reason: "block \(index) lies beyond the BAT's \(bat.count) entries")
        }
        let allocated = bat[index] != Self.unused
        if !isDifferencing {
            if allocated {
                try store.write(piece, at: UInt64(bat[index]) * 512 + UInt64(bitmapBytes) + UInt64(start))
            } else if !piece.allSatisfy({ $0 == 0 }) {
                // All bitmap bits set (as qemu and Hyper-V do): the whole block is defined here.
                let blockOffset = try appendBlock(bitmap: [UInt8](repeating: 0xFF, count: bitmapBytes))
                try store.write(piece, at: blockOffset + UInt64(bitmapBytes) + UInt64(start))
                bat[index] = UInt32(blockOffset / 512)
                dirtyEntries.insert(index)
            }
            return
        }
        // Differencing: sectors are claimed in whole 4 KiB units (one bitmap byte), the rest of a
        // unit copied from the parent. Readers such as libvhdi misread a bitmap byte whose set bits
        // are not a run to the byte's end, and whole bytes keep I/O aligned.
        let bs = blockSize
        let unit = min(4096, bs)
        let end = start + piece.count
        let alignedStart = start / unit * unit, alignedEnd = min(bs, (end + unit - 1) / unit * unit)
        var bitmap = allocated ? try self.bitmap(index) : [UInt8](repeating: 0, count: bitmapBytes)
        let blockOffset = allocated ? UInt64(bat[index]) * 512 : try appendBlock(bitmap: bitmap)
        let dataStart = blockOffset + UInt64(bitmapBytes)
        if alignedStart == start, alignedEnd == end {
            try store.write(piece, at: dataStart + UInt64(start))
        } else {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: alignedEnd - alignedStart, alignment: 4096)
            defer { buffer.deallocate() }
            let blockVirtual = UInt64(index) * UInt64(bs)
            // Fill the sectors the piece only partly covers, each from where it reads now.
            func fill(_ from: Int, _ to: Int) throws {
                var s = from / 512
                let last = (to + 511) / 512
                while s < last {
                    let present = Self.bit(bitmap, s)
                    var e = s + 1
                    while e < last, Self.bit(bitmap, e) == present { e += 1 }
                    let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[(s * 512 - alignedStart)..<(e * 512 - alignedStart)])
                    if present {
                        try store.read(into: slice, at: dataStart + UInt64(s * 512))
                    } else {
                        try readBelow(into: slice, at: blockVirtual + UInt64(s * 512))
                    }
                    s = e
                }
            }
            if start > alignedStart { try fill(alignedStart, start) }
            if end < alignedEnd { try fill(max(end / 512 * 512, start > alignedStart ? (start + 511) / 512 * 512 : alignedStart), alignedEnd) }
            UnsafeMutableRawBufferPointer(rebasing: buffer[(start - alignedStart)...]).copyMemory(from: piece)
            try store.write(UnsafeRawBufferPointer(buffer), at: dataStart + UInt64(alignedStart))
        }
        let before = bitmap
        Self.setBits(&bitmap, (alignedStart / 512)...((alignedEnd - 1) / 512))
        if !allocated {
            try store.write(bitmap, at: blockOffset)
            bat[index] = UInt32(blockOffset / 512)
            dirtyEntries.insert(index)
        } else if bitmap != before {
            // Only the bitmap sectors that changed.
            let lo = alignedStart / 512 / 8 / 512 * 512, hi = min(bitmapBytes, ((alignedEnd - 1) / 512 / 8 / 512 + 1) * 512)
            try bitmap[lo..<hi].withUnsafeBytes { try store.write($0, at: blockOffset + UInt64(lo)) }
        }
        bitmapCache[index] = bitmap
    }

    static func setBits(_ bitmap: inout [UInt8], _ sectors: ClosedRange<Int>) {
        var s = sectors.lowerBound
        while s <= sectors.upperBound {
            if s % 8 == 0, s + 7 <= sectors.upperBound {
                bitmap[s >> 3] = 0xFF
                s += 8
            } else {
                bitmap[s >> 3] |= 0x80 >> UInt8(s & 7)
                s += 1
            }
        }
    }

    /// Appends an empty block (its bitmap written, its data a hole) where the footer is, and writes
    /// the footer after it. Returns the block's file offset.
    /// The data must read as zeros, so the block goes past the end of the file: leftovers of a killed
    /// write are cut first (`cleanTail`), never written over.
    func appendBlock(bitmap: [UInt8]) throws -> UInt64 {
        try cleanTail()
        let blockOffset = VHDBytes.roundUp(footerOffset, 512)
        let newFooter = blockOffset + UInt64(bitmapBytes) + UInt64(blockSize)
        guard blockOffset / 512 < UInt64(Self.unused) else {
            throw DiskError.unsupported(path: path.string, reason: "the file would grow past the 2 TiB a VHD BAT can address")
        }
        try store.write(bitmap, at: blockOffset)
        try store.write(footer.bytes, at: newFooter)
        footerOffset = newFooter
        return blockOffset
    }

    /// Cuts bytes left after the last structure by an interrupted append (the file then ends without
    /// a footer; it is readable through the footer copy at offset 0).
    func cleanTail() throws {
        if tailOrphaned {
            try reclaimOrphanedTail()
            tailOrphaned = false
        }
        guard tailDirty else { return }
        if try store.size() > footerOffset { try store.truncate(to: footerOffset) }
        tailDirty = false
    }

    /// Makes appended blocks durable, then records them in the on-disk BAT.
    func commitAllocations() throws {
        guard let first = dirtyEntries.min(), let last = dirtyEntries.max(), header != nil else { return }
        if !staged { try store.flush() }
        try writeTable(entries: first...last)
        dirtyEntries.removeAll()
    }
}
