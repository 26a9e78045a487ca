import Foundation
import ShadowCopy
import Storage
import SystemPackage
import Targets

/// The point-in-time copies a job reads: the sources themselves when nothing freezes (provider
/// `none`: crash-consistent), else what the snapshot coordinator's provider made while the writers
/// were frozen (reflink or copy files in a job folder, or, for the differencing provider, the frozen
/// leaves themselves with a new live child each).
struct PointInTimeCopy {
    var copies: [String]
    /// For the differencing provider: the new live leaf of each disk (nil elsewhere).
    var newLeaves: [String?]
    var provider: String
    var consistency: ManifestConsistency
    /// Warnings for the job's record: the snapshot's, unless the policy chose crash-consistent
    /// points on purpose (provider none).
    var jobWarnings: [String] { provider == "none" ? [] : consistency.warnings }
    /// The job folder holding reflink or copy files, removed by `cleanUp()`.
    var folder: FilePath?

    func cleanUp() {
        guard let folder else { return }
        try? FileManager.default.removeItem(atPath: folder.string)
    }

    static func take(policy: Policy, sources: [String], plan: BackupPlan, options: BackupOptions,
                     log: @escaping @Sendable (String) -> Void) async throws -> PointInTimeCopy {
        let settings = policy.consistency
        if settings.provider == .none {
            log("provider none: reading the sources as they are (crash-consistent)")
            return PointInTimeCopy(copies: sources, newLeaves: sources.map { _ in nil }, provider: "none",
                                   consistency: ManifestConsistency(level: "crash-consistent", provider: "none", writers: [], freezeSeconds: 0,
                                                                    warnings: ["crash-consistent: no writer froze the sources (provider none)"]))
        }
        // The differencing provider snapshots the live leaf the previous point left (Hyper-V's
        // .avhdx chain), not the base the policy names.
        var disks = sources
        let leavesFile = options.stateDirectory.appending("live-leaves").appending("\(policy.name).json")
        if settings.provider == .differencing {
            // The leaves recorded at the last snapshot (even one whose job then failed), else the
            // newest point's, else the disks themselves.
            let recorded = (try? JSONDecoder().decode([String: String].self, from: Data(contentsOf: URL(fileURLWithPath: leavesFile.string)))) ?? [:]
            for (i, source) in sources.enumerated() {
                let fromPoint = plan.newest.flatMap { $0.disks.map(\.source) == sources ? $0.disks[i].providerLeaf : nil }
                if let leaf = recorded[source] ?? fromPoint, FileOps.exists(FilePath(leaf)) { disks[i] = leaf }
            }
        }
        let writers: [any SnapshotWriter] = settings.writers.map { spec in
            switch spec {
            case let .qga(socket, mountpoints): return GuestAgentWriter(socket: socket, mountpoints: mountpoints)
            case let .hook(path, timeout): return HookWriter(path: path, timeout: timeout ?? 10)
            case let .fsfreeze(mountpoint): return FilesystemFreezeWriter(mountpoint: mountpoint)
            }
        }
        let provider: any SnapshotProvider
        switch settings.provider {
        case .auto: provider = AutoProvider()
        case .reflink: provider = ReflinkProvider()
        case .copy: provider = CopyProvider()
        case .differencing, .none: provider = DifferencingProvider()
        }
        let base = settings.snapshotDirectory.map { FilePath($0) } ?? options.stateDirectory.appending("snapshots")
        let folder = base.appending("\(policy.name).\(ProcessState.currentPID)")
        try? FileManager.default.removeItem(atPath: folder.string)
        try FileOps.makeFolder(folder)
        let coordinator = SnapshotCoordinator(stateDirectory: options.stateDirectory.string,
                                              watchdog: options.watchdog, echo: { log("snapshot: \($0)") })
        let request = SnapshotRequest(writers: writers, provider: provider, disks: disks, outputDirectory: folder.string,
                                      policy: SnapshotPolicy(holdTimeout: settings.holdTimeout, fallBackToCrashConsistent: settings.allowCrashConsistent))
        let result: SnapshotResult
        do {
            result = try await coordinator.snapshot(request)
        } catch let failure as SnapshotFailure {
            try? FileManager.default.removeItem(atPath: folder.string)
            let retryable = failure.cause.writerErrorClass != .nonRetryable
            throw ProtectionError.snapshotFailed(policy: policy.name, reason: failure.cause.description, retryable: retryable)
        } catch {
            try? FileManager.default.removeItem(atPath: folder.string)
            throw error
        }
        let writersDone = result.writers.map {
            ManifestWriter(name: $0.identity.name, kind: $0.identity.kind, state: $0.state.rawValue, froze: $0.froze,
                           error: $0.errorMessage.isEmpty ? nil : $0.errorMessage)
        }
        let level = result.consistency == .applicationConsistent ? "application-consistent" : "crash-consistent"
        if result.consistency == .crashConsistent && !settings.allowCrashConsistent {
            try? FileManager.default.removeItem(atPath: folder.string)
            throw ProtectionError.crashConsistentRefused(policy: policy.name, reason: "the snapshot was only crash-consistent (\(result.warnings.joined(separator: "; ")))")
        }
        let differencing = result.provider == "differencing"
        if differencing {
            // The guest writes into the new leaves from now on: remember them before anything else
            // can fail, so the next snapshot continues the chain instead of forking it.
            var leaves: [String: String] = [:]
            for (source, leaf) in zip(sources, result.newLeaves) { leaves[source] = leaf }
            try FileOps.makeFolder(leavesFile.removingLastComponent())
            try JSONEncoder().encode(leaves).write(to: URL(fileURLWithPath: leavesFile.string), options: .atomic)
        }
        log("snapshot \(result.snapshotID): \(level) by \(result.provider), frozen \(String(format: "%.2f", result.freezeHoldSeconds)) s")
        return PointInTimeCopy(copies: result.copies, newLeaves: differencing ? result.newLeaves.map { Optional($0) } : disks.map { _ in nil },
                               provider: result.provider,
                               consistency: ManifestConsistency(level: level, provider: result.provider, writers: writersDone,
                                                                freezeSeconds: result.freezeHoldSeconds, warnings: result.warnings),
                               folder: folder)
    }
}
