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
///
/// The work is spread by job: opening (`VHDFormat`), reading (`VHDImage+Read`), writing and
/// allocation (`VHDImage+Write`), and resize, reparent and compact (`VHDImage+Maintenance`).
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
    public internal(set) var parent: (any DiskImage)?
    var locatorPaths: [ParentLocator]
    var bitmapCache: [Int: [UInt8]] = [:]
    /// A new file that nothing opens until the final flush (`CreateOptions.staged`): BAT entries are
    /// written without the sync that otherwise orders them after their blocks' data.
    var staged = false
    /// Whether space between the last structure and the end footer is referenced by no BAT entry (a
    /// write killed before its BAT update); the first append of a writable session reclaims it.
    var tailOrphaned = false
    /// What is wrong but tolerated in this open (shown by `info` and `check`).
    public internal(set) var warnings: [String] = []

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

    // MARK: Flushing and closing

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

    /// Where structures and blocks lie (dynamic and differencing images), from the BAT in memory.
    var layout: VHDLayout? {
        guard let header else { return nil }
        return VHDLayout(footer: footer, header: header, bat: bat, fileSize: (try? store.size()) ?? 0)
    }

    /// The end of the last structure or block (the earliest place the end footer may go).
    func structuresEnd() -> UInt64 { layout?.end ?? footerOffset }
}
