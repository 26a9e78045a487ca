import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk
import Storage

/// The log: a write interrupted between log flush and apply, random kills, and damaged files.
@Suite struct VHDXLogTests {
    /// Runs `bulwark disk write` so that it exits right after the log entry is flushed, before applying it.
    static func crashWrite(_ image: String, offset: UInt64, data: [UInt8], dir: TempDir) throws -> Int32 {
        let input = dir.file("input-\(offset).bin")
        try Data(data).write(to: URL(fileURLWithPath: input))
        return try run(TestEnv.bulwark, ["disk", "write", image, "--offset", String(offset), "--input", input],
                       environment: ["BULWARK_TEST_CRASH_POINT": "after-log-flush"]).status
    }

    @Test func dirtyLogIsReplayedInMemoryReadOnlyAndIntoTheFileWritable() throws {
        guard try TestEnv.prerequisite(FileManager.default.isExecutableFile(atPath: TestEnv.bulwark), "the built bulwark CLI") else { return }
        let dir = try TempDir()
        let path = dir.file("dirty.vhdx")
        var rng = SeededRandom(seed: 11)
        let old = rng.bytes(1 << 20)
        let image = try VHDXTest.create(path, size: 16 << 20)
        try image.write(old, at: 0)
        try image.close()
        let new = rng.bytes(300_000)
        #expect(try Self.crashWrite(path, offset: 5 << 20, data: new, dir: dir) == 137)

        let before = try VHDXTest.bytes(path)
        let ro = try #require(try DiskImages.openLevel(FilePath(path)) as? VHDXImage)
        #expect(ro.replayedOnOpen)
        #expect(ro.properties["log"]?.hasPrefix("dirty") == true)
        #expect(try Bytes(ro.read(count: new.count, at: 5 << 20)) == Bytes(new))
        #expect(try Bytes(ro.read(count: old.count, at: 0)) == Bytes(old))
        try ro.close()
        let report = try VHDXFormat.check(FilePath(path), repair: false)
        #expect(report.problems.contains { $0.repairable && $0.message.contains("not yet applied") })
        #expect(try Bytes(VHDXTest.bytes(path)) == Bytes(before), "a read-only open or check must not change the file")

        let rw = try #require(try DiskImages.openLevel(FilePath(path), writable: true) as? VHDXImage)
        #expect(rw.replayedOnOpen)
        #expect(rw.properties["log"] == "clean")
        try rw.close()
        #expect(try Bytes(VHDXTest.bytes(path)) != Bytes(before))
        #expect(try VHDXFormat.check(FilePath(path), repair: false).isClean)
        if try TestEnv.tools("qemu-img") {
            let check = try run("qemu-img", ["check", "-f", "vhdx", path])
            #expect(check.status == 0, "\(check.out) \(check.err)")
        }
        let after = try VHDXTest.readAll(path)
        #expect(Bytes(Array(after[(5 << 20)..<(5 << 20) + new.count])) == Bytes(new))
        #expect(Bytes(Array(after[0..<old.count])) == Bytes(old))
    }

