import Storage
import struct Foundation.UUID

/// The metadata region: a 64 KiB table of items, then the items.
struct VHDXMetadata: Equatable {
    static let fileParameters = VHDXGUID.constant("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
    static let virtualDiskSize = VHDXGUID.constant("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
    static let virtualDiskID = VHDXGUID.constant("BECA12AB-B2E6-4523-93EF-C309E000C746")
    static let logicalSectorSize = VHDXGUID.constant("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
    static let physicalSectorSize = VHDXGUID.constant("CDA348C7-445D-4471-9CC9-E9885251C556")
    static let parentLocator = VHDXGUID.constant("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
    /// The parent locator type of a VHDX parent.
    static let vhdxParentLocatorType = VHDXGUID.constant("B04AEFB7-D19E-4A81-B789-25B8E9445913")
    static let tableSize = 64 << 10
    /// Where Bulwark puts the parent locator item inside the region (the fixed items come first).
    static let parentLocatorOffset = 128 << 10

    var blockSize: UInt32
    var leaveBlocksAllocated: Bool
    var hasParent: Bool
    var virtualSize: UInt64
    var diskID: UUID
    var logicalSectorSize: UInt32
    var physicalSectorSize: UInt32
    /// Parent locator entries in stored order (key, value).
    var parentEntries: [(String, String)]?
    /// Where each known item lies inside the region (offset, length), as decoded.
    var itemLocations: [UUID: ItemLocation] = [:]

    struct ItemLocation: Equatable {
        var tableIndex: Int
        var offset: Int
        var length: Int
    }

    static func == (a: VHDXMetadata, b: VHDXMetadata) -> Bool {
        a.blockSize == b.blockSize && a.leaveBlocksAllocated == b.leaveBlocksAllocated && a.hasParent == b.hasParent
            && a.virtualSize == b.virtualSize && a.diskID == b.diskID && a.logicalSectorSize == b.logicalSectorSize
            && a.physicalSectorSize == b.physicalSectorSize
            && a.parentEntries?.map { $0.0 + "=" + $0.1 } == b.parentEntries?.map { $0.0 + "=" + $0.1 }
    }

    func parentValue(_ key: String) -> String? { parentEntries?.first { $0.0 == key }?.1 }

    /// Encodes the parent locator item.
    static func encodeParentLocator(_ entries: [(String, String)]) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 20 + 12 * entries.count)
        b.setGUID(0, vhdxParentLocatorType)
        b.setLE16(18, UInt16(entries.count))
        for (i, (k, v)) in entries.enumerated() {
            let key = UTF16LE.encode(k), value = UTF16LE.encode(v)
            let o = 20 + 12 * i
            b.setLE32(o, UInt32(b.count))
            b += key
            b.setLE32(o + 4, UInt32(b.count))
            b += value
            b.setLE16(o + 8, UInt16(key.count))
            b.setLE16(o + 10, UInt16(value.count))
        }
        return b
    }

    /// The whole metadata region content up to the end of its last item (table and items).
    func encode() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.parentLocatorOffset)
        b.setSignature("metadata")
        var items: [(UUID, [UInt8], UInt32)] = []  // id, bytes, flags (bit0 user, bit1 virtual disk, bit2 required)
        var fp = [UInt8](repeating: 0, count: 8)
        fp.setLE32(0, blockSize)
        fp.setLE32(4, (leaveBlocksAllocated ? 1 : 0) | (hasParent ? 2 : 0))
        items.append((Self.fileParameters, fp, 4))
        var vs = [UInt8](repeating: 0, count: 8)
        vs.setLE64(0, virtualSize)
        items.append((Self.virtualDiskSize, vs, 6))
        var id = [UInt8](repeating: 0, count: 16)
        id.setGUID(0, diskID)
        items.append((Self.virtualDiskID, id, 6))
        var ls = [UInt8](repeating: 0, count: 4)
        ls.setLE32(0, logicalSectorSize)
        items.append((Self.logicalSectorSize, ls, 6))
        var ps = [UInt8](repeating: 0, count: 4)
        ps.setLE32(0, physicalSectorSize)
        items.append((Self.physicalSectorSize, ps, 6))
        var offset = Self.tableSize
        var entries: [(UUID, Int, Int, UInt32)] = []
        for (guid, bytes, flags) in items {
            b.replaceSubrange(offset..<offset + bytes.count, with: bytes)
            entries.append((guid, offset, bytes.count, flags))
            offset += 4096
        }
        if let parentEntries {
            let pl = Self.encodeParentLocator(parentEntries)
            b += pl
            entries.append((Self.parentLocator, Self.parentLocatorOffset, pl.count, 4))
        }
        b.setLE16(10, UInt16(entries.count))
        for (i, (guid, o, len, flags)) in entries.enumerated() {
            let e = 32 + 32 * i
            b.setGUID(e, guid)
            b.setLE32(e + 16, UInt32(o))
            b.setLE32(e + 20, UInt32(len))
            b.setLE32(e + 24, flags)
        }
        return VHDXSize.roundUp(UInt64(b.count), 4096) > UInt64(b.count)
            ? b + [UInt8](repeating: 0, count: Int(VHDXSize.roundUp(UInt64(b.count), 4096)) - b.count) : b
    }

