import Storage
import SystemPackage
import struct Foundation.UUID

extension VHDXImage {
    /// The 4 KiB sectors of the metadata region that differ between the current bytes and `newRaw`.
    func metadataChanges(_ newRaw: [UInt8]) -> [(UInt64, [UInt8])] {
        stride(from: 0, to: newRaw.count, by: 4096).compactMap { o in
            let new = Array(newRaw[o..<min(o + 4096, newRaw.count)])
            let old = o < metadataRaw.count ? Array(metadataRaw[o..<min(o + 4096, metadataRaw.count)]) : []
            return new == old ? nil : (metadataRegion.fileOffset + UInt64(o), new + [UInt8](repeating: 0, count: 4096 - new.count))
        }
    }

    /// Changes the virtual size through the log. Growing past the BAT region's room moves the BAT to a
    /// larger region; shrinking needs the cut-off range to hold no data. Differencing images keep their
    /// parent's size.
    public func resize(to newSize: UInt64) throws {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        guard newSize != virtualSize else { return }
        guard !meta.hasParent else {
            throw DiskError.unsupported(path: path.string, reason: "a differencing VHDX has its parent's size; merge it or resize the whole chain")
        }
        guard newSize > 0, newSize <= 64 << 40, newSize % geometry.logicalSectorSize == 0 else {
            throw DiskError.invalidArgument("\(path.string): new size \(newSize) must be a nonzero multiple of the logical sector size \(logicalSectorSize), at most 64 TiB")
        }
        let newGeometry = VHDXGeometry(virtualSize: newSize, blockSize: geometry.blockSize, logicalSectorSize: geometry.logicalSectorSize)
        let needed = newGeometry.entryCount(differencing: false) * 8
        if newSize < virtualSize {
            let dataEnd = try extents(in: newSize..<virtualSize).last { if case .data = $0.kind { true } else { false } }?.range.upperBound
            if let dataEnd {
                throw ResizeOperation.shrinkRefusal(path, to: newSize, dataEnd: dataEnd, alignment: geometry.logicalSectorSize)
            }
        }
        try beginSession(dataWrite: true)
        var relocation: [(UInt64, [UInt8])] = []
        if needed > UInt64(batRegion.length) {
            relocation = try relocateBAT(entries: max(newGeometry.reservedEntryCount, needed / 8))
        }
        let wanted = Int(min(VHDXSize.roundUp(max(newGeometry.reservedEntryCount * 8, needed), 4096), UInt64(batRegion.length)) / 8)
        if bat.count < wanted {
            let raw = try readMeta(batRegion.fileOffset + UInt64(bat.count) * 8, (wanted - bat.count) * 8)
            bat += (0..<(wanted - bat.count)).map { raw.le64($0 * 8) }
        }
        var dirty = Set<Int>()
        if newSize < virtualSize {
            for block in newGeometry.payloadBlocks..<geometry.payloadBlocks where bat[geometry.payloadIndex(block)] != 0 {
                bat[geometry.payloadIndex(block)] = 0
                dirty.insert(geometry.payloadIndex(block))
            }
        } else {
            for block in geometry.payloadBlocks..<newGeometry.payloadBlocks {
                let i = newGeometry.payloadIndex(block)
                if type == .fixed {
                    let at = try allocate(geometry.blockSize)
                    try store.preallocate(at: at, length: geometry.blockSize)
                    session.unsynced = true
                    bat[i] = VHDXBATEntry(state: VHDXBlockState.fullyPresent.rawValue, fileOffset: at).raw
                    dirty.insert(i)
                } else if bat[i] != 0 {
                    bat[i] = 0
                    dirty.insert(i)
                }
            }
        }
        guard let loc = meta.itemLocations[VHDXMetadata.virtualDiskSize] else {
            throw DiskError.corrupt(path: path.string, reason: "metadata region: the virtual disk size item has no location")
        }
        var newRaw = metadataRaw
        newRaw.setLE64(loc.offset, newSize)
        try logAndApply(relocation + batSectors(dirty) + metadataChanges(newRaw))
        metadataRaw = newRaw
        meta.virtualSize = newSize
        geometry = newGeometry
    }