    /// A staged image (a new file published only after its final flush) writes its BAT and bitmaps in
    /// place without the log, through the mid-write batches too, and is a clean, complete VHDX after
    /// the flush: qemu-img checks the dynamic one, libvhdi reads the differencing one over its parent.
    @Test func stagedImagesSkipTheLogAndAreCompleteAfterTheFlush() throws {
        let dir = try TempDir()
        let size: UInt64 = 400 << 20
        var rng = SeededRandom(seed: 41)
        let base = dir.file("base.vhdx"), child = dir.file("child.avhdx")
        var model = [UInt8](repeating: 0, count: Int(size))
        for (path, parent) in [(base, nil), (child, base)] as [(String, String?)] {
            let image = try DiskImages.create(at: FilePath(path), options: CreateOptions(
                format: .vhdx, type: parent == nil ? .dynamic : .differencing, virtualSize: size, blockSize: 1 << 20,
                parentPath: parent.map { FilePath($0) }, staged: true))
            // More than 256 MiB of new blocks: the pending BAT changes are applied mid-write at least once.
            let chunk = rng.bytes(1 << 20)
            for block in stride(from: parent == nil ? 0 : 1, to: Int(size >> 20), by: 1) where block % 3 != 2 {
                try image.write(chunk, at: UInt64(block) << 20)
                model.replaceSubrange(block << 20..<(block + 1) << 20, with: chunk)
            }
            // A partial sector run in the child (sector bitmap) and an unaligned edge.
            let odd = rng.bytes(3000)
            try image.write(odd, at: (5 << 20) + 700)
            model.replaceSubrange((5 << 20) + 700..<(5 << 20) + 3700, with: odd)
            let vhdx = try #require(image as? VHDXImage)
            try image.flush()
            #expect(vhdx.logEntriesWritten == 0)
            try image.chain.forEach { try $0.close() }
            let reopened = try #require(try DiskImages.openLevel(FilePath(path)) as? VHDXImage)
            #expect(reopened.properties["log"] == "clean")
            try reopened.close()
        }
        let chain = try DiskChain.open(FilePath(child))
        #expect(VHDXTest.equal(try chain.leaf.read(count: Int(size), at: 0), model, 0..<Int(size)))
        try chain.close()
        if try TestEnv.tools("qemu-img") {
            #expect(try run("qemu-img", ["check", "-f", "vhdx", base]).status == 0)
        }
        if try TestEnv.prerequisite(TestEnv.pyvhdiAvailable(), "pyvhdi in /usr/bin/python3") {
            let expected = dir.file("model.raw")
            try Data(model).write(to: URL(fileURLWithPath: expected))
            #expect(try VHDXChainTests.pyvhdiMatches([child, base], expected: expected) == "OK")
        }
    }

    @Test func checkRepairReplaysADirtyLog() throws {
        guard try TestEnv.prerequisite(FileManager.default.isExecutableFile(atPath: TestEnv.bulwark), "the built bulwark CLI") else { return }
        let dir = try TempDir()
        let base = dir.file("base.vhdx"), child = dir.file("child.avhdx")
        var rng = SeededRandom(seed: 12)
        let b = try VHDXTest.create(base, size: 8 << 20)
        try b.write(rng.bytes(8 << 20), at: 0)
        try b.close()
        try VHDXTest.create(child, size: 0, parent: base).chain.forEach { try $0.close() }
        let new = rng.bytes(5000)
        #expect(try Self.crashWrite(child, offset: 3 << 20 + 100, data: new, dir: dir) == 137)
        let report = try VHDXFormat.check(FilePath(child), repair: true)
        #expect(report.repairs.contains { $0.contains("replayed the log") })
        #expect(report.isClean, "\(report.problems)")
        let all = try VHDXTest.readAll(child)
        #expect(Bytes(Array(all[(3 << 20) + 100..<(3 << 20) + 100 + new.count])) == Bytes(new))
    }

