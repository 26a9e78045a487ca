import ArgumentParser
import Foundation
import ShadowCopy
import Storage
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
        subcommands: [BackupCommand.self, VersionsCommand.self, RestoreCommand.self, ReplicateCommand.self, SeedCommand.self, ProtectCommand.self, VerifyCommand.self, PruneCommand.self, JobsCommand.self, DaemonCommand.self, DiskCommand.self, MountCommand.self, UmountCommand.self, FilesCommand.self, SnapshotCommand.self, WritersCommand.self, StorageCommand.self, PolicyCommand.self]
    )

    /// swift-argument-parser's `main`, except that the test hooks are applied first and library errors
    /// leave through `Failure`, which adds a hint and picks the exit status by error class (`ExitStatus`).
    static func main() async {
        TestHooks.apply()
        do {
            var command = try await asyncParseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: Failure.exit(for: error))
        }
    }
}

/// Fault injection for the crash tests, set from the environment here, in the command line, and
/// handed to the engine explicitly (the libraries read no environment variables):
/// `BULWARK_TEST_SLOW_IO=MICROSECONDS` paces copy loops; `BULWARK_TEST_CRASH_POINT=after-log-flush`
/// ends the process inside a VHDX write session.
enum TestHooks {
    static func apply() {
        let env = ProcessInfo.processInfo.environment
        let slow = env["BULWARK_TEST_SLOW_IO"].flatMap { UInt32($0) } ?? 0
        let crash = env["BULWARK_TEST_CRASH_POINT"].flatMap { FaultInjection.CrashPoint(rawValue: $0) }
        if slow > 0 || crash != nil { FaultInjection.set(FaultInjection(slowIOMicroseconds: slow, crashPoint: crash)) }
    }
}
