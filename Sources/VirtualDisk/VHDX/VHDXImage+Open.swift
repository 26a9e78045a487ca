import Storage
import struct Foundation.UUID

/// Opening: log replay (into the file, or into an in-memory overlay for a read-only open) and the
/// validation of every structure against the file, so that nothing past its end is ever trusted.
extension VHDXImage {
    /// Finds the active log sequence and replays it (into the store, or into the overlay).
    func replayLog() throws {
        let path = store.path.string
        let logEnd = header.logOffset + UInt64(header.logLength)
        guard logEnd <= diskFileSize else {
            throw DiskError.truncated(path: path, needed: logEnd, actual: diskFileSize)
        }
        let log = try store.read(count: Int(header.logLength), at: header.logOffset)
        guard let sequence = VHDXLogSequence.findActive(log: log, guid: header.logGuid) else {
            throw DiskError.corrupt(path: path, reason: "the header's LogGuid \(header.logGuid.uuidString.lowercased()) says the log must be replayed, but the log holds no valid entry sequence for it")
        }
        guard diskFileSize >= sequence.head.flushedFileOffset else {
            throw DiskError.corrupt(path: path, reason: "the file is \(diskFileSize) bytes, smaller than the \(sequence.head.flushedFileOffset) bytes the log recorded as flushed: it was truncated")
        }
        replayedOnOpen = true
        if store.isWritable {
            // The FileWriteGuid changes before any modification, log playback included; LogGuid stays.
            var h = header
            h.fileWriteGuid = UUID()
            try commitHeader(h, twice: false)
            session.fileWriteUpdated = true
            for entry in sequence.entries {
                for d in entry.descriptors {
                    switch d {
                    case let .data(offset, sector): try store.write(sector, at: offset)
                    case let .zero(offset, length): try store.writeZeros(count: length, at: offset)
                    }
                }
            }
            if try store.size() < sequence.head.lastFileOffset { try store.truncate(to: sequence.head.lastFileOffset) }
            try store.flush()
            diskFileSize = try store.size()
            var clean = header
            clean.logGuid = VHDXGUID.zero
            try commitHeader(clean, twice: true)
        } else {
            for entry in sequence.entries {
                for d in entry.descriptors {
                    switch d {
                    case let .data(offset, sector): overlay[offset] = sector
                    case let .zero(offset, length):
                        // Zero ranges can be large: keep them as ranges; sectors they cover are dropped.
                        for key in overlay.keys where key >= offset && key < offset + length { overlay[key] = nil }
                        overlayZeros.append(offset..<offset + length)
                    }
                    if case let .data(offset, _) = d { overlaySize = max(overlaySize, offset + 4096) }
                    if case let .zero(offset, length) = d { overlaySize = max(overlaySize, offset + length) }
                }
            }
            overlaySize = max(overlaySize, sequence.head.lastFileOffset)
        }
    }

    /// Reads region tables, metadata and the BAT (through the overlay).
    func loadStructures() throws {
        let path = store.path.string
        let tables = try VHDXRegionTable.offsets.map { VHDXRegionTable.decode(try readMeta($0, VHDXRegionTable.size)) }
        var table: VHDXRegionTable
        switch (tables[0], tables[1]) {
        case let (.success(t), _): table = t
        case let (.failure, .success(t)): table = t
        case let (.failure(a), .failure(b)):
            throw DiskError.corrupt(path: path, reason: "both region tables are invalid (at 192 KiB: \(a); at 256 KiB: \(b))")
        }
        let regions = try table.validate(path: path, header: header)
        regionTable = table
        batRegion = regions.bat
        metadataRegion = regions.metadata
        let size = effectiveSize
        for (name, r) in [("BAT", batRegion), ("metadata", metadataRegion)] where r.range.upperBound > size {
            throw DiskError.corrupt(path: path, reason: "the \(name) region (offset \(r.fileOffset), length \(r.length)) lies past the end of the file (\(size) bytes): the region table is damaged or the file was cut")
        }
        guard metadataRegion.length <= 256 << 20 else {
            throw DiskError.unsupported(path: path, reason: "a metadata region of \(metadataRegion.length) bytes (more than 256 MiB) is refused")
        }
        metadataRaw = try readMeta(metadataRegion.fileOffset, Int(metadataRegion.length))
        meta = try VHDXMetadata.decode(metadataRaw, path: path)
        geometry = VHDXGeometry(virtualSize: meta.virtualSize, blockSize: UInt64(meta.blockSize), logicalSectorSize: UInt64(meta.logicalSectorSize))
        let required = geometry.entryCount(differencing: meta.hasParent)
        guard required * 8 <= UInt64(batRegion.length) else {
            throw DiskError.corrupt(path: path, reason: "the BAT region (\(batRegion.length) bytes) is too small for the \(required) entries a \(meta.virtualSize)-byte disk with \(meta.blockSize)-byte blocks needs")
        }
        let loaded = min(VHDXSize.roundUp(max(geometry.reservedEntryCount, required) * 8, 4096), UInt64(batRegion.length))
        let raw = try readMeta(batRegion.fileOffset, Int(loaded))
        bat = (0..<Int(loaded / 8)).map { raw.le64($0 * 8) }
        try validateBAT()
        type = meta.hasParent ? .differencing : (meta.leaveBlocksAllocated ? .fixed : .dynamic)
    }

