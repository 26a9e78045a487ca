import Foundation
import Replication
import Storage
import Targets

extension JobRunner {
    /// A replication job: every point of the policy's machine that the `replicate:` destination lacks
    /// is copied there at the bandwidth its throttle schedule allows (`limit` overrides it), then the
    /// destination's own `keep` rules, if any, are applied there. The daemon runs it after each backup
    /// of a policy with `replicate:`; `bulwark replicate --policy` runs it by hand.
    public func replicate(_ policy: Policy, limit: ByteRate? = nil) async -> JobResult {
        guard let settings = policy.replicate else {
            let error = ProtectionError.policyInvalid(file: policy.file ?? policy.name, reason: "it has no replicate: section")
            return Self.failed(error, target: policy.target)
        }
        let reporter = progress ?? ProgressReporter()
        let log = self.log
        let timeZone = self.timeZone
        let lines: @Sendable (String) -> Void = { log?(policy.name, $0) }
        do {
            let source = try policy.openTarget()
            let destination = try Policy.open(settings.to, credentials: settings.credentials)
            let bucket = TokenBucket(schedule: limit.map { .fixed($0) } ?? settings.throttle, timeZone: timeZone)
            let options = ReplicationOptions(machine: policy.machine, wrapDestination: { store in
                ThrottledStore(store, bucket: bucket, cancellation: reporter)
            }, progress: reporter, log: lines, onlyNewer: settings.keep != nil)
            let results = try await withTaskCancellationHandler {
                try await BlockingPool.jobs.run { try ReplicationOperation.run(from: source, to: destination, options: options) }
            } onCancel: { reporter.cancel() }
            var warnings: [String] = []
            var pruned: PruneResult?
            if let keep = settings.keep {
                do {
                    pruned = try await BlockingPool.jobs.run {
                        try PruneOperation.run(target: destination, machine: policy.machine, keep: keep,
                                               options: PruneOptions(timeZone: timeZone, log: lines))
                    }
                } catch {
                    // The copies are made; retention on the destination is tried again next time.
                    warnings.append("retention on \(destination.location) did not run: \(error)")
                }
            }
            let sent = results.reduce(UInt64(0)) { $0 + $1.bytesSent }
            let seconds = results.reduce(0.0) { $0 + $1.seconds }
            let shipped = results.flatMap(\.shipped)
            var detail: [String: String] = [
                "from": source.location, "shipped": shipped.joined(separator: ","), "present": String(results.reduce(0) { $0 + $1.present }),
                "bytesResumed": String(results.reduce(UInt64(0)) { $0 + $1.bytesResumed }), "seconds": String(format: "%.1f", seconds),
                "bytesPerSecond": String(format: "%.0f", seconds > 0 ? Double(sent) / seconds : 0),
                "throttle": limit.map { "\($0)" } ?? settings.throttle.description,
            ]
            if let lag = results.compactMap(\.lagSeconds).max() { detail["lagSeconds"] = String(format: "%.0f", lag) }
            if let p = pruned, !p.removed.isEmpty { detail["pruned"] = p.removed.joined(separator: ",") }
            let outcome = JobOutcome(status: warnings.isEmpty ? .ok : .okWithWarnings, target: destination.location, point: shipped.last,
                                     bytesRead: Int64(sent), bytesWritten: Int64(sent), warnings: warnings, detail: Self.json(detail))
            return JobResult(outcome: outcome, prune: pruned, replication: results)
        } catch {
            return Self.failed(error, target: settings.to)
        }
    }
}
