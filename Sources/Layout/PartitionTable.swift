import struct Foundation.UUID

/// One partition of a disk: its number (as Linux numbers them: GPT entry index + 1; MBR primary slot
/// 1-4, logical partitions from 5), where it lies in bytes, and what the table says about it.
public struct Partition: Equatable, Sendable {
    public var number: Int
    public var offset: UInt64
    public var length: UInt64
    /// MBR: the type byte as two hex digits (`83`); GPT: the type GUID, upper case.
    public var type: String
    /// GPT: the partition's name (may be empty); MBR: nil.
    public var name: String?

    public init(number: Int, offset: UInt64, length: UInt64, type: String, name: String? = nil) {
        self.number = number
        self.offset = offset
        self.length = length
        self.type = type
        self.name = name
    }

    public var range: Range<UInt64> { offset..<offset + length }
}

/// The partition table of a disk, read from its first sectors: GPT (primary header at LBA 1, the
/// backup at the last LBA when the primary is damaged) or MBR (primaries and the logical partitions
/// of an extended one). Parsed here, with no library, so a view works on any readable disk.
public struct PartitionTable: Equatable, Sendable {
    public enum Scheme: String, Sendable { case gpt, mbr, none }
    public var scheme: Scheme
    public var partitions: [Partition]
    /// What was wrong but tolerated (a damaged primary GPT header, an entry past the disk's end).
    public var warnings: [String]

    public init(scheme: Scheme, partitions: [Partition], warnings: [String] = []) {
        self.scheme = scheme
        self.partitions = partitions
        self.warnings = warnings
    }

    /// Reads the table of a disk of `size` bytes whose logical sectors are `sectorSize` bytes, through
    /// `read(offset, count)` (which returns exactly `count` bytes, or throws).
    public static func read(size: UInt64, sectorSize: Int = 512,
                            _ read: (UInt64, Int) throws -> [UInt8]) throws -> PartitionTable {
        let sector = UInt64(sectorSize)
        guard size >= 2 * sector else { return PartitionTable(scheme: .none, partitions: []) }
        let mbr = try read(0, 512)
        guard mbr[510] == 0x55, mbr[511] == 0xAA else { return PartitionTable(scheme: .none, partitions: []) }
        let types = (0..<4).map { mbr[446 + $0 * 16 + 4] }
        if types.contains(0xEE) {
            var warnings: [String] = []
            for (lba, which) in [(UInt64(1), "primary"), (size / sector - 1, "backup")] {
                do {
                    let parts = try gpt(headerLBA: lba, size: size, sector: sector, read, warnings: &warnings)
                    return PartitionTable(scheme: .gpt, partitions: parts, warnings: warnings)
                } catch let reason as TableProblem {
                    warnings.append("the \(which) GPT header (LBA \(lba)) is unusable: \(reason.text)")
                }
            }
            return PartitionTable(scheme: .gpt, partitions: [], warnings: warnings)
        }
        var warnings: [String] = []
        let parts = try mbrPartitions(mbr, size: size, sector: sector, read, warnings: &warnings)
        return PartitionTable(scheme: .mbr, partitions: parts, warnings: warnings)
    }

    struct TableProblem: Error { var text: String }