    /// The CLI writing random data is killed at random moments; every time the image opens (replaying
    /// its log) and every sector of the written range holds the old or the new data.
    @Test func randomKillsLeaveOldOrNewDataInEverySector() throws {
        guard try TestEnv.prerequisite(FileManager.default.isExecutableFile(atPath: TestEnv.bulwark), "the built bulwark CLI") else { return }
        let dir = try TempDir()
        let size = 16 << 20
        var rng = SeededRandom(seed: 2026)
        // A dynamic image, and a differencing one over a base full of data.
        let dynamicPath = dir.file("dyn.vhdx"), basePath = dir.file("base.vhdx"), childPath = dir.file("child.avhdx")
        try VHDXTest.create(dynamicPath, size: UInt64(size)).close()
        let baseData = rng.bytes(size)
        let base = try VHDXTest.create(basePath, size: UInt64(size))
        try base.write(baseData, at: 0)
        try base.close()
        try VHDXTest.create(childPath, size: 0, parent: basePath).chain.forEach { try $0.close() }
        var models = [dynamicPath: [UInt8](repeating: 0, count: size), childPath: baseData]
        let sector = 512
        var killed = 0, completed = 0, replays = 0
        for runIndex in 0..<50 {
            let path = runIndex % 2 == 0 ? dynamicPath : childPath
            let old = models[path]!
            let offset = Int(rng.next() % UInt64(size - (3 << 20))) & (rng.next() % 3 == 0 ? ~0 : ~511)
            let count = Int(rng.next() % UInt64(3 << 20)) + 1
            let data = rng.bytes(count)
            let input = dir.file("in.bin")
            try Data(data).write(to: URL(fileURLWithPath: input))
            let process = Process()
            process.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
            process.arguments = ["disk", "write", path, "--offset", String(offset), "--input", input]
            // Some runs stop themselves between log flush and apply instead of being killed.
            let crashPoint = rng.next() % 6 == 0
            if crashPoint {
                process.environment = ProcessInfo.processInfo.environment.merging(["BULWARK_TEST_CRASH_POINT": "after-log-flush"]) { $1 }
            }
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            if !crashPoint {
                usleep(useconds_t(rng.next() % 60_000))
                kill(process.processIdentifier, SIGKILL)
            }
            process.waitUntilExit()
            if let level = try? DiskImages.openLevel(FilePath(path)) as? VHDXImage {
                if level.replayedOnOpen { replays += 1 }
                try level.close()
            }
            if process.terminationReason == .uncaughtSignal || process.terminationStatus == 137 { killed += 1 } else { completed += 1 }

            // Read-only first (replay in memory), so the next writer replays into the file.
            let got = try VHDXTest.readAll(path)
            var newImage = old
            newImage.replaceSubrange(offset..<offset + count, with: data)
            // Outside the written sectors nothing changed; inside, each sector is old or new.
            let lo = offset / sector * sector, hi = min(size, (offset + count + sector - 1) / sector * sector)
            guard VHDXTest.equal(got, old, 0..<lo), VHDXTest.equal(got, old, hi..<size) else {
                Issue.record("run \(runIndex) (\(path)): data outside the write \(offset)+\(count) changed")
                return
            }
            for s in stride(from: lo, to: hi, by: sector) {
                guard VHDXTest.equal(got, old, s..<s + sector) || VHDXTest.equal(got, newImage, s..<s + sector) else {
                    Issue.record("run \(runIndex) (\(path)): sector at \(s) holds neither old nor new data (write \(offset)+\(count))")
                    return
                }
            }
            models[path] = got
        }
        #expect(killed > 0)
        for path in [dynamicPath, childPath] {
            try DiskImages.openLevel(FilePath(path), writable: true).close()
            #expect(try VHDXFormat.check(FilePath(path), repair: false).isClean)
            #expect(try Bytes(VHDXTest.readAll(path)) == Bytes(models[path]!))
        }
        if try TestEnv.tools("qemu-img") {
            #expect(try run("qemu-img", ["check", "-f", "vhdx", dynamicPath]).status == 0)
        }
        print("crash runs: \(killed) killed or stopped, \(completed) completed, \(replays) left a log to replay")
    }
}

/// Damaged files: distinct, clear errors, never a trap, and the file is never changed.
@Suite struct VHDXBadInputTests {
    let dir: TempDir
    let path: String
    let data: [UInt8]

    init() throws {
        dir = try TempDir()
        path = dir.file("bad.vhdx")
        var rng = SeededRandom(seed: 99)
        data = rng.bytes(2 << 20)
        let image = try VHDXTest.create(path, size: 8 << 20)
        try image.write(data, at: 1 << 20)
        try image.close()
    }

    /// Opening fails with a message containing `expected`, and neither open nor check changes the file.
    func expectRefused(_ expected: String) throws {
        let before = try VHDXTest.bytes(path)
        do {
            let image = try DiskImages.openLevel(FilePath(path))
            try image.close()
            Issue.record("opening succeeded; expected an error containing \"\(expected)\"")
        } catch let error as DiskError {
            #expect(error.description.contains(expected), "\(error)")
            #expect(error.description.contains(path))
        }
        #expect(throws: DiskError.self) { try DiskImages.openLevel(FilePath(path), writable: true) }
        let report = try VHDXFormat.check(FilePath(path), repair: false)
        #expect(!report.isClean)
        #expect(try Bytes(VHDXTest.bytes(path)) == Bytes(before))
    }

