#if canImport(Glibc)
import Glibc
#endif
import VirtualDisk
import Storage

/// An executable called as `HOOK freeze` and `HOOK thaw` (like qemu-ga's fsfreeze-hook): it quiesces
/// an application (flush a database, pause a queue). Each call has a timeout after which the hook's
/// whole process group is killed; its stdout and stderr go, together and in order, into the job log.
///
/// Environment: BULWARK_SNAPSHOT_ID, BULWARK_PHASE (freeze/thaw), BULWARK_DISK (the first disk),
/// BULWARK_DISKS (all, ':'-separated), BULWARK_OUTPUT.
public struct HookWriter: SnapshotWriter {
    public let path: String
    public let timeout: Double

    public init(path: String, timeout: Double = 10) {
        self.path = Paths.canonical(path)
        self.timeout = timeout
    }

    public var identity: WriterIdentity {
        WriterIdentity(kind: "hook", name: "hook:" + Paths.baseName(path), covers: [path], key: path)
    }

    public var resources: [String] { ["hook:" + path] }

    /// The hook's environment for `phase`.
    public static func environment(phase: String, context: SnapshotContext) -> [String: String] {
        var env = Spawn.environment
        env["BULWARK_SNAPSHOT_ID"] = context.snapshotID
        env["BULWARK_PHASE"] = phase
        env["BULWARK_DISK"] = context.disks.first ?? ""
        env["BULWARK_DISKS"] = context.disks.joined(separator: ":")
        env["BULWARK_OUTPUT"] = context.outputDirectory
        return env
    }

    /// The watchdog's thaw for this hook in `context`.
    public func recovery(for context: SnapshotContext) -> WatchdogAction? {
        .hook(path: path, environment: Self.environment(phase: "thaw", context: context), timeout: timeout)
    }

    public func prepare(_ context: SnapshotContext) async throws -> [String] {
        guard access(path, X_OK) == 0 else {
            throw ShadowCopyError.hookFailed(hook: path, phase: "prepare", reason: "not an executable file")
        }
        return []
    }

    public func freeze(_ context: SnapshotContext) async throws -> [String] {
        try await call("freeze", context)
        return []
    }

    public func thaw(_ context: SnapshotContext) async throws {
        try await call("thaw", context)
    }

    private func call(_ phase: String, _ context: SnapshotContext) async throws {
        let env = Self.environment(phase: phase, context: context)
        try await BlockingPool.control.run { [path, timeout] in
            try Self.run(path: path, phase: phase, environment: env, timeout: timeout, log: context.log)
        }
    }

    /// Runs the hook once (blocking); throws `hookFailed` on a non-zero exit or a timeout.
    public static func run(path: String, phase: String, environment: [String: String], timeout: Double, log: SnapshotLog) throws {
        let name = Paths.baseName(path)
        let outcome: TimedProcess.Outcome
        do {
            outcome = try TimedProcess.run(path, [phase], environment: environment, timeout: timeout) { line in
                log.add("[\(name) \(phase)] \(line)")
            }
        } catch {
            throw ShadowCopyError.hookFailed(hook: path, phase: phase, reason: "could not start: \(error)")
        }
        if outcome.timedOut {
            throw ShadowCopyError.timedOut(phase: "hook \(path) \(phase)", seconds: timeout)
        }
        guard let status = outcome.status, Spawn.describe(status).exitCode == 0 else {
            throw ShadowCopyError.hookFailed(hook: path, phase: phase, reason: outcome.statusText)
        }
    }
}
