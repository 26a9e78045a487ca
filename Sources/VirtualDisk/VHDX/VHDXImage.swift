#if canImport(Glibc)
import Glibc
#endif
import CLinux
import Dispatch
import SystemPackage
import struct Foundation.UUID
import Storage

/// One open VHDX level (MS-VHDX): fixed, dynamic or differencing.
///
/// Every metadata change (BAT entries, sector bitmaps, metadata items) goes through the log: payload
/// first (flushed), then the log entry (flushed), then the change in place. A dirty log is replayed on
/// open: into the file when writable, into an in-memory overlay of 4 KiB sectors when read-only.
/// A staged image (a new file not visible until its final flush, `CreateOptions.staged`) writes its
/// changes in place without the log and syncs once, at the flush.
public final class VHDXImage: DiskImage, MaintainableImage {
    public let store: any ByteStore
    public var format: DiskFormat { .vhdx }
    public private(set) var type: DiskType
    public private(set) var parent: (any DiskImage)?
    /// Whether a log replay happened on open (into the store, or in memory for a read-only open).
    public private(set) var replayedOnOpen = false

    var header: VHDXHeader
    var headerIndex: Int
    let creator: String
    var batRegion: VHDXRegionTable.Entry
    /// The region table in use (all entries, unknown optional ones included).
    var regionTable = VHDXRegionTable(entries: [])
    /// Log entries written in this session.
    public private(set) var logEntriesWritten = 0
    var metadataRegion: VHDXRegionTable.Entry
    var meta: VHDXMetadata
    /// The metadata region's bytes as they are (after replay).
    var metadataRaw: [UInt8]
    var geometry: VHDXGeometry
    /// The BAT entries held in memory (whole 4 KiB sectors of the BAT region).
    var bat: [UInt64]
    /// Sectors replayed in memory for a read-only open of a file with a dirty log.
    var overlay: [UInt64: [UInt8]] = [:]
    var overlaySize: UInt64 = 0
    /// Zeroed ranges replayed in memory (applied before `overlay` sectors, which are newer).
    var overlayZeros: [Range<UInt64>] = []
    /// Loaded sector bitmaps by chunk (1 MiB each).
    var bitmaps: [UInt64: [UInt8]] = [:]
    /// The log writer of this session, created on the first logged change.
    var logWriter: VHDXLogWriter?
    var logGuidInHeader = false
    var fileWriteUpdated = false
    var dataWriteUpdated = false
    /// The MiB-aligned end of everything allocated (new blocks go here).
    var fileEnd: UInt64
    /// The file's size as this process last set or saw it.
    var diskFileSize: UInt64
    /// Writes not yet flushed with fdatasync.
    var unsynced = false
    /// BAT entries and bitmap sectors (chunk << 8 | sector) changed in memory but not yet logged.
    var pendingBAT = Set<Int>()
    var pendingBitmap = Set<UInt64>()
    /// `fileEnd` when the pending changes were last logged.
    var committedEnd: UInt64 = 0
    /// A new file that nothing opens until the final flush: no log, no header sessions, one sync.
    let staged: Bool

    // MARK: DiskImage

    public var virtualSize: UInt64 { meta.virtualSize }
    public var logicalSectorSize: Int { Int(meta.logicalSectorSize) }
    public var physicalSectorSize: Int { Int(meta.physicalSectorSize) }
    public var blockSize: Int { Int(meta.blockSize) }
    /// The DataWriteGuid: what children record as parent_linkage.
    public var identity: UUID { header.dataWriteGuid }

    public var parentLink: ParentLink? {
        guard meta.hasParent, let entries = meta.parentEntries else { return nil }
        let id = meta.parentValue("parent_linkage").flatMap(VHDXGUID.parse) ?? VHDXGUID.zero
        var locators: [ParentLocator] = []
        for (k, v) in entries where !v.isEmpty {
            switch k {
            case "relative_path": locators.append(ParentLocator(kind: .relative, path: v))
            case "absolute_win32_path": locators.append(ParentLocator(kind: .absolute, path: v))
            case "volume_path": locators.append(ParentLocator(kind: .volume, path: v))
            default: break
            }
        }
        return ParentLink(expectedID: id, locators: locators)
    }

