import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk
import Storage

/// Damage and leftovers the formats must notice: space an interrupted write leaves behind, files
/// named as images without their signatures, VHDX regions past the end, footers both copies get
/// wrong, and the size fields a resize must set for every reader.
@Suite struct FormatHardeningTests {
    static func size(_ path: String) throws -> UInt64 {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.uint64Value ?? 0
    }

    static func readAll(_ path: String, format: DiskFormat? = nil) throws -> [UInt8] {
        let image = try DiskImages.openLevel(FilePath(path), format: format)
        defer { try? image.close() }
        return try image.read(count: Int(image.virtualSize), at: 0)
    }

    /// The file as a kill would leave it after `writes` went into a copy of `path` and before any
    /// flush: blocks appended, BAT (VHD) or log entry (VHDX) not yet written.
    static func killedCopy(of path: String, as copy: String, writes: [(UInt64, [UInt8])]) throws {
        try FileManager.default.copyItem(atPath: path, toPath: copy + ".work")
        let image = try DiskImages.openLevel(FilePath(copy + ".work"), writable: true)
        for (offset, bytes) in writes { try image.write(bytes, at: offset) }
        try FileManager.default.copyItem(atPath: copy + ".work", toPath: copy)
        try image.close()
        try FileManager.default.removeItem(atPath: copy + ".work")
    }

    // MARK: B: orphaned space

    @Test func aKilledVHDWriteLeavesOrphansThatCheckReportsAndRepairReclaims() throws {
        let dir = try TempDir()
        let path = try VHDErrorTests.makeDynamic(dir, size: 32 << 20)
        let original = try Self.readAll(path)
        var rng = SeededRandom(seed: 21)
        let writes: [(UInt64, [UInt8])] = [(12 << 20, rng.bytes(3 << 20)), (20 << 20, rng.bytes(5000))]
        let crashed = dir.file("crashed.vhd")
        try Self.killedCopy(of: path, as: crashed, writes: writes)
        #expect(try Self.size(crashed) > Self.size(path), "the kill left appended blocks")
        #expect(try Self.readAll(crashed) == original, "the killed write is invisible")

        let report = try VHDFormat.check(FilePath(crashed), repair: false)
        #expect(!report.isClean, "orphaned blocks are reported: \(report.problems)")
        #expect(report.problems.contains { $0.repairable && $0.message.contains("referenced by no BAT entry") })

        // A kill while the tail is reclaimed: the footer already moved, the cut not yet done.
        let halfway = dir.file("halfway.vhd")
        try FileManager.default.copyItem(atPath: crashed, toPath: halfway)
        let probe = try VHDFormat.openImage(try BlockFile.open(FilePath(halfway), writable: false))
        let footer = probe.footer.bytes, end = probe.structuresEnd()
        try probe.close()
        try VHDErrorTests.patch(halfway, at: end, footer)
        #expect(try Self.readAll(halfway) == original)
        #expect(!(try VHDFormat.check(FilePath(halfway), repair: false).isClean))

        for damaged in [crashed, halfway] {
            let repaired = try VHDFormat.check(FilePath(damaged), repair: true)
            #expect(repaired.isClean && repaired.problems.isEmpty, "\(repaired)")
            #expect(repaired.repairs.contains { $0.contains("reclaimed") })
            #expect(try Self.size(damaged) == Self.size(path), "the file is back to its size before the write")
            #expect(try Self.readAll(damaged) == original)
            try Ops.qemuCompare(FilePath(damaged), .vhd, expected: original, in: dir)
        }
    }

    @Test func aRerunAfterAKilledVHDWriteReusesTheSpaceAndCompactReclaimsIt() throws {
        let dir = try TempDir()
        let path = try VHDErrorTests.makeDynamic(dir, size: 32 << 20)
        var rng = SeededRandom(seed: 22)
        let writes: [(UInt64, [UInt8])] = [(8 << 20, rng.bytes(6 << 20))]
        let crashed = dir.file("crashed.vhd")
        try Self.killedCopy(of: path, as: crashed, writes: writes)
        // Three kills of the same write, then a complete run, against one clean run.
        var current = crashed
        for round in 0..<2 {
            let next = dir.file("crashed\(round).vhd")
            try Self.killedCopy(of: current, as: next, writes: writes)
            current = next
        }
        let clean = dir.file("clean.vhd")
        try FileManager.default.copyItem(atPath: path, toPath: clean)
        for target in [clean, current] {
            let image = try DiskImages.openLevel(FilePath(target), writable: true)
            for (offset, bytes) in writes { try image.write(bytes, at: offset) }
            try image.close()
        }
        #expect(try Self.size(current) == Self.size(clean), "a re-run reuses what the killed runs appended")
        #expect(try Self.readAll(current) == Self.readAll(clean))
        #expect(try VHDFormat.check(FilePath(current), repair: false).problems.isEmpty)

        // compact reclaims an orphaned tail even when no block holds only zeros.
        let orphaned = dir.file("orphaned.vhd")
        try Self.killedCopy(of: path, as: orphaned, writes: writes)
        let result = try CompactOperation.compact(path: FilePath(orphaned))
        #expect(result.bytesReclaimed > 0)
        #expect(try Self.size(orphaned) == Self.size(path))
        #expect(try Self.readAll(orphaned) == Self.readAll(path))
        #expect(try VHDFormat.check(FilePath(orphaned), repair: false).problems.isEmpty)
    }

