import Storage
import struct Foundation.UUID

/// One change carried by a log entry.
enum VHDXLogDescriptor: Equatable {
    /// Write these 4 KiB at `fileOffset`.
    case data(fileOffset: UInt64, sector: [UInt8])
    /// Write `length` zero bytes at `fileOffset`.
    case zero(fileOffset: UInt64, length: UInt64)
}

/// A log entry: header, descriptors and data sectors, in 4 KiB sectors.
struct VHDXLogEntry: Equatable {
    var sequenceNumber: UInt64
    /// Byte offset (inside the log) of the first entry of the sequence this one ends.
    var tail: UInt32
    var logGuid: UUID
    var flushedFileOffset: UInt64
    var lastFileOffset: UInt64
    var descriptors: [VHDXLogDescriptor]

    static func descriptorBytes(_ count: Int) -> Int { Int(VHDXSize.roundUp(UInt64(64 + 32 * count), 4096)) }
    var dataCount: Int { descriptors.filter { if case .data = $0 { true } else { false } }.count }
    var length: Int { Self.descriptorBytes(descriptors.count) + 4096 * dataCount }

    func encode() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: length)
        b.setSignature("loge")
        b.setLE32(8, UInt32(length))
        b.setLE32(12, tail)
        b.setLE64(16, sequenceNumber)
        b.setLE32(24, UInt32(descriptors.count))
        b.setGUID(32, logGuid)
        b.setLE64(48, flushedFileOffset)
        b.setLE64(56, lastFileOffset)
        var dataSector = Self.descriptorBytes(descriptors.count)
        for (i, d) in descriptors.enumerated() {
            let o = 64 + 32 * i
            switch d {
            case let .zero(fileOffset, length):
                b.setSignature("zero", at: o)
                b.setLE64(o + 8, length)
                b.setLE64(o + 16, fileOffset)
            case let .data(fileOffset, sector):
                b.setSignature("desc", at: o)
                b.replaceSubrange(o + 4..<o + 8, with: sector[4092..<4096])
                b.replaceSubrange(o + 8..<o + 16, with: sector[0..<8])
                b.setLE64(o + 16, fileOffset)
                b.setSignature("data", at: dataSector)
                b.setLE32(dataSector + 4, UInt32(truncatingIfNeeded: sequenceNumber >> 32))
                b.replaceSubrange(dataSector + 8..<dataSector + 4092, with: sector[8..<4092])
                b.setLE32(dataSector + 4092, UInt32(truncatingIfNeeded: sequenceNumber))
                dataSector += 4096
            }
            b.setLE64(o + 24, sequenceNumber)
        }
        b.setLE32(4, CRC32C.checksum(b))
        return b
    }

    /// Why the bytes at `offset` of `log` are not a valid entry for `guid`, or the entry.
    static func decode(log: [UInt8], at offset: Int, guid: UUID) -> Result<VHDXLogEntry, VHDXFault> {
        let n = log.count
        guard n >= 4096, offset % 4096 == 0, offset < n else { return .failure("offset outside the log") }
        func bytes(_ start: Int, _ count: Int) -> [UInt8] {
            if start + count <= n { return Array(log[start..<start + count]) }
            var out = [UInt8]()
            out.reserveCapacity(count)
            var p = start % n
            while out.count < count {
                let take = min(count - out.count, n - p)
                out += log[p..<p + take]
                p = (p + take) % n
            }
            return out
        }
        let head = bytes(offset, 4096)
        guard head.hasSignature("loge") else { return .failure("no \"loge\" signature") }
        let length = Int(head.le32(8)), tail = head.le32(12), seq = head.le64(16), count = Int(head.le32(24))
        guard length >= 4096, length % 4096 == 0, length <= n else { return .failure("entry length \(length) is invalid") }
        guard tail % 4096 == 0, Int(tail) < n else { return .failure("tail \(tail) is invalid") }
        guard seq > 0 else { return .failure("sequence number is zero") }
        let lastFileOffset = head.le64(56)
        guard lastFileOffset <= 1 << 52 else { return .failure("LastFileOffset \(lastFileOffset) is beyond any VHDX file") }
        guard head.guid(32) == guid else { return .failure("log GUID does not match the header's LogGuid") }
        guard descriptorBytes(count) <= length else { return .failure("\(count) descriptors do not fit the entry length \(length)") }
        let entry = bytes(offset, length)
        let stored = entry.le32(4), computed = CRC32C.checksum(entry, zeroingFieldAt: 4)
        guard stored == computed else {
            return .failure("CRC-32C mismatch (stored 0x\(String(stored, radix: 16)), computed 0x\(String(computed, radix: 16)))")
        }
        var descriptors: [VHDXLogDescriptor] = []
        var dataSector = descriptorBytes(count)
        for i in 0..<count {
            let o = 64 + 32 * i
            guard entry.le64(o + 24) == seq else { return .failure("descriptor \(i) has a different sequence number") }
            let fileOffset = entry.le64(o + 16)
            guard fileOffset % 4096 == 0 else { return .failure("descriptor \(i) file offset \(fileOffset) is not 4 KiB aligned") }
            guard fileOffset >= 192 << 10, fileOffset < lastFileOffset else {
                return .failure("descriptor \(i) file offset \(fileOffset) lies outside the structures the log may update (below the region tables at 192 KiB, or past LastFileOffset \(lastFileOffset))")
            }
            if entry.hasSignature("zero", at: o) {
                let len = entry.le64(o + 8)
                guard len % 4096 == 0, len <= lastFileOffset - fileOffset else {
                    return .failure("zero descriptor \(i) length \(len) is not 4 KiB aligned or reaches past LastFileOffset")
                }
                descriptors.append(.zero(fileOffset: fileOffset, length: len))
            } else if entry.hasSignature("desc", at: o) {
                guard dataSector + 4096 <= length else { return .failure("data descriptor \(i) has no data sector") }
                guard entry.hasSignature("data", at: dataSector), entry.le32(dataSector + 4) == UInt32(truncatingIfNeeded: seq >> 32),
                      entry.le32(dataSector + 4092) == UInt32(truncatingIfNeeded: seq) else {
                    return .failure("data sector \(i) does not match its descriptor")
                }
                var sector = [UInt8](repeating: 0, count: 4096)
                sector.replaceSubrange(0..<8, with: entry[o + 8..<o + 16])
                sector.replaceSubrange(8..<4092, with: entry[dataSector + 8..<dataSector + 4092])
                sector.replaceSubrange(4092..<4096, with: entry[o + 4..<o + 8])
                descriptors.append(.data(fileOffset: fileOffset, sector: sector))
                dataSector += 4096
            } else {
                return .failure("descriptor \(i) has an unknown signature")
            }
        }
        return .success(VHDXLogEntry(sequenceNumber: seq, tail: tail, logGuid: guid, flushedFileOffset: head.le64(48),
                                     lastFileOffset: lastFileOffset, descriptors: descriptors))
    }
}

