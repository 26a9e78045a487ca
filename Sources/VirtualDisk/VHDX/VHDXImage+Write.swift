import Storage

/// Writing and allocation: data goes in place into present blocks or into new blocks at the end of the
/// file; the BAT and bitmap changes wait in the session and reach the file through the log.
extension VHDXImage {
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try checkRange(offset: offset, length: buffer.count)
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        guard !buffer.isEmpty else { return }
        let lss = geometry.logicalSectorSize
        let end = offset + UInt64(buffer.count)
        if offset % lss == 0 && end % lss == 0 { return try writeAligned(buffer, at: offset) }
        // Unaligned: the edge sectors are read (through the chain), merged and written with the rest, so
        // one call still makes one set of metadata changes.
        let alignedStart = offset / lss * lss
        let alignedEnd = (end + lss - 1) / lss * lss
        let merged = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(alignedEnd - alignedStart), alignment: 4096)
        defer { merged.deallocate() }
        try read(into: UnsafeMutableRawBufferPointer(rebasing: merged[0..<Int(lss)]), at: alignedStart)
        if alignedEnd - lss > alignedStart {
            try read(into: UnsafeMutableRawBufferPointer(rebasing: merged[(merged.count - Int(lss))...]), at: alignedEnd - lss)
        }
        UnsafeMutableRawBufferPointer(rebasing: merged[Int(offset - alignedStart)..<Int(end - alignedStart)]).copyMemory(from: buffer)
        try writeAligned(UnsafeRawBufferPointer(merged), at: alignedStart)
    }

    /// Writes whole logical sectors: in place into present blocks, into new blocks at the end of the file
    /// otherwise; then one log entry carries every BAT and bitmap change of the call.
    func writeAligned(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try beginSession(dataWrite: true)
        let bs = geometry.blockSize
        var dirtyBAT = Set<Int>()
        var dirtyBitmap = Set<UInt64>()  // chunk << 8 | sector index inside the bitmap block
        var pos = offset
        let end = offset + UInt64(buffer.count)
        while pos < end {
            let block = pos / bs
            let inBlock = pos % bs
            let n = min(bs - inBlock, end - pos)
            let data = UnsafeRawBufferPointer(rebasing: buffer[Int(pos - offset)..<Int(pos - offset + n)])
            let index = geometry.payloadIndex(block)
            let e = VHDXBATEntry(raw: bat[index])
            switch VHDXBlockState(rawValue: e.state) {
            case .fullyPresent:
                try store.write(data, at: e.fileOffset + inBlock)
            case .partiallyPresent:
                try store.write(data, at: e.fileOffset + inBlock)
                try setBits(block: block, from: inBlock, count: n, clearFirst: false, dirtyBitmap: &dirtyBitmap, dirtyBAT: &dirtyBAT)
            default:
                let newOffset = try allocate(bs)
                try store.write(data, at: newOffset + inBlock)
                let inheritsParent = meta.hasParent && (e.state == VHDXBlockState.notPresent.rawValue || e.state == VHDXBlockState.undefined.rawValue)
                if inheritsParent && !(inBlock == 0 && n == bs) {
                    try setBits(block: block, from: inBlock, count: n, clearFirst: true, dirtyBitmap: &dirtyBitmap, dirtyBAT: &dirtyBAT)
                    bat[index] = VHDXBATEntry(state: VHDXBlockState.partiallyPresent.rawValue, fileOffset: newOffset).raw
                } else {
                    bat[index] = VHDXBATEntry(state: VHDXBlockState.fullyPresent.rawValue, fileOffset: newOffset).raw
                }
                dirtyBAT.insert(index)
            }
            session.unsynced = true
            pos += n
        }
        // Start writing the payload back now, so the flush before the next log entry finds little left.
        if buffer.count >= 1 << 20 {
            startWriteback(offset: offset, count: UInt64(buffer.count))
        }
        if diskFileSize < fileEnd {
            // New blocks read as zeros where not written yet.
            try store.truncate(to: fileEnd)
            diskFileSize = fileEnd
        }
        // BAT and bitmap changes are batched: logged together at the next flush, or once enough new
        // space is waiting, so a long sequential write makes one log entry per many blocks.
        session.pendingBAT.formUnion(dirtyBAT)
        session.pendingBitmap.formUnion(dirtyBitmap)
        if fileEnd >= session.committedEnd + Self.batchBytes || session.pendingBAT.count + session.pendingBitmap.count >= 1024 {
            try logAndApply([])
        }
    }

    /// Sector bitmaps (1 MiB each) kept in memory at most, besides those with pending changes.
    static let cachedBitmaps = 32

    /// New space after which pending metadata changes are logged even without a flush.
    static let batchBytes: UInt64 = 256 << 20

    /// Asks the kernel to start writeback of the file ranges holding virtual `offset..<offset+count`.
    func startWriteback(offset: UInt64, count: UInt64) {
        let bs = geometry.blockSize
        var pos = offset
        while pos < offset + count {
            let block = pos / bs
            let n = min(bs - pos % bs, offset + count - pos)
            let e = entry(block: block)
            if e.state == VHDXBlockState.fullyPresent.rawValue || e.state == VHDXBlockState.partiallyPresent.rawValue {
                store.advise(.startWriteback(e.fileOffset + pos % bs..<e.fileOffset + pos % bs + n))
            }
            pos += n
        }
    }

    /// Inside one FULLY_PRESENT block only: writing there changes no metadata.
    public func inPlaceFileOffset(forWriting range: Range<UInt64>) throws -> UInt64? {
        try checkRange(offset: range.lowerBound, length: range.count)
        guard isWritable, !range.isEmpty else { return nil }
        let bs = geometry.blockSize
        let block = range.lowerBound / bs
        let e = entry(block: block)
        guard (range.upperBound - 1) / bs == block, e.state == VHDXBlockState.fullyPresent.rawValue else { return nil }
        try beginSession(dataWrite: true)
        session.unsynced = true
        return e.fileOffset + range.lowerBound % bs
    }

    /// Reserves `length` bytes after everything referenced (the file is extended before the log entry
    /// that references them is written). Space a killed write left past the last referenced byte is
    /// reused; it is zeroed first, since new space must read as zeros (a block written in part, a
    /// bitmap block logged a sector at a time, a fixed image's new blocks).
    func allocate(_ length: UInt64) throws -> UInt64 {
        let at = fileEnd
        fileEnd += VHDXSize.roundUp(length, VHDXSize.mib)
        if at < diskFileSize {
            let count = min(fileEnd, diskFileSize) - at
            if !(try store.punchHole(at: at, length: count)) { try store.writeZeros(count: count, at: at) }
            session.unsynced = true
        }
        return at
    }

    /// Marks sectors of `block` present in its chunk's bitmap (allocating the bitmap block if needed).
    func setBits(block: UInt64, from inBlock: UInt64, count: UInt64, clearFirst: Bool,
                         dirtyBitmap: inout Set<UInt64>, dirtyBAT: inout Set<Int>) throws {
        let chunk = block / geometry.chunkRatio
        var bits = try bitmap(chunk: chunk)
        let sbIndex = geometry.bitmapIndex(chunk: chunk)
        if VHDXBATEntry(raw: bat[sbIndex]).state != VHDXBitmapState.present {
            let at = try allocate(VHDXSize.mib)
            bat[sbIndex] = VHDXBATEntry(state: VHDXBitmapState.present, fileOffset: at).raw
            dirtyBAT.insert(sbIndex)
            bits = [UInt8](repeating: 0, count: Int(VHDXSize.mib))
        }
        let lss = geometry.logicalSectorSize
        let firstBit = Int((block % geometry.chunkRatio) * geometry.sectorsPerBlock)
        if clearFirst {
            let lo = firstBit / 8, hi = lo + Int(geometry.sectorsPerBlock / 8)
            for i in lo..<hi where bits[i] != 0 {
                bits[i] = 0
                dirtyBitmap.insert(chunk << 8 | UInt64(i / 4096))
            }
        }
        var bit = firstBit + Int(inBlock / lss)
        let last = firstBit + Int((inBlock + count) / lss)
        while bit < last {
            if bit & 7 == 0 && bit + 8 <= last {
                if bits[bit >> 3] != 0xFF { bits[bit >> 3] = 0xFF; dirtyBitmap.insert(chunk << 8 | UInt64((bit >> 3) / 4096)) }
                bit += 8
                continue
            }
            let mask = UInt8(1 << (bit & 7))
            if bits[bit >> 3] & mask == 0 { bits[bit >> 3] |= mask; dirtyBitmap.insert(chunk << 8 | UInt64((bit >> 3) / 4096)) }
            bit += 1
        }
        bitmaps[chunk] = bits
    }

    /// Clears the sector bits of `block` in its chunk's bitmap, where the bitmap is stored.
    func clearBits(block: UInt64, dirtyBitmap: inout Set<UInt64>) throws {
        let chunk = block / geometry.chunkRatio
        guard VHDXBATEntry(raw: bat[geometry.bitmapIndex(chunk: chunk)]).state == VHDXBitmapState.present else { return }
        var bits = try bitmap(chunk: chunk)
        let lo = Int((block % geometry.chunkRatio) * geometry.sectorsPerBlock) / 8
        let hi = lo + Int(geometry.sectorsPerBlock / 8)
        for i in lo..<hi where bits[i] != 0 {
            bits[i] = 0
            dirtyBitmap.insert(chunk << 8 | UInt64(i / 4096))
        }
        bitmaps[chunk] = bits
    }

    /// The 4 KiB BAT sectors holding the given entries, as they are in memory.
    func batSectors(_ indexes: Set<Int>) -> [(UInt64, [UInt8])] {
        Set(indexes.map { $0 / 512 }).sorted().map { s in
            var b = [UInt8](repeating: 0, count: 4096)
            for k in 0..<512 where s * 512 + k < bat.count { b.setLE64(k * 8, bat[s * 512 + k]) }
            return (batRegion.fileOffset + UInt64(s) * 4096, b)
        }
    }
}
