import ArgumentParser
import Foundation
import Protection
import Storage
import SystemPackage
import Targets
#if canImport(Glibc)
import Glibc
#endif

struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Run backup jobs: a recovery point of a policy's sources on its target.",
        subcommands: [BackupStart.self]
    )
}

struct BackupStart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start",
        abstract: "Run one backup job of a policy now.",
        discussion: """
        Snapshots the policy's sources (freezing its writers), then writes a recovery point to its target: \
        a full (dynamic VHDX per disk) or an incremental (a differencing VHDX per disk holding only the \
        changed 4 MiB blocks). The point is listed only once every disk and its manifest are published; \
        a job that fails or is interrupted leaves the target as it was. Then applies the policy's keep rules \
        (unless --no-prune). The job is recorded in the history (`bulwark jobs list`).
        """
    )

    @Option(help: ArgumentHelp("The policy file (YAML).", valueName: "file")) var policy: String
    @Flag(help: "Make a full point whatever the schedule says.") var full = false
    @Flag(help: "Do not apply the keep rules after the backup.") var noPrune = false
    @OptionGroup var state: StateOptions
    @OptionGroup var printing: OutputOptions

    func run() async throws {
        let loaded = try PolicyLoader.load(file: policy)
        let history = try JobHistory(stateDirectory: state.directory.string)
        let bar = ProgressBar("backup")
        let reporter = bar.handler
        let interruption = Interruption(cancelling: reporter)
        defer { interruption.stop(); bar.finish() }
        let quiet = printing.json
        let runner = JobRunner(stateDirectory: state.directory, watchdog: .default, progress: reporter,
                               log: { _, line in if !quiet { bar.note("backup: \(line)") } })
        let (job, result) = try await JobRunner.record(in: history, policy: loaded.name, kind: .backup, trigger: .manual) {
            await runner.backup(loaded, full: full, prune: !noPrune)
        }
        bar.finish()
        if result.isCanceled {
            let signal = interruption.signal ?? SIGINT
            Output.note("backup: stopped by \(Interruption.name(of: signal)); no point was made, the target is as it was (job \(job.id ?? 0))")
            throw ExitCode(Interruption.exitCode(for: signal))
        }
        if printing.json {
            try Output.json(JobJSON(job))
            if let error = result.error { throw Failure.exit(for: error, quiet: true) }
            return
        }
        if let error = result.error {
            Output.note("backup: job \(job.id ?? 0) \(job.status.rawValue)")
            throw error
        }
        guard let r = result.backup else { return }
        let rate = r.seconds > 0 ? Double(r.bytesRead) / r.seconds : 0
        print("\(r.machine)/\(r.version): \(r.kind.rawValue)\(r.parent.map { " on \($0)" } ?? "") (\(r.consistency), \(r.provider)) in \(String(format: "%.1f", r.seconds)) s")
        if let why = r.fullReason { print("  full because \(why)") }
        for d in r.disks {
            print("  disk \(d.index) \(d.source): \(ByteCount.format(d.changedBytes)) changed of \(ByteCount.format(d.virtualSize)), image \(ByteCount.format(d.imageSize)) (changes from \(d.changeDetection))")
        }
        print("  read \(ByteCount.format(r.bytesRead)) at \(ByteCount.format(UInt64(rate)))/s, stored \(ByteCount.format(r.bytesWritten)); job \(job.id ?? 0) \(job.status.rawValue)")
        for w in job.warnings { print("  warning: \(w)") }
        if let p = result.prune, !p.removed.isEmpty { print("  retention removed \(p.removed.joined(separator: ", "))") }
    }
}