    public var properties: [String: String] {
        var p: [String: String] = [
            "chunk ratio": String(geometry.chunkRatio),
            "log size": String(header.logLength),
            "log": header.isLogDirty ? "dirty (LogGuid \(header.logGuid.uuidString.lowercased()))" : "clean",
            "log replayed on open": replayedOnOpen ? (isWritable ? "yes (into the file)" : "yes (in memory, file unchanged)") : "no",
            "header sequence": String(header.sequenceNumber),
            "file write guid": header.fileWriteGuid.uuidString.lowercased(),
            "data write guid": header.dataWriteGuid.uuidString.lowercased(),
            "virtual disk id": meta.diskID.uuidString.lowercased(),
            "creator": creator,
            "leave blocks allocated": meta.leaveBlocksAllocated ? "yes" : "no",
            "has parent": meta.hasParent ? "yes" : "no",
        ]
        if let entries = meta.parentEntries {
            for (k, v) in entries { p["parent locator \(k)"] = v }
        }
        return p
    }

    // MARK: Opening

    init(store: any ByteStore, staged: Bool = false) throws {
        self.store = store
        self.staged = staged && store.isWritable
        let path = store.path.string
        let size = try store.size()
        guard size >= VHDXSize.mib else {
            throw DiskError.corrupt(path: path, reason: "a VHDX file is at least 1 MiB (its header section); this one has \(size) bytes")
        }
        guard let ident = VHDXFileIdentifier.decode(try store.read(count: 520, at: 0)) else {
            throw DiskError.corrupt(path: path, reason: "no \"vhdxfile\" signature at offset 0")
        }
        creator = ident.creator
        let pair = try VHDXHeaderPair.select(try VHDXHeader.offsets.map { try store.read(count: VHDXHeader.size, at: $0) }, path: path)
        try pair.validate(path: path, fileSize: size)
        header = pair.current
        headerIndex = pair.currentIndex
        diskFileSize = size
        overlaySize = size

        // Placeholders until the structures are read (they may come from the log).
        batRegion = .init(guid: VHDXGUID.zero, fileOffset: 0, length: 0, required: true)
        metadataRegion = batRegion
        meta = VHDXMetadata(blockSize: 1 << 20, leaveBlocksAllocated: false, hasParent: false, virtualSize: 0,
                            diskID: VHDXGUID.zero, logicalSectorSize: 512, physicalSectorSize: 512, parentEntries: nil)
        metadataRaw = []
        geometry = VHDXGeometry(virtualSize: 0, blockSize: 1 << 20, logicalSectorSize: 512)
        bat = []
        fileEnd = VHDXSize.roundUp(size, VHDXSize.mib)
        type = .dynamic

        if header.isLogDirty { try replayLog() }
        try loadStructures()
        committedEnd = fileEnd
    }

    /// Finds the active log sequence and replays it (into the store, or into the overlay).
    private func replayLog() throws {
        let path = store.path.string
        let logEnd = header.logOffset + UInt64(header.logLength)
        guard logEnd <= diskFileSize else {
            throw DiskError.truncated(path: path, needed: logEnd, actual: diskFileSize)
        }
        let log = try store.read(count: Int(header.logLength), at: header.logOffset)
        guard let sequence = VHDXLogSequence.findActive(log: log, guid: header.logGuid) else {
            throw DiskError.corrupt(path: path, reason: "the header's LogGuid \(header.logGuid.uuidString.lowercased()) says the log must be replayed, but the log holds no valid entry sequence for it")
        }
        guard diskFileSize >= sequence.head.flushedFileOffset else {
            throw DiskError.corrupt(path: path, reason: "the file is \(diskFileSize) bytes, smaller than the \(sequence.head.flushedFileOffset) bytes the log recorded as flushed: it was truncated")
        }
        replayedOnOpen = true
        if store.isWritable {
            // The FileWriteGuid changes before any modification, log playback included; LogGuid stays.
            var h = header
            h.fileWriteGuid = UUID()
            try commitHeader(h, twice: false)
            fileWriteUpdated = true
            for entry in sequence.entries {
                for d in entry.descriptors {
                    switch d {
                    case let .data(offset, sector): try store.write(sector, at: offset)
                    case let .zero(offset, length): try store.writeZeros(count: length, at: offset)
                    }
                }
            }
            if try store.size() < sequence.head.lastFileOffset { try store.truncate(to: sequence.head.lastFileOffset) }
            try store.flush()
            diskFileSize = try store.size()
            var clean = header
            clean.logGuid = VHDXGUID.zero
            try commitHeader(clean, twice: true)
        } else {
            for entry in sequence.entries {
                for d in entry.descriptors {
                    switch d {
                    case let .data(offset, sector): overlay[offset] = sector
                    case let .zero(offset, length):
                        // Zero ranges can be large: keep them as ranges; sectors they cover are dropped.
                        for key in overlay.keys where key >= offset && key < offset + length { overlay[key] = nil }
                        overlayZeros.append(offset..<offset + length)
                    }
                    if case let .data(offset, _) = d { overlaySize = max(overlaySize, offset + 4096) }
                    if case let .zero(offset, length) = d { overlaySize = max(overlaySize, offset + length) }
                }
            }
            overlaySize = max(overlaySize, sequence.head.lastFileOffset)
        }
    }

