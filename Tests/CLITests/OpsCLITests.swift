import Foundation
import SystemPackage
import Testing
import TestSupport
import VirtualDisk

/// The disk operations as a user runs them: exit codes, JSON results, progress, refusals.
@Suite struct OpsCLITests {
    func json(_ r: RunResult) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: r.stdout) as? [String: Any], "JSON from \(r.out)")
    }

    @Test func convertCompactResizeCheckOnRaw() throws {
        let dir = try TempDir("ops-cli")
        var rng = SeededRandom(seed: 61)
        var model = ChainModel(size: OpsCLI.size)
        let src = try OpsCLI.buildChain(in: dir.path, format: .raw, depth: 0, rng: &rng, model: &model)[0]
        let expected = model.view(0)
        let dst = dir.file("copy.img")
        var r = try run(TestEnv.bulwark, ["disk", "convert", src.string, dst, "--json"])
        #expect(r.status == 0, "\(r.err)")
        #expect(try json(r)["virtualSize"] as? Int == OpsCLI.size)
        #expect(r.err.contains("convert: 100%"), "progress lines on a non-terminal: \(r.err)")
        #expect(try OpsCLI.readAll(FilePath(dst)) == expected)
        r = try run(TestEnv.bulwark, ["disk", "convert", src.string, dst])
        #expect(r.status == Exit.refused)
        #expect(r.err.contains("exists"))

        r = try run(TestEnv.bulwark, ["disk", "compact", dst, "--json"])
        #expect(r.status == 0, "\(r.err)")
        #expect(try json(r)["bytesReclaimed"] != nil)

        r = try run(TestEnv.bulwark, ["disk", "resize", dst, "--size", "16M", "--json"])
        #expect(r.status == 0, "\(r.err)")
        #expect(try json(r)["newSize"] as? Int == 16 << 20)
        let grown = try OpsCLI.readAll(FilePath(dst))
        #expect(Array(grown[..<OpsCLI.size]) == expected)
        #expect(grown[OpsCLI.size...].allSatisfy { $0 == 0 })

        r = try run(TestEnv.bulwark, ["disk", "check", dst])
        #expect(r.status == 0)
        #expect(r.out.contains("clean"))
        r = try run(TestEnv.bulwark, ["disk", "check", dst, "--json"])
        #expect(try json(r)["clean"] as? Bool == true)
        r = try run(TestEnv.bulwark, ["disk", "merge", dst])
        #expect(r.status == Exit.usage)
        #expect(r.err.contains("not a differencing image"))
    }

    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func chainCommands(format: DiskFormat) throws {
        let dir = try TempDir("ops-cli")
        var rng = SeededRandom(seed: 67)
        var model = ChainModel(size: OpsCLI.size)
        let paths = try OpsCLI.buildChain(in: dir.path, format: format, depth: 2, rng: &rng, model: &model)
        let expected = model.view(2)
        // A parent with children is not resized.
        var r = try run(TestEnv.bulwark, ["disk", "resize", paths[0].string, "--size", "16M"])
        #expect(r.status == Exit.refused)
        #expect(r.err.contains(paths[1].string))
        // check: clean chain; then a pending merge record is reported.
        r = try run(TestEnv.bulwark, ["disk", "check", paths[2].string])
        #expect(r.status == 0, "\(r.out) \(r.err)")
        // convert flattens.
        let flat = dir.file(OpsCLI.name("flat", format))
        r = try run(TestEnv.bulwark, ["disk", "convert", paths[2].string, flat, "--type", "fixed"])
        #expect(r.status == 0, "\(r.err)")
        #expect(try OpsCLI.readAll(FilePath(flat)) == expected)
        // merge the leaf into the base.
        r = try run(TestEnv.bulwark, ["disk", "merge", paths[2].string, "--into", paths[0].string, "--json"])
        #expect(r.status == 0, "\(r.err)")
        let result = try json(r)
        #expect((result["removed"] as? [String])?.count == 2)
        #expect(try OpsCLI.readAll(paths[0]) == expected)
        r = try run(TestEnv.bulwark, ["disk", "check", paths[0].string, "--json"])
        #expect(r.status == 0)
        // reparent: a new child of a copy of the base.
        let child = dir.file(OpsCLI.name("child", format))
        try runChecked(TestEnv.bulwark, ["disk", "create", child, "--parent", paths[0].string])
        let copy = dir.file(OpsCLI.name("copy", format))
        try FileManager.default.copyItem(atPath: paths[0].string, toPath: copy)
        r = try run(TestEnv.bulwark, ["disk", "reparent", child, "--parent", copy, "--json"])
        #expect(r.status == 0, "\(r.err)")
        #expect(try json(r)["parent"] as? String == copy)
    }

    @Test func checkReportsAPendingMergeAndExitsOne() throws {
        let format: DiskFormat = .vhdx
        let dir = try TempDir("ops-cli")
        var rng = SeededRandom(seed: 71)
        var model = ChainModel(size: OpsCLI.size)
        let paths = try OpsCLI.buildChain(in: dir.path, format: format, depth: 1, rng: &rng, model: &model)
        let intent = MergeIntent(child: paths[1].string, levels: [paths[1].string], ancestor: paths[0].string,
                                 levelIdentities: [try DiskImages.openLevel(paths[1]).identity.uuidString.lowercased()],
                                 ancestorIdentity: try DiskImages.openLevel(paths[0]).identity.uuidString.lowercased(),
                                 childrenToRepoint: [], started: "2026-11-23T10:00:00Z")
        try intent.write(for: paths[1])
        var r = try run(TestEnv.bulwark, ["disk", "check", paths[1].string])
        #expect(r.status == 1)
        #expect(r.out.contains("pending"))
        #expect(r.out.contains("bulwark disk merge \(paths[1].string)"))
        r = try run(TestEnv.bulwark, ["disk", "merge", paths[1].string])
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("finished an interrupted merge"))
        #expect(try OpsCLI.readAll(paths[0]) == model.view(1))
    }
}
