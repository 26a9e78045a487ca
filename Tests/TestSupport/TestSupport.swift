import Foundation
import SystemPackage

/// Helpers for tests that use real components: temporary folders, external programs (qemu-img,
/// pyvhdi through Debian's python3, mkfs, losetup) and the built `bulwark` binary.
public enum TestEnv {
    /// True when CI demands real components: a missing prerequisite is then a failure, not a skip.
    public static var requireReal: Bool { ProcessInfo.processInfo.environment["BULWARK_REQUIRE_REAL"] == "1" }

    /// Whether we run as root (loop devices, mounts, freezing).
    public static var isRoot: Bool { geteuid() == 0 }

    /// Whether `tool` is on PATH (or is an absolute path to an executable).
    public static func has(_ tool: String) -> Bool { which(tool) != nil }

    public static func which(_ tool: String) -> String? {
        if tool.hasPrefix("/") { return FileManager.default.isExecutableFile(atPath: tool) ? tool : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"] {
            let candidate = "\(dir)/\(tool)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// The outcome of a prerequisite check: run the test, or skip it (only allowed outside CI).
    /// Use as `guard try TestEnv.prerequisite(...) else { return }`; in CI a missing piece throws.
    public static func prerequisite(_ condition: Bool, _ what: String) throws -> Bool {
        if condition { return true }
        if requireReal { throw TestFailure("BULWARK_REQUIRE_REAL=1 but a prerequisite is missing: \(what)") }
        print("skipping: \(what) is not available")
        return false
    }

    /// Requires each tool to be installed (see `prerequisite`).
    public static func tools(_ names: String...) throws -> Bool {
        for n in names where !has(n) { return try prerequisite(false, "the program \(n)") }
        return true
    }

    /// Debian's python3 (where pyvhdi lives), when pyvhdi imports.
    public static func pyvhdiAvailable() -> Bool {
        (try? run("/usr/bin/python3", ["-c", "import pyvhdi"]).status) == 0
    }

    /// The package's build folder (where `bulwark` is), found from the running test bundle.
    public static var buildDirectory: URL {
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.isExecutableFile(atPath: url.appendingPathComponent("bulwark").path) { return url }
        }
        return URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(".build/debug")
    }

    /// The built `bulwark` executable.
    public static var bulwark: String { buildDirectory.appendingPathComponent("bulwark").path }
}

/// A test failure with a message.
public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A temporary folder removed when the object goes away.
public final class TempDir: @unchecked Sendable {
    public let url: URL
    public var path: String { url.path }

    public init(_ prefix: String = "bulwark-test", under base: String? = nil) throws {
        let root = base ?? ProcessInfo.processInfo.environment["BULWARK_TEST_TMP"] ?? NSTemporaryDirectory()
        url = URL(fileURLWithPath: root).appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    /// A path inside the folder.
    public func file(_ name: String) -> String { url.appendingPathComponent(name).path }

    deinit { try? FileManager.default.removeItem(at: url) }
}

/// The result of running a program.
public struct RunResult: Sendable {
    public var status: Int32
    public var stdout: Data
    public var stderr: Data
    public var out: String { String(decoding: stdout, as: UTF8.self) }
    public var err: String { String(decoding: stderr, as: UTF8.self) }
}

/// A child that exits before reading all of `input` (a refused `disk write`, say) must cost the test
/// an `EPIPE` on the feeding write, not the whole test process a SIGPIPE (CI lost a run to one).
private let brokenPipesIgnored: Void = { _ = signal(SIGPIPE, SIG_IGN) }()

/// Runs `executable` with `arguments`, feeding `input`, draining stdout and stderr together.
@discardableResult
public func run(_ executable: String, _ arguments: [String], input: Data? = nil, environment: [String: String]? = nil) throws -> RunResult {
    _ = brokenPipesIgnored
    let process = Process()
    process.executableURL = URL(fileURLWithPath: TestEnv.which(executable) ?? executable)
    process.arguments = arguments
    if let environment {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    let outPipe = Pipe(), errPipe = Pipe(), inPipe = Pipe()
    process.standardOutput = outPipe
    process.standardError = errPipe
    process.standardInput = input == nil ? FileHandle.nullDevice : inPipe
    try process.run()
    let group = DispatchGroup()
    nonisolated(unsafe) var out = Data(), err = Data()
    group.enter()
    DispatchQueue.global().async { out = outPipe.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    group.enter()
    DispatchQueue.global().async { err = errPipe.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    if let input {
        DispatchQueue.global().async {
            try? inPipe.fileHandleForWriting.write(contentsOf: input)
            try? inPipe.fileHandleForWriting.close()
        }
    }
    process.waitUntilExit()
    group.wait()
    return RunResult(status: process.terminationStatus, stdout: out, stderr: err)
}

/// Runs a program and throws (with its output) unless it exits 0.
@discardableResult
public func runChecked(_ executable: String, _ arguments: [String], input: Data? = nil) throws -> RunResult {
    let r = try run(executable, arguments, input: input)
    guard r.status == 0 else {
        throw TestFailure("\(executable) \(arguments.joined(separator: " ")) exited \(r.status): \(r.err)\(r.out.prefix(2000))")
    }
    return r
}

/// A deterministic pseudo-random generator (SplitMix64) so failures can be replayed by seed.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// `count` random bytes.
    public mutating func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var i = 0
        while i < count {
            var v = next()
            for _ in 0..<8 where i < count { out[i] = UInt8(truncatingIfNeeded: v); v >>= 8; i += 1 }
        }
        return out
    }
}
