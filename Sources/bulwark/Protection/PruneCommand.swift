import ArgumentParser
import Foundation
import Protection
import Storage
import Targets

struct PruneCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Apply a policy's keep rules to its points on the target.",
        discussion: "A removed point that later points depend on is folded into the next one (a crash-safe merge), so every kept point stays valid; protected points are never touched. --dry-run lists each point with keep or remove and the rule that decided it."
    )

    @Option(help: ArgumentHelp("The policy file (YAML).", valueName: "file")) var policy: String
    @Flag(help: "Show what would be kept and removed; change nothing.") var dryRun = false
    @OptionGroup var state: StateOptions
    @OptionGroup var printing: OutputOptions

    func run() async throws {
        let loaded = try PolicyLoader.load(file: policy)
        let quiet = printing.json
        let runner = JobRunner(stateDirectory: state.directory, watchdog: nil, log: { _, line in if !quiet { Output.note("prune: \(line)") } })
        let result: JobResult
        if dryRun {
            result = await runner.prune(loaded, dryRun: true)
        } else {
            let history = try JobHistory(stateDirectory: state.directory.string)
            result = try await JobRunner.record(in: history, policy: loaded.name, kind: .prune, trigger: .manual) { await runner.prune(loaded) }.1
        }
        if let error = result.error { throw error }
        guard let r = result.prune else { throw ExitCode(ExitStatus.failed) }
        if printing.json { try Output.json(r); return }
        print(Output.table(["VERSION", "KIND", "DECISION", "RULE"], r.decisions.map { d in
            [d.version, d.kind.rawValue, d.keep ? "keep" : (d.foldedInto.map { "remove (folded into \($0))" } ?? "remove"), d.rule]
        }))
        if dryRun { print("dry run: nothing was changed") } else {
            print("removed \(r.removed.count) point(s), freed \(ByteCount.format(r.bytesFreed))")
        }
    }
}
