import ArgumentParser
import Foundation
import Protection
import Replication
import Storage
import Targets
#if canImport(Glibc)
import Glibc
#endif

/// `bulwark replicate`: DPM's backup replication, Hyper-V Replica's copy to a second site.
struct ReplicateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replicate",
        abstract: "Copy the recovery points a destination target lacks from a source target.",
        discussion: """
        Ships every point the destination lacks (or --version and the parents it needs), parents first, \
        each image under a hidden .partial name, verified against the manifest's SHA-256 and only then \
        given its name; the manifest goes last, so the destination lists only complete points at every \
        moment. An interrupted run resumes after the last whole piece it sent. A point on the destination \
        that failed `bulwark verify` is sent again. Points the destination has are never changed. With \
        --policy, the policy's replicate: section says where, how fast (its throttle schedule) and what \
        the destination keeps, and the run is recorded as a replication job (`bulwark jobs list`).
        """
    )

    @Option(help: ArgumentHelp("Run the replication of this policy's `replicate:` section (its throttle, keep and credentials), recorded in the job history.", valueName: "file"))
    var policy: String?
    @Option(help: ArgumentHelp("The source target.", valueName: "url")) var from: String?
    @Option(help: ArgumentHelp("The destination target.", valueName: "url")) var to: String?
    @Option(help: ArgumentHelp("Only this machine.", valueName: "name")) var machine: String?
    @Option(help: ArgumentHelp("Only this version (and the parents the destination lacks); needs --machine.", valueName: "version")) var version: String?
    @Option(help: ArgumentHelp("Bandwidth limit for what is written to the destination, e.g. 10MiB/s, 500KiB/s, unlimited (overrides a policy's throttle).", valueName: "rate"),
            transform: { text in
                do { return try ByteRate(parsing: text) } catch { throw ValidationError("--limit \(text): \(error)") }
            })
    var limit: ByteRate?
    @OptionGroup var access: CredentialOptions
    @OptionGroup var state: StateOptions
    @OptionGroup var printing: OutputOptions

    func validate() throws {
        if policy != nil {
            if from != nil || to != nil || machine != nil || version != nil || access.credentials != nil {
                throw ValidationError("--policy takes its source, destination, machine and credentials from the policy: drop --from, --to, --machine, --version and --credentials")
            }
        } else if from == nil || to == nil {
            throw ValidationError("give --from URL and --to URL, or --policy FILE")
        }
        if version != nil && machine == nil { throw ValidationError("--version needs --machine") }
    }

    func run() async throws {
        let bar = ProgressBar("replicate")
        let reporter = bar.handler
        let interruption = Interruption(cancelling: reporter)
        defer { interruption.stop(); bar.finish() }
        let quiet = printing.json
        let log: @Sendable (String) -> Void = { line in if !quiet { bar.note("replicate: \(line)") } }
        let results: [ReplicationResult]
        if let policy {
            let loaded = try PolicyLoader.load(file: policy)
            guard loaded.replicate != nil else {
                throw ValidationError("\(policy) has no replicate: section; add one (README \"Replication\") or give --from and --to")
            }
            let history = try JobHistory(stateDirectory: state.directory.string)
            let runner = JobRunner(stateDirectory: state.directory, watchdog: nil, progress: reporter, log: { _, line in log(line) })
            let (job, result) = try await JobRunner.record(in: history, policy: loaded.name, kind: .replication, trigger: .manual) {
                await runner.replicate(loaded, limit: limit)
            }
            bar.finish()
            if result.isCanceled {
                let signal = interruption.signal ?? SIGINT
                Output.note("replicate: stopped by \(Interruption.name(of: signal)); what was sent resumes on the next run (job \(job.id ?? 0))")
                throw ExitCode(Interruption.exitCode(for: signal))
            }
            if let error = result.error {
                if printing.json { try Output.json(JobJSON(job)); throw Failure.exit(for: error, quiet: true) }
                Output.note("replicate: job \(job.id ?? 0) \(job.status.rawValue)")
                throw error
            }
            if printing.json { try Output.json(JobJSON(job)); return }
            results = result.replication ?? []
            for w in job.warnings { print("warning: \(w)") }
            if let p = result.prune, !p.removed.isEmpty { print("retention on the destination removed \(p.removed.joined(separator: ", "))") }
        } else {
            let source = try access.open(from!)
            let destination = try access.open(to!)
            var wrap: (@Sendable (any ByteStore) -> any ByteStore)? = nil
            if let limit {
                let bucket = TokenBucket(rate: limit)
                wrap = { store in ThrottledStore(store, bucket: bucket, cancellation: reporter) }
            }
            let options = ReplicationOptions(machine: machine, version: version, wrapDestination: wrap, progress: reporter, log: log)
            results = try await BlockingPool.jobs.run { try ReplicationOperation.run(from: source, to: destination, options: options) }
            bar.finish()
            if printing.json { try Output.json(results); return }
        }
        for r in results {
            let rate = r.seconds > 0 ? Double(r.bytesSent) / r.seconds : 0
            print("\(r.machine): \(r.shipped.count) point(s) sent\(r.shipped.isEmpty ? "" : " (\(r.shipped.joined(separator: ", ")))"), \(r.present) already there; \(ByteCount.format(r.bytesSent)) sent at \(ByteCount.format(UInt64(rate)))/s\(r.bytesResumed > 0 ? ", \(ByteCount.format(r.bytesResumed)) resumed" : "")")
        }
    }
}
