#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Storage

/// An executable called as `HOOK freeze` and `HOOK thaw` (like qemu-ga's fsfreeze-hook): it quiesces
/// an application (flush a database, pause a queue). Each call runs in its own process group, has a
/// timeout, and ends when the hook process exits (not when its output closes); on every way out the
/// whole group is killed (see `TimedProcess`). Its stdout and stderr go, together and in order, into
/// the job log.
///
/// A freeze still running when its thaw comes (the hold's deadline passed, the snapshot was
/// cancelled) is killed first and the thaw runs after it: a freeze that finished after its thaw
/// would leave the application frozen for good.
///
/// Environment: BULWARK_SNAPSHOT_ID, BULWARK_PHASE (freeze/thaw), BULWARK_DISK (the first disk),
/// BULWARK_DISKS (all, ':'-separated), BULWARK_OUTPUT, and BULWARK_HOOK_RUN (the snapshot and the
/// hook: the watchdog finds the processes of a dead coordinator's hooks by it).
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

    /// The environment of hook `path` for `phase`.
    public static func environment(phase: String, context: SnapshotContext, path: String) -> [String: String] {
        var env = Spawn.environment
        env["BULWARK_SNAPSHOT_ID"] = context.snapshotID
        env["BULWARK_PHASE"] = phase
        env["BULWARK_DISK"] = context.disks.first ?? ""
        env["BULWARK_DISKS"] = context.disks.joined(separator: ":")
        env["BULWARK_OUTPUT"] = context.outputDirectory
        env[runMarkerVariable] = runMarker(snapshotID: context.snapshotID, path: path)
        return env
    }

    /// The variable marking every process of one hook in one snapshot (inherited by its children).
    public static let runMarkerVariable = "BULWARK_HOOK_RUN"

    /// The value of `runMarkerVariable` for `path` in snapshot `snapshotID`.
    public static func runMarker(snapshotID: String, path: String) -> String { "\(snapshotID):\(path)" }

    /// The watchdog's thaw for this hook in `context`.
    public func recovery(for context: SnapshotContext) -> WatchdogAction? {
        .hook(path: path, environment: Self.environment(phase: "thaw", context: context, path: path), timeout: timeout)
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
        let env = Self.environment(phase: phase, context: context, path: path)
        let (path, timeout, id) = (self.path, self.timeout, context.snapshotID)
        try await BlockingPool.control.run {
            if phase == "thaw" {
                // A freeze still in flight must end before the thaw starts, or it could finish after it.
                let left = RunningHooks.shared.stop(snapshotID: id, path: path, wait: TimedProcess.killGrace)
                if left.killed > 0 {
                    context.log.add("hook \(path): killed its freeze, still running at the thaw" +
                                    (left.stillAlive > 0 ? " (\(left.stillAlive) process(es) blocked in the kernel, SIGKILL pending)" : ""))
                }
            }
            try Self.run(path: path, phase: phase, environment: env, timeout: timeout, log: context.log) { group in
                RunningHooks.shared.add(group, snapshotID: id, path: path)
            }
        }
    }

    /// Runs the hook once (blocking); throws `hookFailed` on a non-zero exit or when stopped,
    /// `timedOut` after its timeout. `onStart` receives the hook's process group as soon as it runs.
    public static func run(path: String, phase: String, environment: [String: String], timeout: Double, log: SnapshotLog) throws {
        try run(path: path, phase: phase, environment: environment, timeout: timeout, log: log, onStart: { _ in })
    }

    static func run(path: String, phase: String, environment: [String: String], timeout: Double, log: SnapshotLog,
                    onStart: (ProcessGroup) -> Void) throws {
        let name = Paths.baseName(path)
        var started: ProcessGroup?
        defer { if let started { RunningHooks.shared.remove(started) } }
        let outcome: TimedProcess.Outcome
        do {
            outcome = try TimedProcess.run(path, [phase], environment: environment, timeout: timeout, onStart: { group in
                started = group
                onStart(group)
            }) { line in
                log.add("[\(name) \(phase)] \(line)")
            }
        } catch {
            throw ShadowCopyError.hookFailed(hook: path, phase: phase, reason: "could not start: \(error)")
        }
        if outcome.timedOut {
            throw ShadowCopyError.timedOut(phase: "hook \(path) \(phase)", seconds: timeout)
        }
        guard !outcome.stopped, let status = outcome.status, Spawn.describe(status).exitCode == 0 else {
            throw ShadowCopyError.hookFailed(hook: path, phase: phase, reason: outcome.statusText)
        }
    }
}

/// The hook processes running in this process, by snapshot and hook, so that a thaw can stop a
/// freeze still in flight and the end of a snapshot can stop whatever of its hooks is left.
final class RunningHooks: Sendable {
    static let shared = RunningHooks()

    private struct Entry {
        let group: ProcessGroup
        let snapshotID: String
        let path: String
    }

    private let entries = Mutex<[Entry]>([])

    func add(_ group: ProcessGroup, snapshotID: String, path: String) {
        entries.withLock { $0.append(Entry(group: group, snapshotID: snapshotID, path: path)) }
    }

    func remove(_ group: ProcessGroup) {
        entries.withLock { $0.removeAll { $0.group === group } }
    }

    /// Kills (SIGKILL to the whole group) every hook process of `snapshotID` (only hook `path`'s
    /// when given) and waits up to `wait` seconds for each to end. Returns how many were killed
    /// and how many had not ended by then.
    @discardableResult
    func stop(snapshotID: String, path: String? = nil, wait: Double) -> (killed: Int, stillAlive: Int) {
        let groups = entries.withLock { list in
            list.filter { $0.snapshotID == snapshotID && (path == nil || $0.path == path) && !$0.group.isFinished }.map(\.group)
        }
        groups.forEach { $0.stop() }
        let deadline = Clock.now() + wait
        let alive = groups.filter { !$0.waitFinished(seconds: max(0, deadline - Clock.now())) }.count
        return (groups.count, alive)
    }
}