    /// Moves the BAT to a larger region at the end of the file: the new region is written and flushed
    /// first; the region tables (both copies) switch to it through the log, with the resize's other changes.
    /// Returns the region table sectors to log.
    func relocateBAT(entries: UInt64) throws -> [(UInt64, [UInt8])] {
        let length = VHDXSize.roundUp(entries * 8, VHDXSize.mib)
        guard length <= UInt64(UInt32.max) / VHDXSize.mib * VHDXSize.mib else {
            throw DiskError.unsupported(path: path.string, reason: "the BAT would need \(length) bytes, more than a region can hold")
        }
        let at = try allocate(length)
        try store.truncate(to: fileEnd)
        diskFileSize = fileEnd
        var bytes = [UInt8](repeating: 0, count: bat.count * 8)
        for (i, e) in bat.enumerated() where e != 0 { bytes.setLE64(i * 8, e) }
        try store.write(bytes, at: at)
        session.unsynced = true
        var table = regionTable
        for i in table.entries.indices where table.entries[i].guid == VHDXRegionTable.bat {
            table.entries[i].fileOffset = at
            table.entries[i].length = UInt32(length)
        }
        let encoded = table.encode()
        var changes: [(UInt64, [UInt8])] = []
        for base in VHDXRegionTable.offsets {
            for o in stride(from: 0, to: encoded.count, by: 4096) { changes.append((base + UInt64(o), Array(encoded[o..<o + 4096]))) }
        }
        regionTable = table
        batRegion = VHDXRegionTable.Entry(guid: VHDXRegionTable.bat, fileOffset: at, length: UInt32(length), required: true)
        // Pending BAT sectors now belong in the new region; they are logged with the rest.
        return changes
    }

    /// The DataWriteGuid is in the header: after a flush (so no pending write of this session can
    /// renew it), both headers are rewritten with it. A session that writes data after this gives the
    /// image a new one, as the spec requires.
    public func adoptIdentity(_ identity: UUID) throws {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        try flush()
        try beginSession(dataWrite: false)
        var h = header
        h.dataWriteGuid = identity
        try commitHeader(h, twice: true)
    }

    /// Rewrites the parent locator (parent_linkage and paths) through the log.
    public func setParent(_ link: ParentLink) throws {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        guard meta.hasParent, let loc = meta.itemLocations[VHDXMetadata.parentLocator] else {
            throw DiskError.unsupported(path: path.string, reason: "only a differencing VHDX has a parent locator")
        }
        let replaced: Set<String> = ["parent_linkage", "parent_linkage2", "relative_path", "volume_path", "absolute_win32_path"]
        var entries = (meta.parentEntries ?? []).filter { !replaced.contains($0.0) }
        entries.insert(("parent_linkage", VHDXGUID.braced(link.expectedID)), at: 0)
        for l in link.locators {
            entries.append((l.kind == .relative ? "relative_path" : l.kind == .volume ? "volume_path" : "absolute_win32_path", l.path))
        }
        let item = VHDXMetadata.encodeParentLocator(entries)
        let limit = meta.itemLocations.values.map(\.offset).filter { $0 > loc.offset }.min() ?? metadataRaw.count
        guard loc.offset + item.count <= limit else {
            throw DiskError.unsupported(path: path.string, reason: "the new parent locator (\(item.count) bytes) does not fit the \(limit - loc.offset) bytes its metadata item has")
        }
        var newRaw = metadataRaw
        newRaw.replaceSubrange(loc.offset..<loc.offset + loc.length, with: [UInt8](repeating: 0, count: loc.length))
        newRaw.replaceSubrange(loc.offset..<loc.offset + item.count, with: item)
        newRaw.setLE32(32 + 32 * loc.tableIndex + 20, UInt32(item.count))
        try beginSession(dataWrite: false)
        try logAndApply(metadataChanges(newRaw))
        metadataRaw = newRaw
        meta.parentEntries = entries
        meta.itemLocations[VHDXMetadata.parentLocator]?.length = item.count
    }