    /// Decodes and validates the metadata region `b` (the whole region).
    static func decode(_ b: [UInt8], path: String) throws -> VHDXMetadata {
        func bad(_ reason: String) -> DiskError { .corrupt(path: path, reason: "metadata region: " + reason) }
        guard b.count >= tableSize, b.hasSignature("metadata") else { throw bad("table signature is not \"metadata\"") }
        let count = Int(b.le16(10))
        guard count <= 2047 else { throw bad("entry count \(count) exceeds 2047") }
        var items: [UUID: [UInt8]] = [:]
        var locations: [UUID: ItemLocation] = [:]
        for i in 0..<count {
            let e = 32 + 32 * i
            let guid = b.guid(e)
            let offset = Int(b.le32(e + 16)), length = Int(b.le32(e + 20)), flags = b.le32(e + 24)
            let isUser = flags & 1 != 0, isRequired = flags & 4 != 0
            let known = [fileParameters, virtualDiskSize, virtualDiskID, logicalSectorSize, physicalSectorSize, parentLocator].contains(guid)
            if !known {
                if isRequired {
                    throw DiskError.unsupported(path: path, reason: "the metadata table has an unknown \(isUser ? "user" : "system") item \(guid.uuidString) marked required")
                }
                continue
            }
            guard items[guid] == nil else { throw bad("item \(guid.uuidString) appears twice") }
            guard offset <= b.count, length == 0 || (offset >= tableSize && offset + length <= b.count) else {
                throw bad("item \(guid.uuidString) lies outside the region (offset \(offset), length \(length))")
            }
            items[guid] = Array(b[offset..<offset + length])
            locations[guid] = ItemLocation(tableIndex: i, offset: offset, length: length)
        }
        func item(_ id: UUID, _ name: String, size: Int) throws -> [UInt8] {
            guard let v = items[id] else { throw bad("the required \(name) item is missing") }
            guard v.count >= size else { throw bad("the \(name) item is \(v.count) bytes, expected \(size)") }
            return v
        }
        let fp = try item(fileParameters, "file parameters", size: 8)
        let blockSize = fp.le32(0)
        guard blockSize >= 1 << 20, blockSize <= 256 << 20, blockSize & (blockSize - 1) == 0 else {
            throw bad("block size \(blockSize) is not a power of two between 1 MiB and 256 MiB")
        }
        let logical = try item(logicalSectorSize, "logical sector size", size: 4).le32(0)
        guard logical == 512 || logical == 4096 else { throw bad("logical sector size \(logical) is neither 512 nor 4096") }
        let physical = try item(physicalSectorSize, "physical sector size", size: 4).le32(0)
        guard physical == 512 || physical == 4096 else { throw bad("physical sector size \(physical) is neither 512 nor 4096") }
        let size = try item(virtualDiskSize, "virtual disk size", size: 8).le64(0)
        guard size > 0, size <= 64 << 40 else { throw bad("virtual disk size \(size) is outside 1 byte...64 TiB") }
        guard size % UInt64(logical) == 0 else { throw bad("virtual disk size \(size) is not a multiple of the logical sector size \(logical)") }
        let id = try item(virtualDiskID, "virtual disk id", size: 16).guid(0)
        let hasParent = fp.le32(4) & 2 != 0
        var parentEntries: [(String, String)]?
        if let pl = items[parentLocator] {
            parentEntries = try decodeParentLocator(pl, bad: bad)
        }
        if hasParent && parentEntries == nil { throw bad("the file has a parent but no parent locator item") }
        return VHDXMetadata(blockSize: blockSize, leaveBlocksAllocated: fp.le32(4) & 1 != 0, hasParent: hasParent,
                            virtualSize: size, diskID: id, logicalSectorSize: logical, physicalSectorSize: physical,
                            parentEntries: parentEntries, itemLocations: locations)
    }

    static func decodeParentLocator(_ pl: [UInt8], bad: (String) -> DiskError) throws -> [(String, String)] {
        guard pl.count >= 20 else { throw bad("the parent locator item is too short (\(pl.count) bytes)") }
        let type = pl.guid(0)
        guard type == vhdxParentLocatorType else {
            throw bad("the parent locator type \(type.uuidString) is not the VHDX parent locator type")
        }
        let n = Int(pl.le16(18))
        guard 20 + 12 * n <= pl.count else { throw bad("the parent locator claims \(n) entries but is only \(pl.count) bytes") }
        var out: [(String, String)] = []
        for i in 0..<n {
            let o = 20 + 12 * i
            let ko = Int(pl.le32(o)), vo = Int(pl.le32(o + 4)), kl = Int(pl.le16(o + 8)), vl = Int(pl.le16(o + 10))
            guard ko + kl <= pl.count, vo + vl <= pl.count else { throw bad("parent locator entry \(i) points outside the item") }
            out.append((UTF16LE.decode(pl[ko..<ko + kl]), UTF16LE.decode(pl[vo..<vo + vl])))
        }
        return out
    }
}
