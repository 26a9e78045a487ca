import Storage
import struct Foundation.UUID
import SystemPackage

/// Resize, reparent and compact. Each change is ordered so that a crash at any point leaves a
/// readable image in the old or the new state: new structures are written to free space and made
/// durable before the one small in-place write that switches to them.
extension VHDImage {
    /// Grows the virtual disk. Fixed images move their footer to the new end; dynamic ones grow the
    /// BAT (relocating it to the end of the file when data follows it). Shrinking is refused.
    ///
    /// Both size fields of the footer take the new size. The specification calls the original size
    /// "informational" (the size at creation) and the current size the one that changes on expansion;
    /// but readers disagree on which one to use: qemu (block/vpc.c) and Hyper-V read the current size,
    /// while libvhdi (and every tool built on it: pyvhdi, vhdimount, dfvfs, plaso) reports the original
    /// size as the media size. Setting both keeps all of them agreeing on the resized disk; nothing
    /// reads the original size as a record of the creation size.
    public func resize(to newSize: UInt64) throws {
        guard newSize > 0, newSize % 512 == 0, newSize <= VHDFormat.maximumSize else {
            throw DiskError.invalidArgument("\(path.string): VHD virtual size \(newSize) must be a positive multiple of 512 bytes up to 2040 GiB")
        }
        guard newSize >= virtualSize else {
            throw DiskError.unsupported(path: path.string, reason: "a VHD cannot shrink (from \(ByteCount.format(virtualSize)) to \(ByteCount.format(newSize)), \(virtualSize) to \(newSize) bytes): its smallest size is its current \(ByteCount.format(virtualSize)) (\(virtualSize) bytes); converting it to VHDX or raw makes a copy that can shrink")
        }
        guard store.isWritable else { throw StorageError.readOnly(path: path.string) }
        guard newSize != virtualSize else {
            // Already this size. A resize killed between its two footer writes leaves the copy at 0
            // stale: a re-run completes it.
            if header != nil, try store.read(count: 512, at: 0) != footer.bytes { try writeFooters(footer) }
            return
        }
        try flush()
        try cleanTail()  // leftovers of a killed write go first: the footer and any new table follow the last block
        var newFooter = footer
        newFooter.currentSize = newSize
        newFooter.originalSize = newSize
        newFooter.geometry = VHDGeometry(forSize: newSize)
        // The CHS size rule cannot express arbitrary sizes: record a creator whose rule is the
        // current size (as Hyper-V does when it expands a disk).
        newFooter.creatorApplication = VHDBytes.code("win ")
        guard var header else {
            try resizeFixed(to: newSize, footer: newFooter)
            return
        }
        let entries = UInt32((newSize + UInt64(header.blockSize) - 1) / UInt64(header.blockSize))
        if entries > header.maxTableEntries {
            let oldEnd = header.tableOffset + UInt64(header.maxTableEntries) * 4
            let newEnd = header.tableOffset + UInt64(entries) * 4
            if newEnd <= nextStructure(after: header.tableOffset) {
                // Room behind the table: mark the new entries unused, then let the header count them.
                try store.write([UInt8](repeating: 0xFF, count: Int(newEnd - oldEnd)), at: oldEnd)
                try store.flush()
            } else {
                // Data follows the table: write a larger copy at the end, then point the header at it.
                try cleanTail()
                let tableOffset = VHDBytes.roundUp(footerOffset, 512)
                let tableBytes = VHDBytes.roundUp(UInt64(entries) * 4, 512)
                var bytes = [UInt8](repeating: 0xFF, count: Int(tableBytes))
                for (i, e) in bat.enumerated() { VHDBytes.put32(&bytes, i * 4, e) }
                try store.write(bytes, at: tableOffset)
                try store.write(footer.bytes, at: tableOffset + tableBytes)
                footerOffset = tableOffset + tableBytes
                try store.flush()
                header.tableOffset = tableOffset
            }
            header.maxTableEntries = entries
            try store.write(header.bytes, at: footer.dataOffset)
            try store.flush()
            self.header = header
            bat += [UInt32](repeating: Self.unused, count: Int(entries) - bat.count)
        }
        try writeFooters(newFooter)
    }