    /// Turns blocks that hold only zeros into NOT_PRESENT (in a differencing image only where the parent
    /// reads zeros too: libvhdi reads ZERO blocks of a differencing image from the parent, so Bulwark never
    /// writes that state), punches their space out and truncates the file's free tail.
    public func compact(progress: ProgressReporter?) throws -> UInt64 {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        guard type != .fixed, !meta.leaveBlocksAllocated else { return 0 }
        if meta.hasParent && parent == nil { return 0 }
        let before = try store.allocatedBytes()
        let bs = geometry.blockSize
        let chunk = Int(min(bs, 4 << 20))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        func readsZero(_ reader: (UnsafeMutableRawBufferPointer, UInt64) throws -> Void, from start: UInt64, count: UInt64) throws -> Bool {
            var done: UInt64 = 0
            while done < count {
                let n = Int(min(UInt64(chunk), count - done))
                let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<n])
                try reader(slice, start + done)
                if !slice.allSatisfy({ $0 == 0 }) { return false }
                done += UInt64(n)
            }
            return true
        }
        var dirty = Set<Int>()
        var dirtyBitmap = Set<UInt64>()
        var freed: [UInt64] = []
        for block in 0..<geometry.payloadBlocks {
            progress?.report(block * bs, of: virtualSize)
            let i = geometry.payloadIndex(block)
            let e = VHDXBATEntry(raw: bat[i])
            guard e.state == VHDXBlockState.fullyPresent.rawValue || e.state == VHDXBlockState.partiallyPresent.rawValue else { continue }
            let start = block * bs
            let span = min(bs, virtualSize - start)
            guard try readsZero({ try self.read(into: $0, at: $1) }, from: start, count: span) else { continue }
            if let parent {
                guard try readsZero({ try parent.read(into: $0, at: $1) }, from: start, count: span) else { continue }
            }
            bat[i] = 0
            dirty.insert(i)
            freed.append(e.fileOffset)
            // A differencing block's sector bits go too: a released block reads from the parent, and a
            // reader that looks at the bitmap first (libvhdi does) must not find sectors "present".
            if meta.hasParent {
                try clearBits(block: block, dirtyBitmap: &dirtyBitmap)
                session.pendingBitmap.formUnion(dirtyBitmap)  // pending bitmaps stay cached until logged
            }
        }
        progress?.report(virtualSize, of: virtualSize)
        guard !dirty.isEmpty else { return try reclaimOrphanedTail() }
        // The new end: everything still referenced.
        var end = max(header.logOffset + UInt64(header.logLength), batRegion.range.upperBound, metadataRegion.range.upperBound)
        for (i, raw) in bat.enumerated() {
            let e = VHDXBATEntry(raw: raw)
            let isBitmap = (UInt64(i) + 1) % (geometry.chunkRatio + 1) == 0
            if isBitmap, e.state == VHDXBitmapState.present { end = max(end, e.fileOffset + VHDXSize.mib) }
            if !isBitmap, e.state == 6 || e.state == 7 { end = max(end, e.fileOffset + bs) }
        }
        end = VHDXSize.roundUp(end, VHDXSize.mib)
        try beginSession(dataWrite: false)
        fileEnd = end
        session.pendingBAT.formUnion(dirty)
        try logAndApply(try pendingChanges(), flushedFileOffset: end)
        try syncIfNeeded()
        for offset in freed where offset < end { _ = try store.punchHole(at: offset, length: bs) }
        if diskFileSize > end {
            try store.truncate(to: end)
            diskFileSize = end
        }
        try store.flush()
        let after = try store.allocatedBytes()
        return before > after ? before - after : 0
    }

    /// Cuts the file after the last referenced byte (space MS-VHDX allows, but that only a write killed
    /// before its log entry, or another tool's reservation, leaves there). No log entry is needed:
    /// nothing references the bytes cut, and a crash before the cut leaves the longer file with the
    /// same references. Returns the allocated bytes released.
    @discardableResult
    public func reclaimOrphanedTail() throws -> UInt64 {
        guard isWritable else { throw StorageError.readOnly(path: path.string) }
        try flush()
        guard diskFileSize > fileEnd else { return 0 }
        let before = try store.allocatedBytes()
        try beginSession(dataWrite: false)
        try store.truncate(to: fileEnd)
        diskFileSize = fileEnd
        try store.flush()
        let after = try store.allocatedBytes()
        return before > after ? before - after : 0
    }
}