    @Test func orphanedSlotsBetweenVHDBlocksAreReportedAndPacked() throws {
        let dir = try TempDir()
        let path = dir.file("gaps.vhd")
        let image = try DiskImages.create(at: FilePath(path), options: CreateOptions(format: .vhd, type: .dynamic, virtualSize: 16 << 20, blockSize: 1 << 20))
        var rng = SeededRandom(seed: 23)
        for block in [2, 5, 9, 11] { try image.write(rng.bytes(1 << 20), at: UInt64(block) << 20) }
        try image.close()
        // Forget block 5: its slot, between blocks 2 and 9, is now referenced by nothing (as when a
        // later session appended past the blocks of a killed one).
        var expected = try Self.readAll(path)
        expected.replaceSubrange((5 << 20)..<(6 << 20), with: [UInt8](repeating: 0, count: 1 << 20))
        try VHDErrorTests.patch(path, at: 1536 + 5 * 4, [0xFF, 0xFF, 0xFF, 0xFF])
        let before = try Self.size(path)
        let report = try VHDFormat.check(FilePath(path), repair: false)
        #expect(report.problems.contains { $0.message.contains("1 block slot between blocks") }, "\(report.problems)")
        let repaired = try VHDFormat.check(FilePath(path), repair: true)
        #expect(repaired.problems.isEmpty, "\(repaired)")
        #expect(try Self.size(path) == before - (512 + (1 << 20)), "the last block moved into the slot")
        #expect(try Self.readAll(path) == expected)
        try Ops.qemuCompare(FilePath(path), .vhd, expected: expected, in: dir)
    }

    @Test func aKilledVHDXWriteTailIsReusedReportedAndReclaimed() throws {
        let dir = try TempDir()
        let path = dir.file("disk.vhdx")
        let image = try DiskImages.create(at: FilePath(path), options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: 64 << 20, blockSize: 1 << 20))
        var rng = SeededRandom(seed: 24)
        try image.write(rng.bytes(100_000), at: 0)
        try image.close()
        let original = try Self.readAll(path)
        let crashed = dir.file("crashed.vhdx")
        try Self.killedCopy(of: path, as: crashed, writes: [(8 << 20, rng.bytes(4 << 20))])
        #expect(try Self.size(crashed) >= Self.size(path) + (4 << 20))
        #expect(try Self.readAll(crashed) == original)
        let report = try VHDXFormat.check(FilePath(crashed), repair: false)
        #expect(report.problems.contains { $0.repairable && $0.message.contains("referenced by nothing") }, "\(report.problems)")

        // A new write reuses the space, and reads zeros where the reused block was not written.
        let rerun = dir.file("rerun.vhdx")
        try FileManager.default.copyItem(atPath: crashed, toPath: rerun)
        let small = rng.bytes(4096)
        let writer = try DiskImages.openLevel(FilePath(rerun), writable: true)
        try writer.write(small, at: 8 << 20)
        try writer.close()
        var expected = original
        expected.replaceSubrange((8 << 20)..<(8 << 20) + 4096, with: small)
        #expect(try Self.readAll(rerun) == expected, "stale bytes of the killed write never show")
        #expect(try Self.size(rerun) <= Self.size(crashed))
        try Ops.qemuCompare(FilePath(rerun), .vhdx, expected: expected, in: dir)

