import Foundation
import SystemPackage
import Testing
import TestSupport
import VirtualDisk
import Storage

/// `disk write` as a user runs it: a parent with children is refused (its children would change or
/// break), `--children` names places to look and must exist, zeros are not stored where the disk
/// reads zeros already, and a large input shows progress.
@Suite struct WriteGuardTests {
    /// P (64 MiB) with a child C beside it, and 4 KiB of random bytes in `s`.
    func parentWithChild(_ format: DiskFormat, in dir: TempDir) throws -> (parent: String, child: String, input: String) {
        let parent = dir.file("P.\(format.rawValue)"), child = dir.file("C.\(format.rawValue)"), input = dir.file("s")
        try runChecked(TestEnv.bulwark, ["disk", "create", parent, "--size", "64M"])
        try runChecked(TestEnv.bulwark, ["disk", "create", child, "--parent", parent])
        var rng = SeededRandom(seed: 401)
        try Data(rng.bytes(4096)).write(to: URL(fileURLWithPath: input))
        return (parent, child, input)
    }

    @Test(arguments: [DiskFormat.vhd, .vhdx])
    func writingAParentWithChildrenIsRefused(format: DiskFormat) throws {
        let dir = try TempDir("write-guard")
        let (parent, child, input) = try parentWithChild(format, in: dir)
        let before = try run(TestEnv.bulwark, ["disk", "read", child, "--length", "1M"]).stdout
        let parentBytes = try Data(contentsOf: URL(fileURLWithPath: parent))
        let r = try run(TestEnv.bulwark, ["disk", "write", parent, "--offset", "0", "--input", input])
        #expect(r.status == Exit.refused, "refused: \(r.err)")
        #expect(r.err.contains(child), "the refusal names the child: \(r.err)")
        #expect(r.err.contains("--force") && r.err.contains("--children"), "and the ways on: \(r.err)")
        #expect(r.err.contains("only in the parent's folder"), "and where children were looked for: \(r.err)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: parent)) == parentBytes, "the parent is unchanged")
        let after = try run(TestEnv.bulwark, ["disk", "read", child, "--length", "1M"])
        #expect(after.status == 0, "the child still opens: \(after.err)")
        #expect(after.stdout == before, "and reads the same")
        try runChecked(TestEnv.bulwark, ["disk", "check", child])
        // --force writes anyway (the user's choice).
        let forced = try run(TestEnv.bulwark, ["disk", "write", parent, "--offset", "0", "--input", input, "--force"])
        #expect(forced.status == 0, "\(forced.err)")
        #expect(try run(TestEnv.bulwark, ["disk", "read", parent, "--length", "4096"]).stdout == (try Data(contentsOf: URL(fileURLWithPath: input))))
    }

    @Test func childrenInOtherFoldersAreFoundWhenNamed() throws {
        let dir = try TempDir("write-guard")
        let other = try TempDir("write-guard-other")
        let parent = dir.file("P.vhdx"), child = other.file("C.vhdx"), input = dir.file("s")
        try runChecked(TestEnv.bulwark, ["disk", "create", parent, "--size", "64M"])
        try runChecked(TestEnv.bulwark, ["disk", "create", child, "--parent", parent])
        try Data(repeating: 7, count: 4096).write(to: URL(fileURLWithPath: input))
        for extra in [other.path, child] {
            let r = try run(TestEnv.bulwark, ["disk", "write", parent, "--offset", "0", "--input", input, "--children", extra])
            #expect(r.status == Exit.refused && r.err.contains(child), "a folder or a file given with --children is searched (\(extra)): \(r.err)")
        }
    }

