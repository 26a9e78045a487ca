import SystemPackage

/// Every failure the disk engine reports. Each case names the file and the cause, so that the
/// command line can print it as it is and exit non-zero.
public enum DiskError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A system call failed on `path`.
    case io(path: String, operation: String, errno: Errno)
    /// The file does not exist.
    case notFound(path: String)
    /// The file is shorter than its own structures say (`needed` bytes at least, `actual` present).
    case truncated(path: String, needed: UInt64, actual: UInt64)
    /// A structure on disk is damaged or inconsistent; `reason` says which and how.
    case corrupt(path: String, reason: String)
    /// A valid file that uses a feature or combination this engine refuses to handle.
    case unsupported(path: String, reason: String)
    /// A caller's argument is unusable (a size that is not a power of two, an unknown format, ...).
    case invalidArgument(String)
    /// None of the parent locators of `child` leads to a file.
    case parentNotFound(child: String, tried: [String], expectedID: String)
    /// A parent was found but it is not the one the child was made from.
    case parentMismatch(child: String, parent: String, expectedID: String, foundID: String)
    /// Following parents came back to an image already in the chain.
    case chainLoop(path: String, chain: [String])
    /// A read or write reaches past the virtual disk's end.
    case outOfRange(path: String, offset: UInt64, length: UInt64, virtualSize: UInt64)
    /// A write was attempted on an image opened read-only.
    case readOnly(path: String)
    /// Another process holds the image open for writing.
    case busy(path: String)
    /// The destination exists already and would be overwritten.
    case exists(path: String)
    /// The filesystem holding `path` has too little free space for the operation.
    case insufficientSpace(path: String, needed: UInt64, available: UInt64)
    /// The image is the parent of differencing children that the operation would break.
    case hasChildren(path: String, children: [String])

    public var description: String {
        switch self {
        case let .io(path, operation, errno):
            return "\(path): \(operation) failed: \(errno) (errno \(errno.rawValue))"
        case let .notFound(path):
            return "\(path): no such file"
        case let .truncated(path, needed, actual):
            return "\(path): file is truncated: its structures need at least \(needed) bytes but the file has \(actual)"
        case let .corrupt(path, reason):
            return "\(path): corrupt image: \(reason)"
        case let .unsupported(path, reason):
            return "\(path): unsupported: \(reason)"
        case let .invalidArgument(reason):
            return reason
        case let .parentNotFound(child, tried, expectedID):
            let list = tried.isEmpty ? "(the image records no usable parent locator)" : tried.joined(separator: ", ")
            return "\(child): parent disk not found (expected parent id \(expectedID)); locator paths tried: \(list)"
        case let .parentMismatch(child, parent, expectedID, foundID):
            return "\(child): parent \(parent) has id \(foundID), but the child was made from a parent with id \(expectedID); the parent was replaced or modified"
        case let .chainLoop(path, chain):
            return "\(path): differencing chain loops back on itself: \(chain.joined(separator: " -> "))"
        case let .outOfRange(path, offset, length, virtualSize):
            return "\(path): range \(offset)+\(length) lies beyond the virtual disk size \(virtualSize)"
        case let .readOnly(path):
            return "\(path): image is open read-only"
        case let .busy(path):
            return "\(path): image is in use by another process (locked for writing)"
        case let .exists(path):
            return "\(path): file exists already; refusing to overwrite it"
        case let .insufficientSpace(path, needed, available):
            return "\(path): not enough free space: the operation needs \(ByteCount.format(needed)) (\(needed) bytes) but only \(ByteCount.format(available)) (\(available) bytes) are free"
        case let .hasChildren(path, children):
            return "\(path): is the parent of differencing disks that this would break: \(children.joined(separator: ", ")); merge them first, or confirm that they may be broken"
        }
    }
}
