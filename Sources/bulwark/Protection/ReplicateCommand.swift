import ArgumentParser
import Foundation
import Protection
import Replication
import Storage
import Targets

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
        that failed `bulwark verify` is sent again. Points the destination has are never changed.
        """
    )

    @Option(help: ArgumentHelp("The source target.", valueName: "url")) var from: String
    @Option(help: ArgumentHelp("The destination target.", valueName: "url")) var to: String
    @Option(help: ArgumentHelp("Only this machine.", valueName: "name")) var machine: String?
    @Option(help: ArgumentHelp("Only this version (and the parents the destination lacks); needs --machine.", valueName: "version")) var version: String?
    @Option(help: ArgumentHelp("Bandwidth limit for what is written to the destination, e.g. 10MiB/s, 500KiB/s, unlimited.", valueName: "rate"),
            transform: { text in
                do { return try ByteRate(parsing: text) } catch { throw ValidationError("--limit \(text): \(error)") }
            })
    var limit: ByteRate?
    @OptionGroup var access: CredentialOptions
    @OptionGroup var printing: OutputOptions

    func validate() throws {
        if version != nil && machine == nil { throw ValidationError("--version needs --machine") }
    }

    func run() async throws {
        let source = try access.open(from)
        let destination = try access.open(to)
        let bar = ProgressBar("replicate")
        let reporter = bar.handler
        let interruption = Interruption(cancelling: reporter)
        defer { interruption.stop(); bar.finish() }
        let quiet = printing.json
        var wrap: (@Sendable (any ByteStore) -> any ByteStore)? = nil
        if let limit {
            let bucket = TokenBucket(rate: limit)
            wrap = { store in ThrottledStore(store, bucket: bucket, cancellation: reporter) }
        }
        let options = ReplicationOptions(machine: machine, version: version, wrapDestination: wrap, progress: reporter,
                                         log: { line in if !quiet { bar.note("replicate: \(line)") } })
        let results = try await BlockingPool.jobs.run { try ReplicationOperation.run(from: source, to: destination, options: options) }
        bar.finish()
        if printing.json { try Output.json(results); return }
        for r in results {
            let rate = r.seconds > 0 ? Double(r.bytesSent) / r.seconds : 0
            print("\(r.machine): \(r.shipped.count) point(s) sent\(r.shipped.isEmpty ? "" : " (\(r.shipped.joined(separator: ", ")))"), \(r.present) already there; \(ByteCount.format(r.bytesSent)) sent at \(ByteCount.format(UInt64(rate)))/s\(r.bytesResumed > 0 ? ", \(ByteCount.format(r.bytesResumed)) resumed" : "")")
        }
    }
}
