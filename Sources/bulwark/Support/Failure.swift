import ArgumentParser
import SystemPackage
import Storage
import ShadowCopy
import VirtualDisk
import Protection
import Targets
import Mount
import Recovery
import FileSets

/// The exit status of every command, in one place (README "Exit codes" lists them). Scripts can tell
/// a missing file from a damaged one from a busy one without parsing messages.
enum ExitStatus {
    /// Done.
    static let ok: Int32 = 0
    /// The operation failed, or `disk check` found problems.
    static let failed: Int32 = 1
    /// An image or a differencing parent does not exist.
    static let notFound: Int32 = 3
    /// An image is damaged: bad structures, truncated, a parent that is not the one it was made from,
    /// a chain that loops.
    static let corrupt: Int32 = 4
    /// Another process has the image open for writing.
    static let busy: Int32 = 5
    /// The filesystem has too little free space (or quota) for the operation.
    static let noSpace: Int32 = 6
    /// A system call failed (read, write, open, sync, ...).
    static let ioError: Int32 = 7
    /// Refused to protect data: the result exists already, or differencing children would break.
    static let refused: Int32 = 8
    /// The command line is wrong: an unknown option, a missing or malformed value, a size out of range
    /// (swift-argument-parser's `ExitCode.validationFailure`, EX_USAGE).
    static let usage: Int32 = ExitCode.validationFailure.rawValue

    /// The list `bulwark --help` (and so the man page) shows.
    static let summary = "Exit status: \(ok) done; \(failed) failed, or check found problems; \(notFound) not found; \(corrupt) corrupt image; \(busy) busy (in use by another process); \(noSpace) not enough space; \(ioError) I/O error; \(refused) refused (the result exists, or children would break); \(usage) usage error."

    static func of(_ error: DiskError) -> Int32 {
        switch error {
        case .parentNotFound: notFound
        case .corrupt, .truncated, .parentMismatch, .chainLoop, .notRecognized: corrupt
        case .hasChildren: refused
        case .notCreated: failed
        case .mergePending: busy
        case .invalidArgument, .outOfRange: usage
        case .unsupported: failed
        }
    }

    static func of(_ error: RecoveryError) -> Int32 {
        switch error {
        case .badMap: usage
        case .unmatched, .tooSmall, .inUse: refused
        case .mismatch: corrupt
        }
    }

    static func of(_ error: FileSetError) -> Int32 {
        switch error {
        case .noFileSet, .pathNotFound: notFound
        case .badPath: usage
        case .destinationNotEmpty: refused
        }
    }

    static func of(_ error: StorageError) -> Int32 {
        switch error {
        case .notFound: notFound
        case .endOfFile: corrupt
        case .busy: busy
        case .insufficientSpace: noSpace
        case .io(_, _, let errno): errno == .noSpace || errno == .diskQuotaExceeded ? noSpace : ioError
        case .exists: refused
        case .invalidArgument: usage
        case .notAFile, .unsupported, .readOnly: failed
        }
    }
}

/// Turns a library error into what the user sees: the library's message (the problem and the fix in
/// the library's terms), then a hint line that names the command or flag to use, then the exit status.
enum Failure {
    static func hints(for error: DiskError) -> [String] {
        switch error {
        case let .hasChildren(path, _):
            return ["`bulwark disk merge CHILD` folds a child into \(path) first; --force goes ahead and leaves the children unreadable",
                    "children elsewhere are found when named: --children DIR|FILE..."]
        case let .mergePending(_, child, _, _, runningPID):
            return [runningPID != nil
                ? "if that merge was interrupted, run `bulwark disk merge \(child)` to finish it"
                : "run `bulwark disk merge \(child)` to finish it"]
        case let .parentNotFound(child, _, _):
            return ["`bulwark disk reparent \(child) --parent PATH` points it at a moved parent"]
        case let .parentMismatch(child, parent, _, _):
            return ["if \(parent) is the right parent after all, `bulwark disk reparent \(child) --parent \(parent) --ignore-id-mismatch` accepts it"]
        case .notRecognized:
            return ["pass --format raw to open it as a raw disk on purpose"]
        case let .outOfRange(_, _, _, virtualSize):
            return ["the disk holds \(ByteCount.format(virtualSize)) (\(virtualSize) bytes): --offset and --length must stay within it"]
        default:
            return []
        }
    }

    static func hints(for error: ShadowCopyError) -> [String] {
        switch error {
        case .stateFile:
            return ["--state-dir DIR (or BULWARK_STATE_DIR) points at another state folder"]
        case let .invalidArgument(text) where text.contains("must be forced"):
            return ["--force forgets it anyway"]
        case let .invalidArgument(text) where text.contains("nothing to forget") || text.contains("no writer with id"):
            return ["`bulwark writers list` shows the ids; `bulwark writers forget --stale` forgets the writers that are gone"]
        case .outputUnusable:
            return ["--output DIR chooses another folder"]
        case .reflinkUnsupported:
            return ["--provider copy copies instead (or --provider auto picks what works)"]
        case .notFrozen:
            return ["name mountpoints the agent knows (`--qga SOCKET:MOUNT,...`), or pass --allow-crash-consistent"]
        default:
            return []
        }
    }