    @Test func oneBadHeaderFallsBackToTheOtherAndRepairRewritesIt() throws {
        let flipped = try VHDXTest.peek(path, at: (64 << 10) + 1000, count: 1)[0] ^ 0xFF
        try VHDXTest.poke(path, at: (64 << 10) + 1000, [flipped])
        let before = try VHDXTest.bytes(path)
        #expect(Bytes(Array(try VHDXTest.readAll(path)[(1 << 20)..<(3 << 20)])) == Bytes(data))
        let report = try VHDXFormat.check(FilePath(path), repair: false)
        #expect(report.problems.contains { $0.repairable && $0.message.contains("header 1") && $0.message.contains("CRC-32C") })
        #expect(try Bytes(VHDXTest.bytes(path)) == Bytes(before))
        let repaired = try VHDXFormat.check(FilePath(path), repair: true)
        #expect(repaired.repairs == ["rewrote header 1 from header 2"])
        #expect(repaired.isClean)
    }

    @Test func bothHeadersBad() throws {
        for o: UInt64 in [64 << 10, 128 << 10] { try VHDXTest.poke(path, at: o + 8, [0xEE]) }
        try expectRefused("both VHDX headers are invalid")
    }

    @Test func overlappingRegions() throws {
        let table = VHDXRegionTable(entries: [
            .init(guid: VHDXRegionTable.bat, fileOffset: 3 << 20, length: 1 << 20, required: true),
            .init(guid: VHDXRegionTable.metadata, fileOffset: 3 << 20, length: 1 << 20, required: true),
        ]).encode()
        for o in VHDXRegionTable.offsets { try VHDXTest.poke(path, at: o, table) }
        try expectRefused("overlaps")
    }

    @Test func unknownRequiredRegion() throws {
        let table = VHDXRegionTable(entries: [
            .init(guid: VHDXRegionTable.bat, fileOffset: 3 << 20, length: 1 << 20, required: true),
            .init(guid: VHDXRegionTable.metadata, fileOffset: 2 << 20, length: 1 << 20, required: true),
            .init(guid: UUID(), fileOffset: 100 << 20, length: 1 << 20, required: true),
        ]).encode()
        for o in VHDXRegionTable.offsets { try VHDXTest.poke(path, at: o, table) }
        try expectRefused("unknown region")
    }

    @Test func batEntryPastTheEndOfTheFile() throws {
        var entry = [UInt8](repeating: 0, count: 8)
        entry.setLE64(0, VHDXBATEntry(state: 6, fileOffset: 1000 << 20).raw)
        try VHDXTest.poke(path, at: 3 << 20, entry)
        try expectRefused("points past the end of the file")
    }