    private func resizeFixed(to newSize: UInt64, footer newFooter: VHDFooter) throws {
        // The new space starts at the old virtual end. The end footer normally sits there too, but a
        // resize that failed or was killed after its first step left it further on (at the size it
        // aimed for), with the older footer's bytes still at the old end: all of that must read as zeros.
        let oldSize = virtualSize
        let oldFooter = footerOffset
        // 1. A copy of the old footer at the new end (the file cut there if an earlier attempt made it
        //    longer): the image still reads as the old size.
        try store.write(footer.bytes, at: newSize)
        if try store.size() > newSize + 512 { try store.truncate(to: newSize + 512) }
        try store.preallocate(at: oldSize, length: newSize + 512 - oldSize)
        try store.flush()
        // 2. Zeros where footers were (new space reads as zeros).
        for spot in Set([oldSize, oldFooter]) where spot < newSize {
            try store.writeZeros(count: min(512, newSize - spot), at: spot)
        }
        try store.flush()
        footerOffset = newSize
        // 3. The footer with the new size.
        try writeFooters(newFooter)
    }

    /// The unique id lives in the footer: both copies are rewritten, the end one first.
    public func adoptIdentity(_ identity: UUID) throws {
        guard store.isWritable else { throw StorageError.readOnly(path: path.string) }
        try flush()
        var next = footer
        next.uniqueID = identity
        try writeFooters(next)
    }

    /// Writes the end footer (and, for dynamic images, the copy at 0) and adopts it.
    func writeFooters(_ newFooter: VHDFooter) throws {
        try store.write(newFooter.bytes, at: footerOffset)
        try store.flush()
        if header != nil {
            try store.write(newFooter.bytes, at: 0)
            try store.flush()
        }
        footer = newFooter
        footerSource = "end"
        let rule = newFooter.sizeRule
        virtualSize = rule.size
        sizeRule = rule.rule
    }

    /// The first structure (header, locator data, block or footer) that starts after `offset`.
    func nextStructure(after offset: UInt64) -> UInt64 {
        var next = footerOffset
        if footer.dataOffset > offset { next = min(next, footer.dataOffset) }
        if let header {
            for l in header.locators where l.isUsed && l.dataOffset > offset { next = min(next, l.dataOffset) }
        }
        for e in bat where e != Self.unused && UInt64(e) * 512 > offset { next = min(next, UInt64(e) * 512) }
        return next
    }

    /// Records a new parent: its identity, name and locators (W2ru for relative, W2ku for absolute
    /// paths). The locator data goes to the end of the file first; the header is switched last.
    public func setParent(_ link: ParentLink) throws {
        guard isDifferencing, var header else {
            throw DiskError.unsupported(path: path.string, reason: "only a differencing VHD has a parent (this one is \(type.rawValue))")
        }
        guard store.isWritable else { throw StorageError.readOnly(path: path.string) }
        let usable = link.locators.filter { $0.kind != .volume }.prefix(8)
        try flush()
        try cleanTail()
        var next = VHDBytes.roundUp(footerOffset, 512)
        var entries = [VHDLocatorEntry](repeating: VHDLocatorEntry(), count: 8)
        for (i, l) in usable.enumerated() {
            var bytes = VHDBytes.utf16(l.path, bigEndian: false)
            let space = VHDBytes.roundUp(UInt64(max(bytes.count, 1)), 512)
            entries[i] = VHDLocatorEntry(platformCode: l.kind == .relative ? VHDLocatorEntry.relativeCode : VHDLocatorEntry.absoluteCode,
                                         dataSpace: UInt32(space), dataLength: UInt32(bytes.count), dataOffset: next)
            bytes += [UInt8](repeating: 0, count: Int(space) - bytes.count)
            try store.write(bytes, at: next)
            next += space
        }
        try store.write(footer.bytes, at: next)
        footerOffset = next
        try store.flush()
        header.parentID = link.expectedID
        header.locators = entries
        let name = usable.first { $0.kind == .absolute }?.path ?? usable.first?.path ?? ""
        header.parentName = name.utf16.count < 256 ? name : String(name.split(separator: "/").last ?? "")
        try store.write(header.bytes, at: footer.dataOffset)
        try store.flush()
        self.header = header
        locatorPaths = Array(usable)
    }