    /// Reads region tables, metadata and the BAT (through the overlay).
    private func loadStructures() throws {
        let path = store.path.string
        let tables = try VHDXRegionTable.offsets.map { VHDXRegionTable.decode(try readMeta($0, VHDXRegionTable.size)) }
        var table: VHDXRegionTable
        switch (tables[0], tables[1]) {
        case let (.success(t), _): table = t
        case let (.failure, .success(t)): table = t
        case let (.failure(a), .failure(b)):
            throw DiskError.corrupt(path: path, reason: "both region tables are invalid (at 192 KiB: \(a); at 256 KiB: \(b))")
        }
        let regions = try table.validate(path: path, header: header)
        regionTable = table
        batRegion = regions.bat
        metadataRegion = regions.metadata
        let size = effectiveSize
        for r in [batRegion, metadataRegion] where r.range.upperBound > size {
            throw DiskError.truncated(path: path, needed: r.range.upperBound, actual: size)
        }
        guard metadataRegion.length <= 256 << 20 else {
            throw DiskError.unsupported(path: path, reason: "a metadata region of \(metadataRegion.length) bytes (more than 256 MiB) is refused")
        }
        metadataRaw = try readMeta(metadataRegion.fileOffset, Int(metadataRegion.length))
        meta = try VHDXMetadata.decode(metadataRaw, path: path)
        geometry = VHDXGeometry(virtualSize: meta.virtualSize, blockSize: UInt64(meta.blockSize), logicalSectorSize: UInt64(meta.logicalSectorSize))
        let required = geometry.entryCount(differencing: meta.hasParent)
        guard required * 8 <= UInt64(batRegion.length) else {
            throw DiskError.corrupt(path: path, reason: "the BAT region (\(batRegion.length) bytes) is too small for the \(required) entries a \(meta.virtualSize)-byte disk with \(meta.blockSize)-byte blocks needs")
        }
        let loaded = min(VHDXSize.roundUp(max(geometry.reservedEntryCount, required) * 8, 4096), UInt64(batRegion.length))
        let raw = try readMeta(batRegion.fileOffset, Int(loaded))
        bat = (0..<Int(loaded / 8)).map { raw.le64($0 * 8) }
        try validateBAT()
        type = meta.hasParent ? .differencing : (meta.leaveBlocksAllocated ? .fixed : .dynamic)
    }

    var effectiveSize: UInt64 { max(diskFileSize, overlaySize) }

