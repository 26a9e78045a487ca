import SystemPackage

/// Every failure the snapshot coordinator, its writers and providers report. Each case names the
/// component and the cause, so the command line can print it as it is and exit non-zero.
public enum ShadowCopyError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The guest agent's socket is missing or nobody listens on it.
    case agentUnavailable(socket: String, reason: String)
    /// The guest agent did not answer within the per-call timeout.
    case agentTimedOut(socket: String, command: String, seconds: Double)
    /// The guest agent answered with an error or with something that is not its protocol.
    case agentError(socket: String, command: String, reason: String)
    /// A filesystem freeze or thaw failed.
    case freezeFailed(mountpoint: String, operation: String, errno: Errno)
    /// Freezing this filesystem would freeze the host itself (or the coordinator's own files).
    case refusedToFreeze(mountpoint: String, reason: String)
    /// A writer's freeze left some of what it was asked to freeze unfrozen (a guest agent that froze
    /// fewer filesystems than mountpoints given): the copy would not be application-consistent.
    case notFrozen(writer: String, mountpoints: [String], reason: String)
    /// A hook script failed, could not start, or was killed after its timeout.
    case hookFailed(hook: String, phase: String, reason: String)
    /// The reflink (FICLONE) copy is impossible on this filesystem.
    case reflinkUnsupported(source: String, destination: String, reason: String)
    /// The output folder cannot be made or written (checked before anything is frozen).
    case outputUnusable(path: String, reason: String)
    /// A provider could not take the point-in-time copy.
    case providerFailed(provider: String, reason: String)
    /// A phase ran past its deadline.
    case timedOut(phase: String, seconds: Double)
    /// The snapshot was cancelled (signal or task cancellation); every writer was thawed.
    case cancelled
    /// The watchdog process could not be started or did not report ready.
    case watchdogFailed(reason: String)
    /// The persisted writer state could not be read or written.
    case stateFile(path: String, reason: String)
    /// Another snapshot holds a resource this one needs and did not release it in time.
    case resourceBusy(resource: String, seconds: Double)
    /// A caller's argument is unusable.
    case invalidArgument(String)
    /// A system call failed.
    case system(operation: String, errno: Errno)

    public var description: String {
        switch self {
        case let .agentUnavailable(socket, reason):
            return "guest agent \(socket): unavailable: \(reason)"
        case let .agentTimedOut(socket, command, seconds):
            return "guest agent \(socket): no answer to \(command) within \(seconds) s"
        case let .agentError(socket, command, reason):
            return "guest agent \(socket): \(command) failed: \(reason)"
        case let .freezeFailed(mountpoint, operation, errno):
            return "\(mountpoint): \(operation) failed: \(errno) (errno \(errno.rawValue))"
        case let .refusedToFreeze(mountpoint, reason):
            return "\(mountpoint): refusing to freeze: \(reason)"
        case let .notFrozen(writer, mountpoints, reason):
            return "\(writer): did not freeze \(mountpoints.joined(separator: ", ")): \(reason)"
        case let .hookFailed(hook, phase, reason):
            return "hook \(hook) \(phase): \(reason)"
        case let .reflinkUnsupported(source, destination, reason):
            return "\(source): cannot reflink to \(destination): \(reason)"
        case let .outputUnusable(path, reason):
            return "output folder \(path): \(reason)"
        case let .providerFailed(provider, reason):
            return "provider \(provider): \(reason)"
        case let .timedOut(phase, seconds):
            return "\(phase) did not finish within its deadline of \(seconds) s"
        case .cancelled:
            return "snapshot cancelled; all writers were thawed"
        case let .watchdogFailed(reason):
            return "snapshot watchdog: \(reason)"
        case let .stateFile(path, reason):
            return "\(path): writer state: \(reason)"
        case let .resourceBusy(resource, seconds):
            return "\(resource): still in use by another snapshot after \(seconds) s"
        case let .invalidArgument(reason):
            return reason
        case let .system(operation, errno):
            return "\(operation) failed: \(errno) (errno \(errno.rawValue))"
        }
    }

    /// How a writer that failed with this error is classified (VSS's retryable / non-retryable /
    /// timed out).
    public var writerErrorClass: WriterErrorClass {
        switch self {
        case .agentTimedOut, .timedOut: return .timedOut
        case .agentUnavailable, .resourceBusy, .cancelled: return .retryable
        default: return .nonRetryable
        }
    }
}

/// A snapshot that failed: the cause and what was recorded up to the failure (writer results,
/// hold time). Every writer was thawed before this is thrown.
public struct SnapshotFailure: Error, Sendable, CustomStringConvertible {
    public var cause: ShadowCopyError
    public var result: SnapshotResult
    public var description: String { "snapshot \(result.snapshotID) failed: \(cause.description)" }
}
