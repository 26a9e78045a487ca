import SystemPackage

/// Every failure of a store or of the local filesystem. Like the disk engine's `DiskError`, each case
/// names the file and the cause, so the command line can print it as it is.
public enum StorageError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A system call (or a remote store's request) failed on `path`.
    case io(path: String, operation: String, errno: Errno)
    /// The file does not exist.
    case notFound(path: String)
    /// The file exists already and would be overwritten.
    case exists(path: String)
    /// Another process holds the file open for writing (its PID when the lock table names it).
    case busy(path: String, holder: Int32?)
    /// A write was attempted on a store opened read-only.
    case readOnly(path: String)
    /// A read reached past the end of the file: `needed` bytes at least, `actual` present.
    case endOfFile(path: String, needed: UInt64, actual: UInt64)
    /// The filesystem holding `path` has too little free space.
    case insufficientSpace(path: String, needed: UInt64, available: UInt64)
    /// The path names something that is not a regular file or a block device (a FIFO, a socket, a
    /// character device, a folder); opening it could block forever or mean nothing as an image.
    case notAFile(path: String, kind: String)
    /// The store cannot do what was asked (a read-only kind of store asked to write, ...).
    case unsupported(path: String, reason: String)
    /// An argument is unusable (a size that does not parse, ...).
    case invalidArgument(String)

    public var description: String {
        switch self {
        case let .io(path, operation, errno):
            return "\(path): \(operation) failed: \(errno) (errno \(errno.rawValue))"
        case let .notFound(path):
            return "\(path): no such file"
        case let .exists(path):
            return "\(path): file exists already; refusing to overwrite it"
        case let .busy(path, holder):
            let who = holder.map { "process \($0)" } ?? "another process"
            return "\(path): in use by \(who) (locked for writing); wait for it to finish, or stop it"
        case let .readOnly(path):
            return "\(path): open read-only"
        case let .endOfFile(path, needed, actual):
            return "\(path): file is truncated: reading needs at least \(needed) bytes but the file has \(actual)"
        case let .insufficientSpace(path, needed, available):
            return "\(path): not enough free space: the operation needs \(ByteCount.format(needed)) (\(needed) bytes) but only \(ByteCount.format(available)) (\(available) bytes) are free"
        case let .notAFile(path, kind):
            return "\(path): is a \(kind), not a regular file or block device; refusing to open it as a disk image"
        case let .unsupported(path, reason):
            return "\(path): \(reason)"
        case let .invalidArgument(reason):
            return reason
        }
    }
}
