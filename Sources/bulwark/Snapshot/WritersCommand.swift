import ArgumentParser
import Foundation
import ShadowCopy

/// `bulwark writers ...`: the snapshot writers and their persisted states.
struct WritersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "writers",
        abstract: "Show snapshot writers and their states.",
        subcommands: [WritersList.self]
    )
}

struct WritersList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List writers seen by snapshots: name, id, state, last error (like vssadmin list writers)."
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
            FileHandle.standardOutput.write(try encoder.encode(records) + Data("\n".utf8))
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
