import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs the built `bulwark` and kills it with SIGKILL after a delay: the crash tests' one way to stop
/// a process at a random moment.
public enum KilledRun {
    /// Runs `bulwark ARGUMENTS` with `environment` added, SIGKILLs it after `delay` microseconds if it
    /// is still running, and returns whether the kill hit it, its status and its standard error.
    public static func run(_ arguments: [String], after delay: UInt32, environment: [String: String] = [:]) throws -> (killed: Bool, status: Int32, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
        p.arguments = arguments
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        p.standardOutput = FileHandle.nullDevice
        let errFile = NSTemporaryDirectory() + "killed-\(UUID().uuidString.prefix(8)).err"
        _ = FileManager.default.createFile(atPath: errFile, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: errFile) }
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errFile))
        try p.run()
        usleep(delay)
        var killed = false
        if p.isRunning { killed = kill(p.processIdentifier, SIGKILL) == 0 }
        p.waitUntilExit()
        let err = (try? String(contentsOfFile: errFile, encoding: .utf8)) ?? ""
        return (killed && p.terminationReason == .uncaughtSignal, p.terminationStatus, err)
    }

    /// How long one uninterrupted run takes (microseconds), to spread kills over it, and its result.
    public static func duration(_ arguments: [String], environment: [String: String] = [:]) throws -> (UInt32, RunResult) {
        let start = Date()
        let r = try TestSupport.run(TestEnv.bulwark, arguments, environment: environment)
        return (UInt32(Date().timeIntervalSince(start) * 1_000_000), r)
    }
}

/// Runs blocking work on a thread of its own and awaits it: async tests that read images, spawn
/// processes or wait for them must not hold one of the few threads of Swift's cooperative pool, which
/// every other async test (and the code under test) needs to make progress. Expectations inside
/// `body` still fail the run; they are reported with their file and line but no test name.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}