    /// Refuses entries past the end of the store, overlapping ones, and states invalid for the type.
    private func validateBAT() throws {
        let path = store.path.string
        let size = effectiveSize
        var used: [(Range<UInt64>, String)] = [
            (0..<VHDXSize.mib, "the header section"), (batRegion.range, "the BAT region"), (metadataRegion.range, "the metadata region"),
        ]
        if header.logLength > 0 { used.append((header.logOffset..<header.logOffset + UInt64(header.logLength), "the log")) }
        var end = used.map(\.0.upperBound).max() ?? 0
        for block in 0..<geometry.payloadBlocks {
            let i = geometry.payloadIndex(block)
            let e = VHDXBATEntry(raw: bat[i])
            switch e.state {
            case 0, 1, 2, 3: continue
            case 6, 7:
                if e.state == 7 && !meta.hasParent {
                    throw DiskError.corrupt(path: path, reason: "BAT entry \(i) (block \(block)) is PARTIALLY_PRESENT in an image without a parent")
                }
                let span = min(geometry.blockSize, meta.virtualSize - block * geometry.blockSize)
                let r = e.fileOffset..<e.fileOffset + span
                guard e.fileOffset >= VHDXSize.mib, r.upperBound <= size else {
                    throw DiskError.corrupt(path: path, reason: "BAT entry \(i) (block \(block)) points past the end of the file (offset \(e.fileOffset), file size \(size))")
                }
                used.append((e.fileOffset..<e.fileOffset + geometry.blockSize, "block \(block)"))
                end = max(end, e.fileOffset + geometry.blockSize)
            default:
                throw DiskError.corrupt(path: path, reason: "BAT entry \(i) (block \(block)) has the reserved state \(e.state)")
            }
        }
        if meta.hasParent {
            for chunk in 0..<geometry.bitmapBlocks {
                let i = geometry.bitmapIndex(chunk: chunk)
                guard i < bat.count else { break }
                let e = VHDXBATEntry(raw: bat[i])
                guard e.state == VHDXBitmapState.present else { continue }
                guard e.fileOffset >= VHDXSize.mib, e.fileOffset + VHDXSize.mib <= size else {
                    throw DiskError.corrupt(path: path, reason: "BAT entry \(i) (sector bitmap \(chunk)) points past the end of the file (offset \(e.fileOffset), file size \(size))")
                }
                used.append((e.fileOffset..<e.fileOffset + VHDXSize.mib, "sector bitmap \(chunk)"))
                end = max(end, e.fileOffset + VHDXSize.mib)
            }
        }
        used.sort { $0.0.lowerBound < $1.0.lowerBound }
        for k in used.indices.dropFirst() where used[k].0.lowerBound < used[k - 1].0.upperBound {
            // Blocks of a fixed file may run past the last virtual byte into nothing; any real overlap is corrupt.
            throw DiskError.corrupt(path: path, reason: "\(used[k].1) (file offset \(used[k].0.lowerBound)) overlaps \(used[k - 1].1) (\(used[k - 1].0))")
        }
        fileEnd = max(fileEnd, VHDXSize.roundUp(end, VHDXSize.mib))
    }

