import Storage
import struct Foundation.UUID

/// The file type identifier at offset 0: "vhdxfile" and a UTF-16 creator string.
struct VHDXFileIdentifier {
    static let signature = "vhdxfile"
    var creator: String

    func encode() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 64 << 10)
        b.setSignature(Self.signature)
        let text = UTF16LE.encode(creator).prefix(510)
        b.replaceSubrange(8..<8 + text.count, with: text)
        return b
    }

    static func decode(_ b: [UInt8]) -> VHDXFileIdentifier? {
        guard b.count >= 520, b.hasSignature(signature) else { return nil }
        return VHDXFileIdentifier(creator: UTF16LE.decode(b[8..<520]))
    }
}

/// One of the two 4 KiB headers (at 64 KiB and 128 KiB).
struct VHDXHeader: Equatable {
    static let offsets: [UInt64] = [64 << 10, 128 << 10]
    static let size = 4096

    var sequenceNumber: UInt64
    var fileWriteGuid: UUID
    var dataWriteGuid: UUID
    var logGuid: UUID
    var logVersion: UInt16 = 0
    var version: UInt16 = 1
    var logLength: UInt32
    var logOffset: UInt64

    var isLogDirty: Bool { logGuid != VHDXGUID.zero }

    func encode() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.size)
        b.setSignature("head")
        b.setLE64(8, sequenceNumber)
        b.setGUID(16, fileWriteGuid)
        b.setGUID(32, dataWriteGuid)
        b.setGUID(48, logGuid)
        b.setLE16(64, logVersion)
        b.setLE16(66, version)
        b.setLE32(68, logLength)
        b.setLE64(72, logOffset)
        b.setLE32(4, CRC32C.checksum(b))
        return b
    }

    /// Why a 4 KiB header is invalid, or the header.
    static func decode(_ b: [UInt8]) -> Result<VHDXHeader, HeaderFault> {
        guard b.count >= size, b.hasSignature("head") else { return .failure(.signature) }
        let stored = b.le32(4)
        let computed = CRC32C.checksum(Array(b[0..<size]), zeroingFieldAt: 4)
        guard stored == computed else { return .failure(.checksum(stored: stored, computed: computed)) }
        return .success(VHDXHeader(sequenceNumber: b.le64(8), fileWriteGuid: b.guid(16), dataWriteGuid: b.guid(32),
                                   logGuid: b.guid(48), logVersion: b.le16(64), version: b.le16(66),
                                   logLength: b.le32(68), logOffset: b.le64(72)))
    }

    enum HeaderFault: Error, Equatable, CustomStringConvertible {
        case signature
        case checksum(stored: UInt32, computed: UInt32)
        var description: String {
            switch self {
            case .signature: return "signature is not \"head\""
            case let .checksum(stored, computed):
                return "CRC-32C mismatch (stored 0x\(String(stored, radix: 16)), computed 0x\(String(computed, radix: 16)))"
            }
        }
    }
}

/// The result of reading both headers: which is current, and what is wrong with the other.
struct VHDXHeaderPair {
    var headers: [Result<VHDXHeader, VHDXHeader.HeaderFault>]
    /// Index (0 or 1) of the current header.
    var currentIndex: Int
    var current: VHDXHeader { try! headers[currentIndex].get() }

    /// Picks the current header: the only valid one, or the valid one with the higher sequence number.
    static func select(_ raw: [[UInt8]], path: String) throws -> VHDXHeaderPair {
        let decoded = raw.map { VHDXHeader.decode($0) }
        switch (decoded[0], decoded[1]) {
        case let (.success(a), .success(b)):
            return VHDXHeaderPair(headers: decoded, currentIndex: b.sequenceNumber > a.sequenceNumber ? 1 : 0)
        case (.success, .failure): return VHDXHeaderPair(headers: decoded, currentIndex: 0)
        case (.failure, .success): return VHDXHeaderPair(headers: decoded, currentIndex: 1)
        case let (.failure(f0), .failure(f1)):
            throw DiskError.corrupt(path: path, reason: "both VHDX headers are invalid (header 1 at 64 KiB: \(f0); header 2 at 128 KiB: \(f1))")
        }
    }

    /// Validates the current header's fields (version, log placement).
    func validate(path: String, fileSize: UInt64) throws {
        let h = current
        guard h.version == 1 else {
            throw DiskError.unsupported(path: path, reason: "VHDX header version \(h.version) (only version 1 is defined)")
        }
        if h.isLogDirty, h.logVersion != 0 {
            throw DiskError.unsupported(path: path, reason: "log version \(h.logVersion) with a log to replay (only version 0 is defined)")
        }
        guard h.logOffset % VHDXSize.mib == 0, h.logOffset >= VHDXSize.mib, UInt64(h.logLength) % VHDXSize.mib == 0 else {
            throw DiskError.corrupt(path: path, reason: "VHDX log placement is invalid (offset \(h.logOffset), length \(h.logLength); both must be multiples of 1 MiB, after the header section)")
        }
        guard h.logLength <= 1 << 30 else {
            throw DiskError.unsupported(path: path, reason: "a log of \(h.logLength) bytes (more than 1 GiB) is refused")
        }
        // Clean or not, the log must lie inside the file: the first write would otherwise put a log
        // entry wherever the header says (a damaged offset grew files to a terabyte).
        let (logEnd, overflow) = h.logOffset.addingReportingOverflow(UInt64(h.logLength))
        guard h.logLength == 0 || (!overflow && logEnd <= fileSize) else {
            throw DiskError.corrupt(path: path, reason: "the log (offset \(h.logOffset), length \(h.logLength)) lies past the end of the file (\(fileSize) bytes): the header is damaged or the file was cut")
        }
    }
}

