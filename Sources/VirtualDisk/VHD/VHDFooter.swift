import Storage
import struct Foundation.UUID

/// The 512-byte hard disk footer that ends every VHD file (and, for dynamic and differencing images,
/// is copied at offset 0). All fields are big-endian.
struct VHDFooter: Equatable, Sendable {
    static let size = 512
    static let cookie: [UInt8] = Array("conectix".utf8)
    static let noDataOffset = UInt64.max

    enum DiskKind: UInt32, Sendable {
        case fixed = 2, dynamic = 3, differencing = 4
        var type: DiskType {
            switch self { case .fixed: .fixed; case .dynamic: .dynamic; case .differencing: .differencing }
        }
    }

    var features: UInt32 = 2
    var formatVersion: UInt32 = 0x0001_0000
    /// Offset of the dynamic header; all ones for fixed disks.
    var dataOffset: UInt64
    var timestamp: UInt32
    var creatorApplication: UInt32 = VHDBytes.code("win ")
    var creatorVersion: UInt32 = 0x000A_0000
    var creatorHostOS: UInt32 = VHDBytes.code("Wi2k")
    var originalSize: UInt64
    var currentSize: UInt64
    var geometry: VHDGeometry
    var diskKind: DiskKind
    var uniqueID: UUID
    var savedState: UInt8 = 0

    init(kind: DiskKind, size: UInt64, dataOffset: UInt64, uniqueID: UUID = UUID(), timestamp: UInt32 = VHDBytes.timestamp()) {
        diskKind = kind
        originalSize = size
        currentSize = size
        geometry = VHDGeometry(forSize: size)
        self.dataOffset = dataOffset
        self.uniqueID = uniqueID
        self.timestamp = timestamp
    }

    /// Whether `bytes` starts with the "conectix" cookie.
    static func hasCookie(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 8 && Array(bytes[0..<8]) == cookie
    }

    /// The stored and the computed checksum of a footer's bytes, when they differ.
    static func checksumMismatch(_ bytes: [UInt8]) -> (stored: UInt32, computed: UInt32)? {
        guard bytes.count >= 68 else { return nil }
        let stored = VHDBytes.u32(bytes, 64), computed = VHDBytes.checksum(bytes, skipping: 64)
        return stored == computed ? nil : (stored, computed)
    }

    /// Parses a footer; `path` and `where` only name the place in errors. `ignoringChecksum` is for
    /// the one case where a wrong checksum is tolerated (both copies identical, see `VHDFormat.findFooter`).
    init(_ b: [UInt8], path: String, where place: String, ignoringChecksum: Bool = false) throws {
        guard b.count >= 511 else { throw DiskError.truncated(path: path, needed: 512, actual: UInt64(b.count)) }
        let bytes = b.count == 512 ? b : b + [UInt8](repeating: 0, count: 512 - b.count)
        guard Self.hasCookie(bytes) else {
            throw DiskError.corrupt(path: path, reason: "no VHD footer cookie \"conectix\" \(place)")
        }
        let stored = VHDBytes.u32(bytes, 64), computed = VHDBytes.checksum(bytes, skipping: 64)
        guard stored == computed || ignoringChecksum else {
            throw DiskError.corrupt(path: path, reason: "VHD footer checksum mismatch \(place): stored 0x\(String(stored, radix: 16)), computed 0x\(String(computed, radix: 16))")
        }
        features = VHDBytes.u32(bytes, 8)
        formatVersion = VHDBytes.u32(bytes, 12)
        dataOffset = VHDBytes.u64(bytes, 16)
        timestamp = VHDBytes.u32(bytes, 24)
        creatorApplication = VHDBytes.u32(bytes, 28)
        creatorVersion = VHDBytes.u32(bytes, 32)
        creatorHostOS = VHDBytes.u32(bytes, 36)
        originalSize = VHDBytes.u64(bytes, 40)
        currentSize = VHDBytes.u64(bytes, 48)
        geometry = VHDGeometry(cylinders: VHDBytes.u16(bytes, 56), heads: bytes[58], sectorsPerTrack: bytes[59])
        let kindCode = VHDBytes.u32(bytes, 60)
        guard let kind = DiskKind(rawValue: kindCode) else {
            throw DiskError.unsupported(path: path, reason: "VHD disk type \(kindCode) \(place) is not fixed (2), dynamic (3) or differencing (4)")
        }
        diskKind = kind
        uniqueID = VHDBytes.uuid(bytes, 68)
        savedState = bytes[84]
        guard formatVersion >> 16 == 1 else {
            throw DiskError.unsupported(path: path, reason: "VHD format version 0x\(String(formatVersion, radix: 16)) \(place) (only major version 1 exists)")
        }
    }

    /// The 512 bytes with a fresh checksum.
    var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: 512)
        b.replaceSubrange(0..<8, with: Self.cookie)
        VHDBytes.put32(&b, 8, features)
        VHDBytes.put32(&b, 12, formatVersion)
        VHDBytes.put64(&b, 16, dataOffset)
        VHDBytes.put32(&b, 24, timestamp)
        VHDBytes.put32(&b, 28, creatorApplication)
        VHDBytes.put32(&b, 32, creatorVersion)
        VHDBytes.put32(&b, 36, creatorHostOS)
        VHDBytes.put64(&b, 40, originalSize)
        VHDBytes.put64(&b, 48, currentSize)
        VHDBytes.put16(&b, 56, geometry.cylinders)
        b[58] = geometry.heads
        b[59] = geometry.sectorsPerTrack
        VHDBytes.put32(&b, 60, diskKind.rawValue)
        VHDBytes.putUUID(&b, 68, uniqueID)
        b[84] = savedState
        VHDBytes.put32(&b, 64, VHDBytes.checksum(b, skipping: 64))
        return b
    }

    /// The virtual size and the rule that gave it, following qemu's vpc driver (block/vpc.c,
    /// `vpc_open`): Hyper-V ("win "), "qem2", Disk2vhd ("d2v "), XenConverter ("CTXS") and XenServer
    /// ("tap\0") images use the current size; every other creator (Virtual PC "vpc ", older qemu
    /// "qemu", ...) the CHS geometry, unless the geometry is the maximum 65535/16/255, where the
    /// current size is used to avoid truncation.
    var sizeRule: (size: UInt64, rule: String) {
        let creator = VHDBytes.fourCC(creatorApplication)
        let usesCurrent = ["win ", "qem2", "d2v ", "CTXS"].map(VHDBytes.code).contains(creatorApplication)
            || creatorApplication == 0x7461_7000  // "tap\0"
        if usesCurrent { return (currentSize, "current size (creator '\(creator)')") }
        if geometry.sectors == VHDGeometry.maximumSectors {
            return (currentSize, "current size (maximum CHS geometry, creator '\(creator)')")
        }
        return (geometry.sectors * 512, "CHS geometry \(geometry.description) (creator '\(creator)')")
    }
}
