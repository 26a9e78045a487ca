import SystemPackage
import Storage

extension VHDXFormat {
    /// Checks headers, region tables, the log, metadata and the BAT. With `repair`: rewrites a bad header
    /// or region table from the good copy and replays a dirty log; then reports what is left.
    public static func check(_ path: FilePath, repair: Bool) throws -> CheckReport {
        let report = try inspect(path)
        guard repair, report.problems.contains(where: { $0.repairable }) else { return report }
        let repairs = try performRepairs(path)
        var after = try inspect(path)
        after.repairs = repairs
        return after
    }

    static func inspect(_ path: FilePath) throws -> CheckReport {
        var report = CheckReport(path: path.string, format: .vhdx)
        func problem(_ severity: CheckProblem.Severity, _ message: String, repairable: Bool = false) {
            report.problems.append(CheckProblem(severity, message, repairable: repairable))
        }
        let store = try BlockFile.open(path, writable: false)
        defer { try? store.close() }
        let size = try store.size()
        guard size >= VHDXSize.mib, VHDXFileIdentifier.decode(try store.read(count: 520, at: 0)) != nil else {
            problem(.error, "no VHDX file identifier (\"vhdxfile\") at offset 0, or the file is shorter than the 1 MiB header section")
            return report
        }
        let raw = try VHDXHeader.offsets.map { try store.read(count: VHDXHeader.size, at: $0) }
        let decoded = raw.map { VHDXHeader.decode($0) }
        for i in 0..<2 {
            if case let .failure(fault) = decoded[i] {
                let otherOK = (try? decoded[1 - i].get()) != nil
                problem(.error, "header \(i + 1) (at \(64 * (i + 1)) KiB) is invalid: \(fault)", repairable: otherOK)
            }
        }
        guard let pair = try? VHDXHeaderPair.select(raw, path: path.string) else { return report }
        do { try pair.validate(path: path.string, fileSize: size) } catch {
            problem(.error, "\(error)")
            return report
        }
        let header = pair.current
        if header.isLogDirty {
            let end = header.logOffset + UInt64(header.logLength)
            guard end <= size else {
                problem(.error, "the log (\(header.logOffset)..<\(end)) lies past the end of the file (\(size) bytes)")
                return report
            }
            let log = try store.read(count: Int(header.logLength), at: header.logOffset)
            for (offset, reason) in VHDXLogSequence.damagedEntries(log: log, guid: header.logGuid) {
                problem(.warning, "log entry at log offset \(offset) is damaged (\(reason)); replay ignores it")
            }
            if let sequence = VHDXLogSequence.findActive(log: log, guid: header.logGuid) {
                problem(.error, "the log holds \(sequence.entries.count) entr\(sequence.entries.count == 1 ? "y" : "ies") not yet applied (sequence \(sequence.head.sequenceNumber)): an update was interrupted; repair replays it", repairable: true)
            } else {
                problem(.error, "the header's LogGuid says the log must be replayed, but the log holds no valid entry sequence")
                return report
            }
        }
        let tables = try VHDXRegionTable.offsets.map { VHDXRegionTable.decode(try store.read(count: VHDXRegionTable.size, at: $0)) }
        for i in 0..<2 {
            if case let .failure(fault) = tables[i] {
                let otherOK = (try? tables[1 - i].get()) != nil
                problem(.error, "region table \(i + 1) (at \(192 + 64 * i) KiB) is invalid: \(fault)", repairable: otherOK && !header.isLogDirty)
            }
        }
        if case let .success(a) = tables[0], case let .success(b) = tables[1], a != b {
            problem(.warning, "the two region tables differ; the first is used")
        }
        // Everything else (region meaning, metadata, BAT) is what opening validates (read-only: never writes).
        do {
            let image = try VHDXImage(store: try BlockFile.open(path, writable: false))
            if !header.isLogDirty, image.diskFileSize > image.fileEnd {
                problem(.warning, "\(image.diskFileSize - image.fileEnd) bytes after the last referenced structure or block (from offset \(image.fileEnd)) are referenced by nothing: blocks of an interrupted write, or space another tool reserved; repair or compact truncates them", repairable: true)
            }
            try image.close()
        } catch {
            problem(.error, "\(error)")
        }
        return report
    }

    static func performRepairs(_ path: FilePath) throws -> [String] {
        var repairs: [String] = []
        do {
            let store = try BlockFile.open(path, writable: true)
            defer { try? store.close() }
            let raw = try VHDXHeader.offsets.map { try store.read(count: VHDXHeader.size, at: $0) }
            let decoded = raw.map { VHDXHeader.decode($0) }
            for i in 0..<2 {
                if case .failure = decoded[i], case .success = decoded[1 - i] {
                    try store.write(raw[1 - i], at: VHDXHeader.offsets[i])
                    try store.flush()
                    repairs.append("rewrote header \(i + 1) from header \(2 - i)")
                }
            }
            let pair = try VHDXHeaderPair.select(try VHDXHeader.offsets.map { try store.read(count: VHDXHeader.size, at: $0) }, path: path.string)
            if !pair.current.isLogDirty {
                let tables = try VHDXRegionTable.offsets.map { try store.read(count: VHDXRegionTable.size, at: $0) }
                for i in 0..<2 {
                    if case .failure = VHDXRegionTable.decode(tables[i]), case .success = VHDXRegionTable.decode(tables[1 - i]) {
                        try store.write(tables[1 - i], at: VHDXRegionTable.offsets[i])
                        try store.flush()
                        repairs.append("rewrote region table \(i + 1) from region table \(2 - i)")
                    }
                }
            }
        }
        let store = try BlockFile.open(path, writable: false)
        let pair = try VHDXHeaderPair.select(try VHDXHeader.offsets.map { try store.read(count: VHDXHeader.size, at: $0) }, path: path.string)
        try store.close()
        if pair.current.isLogDirty {
            let image = try VHDXImage(store: try BlockFile.open(path, writable: true))
            try image.close()
            repairs.append("replayed the log into the file and cleared the LogGuid")
        }
        if let image = try? VHDXImage(store: try BlockFile.open(path, writable: true)) {
            let end = image.fileEnd, size = image.diskFileSize
            if size > end {
                try image.reclaimOrphanedTail()
                repairs.append("truncated \(size - end) unreferenced bytes after offset \(end)")
            }
            try image.close()
        }
        return repairs
    }
}