/// The region table (two copies, at 192 KiB and 256 KiB).
struct VHDXRegionTable: Equatable {
    static let offsets: [UInt64] = [192 << 10, 256 << 10]
    static let size = 64 << 10
    static let bat = VHDXGUID.constant("2DC27766-F623-4200-9D64-115E9BFD4A08")
    static let metadata = VHDXGUID.constant("8B7CA206-4790-4B9A-B8FE-575F050F886E")

    struct Entry: Equatable {
        var guid: UUID
        var fileOffset: UInt64
        var length: UInt32
        var required: Bool
        var range: Range<UInt64> { fileOffset..<fileOffset + UInt64(length) }
    }
    var entries: [Entry]

    func encode() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.size)
        b.setSignature("regi")
        b.setLE32(8, UInt32(entries.count))
        for (i, e) in entries.enumerated() {
            let o = 16 + 32 * i
            b.setGUID(o, e.guid)
            b.setLE64(o + 16, e.fileOffset)
            b.setLE32(o + 24, e.length)
            b.setLE32(o + 28, e.required ? 1 : 0)
        }
        b.setLE32(4, CRC32C.checksum(b))
        return b
    }

    /// Decodes a 64 KiB table, or says why it is invalid.
    static func decode(_ b: [UInt8]) -> Result<VHDXRegionTable, VHDXFault> {
        guard b.count >= size, b.hasSignature("regi") else { return .failure("signature is not \"regi\"") }
        let stored = b.le32(4), computed = CRC32C.checksum(Array(b[0..<size]), zeroingFieldAt: 4)
        guard stored == computed else {
            return .failure("CRC-32C mismatch (stored 0x\(String(stored, radix: 16)), computed 0x\(String(computed, radix: 16)))")
        }
        let count = Int(b.le32(8))
        guard count <= 2047 else { return .failure("entry count \(count) exceeds 2047") }
        var entries: [Entry] = []
        for i in 0..<count {
            let o = 16 + 32 * i
            entries.append(Entry(guid: b.guid(o), fileOffset: b.le64(o + 16), length: b.le32(o + 24), required: b.le32(o + 28) & 1 == 1))
        }
        return .success(VHDXRegionTable(entries: entries))
    }

    /// Checks the table's meaning: known required regions present, nothing unknown required, nothing overlapping.
    func validate(path: String, header: VHDXHeader) throws -> (bat: Entry, metadata: Entry) {
        var bat: Entry?, meta: Entry?
        for e in entries {
            switch e.guid {
            case Self.bat:
                guard bat == nil else { throw DiskError.corrupt(path: path, reason: "the region table lists the BAT region twice") }
                bat = e
            case Self.metadata:
                guard meta == nil else { throw DiskError.corrupt(path: path, reason: "the region table lists the metadata region twice") }
                meta = e
            default:
                if e.required {
                    throw DiskError.unsupported(path: path, reason: "the region table has an unknown region \(e.guid.uuidString) marked required")
                }
            }
            guard e.fileOffset % VHDXSize.mib == 0, e.fileOffset >= VHDXSize.mib, UInt64(e.length) % VHDXSize.mib == 0, e.length > 0,
                  !e.fileOffset.addingReportingOverflow(UInt64(e.length)).overflow else {
                throw DiskError.corrupt(path: path, reason: "region \(e.guid.uuidString) has an invalid placement (offset \(e.fileOffset), length \(e.length); both must be nonzero multiples of 1 MiB after the header section)")
            }
        }
        guard let bat, let meta else {
            throw DiskError.corrupt(path: path, reason: "the region table lacks the \(bat == nil ? "BAT" : "metadata") region")
        }
        var ranges: [(String, Range<UInt64>)] = entries.map { ("region \($0.guid.uuidString)", $0.range) }
        if header.logLength > 0 { ranges.append(("log", header.logOffset..<header.logOffset + UInt64(header.logLength))) }
        for i in 0..<ranges.count {
            for j in (i + 1)..<ranges.count where ranges[i].1.overlaps(ranges[j].1) {
                throw DiskError.corrupt(path: path, reason: "the \(ranges[i].0) (\(ranges[i].1)) overlaps the \(ranges[j].0) (\(ranges[j].1))")
            }
        }
        return (bat, meta)
    }
}
