import ArgumentParser

/// The `bulwark` command line: it parses and prints; the libraries do the work.
@main
struct Bulwark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulwark",
        abstract: "Backup, restore and storage protection for Linux hosts and guests.",
        version: "0.1.0",
        subcommands: [DiskCommand.self, SnapshotCommand.self, WritersCommand.self]
    )
}