    var effectiveSize: UInt64 { max(diskFileSize, overlaySize) }

    /// Refuses entries past the end of the store, overlapping ones, and states invalid for the type.
    func validateBAT() throws {
        let path = store.path.string
        let size = effectiveSize
        var used: [(Range<UInt64>, String)] = [
            (0..<VHDXSize.mib, "the header section"), (batRegion.range, "the BAT region"), (metadataRegion.range, "the metadata region"),
        ]
        if header.logLength > 0 { used.append((header.logOffset..<header.logOffset + UInt64(header.logLength), "the log")) }
        for r in regionTable.entries where r.guid != VHDXRegionTable.bat && r.guid != VHDXRegionTable.metadata {
            used.append((r.range, "region \(r.guid.uuidString)"))
        }
        var end = used.map(\.0.upperBound).max() ?? 0
        for block in 0..<geometry.payloadBlocks {
            let i = geometry.payloadIndex(block)
            let e = VHDXBATEntry(raw: bat[i])
            switch e.state {
            case 0, 1, 2, 3: continue
            case 6, 7:
                if e.state == 7 && !meta.hasParent {
                    throw DiskError.corrupt(path: path, reason: "BAT entry \(i) (block \(block)) is PARTIALLY_PRESENT in an image without a parent")
                }
                let span = min(geometry.blockSize, meta.virtualSize - block * geometry.blockSize)
                guard e.fileOffset >= VHDXSize.mib, e.fileOffset <= size, span <= size - e.fileOffset else {
                    throw DiskError.corrupt(path: path, reason: "BAT entry \(i) (block \(block)) points past the end of the file (payload offset \(e.fileOffset), file size \(size))")
                }
                used.append((e.fileOffset..<e.fileOffset + geometry.blockSize, "block \(block)"))
                end = max(end, e.fileOffset + geometry.blockSize)
            default:
                throw DiskError.corrupt(path: path, reason: "BAT entry \(i) (block \(block)) has the reserved state \(e.state)")
            }
        }
        if meta.hasParent {
            for chunk in 0..<geometry.bitmapBlocks {
                let i = geometry.bitmapIndex(chunk: chunk)
                guard i < bat.count else { break }
                let e = VHDXBATEntry(raw: bat[i])
                guard e.state == VHDXBitmapState.present else { continue }
                guard e.fileOffset >= VHDXSize.mib, e.fileOffset <= size, VHDXSize.mib <= size - e.fileOffset else {
                    throw DiskError.corrupt(path: path, reason: "BAT entry \(i) (sector bitmap \(chunk)) points past the end of the file (offset \(e.fileOffset), file size \(size))")
                }
                used.append((e.fileOffset..<e.fileOffset + VHDXSize.mib, "sector bitmap \(chunk)"))
                end = max(end, e.fileOffset + VHDXSize.mib)
            }
        }
        used.sort { $0.0.lowerBound < $1.0.lowerBound }
        for k in used.indices.dropFirst() where used[k].0.lowerBound < used[k - 1].0.upperBound {
            // Blocks of a fixed file may run past the last virtual byte into nothing; any real overlap is corrupt.
            throw DiskError.corrupt(path: path, reason: "\(used[k].1) (file offset \(used[k].0.lowerBound)) overlaps \(used[k - 1].1) (\(used[k - 1].0))")
        }
        // New blocks go right after the last referenced byte, not at the end of the file: space past
        // it (blocks of a write killed before its log entry) is reused instead of leaked.
        fileEnd = VHDXSize.roundUp(end, VHDXSize.mib)
    }

    /// Reads file bytes for structures, with replayed sectors laid over them; past the end reads zeros.
    func readMeta(_ offset: UInt64, _ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let available = diskFileSize > offset ? min(UInt64(count), diskFileSize - offset) : 0
        if available > 0 {
            try out.withUnsafeMutableBytes { try store.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<Int(available)]), at: offset) }
        }
        let wanted = offset..<offset + UInt64(count)
        for zero in overlayZeros where zero.overlaps(wanted) {
            let r = zero.clamped(to: wanted)
            for p in r { out[Int(p - offset)] = 0 }
        }
        if !overlay.isEmpty {
            var s = offset / 4096 * 4096
            while s < offset + UInt64(count) {
                if let sector = overlay[s] {
                    for i in 0..<4096 {
                        let pos = Int64(s) + Int64(i) - Int64(offset)
                        if pos >= 0 && pos < Int64(count) { out[Int(pos)] = sector[i] }
                    }
                }
                s += 4096
            }
        }
        return out
    }
}
