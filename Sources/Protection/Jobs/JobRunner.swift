import Foundation
import Replication
import ShadowCopy
import Storage
import SystemPackage
import Targets

/// What one job did: the outcome the history records, and the full result for the command line.
public struct JobResult: Sendable {
    public var outcome: JobOutcome
    public var backup: BackupResult?
    public var prune: PruneResult?
    public var verify: [VerifyResult]?
    public var replication: [ReplicationResult]?
    /// The error that failed the job, as thrown (the command line picks its exit status by type).
    public var error: (any Error)?
    public var isCanceled: Bool { outcome.status == .canceled }
}

/// Runs one job of a policy (backup then retention, prune, verify) and turns its result into the
/// history's `JobOutcome`. The daemon calls it for every due job; `backup start`, `prune` and
/// `verify` call it through `record`, so a job reads the same in the history however it started.
public struct JobRunner: Sendable {
    public var stateDirectory: FilePath
    public var watchdog: WatchdogConfiguration?
    public var timeZone: TimeZone
    /// Progress and cancellation (the command line's bar; nil in the daemon, which cancels the task).
    public var progress: ProgressReporter?
    /// The job log: (policy, line).
    public var log: (@Sendable (String, String) -> Void)?

    public init(stateDirectory: FilePath, watchdog: WatchdogConfiguration?, timeZone: TimeZone = .current,
                progress: ProgressReporter? = nil, log: (@Sendable (String, String) -> Void)? = nil) {
        self.stateDirectory = stateDirectory
        self.watchdog = watchdog
        self.timeZone = timeZone
        self.progress = progress
        self.log = log
    }

    /// A backup: a point, then the policy's keep rules (unless `prune` is false).
    public func backup(_ policy: Policy, full: Bool = false, fullReason: String? = nil, prune: Bool = true) async -> JobResult {
        let reporter = progress ?? ProgressReporter()
        let log = self.log
        let lines: @Sendable (String) -> Void = { log?(policy.name, $0) }
        do {
            let result = try await withTaskCancellationHandler {
                try await BackupOperation.run(policy: policy, options: BackupOptions(
                    forceFull: full, fullReason: fullReason, stateDirectory: stateDirectory, timeZone: timeZone, progress: reporter,
                    log: lines, watchdog: watchdog))
            } onCancel: { reporter.cancel() }
            var warnings = result.warnings
            var pruned: PruneResult? = nil
            if prune && policy.keep.keepsSelection {
                do {
                    pruned = try await BlockingPool.jobs.run {
                        try PruneOperation.run(policy: policy, options: PruneOptions(timeZone: timeZone, log: lines))
                    }
                } catch {
                    // The point is made; a retention that could not run is a warning, retried next time.
                    warnings.append("retention did not run: \(error)")
                }
            }
            var detail: [String: String] = ["kind": result.kind.rawValue, "consistency": result.consistency, "provider": result.provider,
                                            "seconds": String(format: "%.1f", result.seconds)]
            if let p = result.parent { detail["parent"] = p }
            if let why = result.fullReason { detail["fullReason"] = why }
            if let p = pruned, !p.removed.isEmpty { detail["pruned"] = p.removed.joined(separator: ",") }
            let outcome = JobOutcome(status: warnings.isEmpty ? .ok : .okWithWarnings, target: result.target, point: result.version,
                                     pointKind: result.kind.rawValue, bytesRead: Int64(result.bytesRead), bytesWritten: Int64(result.bytesWritten),
                                     bytesChanged: Int64(result.bytesChanged), error: nil, warnings: warnings, detail: Self.json(detail))
            return JobResult(outcome: outcome, backup: result, prune: pruned)
        } catch {
            return Self.failed(error, target: policy.target)
        }
    }

    /// Retention alone.
    public func prune(_ policy: Policy, dryRun: Bool = false) async -> JobResult {
        let log = self.log
        let timeZone = self.timeZone
        do {
            let result = try await BlockingPool.jobs.run {
                try PruneOperation.run(policy: policy, options: PruneOptions(dryRun: dryRun, timeZone: timeZone, log: { log?(policy.name, $0) }))
            }
            let outcome = JobOutcome(status: .ok, target: policy.target, detail: Self.json(["removed": result.removed.joined(separator: ","),
                                                                                            "dryRun": dryRun ? "true" : "false"]))
            return JobResult(outcome: outcome, prune: result)
        } catch {
            return Self.failed(error, target: policy.target)
        }
    }

    /// A verify of the policy's machine's points on its target (the scheduled verify job).
    public func verify(_ policy: Policy) async -> JobResult {
        let reporter = progress ?? ProgressReporter()
        let log = self.log
        do {
            let target = try policy.openTarget()
            let results = try await withTaskCancellationHandler {
                try await BlockingPool.jobs.run {
                    try VerifyOperation.run(target: target, machine: policy.machine,
                                            options: VerifyOptions(progress: reporter, log: { log?(policy.name, $0) }))
                }
            } onCancel: { reporter.cancel() }
            let bad = results.filter { !$0.ok }
            let read = results.reduce(0) { $0 + $1.bytesRead }
            let outcome = JobOutcome(status: bad.isEmpty ? .ok : .failed, target: target.location, point: bad.first?.version ?? results.last?.version,
                                     bytesRead: Int64(read), error: bad.first.map { "\($0.version) failed verification: \($0.problem ?? "")" },
                                     detail: Self.json(["verified": String(results.count), "failed": bad.map(\.version).joined(separator: ",")]))
            return JobResult(outcome: outcome, verify: results)
        } catch {
            return Self.failed(error, target: policy.target)
        }
    }

    /// The outcome of a job that threw: canceled, retryable (a writer timed out, the target is leased
    /// by another job) or failed.
    static func failed(_ error: any Error, target: String) -> JobResult {
        let status: JobStatus
        switch error {
        case is OperationCancelled, is CancellationError: status = .canceled
        case let e as ProtectionError where e.isRetryable: status = .failedRetryable
        case TargetError.leased: status = .failedRetryable
        // The share may be back at the next try; a wrong password or a full share will not be.
        case SMBError.connectionLost, SMBError.unreachable: status = .failedRetryable
        default: status = .failed
        }
        return JobResult(outcome: JobOutcome(status: status, target: target, error: "\(error)"), error: error)
    }

    static func json(_ d: [String: String]) -> String? {
        guard let data = try? JSONSerialization.data(withJSONObject: d, options: [.sortedKeys]) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// Runs `body` as a job recorded in `history` (queued, running, then its outcome), the way the
    /// daemon records its jobs: for jobs started by hand.
    public static func record(in history: JobHistory, policy: String, kind: JobKind, trigger: JobTrigger,
                              _ body: () async -> JobResult) async throws -> (JobRecord, JobResult) {
        var record = try await JobHistory.pool.run {
            try history.insert(JobRecord(policy: policy, kind: kind, status: .running, trigger: trigger, started: Date()))
        }
        let result = await body()
        record.finish(with: result.outcome, at: Date())
        let finished = record
        try await JobHistory.pool.run { try history.update(finished) }
        return (record, result)
    }
}
