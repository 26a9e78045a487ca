import Storage
import struct Foundation.UUID

/// What one process has changed in a writable VHDX and not yet made durable or logged.
///
/// MS-VHDX asks for a new FileWriteGuid before the first change of a session and a new DataWriteGuid
/// before the first change a reader can see; BAT and bitmap changes are batched here and reach the file
/// only through a log entry (`logAndApply`), written after the payload it points at is synced.
struct VHDXWriteSession {
    /// The header carries this session's FileWriteGuid.
    var fileWriteUpdated = false
    /// The header carries this session's DataWriteGuid.
    var dataWriteUpdated = false
    /// The log writer, created on the first logged change (its GUID then names this session's entries).
    var logWriter: VHDXLogWriter?
    /// The header's LogGuid points at this session's log (set once the first entry is stable).
    var logGuidInHeader = false
    /// Writes not yet flushed with fdatasync.
    var unsynced = false
    /// BAT entries changed in memory but not yet logged.
    var pendingBAT = Set<Int>()
    /// Bitmap sectors (chunk << 8 | sector) changed in memory but not yet logged.
    var pendingBitmap = Set<UInt64>()
    /// `fileEnd` when the pending changes were last logged.
    var committedEnd: UInt64 = 0
    /// Log entries written in this session.
    var logEntriesWritten = 0
}

/// The write session's steps: header updates, syncs, and the log entries that carry every metadata change.
extension VHDXImage {
    /// The sectors holding the pending BAT and bitmap changes, as they are in memory now.
    /// Pending bitmaps stay cached (`bitmap(chunk:)` never drops them), so a missing one is a bug
    /// here, reported rather than logged as zeros.
    func pendingChanges() throws -> [(UInt64, [UInt8])] {
        var changes: [(UInt64, [UInt8])] = try session.pendingBitmap.sorted().map { key in
            let chunk = key >> 8, sector = Int(key & 0xFF)
            let e = VHDXBATEntry(raw: bat[geometry.bitmapIndex(chunk: chunk)])
            guard let bits = bitmaps[chunk] else {
                throw DiskError.corrupt(path: path.string, reason: "the changed sector bitmap of chunk \(chunk) is no longer in memory (an engine bug); the file keeps its last logged state")
            }
            return (e.fileOffset + UInt64(sector) * 4096, Array(bits[sector * 4096..<(sector + 1) * 4096]))
        }
        changes += batSectors(session.pendingBAT)
        return changes
    }

    /// Syncs file data (fdatasync) if anything was written since the last sync.
    func syncIfNeeded() throws {
        guard session.unsynced else { return }
        try store.flushData()
        session.unsynced = false
    }

    /// Updates the header once per session before the first change: a new FileWriteGuid, and a new
    /// DataWriteGuid before the first change a reader could see.
    func beginSession(dataWrite: Bool) throws {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        guard !session.fileWriteUpdated || (dataWrite && !session.dataWriteUpdated) else { return }
        if staged {
            // The file was created in this session: its GUIDs are new already.
            session.fileWriteUpdated = true
            session.dataWriteUpdated = session.dataWriteUpdated || dataWrite
            return
        }
        var h = header
        if !session.fileWriteUpdated { h.fileWriteGuid = UUID() }
        if dataWrite { h.dataWriteGuid = UUID() }
        try commitHeader(h, twice: true)
        session.fileWriteUpdated = true
        if dataWrite { session.dataWriteUpdated = true }
    }

    /// Writes `h` (with the next sequence number) over the non-current header and flushes; with `twice`,
    /// over the other one too, so both hold the same state.
    func commitHeader(_ h: VHDXHeader, twice: Bool) throws {
        for _ in 0..<(twice ? 2 : 1) {
            var next = h
            next.sequenceNumber = header.sequenceNumber + 1
            let slot = 1 - headerIndex
            try store.write(next.encode(), at: VHDXHeader.offsets[slot])
            try store.flush()
            header = next
            headerIndex = slot
        }
    }

    /// Logs `changes` (4 KiB sectors), flushes, then writes them in place. Large change sets are split into
    /// several entries; every payload write of the call is flushed before the first entry.
    func logAndApply(_ changes: [(UInt64, [UInt8])], zeros: [(UInt64, UInt64)] = [], flushedFileOffset: UInt64? = nil) throws {
        var merged: [UInt64: [UInt8]] = [:]
        for (offset, sector) in try pendingChanges() + changes { merged[offset] = sector }
        session.pendingBAT.removeAll()
        session.pendingBitmap.removeAll()
        session.committedEnd = fileEnd
        let changes = merged.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        guard !changes.isEmpty || !zeros.isEmpty || flushedFileOffset != nil else { return }
        try beginSession(dataWrite: false)
        if diskFileSize < fileEnd {
            try store.truncate(to: fileEnd)
            diskFileSize = fileEnd
            session.unsynced = true
        }
        if staged {
            // Nothing reads the file before the final flush: the changes go straight into place.
            for (offset, length) in zeros { try store.writeZeros(count: length, at: offset) }
            for (offset, sector) in changes { try store.write(sector, at: offset) }
            session.unsynced = true
            return
        }
        var writer = session.logWriter ?? VHDXLogWriter(logOffset: header.logOffset, logLength: Int(header.logLength), guid: UUID())
        defer { session.logWriter = writer }
        let perEntry = writer.maxDataSectors
        var descriptors: [VHDXLogDescriptor] = zeros.map { .zero(fileOffset: $0.0, length: $0.1) }
            + changes.map { .data(fileOffset: $0.0, sector: $0.1) }
        repeat {
            let take = min(descriptors.count, perEntry)
            let batch = Array(descriptors[..<take])
            descriptors.removeFirst(take)
            try syncIfNeeded()  // payload, and the previous entry's in-place writes, are stable first
            let (at, bytes) = writer.next(batch, flushedFileOffset: flushedFileOffset ?? diskFileSize / VHDXSize.mib * VHDXSize.mib,
                                          lastFileOffset: max(fileEnd, flushedFileOffset ?? 0))
            try store.write(bytes, at: at)
            session.unsynced = true
            try syncIfNeeded()
            session.logEntriesWritten += 1
            if !session.logGuidInHeader {
                // The entry is stable before the header points at it: a crash in between leaves a clean log.
                var h = header
                h.logGuid = writer.guid
                try commitHeader(h, twice: false)
                session.logGuidInHeader = true
            }
            FaultInjection.crash(at: .afterLogFlush)
            for d in batch {
                switch d {
                case let .data(offset, sector): try store.write(sector, at: offset)
                case let .zero(offset, length): try store.writeZeros(count: length, at: offset)
                }
            }
            session.unsynced = true
        } while !descriptors.isEmpty
    }
}
