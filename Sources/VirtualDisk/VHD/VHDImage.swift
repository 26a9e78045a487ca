import SystemPackage
import struct Foundation.UUID
import Storage

/// An open VHD image level: fixed, dynamic or differencing (Microsoft "Virtual Hard Disk Image Format
/// Specification").
///
/// The block allocation table (BAT) is kept in memory. A write into an unallocated block appends the
/// block (sector bitmap, then data) where the footer was and writes the footer after it; the new BAT
/// entries reach the file only after an `fsync` (in `flush`, `close`, or after 64 allocations), so a
/// crash leaves either the old image or the new one, never a BAT entry pointing at lost data. An image
/// whose end footer is missing (a crash while a block was appended) opens from the footer copy at 0.
public final class VHDImage: MaintainableImage {
    public let store: any ByteStore
    var footer: VHDFooter
    var header: VHDDynamicHeader?
    /// Sector offsets of the blocks; `unused` where a block is not allocated.
    var bat: [UInt32]
    /// BAT entries changed in memory whose data is not yet known to be durable.
    var dirtyEntries: Set<Int> = []
    /// Where the end footer lies (and where the next block goes).
    var footerOffset: UInt64
    /// Whether the file holds bytes after the last structure that must be cut before appending.
    var tailDirty: Bool
    /// Where the footer was found: "end", "end (511-byte footer)" or "copy at offset 0".
    var footerSource: String
    public internal(set) var virtualSize: UInt64
    var sizeRule: String
    public private(set) var parent: (any DiskImage)?
    var locatorPaths: [ParentLocator]
    private var bitmapCache: [Int: [UInt8]] = [:]
    /// A new file that nothing opens until the final flush (`CreateOptions.staged`): BAT entries are
    /// written without the sync that otherwise orders them after their blocks' data.
    var staged = false

    static let unused: UInt32 = 0xFFFF_FFFF
    static let commitThreshold = 64

    init(store: any ByteStore, footer: VHDFooter, header: VHDDynamicHeader?, bat: [UInt32], footerOffset: UInt64,
         tailDirty: Bool, footerSource: String, locators: [ParentLocator]) {
        self.store = store
        self.footer = footer
        self.header = header
        self.bat = bat
        self.footerOffset = footerOffset
        self.tailDirty = tailDirty
        self.footerSource = footerSource
        let rule = footer.sizeRule
        virtualSize = rule.size
        sizeRule = rule.rule
        locatorPaths = locators
    }

    deinit {
        if store.isWritable, !dirtyEntries.isEmpty { try? commitAllocations() }
    }

    public var format: DiskFormat { .vhd }
    public var type: DiskType { footer.diskKind.type }
    public var logicalSectorSize: Int { 512 }
    public var physicalSectorSize: Int { 512 }
    public var blockSize: Int { header.map { Int($0.blockSize) } ?? (2 << 20) }
    public var identity: UUID { footer.uniqueID }
    var bitmapBytes: Int { header?.bitmapBytes ?? 0 }
    var isDifferencing: Bool { footer.diskKind == .differencing }

    public var parentLink: ParentLink? {
        guard isDifferencing, let header else { return nil }
        return ParentLink(expectedID: header.parentID, locators: locatorPaths)
    }

    public func attachParent(_ parent: any DiskImage) throws {
        guard isDifferencing else {
            throw DiskError.unsupported(path: path.string, reason: "a \(type.rawValue) VHD has no parent")
        }
        guard parent.logicalSectorSize == 512 else {
            throw DiskError.unsupported(path: path.string, reason: "parent \(parent.path.string) has \(parent.logicalSectorSize)-byte sectors; VHD uses 512")
        }
        self.parent = parent
    }

    public var properties: [String: String] {
        var p: [String: String] = [
            "disk type": "\(footer.diskKind.type.rawValue) (\(footer.diskKind.rawValue))",
            "geometry (C/H/S)": footer.geometry.description,
            "size rule": sizeRule,
            "current size": "\(footer.currentSize)",
            "original size": "\(footer.originalSize)",
            "creator application": VHDBytes.fourCC(footer.creatorApplication),
            "creator version": "\(footer.creatorVersion >> 16).\(footer.creatorVersion & 0xFFFF)",
            "creator host OS": VHDBytes.fourCC(footer.creatorHostOS),
            "timestamp": VHDBytes.date(footer.timestamp),
            "data offset": footer.dataOffset == VHDFooter.noDataOffset ? "none (0xffffffffffffffff)" : "\(footer.dataOffset)",
            "saved state": footer.savedState != 0 ? "yes" : "no",
            "footer": footerSource,
        ]
        if let header {
            p["max table entries"] = "\(header.maxTableEntries)"
            p["table offset"] = "\(header.tableOffset)"
            p["allocated blocks"] = "\(bat.filter { $0 != Self.unused }.count)"
            if isDifferencing {
                p["parent name"] = header.parentName
                p["parent timestamp"] = VHDBytes.date(header.parentTimestamp)
                p["parent unique id"] = header.parentID.uuidString.lowercased()
            }
        }
        return p
    }

    // MARK: Reading

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

    // MARK: Writing

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
    private func writeBlock(_ index: Int, from start: Int, _ piece: UnsafeRawBufferPointer) throws {
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
    private func appendBlock(bitmap: [UInt8]) throws -> UInt64 {
        let blockOffset = VHDBytes.roundUp(footerOffset, 512)
        let newFooter = blockOffset + UInt64(bitmapBytes) + UInt64(blockSize)
        guard blockOffset / 512 < UInt64(Self.unused) else {
            throw DiskError.unsupported(path: path.string, reason: "the file would grow past the 2 TiB a VHD BAT can address")
        }
        try cleanTail()
        try store.write(bitmap, at: blockOffset)
        try store.write(footer.bytes, at: newFooter)
        footerOffset = newFooter
        return blockOffset
    }

    /// Cuts bytes left after the last structure by an interrupted append (the file then ends without
    /// a footer; it is readable through the footer copy at offset 0).
    func cleanTail() throws {
        guard tailDirty else { return }
        if try store.size() > footerOffset { try store.truncate(to: footerOffset) }
        tailDirty = false
    }

    /// Makes appended blocks durable, then records them in the on-disk BAT.
    func commitAllocations() throws {
        guard !dirtyEntries.isEmpty, header != nil else { return }
        if !staged { try store.flush() }
        try writeTable(entries: dirtyEntries.min()!...dirtyEntries.max()!)
        dirtyEntries.removeAll()
    }

    public func flush() throws {
        guard store.isWritable else { return }
        try commitAllocations()
        try store.flush()
    }

    public func close() throws {
        if store.isWritable { try flush() }
        try store.close()
    }

    /// Forgets cached bitmaps (after the file changed under them).
    func dropCaches() { bitmapCache.removeAll() }

    /// The end of the last structure or block (the earliest place the end footer may go).
    func structuresEnd() -> UInt64 {
        guard let header else { return footerOffset }
        var end = max(512, footer.dataOffset + UInt64(VHDDynamicHeader.size), header.tableOffset + header.tableBytes)
        let fileSize = (try? store.size()) ?? 0
        for l in header.locators where l.isUsed && l.dataOffset < fileSize { end = max(end, l.dataOffset + l.spaceBytes) }
        let slot = UInt64(bitmapBytes) + UInt64(header.blockSize)
        for e in bat where e != Self.unused { end = max(end, UInt64(e) * 512 + slot) }
        return VHDBytes.roundUp(end, 512)
    }
}
