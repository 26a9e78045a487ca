import Foundation
import SystemPackage
import Testing
import TestSupport
import VirtualDisk

/// Helpers for the tests that run merges next to writers, readers and kills.
enum MergeRace {
    /// A base (64 MiB, 16 MiB of random data at 0) and a leaf over it (16 MiB of random data at 8 MiB):
    /// enough pieces for a slowed merge to take a while. Returns the paths, what the leaf reads and
    /// what the base reads before the merge.
    static func chain(_ format: DiskFormat, in dir: TempDir, seed: UInt64) throws -> (base: FilePath, leaf: FilePath, merged: [UInt8], base0: [UInt8]) {
        var rng = SeededRandom(seed: seed)
        let base = FilePath(dir.file("base.\(format.rawValue)")), leaf = FilePath(dir.file("leaf.\(format.rawValue)"))
        let image = try DiskImages.create(at: base, options: CreateOptions(format: format, type: .dynamic, virtualSize: 64 << 20,
                                                                            blockSize: OpsCLI.blockSize(format)))
        let baseData = rng.bytes(16 << 20)
        try image.write(baseData, at: 0)
        try image.close()
        let child = try DiskImages.create(at: leaf, options: CreateOptions(format: format, type: .differencing,
                                                                            blockSize: OpsCLI.blockSize(format), parentPath: base))
        let leafData = rng.bytes(16 << 20)
        try child.write(leafData, at: 8 << 20)
        for l in child.chain { try l.close() }
        var base0 = [UInt8](repeating: 0, count: 64 << 20)
        base0.replaceSubrange(0..<(16 << 20), with: baseData)
        var merged = base0
        merged.replaceSubrange((8 << 20)..<(24 << 20), with: leafData)
        return (base, leaf, merged, base0)
    }

    /// A `bulwark` run in the background with paced copy loops.
    final class Background {
        let process = Process()
        private let errFile = NSTemporaryDirectory() + "bulwark-bg-\(UUID().uuidString.prefix(8)).err"

        init(_ arguments: [String], slowIO: Int) throws {
            process.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
            process.arguments = arguments
            process.environment = ProcessInfo.processInfo.environment.merging(["BULWARK_TEST_SLOW_IO": "\(slowIO)"]) { $1 }
            process.standardOutput = FileHandle.nullDevice
            FileManager.default.createFile(atPath: errFile, contents: nil)
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errFile))
            try process.run()
        }

        var pid: Int32 { process.processIdentifier }

        /// Waits for the exit; the status and standard error.
        func wait() -> (status: Int32, err: String) {
            process.waitUntilExit()
            defer { try? FileManager.default.removeItem(atPath: errFile) }
            return (process.terminationStatus, (try? String(contentsOfFile: errFile, encoding: .utf8)) ?? "")
        }
    }

    /// Polls until `condition` holds (true) or `seconds` pass (false).
    static func waitFor(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(5_000)
        }
        return condition()
    }

    /// `bulwark disk read PATH` into a file: the status, the bytes (when it succeeded) and stderr.
    static func cliRead(_ path: FilePath, in dir: TempDir) throws -> (status: Int32, bytes: [UInt8], err: String) {
        let out = dir.file("read-\(UUID().uuidString.prefix(8)).bin")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let r = try run(TestEnv.bulwark, ["disk", "read", path.string, "--output", out])
        let bytes = r.status == 0 ? [UInt8](try Data(contentsOf: URL(fileURLWithPath: out))) : []
        return (r.status, bytes, r.err)
    }

    /// What libvhdi reads through `paths` (base first), or its error; nil without pyvhdi.
    static func pyvhdiRead(_ paths: [FilePath]) throws -> Result<[UInt8], TestFailure>? { try PyVHDI.read(paths) }

    /// The PID of a process that has exited (for stale temporary files).
    static func deadPID() throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run()
        p.waitUntilExit()
        return p.processIdentifier
    }
}
