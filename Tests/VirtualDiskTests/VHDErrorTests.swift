import Foundation
import SystemPackage
import Testing
import TestSupport
@testable import VirtualDisk
import Storage

/// Bad input gives a clear, distinct error, never a crash, and never changes the file.
@Suite struct VHDErrorTests {
    /// A dynamic image with two allocated blocks.
    static func makeDynamic(_ dir: TempDir, name: String = "disk.vhd", size: UInt64 = 8 << 20) throws -> String {
        let path = dir.file(name)
        let image = try DiskImages.create(at: FilePath(path), options: CreateOptions(format: .vhd, type: .dynamic, virtualSize: size))
        var rng = SeededRandom(seed: 11)
        try image.write(rng.bytes(10_000), at: 100)
        try image.write(rng.bytes(10_000), at: 5 << 20)
        try image.close()
        return path
    }

    static func patch(_ path: String, at offset: UInt64, _ bytes: [UInt8]) throws {
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        try h.seek(toOffset: offset)
        h.write(Data(bytes))
        try h.close()
    }

    static func truncate(_ path: String, to size: UInt64) throws {
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try h.truncate(atOffset: size)
        try h.close()
    }

    /// Rewrites the dynamic header with `change` applied and a valid checksum.
    static func editHeader(_ path: String, _ change: (inout [UInt8]) -> Void) throws {
        var header = [UInt8](try VHDTest.bytes(path)[512..<1536])
        change(&header)
        VHDBytes.put32(&header, 36, VHDBytes.checksum(header, skipping: 36))
        try patch(path, at: 512, header)
    }

