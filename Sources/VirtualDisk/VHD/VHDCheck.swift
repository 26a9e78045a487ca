import SystemPackage
import Storage

/// Consistency checks of VHD files, and the repairs that cannot lose data: restoring one footer from
/// the other, rewriting a footer checksum both identical copies get wrong, completing a 511-byte end
/// footer, dropping BAT entries that point past the end of the store, and reclaiming space no BAT
/// entry references (orphaned blocks of an interrupted write).
extension VHDFormat: CheckableFormat {
    public static func check(_ path: FilePath, repair: Bool) throws -> CheckReport {
        let store = try BlockFile.open(path, writable: repair)
        defer { try? store.close() }
        var report = try inspect(store).report
        guard repair, report.problems.contains(where: { $0.repairable }) else { return report }
        let repairs = try fix(store)
        try store.flush()
        report = try inspect(store).report
        report.repairs = repairs
        return report
    }

    /// What `inspect` learned, for `fix`.
    private struct Findings {
        var report: CheckReport
        var endFooter: VHDFooter?
        var copyFooter: VHDFooter?
        var endOffset: UInt64 = 0
        var header: VHDDynamicHeader?
        var bat: [UInt32] = []
        var pastEnd: [Int] = []
        var checksumMismatch = false
        var shortFooter = false
        var orphanedBytes: UInt64 = 0
    }

