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
///
/// The type's work is spread by job: opening and log replay (`VHDXImage+Open`), reading
/// (`VHDXImage+Read`), writing and allocation (`VHDXImage+Write`), the write session with its log
/// (`VHDXWriteSession`), and resize, reparent and compact (`VHDXImage+Maintenance`).
public final class VHDXImage: DiskImage, MaintainableImage {
    public let store: any ByteStore
    public var format: DiskFormat { .vhdx }
    public internal(set) var type: DiskType
    public internal(set) var parent: (any DiskImage)?
    /// Whether a log replay happened on open (into the store, or in memory for a read-only open).
    public internal(set) var replayedOnOpen = false

    var header: VHDXHeader
    var headerIndex: Int
    let creator: String
    var batRegion: VHDXRegionTable.Entry
    /// The region table in use (all entries, unknown optional ones included).
    var regionTable = VHDXRegionTable(entries: [])
    /// Log entries written in this session.
    public var logEntriesWritten: Int { session.logEntriesWritten }
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
    /// The MiB-aligned end of everything allocated (new blocks go here).
    var fileEnd: UInt64
    /// The file's size as this process last set or saw it.
    var diskFileSize: UInt64
    /// What this process changed and has not yet made durable or logged (see `VHDXWriteSession`).
    var session = VHDXWriteSession()
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
        session.committedEnd = fileEnd
    }

    // MARK: Flushing and closing

    public func flush() throws {
        guard isWritable else { return }
        try logAndApply([])
        try syncIfNeeded()
    }

    public func writeBack() throws {
        guard isWritable else { return }
        try logAndApply([])
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