    /// Reads file bytes for structures, with replayed sectors laid over them; past the end reads zeros.
    func readMeta(_ offset: UInt64, _ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let available = diskFileSize > offset ? min(UInt64(count), diskFileSize - offset) : 0
        if available > 0 {
            try out.withUnsafeMutableBytes { try store.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<Int(available)]), at: offset) }
        }
        let wanted = offset..<offset + UInt64(count)
        for zero in overlayZeros where zero.overlaps(wanted) {
            let r = zero.clamped(to: wanted)
            for p in r { out[Int(p - offset)] = 0 }
        }
        if !overlay.isEmpty {
            var s = offset / 4096 * 4096
            while s < offset + UInt64(count) {
                if let sector = overlay[s] {
                    for i in 0..<4096 {
                        let pos = Int64(s) + Int64(i) - Int64(offset)
                        if pos >= 0 && pos < Int64(count) { out[Int(pos)] = sector[i] }
                    }
                }
                s += 4096
            }
        }
        return out
    }

    // MARK: Reading

    func entry(block: UInt64) -> VHDXBATEntry { VHDXBATEntry(raw: bat[geometry.payloadIndex(block)]) }

    func bitmap(chunk: UInt64) throws -> [UInt8] {
        if let b = bitmaps[chunk] { return b }
        let e = VHDXBATEntry(raw: bat[geometry.bitmapIndex(chunk: chunk)])
        let b = e.state == VHDXBitmapState.present ? try readMeta(e.fileOffset, Int(VHDXSize.mib)) : [UInt8](repeating: 0, count: Int(VHDXSize.mib))
        // Keep memory bounded: forget clean bitmaps once many are cached (pending ones must stay).
        if bitmaps.count >= Self.cachedBitmaps {
            let dirtyChunks = Set(pendingBitmap.map { $0 >> 8 })
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

    private func appendBitmapRuns(block: UInt64, entry e: VHDXBATEntry, range: Range<UInt64>, into out: inout [DiskExtent]) throws {
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

    // MARK: Writing

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
                let newOffset = allocate(bs)
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
            unsynced = true
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
        pendingBAT.formUnion(dirtyBAT)
        pendingBitmap.formUnion(dirtyBitmap)
        if fileEnd >= committedEnd + Self.batchBytes || pendingBAT.count + pendingBitmap.count >= 1024 {
            try logAndApply([])
        }
    }

    /// Sector bitmaps (1 MiB each) kept in memory at most, besides those with pending changes.
    static let cachedBitmaps = 32

    /// New space after which pending metadata changes are logged even without a flush.
    static let batchBytes: UInt64 = 256 << 20

    /// The sectors holding the pending BAT and bitmap changes, as they are in memory now.
    private func pendingChanges() -> [(UInt64, [UInt8])] {
        var changes: [(UInt64, [UInt8])] = pendingBitmap.sorted().map { key in
            let chunk = key >> 8, sector = Int(key & 0xFF)
            let e = VHDXBATEntry(raw: bat[geometry.bitmapIndex(chunk: chunk)])
            return (e.fileOffset + UInt64(sector) * 4096, Array(bitmaps[chunk]![sector * 4096..<(sector + 1) * 4096]))
        }
        changes += batSectors(pendingBAT)
        return changes
    }

    /// Asks the kernel to start writeback of the file ranges holding virtual `offset..<offset+count`.
    private func startWriteback(offset: UInt64, count: UInt64) {
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

    /// Reads through the extents; large stored runs are read in parallel pieces (as qemu keeps several
    /// requests in flight), the rest (zeros, the parent) on the calling thread.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        try checkRange(offset: offset, length: buffer.count)
        guard !buffer.isEmpty else { return }
        var pieces: [(lower: Int, count: Int, fileOffset: UInt64)] = []
        let piece = 1 << 20
        for extent in try extents(in: offset..<offset + UInt64(buffer.count)) {
            let lower = Int(extent.range.lowerBound - offset)
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[lower..<lower + extent.range.count])
            switch extent.kind {
            case .data(let fileOffset):
                var done = 0
                while done < slice.count {
                    let n = min(piece, slice.count - done)
                    pieces.append((lower + done, n, fileOffset + UInt64(done)))
                    done += n
                }
            case .zero:
                slice.initializeMemory(as: UInt8.self, repeating: 0)
            case .unallocated:
                if let parent { try parent.read(into: slice, at: extent.range.lowerBound) } else { slice.initializeMemory(as: UInt8.self, repeating: 0) }
            }
        }
        if pieces.count < 2 {
            for p in pieces { try store.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[p.lower..<p.lower + p.count]), at: p.fileOffset) }
            return
        }
        let lanes = min(pieces.count, 4)
        let failure = FirstError()
        nonisolated(unsafe) let store = self.store
        nonisolated(unsafe) let target = buffer
        let work = pieces
        DispatchQueue.concurrentPerform(iterations: lanes) { lane in
            for i in stride(from: lane, to: work.count, by: lanes) {
                let p = work[i]
                do { try store.read(into: UnsafeMutableRawBufferPointer(rebasing: target[p.lower..<p.lower + p.count]), at: p.fileOffset) } catch { failure.record(error) }
            }
        }
        if let error = failure.error { throw error }
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
        unsynced = true
        return e.fileOffset + range.lowerBound % bs
    }

    /// Reserves `length` bytes at the end of the file (extended before the log entry is written).
    func allocate(_ length: UInt64) -> UInt64 {
        let at = fileEnd
        fileEnd += VHDXSize.roundUp(length, VHDXSize.mib)
        return at
    }

    /// Marks sectors of `block` present in its chunk's bitmap (allocating the bitmap block if needed).
    private func setBits(block: UInt64, from inBlock: UInt64, count: UInt64, clearFirst: Bool,
                         dirtyBitmap: inout Set<UInt64>, dirtyBAT: inout Set<Int>) throws {
        let chunk = block / geometry.chunkRatio
        var bits = try bitmap(chunk: chunk)
        let sbIndex = geometry.bitmapIndex(chunk: chunk)
        if VHDXBATEntry(raw: bat[sbIndex]).state != VHDXBitmapState.present {
            let at = allocate(VHDXSize.mib)
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

    /// The 4 KiB BAT sectors holding the given entries, as they are in memory.
    func batSectors(_ indexes: Set<Int>) -> [(UInt64, [UInt8])] {
        Set(indexes.map { $0 / 512 }).sorted().map { s in
            var b = [UInt8](repeating: 0, count: 4096)
            for k in 0..<512 where s * 512 + k < bat.count { b.setLE64(k * 8, bat[s * 512 + k]) }
            return (batRegion.fileOffset + UInt64(s) * 4096, b)
        }
    }

    /// Syncs file data (fdatasync) if anything was written since the last sync.
    func syncIfNeeded() throws {
        guard unsynced else { return }
        try store.flushData()
        unsynced = false
    }

    /// Updates the header once per session before the first change: a new FileWriteGuid, and a new
    /// DataWriteGuid before the first change a reader could see.
    func beginSession(dataWrite: Bool) throws {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        guard !fileWriteUpdated || (dataWrite && !dataWriteUpdated) else { return }
        if staged {
            // The file was created in this session: its GUIDs are new already.
            fileWriteUpdated = true
            dataWriteUpdated = dataWriteUpdated || dataWrite
            return
        }
        var h = header
        if !fileWriteUpdated { h.fileWriteGuid = UUID() }
        if dataWrite { h.dataWriteGuid = UUID() }
        try commitHeader(h, twice: true)
        fileWriteUpdated = true
        if dataWrite { dataWriteUpdated = true }
    }

    /// Writes `h` (with the next sequence number) over the non-current header and flushes; with `twice`,
    /// over the other one too, so both hold the same state.
    func commitHeader(_ h: VHDXHeader, twice: Bool) throws {
        for _ in 0..<(twice ? 2 : 1) {
            var next = h
            next.sequenceNumber = header.sequenceNumber + 1
            let slot = 1 - headerIndex
            try store.write(next.encode(), at: VHDXHeader.offsets[slot])
            try store.flush()
            header = next
            headerIndex = slot
        }
    }

    /// Logs `changes` (4 KiB sectors), flushes, then writes them in place. Large change sets are split into
    /// several entries; every payload write of the call is flushed before the first entry.
    func logAndApply(_ changes: [(UInt64, [UInt8])], zeros: [(UInt64, UInt64)] = [], flushedFileOffset: UInt64? = nil) throws {
        var merged: [UInt64: [UInt8]] = [:]
        for (offset, sector) in pendingChanges() + changes { merged[offset] = sector }
        pendingBAT.removeAll()
        pendingBitmap.removeAll()
        committedEnd = fileEnd
        let changes = merged.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        guard !changes.isEmpty || !zeros.isEmpty || flushedFileOffset != nil else { return }
        try beginSession(dataWrite: false)
        if diskFileSize < fileEnd {
            try store.truncate(to: fileEnd)
            diskFileSize = fileEnd
            unsynced = true
        }
        if staged {
            // Nothing reads the file before the final flush: the changes go straight into place.
            for (offset, length) in zeros { try store.writeZeros(count: length, at: offset) }
            for (offset, sector) in changes { try store.write(sector, at: offset) }
            unsynced = true
            return
        }
        if logWriter == nil {
            logWriter = VHDXLogWriter(logOffset: header.logOffset, logLength: Int(header.logLength), guid: UUID())
        }
        let perEntry = logWriter!.maxDataSectors
        var descriptors: [VHDXLogDescriptor] = zeros.map { .zero(fileOffset: $0.0, length: $0.1) }
            + changes.map { .data(fileOffset: $0.0, sector: $0.1) }
        repeat {
            let take = min(descriptors.count, perEntry)
            let batch = Array(descriptors[..<take])
            descriptors.removeFirst(take)
            try syncIfNeeded()  // payload, and the previous entry's in-place writes, are stable first
            let (at, bytes) = logWriter!.next(batch, flushedFileOffset: flushedFileOffset ?? diskFileSize / VHDXSize.mib * VHDXSize.mib,
                                              lastFileOffset: max(fileEnd, flushedFileOffset ?? 0))
            try store.write(bytes, at: at)
            unsynced = true
            try syncIfNeeded()
            logEntriesWritten += 1
            if !logGuidInHeader {
                // The entry is stable before the header points at it: a crash in between leaves a clean log.
                var h = header
                h.logGuid = logWriter!.guid
                try commitHeader(h, twice: false)
                logGuidInHeader = true
            }
            FaultInjection.crash(at: .afterLogFlush)
            for d in batch {
                switch d {
                case let .data(offset, sector): try store.write(sector, at: offset)
                case let .zero(offset, length): try store.writeZeros(count: length, at: offset)
                }
            }
            unsynced = true
        } while !descriptors.isEmpty
    }

    public func flush() throws {
        guard isWritable else { return }
        try logAndApply([])
        try syncIfNeeded()
    }

    public func close() throws {
        if isWritable {
            try logAndApply([])
            try syncIfNeeded()
            if header.isLogDirty {
                var h = header
                h.logGuid = VHDXGUID.zero
                try commitHeader(h, twice: true)
            }
        }
        try store.close()
    }
}

/// The first error reported by parallel workers.
private final class FirstError: @unchecked Sendable {
    private let lock = NSLockLike()
    private var stored: Error?
    var error: Error? { lock.withLock { stored } }
    func record(_ e: Error) { lock.withLock { if stored == nil { stored = e } } }
}

/// A minimal mutex (pthread) so the engine needs nothing from Foundation here.
private final class NSLockLike: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func withLock<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }
}
