import ArgumentParser
import VirtualDisk

/// The `bulwark` command line: it parses and prints; the libraries do the work.
///
/// Async at the root so `snapshot create` can await the coordinator directly; the disk commands stay
/// synchronous `ParsableCommand`s (the engine is blocking I/O).
@main
struct Bulwark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulwark",
        abstract: "Backup, restore and storage protection for Linux hosts and guests.",
        discussion: ExitStatus.summary,
        version: "0.1.0",
        subcommands: [DiskCommand.self, SnapshotCommand.self, WritersCommand.self]
    )

    /// swift-argument-parser's `main`, except that engine errors leave through `Failure`, which adds a
    /// hint and picks the exit status by error class (`ExitStatus`).
    static func main() async {
        do {
            var command = try await asyncParseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as DiskError {
            exit(withError: Failure.report(error))
        } catch {
            exit(withError: error)
        }
    }
}
