/// Why a mount or an unmount failed. Each case names the folder (or disk), the cause and the next step.
public enum MountError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The mount folder (or a folder above it) does not exist.
    case mountpointMissing(path: String)
    /// The mount folder is not a folder.
    case notADirectory(path: String)
    /// Something is mounted on the folder already.
    case alreadyMounted(path: String, fstype: String)
    /// Nothing is mounted on the folder.
    case notMounted(path: String)
    /// Something is mounted on the folder, but not by Bulwark.
    case notBulwarkMount(path: String, fstype: String)
    /// The mount is in use (an open file, a loop device, a process inside it).
    case busy(path: String)
    /// FUSE is not usable here (no /dev/fuse, no permission to mount).
    case fuseUnavailable(path: String, reason: String)
    /// The mount or unmount failed for `reason`.
    case failed(path: String, reason: String)

    public var description: String {
        switch self {
        case let .mountpointMissing(path):
            return "\(path): mount folder does not exist; create it first (mkdir -p \(path))"
        case let .notADirectory(path):
            return "\(path): not a folder; a disk is mounted on an (empty) folder"
        case let .alreadyMounted(path, fstype):
            return "\(path): something is mounted there already (\(fstype)); unmount it or choose another folder"
        case let .notMounted(path):
            return "\(path): nothing is mounted there"
        case let .notBulwarkMount(path, fstype):
            return "\(path): is a \(fstype) mount, not a Bulwark disk mount; unmount it with umount"
        case let .busy(path):
            return "\(path): the mount is in use (an open file, a loop device or a mount of a partition, a process whose working folder is inside); close or unmount those first"
        case let .fuseUnavailable(path, reason):
            return "\(path): cannot mount through FUSE: \(reason); FUSE needs /dev/fuse and either root or fusermount3 (Debian package fuse3)"
        case let .failed(path, reason):
            return "\(path): \(reason)"
        }
    }
}
