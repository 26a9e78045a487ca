import Storage
import struct Foundation.UUID
import struct Foundation.Date

/// Big-endian field access on byte arrays, as the VHD structures are laid out.
enum VHDBytes {
    static func u16(_ b: [UInt8], _ at: Int) -> UInt16 { UInt16(b[at]) << 8 | UInt16(b[at + 1]) }
    static func u32(_ b: [UInt8], _ at: Int) -> UInt32 {
        UInt32(b[at]) << 24 | UInt32(b[at + 1]) << 16 | UInt32(b[at + 2]) << 8 | UInt32(b[at + 3])
    }
    static func u64(_ b: [UInt8], _ at: Int) -> UInt64 { UInt64(u32(b, at)) << 32 | UInt64(u32(b, at + 4)) }

    static func put16(_ b: inout [UInt8], _ at: Int, _ v: UInt16) {
        b[at] = UInt8(v >> 8); b[at + 1] = UInt8(truncatingIfNeeded: v)
    }
    static func put32(_ b: inout [UInt8], _ at: Int, _ v: UInt32) {
        for i in 0..<4 { b[at + i] = UInt8(truncatingIfNeeded: v >> (24 - 8 * i)) }
    }
    static func put64(_ b: inout [UInt8], _ at: Int, _ v: UInt64) {
        put32(&b, at, UInt32(v >> 32)); put32(&b, at + 4, UInt32(truncatingIfNeeded: v))
    }

    static func uuid(_ b: [UInt8], _ at: Int) -> UUID {
        UUID(uuid: (b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5], b[at + 6], b[at + 7],
                    b[at + 8], b[at + 9], b[at + 10], b[at + 11], b[at + 12], b[at + 13], b[at + 14], b[at + 15]))
    }
    static func putUUID(_ b: inout [UInt8], _ at: Int, _ id: UUID) {
        withUnsafeBytes(of: id.uuid) { raw in for i in 0..<16 { b[at + i] = raw[i] } }
    }

    /// The VHD checksum: the one's complement of the byte sum, with the checksum field counted as zero.
    static func checksum(_ b: [UInt8], skipping field: Int) -> UInt32 {
        var sum: UInt32 = 0
        for (i, byte) in b.enumerated() where i < field || i >= field + 4 { sum &+= UInt32(byte) }
        return ~sum
    }

    /// A four-character code as text, with non-printable bytes escaped.
    static func fourCC(_ v: UInt32) -> String {
        var s = ""
        for shift in stride(from: 24, through: 0, by: -8) {
            let c = UInt8(truncatingIfNeeded: v >> UInt32(shift))
            s += (32..<127).contains(c) ? String(UnicodeScalar(c)) : "\\x" + String(c, radix: 16)
        }
        return s
    }
    static func code(_ s: String) -> UInt32 {
        var v: UInt32 = 0
        for c in s.utf8.prefix(4) { v = v << 8 | UInt32(c) }
        return v
    }

    /// VHD timestamps count seconds since 2000-01-01 00:00:00 UTC.
    static let epochOffset: Double = 946_684_800
    static func timestamp(_ date: Date = Date()) -> UInt32 {
        UInt32(clamping: Int64(max(0, date.timeIntervalSince1970 - epochOffset)))
    }
    static func date(_ stamp: UInt32) -> String {
        let d = Date(timeIntervalSince1970: Double(stamp) + epochOffset)
        return d.ISO8601Format()
    }

    static func utf16(_ s: String, bigEndian: Bool) -> [UInt8] {
        var out: [UInt8] = []
        for unit in s.utf16 {
            let hi = UInt8(unit >> 8), lo = UInt8(truncatingIfNeeded: unit)
            out += bigEndian ? [hi, lo] : [lo, hi]
        }
        return out
    }
    /// Decodes UTF-16 text, stopping at the first NUL.
    static func string(utf16 bytes: ArraySlice<UInt8>, bigEndian: Bool) -> String {
        var units: [UInt16] = []
        var i = bytes.startIndex
        while i + 1 < bytes.endIndex {
            let a = UInt16(bytes[i]), b = UInt16(bytes[i + 1])
            let unit = bigEndian ? a << 8 | b : b << 8 | a
            if unit == 0 { break }
            units.append(unit)
            i += 2
        }
        return String(decoding: units, as: UTF16.self)
    }

    static func roundUp(_ v: UInt64, _ to: UInt64) -> UInt64 { (v + to - 1) / to * to }
}

/// Cylinders, heads and sectors per track, as the footer's geometry field stores them.
struct VHDGeometry: Equatable, Sendable {
    var cylinders: UInt16
    var heads: UInt8
    var sectorsPerTrack: UInt8

    var sectors: UInt64 { UInt64(cylinders) * UInt64(heads) * UInt64(sectorsPerTrack) }
    static let maximumSectors: UInt64 = 65535 * 16 * 255
    var description: String { "\(cylinders)/\(heads)/\(sectorsPerTrack)" }

    /// The specification's CHS algorithm (appendix "CHS calculation") for a disk of `size` bytes.
    init(forSize size: UInt64) {
        var total = size / 512
        if total > 65535 * 16 * 255 { total = 65535 * 16 * 255 }
        var spt: UInt64, heads: UInt64, cth: UInt64
        if total >= 65535 * 16 * 63 {
            spt = 255; heads = 16; cth = total / spt
        } else {
            spt = 17; cth = total / spt
            heads = (cth + 1023) / 1024
            if heads < 4 { heads = 4 }
            if cth >= heads * 1024 || heads > 16 { spt = 31; heads = 16; cth = total / spt }
            if cth >= heads * 1024 { spt = 63; heads = 16; cth = total / spt }
        }
        cylinders = UInt16(clamping: cth / heads)
        self.heads = UInt8(heads)
        sectorsPerTrack = UInt8(spt)
    }

    init(cylinders: UInt16, heads: UInt8, sectorsPerTrack: UInt8) {
        self.cylinders = cylinders
        self.heads = heads
        self.sectorsPerTrack = sectorsPerTrack
    }
}
