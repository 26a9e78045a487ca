import Storage
import SystemPackage

/// Where recovery points live: a folder in some store space (a local directory, an SMB share, later an
/// object store). Everything a target needs of its store is here, so a new kind of target implements
/// this protocol and the backup, verify, prune and replication code runs on it unchanged.
///
/// The one write primitive is `publish`: a complete file appears under a name that did not exist, or
/// nothing appears. Nothing published is ever overwritten; what changes (the catalog) is written as a
/// new generation. Disk images are written through the engine's `StagedImage` in `space` (a hidden
/// temporary name, one flush, a rename that never replaces anything), which is the same primitive.
public protocol BackupTarget: Sendable {
    /// The location as the user gave it, without secrets (for messages and manifests).
    var location: String { get }
    /// The store space the target's files live in; disk chains are opened and staged through it.
    var space: any StoreSpace { get }
    /// The folder holding `BulwarkBackup/` inside `space`.
    var root: FilePath { get }
    /// Publishes `bytes` as the complete file `path` (which must not exist): durable before visible.
    func publish(_ bytes: [UInt8], at path: FilePath) throws
    /// Reads a small file (a manifest, a catalog, a lease) whole.
    func read(_ path: FilePath, limit: Int) throws -> [UInt8]
    /// Whether the target can be written (for `policy check` and before a job starts), with the
    /// reason when it cannot.
    func writableProblem() -> String?
}

extension BackupTarget {
    /// `BulwarkBackup/` under the root: the one folder Bulwark owns on a target.
    public var backupFolder: FilePath { root.appending("BulwarkBackup") }

    /// The folder of one machine's points.
    public func machineFolder(_ machine: String) -> FilePath { backupFolder.appending(machine) }

    /// The default `publish`, for any space with exclusive create and a rename that never replaces:
    /// a hidden temporary name, the bytes, one flush, rename, and a flush of the folder.
    public func publishThroughSpace(_ bytes: [UInt8], at path: FilePath) throws {
        guard !space.exists(path) else { throw StorageError.exists(path: path.string) }
        let name = path.lastComponent?.string ?? "file"
        let temporary = path.removingLastComponent().appending(".\(name).partial-\(ProcessState.currentPID)")
        try? space.remove(temporary)
        do {
            let store = try space.create(temporary)
            do {
                try store.write(bytes, at: 0)
                try store.flush()
                try store.close()
            } catch {
                try? store.close()
                throw error
            }
            try space.rename(temporary, to: path)
            try space.syncFolder(of: path)
        } catch {
            try? space.remove(temporary)
            throw error
        }
    }

    /// The default `read`: the whole file through the space, refusing files past `limit` bytes.
    public func readThroughSpace(_ path: FilePath, limit: Int) throws -> [UInt8] {
        let store = try space.open(path, writable: false)
        defer { try? store.close() }
        let size = try store.size()
        guard size <= UInt64(limit) else {
            throw TargetError.damaged(path: path.string, reason: "\(size) bytes, more than the \(limit) such a file can have")
        }
        return try store.read(count: Int(size), at: 0)
    }
}

/// Opens the target a location names: an absolute path (a local folder, the embedded default) or an
/// `smb://[domain;]user@host[:port]/share[/path]` URL (an SMB share, through libsmbclient).
public enum Targets {
    /// Opens a target that needs no credentials (a local folder). An `smb://` URL is refused with a
    /// message saying how to give its password.
    public static func open(_ location: String) throws -> any BackupTarget {
        try open(location, credentials: nil)
    }

    /// Opens a target; `credentials` are used by `smb://` URLs (the command line reads them from
    /// `--credentials FILE` or `BULWARK_SMB_PASSWORD`; the library reads no environment). Nothing is
    /// contacted here: the first call on the target connects.
    public static func open(_ location: String, credentials: SMBCredentials?) throws -> any BackupTarget {
        if location.hasPrefix("/") { return LocalDirectoryTarget(path: FilePath(location)) }
        if SMBLocation.isSMB(location) {
            let smb = try SMBLocation(parsing: location)
            guard let credentials else { throw SMBError.missingCredentials(location: smb.description) }
            guard smb.user != nil || credentials.username != nil else {
                throw TargetError.invalidLocation(smb.description, reason: "no user name: write it in the URL (smb://user@host/share) or as username= in the credentials file")
            }
            return SMBTarget(location: smb, credentials: credentials)
        }
        if let scheme = location.split(separator: ":", maxSplits: 1).first, location.contains("://") {
            throw TargetError.invalidLocation(location, reason: "targets of kind \(scheme):// are not supported by this build; use a local folder (an absolute path) or an smb:// URL")
        }
        throw TargetError.invalidLocation(location, reason: "give an absolute path (e.g. /var/backups/bulwark) or an smb:// URL")
    }
}
