import ArgumentParser
import Foundation
import Protection
import Storage
import Targets

/// `bulwark protect`: keep a point out of retention's reach (a legal hold, the point before a
/// migration), or give it back.
struct ProtectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "protect",
        abstract: "Protect a recovery point from retention (or, with --remove, unprotect it).",
        discussion: "A protected point is never removed or changed by `prune`, and the point it depends on is kept for it. The mark is a file in the point's folder (`protected`), so it travels with the target."
    )

    @Option(help: ArgumentHelp("The target.", valueName: "url")) var target: String
    @Option(help: ArgumentHelp("The machine.", valueName: "name")) var machine: String
    @Option(help: ArgumentHelp("The version.", valueName: "version")) var version: String
    @Flag(help: "Remove the protection instead.") var remove = false
    @OptionGroup var access: CredentialOptions
    @OptionGroup var printing: OutputOptions

    func run() throws {
        let t = try access.open(target)
        let points = RecoveryPoints(target: t, machine: machine)
        _ = try points.manifest(version)
        let lease = try TargetLease.acquire(t, machine: machine, purpose: remove ? "unprotect \(version)" : "protect \(version)")
        defer { lease.release() }
        try points.setProtected(version, !remove)
        try points.rebuildCatalog()
        if printing.json {
            struct Done: Encodable { var machine: String; var version: String; var protected: Bool }
            try Output.json(Done(machine: machine, version: version, protected: !remove))
        } else {
            print("\(machine)/\(version): \(remove ? "no longer protected" : "protected from retention")")
        }
    }
}