    static func gpt(headerLBA: UInt64, size: UInt64, sector: UInt64, _ read: (UInt64, Int) throws -> [UInt8],
                    warnings: inout [String]) throws -> [Partition] {
        let h = try read(headerLBA * sector, 512)
        guard Array(h[0..<8]) == Array("EFI PART".utf8) else { throw TableProblem(text: "no EFI PART signature") }
        let headerSize = Int(le32(h, 12))
        guard headerSize >= 92, headerSize <= 512 else { throw TableProblem(text: "header size \(headerSize)") }
        var copy = Array(h[0..<headerSize])
        copy[16..<20] = [0, 0, 0, 0]
        guard CRC32.checksum(copy) == le32(h, 16) else { throw TableProblem(text: "header checksum mismatch") }
        let entriesLBA = le64(h, 72)
        let count = Int(le32(h, 80))
        let entrySize = Int(le32(h, 84))
        guard entrySize >= 128, entrySize <= 4096, entrySize % 8 == 0, count <= 4096 else {
            throw TableProblem(text: "\(count) entries of \(entrySize) bytes")
        }
        let (start, overflow) = entriesLBA.multipliedReportingOverflow(by: sector)
        let bytes = count * entrySize
        guard !overflow, start < size, UInt64(bytes) <= size - start else { throw TableProblem(text: "the entry array lies beyond the disk") }
        let entries = try read(start, bytes)
        guard CRC32.checksum(entries) == le32(h, 88) else { throw TableProblem(text: "entry array checksum mismatch") }
        var out: [Partition] = []
        for i in 0..<count {
            let e = Array(entries[i * entrySize..<(i + 1) * entrySize])
            guard e[0..<16].contains(where: { $0 != 0 }) else { continue }
            let first = le64(e, 32), last = le64(e, 40)
            guard last >= first, last < size / sector else {
                warnings.append("GPT entry \(i + 1) (LBA \(first)-\(last)) lies beyond the disk; left out")
                continue
            }
            var units: [UInt16] = []
            for k in 0..<36 {
                let u = UInt16(e[56 + 2 * k]) | UInt16(e[57 + 2 * k]) << 8
                if u == 0 { break }
                units.append(u)
            }
            out.append(Partition(number: i + 1, offset: first * sector, length: (last - first + 1) * sector,
                                 type: guid(Array(e[0..<16])), name: String(decoding: units, as: UTF16.self)))
        }
        return out
    }

    static func mbrPartitions(_ mbr: [UInt8], size: UInt64, sector: UInt64, _ read: (UInt64, Int) throws -> [UInt8],
                              warnings: inout [String]) throws -> [Partition] {
        var out: [Partition] = []
        var extended: (UInt64, UInt64)?
        for slot in 0..<4 {
            let e = 446 + slot * 16
            let type = mbr[e + 4], first = UInt64(le32(mbr, e + 8)), count = UInt64(le32(mbr, e + 12))
            guard type != 0, count > 0 else { continue }
            if [0x05, 0x0F, 0x85].contains(type) {
                extended = (first, count)
                continue
            }
            if let p = fit(number: slot + 1, first: first, count: count, type: type, size: size, sector: sector, &warnings) { out.append(p) }
        }
        // Logical partitions: a chain of extended boot records, each with one partition (relative
        // to its own EBR) and a link to the next one (relative to the extended partition's start).
        if let (base, extent) = extended {
            var ebr = base
            var number = 5
            var seen: Set<UInt64> = []
            while number < 5 + 128, !seen.contains(ebr), ebr < base + extent, (ebr + 1) * sector <= size {
                seen.insert(ebr)
                let b = try read(ebr * sector, 512)
                guard b[510] == 0x55, b[511] == 0xAA else {
                    warnings.append("the extended boot record at LBA \(ebr) has no signature; logical partitions from \(number) on left out")
                    break
                }
                let type = b[446 + 4], first = UInt64(le32(b, 446 + 8)), count = UInt64(le32(b, 446 + 12))
                if type != 0, count > 0,
                   let p = fit(number: number, first: ebr + first, count: count, type: type, size: size, sector: sector, &warnings) {
                    out.append(p)
                }
                number += 1
                let next = UInt64(le32(b, 462 + 8))
                guard b[462 + 4] != 0, next != 0 else { break }
                ebr = base + next
            }
        }
        return out
    }

    static func fit(number: Int, first: UInt64, count: UInt64, type: UInt8, size: UInt64, sector: UInt64,
                    _ warnings: inout [String]) -> Partition? {
        let offset = first * sector, length = count * sector
        guard first > 0, offset < size, length <= size - offset else {
            warnings.append("MBR partition \(number) (sectors \(first)+\(count)) lies beyond the disk; left out")
            return nil
        }
        return Partition(number: number, offset: offset, length: length, type: hex(type))
    }

    static func hex(_ b: UInt8) -> String {
        let d = Array("0123456789abcdef".utf8)
        return String(decoding: [d[Int(b >> 4)], d[Int(b & 15)]], as: UTF8.self)
    }

    static func le32(_ b: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * $1) }
    }

    static func le64(_ b: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * $1) }
    }

    /// A GPT GUID (mixed endian: the first three fields little-endian).
    static func guid(_ b: [UInt8]) -> String {
        let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15]
        let u = order.map { b[$0] }
        return UUID(uuid: (u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15])).uuidString
    }
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses it.
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}
