import ArgumentParser
import Foundation
import Protection
import Storage
import Targets

/// `wbadmin get versions -backuptarget:...`: the points on a target, from the target alone.
struct VersionsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "versions",
        abstract: "List the recovery points on a target (needs nothing but the target).",
        discussion: "Reads each machine's newest catalog generation, corrected by the folder listing: a point is listed only when its manifest is published."
    )

    @Option(help: ArgumentHelp("The target: a local folder (or smb://... with the SMB target).", valueName: "url")) var target: String
    @Option(help: ArgumentHelp("Only this machine's points.", valueName: "name")) var machine: String?
    @OptionGroup var access: CredentialOptions
    @OptionGroup var printing: OutputOptions

    struct Row: Encodable {
        var machine: String
        var version: String
        var time: String
        var kind: String
        var consistency: String
        var parent: String?
        var virtualBytes: UInt64
        var storedBytes: UInt64
        var changedBytes: UInt64
        var disks: Int
        var policy: String
        var protected: Bool
        var verified: Bool?
        var verifiedAt: String?
        var verifyProblem: String?
    }

    func run() throws {
        let t = try access.open(target)
        let machines = try machine.map { [$0] } ?? RecoveryPoints.machines(on: t)
        if let machine, try !RecoveryPoints.machines(on: t).contains(machine) {
            throw TargetError.machineNotFound(target: t.location, machine: machine, known: try RecoveryPoints.machines(on: t))
        }
        var rows: [Row] = []
        for m in machines {
            for e in try RecoveryPoints(target: t, machine: m).listing() {
                rows.append(Row(machine: m, version: e.version, time: e.time, kind: e.kind.rawValue, consistency: e.consistency, parent: e.parent,
                                virtualBytes: e.virtualBytes, storedBytes: e.storedBytes, changedBytes: e.changedBytes, disks: e.disks, policy: e.policy,
                                protected: e.protected, verified: e.verification?.ok, verifiedAt: e.verification?.time, verifyProblem: e.verification?.problem))
            }
        }
        if printing.json { try Output.json(rows); return }
        if rows.isEmpty { print("no recovery points on \(t.location)\(machine.map { " for \($0)" } ?? "")"); return }
        print(Output.table(["MACHINE", "VERSION", "KIND", "CONSISTENCY", "SIZE", "STORED", "PARENT", "VERIFIED"], rows.map { r in
            [r.machine, r.version, r.kind + (r.protected ? " (protected)" : ""), r.consistency, ByteCount.format(r.virtualBytes), ByteCount.format(r.storedBytes),
             r.parent ?? "-", r.verified.map { $0 ? "ok \(r.verifiedAt ?? "")" : "FAILED \(r.verifiedAt ?? "")" } ?? "never"]
        }))
    }
}
