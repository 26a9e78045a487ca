import SystemPackage
import struct Foundation.UUID
import Storage

/// The VHD format driver: probing, opening and creating fixed, dynamic and differencing images.
public enum VHDFormat: DiskImageFormat {
    public static var format: DiskFormat { .vhd }
    /// The default block size of dynamic and differencing images.
    public static let defaultBlockSize = 2 << 20
    /// The block sizes `create` accepts (powers of two).
    public static let blockSizeRange = 512...(256 << 20)
    /// The largest virtual size the specification allows (2040 GiB).
    public static let maximumSize: UInt64 = 2040 << 30

    /// A VHD has the "conectix" cookie at offset 0 (dynamic copy) or in its last 512 (or 511) bytes.
    public static func probe(_ store: any ByteStore) throws -> Bool {
        let size = try store.size()
        guard size >= 511 else { return false }
        if size >= 512, VHDFooter.hasCookie(try store.read(count: 8, at: 0)) { return true }
        if size >= 512, VHDFooter.hasCookie(try store.read(count: 8, at: size - 512)) { return true }
        return VHDFooter.hasCookie(try store.read(count: 8, at: size - 511))
    }

    public static func open(_ store: any ByteStore) throws -> any DiskImage { try openImage(store) }

    /// Reads the structures of a VHD file without changing it.
    static func openImage(_ store: any ByteStore) throws -> VHDImage {
        let path = store.path.string
        let size = try store.size()
        guard size >= 512 else { throw DiskError.truncated(path: path, needed: 512, actual: size) }
        let found = try findFooter(store, size: size)
        let footer = found.footer
        var warnings: [String] = []
        if let bad = found.checksumMismatch {
            let what = "the footer checksum is wrong in both copies (stored 0x\(String(bad.stored, radix: 16)), computed 0x\(String(bad.computed, radix: 16))), which otherwise agree byte for byte"
            guard !store.isWritable else {
                throw DiskError.corrupt(path: path, reason: "\(what); it opens read-only, and opens for writing once a check with repair rewrote the checksum")
            }
            warnings.append("\(what); read as they are (repair rewrites the checksum)")
        }
        guard footer.diskKind != .fixed else {
            guard found.offset >= footer.currentSize else {
                throw DiskError.truncated(path: path, needed: footer.currentSize + 512, actual: size)
            }
            return VHDImage(store: store, footer: footer, header: nil, bat: [], footerOffset: found.offset,
                            tailDirty: false, footerSource: found.source, locators: [])
        }
        guard footer.dataOffset % 512 == 0, footer.dataOffset < size, footer.dataOffset + 1024 <= size else {
            throw DiskError.truncated(path: path, needed: footer.dataOffset &+ 1024, actual: size)
        }
        let header = try VHDDynamicHeader(try store.read(count: 1024, at: footer.dataOffset), path: path, at: footer.dataOffset)
        let (tableEnd, overflow) = header.tableOffset.addingReportingOverflow(UInt64(header.maxTableEntries) * 4)
        guard !overflow, tableEnd <= size else {
            throw DiskError.truncated(path: path, needed: tableEnd, actual: size)
        }
        let rule = footer.sizeRule
        guard UInt64(header.maxTableEntries) * UInt64(header.blockSize) >= rule.size else {
            throw DiskError.corrupt(path: path, reason: "the BAT's \(header.maxTableEntries) entries of \(header.blockSize) bytes cover less than the virtual size \(rule.size)")
        }
        let raw = try store.read(count: Int(header.maxTableEntries) * 4, at: header.tableOffset)
        var bat = [UInt32](repeating: VHDImage.unused, count: Int(header.maxTableEntries))
        for i in bat.indices { bat[i] = VHDBytes.u32(raw, i * 4) }
        // Blocks must lie inside the file (before the end footer, when there is one).
        let dataEnd = found.offset
        let slot = UInt64(header.bitmapBytes) + UInt64(header.blockSize)
        for (i, e) in bat.enumerated() where e != VHDImage.unused && UInt64(e) * 512 + slot > dataEnd {
            throw DiskError.corrupt(path: path, reason: "BAT entry \(i) points to sector \(e) (offset \(UInt64(e) * 512)), whose block ends past the end of the file's data at \(dataEnd)")
        }
        let locators = footer.diskKind == .differencing ? readLocators(store, header: header, size: size) : []
        let image = VHDImage(store: store, footer: footer, header: header, bat: bat, footerOffset: found.offset,
                             tailDirty: false, footerSource: found.source, locators: locators)
        image.warnings = warnings
        if found.source == "copy at offset 0" {
            image.footerOffset = image.structuresEnd()
            image.tailDirty = true
        } else if image.structuresEnd() < found.offset {
            image.tailOrphaned = true
            image.warnings.append("\(found.offset - image.structuresEnd()) bytes before the end footer are referenced by no BAT entry (left by an interrupted write); the next write reuses them, and repair or compact reclaims them")
        }
        return image
    }

