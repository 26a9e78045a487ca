import ArgumentParser
import Foundation
import VirtualDisk

/// The `bulwark` command line: it parses and prints; the libraries do the work.
@main
struct Bulwark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulwark",
        abstract: "Backup, restore and storage protection for Linux hosts and guests.",
        version: "0.1.0",
        subcommands: [DiskCommand.self, SnapshotCommand.self, WritersCommand.self]
    )

    static func main() {
        TestHooks.apply()
        do {
            var command = try parseAsRoot(nil)
            try command.run()
        } catch {
            exit(withError: CLIErrorText.translate(error))
        }
    }
}

/// Library errors whose next step is a command-line flag, reworded to name it.
enum CLIErrorText {
    struct Reworded: Error, CustomStringConvertible {
        var description: String
    }

    static func translate(_ error: any Error) -> any Error {
        if case let DiskError.notRecognized(path, expected, reason) = error {
            return Reworded(description: "\(path): not a \(expected.rawValue.uppercased()) image though its name says so: \(reason); pass --format raw to open it as raw")
        }
        return error
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
