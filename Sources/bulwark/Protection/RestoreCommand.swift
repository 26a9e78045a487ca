import ArgumentParser
import Foundation
import Protection
import Recovery
import Storage
import SystemPackage
import Targets
import VirtualDisk

struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore from a recovery point.",
        subcommands: [RestoreDisk.self, RestoreFiles.self, RestoreSystem.self]
    )
}

struct RestoreDisk: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disk",
        abstract: "Restore one disk of a recovery point into a new image file, or onto a whole disk.",
        discussion: "Reads the point's chain straight from the target. Into a file: writes the image under a temporary name, reads it back against the manifest's checksums, and only then gives it its name (PATH must not exist). Onto a block device: writes it in place (refused when the device is in use, holds the target or is smaller), checking every 4 MiB against the manifest as it streams."
    )

    @Option(help: ArgumentHelp("The target.", valueName: "url")) var target: String
    @Option(help: ArgumentHelp("The machine (needed when the target holds several).", valueName: "name")) var machine: String?
    @Option(help: ArgumentHelp("The version (`bulwark versions` lists them).", valueName: "version")) var version: String
    @Option(help: "The disk's index in the point.") var disk: Int = 0
    @Option(name: .customLong("to"), help: ArgumentHelp("The new image, or a whole disk (/dev/sdX).", valueName: "path")) var destination: String
    @Option(help: "raw, vhd or vhdx (default: from the extension; raw for others).") var format: DiskFormat?
    @OptionGroup var access: CredentialOptions
    @OptionGroup var printing: OutputOptions

    func run() async throws {
        let t = try access.open(target)
        let machine = try access.machine(machine, on: t)
        let bar = ProgressBar("restore")
        let reporter = bar.handler
        let interruption = Interruption(cancelling: reporter)
        defer { interruption.stop(); bar.finish() }
        let options = DiskRestoreOptions(machine: machine, version: version, disk: disk, destination: FilePath(destination), format: format, progress: reporter)
        let result = try await BlockingPool.jobs.run { try DiskRestore.run(target: t, options: options) }
        bar.finish()
        if printing.json { try Output.json(result); return }
        let rate = result.seconds > 0 ? Double(result.virtualSize) / result.seconds : 0
        print("restored \(machine)/\(version) disk \(disk) -> \(result.destination) (\(result.format.rawValue), \(ByteCount.format(result.virtualSize)), \(ByteCount.format(result.bytesWritten)) written) in \(String(format: "%.1f", result.seconds)) s at \(ByteCount.format(UInt64(rate)))/s; checksums match the manifest")
    }
}