    @Test func overlappingBlocks() throws {
        var entry = [UInt8](repeating: 0, count: 8)
        let second = VHDXBATEntry(raw: try VHDXTest.peek(path, at: (3 << 20) + 16, count: 8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        entry.setLE64(0, VHDXBATEntry(state: 6, fileOffset: second.fileOffset).raw)
        try VHDXTest.poke(path, at: (3 << 20) + 8, entry)  // block 1 now shares block 2's space
        try expectRefused("overlaps")
    }

    @Test func unknownRequiredMetadataItem() throws {
        let m: UInt64 = 2 << 20
        let count = Int(try VHDXTest.peek(path, at: m + 10, count: 2)[0])
        var entry = [UInt8](repeating: 0, count: 32)
        entry.setGUID(0, UUID())
        entry.setLE32(16, 64 << 10)
        entry.setLE32(20, 8)
        entry.setLE32(24, 4)  // IsRequired
        try VHDXTest.poke(path, at: m + 32 + 32 * UInt64(count), entry)
        try VHDXTest.poke(path, at: m + 10, [UInt8(count + 1), 0])
        try expectRefused("marked required")
    }

    @Test func logEntryWithBadChecksum() throws {
        guard try TestEnv.prerequisite(FileManager.default.isExecutableFile(atPath: TestEnv.bulwark), "the built bulwark CLI") else { return }
        #expect(try VHDXLogTests.crashWrite(path, offset: 5 << 20, data: [UInt8](repeating: 3, count: 8192), dir: dir) == 137)
        // The entry is the first in the log (at 1 MiB); damage a byte its checksum covers.
        let b = try VHDXTest.peek(path, at: (1 << 20) + 4000, count: 1)[0]
        try VHDXTest.poke(path, at: (1 << 20) + 4000, [b ^ 0x5A])
        try expectRefused("no valid entry sequence")
        let report = try VHDXFormat.check(FilePath(path), repair: false)
        #expect(report.problems.contains { $0.severity == .warning && $0.message.contains("damaged") && $0.message.contains("CRC-32C") })
    }

    @Test func notAVHDXAtAll() throws {
        try VHDXTest.poke(path, at: 0, Array("notvhdx!".utf8))
        // Named .vhdx without the signature: refused, not taken as raw (unless asked for as raw).
        #expect(throws: DiskError.notRecognized(path: path, expected: .vhdx, reason: "no VHDX file identifier (\"vhdxfile\") at offset 0 (the file has 6291456 bytes)")) {
            _ = try DiskImages.detectFormat(FilePath(path))
        }
        #expect(throws: DiskError.self) { try VHDXImage(store: BlockFile.open(FilePath(path), writable: false)) }
        let report = try VHDXFormat.check(FilePath(path), repair: true)
        #expect(!report.isClean)
        #expect(report.repairs.isEmpty)
    }
}

@Suite struct VHDXCLITests {
    @Test func infoMapCreateAndBadInputThroughTheCLI() throws {
        guard try TestEnv.prerequisite(FileManager.default.isExecutableFile(atPath: TestEnv.bulwark), "the built bulwark CLI") else { return }
        let dir = try TempDir()
        let path = dir.file("cli.vhdx")
        try runChecked(TestEnv.bulwark, ["disk", "create", path, "--size", "8M", "--block-size", "1M", "--logical-sector-size", "4096"])
        try runChecked(TestEnv.bulwark, ["disk", "write", path, "--offset", "1M"], input: Data(repeating: 0xAB, count: 70_000))
        let info = (try JSONSerialization.jsonObject(with: runChecked(TestEnv.bulwark, ["disk", "info", path, "--json"]).stdout) as? [String: Any])?["levels"] as? [[String: Any]]
        #expect(info?.first?["format"] as? String == "vhdx")
        #expect(info?.first?["logicalSectorSize"] as? Int == 4096)
        #expect((info?.first?["properties"] as? [String: Any])?["creator"] as? String == "Bulwark")
        let map = try JSONSerialization.jsonObject(with: runChecked(TestEnv.bulwark, ["disk", "map", path, "--json"]).stdout) as? [[String: Any]]
        #expect(map?.count == 1)
        #expect(map?.first?["start"] as? Int == 1 << 20)
        let read = try runChecked(TestEnv.bulwark, ["disk", "read", path, "--offset", "1M", "--length", "70000"])
        #expect(Bytes(read.stdout) == Bytes(Data(repeating: 0xAB, count: 70_000)))
        let child = dir.file("cli.avhdx")
        try runChecked(TestEnv.bulwark, ["disk", "create", child, "--parent", path])
        #expect(try Bytes(runChecked(TestEnv.bulwark, ["disk", "read", child, "--offset", "1M", "--length", "4096"]).stdout) == Bytes(Data(repeating: 0xAB, count: 4096)))

        for o: UInt64 in [64 << 10, 128 << 10] { try VHDXTest.poke(path, at: o + 8, [0xEE]) }
        let bad = try run(TestEnv.bulwark, ["disk", "info", path, "--json"])
        #expect(bad.status == 4, "corrupt image (README: Exit codes)")
        #expect(bad.err.contains("both VHDX headers are invalid"))
    }
}
