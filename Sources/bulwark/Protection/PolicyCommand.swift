import ArgumentParser
import Foundation
import Protection

/// `bulwark policy ...`: protection policies (the YAML files in `policies/`).
struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Check protection policies.",
        subcommands: [PolicyCheckCommand.self]
    )
}

struct PolicyCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check policy files: syntax, keys, schedules that never fire, sources and targets on this machine.",
        discussion: """
        Prints one FILE:LINE:COL: error|warning: MESSAGE line per problem, with an indented fix: line. \
        Exits 0 when no file has errors (warnings allowed), 1 otherwise. Schedules are read in the local \
        time zone.
        """
    )

    @Argument(help: ArgumentHelp("Policy files to check.", valueName: "file")) var files: [String]
    @OptionGroup var printing: OutputOptions

    func validate() throws {
        if files.isEmpty { throw ValidationError("give at least one policy file (policies/*.yaml)") }
    }

    func run() throws {
        let diagnostics = files.flatMap { PolicyCheck.check(file: $0) }
        if printing.json {
            try Output.json(diagnostics)
        } else {
            for diagnostic in diagnostics {
                print("\(diagnostic.file):\(diagnostic.line):\(diagnostic.column): \(diagnostic.severity.rawValue): \(diagnostic.message)")
                if let fix = diagnostic.fix { print("    fix: \(fix)") }
            }
            let errors = diagnostics.filter { $0.severity == .error }.count
            let warnings = diagnostics.count - errors
            Output.note(errors == 0 && warnings == 0
                ? "\(files.count == 1 ? "policy" : "\(files.count) policies") OK"
                : "\(errors) error\(errors == 1 ? "" : "s"), \(warnings) warning\(warnings == 1 ? "" : "s")")
        }
        if diagnostics.contains(where: { $0.severity == .error }) { throw ExitCode(ExitStatus.failed) }
    }
}