    static func hints(for error: StorageError) -> [String] {
        switch error {
        case let .busy(path, _):
            let holders = LockHolders.holders(of: FilePath(path))
            let who = holders.isEmpty ? "another process"
                : holders.map { "PID \($0.pid)\($0.command.map { " (\($0))" } ?? "")" }.joined(separator: ", ")
            return ["\(path) is in use by \(who); try again when it has finished"]
        case let .exists(path):
            return ["choose another name, or remove \(path) first"]
        case let .notAFile(path, _):
            return ["check what \(path) is (`ls -l`): only regular files and block devices are images"]
        default:
            return []
        }
    }
}

extension Failure {
    /// Any error a command lets through: the library types get their message, hints and status;
    /// others (swift-argument-parser's, `ExitCode`) pass on as they are. `quiet` leaves the message
    /// out (a `--json` command already printed the failed job).
    static func exit(for error: any Error, quiet: Bool = false) -> any Error {
        func say(_ e: any Error, _ hints: [String] = []) {
            guard !quiet else { return }
            Output.note("Error: \(e)")
            for line in hints { Output.note("hint: \(line)") }
        }
        switch error {
        case let e as DiskError: say(e, hints(for: e)); return ExitCode(ExitStatus.of(e))
        case let e as StorageError: say(e, hints(for: e)); return ExitCode(ExitStatus.of(e))
        case let e as ShadowCopyError: say(e, hints(for: e)); return ExitCode(ExitStatus.failed)
        case let e as PolicyError: say(e); return ExitCode(ExitStatus.usage)
        case let e as ProtectionError: say(e, hints(for: e)); return ExitCode(ExitStatus.of(e))
        case let e as TargetError: say(e, hints(for: e)); return ExitCode(ExitStatus.of(e))
        case let e as HistoryError: say(e); return ExitCode(ExitStatus.ioError)
        case let e as SMBError: say(e); return ExitCode(ExitStatus.of(e))
        case let e as MountError: say(e, hints(for: e)); return ExitCode(ExitStatus.of(e))
        case let e as FilesError: say(e); return ExitCode(e.status)
        case let e as RecoveryError: say(e); return ExitCode(ExitStatus.of(e))
        case let e as FileSetError: say(e); return ExitCode(ExitStatus.of(e))
        case is OperationCancelled: say(error); return ExitCode(ExitStatus.failed)
        default: return error
        }
    }

    static func hints(for error: ProtectionError) -> [String] {
        switch error {
        case let .policyInvalid(file, _): return ["`bulwark policy check \(file)` lists every problem with its line"]
        case .snapshotFailed: return ["`bulwark writers list` shows each writer's state and last error"]
        default: return []
        }
    }

    static func hints(for error: TargetError) -> [String] {
        switch error {
        case let .leased(target, machine, _, _):
            return ["`bulwark jobs list` shows the running jobs; a lease of a process that is gone is taken over by the next job on \(target) for \(machine)"]
        case let .damaged(path, _):
            return ["`bulwark verify --target TARGET` checks every point; a damaged catalog is rebuilt from the manifests by the next job (\(path))"]
        default: return []
        }
    }
}

extension Failure {
    static func hints(for error: MountError) -> [String] {
        switch error {
        case let .alreadyMounted(path, fstype) where fstype.hasPrefix(DiskMount.fsType):
            return ["`bulwark umount \(path)` ends that disk mount"]
        case .notMounted:
            return ["`findmnt -t \(DiskMount.fsType)` lists the Bulwark disk mounts"]
        case let .busy(path):
            return ["`fuser -vm \(path)` lists the processes using it; `bulwark umount --lazy \(path)` detaches it now"]
        case .fuseUnavailable:
            return ["run as root, or install fuse3 (tools/setup) for fusermount3"]
        default:
            return []
        }
    }
}

extension ExitStatus {
    /// A missing folder is "not found", a mount in use "busy", a folder that is mounted already (or
    /// a mount that is not Bulwark's) "refused".
    static func of(_ error: MountError) -> Int32 {
        switch error {
        case .mountpointMissing, .notMounted: notFound
        case .alreadyMounted, .notBulwarkMount: refused
        case .busy: busy
        case .notADirectory: usage
        case .fuseUnavailable, .failed: failed
        }
    }

    static func of(_ error: SMBError) -> Int32 {
        switch error {
        case .shareNotFound: notFound
        case .diskFull: noSpace
        case .unreachable, .connectionLost: ioError
        case .logonFailed, .accessDenied, .writeDenied: failed
        case .credentialsFile, .missingCredentials: usage
        }
    }

    static func of(_ error: ProtectionError) -> Int32 {
        switch error {
        case .sourceMissing: notFound
        case .sourceChanged: ioError
        case .crashConsistentRefused, .pruneRefused: refused
        case .targetUnusable: ioError
        case .snapshotFailed, .verifyFailed: failed
        case .policyInvalid: usage
        }
    }

    static func of(_ error: TargetError) -> Int32 {
        switch error {
        case .leased: busy
        case .leaseLost: failed
        case .damaged: corrupt
        case .pointNotFound, .machineNotFound: notFound
        case .invalidLocation: usage
        case .noRoom: noSpace
        }
    }
}
