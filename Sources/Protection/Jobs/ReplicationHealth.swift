import Foundation
import Storage

/// A policy whose points have not reached its replication destination for too long (Hyper-V
/// Replica's health warning): `bulwark jobs list` and the daemon's log report it.
public struct ReplicationWarning: Sendable, Equatable, Codable, CustomStringConvertible {
    public var policy: String
    /// The `replicate: to` location (never with a password: those live in credentials files).
    public var destination: String
    /// When the last replication ended ok; nil: none ever did.
    public var lastSuccess: Date?
    /// Seconds since the destination was last known to be in step (the last success, else the first
    /// attempt or the first backup that should have been replicated).
    public var behindSeconds: Double
    /// The policy's `alert-after`, in seconds.
    public var alertAfter: Double
    /// Why the last attempt failed, when it did.
    public var lastError: String?

    public var description: String {
        let hours = String(format: "%.1f h", behindSeconds / 3600)
        let limit = String(format: "%g h", alertAfter / 3600)
        var text = lastSuccess.map { "no successful replication to \(destination) for \(hours) (last at \(Timestamp.iso8601($0)); alert-after \(limit))" }
            ?? "no replication to \(destination) has succeeded yet, \(hours) after the first one was due (alert-after \(limit))"
        if let lastError { text += "; last error: \(lastError)" }
        return text
    }
}

public enum ReplicationHealth {
    /// The warnings for `policies` (those with `replicate:`) as the history shows them at `now`.
    public static func warnings(for policies: [Policy], history: JobHistory, now: Date = Date()) throws -> [ReplicationWarning] {
        try policies.sorted { $0.name < $1.name }.compactMap { policy in
            guard let settings = policy.replicate else { return nil }
            return try warning(policy: policy.name, destination: settings.to, alertAfter: settings.alertAfter, history: history, now: now)
        }
    }

    /// The warnings for the policies that have replication jobs in the history, with the default
    /// `alert-after` (24 h): what `jobs list` can say without the policy files.
    public static func warnings(history: JobHistory, alertAfter: Double = ReplicationSettings.defaultAlertAfter,
                                now: Date = Date()) throws -> [ReplicationWarning] {
        let names = Set(try history.list(kind: .replication).map(\.policy)).sorted()
        return try names.compactMap { name in
            let target = try history.lastRun(policy: name, kind: .replication)?.target ?? "its replication destination"
            return try warning(policy: name, destination: target, alertAfter: alertAfter, history: history, now: now)
        }
    }

    static func warning(policy: String, destination: String, alertAfter: Double, history: JobHistory, now: Date) throws -> ReplicationWarning? {
        let success = try history.lastSuccess(policy: policy, kind: .replication)
        let since: Date?
        if let success {
            since = success.ended ?? success.started
        } else {
            // Never replicated: counted from the first attempt, or from the first backup made.
            let firstAttempt = try history.firstRun(policy: policy, kind: .replication)?.queued
            let firstBackup = try history.list(policy: policy, kind: .backup).last(where: { $0.status.isSuccess })?.ended
            since = [firstAttempt, firstBackup].compactMap { $0 }.min()
        }
        guard let since, now.timeIntervalSince(since) > alertAfter else { return nil }
        let last = try history.lastRun(policy: policy, kind: .replication)
        let lastError = last.flatMap { $0.status.isSuccess ? nil : $0.error }
        return ReplicationWarning(policy: policy, destination: destination, lastSuccess: success.flatMap { $0.ended ?? $0.started },
                                  behindSeconds: now.timeIntervalSince(since), alertAfter: alertAfter, lastError: lastError)
    }
}