    private static func inspect(_ store: any ByteStore) throws -> Findings {
        let path = store.path.string
        var f = Findings(report: CheckReport(path: path, format: .vhd))
        func problem(_ severity: CheckProblem.Severity, _ message: String, repairable: Bool = false) {
            f.report.problems.append(CheckProblem(severity, message, repairable: repairable))
        }
        let size = try store.size()
        guard size >= 512 else {
            problem(.error, "the file has \(size) bytes, fewer than one 512-byte footer")
            return f
        }
        var endReason = ""
        do {
            let found = try findFooter(store, size: size)
            if found.source != "copy at offset 0" { f.endFooter = found.footer; f.endOffset = found.offset }
            if let bad = found.checksumMismatch {
                f.checksumMismatch = true
                f.copyFooter = found.footer
                problem(.error, "the footer checksum is wrong in both copies (stored 0x\(String(bad.stored, radix: 16)), computed 0x\(String(bad.computed, radix: 16))), which otherwise agree byte for byte: the image opens read-only only; repair rewrites the checksum", repairable: true)
            }
            if found.source == "end (511-byte footer)" {
                f.shortFooter = true
                problem(.error, "the end footer is 511 bytes, one short: the file was cut by one byte (or is a Virtual PC 2003 image); repair completes it", repairable: true)
            }
        } catch let e as DiskError { endReason = "\(e)" }
        if f.endFooter == nil, endReason.isEmpty {
            do {
                _ = try VHDFooter(try store.read(count: 512, at: size - 512), path: path, where: "at the end of the file (offset \(size - 512))")
            } catch let e as DiskError {
                if case .corrupt(_, let reason) = e { endReason = reason } else { endReason = "\(e)" }
            }
        }
        if !f.checksumMismatch { f.copyFooter = try? VHDFooter(try store.read(count: 512, at: 0), path: path, where: "at offset 0") }
        guard let footer = f.endFooter ?? f.copyFooter, footer.diskKind != .fixed || f.endFooter != nil else {
            problem(.error, "no valid footer: \(endReason.isEmpty ? "none at the end of the file" : endReason)")
            return f
        }
        if footer.diskKind == .fixed {
            if f.endOffset < footer.currentSize {
                problem(.error, "the fixed image holds \(f.endOffset) bytes of data but its footer says \(footer.currentSize)")
            }
            return f
        }
        if f.endFooter == nil {
            problem(.error, "no valid footer at the end of the file (\(endReason)); the copy at offset 0 is valid", repairable: true)
        }
        if f.copyFooter == nil {
            problem(.error, "the footer copy at offset 0 is missing or damaged; the footer at the end is valid", repairable: true)
        } else if let end = f.endFooter, let copy = f.copyFooter, end.bytes != copy.bytes {
            problem(.error, "the footer copy at offset 0 differs from the footer at the end", repairable: true)
        }
        let header: VHDDynamicHeader
        do {
            guard footer.dataOffset < size, footer.dataOffset + 1024 <= size else {
                throw DiskError.truncated(path: path, needed: footer.dataOffset &+ 1024, actual: size)
            }
            header = try VHDDynamicHeader(try store.read(count: 1024, at: footer.dataOffset), path: path, at: footer.dataOffset)
        } catch let e as DiskError {
            problem(.error, "dynamic disk header: \(e)")
            return f
        }
        f.header = header
        let tableEnd = header.tableOffset &+ UInt64(header.maxTableEntries) * 4
        guard header.tableOffset < size, tableEnd <= size else {
            problem(.error, "the BAT (offset \(header.tableOffset), \(header.maxTableEntries) entries) reaches past the end of the file (\(size) bytes)")
            return f
        }
        if UInt64(header.maxTableEntries) * UInt64(header.blockSize) < footer.sizeRule.size {
            problem(.error, "the BAT's \(header.maxTableEntries) entries cover less than the virtual size \(footer.sizeRule.size)")
        }
        let raw = try store.read(count: Int(header.maxTableEntries) * 4, at: header.tableOffset)
        f.bat = (0..<Int(header.maxTableEntries)).map { VHDBytes.u32(raw, $0 * 4) }
        // Metadata regions blocks must not overlap.
        var metadata: [(String, Range<UInt64>)] = [
            ("the footer copy", 0..<512),
            ("the dynamic header", footer.dataOffset..<footer.dataOffset + 1024),
            ("the BAT", header.tableOffset..<header.tableOffset + header.tableBytes),
        ]
        let dataEnd = f.endFooter != nil ? f.endOffset : size
        if footer.diskKind == .differencing {
            var usable = 0
            for (i, l) in header.locators.enumerated() where l.isUsed {
                guard l.dataOffset < size, l.dataOffset + UInt64(l.dataLength) <= size else {
                    problem(.error, "parent locator \(i) (\(VHDBytes.fourCC(l.platformCode))) data at \(l.dataOffset)+\(l.dataLength) lies past the end of the file")
                    continue
                }
                let range = l.dataOffset..<l.dataOffset + max(UInt64(l.dataLength), 1)
                if let clash = metadata.first(where: { $0.1.overlaps(range) }) {
                    problem(.error, "parent locator \(i) data at \(l.dataOffset) overlaps \(clash.0)")
                }
                metadata.append(("parent locator \(i)", range))
                if l.platformCode == VHDLocatorEntry.relativeCode || l.platformCode == VHDLocatorEntry.absoluteCode { usable += 1 }
            }
            if usable == 0 {
                problem(.warning, "the differencing image records no W2ru or W2ku parent locator; its parent cannot be found by path")
            }
        }
        let slot = UInt64(header.bitmapBytes) + UInt64(header.blockSize)
        var blocks: [(Int, Range<UInt64>)] = []
        for (i, e) in f.bat.enumerated() where e != VHDImage.unused {
            let range = UInt64(e) * 512..<UInt64(e) * 512 + slot
            if range.upperBound > dataEnd {
                problem(.error, "BAT entry \(i) points to offset \(range.lowerBound), whose block ends past the end of the file's data (\(dataEnd))", repairable: true)
                f.pastEnd.append(i)
                continue
            }
            if let clash = metadata.first(where: { $0.1.overlaps(range) }) {
                problem(.error, "BAT entry \(i) (block at \(range.lowerBound)) overlaps \(clash.0)")
            }
            blocks.append((i, range))
        }
        blocks.sort { $0.1.lowerBound < $1.1.lowerBound }
        for (a, b) in zip(blocks, blocks.dropFirst()) where a.1.overlaps(b.1) {
            problem(.error, "BAT entries \(a.0) and \(b.0) point to overlapping blocks (at \(a.1.lowerBound) and \(b.1.lowerBound))")
        }
        if f.endFooter != nil {
            var kept = f.bat
            for i in f.pastEnd { kept[i] = VHDImage.unused }
            let layout = VHDLayout(footer: footer, header: header, bat: kept, fileSize: size)
            let slots = layout.orphanedSlots
            let tail = f.endOffset > layout.end ? f.endOffset - layout.end : 0
            f.orphanedBytes = UInt64(slots.count) * layout.slot + tail
            if f.orphanedBytes > 0 {
                var parts: [String] = []
                if !slots.isEmpty { parts.append("\(slots.count) block slot\(slots.count == 1 ? "" : "s") between blocks") }
                if tail > 0 { parts.append("\(tail) bytes after the last block") }
                problem(.error, "\(f.orphanedBytes) bytes of file space are referenced by no BAT entry (\(parts.joined(separator: " and "))): blocks of an interrupted write; repair or compact reclaims them", repairable: true)
            }
        }
        return f
    }