/// The active sequence found by the replay search: entries from the tail entry to the head entry.
struct VHDXLogSequence {
    var entries: [VHDXLogEntry]
    var head: VHDXLogEntry { entries[entries.count - 1] }

    /// Finds the active sequence exactly as MS-VHDX 2.3.3 describes; nil when there is none.
    static func findActive(log: [UInt8], guid: UUID) -> VHDXLogSequence? {
        let size = log.count
        guard size >= 4096 else { return nil }
        var candidate: [(offset: Int, entry: VHDXLogEntry)] = []
        var candidateSeq: UInt64 = 0
        var currentTail = 0, oldTail = 0
        while true {
            // Step 2-3: grow the current sequence from the current tail.
            var current: [(offset: Int, entry: VHDXLogEntry)] = []
            var head = currentTail
            var covered = 0
            while covered < size, case let .success(e) = VHDXLogEntry.decode(log: log, at: head, guid: guid) {
                if let last = current.last, e.sequenceNumber != last.entry.sequenceNumber + 1 { break }
                current.append((head, e))
                covered += e.length
                head = (head + e.length) % size
            }
            // Step 4: valid when the head entry's tail lies within the sequence.
            var valid = false
            if let last = current.last, let t = current.firstIndex(where: { $0.offset == Int(last.entry.tail) }) {
                valid = true
                // Step 5: keep the newest valid sequence, from its tail entry.
                if last.entry.sequenceNumber > candidateSeq {
                    candidate = Array(current[t...])
                    candidateSeq = last.entry.sequenceNumber
                }
            }
            // Step 6: advance.
            if current.isEmpty || !valid {
                currentTail += 4096
                if currentTail >= size { currentTail = 0 }
            } else {
                currentTail = head % size
            }
            // Step 7: stop after one full pass.
            if currentTail <= oldTail { break }
            oldTail = currentTail
        }
        return candidate.isEmpty ? nil : VHDXLogSequence(entries: candidate.map(\.entry))
    }

    /// The entries whose signature is "loge" and GUID matches but that fail validation (for `check`).
    static func damagedEntries(log: [UInt8], guid: UUID) -> [(offset: Int, reason: VHDXFault)] {
        var out: [(Int, VHDXFault)] = []
        var o = 0
        while o + 4096 <= log.count {
            if log.hasSignature("loge", at: o), log.guid(o + 32) == guid,
               case let .failure(reason) = VHDXLogEntry.decode(log: log, at: o, guid: guid) {
                out.append((o, reason))
            }
            o += 4096
        }
        return out
    }
}

/// Writes log entries into the circular log, each one a sequence of its own (tail = itself), since every
/// entry is applied and flushed before the next is written.
struct VHDXLogWriter {
    let logOffset: UInt64
    let logLength: Int
    let guid: UUID
    var nextSequence: UInt64 = 1
    var position = 0

    /// Data descriptors per entry. An entry takes at most a third of the log, so the next entry, even
    /// when it wraps to the start, never overwrites the previous one: a torn write always leaves the
    /// last complete entry readable (else a crash could leave a dirty log with no valid sequence).
    var maxDataSectors: Int {
        var n = logLength / 4096 / 3
        while n > 1, VHDXLogEntry.descriptorBytes(n) + 4096 * n > logLength / 3 { n -= 1 }
        return max(n, 1)
    }

    /// Builds the next entry and where it goes (file offset); advances the writer.
    mutating func next(_ descriptors: [VHDXLogDescriptor], flushedFileOffset: UInt64, lastFileOffset: UInt64) -> (UInt64, [UInt8]) {
        var entry = VHDXLogEntry(sequenceNumber: nextSequence, tail: 0, logGuid: guid, flushedFileOffset: flushedFileOffset,
                                 lastFileOffset: lastFileOffset, descriptors: descriptors)
        if position + entry.length > logLength { position = 0 }
        entry.tail = UInt32(position)
        let at = logOffset + UInt64(position)
        position += entry.length
        if position >= logLength { position = 0 }
        nextSequence += 1
        return (at, entry.encode())
    }
}