        let repaired = try VHDXFormat.check(FilePath(crashed), repair: true)
        #expect(repaired.problems.isEmpty, "\(repaired)")
        #expect(try Self.size(crashed) == Self.size(path))
        #expect(try Self.readAll(crashed) == original)
        let again = dir.file("again.vhdx")
        try Self.killedCopy(of: path, as: again, writes: [(8 << 20, rng.bytes(4 << 20))])
        #expect(try CompactOperation.compact(path: FilePath(again)).bytesReclaimed > 0)
        #expect(try Self.size(again) == Self.size(path))
    }

    // MARK: C: names that promise a format

    @Test func aFileNamedAsAnImageWithoutItsSignatureIsNotRaw() throws {
        let dir = try TempDir()
        let fixed = dir.file("fixed.vhd")
        try DiskImages.create(at: FilePath(fixed), options: CreateOptions(format: .vhd, type: .fixed, virtualSize: 8 << 20)).close()
        let whole = try Data(contentsOf: URL(fileURLWithPath: fixed))
        var cases: [String] = []
        for k in 0..<16 {
            let cut = dir.file("cut\(k).vhd")
            try whole.prefix(whole.count * k / 16 + (k == 0 ? 0 : 7)).write(to: URL(fileURLWithPath: cut))
            cases.append(cut)
        }
        for (name, bytes) in [("empty.vhd", 0), ("one.vhd", 1), ("empty.vhdx", 0), ("one.vhdx", 1), ("one.avhd", 1), ("one.avhdx", 1)] {
            let p = dir.file(name)
            try Data(repeating: 0x41, count: bytes).write(to: URL(fileURLWithPath: p))
            cases.append(p)
        }
        for path in cases {
            let before = try Data(contentsOf: URL(fileURLWithPath: path))
            do {
                _ = try DiskImages.openLevel(FilePath(path))
                Issue.record("\(path) opened")
            } catch let e as DiskError {
                guard case .notRecognized(let p, _, _) = e else { Issue.record("\(path): \(e)"); continue }
                #expect(p == path)
                #expect(e.description.contains("open it as raw to override"))
            }
            let check = try ChainCheck.check(path: FilePath(path))
            #expect(!check.isClean, "check of \(path) is not clean")
            #expect(throws: DiskError.self) { _ = try ResizeOperation.resize(path: FilePath(path), to: 16 << 20) }
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before, "\(path) unchanged")
            // Asked for explicitly, raw opens it.
            let raw = try DiskImages.openLevel(FilePath(path), format: .raw)
            #expect(raw.virtualSize == UInt64(before.count))
            try raw.close()
        }
    }

    @Test func aDynamicVHDCutByOneByteIsNotClean() throws {
        let dir = try TempDir()
        let path = try VHDErrorTests.makeDynamic(dir)
        let original = try Self.readAll(path)
        let size = try Self.size(path)
        try VHDErrorTests.truncate(path, to: size - 1)
        let report = try VHDFormat.check(FilePath(path), repair: false)
        #expect(!report.isClean && report.problems.contains { $0.message.contains("511 bytes") }, "\(report)")
        let repaired = try VHDFormat.check(FilePath(path), repair: true)
        #expect(repaired.problems.isEmpty, "\(repaired)")
        #expect(try Self.size(path) == size)
        #expect(try Self.readAll(path) == original)
    }

    // MARK: D: VHDX regions past the end

    static func editHeaders(_ path: String, _ change: (inout VHDXHeader) -> Void) throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        for offset in VHDXHeader.offsets {
            var h = try VHDXHeader.decode(Array(bytes[Int(offset)..<Int(offset) + VHDXHeader.size])).get()
            change(&h)
            try VHDErrorTests.patch(path, at: offset, h.encode())
        }
    }

    static func editRegions(_ path: String, _ change: (inout VHDXRegionTable) -> Void) throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        for offset in VHDXRegionTable.offsets {
            var t = try VHDXRegionTable.decode(Array(bytes[Int(offset)..<Int(offset) + VHDXRegionTable.size])).get()
            change(&t)
            try VHDErrorTests.patch(path, at: offset, t.encode())
        }
    }

    @Test func vhdxRegionsAndBlocksPastTheEndAreRefusedOnOpen() throws {
        let dir = try TempDir()
        func make(_ name: String) throws -> String {
            let path = dir.file(name)
            let image = try DiskImages.create(at: FilePath(path), options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: 16 << 20, blockSize: 1 << 20))
            try image.write([UInt8](repeating: 5, count: 8192), at: 0)
            try image.close()
            return path
        }
        let tib: UInt64 = 1 << 40
        let log = try make("log.vhdx")
        try Self.editHeaders(log) { $0.logOffset = tib }
        let bat = try make("bat.vhdx")
        try Self.editRegions(bat) { t in for i in t.entries.indices where t.entries[i].guid == VHDXRegionTable.bat { t.entries[i].fileOffset = tib } }
        let meta = try make("meta.vhdx")
        try Self.editRegions(meta) { t in for i in t.entries.indices where t.entries[i].guid == VHDXRegionTable.metadata { t.entries[i].fileOffset = tib } }
        let entry = try make("entry.vhdx")
        let probe = try VHDXImage(store: try BlockFile.open(FilePath(entry), writable: false))
        let batOffset = probe.batRegion.fileOffset
        try probe.close()
        var raw = [UInt8](repeating: 0, count: 8)
        raw.setLE64(0, VHDXBATEntry(state: VHDXBlockState.fullyPresent.rawValue, fileOffset: tib).raw)
        try VHDErrorTests.patch(entry, at: batOffset, raw)

        for (path, fragment) in [(log, "the log (offset \(tib)"), (bat, "the BAT region"), (meta, "the metadata region"), (entry, "BAT entry 0")] {
            let size = try Self.size(path)
            for writable in [false, true] {
                do {
                    let image = try DiskImages.openLevel(FilePath(path), writable: writable)
                    try image.write([1], at: 0)
                    try image.close()
                    Issue.record("\(path) opened")
                } catch let e as DiskError {
                    guard case .corrupt(let p, let reason) = e else { Issue.record("\(path): \(e)"); continue }
                    #expect(p == path)
                    #expect(reason.contains(fragment) && reason.contains("past the end"), "\(reason)")
                }
            }
            #expect(try Self.size(path) == size, "\(path) did not grow")
            let report = try VHDXFormat.check(FilePath(path), repair: false)
            #expect(report.problems.contains { $0.severity == .error && $0.message.contains("past the end") }, "\(report)")
        }
    }

    // MARK: E: a footer checksum both copies get wrong

    @Test func aVHDFooterChecksumWrongInBothIdenticalCopiesOpensReadOnly() throws {
        let dir = try TempDir()
        let path = try VHDErrorTests.makeDynamic(dir)
        let original = try Self.readAll(path)
        let size = try Self.size(path)
        // Byte 80 lies in the footer's unique id: both copies changed alike, checksum left as it was.
        try VHDErrorTests.patch(path, at: 80, [0x5A])
        try VHDErrorTests.patch(path, at: size - 512 + 80, [0x5A])

        let image = try DiskImages.openLevel(FilePath(path))
        #expect(image.warnings.contains { $0.contains("checksum is wrong in both copies") }, "\(image.warnings)")
        #expect(try image.read(count: original.count, at: 0) == original)
        try image.close()
        if let bytes = try Ops.pyvhdiRead([FilePath(path)]) { #expect(bytes == original, "libvhdi reads it too") }
        #expect(try DiskDescription(try DiskImages.openLevel(FilePath(path))).warnings?.isEmpty == false)

        do {
            _ = try DiskImages.openLevel(FilePath(path), writable: true)
            Issue.record("a writable open was allowed")
        } catch let e as DiskError {
            #expect(e.description.contains("checksum") && e.description.contains(path), "\(e)")
        }
        let report = try VHDFormat.check(FilePath(path), repair: false)
        #expect(report.problems.contains { $0.repairable && $0.message.contains("checksum is wrong in both copies") }, "\(report)")
        let repaired = try VHDFormat.check(FilePath(path), repair: true)
        #expect(repaired.problems.isEmpty, "\(repaired)")
        let writable = try DiskImages.openLevel(FilePath(path), writable: true)
        #expect(writable.warnings.isEmpty)
        try writable.close()
        #expect(try Self.readAll(path) == original)
        if try TestEnv.tools("qemu-img") { #expect(try VHDTest.qemuVirtualSize(path) == UInt64(original.count)) }
    }

    // MARK: F: the size fields of a resized VHD

    @Test func aResizedDynamicVHDReportsItsNewSizeToLibvhdiAndQemu() throws {
        let dir = try TempDir()
        let path = try VHDErrorTests.makeDynamic(dir)
        let original = try Self.readAll(path)
        _ = try ResizeOperation.resize(path: FilePath(path), to: 24 << 20)
        let image = try VHDFormat.openImage(try BlockFile.open(FilePath(path), writable: false))
        #expect(image.footer.originalSize == 24 << 20 && image.footer.currentSize == 24 << 20)
        try image.close()
        if try TestEnv.prerequisite(TestEnv.pyvhdiAvailable(), "pyvhdi in /usr/bin/python3") {
            let r = try runChecked("/usr/bin/python3", ["-c", "import sys, pyvhdi\nf = pyvhdi.file()\nf.open(sys.argv[1])\nprint(f.get_media_size())", path])
            #expect(String(decoding: r.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == String(24 << 20))
            let bytes = try #require(try Ops.pyvhdiRead([FilePath(path)]))
            #expect(bytes.count == 24 << 20 && Array(bytes.prefix(original.count)) == original)
        }
        if try TestEnv.tools("qemu-img") { #expect(try VHDTest.qemuVirtualSize(path) == 24 << 20) }
    }
}