    /// Applies the safe repairs and says what it did.
    private static func fix(_ store: any ByteStore) throws -> [String] {
        var f = try inspect(store)
        var repairs: [String] = []
        if f.checksumMismatch, let footer = f.endFooter {
            // The end footer first: a crash before the copy at 0 leaves a valid end footer to restore it from.
            try store.write(footer.bytes, at: f.endOffset)
            try store.flush()
            try store.write(footer.bytes, at: 0)
            try store.flush()
            repairs.append("rewrote the footer checksum in both copies (at the end and at offset 0)")
            f = try inspect(store)
        }
        if f.shortFooter, let footer = f.endFooter {
            // The 511 bytes there are the footer's own: the write only adds the missing last byte.
            try store.write(footer.bytes, at: f.endOffset)
            try store.flush()
            repairs.append("completed the 511-byte end footer to 512 bytes")
            f = try inspect(store)
        }
        guard let footer = f.endFooter ?? f.copyFooter, let header = f.header else { return repairs }
        var bat = f.bat
        if !f.pastEnd.isEmpty {
            for i in f.pastEnd { bat[i] = VHDImage.unused }
            var bytes = [UInt8](repeating: 0, count: bat.count * 4)
            for (i, e) in bat.enumerated() { VHDBytes.put32(&bytes, i * 4, e) }
            try store.write(bytes, at: header.tableOffset)
            try store.flush()
            repairs.append("dropped \(f.pastEnd.count) BAT entr\(f.pastEnd.count == 1 ? "y" : "ies") pointing past the end of the file (\(f.pastEnd.map(String.init).joined(separator: ", "))); those blocks now read from the parent or as zeros")
        }
        if f.endFooter == nil {
            let end = VHDLayout(footer: footer, header: header, bat: bat, fileSize: try store.size()).end
            try store.write(footer.bytes, at: end)
            try store.flush()
            try store.truncate(to: end + 512)
            repairs.append("wrote the footer at the end of the file (offset \(end)) from the copy at offset 0")
        } else if f.copyFooter?.bytes != footer.bytes {
            try store.write(footer.bytes, at: 0)
            try store.flush()
            repairs.append("restored the footer copy at offset 0 from the footer at the end")
        }
        if f.orphanedBytes > 0 {
            // The footers are whole now; moving blocks and cutting the tail is the image's job. An image
            // that does not open (other damage) keeps its orphaned space, reported again below.
            if let image = try? openImage(store) {
                let cut = try image.reclaimOrphanedSpace()
                repairs.append("reclaimed \(f.orphanedBytes) bytes no BAT entry referenced (the file shrank by \(cut) bytes)")
            }
        }
        return repairs
    }
}
