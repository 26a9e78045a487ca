import Foundation
import Testing
import TestSupport

/// The command line, run as a user runs it: the built `bulwark` binary in a child process.
@Suite struct CLITests {
    @Test func rawCreateWriteReadRoundTrip() throws {
        let dir = try TempDir()
        let image = dir.file("disk.img")
        try runChecked(TestEnv.bulwark, ["disk", "create", image, "--size", "4M"])
        let payload = Data((0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try runChecked(TestEnv.bulwark, ["disk", "write", image, "--offset", "1000"], input: payload)
        let back = try runChecked(TestEnv.bulwark, ["disk", "read", image, "--offset", "1000", "--length", "10000"])
        #expect(back.stdout == payload)
    }

    @Test func aMissingFileExitsNotFoundWithTheFileNamed() throws {
        let dir = try TempDir()
        let missing = dir.file("nope.vhd")
        let r = try run(TestEnv.bulwark, ["disk", "info", missing])
        #expect(r.status == Exit.notFound)
        #expect(r.err.contains(missing))
        #expect(r.err.contains("no such file"))
    }
}
