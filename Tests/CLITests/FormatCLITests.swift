import Foundation
import SystemPackage
import Testing
import TestSupport
import VirtualDisk

/// Format hardening as the command line shows it: names that promise a format, tolerated damage in
/// `info`, and a FIFO where a parent should be.
@Suite struct FormatCLITests {
    @Test func aTinyFileNamedVHDIsRefusedUnlessAskedForAsRaw() throws {
        let dir = try TempDir()
        for name in ["one.vhd", "one.vhdx"] {
            let path = dir.file(name)
            try Data([0x41]).write(to: URL(fileURLWithPath: path))
            let check = try run(TestEnv.bulwark, ["disk", "check", path])
            #expect(check.status == 1, "check: \(check.out)")
            #expect(!check.out.contains("\(path): clean"))
            let resize = try run(TestEnv.bulwark, ["disk", "resize", path, "--size", "1M"])
            #expect(resize.status == 4, "corrupt image: exit 4")
            #expect(resize.err.contains(path) && resize.err.contains("--format raw"), "\(resize.err)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data([0x41]), "resize left the file alone")
            let info = try run(TestEnv.bulwark, ["disk", "info", path])
            #expect(info.status == 4 && info.err.contains("--format raw"), "\(info.err)")
            let raw = try runChecked(TestEnv.bulwark, ["disk", "read", path, "--format", "raw"])
            #expect(raw.stdout == Data([0x41]))
        }
    }

    @Test func infoShowsWhatAnOpenTolerated() throws {
        let dir = try TempDir()
        let path = dir.file("disk.vhd")
        try runChecked(TestEnv.bulwark, ["disk", "create", path, "--size", "8M"])
        let size = UInt64((try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0)
        for offset in [UInt64(80), size - 512 + 80] {
            let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
            try h.seek(toOffset: offset)
            h.write(Data([0x5A]))
            try h.close()
        }
        let info = try runChecked(TestEnv.bulwark, ["disk", "info", path])
        #expect(info.out.contains("warning") && info.out.contains("checksum is wrong in both copies"), "\(info.out)")
        let check = try run(TestEnv.bulwark, ["disk", "check", path])
        #expect(check.status == 1 && check.out.contains("checksum"))
        let write = try run(TestEnv.bulwark, ["disk", "write", path, "--offset", "0"], input: Data([1]))
        #expect(write.status == 4, "a damaged image: exit 4")
        try runChecked(TestEnv.bulwark, ["disk", "check", path, "--repair"])
        try runChecked(TestEnv.bulwark, ["disk", "write", path, "--offset", "0"], input: Data([1]))
    }

    @Test func aFIFOInPlaceOfTheParentFailsAtOnce() throws {
        let dir = try TempDir()
        let parent = dir.file("P.vhd"), child = dir.file("C.vhd")
        try runChecked(TestEnv.bulwark, ["disk", "create", parent, "--size", "8M"])
        try runChecked(TestEnv.bulwark, ["disk", "create", child, "--parent", parent])
        try FileManager.default.removeItem(atPath: parent)
        #expect(mkfifo(parent, 0o644) == 0)
        let start = Date()
        // `timeout` ends a hang (exit 124) so a regression fails instead of blocking the suite.
        let r = try run("/usr/bin/timeout", ["20", TestEnv.bulwark, "disk", "read", child, "--length", "512"])
        #expect(r.status == 1, "status \(r.status): \(r.err)")
        #expect(Date().timeIntervalSince(start) < 10)
        #expect(r.err.contains(child) && r.err.contains(parent) && r.err.contains("FIFO"), "\(r.err)")
        let check = try run("/usr/bin/timeout", ["20", TestEnv.bulwark, "disk", "check", child])
        #expect(check.status == 1, "check status \(check.status)")
    }
}
