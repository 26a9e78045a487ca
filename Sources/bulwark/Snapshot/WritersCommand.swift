import ArgumentParser
import Foundation
import ShadowCopy

/// `bulwark writers ...`: the snapshot writers and their persisted states.
struct WritersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "writers",
        abstract: "Show snapshot writers and their states, or forget them.",
        subcommands: [WritersList.self, WritersForget.self]
    )
}

struct WritersList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List writers seen by snapshots: name, id, state, last error (like vssadmin list writers).",
        discussion: "Read-only: it needs only read access to the state folder."
    )

    @Option(help: "The writer state folder.") var stateDir: String?
    @OptionGroup var printing: OutputOptions

    func run() throws {
        let store = WriterStateStore(directory: WriterStateStore.resolveDirectory(stateDir))
        let records = try store.load()
        if printing.json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            encoder.dateEncodingStrategy = .iso8601
            try Output.out(Array(try encoder.encode(records)) + [10])
            return
        }
        if records.isEmpty { print("no writers recorded in \(store.path)"); return }
        print(Output.table(["Writer name", "Writer Id", "State", "Last error", "Covers"], records.map { r in
            [r.identity.name, r.identity.id, r.state.rawValue,
             r.lastError.rawValue + (r.lastErrorMessage.isEmpty ? "" : " (\(r.lastErrorMessage))"),
             r.identity.covers.joined(separator: ", ")]
        }))
    }
}

struct WritersForget: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forget",
        abstract: "Remove writers from the recorded states.",
        discussion: """
        A writer recorded mid-snapshot (waitingForFreeze, waitingForThaw) may still be frozen, and its \
        record is what lets the next snapshot thaw and reset it: it is kept unless --force, or \
        unless --stale found what it covers gone.
        """
    )

    @Argument(help: "Writer ids (or unique leading parts of them, at least 4 characters).") var ids: [String] = []
    @Flag(help: "Forget every writer whose agent socket, mountpoint or hook no longer exists.") var stale = false
    @Flag(help: "Forget writers recorded mid-snapshot too.") var force = false
    @Option(help: "The writer state folder.") var stateDir: String?
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        if ids.isEmpty && !stale { throw ValidationError("give writer ids to forget (bulwark writers list shows them) or --stale") }
    }

    func run() throws {
        let store = WriterStateStore(directory: WriterStateStore.resolveDirectory(stateDir))
        let result = try WriterForgetOperation.run(store, WriterForgetOptions(ids: ids, stale: stale, force: force))
        if json { try Output.json(result); return }
        if result.forgotten.isEmpty { print("nothing to forget in \(store.path)"); return }
        for r in result.forgotten {
            print("forgot \(r.identity.name) \(r.identity.id) (\(result.reasons[r.identity.id] ?? "asked"))")
        }
    }
}