    /// Opening `path` throws an error whose description contains `fragment`; the file is unchanged.
    static func expectOpenFails(_ path: String, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> DiskError? {
        let before = try VHDTest.bytes(path)
        var caught: DiskError?
        do {
            let chain = try DiskChain.open(FilePath(path))
            try chain.close()
        } catch let e as DiskError {
            caught = e
        }
        #expect(caught != nil, "opening \(path) should fail with \(fragment)", sourceLocation: sourceLocation)
        if let caught {
            #expect(caught.description.contains(fragment), "\(caught)", sourceLocation: sourceLocation)
            #expect(caught.description.contains(path), sourceLocation: sourceLocation)
        }
        _ = try VHDFormat.check(FilePath(path), repair: false)
        #expect(try VHDTest.bytes(path) == before, "the file changed", sourceLocation: sourceLocation)
        return caught
    }

    @Test func eachKindOfDamageHasItsOwnError() throws {
        let dir = try TempDir()
        var errors: [DiskError] = []

        let short = try Self.makeDynamic(dir, name: "short.vhd")
        try Self.truncate(short, to: 1000)
        let e1 = try #require(try Self.expectOpenFails(short, "truncated"))
        #expect(e1 == .truncated(path: short, needed: 1536, actual: 1000))
        errors.append(e1)

        try DiskImages.create(at: FilePath(dir.file("ok.vhd")), options: CreateOptions(format: .vhd, type: .fixed, virtualSize: 1 << 20)).close()
        let cut = dir.file("ok.vhd")
        try Self.truncate(cut, to: 300)  // shorter than a footer: probed as raw, but openLevel with VHD says why
        #expect(throws: DiskError.truncated(path: cut, needed: 512, actual: 300)) {
            _ = try VHDFormat.open(try BlockFile.open(FilePath(cut), writable: false))
        }

        let fixed = dir.file("fixed.vhd")
        try DiskImages.create(at: FilePath(fixed), options: CreateOptions(format: .vhd, type: .fixed, virtualSize: 2 << 20)).close()
        try Self.patch(fixed, at: (2 << 20) + 45, [0x77])
        errors.append(try #require(try Self.expectOpenFails(fixed, "footer checksum mismatch")))

        let both = try Self.makeDynamic(dir, name: "both.vhd")
        let size = UInt64(try VHDTest.bytes(both).count)
        try Self.patch(both, at: 45, [0x77])
        try Self.patch(both, at: size - 512 + 45, [0x77])
        // Both copies alike with the same wrong checksum: read-only opens accept it with a warning
        // (see FormatHardeningTests); a writable open refuses until check repairs it.
        #expect(throws: DiskError.self) { _ = try DiskImages.openLevel(FilePath(both), writable: true) }

        let header = try Self.makeDynamic(dir, name: "header.vhd")
        try Self.patch(header, at: 512 + 100, [0x01])
        errors.append(try #require(try Self.expectOpenFails(header, "dynamic disk header checksum mismatch")))

        let bat = try Self.makeDynamic(dir, name: "bat.vhd")
        try Self.patch(bat, at: 1536 + 4 * 2, [0x00, 0x10, 0x00, 0x00])
        errors.append(try #require(try Self.expectOpenFails(bat, "BAT entry 2")))

        let blocks = try Self.makeDynamic(dir, name: "blocksize.vhd")
        try Self.editHeader(blocks) { VHDBytes.put32(&$0, 32, 3 << 20) }
        errors.append(try #require(try Self.expectOpenFails(blocks, "block size 3145728 is not a power of two")))

        // Distinct errors: no two descriptions alike.
        #expect(Set(errors.map { $0.description }).count == errors.count)
    }

    @Test func crashLeftoversStayReadable() throws {
        let dir = try TempDir()
        let path = try Self.makeDynamic(dir)
        let original = try VHDTest.readAll(try DiskImages.openLevel(FilePath(path)))
        // A crash while a block was appended: the end footer is overwritten by half a block.
        let size = UInt64(try VHDTest.bytes(path).count)
        try Self.patch(path, at: size - 512, [UInt8](repeating: 0xC3, count: 700_000))
        let image = try DiskImages.openLevel(FilePath(path), writable: true)
        #expect(image.properties["footer"] == "copy at offset 0")
        #expect(VHDTest.mismatch(try VHDTest.readAll(image), original) == nil)
        // Writing again cuts the leftovers and appends cleanly.
        try image.write([UInt8](repeating: 9, count: 4096), at: 3 << 20)
        try image.close()
        var expected = original
        expected.replaceSubrange((3 << 20)..<(3 << 20) + 4096, with: [UInt8](repeating: 9, count: 4096))
        let reopened = try DiskImages.openLevel(FilePath(path))
        defer { try? reopened.close() }
        #expect(reopened.properties["footer"] == "end")
        #expect(VHDTest.mismatch(try VHDTest.readAll(reopened), expected) == nil)
        #expect(try VHDFormat.check(FilePath(path), repair: false).problems == [])
    }

    @Test func aCrashBeforeTheBATUpdateLeavesTheOldImage() throws {
        let dir = try TempDir()
        let path = try Self.makeDynamic(dir)
        let original = try VHDTest.readAll(try DiskImages.openLevel(FilePath(path)))
        let image = try DiskImages.openLevel(FilePath(path), writable: true)
        try image.write([UInt8](repeating: 7, count: 8192), at: 7 << 20)   // a new block
        // The file as a crash now would leave it: block and footer appended, BAT not yet updated.
        let snapshot = dir.file("crashed.vhd")
        try FileManager.default.copyItem(atPath: path, toPath: snapshot)
        try image.close()
        let crashed = try DiskImages.openLevel(FilePath(snapshot))
        defer { try? crashed.close() }
        #expect(VHDTest.mismatch(try VHDTest.readAll(crashed), original) == nil)
        // The appended block is referenced by nothing: check names it, repair reclaims it.
        let problems = try VHDFormat.check(FilePath(snapshot), repair: false).problems
        #expect(problems.count == 1 && problems.allSatisfy { $0.repairable && $0.message.contains("referenced by no BAT entry") }, "\(problems)")
        #expect(try VHDFormat.check(FilePath(snapshot), repair: true).problems == [])
        let done = try DiskImages.openLevel(FilePath(path))
        defer { try? done.close() }
        #expect(try done.read(count: 8192, at: 7 << 20) == [UInt8](repeating: 7, count: 8192))
    }

    @Test func badArgumentsAreRefused() throws {
        let dir = try TempDir()
        #expect(throws: DiskError.invalidArgument("\(dir.file("a.vhd")): VHD block size 3145728 must be a power of two from 512 bytes to 256 MiB (default 2 MiB)")) {
            _ = try DiskImages.create(at: FilePath(dir.file("a.vhd")), options: CreateOptions(format: .vhd, type: .dynamic, virtualSize: 8 << 20, blockSize: 3 << 20))
        }
        #expect(throws: DiskError.self) {
            _ = try DiskImages.create(at: FilePath(dir.file("b.vhd")), options: CreateOptions(format: .vhd, type: .dynamic, virtualSize: 1000))
        }
        #expect(!FileOps.exists(FilePath(dir.file("a.vhd"))))
        let path = try Self.makeDynamic(dir)
        let image = try DiskImages.openLevel(FilePath(path))
        defer { try? image.close() }
        #expect(throws: StorageError.readOnly(path: path)) { try image.write([1], at: 0) }
        #expect(throws: DiskError.outOfRange(path: path, offset: 8 << 20, length: 1, virtualSize: 8 << 20)) { _ = try image.read(count: 1, at: 8 << 20) }
    }

    /// base ← child; returns both paths.
    static func makePair(_ dir: TempDir) throws -> (base: String, child: String) {
        let base = try makeDynamic(dir, name: "base.vhd")
        let child = dir.file("child.vhd")
        let c = try DiskImages.create(at: FilePath(child), options: CreateOptions(format: .vhd, type: .differencing, parentPath: FilePath(base)))
        try c.write([UInt8](repeating: 4, count: 1000), at: 3000)
        for l in c.chain { try l.close() }
        return (base, child)
    }

    @Test func missingParentNamesChildLocatorsAndIdentity() throws {
        let dir = try TempDir()
        let (base, child) = try Self.makePair(dir)
        let id = try DiskImages.openLevel(FilePath(base)).identity.uuidString.lowercased()
        try FileManager.default.removeItem(atPath: base)
        let e = try #require(try Self.expectOpenFails(child, "parent disk not found"))
        #expect(e == .parentNotFound(child: child, tried: [base], expectedID: id))
        #expect(e.description.contains(id))
    }

    @Test func wrongParentIsRefused() throws {
        let dir = try TempDir()
        let (base, child) = try Self.makePair(dir)
        try FileManager.default.removeItem(atPath: base)
        _ = try Self.makeDynamic(dir, name: "base.vhd")
        let e = try #require(try Self.expectOpenFails(child, "was made from a parent with id"))
        guard case .parentMismatch(let c, let p, _, _) = e else { Issue.record("\(e)"); return }
        #expect(c == child && p == base)
    }

    @Test func loopsAreDetected() throws {
        let dir = try TempDir()
        let (_, child) = try Self.makePair(dir)
        // A child whose locator points to itself.
        let selfish = try VHDFormat.openImage(try BlockFile.open(FilePath(child), writable: true))
        try selfish.setParent(ParentLink(expectedID: selfish.identity, locators: [ParentLocator(kind: .relative, path: ".\\child.vhd")]))
        try selfish.close()
        let e = try #require(try Self.expectOpenFails(child, "loops back on itself"))
        guard case .chainLoop = e else { Issue.record("\(e)"); return }

        // A cycle of two: a → b → a.
        let dir2 = try TempDir()
        let (_, a) = try Self.makePair(dir2)
        let b = dir2.file("b.vhd")
        let bi = try DiskImages.create(at: FilePath(b), options: CreateOptions(format: .vhd, type: .differencing, parentPath: FilePath(a)))
        let bID = bi.identity
        for l in bi.chain { try l.close() }
        let ai = try VHDFormat.openImage(try BlockFile.open(FilePath(a), writable: true))
        try ai.setParent(ParentLink(expectedID: bID, locators: ParentLocator.locators(child: FilePath(a), parent: FilePath(b))))
        try ai.close()
        let e2 = try #require(try Self.expectOpenFails(b, "loops back on itself"))
        guard case .chainLoop(_, let chain) = e2 else { Issue.record("\(e2)"); return }
        #expect(chain.count == 3)
    }
}

/// The command line on VHD images.
@Suite struct VHDCLITests {
    @Test func badInputExitsNonZeroNamingTheFile() throws {
        let dir = try TempDir()
        let path = try VHDErrorTests.makeDynamic(dir)
        try VHDErrorTests.patch(path, at: 512 + 100, [0x01])
        let r = try run(TestEnv.bulwark, ["disk", "info", path])
        #expect(r.status == 4, "corrupt image (README: Exit codes)")
        #expect(r.err.contains(path))
        #expect(r.err.contains("dynamic disk header checksum mismatch"))
        let read = try run(TestEnv.bulwark, ["disk", "read", path, "--length", "512"])
        #expect(read.status == 4)
        let create = try run(TestEnv.bulwark, ["disk", "create", dir.file("x.vhd"), "--size", "8M", "--block-size", "3M"])
        #expect(create.status == 64, "an unusable argument is a usage error")
        #expect(create.err.contains("power of two"))
    }

    @Test func readToAFileLeavesZerosAsHoles() throws {
        let dir = try TempDir()
        let base = dir.file("base.vhd"), child = dir.file("child.vhd"), out = dir.file("out.raw")
        try runChecked(TestEnv.bulwark, ["disk", "create", base, "--size", "24M"])
        var rng = SeededRandom(seed: 4)
        let a = Data(rng.bytes(100_000)), b = Data(rng.bytes(3000))
        // The parent is written before it has a child (a parent with children is refused).
        try runChecked(TestEnv.bulwark, ["disk", "write", base, "--offset", "1000"], input: a)
        try runChecked(TestEnv.bulwark, ["disk", "create", child, "--parent", base])
        try runChecked(TestEnv.bulwark, ["disk", "write", child, "--offset", "20000000"], input: b)
        try runChecked(TestEnv.bulwark, ["disk", "read", child, "--output", out])
        let streamed = try runChecked(TestEnv.bulwark, ["disk", "read", child]).stdout
        let written = try VHDTest.bytes(out)
        #expect(written.count == 24 << 20)
        #expect(written == streamed)
        #expect(written[1000..<101_000] == a)
        #expect(written[20_000_000..<20_003_000] == b)
        var st = stat()
        #expect(stat(out, &st) == 0 && Int(st.st_blocks) * 512 < 8 << 20, "zeros were written instead of left as holes")
    }

    @Test func infoJSONShowsTheVHDFields() throws {
        let dir = try TempDir()
        let base = dir.file("base.vhd"), child = dir.file("child.vhd")
        try runChecked(TestEnv.bulwark, ["disk", "create", base, "--size", "33M", "--block-size", "512K"])
        try runChecked(TestEnv.bulwark, ["disk", "create", child, "--parent", base])
        let payload = Data((0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try runChecked(TestEnv.bulwark, ["disk", "write", child, "--offset", "12345"], input: payload)
        let back = try runChecked(TestEnv.bulwark, ["disk", "read", child, "--offset", "12345", "--length", "70000"])
        #expect(back.stdout == payload)

        let info = try runChecked(TestEnv.bulwark, ["disk", "info", base, "--json"])
        let json = try #require((try JSONSerialization.jsonObject(with: info.stdout) as? [String: Any])?["levels"] as? [[String: Any]]).first ?? [:]
        #expect(json["format"] as? String == "vhd")
        #expect(json["type"] as? String == "dynamic")
        #expect((json["virtualSize"] as? NSNumber)?.intValue == 33 << 20)
        #expect((json["blockSize"] as? NSNumber)?.intValue == 512 << 10)
        let props = try #require(json["properties"] as? [String: Any])
        #expect(props["sizeRule"] as? String == "current size (creator 'win ')")
        #expect(props["geometryCHS"] as? String == VHDGeometry(forSize: 33 << 20).description)
        #expect(props["creatorApplication"] as? String == "win ")
        #expect(props["creatorHostOS"] as? String == "Wi2k")
        #expect((props["maxTableEntries"] as? NSNumber)?.intValue == 66)
        #expect((props["dataOffset"] as? NSNumber)?.intValue == 512)
        #expect(props["diskType"] as? String == "dynamic (3)")
        #expect(props["timestamp"] != nil && props["savedState"] as? Bool == false)

        let childInfo = try runChecked(TestEnv.bulwark, ["disk", "info", child, "--json"])
        let cj = try #require((try JSONSerialization.jsonObject(with: childInfo.stdout) as? [String: Any])?["levels"] as? [[String: Any]]).first ?? [:]
        #expect(cj["type"] as? String == "differencing")
        #expect(cj["parentID"] as? String == json["identity"] as? String)
        let locators = try #require(cj["parentLocators"] as? [[String: String]])
        #expect(locators.map { $0["kind"] } == ["relative", "absolute"])
        #expect((cj["properties"] as? [String: Any])?["parentName"] as? String == base)
    }
}

/// Random damage never traps: every open, read and check either works or throws a DiskError.
@Suite struct VHDFuzzTests {
    @Test func randomDamageNeverCrashes() throws {
        let dir = try TempDir()
        let (_, child) = try VHDErrorTests.makePair(dir)
        let pristine = try VHDTest.bytes(child)
        var rng = SeededRandom(seed: UInt64(ProcessInfo.processInfo.environment["VHD_FUZZ_SEED"] ?? "99") ?? 99)
        var opened = 0, refused = 0
        for round in 0..<150 {
            var bytes = [UInt8](pristine)
            // Damage the footer copy, the header, the BAT or the locators (and sometimes fix the checksums,
            // so the damage reaches the fields behind them).
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                let region = [0..<512, 512..<1536, 1536..<2048, 2048..<min(bytes.count, 4096)][Int(rng.next() % 4)]
                let at = region.lowerBound + Int(rng.next() % UInt64(region.count))
                bytes[at] = UInt8(truncatingIfNeeded: rng.next())
            }
            if round % 2 == 0 {
                VHDBytes.put32(&bytes, 64, VHDBytes.checksum(Array(bytes[0..<512]), skipping: 64))
                var header = Array(bytes[512..<1536])
                VHDBytes.put32(&header, 36, VHDBytes.checksum(header, skipping: 36))
                bytes.replaceSubrange(512..<1536, with: header)
                // Let the copy at 0 win by spoiling the end footer.
                bytes[bytes.count - 512] = 0
            }
            let path = dir.file("fuzz\(round).vhd")
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                let image = try DiskImages.openLevel(FilePath(path))
                _ = try? image.read(count: Int(min(image.virtualSize, 1 << 20)), at: 0)
                _ = image.properties
                _ = image.parentLink
                try image.close()
                opened += 1
            } catch is DiskError {
                refused += 1
            }
            _ = try VHDFormat.check(FilePath(path), repair: false)
            #expect(try VHDTest.bytes(path) == Data(bytes))
            try FileManager.default.removeItem(atPath: path)
        }
        #expect(opened + refused == 150)
        #expect(refused > 0)
    }
}
