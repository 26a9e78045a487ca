import ArgumentParser
import SystemPackage
import ShadowCopy
import Targets
import Foundation

/// `--json`, shared by every command that prints a result, so the flag reads the same everywhere.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print the result as JSON (numbers and booleans typed, camelCase keys).") var json = false
}

/// `--children` and `--force`: how an operation that changes a disk finds the differencing images
/// that depend on it, and whether it may go ahead and break them. One group, so merge, resize and
/// compact explain the risk in the same words.
struct ChildrenOptions: ParsableArguments {
    @Option(name: .customLong("children"), parsing: .upToNextOption,
            help: ArgumentHelp("Other images or folders that may hold children of the disk (its own folder is always searched).", valueName: "path"))
    var paths: [String] = []
    @Flag(help: "Go ahead even if differencing children of the disk would no longer read correctly.") var force = false

    var filePaths: [FilePath] { paths.map { FilePath($0) } }
}

/// `--state-dir`: where job history, writer states and point-in-time copies are kept (default
/// $BULWARK_STATE_DIR, else /var/lib/bulwark). One group, so every job command finds the same history.
struct StateOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The state folder: job history, writer states, snapshot copies (default: $BULWARK_STATE_DIR, else /var/lib/bulwark).", valueName: "dir"))
    var stateDir: String?

    var directory: FilePath { FilePath(WriterStateStore.resolveDirectory(stateDir)) }
}

/// `--credentials FILE` for `smb://` targets: a mount.cifs-style file (username=, password=, domain=;
/// refused unless only its owner may read it), else the password in $BULWARK_SMB_PASSWORD with the
/// URL's user. Never on the command line.
struct CredentialOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Credentials for smb:// targets: a file with username=, password=, domain= lines, mode 0600 (else $BULWARK_SMB_PASSWORD).", valueName: "file"))
    var credentials: String?

    /// Opens a target location with these credentials where it needs them.
    func open(_ location: String) throws -> any BackupTarget {
        guard SMBLocation.isSMB(location) else { return try Targets.open(location) }
        if let credentials { return try Targets.open(location, credentials: SMBCredentials(file: FilePath(credentials))) }
        if let password = ProcessInfo.processInfo.environment["BULWARK_SMB_PASSWORD"], !password.isEmpty {
            let parsed = try SMBLocation(parsing: location)
            return try Targets.open(location, credentials: SMBCredentials(username: parsed.user, password: password, domain: parsed.domain))
        }
        if isatty(0) == 1, let parsed = try? SMBLocation(parsing: location), let user = parsed.user {
            // A rescue system carries no password: it is typed, never stored.
            if let typed = getpass("Password for \(user)@\(parsed.host): "), typed.pointee != 0 {
                return try Targets.open(location, credentials: SMBCredentials(username: user, password: String(cString: typed), domain: parsed.domain))
            }
        }
        return try Targets.open(location, credentials: nil)
    }

    /// The machine of a point on `target`: the one given, or the only one the target holds.
    func machine(_ given: String?, on target: any BackupTarget) throws -> String {
        if let given { return given }
        let machines = try RecoveryPoints.machines(on: target)
        guard machines.count == 1 else {
            throw TargetError.machineNotFound(target: target.location, machine: "(give --machine)", known: machines)
        }
        return machines[0]
    }
}