    /// What `findFooter` found: the footer, where it ends the data, and what was tolerated.
    struct FoundFooter {
        var footer: VHDFooter
        /// Where the end footer lies (the file size when only the copy at 0 is valid).
        var offset: UInt64
        var source: String
        /// Set when both copies carry the same wrong checksum (the footer is used all the same).
        var checksumMismatch: (stored: UInt32, computed: UInt32)?
    }

    /// The footer at the end of the store, or else (dynamic and differencing images) its copy at 0.
    ///
    /// One damaged case is tolerated: a dynamic or differencing image whose two footer copies are
    /// identical byte for byte but carry a wrong checksum (some foreign tools write them so; libvhdi
    /// reads them, qemu refuses them). Identical copies cannot both have been torn by a crash, so the
    /// fields are trusted; `openImage` allows such a file read-only, and check's repair fixes it.
    static func findFooter(_ store: any ByteStore, size: UInt64) throws -> FoundFooter {
        let path = store.path.string
        var endError: DiskError
        let end = try store.read(count: 512, at: size - 512)
        do {
            return FoundFooter(footer: try VHDFooter(end, path: path, where: "at the end of the file (offset \(size - 512))"), offset: size - 512, source: "end")
        } catch let e as DiskError { endError = e }
        if size % 512 == 511, VHDFooter.hasCookie(try store.read(count: 8, at: size - 511)) {
            let old = try store.read(count: 511, at: size - 511)
            return FoundFooter(footer: try VHDFooter(old, path: path, where: "at the end of the file (511-byte footer at \(size - 511))"),
                               offset: size - 511, source: "end (511-byte footer)")
        }
        let start = try store.read(count: 512, at: 0)
        if let copy = try? VHDFooter(start, path: path, where: "at offset 0"), copy.diskKind != .fixed {
            return FoundFooter(footer: copy, offset: size, source: "copy at offset 0")
        }
        if size >= 1024, start == end, let bad = VHDFooter.checksumMismatch(end),
           let footer = try? VHDFooter(end, path: path, where: "at the end of the file", ignoringChecksum: true), footer.diskKind != .fixed {
            return FoundFooter(footer: footer, offset: size - 512, source: "end", checksumMismatch: bad)
        }
        if case .corrupt(_, let reason) = endError, reason.hasPrefix("no VHD footer cookie") {
            endError = .corrupt(path: path, reason: "no VHD footer (cookie \"conectix\") at the end of the file (offset \(size - 512)) nor a valid footer copy at offset 0")
        }
        throw endError
    }

    /// The parent paths a differencing image records (W2ru, W2ku, and MacX file URLs).
    static func readLocators(_ store: any ByteStore, header: VHDDynamicHeader, size: UInt64) -> [ParentLocator] {
        var out: [ParentLocator] = []
        for l in header.locators where l.isUsed {
            guard l.dataLength > 0, l.dataLength <= 64 * 1024, l.dataOffset < size, l.dataOffset + UInt64(l.dataLength) <= size,
                  let bytes = try? store.read(count: Int(l.dataLength), at: l.dataOffset) else { continue }
            switch l.platformCode {
            case VHDLocatorEntry.relativeCode:
                out.append(ParentLocator(kind: .relative, path: VHDBytes.string(utf16: bytes[...], bigEndian: false)))
            case VHDLocatorEntry.absoluteCode:
                out.append(ParentLocator(kind: .absolute, path: VHDBytes.string(utf16: bytes[...], bigEndian: false)))
            case VHDBytes.code("MacX"):
                var s = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
                if s.hasPrefix("file://") { s.removeFirst(7) }
                out.append(ParentLocator(kind: .absolute, path: s))
            default: continue
            }
        }
        return out
    }

    public static func create(on store: any ByteStore, options: CreateOptions, parent: (any DiskImage)?) throws -> any DiskImage {
        try createImage(on: store, options: options, parent: parent)
    }

