/// Fitting a GPT disk's table to a larger disk after its bytes were copied there: the backup header
/// and entry array move to the new end, both headers say where the other is and how far partitions
/// may reach (the extra space is free), every CRC is recomputed, and the protective MBR covers the
/// new size. Partitions themselves do not move or change. (An MBR needs nothing: it does not record
/// the disk's size.)
public enum GPTFit {
    /// One write the fit needs: `bytes` at byte `offset` of the disk.
    public struct Write: Equatable, Sendable {
        public var offset: UInt64
        public var bytes: [UInt8]
    }

    /// The writes that fit the GPT of a disk first written at `oldSize` bytes onto a disk of `newSize`
    /// bytes, reading the disk through `read(offset, count)`. Empty when the sizes are equal. Throws
    /// when the primary header or its entries are damaged (the image is then not what was backed up).
    public static func writes(oldSize: UInt64, newSize: UInt64, sectorSize: Int,
                              _ read: (UInt64, Int) throws -> [UInt8]) throws -> [Write] {
        let s = UInt64(sectorSize)
        guard newSize / s > oldSize / s else { return [] }
        let oldLast = oldSize / s - 1, newLast = newSize / s - 1
        let sector1 = try read(s, sectorSize)
        var header = sector1
        guard Array(header[0..<8]) == Array("EFI PART".utf8) else { throw Problem(text: "the primary GPT header at LBA 1 has no EFI PART signature") }
        let headerSize = Int(PartitionTable.le32(header, 12))
        guard headerSize >= 92, headerSize <= sectorSize else { throw Problem(text: "the primary GPT header's size is \(headerSize)") }
        var check = Array(header[0..<headerSize])
        check[16..<20] = [0, 0, 0, 0]
        guard CRC32.checksum(check) == PartitionTable.le32(header, 16) else { throw Problem(text: "the primary GPT header's checksum does not match") }
        let entriesLBA = PartitionTable.le64(header, 72)
        let count = Int(PartitionTable.le32(header, 80)), entrySize = Int(PartitionTable.le32(header, 84))
        guard entrySize >= 128, entrySize <= 4096, count <= 4096 else { throw Problem(text: "the GPT lists \(count) entries of \(entrySize) bytes") }
        let entryBytes = count * entrySize
        let entrySectors = (UInt64(entryBytes) + s - 1) / s
        let entries = try read(entriesLBA * s, Int(entrySectors * s))
        guard CRC32.checksum(Array(entries[0..<entryBytes])) == PartitionTable.le32(header, 88) else {
            throw Problem(text: "the GPT entry array's checksum does not match")
        }
        let backupEntriesLBA = newLast - entrySectors

        func seal(_ h: inout [UInt8]) {
            put32(&h, 16, 0)
            put32(&h, 16, CRC32.checksum(Array(h[0..<headerSize])))
        }
        put64(&header, 32, newLast)
        put64(&header, 48, backupEntriesLBA - 1)
        seal(&header)
        var backup = [UInt8](repeating: 0, count: sectorSize)
        backup[0..<headerSize] = header[0..<headerSize]
        put64(&backup, 24, newLast)
        put64(&backup, 32, 1)
        put64(&backup, 72, backupEntriesLBA)
        seal(&backup)

        var out: [Write] = []
        // The old backup copy (entries and header) is left in what is now free space: zeroed so no
        // tool finds a stale table there.
        let oldBackupStart = oldLast >= entrySectors ? oldLast - entrySectors : oldLast
        out.append(Write(offset: oldBackupStart * s, bytes: [UInt8](repeating: 0, count: Int((oldLast - oldBackupStart + 1) * s))))
        out.append(Write(offset: s, bytes: header))
        out.append(Write(offset: backupEntriesLBA * s, bytes: entries))
        out.append(Write(offset: newLast * s, bytes: backup))
        // The protective MBR's one partition covers the disk (or as much as 32 bits can say).
        var mbr = try read(0, 512)
        if mbr[510] == 0x55, mbr[511] == 0xAA, let slot = (0..<4).first(where: { mbr[446 + $0 * 16 + 4] == 0xEE }) {
            let e = 446 + slot * 16
            let first = UInt64(PartitionTable.le32(mbr, e + 8))
            put32(&mbr, e + 12, UInt32(min(newLast + 1 - first, 0xFFFF_FFFF)))
            out.insert(Write(offset: 0, bytes: mbr), at: 0)
        }
        return out
    }

    public struct Problem: Error, Equatable { public var text: String }

    static func put32(_ b: inout [UInt8], _ at: Int, _ v: UInt32) {
        for i in 0..<4 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
    }

    static func put64(_ b: inout [UInt8], _ at: Int, _ v: UInt64) {
        for i in 0..<8 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
    }
}
