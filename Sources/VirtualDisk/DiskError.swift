import SystemPackage
import Storage

/// Every failure the disk engine reports about images and chains. Each case names the file and the
/// cause, so that the command line can print it as it is and exit non-zero. Failures of the store
/// underneath (a missing file, an I/O error, no space, a lock held) are `StorageError`s and pass
/// through unchanged.
public enum DiskError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file is shorter than its own structures say (`needed` bytes at least, `actual` present).
    case truncated(path: String, needed: UInt64, actual: UInt64)
    /// A structure on disk is damaged or inconsistent; `reason` says which and how.
    case corrupt(path: String, reason: String)
    /// A valid file that uses a feature or combination this engine refuses to handle.
    case unsupported(path: String, reason: String)
    /// A caller's argument is unusable (a size that is not a power of two, an unknown format, ...).
    case invalidArgument(String)
    /// None of the parent locators of `child` leads to a store.
    case parentNotFound(child: String, tried: [String], expectedID: String)
    /// A parent was found but it is not the one the child was made from.
    case parentMismatch(child: String, parent: String, expectedID: String, foundID: String)
    /// Following parents came back to an image already in the chain.
    case chainLoop(path: String, chain: [String])
    /// A read or write reaches past the virtual disk's end.
    case outOfRange(path: String, offset: UInt64, length: UInt64, virtualSize: UInt64)
    /// The image is the parent of differencing children that the operation would break.
    case hasChildren(path: String, children: [String])
    /// The file's name says `expected` (.vhd, .vhdx, ...) but its content has no signature of that
    /// format (a truncated or foreign file); opening it as raw, explicitly, overrides.
    case notRecognized(path: String, expected: DiskFormat, reason: String)
    /// `path` takes part in a merge of `child` into `ancestor` (as a merged level or the ancestor) that
    /// is running (`runningPID`, the merging process) or was interrupted (nil): its content is
    /// mid-change, so it is neither written nor read on its own until the merge is finished. `record`
    /// is the merge record (`CHILD.merge.json`) that says so.
    case mergePending(path: String, child: String, ancestor: String, record: String, runningPID: Int32?)
    /// `path` was not created because of `reason` (which names the cause); nothing was left behind.
    case notCreated(path: String, reason: String)

    public var description: String {
        switch self {
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
        case let .notRecognized(path, expected, reason):
            return "\(path): not a \(expected.rawValue.uppercased()) image though its name says so: \(reason); open it as raw to override"
        case let .hasChildren(path, children):
            return "\(path): is the parent of differencing disks that this would break: \(children.joined(separator: ", ")); merge them first, or confirm that they may be broken (children are looked for only in the parent's folder and in the folders and files given as possible children)"
        case let .mergePending(path, child, ancestor, record, pid):
            let role = path == child ? "it is being merged into \(ancestor)" : "it takes part in the merge of \(child) into \(ancestor)"
            if let pid {
                return "\(path): a merge is in progress (PID \(pid)): \(role); wait for it to finish (merge record \(record))"
            }
            return "\(path): a merge is pending: \(role), which was interrupted (merge record \(record)); its content is mid-change until that merge is finished by merging \(child) again"
        case let .notCreated(path, reason):
            return "\(path): was not created: \(reason)"
        }
    }
}
