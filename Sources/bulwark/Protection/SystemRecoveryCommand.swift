import ArgumentParser
import Foundation
import Layout
import Recovery
import Storage
import SystemPackage
import Targets

struct RestoreSystem: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sysrecovery",
        abstract: "Restore a whole machine: every disk of a point, partition tables and volumes, onto this machine's disks.",
        discussion: """
        Each backed-up disk goes to the disk given with --map N=DISK, else to the disk with the serial or WWN recorded in the point, else to the one disk of exactly its size. The plan (what goes where, what is erased, the partitions recreated) is printed first; the command asks before writing unless --yes, and --dry-run stops after the plan. A destination smaller than its disk, in use (mounted, swap, held), or holding the backup target is refused before anything is written. A larger destination keeps the layout and leaves the rest free. DISK may also be an existing image file.
        """
    )

    @Option(help: ArgumentHelp("The target.", valueName: "url")) var target: String
    @Option(help: ArgumentHelp("The machine (needed when the target holds several).", valueName: "name")) var machine: String?
    @Option(help: ArgumentHelp("The version (`bulwark versions` lists them).", valueName: "version")) var version: String
    @Option(help: ArgumentHelp("Write backed-up disk N onto DISK (a whole disk, or an existing image file). Repeatable.", valueName: "N=DISK"))
    var map: [String] = []
    @Option(name: .customLong("exclude-disk"), help: ArgumentHelp("Leave backed-up disk N out. Repeatable.", valueName: "N")) var exclude: [Int] = []
    @Flag(help: "Print the plan and stop: nothing is written.") var dryRun = false
    @Flag(help: "Do not ask before writing.") var yes = false
    @OptionGroup var access: CredentialOptions
    @OptionGroup var printing: OutputOptions

    struct Report: Encodable {
        var plan: SystemRecoveryPlan
        var result: SystemRecoveryResult?
    }

    func validate() throws {
        _ = try maps()
    }

    func maps() throws -> [Int: FilePath] {
        var out: [Int: FilePath] = [:]
        for item in map {
            let parts = item.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let n = Int(parts[0]), n >= 0, !parts[1].isEmpty else {
                throw ValidationError("--map '\(item)': write it as N=DISK, e.g. --map 0=/dev/sdb")
            }
            guard out[n] == nil else { throw ValidationError("--map \(n)=... is given twice") }
            out[n] = FilePath(String(parts[1]))
        }
        return out
    }

    func run() async throws {
        let t = try access.open(target)
        let machine = try access.machine(machine, on: t)
        let options = SystemRecoveryOptions(machine: machine, version: version, maps: try maps(), exclude: Set(exclude))
        let plan = try await BlockingPool.jobs.run { try SystemRecovery.plan(target: t, options: options) }
        if !printing.json { Self.show(plan) }
        guard !dryRun else {
            if printing.json { try Output.json(Report(plan: plan, result: nil)) } else { print("dry run: nothing was written") }
            return
        }
        guard !plan.restored.isEmpty else {
            if printing.json { try Output.json(Report(plan: plan, result: nil)) } else { print("every disk is excluded: nothing to do") }
            return
        }
        if !yes {
            guard isatty(0) == 1 else {
                throw ValidationError("the plan erases \(plan.restored.compactMap(\.destination).joined(separator: ", ")); add --yes to go ahead without a terminal, or --dry-run to only see the plan")
            }
            FileHandle.standardError.write(Data("Type yes to erase \(plan.restored.compactMap(\.destination).joined(separator: ", ")) and restore: ".utf8))
            guard readLine()?.trimmingCharacters(in: .whitespaces) == "yes" else {
                Output.note("nothing was written")
                throw ExitCode(ExitStatus.refused)
            }
        }
        let bar = ProgressBar("sysrecovery")
        let reporter = bar.handler
        let interruption = Interruption(cancelling: reporter)
        defer { interruption.stop(); bar.finish() }
        let result = try await BlockingPool.jobs.run { try SystemRecovery.run(target: t, plan: plan, progress: reporter) }
        bar.finish()
        if printing.json { try Output.json(Report(plan: plan, result: result)); return }
        for disk in result.disks {
            let rate = disk.seconds > 0 ? Double(disk.bytesWritten) / disk.seconds : 0
            print("disk \(disk.index) -> \(disk.destination): \(ByteCount.format(disk.virtualSize)) restored, \(ByteCount.format(disk.bytesWritten)) of data written in \(String(format: "%.1f", disk.seconds)) s (\(ByteCount.format(UInt64(rate)))/s)\(disk.tableFitted ? ", GPT fitted to the larger disk" : ""); checksums match the manifest")
        }
        print("restored \(machine)/\(version) in \(String(format: "%.1f", result.seconds)) s")
    }

    /// The plan as a person reviews it before saying yes.
    static func show(_ plan: SystemRecoveryPlan) {
        print("System recovery of \(plan.machine) from \(plan.version) (taken \(plan.time)):")
        for disk in plan.disks {
            let table = disk.layout.map(tableName) ?? "layout not recorded"
            guard disk.action == "restore", let destination = disk.destination else {
                print("  disk \(disk.index) (\(disk.source), \(ByteCount.format(disk.size)), \(table)): excluded, nothing written for it")
                continue
            }
            print("  disk \(disk.index) (\(disk.source), \(ByteCount.format(disk.size)), \(table)) -> \(destination) (\(ByteCount.format(disk.destinationSize ?? 0)), \(matchWords(disk.matchedBy)))")
            print("    erases: \(disk.erases.map(summary) ?? "everything on it (it could not be read)")")
            if let layout = disk.layout {
                for p in layout.partitions {
                    print("    partition \(p.number): start \(ByteCount.format(p.start)), size \(ByteCount.format(p.size)), type \(p.type)\(p.name.map { $0.isEmpty ? "" : " \"\($0)\"" } ?? "")\(p.extended ? " (extended)" : "")\(p.volume.map { ": " + volume($0) } ?? "")")
                }
                if let v = layout.volume { print("    whole disk: \(volume(v))") }
            }
            if let free = disk.freeAfter { print("    leaves \(ByteCount.format(free)) free at the end of \(destination)") }
        }
    }

    static func tableName(_ layout: DiskLayout) -> String {
        switch layout.table {
        case "dos": "MBR"
        case "none": "no partition table"
        default: layout.table.uppercased()
        }
    }

    static func matchWords(_ how: String?) -> String {
        switch how {
        case "map": "given with --map"
        case "serial": "matched by serial number"
        case "wwn": "matched by WWN"
        case "size": "matched by size only: check it is the right disk"
        default: "chosen"
        }
    }

    static func volume(_ v: LayoutVolume) -> String {
        "\(v.type)\(v.label.map { " label \"\($0)\"" } ?? "")\(v.uuid.map { " UUID \($0)" } ?? "")"
    }

    static func summary(_ layout: DiskLayout) -> String {
        if let v = layout.volume { return "a whole-disk \(volume(v))" }
        guard layout.table != "none" else { return "nothing recognised (no partition table, no filesystem)" }
        let parts = layout.partitions.map { p in "\(p.number)\(p.volume.map { " " + volume($0) } ?? "")" }
        return "\(tableName(layout)) with \(layout.partitions.count) partition\(layout.partitions.count == 1 ? "" : "s")\(parts.isEmpty ? "" : ": " + parts.joined(separator: "; "))"
    }
}
