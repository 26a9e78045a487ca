import ArgumentParser
import Storage
import SystemPackage

/// `bulwark storage serve ROOT`: the serving end of the helper-process store (a read-only store
/// another Bulwark reads a chain through, over a pipe or `ssh host bulwark storage serve /`).
struct StorageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage",
        abstract: "Serve files to another Bulwark process (a read-only store over standard input and output).",
        subcommands: [Serve.self]
    )

    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve",
            abstract: "Answer byte-range requests for the files under ROOT on standard input and output until input ends."
        )

        @Argument(help: "The folder whose files are served (requests cannot leave it).") var root: String

        func run() throws {
            try RangeServer.serve(root: FilePath(root))
        }
    }
}
