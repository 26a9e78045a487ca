/// Why a system recovery was refused or stopped. Every refusal happens while planning, before any
/// byte is written; each case names the backed-up disk, the destination and what to do next.
public enum RecoveryError: Error, CustomStringConvertible, Equatable, Sendable {
    /// A `--map` or `--exclude-disk` names a disk the point does not have, or maps two disks to one
    /// destination, or names a destination that is not a whole disk or an image file.
    case badMap(String)
    /// No destination was found for a backed-up disk (no serial/WWN match, no single disk of the
    /// same size), or several fit.
    case unmatched(disk: Int, reason: String)
    /// The destination holds fewer bytes than the backed-up disk.
    case tooSmall(disk: Int, destination: String, size: UInt64, needed: UInt64)
    /// The destination is in use (mounted, swap, held, attached to a loop device) or holds the
    /// backup itself.
    case inUse(destination: String, reasons: [String])
    /// What was written reads differently from the manifest: the image on the target is damaged.
    case mismatch(disk: Int, destination: String, reason: String)

    public var description: String {
        switch self {
        case let .badMap(text):
            return text
        case let .unmatched(disk, reason):
            return "disk \(disk): \(reason); map it explicitly with --map \(disk)=/dev/DISK, or leave it out with --exclude-disk \(disk)"
        case let .tooSmall(disk, destination, size, needed):
            return "disk \(disk) needs \(needed) bytes but \(destination) holds \(size) (\(needed - size) too few); nothing was written: give a disk at least as large"
        case let .inUse(destination, reasons):
            return "\(destination) cannot be overwritten: \(reasons.joined(separator: "; ")); nothing was written: pick another disk, or stop what uses it"
        case let .mismatch(disk, destination, reason):
            return "disk \(disk) written to \(destination) does not match the point: \(reason); the destination is incomplete: run `bulwark verify` on the target and restore from a good point"
        }
    }
}