    static func createImage(on store: any ByteStore, options: CreateOptions, parent: (any DiskImage)?) throws -> VHDImage {
        let path = store.path
        if let l = options.logicalSectorSize, l != 512 {
            throw DiskError.invalidArgument("\(path.string): VHD images have 512-byte logical sectors (got \(l))")
        }
        if let p = options.physicalSectorSize, p != 512, p != 4096 {
            throw DiskError.invalidArgument("\(path.string): physical sector size \(p) must be 512 or 4096")
        }
        let size: UInt64
        if options.type == .differencing {
            guard let parent else {
                throw DiskError.invalidArgument("\(path.string): a differencing image needs a parent")
            }
            size = parent.virtualSize
        } else {
            size = options.virtualSize
        }
        guard size > 0, size % 512 == 0 else {
            throw DiskError.invalidArgument("\(path.string): VHD virtual size \(size) must be a positive multiple of 512 bytes")
        }
        guard size <= maximumSize else {
            throw DiskError.invalidArgument("\(path.string): VHD virtual size \(size) exceeds the format's maximum of 2040 GiB")
        }
        let blockSize = options.blockSize ?? defaultBlockSize
        if options.type != .fixed {
            guard blockSizeRange.contains(blockSize), blockSize & (blockSize - 1) == 0 else {
                throw DiskError.invalidArgument("\(path.string): VHD block size \(blockSize) must be a power of two from 512 bytes to 256 MiB (default 2 MiB)")
            }
        }
        let image = try write(store, size: size, type: options.type, blockSize: blockSize, parent: parent)
        image.staged = options.staged
        if !options.staged { try store.flush() }
        if let parent { try image.attachParent(parent) }
        return image
    }

    private static func write(_ store: any ByteStore, size: UInt64, type: DiskType, blockSize: Int, parent: (any DiskImage)?) throws -> VHDImage {
        if type == .fixed {
            let footer = VHDFooter(kind: .fixed, size: size, dataOffset: VHDFooter.noDataOffset)
            try store.truncate(to: size + 512)
            try store.preallocate(at: 0, length: size + 512)
            try store.write(footer.bytes, at: size)
            return VHDImage(store: store, footer: footer, header: nil, bat: [], footerOffset: size, tailDirty: false,
                            footerSource: "end", locators: [])
        }
        let entries = (size + UInt64(blockSize) - 1) / UInt64(blockSize)
        var header = VHDDynamicHeader(tableOffset: 1536, maxTableEntries: UInt32(entries), blockSize: UInt32(blockSize))
        var footer = VHDFooter(kind: type == .differencing ? .differencing : .dynamic, size: size, dataOffset: 512)
        var next = header.tableOffset + header.tableBytes
        var locatorData: [(UInt64, [UInt8])] = []
        var locators: [ParentLocator] = []
        if let parent {
            header.parentID = parent.identity
            header.parentTimestamp = (parent as? VHDImage)?.footer.timestamp ?? VHDBytes.timestamp()
            let absolute = FileOps.absolute(parent.path).string
            header.parentName = absolute.utf16.count < 256 ? absolute : (parent.path.lastComponent?.string ?? "")
            locators = ParentLocator.locators(child: store.path, parent: parent.path)
            for (i, l) in locators.enumerated() {
                let bytes = VHDBytes.utf16(l.path, bigEndian: false)
                let space = VHDBytes.roundUp(UInt64(max(bytes.count, 1)), 512)
                header.locators[i] = VHDLocatorEntry(platformCode: l.kind == .relative ? VHDLocatorEntry.relativeCode : VHDLocatorEntry.absoluteCode,
                                                     dataSpace: UInt32(space), dataLength: UInt32(bytes.count), dataOffset: next)
                locatorData.append((next, bytes))
                next += space
            }
        }
        footer.dataOffset = 512
        let batBytes = [UInt8](repeating: 0xFF, count: Int(header.tableBytes))
        try store.write(footer.bytes, at: 0)
        try store.write(header.bytes, at: 512)
        try store.write(batBytes, at: header.tableOffset)
        for (offset, bytes) in locatorData {
            var padded = bytes
            padded += [UInt8](repeating: 0, count: Int(VHDBytes.roundUp(UInt64(max(bytes.count, 1)), 512)) - bytes.count)
            try store.write(padded, at: offset)
        }
        try store.write(footer.bytes, at: next)
        return VHDImage(store: store, footer: footer, header: header, bat: [UInt32](repeating: VHDImage.unused, count: Int(entries)),
                        footerOffset: next, tailDirty: false, footerSource: "end", locators: locators)
    }
}