    /// Releases blocks that read as zeros (in a differencing image only where the parent reads zeros
    /// too), moves the last blocks into the holes, and shortens the store. Returns the bytes reclaimed.
    public func compact(progress: ProgressReporter?) throws -> UInt64 {
        guard let header else {
            throw DiskError.unsupported(path: path.string, reason: "a fixed VHD stores every block; convert it to a dynamic VHD to compact it")
        }
        guard store.isWritable else { throw StorageError.readOnly(path: path.string) }
        if isDifferencing, parent == nil {
            throw DiskError.unsupported(path: path.string, reason: "compacting a differencing VHD needs its parent chain open (to see what the parent reads)")
        }
        try flush()
        let before = try store.allocatedBytes()
        let bs = Int(header.blockSize)
        let slot = UInt64(bitmapBytes) + UInt64(bs)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bs, alignment: 4096)
        defer { buffer.deallocate() }
        var released: [Int] = []
        for index in bat.indices where bat[index] != Self.unused {
            let start = UInt64(index) * UInt64(bs)
            progress?.report(min(start, virtualSize), of: virtualSize)
            let end = min(start + UInt64(bs), virtualSize)
            guard start < end else { continue }
            var zero = true
            for e in try extents(in: start..<end) {
                guard case .data(let fileOffset) = e.kind else { continue }
                let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<e.range.count])
                try store.read(into: slice, at: fileOffset)
                if !slice.allSatisfy({ $0 == 0 }) { zero = false; break }
                if isDifferencing {
                    try readBelow(into: slice, at: e.range.lowerBound)
                    if !slice.allSatisfy({ $0 == 0 }) { zero = false; break }
                }
            }
            if zero { released.append(index) }
        }
        progress?.report(virtualSize, of: virtualSize)
        let orphaned = layout?.orphanedSlots ?? []
        guard !released.isEmpty || !orphaned.isEmpty || structuresEnd() < footerOffset else { return 0 }
        let free = released.map { UInt64(bat[$0]) * 512 } + orphaned
        if !released.isEmpty {
            for index in released { bat[index] = Self.unused }
            try writeTable()
            try store.flush()
        }
        let holes = try pack(into: free)
        try reclaimOrphanedTail()
        for hole in holes where hole + slot <= footerOffset { _ = try store.punchHole(at: hole, length: slot) }
        try store.flush()
        let after = try store.allocatedBytes()
        return before > after ? before - after : 0
    }

    /// Reclaims the space no BAT entry references (orphaned block slots and the tail), without
    /// releasing any block; what `check --repair` does. Returns the bytes the file shrank by.
    @discardableResult
    public func reclaimOrphanedSpace() throws -> UInt64 {
        guard store.isWritable else { throw StorageError.readOnly(path: path.string) }
        guard let layout else { return 0 }
        try flush()
        let before = try store.size()
        let holes = try pack(into: layout.orphanedSlots)
        try reclaimOrphanedTail()
        for hole in holes where hole + layout.slot <= footerOffset { _ = try store.punchHole(at: hole, length: layout.slot) }
        try store.flush()
        let after = try store.size()
        return before > after ? before - after : 0
    }

    /// Moves the last blocks into the `free` slots before them, one at a time: copy, sync, repoint
    /// the BAT entry, sync. A kill at any point leaves each block readable at its old or its new
    /// place (the other copy then orphaned). Returns the slots still free, to punch out.
    func pack(into free: [UInt64]) throws -> [UInt64] {
        guard let header, !free.isEmpty else { return free }
        let slot = UInt64(bitmapBytes) + UInt64(header.blockSize)
        var free = free.sorted()
        var live = bat.indices.filter { bat[$0] != Self.unused }.sorted { bat[$0] > bat[$1] }
        let copyBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { copyBuffer.deallocate() }
        while let hole = free.first, let last = live.first, hole < UInt64(bat[last]) * 512 {
            let from = UInt64(bat[last]) * 512
            try store.copyRange(from: store, sourceOffset: from, to: hole, length: slot, buffer: copyBuffer)
            try store.flush()
            bat[last] = UInt32(hole / 512)
            try writeTable(entries: last...last)
            try store.flush()
            free.removeFirst()
            free.append(from)
            free.sort()
            live.removeFirst()
        }
        dropCaches()
        return free
    }

    /// Moves the end footer back to the end of the last structure or block and cuts the file after
    /// it. The footer goes over unreferenced bytes and is synced before the cut, so the file ends with
    /// a valid footer at every moment. Returns the bytes cut.
    @discardableResult
    func reclaimOrphanedTail() throws -> UInt64 {
        let end = structuresEnd()
        guard header != nil, end < footerOffset else { return 0 }
        let size = try store.size()
        try store.write(footer.bytes, at: end)
        try store.flush()
        try store.truncate(to: end + 512)
        try store.flush()
        footerOffset = end
        footerSource = "end"
        return size > end + 512 ? size - end - 512 : 0
    }

    /// Writes BAT entries (all, or the sectors holding `entries`) from memory.
    func writeTable(entries: ClosedRange<Int>? = nil) throws {
        guard let header, !bat.isEmpty else { return }
        let range = entries ?? 0...(bat.count - 1)
        let lo = range.lowerBound / 128 * 128, hi = min(bat.count, (range.upperBound / 128 + 1) * 128)
        var bytes = [UInt8](repeating: 0xFF, count: (hi - lo) * 4)
        for i in lo..<hi { VHDBytes.put32(&bytes, (i - lo) * 4, bat[i]) }
        try store.write(bytes, at: header.tableOffset + UInt64(lo) * 4)
    }
}
