/// Failures of backup, verify and prune jobs that are not store, image or target failures (those keep
/// their own types: `StorageError`, `DiskError`, `TargetError`). Each case names the policy or point,
/// the cause and the next step.
public enum ProtectionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A source the policy names does not exist (or vanished before the snapshot).
    case sourceMissing(policy: String, source: String)
    /// A source changed under the job in a way that makes what was read meaningless (it shrank: a
    /// truncated file, a device that went away).
    case sourceChanged(source: String, reason: String)
    /// The policy would make crash-consistent points without allowing them.
    case crashConsistentRefused(policy: String, reason: String)
    /// The target cannot be written.
    case targetUnusable(target: String, reason: String)
    /// The snapshot (freeze, copy, thaw) failed; `retryable` when a writer timed out or was busy.
    case snapshotFailed(policy: String, reason: String, retryable: Bool)
    /// A point failed verification.
    case verifyFailed(machine: String, version: String, problem: String)
    /// A policy file could not be used (the loader's diagnostics, joined).
    case policyInvalid(file: String, reason: String)
    /// A prune could not go on (a chain that does not have the shape retention needs).
    case pruneRefused(machine: String, reason: String)

    public var description: String {
        switch self {
        case let .sourceMissing(policy, source):
            return "policy \(policy): source \(source) does not exist; fix the path in the policy, or remove the source"
        case let .sourceChanged(source, reason):
            return "source \(source) changed during the job: \(reason); no point was made, run the job again once the source is back"
        case let .crashConsistentRefused(policy, reason):
            return "policy \(policy): \(reason); add a writer under consistency.writers, or set consistency.allow-crash-consistent: true"
        case let .targetUnusable(target, reason):
            return "target \(target): \(reason)"
        case let .snapshotFailed(policy, reason, retryable):
            return "policy \(policy): the snapshot failed: \(reason)" + (retryable ? " (retryable: the job will be retried as the policy's retry says)" : "")
        case let .verifyFailed(machine, version, problem):
            return "\(machine)/\(version) failed verification: \(problem); the next backup of this machine is a full"
        case let .policyInvalid(file, reason):
            return "\(file): \(reason)"
        case let .pruneRefused(machine, reason):
            return "prune of \(machine): \(reason)"
        }
    }

    /// Whether a retry may succeed (a writer that timed out, a busy resource).
    public var isRetryable: Bool {
        if case let .snapshotFailed(_, _, retryable) = self { return retryable }
        return false
    }
}
