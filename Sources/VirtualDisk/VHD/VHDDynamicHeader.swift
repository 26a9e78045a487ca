import Storage
import struct Foundation.UUID

/// One of the eight parent locator entries of a dynamic header.
struct VHDLocatorEntry: Equatable, Sendable {
    /// "W2ru" (relative Windows path, UTF-16LE) and "W2ku" (absolute Windows path, UTF-16LE).
    static let relativeCode = VHDBytes.code("W2ru")
    static let absoluteCode = VHDBytes.code("W2ku")

    var platformCode: UInt32 = 0
    /// The reserved space, as stored: the specification says sectors, Windows writes bytes.
    var dataSpace: UInt32 = 0
    var dataLength: UInt32 = 0
    var dataOffset: UInt64 = 0

    var isUsed: Bool { platformCode != 0 }
    /// The space in bytes, reading `dataSpace` as bytes when it is a 512-multiple that holds the data
    /// and as sectors otherwise.
    var spaceBytes: UInt64 {
        let space = UInt64(dataSpace)
        if space >= UInt64(dataLength), space % 512 == 0, space > 0 { return space }
        return max(space * 512, VHDBytes.roundUp(UInt64(dataLength), 512))
    }
}

/// The 1024-byte dynamic disk header ("cxsparse") of dynamic and differencing images.
struct VHDDynamicHeader: Equatable, Sendable {
    static let size = 1024
    static let cookie: [UInt8] = Array("cxsparse".utf8)

    var tableOffset: UInt64
    var headerVersion: UInt32 = 0x0001_0000
    var maxTableEntries: UInt32
    var blockSize: UInt32
    var parentID = UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    var parentTimestamp: UInt32 = 0
    var parentName = ""
    var locators = [VHDLocatorEntry](repeating: VHDLocatorEntry(), count: 8)

    init(tableOffset: UInt64, maxTableEntries: UInt32, blockSize: UInt32) {
        self.tableOffset = tableOffset
        self.maxTableEntries = maxTableEntries
        self.blockSize = blockSize
    }

    init(_ b: [UInt8], path: String, at offset: UInt64) throws {
        guard b.count == 1024, Array(b[0..<8]) == Self.cookie else {
            throw DiskError.corrupt(path: path, reason: "no dynamic disk header cookie \"cxsparse\" at offset \(offset) (the footer's data offset)")
        }
        let stored = VHDBytes.u32(b, 36), computed = VHDBytes.checksum(b, skipping: 36)
        guard stored == computed else {
            throw DiskError.corrupt(path: path, reason: "dynamic disk header checksum mismatch at offset \(offset): stored 0x\(String(stored, radix: 16)), computed 0x\(String(computed, radix: 16))")
        }
        tableOffset = VHDBytes.u64(b, 16)
        headerVersion = VHDBytes.u32(b, 24)
        maxTableEntries = VHDBytes.u32(b, 28)
        blockSize = VHDBytes.u32(b, 32)
        parentID = VHDBytes.uuid(b, 40)
        parentTimestamp = VHDBytes.u32(b, 56)
        parentName = VHDBytes.string(utf16: b[64..<576], bigEndian: true)
        locators = (0..<8).map { i in
            let at = 576 + 24 * i
            return VHDLocatorEntry(platformCode: VHDBytes.u32(b, at), dataSpace: VHDBytes.u32(b, at + 4),
                                   dataLength: VHDBytes.u32(b, at + 8), dataOffset: VHDBytes.u64(b, at + 16))
        }
        guard blockSize >= 512, blockSize & (blockSize - 1) == 0 else {
            throw DiskError.corrupt(path: path, reason: "dynamic disk header block size \(blockSize) is not a power of two of at least 512 bytes")
        }
        guard blockSize <= 1 << 30 else {
            throw DiskError.unsupported(path: path, reason: "dynamic disk header block size \(blockSize) is larger than 1 GiB")
        }
    }

    var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: 1024)
        b.replaceSubrange(0..<8, with: Self.cookie)
        VHDBytes.put64(&b, 8, UInt64.max)
        VHDBytes.put64(&b, 16, tableOffset)
        VHDBytes.put32(&b, 24, headerVersion)
        VHDBytes.put32(&b, 28, maxTableEntries)
        VHDBytes.put32(&b, 32, blockSize)
        VHDBytes.putUUID(&b, 40, parentID)
        VHDBytes.put32(&b, 56, parentTimestamp)
        let name = VHDBytes.utf16(parentName, bigEndian: true).prefix(512)
        b.replaceSubrange(64..<64 + name.count, with: name)
        for (i, l) in locators.prefix(8).enumerated() {
            let at = 576 + 24 * i
            VHDBytes.put32(&b, at, l.platformCode)
            VHDBytes.put32(&b, at + 4, l.dataSpace)
            VHDBytes.put32(&b, at + 8, l.dataLength)
            VHDBytes.put64(&b, at + 16, l.dataOffset)
        }
        VHDBytes.put32(&b, 36, VHDBytes.checksum(b, skipping: 36))
        return b
    }

    /// Bytes of the BAT on disk (a 512-byte multiple).
    var tableBytes: UInt64 { VHDBytes.roundUp(UInt64(maxTableEntries) * 4, 512) }
    /// Bytes of each block's sector bitmap (a 512-byte multiple).
    var bitmapBytes: Int { Int(VHDBytes.roundUp((UInt64(blockSize) / 512 + 7) / 8, 512)) }
}
