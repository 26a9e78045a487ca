import Storage
import SystemPackage

/// Recovery points on an SMB share (`smb://[domain;]user@host[:port]/share[/path]`), read and written
/// straight through libsmbclient: no mount, no root, no local copy first. The disk engine opens and
/// stages images through `space` (an `SMBSpace`), so a backup, a verify or a restore runs on the share
/// the way it runs on a local folder.
///
/// Publishing never replaces anything: Windows Server Backup overwrites the previous backup on a
/// share, so a failed run can leave none; here a file appears complete under a new name or not at
/// all. `publish` writes a hidden `.NAME.partial-PID`, reads it back and compares its SHA-256 with what
/// was meant (SMB has no fsync, so the read-back is the proof that the server holds the bytes), then
/// renames it to a name that does not exist.
public struct SMBTarget: BackupTarget {
    public let smbSpace: SMBSpace

    /// A target at `location` (its path is the root, the folder holding `BulwarkBackup/`). Nothing is
    /// contacted until the first call.
    public init(location: SMBLocation, credentials: SMBCredentials, retry: SMBRetryPolicy = .standard) {
        smbSpace = SMBSpace(location: location, credentials: credentials, retry: retry)
    }

    public var space: any StoreSpace { smbSpace }
    public var root: FilePath { smbSpace.location.path }
    public var location: String { smbSpace.location.description }

    public func publish(_ bytes: [UInt8], at path: FilePath) throws {
        let path = smbSpace.absolute(path)
        guard try smbSpace.status(of: path) == nil else { throw StorageError.exists(path: smbSpace.url(of: path)) }
        let name = path.lastComponent?.string ?? "file"
        let temporary = path.removingLastComponent().appending(".\(name).partial-\(ProcessState.currentPID)")
        try smbSpace.remove(temporary)
        do {
            let store = try smbSpace.create(temporary)
            do {
                try store.write(bytes, at: 0)
                try store.flush()
                try store.close()
            } catch {
                try? store.close()
                throw error
            }
            try verify(temporary, expected: bytes)
            try smbSpace.rename(temporary, to: path)
        } catch {
            try? smbSpace.remove(temporary)
            throw error
        }
    }

    /// Reads `path` back through a fresh open and compares its size and SHA-256 with `expected`.
    private func verify(_ path: FilePath, expected: [UInt8]) throws {
        let back = try readThroughSpace(path, limit: expected.count + 1)
        guard back.count == expected.count, Digest.sha256(back) == Digest.sha256(expected) else {
            throw TargetError.damaged(path: smbSpace.url(of: path),
                                      reason: "read back \(back.count) bytes (SHA-256 \(Digest.sha256(back))) after writing \(expected.count) (SHA-256 \(Digest.sha256(expected))); nothing was published, run again")
        }
    }

    public func read(_ path: FilePath, limit: Int) throws -> [UInt8] { try readThroughSpace(path, limit: limit) }

    /// Connects, checks the root (or, when it does not exist yet, the nearest folder above it, where
    /// the first job will make it) and creates and removes a probe file there.
    public func writableProblem() -> String? {
        do {
            var probe = root
            while true {
                if let st = try smbSpace.status(of: probe) {
                    guard SMBSpace.kind(st.st_mode) == .directory else { return "\(smbSpace.url(of: probe)) is not a folder" }
                    break
                }
                let up = probe.removingLastComponent()
                guard up != probe, !up.components.isEmpty || !probe.components.isEmpty else {
                    return "\(smbSpace.location.shareURL): the share's top folder cannot be found"
                }
                probe = up
            }
            let file = probe.appending(".bulwark-probe-\(ProcessState.currentPID)")
            try smbSpace.remove(file)
            let store = try smbSpace.create(file)
            try? store.close()
            try smbSpace.remove(file)
            return nil
        } catch {
            return "\(error)"
        }
    }
}
