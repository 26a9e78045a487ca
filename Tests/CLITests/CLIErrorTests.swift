import Foundation
import Testing
import TestSupport
import VirtualDisk

/// Failures: the exit status of each error class, the library's message and the CLI's hint line.
@Suite struct CLIErrorTests {
    @Test func exitStatusFollowsTheErrorClass() throws {
        let dir = try TempDir()
        #expect(try run(TestEnv.bulwark, ["disk", "info", dir.file("nope.vhdx")]).status == Exit.notFound)
        // A VHDX cut short: its signature is there, its structures are not.
        let broken = dir.file("broken.vhdx")
        try runChecked(TestEnv.bulwark, ["disk", "create", broken, "--size", "8M"])
        try FileHandle(forWritingTo: URL(fileURLWithPath: broken)).truncate(atOffset: 100 << 10)
        let r = try run(TestEnv.bulwark, ["disk", "info", broken])
        #expect(r.status == Exit.corrupt, "\(r.status) \(r.err)")
        let image = dir.file("a.img")
        try runChecked(TestEnv.bulwark, ["disk", "create", image, "--size", "1M"])
        let exists = try run(TestEnv.bulwark, ["disk", "create", image, "--size", "1M"])
        #expect(exists.status == Exit.refused, "\(exists.err)")
        #expect(exists.err.contains("hint: choose another name"), "\(exists.err)")
        #expect(try run(TestEnv.bulwark, ["disk", "info"]).status == Exit.usage)
    }

    @Test func hasChildrenMessageIsTheLibrarysAndTheHintNamesTheFlag() throws {
        let library = DiskError.hasChildren(path: "a.vhdx", children: ["b.vhdx"]).description
        #expect(library.contains("merge them first, or confirm that they may be broken"), "\(library)")
        #expect(!library.contains("--"), "the library names no flags: \(library)")
        let dir = try TempDir()
        let base = dir.file("base.vhdx"), child = dir.file("child.vhdx")
        try runChecked(TestEnv.bulwark, ["disk", "create", base, "--size", "8M"])
        try runChecked(TestEnv.bulwark, ["disk", "create", child, "--parent", base])
        let r = try run(TestEnv.bulwark, ["disk", "resize", base, "--size", "16M"])
        #expect(r.status == Exit.refused)
        #expect(r.err.contains(library.replacingOccurrences(of: "a.vhdx", with: base).components(separatedBy: ":").first!))
        #expect(r.err.contains("merge them first, or confirm that they may be broken"), "\(r.err)")
        #expect(r.err.contains("hint: ") && r.err.contains("--force"), "\(r.err)")
    }

    @Test func missingParentHintsAtReparent() throws {
        let dir = try TempDir()
        let base = dir.file("base.vhd"), child = dir.file("child.vhd")
        try runChecked(TestEnv.bulwark, ["disk", "create", base, "--size", "8M"])
        try runChecked(TestEnv.bulwark, ["disk", "create", child, "--parent", base])
        try FileManager.default.moveItem(atPath: base, toPath: dir.file("moved.vhd"))
        let r = try run(TestEnv.bulwark, ["disk", "read", child, "--length", "512"])
        #expect(r.status == Exit.notFound)
        #expect(r.err.contains("parent disk not found"), "\(r.err)")
        #expect(r.err.contains("hint: `bulwark disk reparent \(child) --parent PATH` points it at a moved parent"), "\(r.err)")
    }

    @Test func checkOfAnImageInUseNamesThePIDAndDoesNotSuggestRepair() throws {
        let dir = try TempDir()
        let image = dir.file("busy.vhdx")
        try runChecked(TestEnv.bulwark, ["disk", "create", image, "--size", "8M"])
        // This test process plays the writer: it holds the image's writer lock.
        let fd = open(image, O_RDWR)
        try #require(fd >= 0)
        defer { close(fd) }
        try #require(flock(fd, LOCK_EX) == 0)
        for repair in [false, true] {
            let r = try run(TestEnv.bulwark, ["disk", "check", image] + (repair ? ["--repair"] : []))
            #expect(r.status == Exit.busy, "\(r.status) \(r.out) \(r.err)")
            #expect(r.err.contains("in use"), "\(r.err)")
            #expect(r.err.contains("PID \(getpid())"), "names the holder: \(r.err)")
            #expect(!(r.out + r.err).contains("--repair"), "no repair advice while a writer has it open: \(r.out) \(r.err)")
        }
        flock(fd, LOCK_UN)
        #expect(try run(TestEnv.bulwark, ["disk", "check", image]).status == 0)
    }
}
