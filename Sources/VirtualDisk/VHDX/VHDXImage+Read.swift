import Storage

/// Reading: BAT entries and sector bitmaps turned into extents (the reads themselves are the shared
/// `DiskImage.read`).
extension VHDXImage {
    func entry(block: UInt64) -> VHDXBATEntry { VHDXBATEntry(raw: bat[geometry.payloadIndex(block)]) }

    func bitmap(chunk: UInt64) throws -> [UInt8] {
        if let b = bitmaps[chunk] { return b }
        let e = VHDXBATEntry(raw: bat[geometry.bitmapIndex(chunk: chunk)])
        let b = e.state == VHDXBitmapState.present ? try readMeta(e.fileOffset, Int(VHDXSize.mib)) : [UInt8](repeating: 0, count: Int(VHDXSize.mib))
        // Keep memory bounded: forget clean bitmaps once many are cached (pending ones must stay).
        if bitmaps.count >= Self.cachedBitmaps {
            let dirtyChunks = Set(session.pendingBitmap.map { $0 >> 8 })
            for key in bitmaps.keys where !dirtyChunks.contains(key) { bitmaps[key] = nil }
        }
        bitmaps[chunk] = b
        return b
    }

    public func extents(in range: Range<UInt64>) throws -> [DiskExtent] {
        guard !range.isEmpty else { return [] }
        guard range.upperBound <= virtualSize else {
            throw DiskError.outOfRange(path: path.string, offset: range.lowerBound, length: UInt64(range.count), virtualSize: virtualSize)
        }
        var out: [DiskExtent] = []
        var pos = range.lowerBound
        let bs = geometry.blockSize
        while pos < range.upperBound {
            let block = pos / bs
            let inBlock = pos % bs
            let end = min(range.upperBound, (block + 1) * bs)
            let e = entry(block: block)
            switch VHDXBlockState(rawValue: e.state) {
            case .fullyPresent:
                out.append(DiskExtent(range: pos..<end, kind: .data(fileOffset: e.fileOffset + inBlock)))
            case .partiallyPresent:
                try appendBitmapRuns(block: block, entry: e, range: pos..<end, into: &out)
            case .zero, .unmapped:
                // MS-VHDX: ZERO reads as zeros in every image type (UNMAPPED may, and here does).
                out.append(DiskExtent(range: pos..<end, kind: .zero))
            default:
                out.append(DiskExtent(range: pos..<end, kind: .unallocated))
            }
            pos = end
        }
        return coalesce(out)
    }

    func appendBitmapRuns(block: UInt64, entry e: VHDXBATEntry, range: Range<UInt64>, into out: inout [DiskExtent]) throws {
        let bits = try bitmap(chunk: block / geometry.chunkRatio)
        let lss = geometry.logicalSectorSize
        let blockStart = block * geometry.blockSize
        let firstBit = Int((block % geometry.chunkRatio) * geometry.sectorsPerBlock)
        var pos = range.lowerBound
        while pos < range.upperBound {
            let sector = (pos - blockStart) / lss
            let bit = firstBit + Int(sector)
            let present = bits[bit >> 3] & (1 << (bit & 7)) != 0
            // Extend the run over following sectors in the same state.
            var runEndSector = sector + 1
            let lastSector = (range.upperBound - blockStart + lss - 1) / lss
            while runEndSector < lastSector {
                let b = firstBit + Int(runEndSector)
                if (bits[b >> 3] & (1 << (b & 7)) != 0) != present { break }
                runEndSector += 1
            }
            let end = min(range.upperBound, blockStart + runEndSector * lss)
            out.append(DiskExtent(range: pos..<end, kind: present ? .data(fileOffset: e.fileOffset + (pos - blockStart)) : .unallocated))
            pos = end
        }
    }

    public func attachParent(_ parent: any DiskImage) throws {
        guard meta.hasParent else {
            throw DiskError.unsupported(path: path.string, reason: "a fixed or dynamic VHDX has no parent")
        }
        guard parent.logicalSectorSize == logicalSectorSize else {
            throw DiskError.unsupported(path: path.string, reason: "its logical sector size is \(logicalSectorSize) but the parent \(parent.path.string) has \(parent.logicalSectorSize)")
        }
        guard parent.virtualSize == virtualSize else {
            throw DiskError.unsupported(path: path.string, reason: "its virtual size is \(virtualSize) bytes but the parent \(parent.path.string) has \(parent.virtualSize)")
        }
        self.parent = parent
    }
}