    /// Every command taking --children refuses a path that does not exist (it would look nowhere).
    @Test func missingChildrenPathIsAnError() throws {
        let dir = try TempDir("write-guard")
        let (parent, child, input) = try parentWithChild(.vhd, in: dir)
        let missing = dir.file("nonexistent")
        let commands: [[String]] = [
            ["disk", "write", child, "--offset", "0", "--input", input, "--children", missing],
            ["disk", "resize", parent, "--size", "128M", "--children", missing],
            ["disk", "compact", child, "--children", missing],
            ["disk", "merge", child, "--children", missing],
        ]
        for args in commands {
            let r = try run(TestEnv.bulwark, args)
            #expect(r.status == Exit.usage, "\(args[1]) refuses: \(r.out) \(r.err)")
            #expect(r.err.contains(missing) && r.err.contains("no such file or folder"), "\(args[1]): \(r.err)")
        }
        #expect(FileManager.default.fileExists(atPath: child), "nothing was merged")
    }

    @Test(arguments: [DiskFormat.vhd, .vhdx, .raw])
    func zerosAreNotStoredAndProgressIsShown(format: DiskFormat) throws {
        let dir = try TempDir("write-zeros")
        let image = dir.file(format == .raw ? "d.img" : "d.\(format.rawValue)")
        try runChecked(TestEnv.bulwark, ["disk", "create", image, "--size", "256M"])
        let zeros = dir.file("zeros")
        FileManager.default.createFile(atPath: zeros, contents: nil)
        try FileHandle(forWritingTo: URL(fileURLWithPath: zeros)).truncate(atOffset: 200 << 20)
        let allocatedBefore = try allocated(image)
        let r = try run(TestEnv.bulwark, ["disk", "write", image, "--offset", "0", "--input", zeros])
        #expect(r.status == 0, "\(r.err)")
        #expect(r.err.contains("write: 100%"), "progress for an input of known size: \(r.err)")
        let allocatedAfter = try allocated(image)
        #expect(allocatedAfter <= allocatedBefore + (64 << 10), "no blocks for zeros (\(allocatedAfter) vs \(allocatedBefore))")

        // Data, then zeros over part of it: the zeros are written, and the disk reads them back.
        var rng = SeededRandom(seed: 409)
        let data = Data(rng.bytes(3 << 20))
        try runChecked(TestEnv.bulwark, ["disk", "write", image, "--offset", "1M"], input: data)
        try runChecked(TestEnv.bulwark, ["disk", "write", image, "--offset", "2M"], input: Data(count: 1 << 20))
        let back = try runChecked(TestEnv.bulwark, ["disk", "read", image, "--offset", "1M", "--length", "3M"]).stdout
        var expected = data
        expected.replaceSubrange((1 << 20)..<(2 << 20), with: Data(count: 1 << 20))
        #expect(back == expected)
        try runChecked(TestEnv.bulwark, ["disk", "check", image])
    }

    /// In a differencing child, zeros over the parent's data must be stored (they hide it).
    @Test func zerosOverParentDataAreStoredInAChild() throws {
        let dir = try TempDir("write-zeros")
        let parent = dir.file("P.vhdx"), child = dir.file("C.vhdx")
        try runChecked(TestEnv.bulwark, ["disk", "create", parent, "--size", "64M"])
        try runChecked(TestEnv.bulwark, ["disk", "write", parent, "--offset", "0"], input: Data(repeating: 0xAB, count: 4 << 20))
        try runChecked(TestEnv.bulwark, ["disk", "create", child, "--parent", parent])
        try runChecked(TestEnv.bulwark, ["disk", "write", child, "--offset", "1M"], input: Data(count: 2 << 20))
        let back = try runChecked(TestEnv.bulwark, ["disk", "read", child, "--length", "4M"]).stdout
        var expected = Data(repeating: 0xAB, count: 4 << 20)
        expected.replaceSubrange((1 << 20)..<(3 << 20), with: Data(count: 2 << 20))
        #expect(back == expected)
    }

    func allocated(_ path: String) throws -> UInt64 {
        let store = try BlockFile.open(FilePath(path), writable: false)
        defer { try? store.close() }
        return try store.allocatedBytes()
    }
}
