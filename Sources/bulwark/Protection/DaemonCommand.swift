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
        abstract: "Run the policies' schedules: backups, retention and verifies.",
        discussion: """
        Loads every policy in DIR (*.yaml, *.yml; a broken one is logged and skipped), runs each job when \
        its schedule fires, catches up once on a schedule missed while it was down, never runs two jobs of \
        one policy at once, and retries retryable failures as each policy says. Jobs are recorded in the \
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
        let daemon = Daemon(
            history: try JobHistory(stateDirectory: state.directory.string), logger: logger,
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
                case .backup: return await runner.backup(policy, full: job.full, fullReason: job.fullReason).outcome
                case .verify: return await runner.verify(policy).outcome
                case .prune: return await runner.prune(policy).outcome
                case .replication: return JobOutcome(status: .failed, error: "replication is not part of this build")
                }
            })
        try await daemon.run()
    }
}
