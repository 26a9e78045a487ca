import SystemPackage
import Targets

extension Policy {
    /// Opens the policy's target, with its credentials file for an `smb://` share. Every job goes
    /// through here, so backup, retention, verify and replication reach the target the same way.
    public func openTarget() throws -> any BackupTarget {
        try Self.open(target, credentials: credentials)
    }

    /// Opens the `replicate:` destination; nil when the policy does not replicate.
    public func openReplicationDestination() throws -> (any BackupTarget)? {
        guard let replicate else { return nil }
        return try Self.open(replicate.to, credentials: replicate.credentials)
    }

    static func open(_ location: String, credentials file: String?) throws -> any BackupTarget {
        guard let file else { return try Targets.open(location) }
        return try Targets.open(location, credentials: SMBCredentials(file: FilePath(file)))
    }
}
