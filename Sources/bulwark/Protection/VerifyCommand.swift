import ArgumentParser
import Foundation
import Protection
import Storage
import Targets

struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Re-read recovery points through their chains against their manifests' checksums.",
        discussion: "Checks every image file's SHA-256, then every 4 MiB of every disk as its chain reads it, and reports the first bad range. Results are recorded on the target (a point that fails is never the parent of a new incremental: the next backup is a full). Exit status 1 when a point fails."
    )

    @Option(help: ArgumentHelp("The target.", valueName: "url")) var target: String
    @Option(help: ArgumentHelp("Only this machine (default: every machine on the target).", valueName: "name")) var machine: String?
    @Option(help: ArgumentHelp("Only this version (needs --machine).", valueName: "version")) var version: String?
    @Flag(help: "Read only: do not record the results on the target.") var noRecord = false
    @OptionGroup var access: CredentialOptions
    @OptionGroup var printing: OutputOptions

    func validate() throws {
        if version != nil && machine == nil { throw ValidationError("--version needs --machine") }
    }

    func run() async throws {
        let t = try access.open(target)
        let machines = try machine.map { [$0] } ?? RecoveryPoints.machines(on: t)
        let bar = ProgressBar("verify")
        let reporter = bar.handler
        let interruption = Interruption(cancelling: reporter)
        defer { interruption.stop(); bar.finish() }
        let quiet = printing.json
        var results: [VerifyResult] = []
        for m in machines {
            let options = VerifyOptions(record: !noRecord, progress: reporter, log: { line in if !quiet { Output.note("verify: \(m)/\(line)") } })
            let versions = version.map { [$0] }
            results += try await BlockingPool.jobs.run { try VerifyOperation.run(target: t, machine: m, versions: versions, options: options) }
        }
        bar.finish()
        if printing.json { try Output.json(results) } else {
            for r in results {
                print("\(r.machine)/\(r.version): " + (r.ok ? "ok (\(ByteCount.format(r.bytesRead)) read in \(String(format: "%.1f", r.seconds)) s)" : "FAILED: \(r.problem ?? "")"))
            }
            if results.isEmpty { print("no recovery points to verify on \(t.location)") }
        }
        if results.contains(where: { !$0.ok }) { throw ExitCode(ExitStatus.failed) }
    }
}
