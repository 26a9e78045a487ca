import ArgumentParser
import Foundation
import Replication
import Storage
import SystemPackage
import Targets

/// `bulwark seed`: Hyper-V Replica's initial replication over removable media.
struct SeedCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "seed",
        abstract: "Carry a machine's recovery points to another target in a file (initial replication over removable media).",
        discussion: """
        `seed export` writes one pax archive (`tar -tf` lists it) with a point (default the newest) and \
        every parent it needs, as they are on the target; `seed import` publishes them on another target \
        the way `bulwark replicate` does, checking every image against its manifest's SHA-256, so a later \
        `bulwark replicate` sends only the points the seed lacked.
        """,
        subcommands: [SeedExportCommand.self, SeedImportCommand.self]
    )
}

struct SeedExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a point and the parents it needs to a seed file.",
        discussion: "The file is written as .FILE.partial beside FILE, synced, and given its name only when complete; an existing FILE is refused."
    )

    @Option(help: ArgumentHelp("The source target.", valueName: "url")) var target: String
    @Option(help: ArgumentHelp("The machine.", valueName: "name")) var machine: String
    @Option(help: ArgumentHelp("The point to seed (default: the newest).", valueName: "version")) var version: String?
    @Option(help: ArgumentHelp("The seed file to write (must not exist).", valueName: "file")) var to: String
    @OptionGroup var access: CredentialOptions
    @OptionGroup var printing: OutputOptions

    func run() async throws {
        let source = try access.open(target)
        let bar = ProgressBar("seed export")
        let reporter = bar.handler
        let interruption = Interruption(cancelling: reporter)
        defer { interruption.stop(); bar.finish() }
        let quiet = printing.json
        let options = SeedExportOptions(machine: machine, version: version, progress: reporter,
                                        log: { line in if !quiet { bar.note("seed export: \(line)") } })
        let file = FilePath(to)
        let result = try await BlockingPool.jobs.run { try SeedExportOperation.run(from: source, to: file, options: options) }
        bar.finish()
        if printing.json { try Output.json(result); return }
        print("\(result.file): \(result.versions.count) point(s) of \(result.machine) (\(result.versions.joined(separator: ", "))), \(ByteCount.format(result.fileBytes))")
    }
}

struct SeedImportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Publish the points of a seed file on a target.",
        discussion: "Points the target has are skipped. A damaged or truncated seed is refused; a point whose images do not verify is never published."
    )

    @Argument(help: ArgumentHelp("The seed file.", valueName: "file")) var file: String
    @Option(help: ArgumentHelp("The target to publish the points on.", valueName: "url")) var target: String
    @OptionGroup var access: CredentialOptions
    @OptionGroup var printing: OutputOptions

    func run() async throws {
        let destination = try access.open(target)
        let bar = ProgressBar("seed import")
        let reporter = bar.handler
        let interruption = Interruption(cancelling: reporter)
        defer { interruption.stop(); bar.finish() }
        let quiet = printing.json
        let options = SeedImportOptions(progress: reporter, log: { line in if !quiet { bar.note("seed import: \(line)") } })
        let path = FilePath(file)
        let result: SeedImportResult
        do {
            result = try await BlockingPool.jobs.run { try SeedImportOperation.run(file: path, to: destination, options: options) }
        } catch let TargetError.damaged(damagedPath, reason) where damagedPath == file {
            bar.finish()
            Output.note("Error: \(file): \(reason)")
            Output.note("hint: the points before it that were published stay (they verified); write the seed again with `bulwark seed export`, or send the rest with `bulwark replicate`")
            throw ExitCode(ExitStatus.corrupt)
        }
        bar.finish()
        if printing.json { try Output.json(result); return }
        print("\(result.machine): \(result.imported.count) point(s) imported\(result.imported.isEmpty ? "" : " (\(result.imported.joined(separator: ", ")))"), \(result.skipped.count) already there; \(ByteCount.format(result.bytesWritten)) written")
    }
}
