import Foundation
import Protection
import Storage
import SystemPackage
import Targets
import Testing
import TestSupport

/// The runner the daemon and the command line share: what each kind of job records.
@Suite struct JobRunnerTests {
    @Test func outcomesCarryStatusFiguresAndErrors() async throws {
        let bench = try BackupBench(size: 8 << 20, seed: 61, keep: "{last: 1}")
        try bench.write(bench.rng.bytes(3 << 20), at: 0)
        let runner = JobRunner(stateDirectory: FilePath(bench.state), watchdog: nil)
        let policy = try bench.policy
        let first = await runner.backup(policy)
        #expect(first.outcome.status == .ok, "\(first.outcome.error ?? "")")
        #expect(first.outcome.pointKind == "full" && first.outcome.bytesChanged == 4 << 20)
        #expect(first.outcome.detail?.contains("fullReason") == true)
        try bench.scribble(writes: 1)
        let second = await runner.backup(policy)
        #expect(second.outcome.status == .ok && second.outcome.pointKind == "incremental")
        #expect(second.prune?.removed == [first.backup!.version], "keep last 1: the full was folded into the incremental")
        #expect(try bench.points.listing().map(\.kind) == [.full])

        // The target leased by a live job: retryable, nothing written.
        let lease = try TargetLease.acquire(bench.target, machine: "guest", purpose: "another job")
        let busy = await runner.backup(policy)
        #expect(busy.outcome.status == .failedRetryable, "\(busy.outcome.error ?? "")")
        #expect(busy.outcome.error?.contains("another job") == true)
        lease.release()

        // A scheduled verify that finds damage fails and names the point.
        let verified = await runner.verify(policy)
        #expect(verified.outcome.status == .ok && verified.verify?.count == 1)
        let image = bench.points.pointFolder(second.backup!.version).appending("disk0.vhdx")
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: image.string))
        let end = try h.seekToEnd()
        try h.seek(toOffset: end - 4096)
        try h.write(contentsOf: Data(repeating: 0x5A, count: 16))
        try h.close()
        let damaged = await runner.verify(policy)
        #expect(damaged.outcome.status == .failed)
        #expect(damaged.outcome.error?.contains(second.backup!.version) == true, "\(damaged.outcome.error ?? "")")
        // And the next backup is a full, because the newest point failed verification.
        let third = await runner.backup(policy)
        #expect(third.outcome.pointKind == "full" && third.backup?.fullReason?.contains("failed verification") == true, "\(third.outcome.status) \(third.outcome.error ?? "") \(third.backup?.fullReason ?? "")")

        // Retention alone, as a dry run: decisions, nothing removed.
        let dry = await runner.prune(policy, dryRun: true)
        #expect(dry.outcome.status == .ok && dry.prune?.removed.isEmpty == true)
    }
}
