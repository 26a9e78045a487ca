import ArgumentParser
import Foundation
import Logging
import Protection
import ShadowCopy
import Storage
import Synchronization

/// `bulwark daemon`: runs every policy's schedules (no timer units: the daemon schedules).
struct DaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Run the policies' schedules: backups, retention, verifies and replication.",
        discussion: """
        Loads every policy in DIR (*.yaml, *.yml; a broken one is logged and skipped), runs each job when \
        its schedule fires, catches up once on a schedule missed while it was down, never runs two jobs of \
        one policy at once, and retries retryable failures as each policy says. After each successful \
        backup of a policy with `replicate:`, a replication job copies the new points to its destination \
        at the bandwidth its throttle schedule allows; a destination not reached for longer than \
        `alert-after` is logged as a warning. Jobs are recorded in the \
        history (`bulwark jobs list`). SIGHUP reloads the policies; SIGTERM cancels running jobs (they \
        roll back) and exits 0. Under systemd (tools/bulwark.service, Type=notify) it reports READY, \
        STOPPING and watchdog pings, and logs in the journal's format.
        """
    )

    @Option(help: ArgumentHelp("The folder of policy files.", valueName: "dir")) var policies: String
    @OptionGroup var state: StateOptions

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        LoggingSystem.bootstrap { JournalLogHandler(label: $0, environment: environment) }
        let logger = Logger(label: "bulwark.daemon")
        let folder = policies
        let loaded = Mutex<[String: Policy]>([:])
        let timeZone = TimeZone.current
        let runner = JobRunner(stateDirectory: state.directory, watchdog: .default, timeZone: timeZone, log: { policy, line in
            Logger(label: "bulwark.job").info("\(line)", metadata: ["policy": "\(policy)"])
        })
        let history = try JobHistory(stateDirectory: state.directory.string)
        /// Hyper-V Replica's health warning, in the log after each backup and replication of a
        /// replicating policy.
        let checkHealth: @Sendable (Policy) async -> Void = { policy in
            guard policy.replicate != nil else { return }
            let found = try? await JobHistory.pool.run { try ReplicationHealth.warnings(for: [policy], history: history) }
            for warning in found ?? [] { logger.warning("\(warning)", metadata: ["policy": "\(policy.name)"]) }
        }
        let daemon = Daemon(
            history: history, logger: logger,
            notifier: SystemdNotifier(environment: environment),
            loadPolicies: {
                var found: [String: Policy] = [:]
                for (file, result) in PolicyLoader.loadAll(directory: folder) {
                    switch result {
                    case let .success(p):
                        if found[p.name] != nil { logger.error("\(file): a second policy named \(p.name); skipped") } else { found[p.name] = p }
                    case let .failure(e):
                        logger.error("\(file): skipped: \(e)")
                    }
                }
                loaded.withLock { $0 = found }
                return found.values.sorted { $0.name < $1.name }.map { $0.scheduled(in: timeZone) }
            },
            runJob: { job in
                guard let policy = loaded.withLock({ $0[job.policy] }) else {
                    return JobOutcome(status: .failed, error: "policy \(job.policy) is no longer loaded")
                }
                switch job.kind {
                case .backup:
                    let outcome = await runner.backup(policy, full: job.full, fullReason: job.fullReason).outcome
                    await checkHealth(policy)
                    return outcome
                case .verify: return await runner.verify(policy).outcome
                case .prune: return await runner.prune(policy).outcome
                case .replication:
                    let outcome = await runner.replicate(policy).outcome
                    if !outcome.status.isSuccess { await checkHealth(policy) }
                    return outcome
                }
            })
        try await daemon.run()
    }
}
