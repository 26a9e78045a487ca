import ArgumentParser
import SystemPackage
import VirtualDisk

struct DiskCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check a disk and its whole chain: structures, parent links, sizes, pending merges.",
        discussion: "Exit status 0: clean; 1: problems found (listed). Without --repair nothing is changed. With --repair each format fixes what it safely can (a VHD footer from its copy, a VHDX log replay, BAT entries past the end), says what it did, and the chain is checked again."
    )

    @Argument(help: "The image (a chain leaf checks the whole chain).") var path: String
    @Flag(help: "Fix what can be fixed safely.") var repair = false
    @OptionGroup var printing: OutputOptions

    struct Result: Encodable {
        var clean: Bool
        var repairs: [String]
        var report: ChainCheckReport
    }

    func run() throws {
        var report = try ChainCheck.check(path: FilePath(path), repair: repair)
        var repairs = report.levels.flatMap { l in l.repairs.map { "\(l.path): \($0)" } }
        if repair, !repairs.isEmpty {
            report = try ChainCheck.check(path: FilePath(path), repair: false)
            repairs += report.levels.flatMap { l in l.repairs.map { "\(l.path): \($0)" } }
        }
        if printing.json {
            try Output.json(Result(clean: report.isClean, repairs: repairs, report: report))
        } else {
            for r in repairs { print("repaired: \(r)") }
            for p in report.allProblems { print(p) }
            for m in report.pendingMerges { print("hint: `bulwark disk merge \(m.child)` finishes the pending merge") }
            print("\(path): \(report.isClean ? "clean" : "problems found") (\(report.levels.count) level\(report.levels.count == 1 ? "" : "s") checked)")
        }
        if !report.isClean { throw ExitCode(ExitStatus.failed) }
    }
}
