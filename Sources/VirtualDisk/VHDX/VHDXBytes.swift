import Storage
import struct Foundation.UUID

/// Little-endian field access on byte arrays (every VHDX field is little-endian).
extension Array where Element == UInt8 {
    func le16(_ at: Int) -> UInt16 { UInt16(self[at]) | UInt16(self[at + 1]) << 8 }
    func le32(_ at: Int) -> UInt32 {
        UInt32(self[at]) | UInt32(self[at + 1]) << 8 | UInt32(self[at + 2]) << 16 | UInt32(self[at + 3]) << 24
    }
    func le64(_ at: Int) -> UInt64 { UInt64(le32(at)) | UInt64(le32(at + 4)) << 32 }

    mutating func setLE16(_ at: Int, _ v: UInt16) { for i in 0..<2 { self[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
    mutating func setLE32(_ at: Int, _ v: UInt32) { for i in 0..<4 { self[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
    mutating func setLE64(_ at: Int, _ v: UInt64) { for i in 0..<8 { self[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }

    /// Whether the bytes at `at` spell the ASCII `signature`.
    func hasSignature(_ signature: String, at: Int = 0) -> Bool {
        let s = Array(signature.utf8)
        return count >= at + s.count && Array(self[at..<at + s.count]) == s
    }
    mutating func setSignature(_ signature: String, at: Int = 0) {
        for (i, b) in signature.utf8.enumerated() { self[at + i] = b }
    }

    func guid(_ at: Int) -> UUID { VHDXGUID.decode(Array(self[at..<at + 16])) }
    mutating func setGUID(_ at: Int, _ id: UUID) { replaceSubrange(at..<at + 16, with: VHDXGUID.encode(id)) }

    var isAllZero: Bool { allSatisfy { $0 == 0 } }
}

/// GUIDs as Windows stores them: Data1 (32-bit), Data2 and Data3 (16-bit) little-endian, Data4 as is.
enum VHDXGUID {
    static let zero = UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))

    /// The 16 on-disk bytes of `id`.
    static func encode(_ id: UUID) -> [UInt8] {
        let u = withUnsafeBytes(of: id.uuid) { Array($0) }
        return [u[3], u[2], u[1], u[0], u[5], u[4], u[7], u[6]] + u[8..<16]
    }

    /// The UUID stored in 16 on-disk bytes.
    static func decode(_ b: [UInt8]) -> UUID {
        let u = [b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]] + b[8..<16]
        return UUID(uuid: (u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]))
    }

    /// A GUID constant from its text form ("2DC27766-F623-4200-9D64-115E9BFD4A08").
    static func constant(_ text: String) -> UUID { UUID(uuidString: text)! }

    /// `{xxxxxxxx-...}` as Hyper-V writes parent_linkage.
    static func braced(_ id: UUID) -> String { "{" + id.uuidString.lowercased() + "}" }

    /// Parses `{GUID}` or a bare GUID.
    static func parse(_ text: String) -> UUID? {
        var t = Substring(text.trimmingWhitespace())
        if t.hasPrefix("{") && t.hasSuffix("}") { t = t.dropFirst().dropLast() }
        return UUID(uuidString: String(t))
    }
}

/// UTF-16LE text (the creator string and parent locator keys and values).
enum UTF16LE {
    static func encode(_ s: String) -> [UInt8] { s.utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] } }
    static func decode(_ b: ArraySlice<UInt8>) -> String {
        let a = Array(b)
        var units: [UInt16] = []
        units.reserveCapacity(a.count / 2)
        var i = 0
        while i + 1 < a.count { units.append(UInt16(a[i]) | UInt16(a[i + 1]) << 8); i += 2 }
        if let end = units.firstIndex(of: 0) { units.removeSubrange(end...) }
        return String(decoding: units, as: UTF16.self)
    }
}

/// Sizes used throughout the format.
enum VHDXSize {
    static let kib: UInt64 = 1 << 10
    static let mib: UInt64 = 1 << 20
    static let sector = 4096
    static func roundUp(_ v: UInt64, _ to: UInt64) -> UInt64 { (v + to - 1) / to * to }
}

/// Why a structure failed validation (a sentence for an error message).
struct VHDXFault: Error, Equatable, CustomStringConvertible, ExpressibleByStringInterpolation {
    var description: String
    init(stringLiteral value: String) { description = value }
    init(stringInterpolation: DefaultStringInterpolation) { description = String(stringInterpolation: stringInterpolation) }
}
