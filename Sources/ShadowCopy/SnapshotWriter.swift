import Foundation
import Storage
import Synchronization

/// What a writer learns about the snapshot it takes part in.
public struct SnapshotContext: Sendable {
    public var snapshotID: String
    /// The disks being copied.
    public var disks: [String]
    /// Where copies go.
    public var outputDirectory: String
    /// The job log (hook output, notes).
    public var log: SnapshotLog
    /// Paths the coordinator writes to while writers are frozen (state directory, output): the
    /// filesystems holding them must not be frozen.
    public var protectedPaths: [String]

    public init(snapshotID: String, disks: [String], outputDirectory: String, log: SnapshotLog, protectedPaths: [String] = []) {
        self.snapshotID = snapshotID
        self.disks = disks
        self.outputDirectory = outputDirectory
        self.log = log
        self.protectedPaths = protectedPaths
    }
}

/// An application or filesystem that can be frozen for a snapshot (a VSS writer). The coordinator
/// calls prepare → freeze → thaw → complete, each under a deadline; `thaw` is called on every path
/// after `freeze` was attempted, and must be safe to call when nothing is frozen.
///
/// Methods are async; implementations offload blocking calls with `BlockingPool.control.run` (freeze, agents and hooks can hang; disk I/O has its own pool).
public protocol SnapshotWriter: Sendable {
    /// Name, stable id and what the writer covers.
    var identity: WriterIdentity { get }
    /// Resources two snapshots must not freeze at once (lock keys: socket, filesystem, hook).
    var resources: [String] { get }
    /// What the watchdog must do to thaw this writer if the coordinator dies while it is frozen
    /// (nil: the writer cannot be thawed from another process).
    func recovery(for context: SnapshotContext) -> WatchdogAction?
    /// Checks the writer can take part (agent answers, hook is executable, mountpoint allowed).
    /// Returns notes for the result (may be empty).
    func prepare(_ context: SnapshotContext) async throws -> [String]
    /// Freezes. Returns notes for the result (may be empty).
    func freeze(_ context: SnapshotContext) async throws -> [String]
    /// Thaws; must succeed when already thawed.
    func thaw(_ context: SnapshotContext) async throws
    /// The snapshot is finished (after the provider's post-thaw work).
    func complete(_ context: SnapshotContext, succeeded: Bool) async throws
    /// Thaws a freeze left by a crashed earlier run (the stuck-writer reset). Default: `thaw`.
    func recover(_ context: SnapshotContext) async throws
}

extension SnapshotWriter {
    public func recovery(for context: SnapshotContext) -> WatchdogAction? { nil }
    public func complete(_ context: SnapshotContext, succeeded: Bool) async throws {}
    public func recover(_ context: SnapshotContext) async throws { try await thaw(context) }
}

/// What the watchdog runs to thaw a writer whose coordinator died.
public enum WatchdogAction: Codable, Sendable, Equatable {
    /// FITHAW on a mountpoint.
    case filesystem(mountpoint: String)
    /// guest-fsfreeze-thaw through the agent's socket.
    case guestAgent(socket: String, timeout: Double)
    /// `hook thaw` with this environment.
    case hook(path: String, environment: [String: String], timeout: Double)
}

/// The job log: lines from hooks and notes from the coordinator, thread-safe, in arrival order.
public final class SnapshotLog: @unchecked Sendable {
    private let lock = Mutex(())
    private var lines: [String] = []
    private let echo: (@Sendable (String) -> Void)?

    /// `echo` also receives every line as it is added (e.g. to print it).
    public init(echo: (@Sendable (String) -> Void)? = nil) { self.echo = echo }

    public func add(_ line: String) {
        lock.withLock { _ in lines.append(line) }
        echo?(line)
    }

    public var all: [String] { lock.withLock { _ in lines } }
}
