import SystemPackage

/// Failures particular to an SMB share, each saying what to do. Plain store failures on a share keep
/// their `StorageError` case (`notFound`, `exists`, `io`), so code written for the local target (a
/// listing that catches `notFound`, a publish that catches `exists`) works unchanged on a share.
/// URLs in messages carry no secrets (`SMBLocation` holds none); passwords never appear.
public enum SMBError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The server refused the session: wrong user name or password, or the user may not use the share.
    case logonFailed(share: String, user: String)
    /// The server has no share of that name.
    case shareNotFound(share: String)
    /// The server could not be reached at all (refused, unreachable, timed out).
    case unreachable(share: String, errno: Errno)
    /// Reading or listing was refused.
    case accessDenied(path: String, operation: String, user: String)
    /// Writing was refused: a read-only share, or a user without write access there.
    case writeDenied(path: String, operation: String, user: String)
    /// The share has no room left.
    case diskFull(path: String)
    /// The connection dropped and did not come back within the bounded retries.
    case connectionLost(path: String, operation: String, attempts: Int, errno: Errno)
    /// A credentials file cannot be used.
    case credentialsFile(path: String, reason: String)
    /// An `smb://` location was given without a password source.
    case missingCredentials(location: String)

    public var description: String {
        switch self {
        case let .logonFailed(share, user):
            return "\(share): logon failed for user \(user): wrong user name or password, or the user may not use this share; check the credentials file (--credentials FILE) or BULWARK_SMB_PASSWORD"
        case let .shareNotFound(share):
            return "\(share): share not found on the server; check the share name in the URL (list the server's shares with `smbclient -L`)"
        case let .unreachable(share, errno):
            return "\(share): cannot connect to the server: \(errno) (errno \(errno.rawValue)); check the host and port and that the SMB server runs"
        case let .accessDenied(path, operation, user):
            return "\(path): \(operation): access denied for user \(user); grant the user access to it on the server"
        case let .writeDenied(path, operation, user):
            return "\(path): \(operation): write access denied for user \(user): the share is read-only or the user may not write there; use a writable share or grant the user write access"
        case let .diskFull(path):
            return "\(path): the share is full (no space left on the server); free space there or prune old recovery points"
        case let .connectionLost(path, operation, attempts, errno):
            return "\(path): \(operation): connection to the server lost: \(errno) (errno \(errno.rawValue)), still failing after \(attempts) attempts; check the network and the server, then run again"
        case let .credentialsFile(path, reason):
            return "\(path): credentials file refused: \(reason)"
        case let .missingCredentials(location):
            return "\(location): an SMB target needs a password: give --credentials FILE (mount.cifs format: username=, password=, domain=; mode 600) or set BULWARK_SMB_PASSWORD"
        }
    }
}
