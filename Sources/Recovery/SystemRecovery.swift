import Foundation
import Layout
import Storage
import SystemPackage
import Targets

/// What to recover: which point, and where each of its disks goes.
public struct SystemRecoveryOptions: Sendable {
    public var machine: String
    public var version: String
    /// Backed-up disk index → destination (a whole-disk block device, or an existing image file).
    public var maps: [Int: FilePath]
    /// Backed-up disks left alone.
    public var exclude: Set<Int>

    public init(machine: String, version: String, maps: [Int: FilePath] = [:], exclude: Set<Int> = []) {
        self.machine = machine
        self.version = version
        self.maps = maps
        self.exclude = exclude
    }
}

/// What a system recovery will do, decided and checked before anything is written: the command
/// prints it, asks, and then runs exactly it.
public struct SystemRecoveryPlan: Codable, Sendable, Equatable {
    public var machine: String
    public var version: String
    /// When the point was taken.
    public var time: String
    public var disks: [Disk]

    public struct Disk: Codable, Sendable, Equatable {
        public var index: Int
        /// The disk as it was backed up (its path on the protected machine).
        public var source: String
        public var size: UInt64
        /// The backed-up layout (nil when the point has none: the disk's bytes are restored as they are).
        public var layout: DiskLayout?
        /// `restore` or `exclude`.
        public var action: String
        public var destination: String?
        public var destinationSize: UInt64?
        /// How the destination was chosen: `map` (given), `serial`, `wwn` or `size`.
        public var matchedBy: String?
        /// What the destination holds now, all of it erased by the restore.
        public var erases: DiskLayout?
        /// Bytes past the backed-up size that stay free (a larger destination).
        public var freeAfter: UInt64?
    }

    /// The disks that will be written.
    public var restored: [Disk] { disks.filter { $0.action == "restore" } }
}

/// Bare-metal recovery (`wbadmin start sysrecovery -recreatedisks -restoreallvolumes`): every disk of
/// a point written onto a disk of this machine (or an image file), partition tables included, each
/// checked against the manifest as it is written. `plan` decides and refuses; `run` writes.
///
/// A destination is given (`maps`) or matched by the serial or WWN recorded in the point's layout,
/// then by an exact size when exactly one unused disk has it; never silently: the plan names how each
/// was chosen. Refused before any write: a destination smaller than its disk, one that is mounted,
/// swap, held or loop-attached, the disk holding a local target, a partition instead of a disk, two
/// disks onto one destination.
public enum SystemRecovery {
    public static func plan(target: any BackupTarget, options: SystemRecoveryOptions, hostDisks: [HostDisk]? = nil) throws -> SystemRecoveryPlan {
        let points = RecoveryPoints(target: target, machine: options.machine)
        let manifest = try points.manifest(options.version)
        let indexes = Set(manifest.disks.map(\.index))
        let known = manifest.disks.map { String($0.index) }.joined(separator: ", ")
        for n in options.maps.keys.sorted() where !indexes.contains(n) {
            throw RecoveryError.badMap("--map \(n)=...: \(options.machine)/\(options.version) has no disk \(n) (its disks: \(known))")
        }
        for n in options.exclude.sorted() where !indexes.contains(n) {
            throw RecoveryError.badMap("--exclude-disk \(n): \(options.machine)/\(options.version) has no disk \(n) (its disks: \(known))")
        }
        for n in options.maps.keys.sorted() where options.exclude.contains(n) {
            throw RecoveryError.badMap("disk \(n) is both mapped and excluded; drop one of --map \(n)=... and --exclude-disk \(n)")
        }
        let host = hostDisks ?? HostDisks.list()
        var taken: [FileID: Int] = [:]
        var disks: [SystemRecoveryPlan.Disk] = []
        for disk in manifest.disks.sorted(by: { $0.index < $1.index }) {
            var entry = SystemRecoveryPlan.Disk(index: disk.index, source: disk.source, size: disk.virtualSize, layout: disk.layout, action: "exclude")
            if options.exclude.contains(disk.index) {
                disks.append(entry)
                continue
            }
            var destination: FilePath
            if let mapped = options.maps[disk.index] {
                destination = FileOps.absolute(mapped)
                entry.matchedBy = "map"
            } else {
                let free = host.filter { candidate in !taken.keys.contains { $0 == FileID(path: FilePath(candidate.path)) } &&
                    !options.maps.values.contains { FileID(path: $0) == FileID(path: FilePath(candidate.path)) } }
                (destination, entry.matchedBy) = try match(disk, among: free)
            }
            let checked = try check(destination, for: disk, target: target)
            if let other = taken[checked.id] {
                throw RecoveryError.badMap("disks \(other) and \(disk.index) would both be written to \(destination.string); map each disk to its own destination")
            }
            taken[checked.id] = disk.index
            entry.action = "restore"
            entry.destination = destination.string
            entry.destinationSize = checked.size
            entry.erases = try? LayoutProbe.capture(destination)
            entry.freeAfter = checked.size > disk.virtualSize ? checked.size - disk.virtualSize : nil
            disks.append(entry)
        }
        return SystemRecoveryPlan(machine: options.machine, version: options.version, time: manifest.time, disks: disks)
    }

    /// A destination for `disk` among the host's unused disks: the recorded serial, then WWN, then
    /// the one disk of exactly the recorded size.
    static func match(_ disk: ManifestDisk, among candidates: [HostDisk]) throws -> (FilePath, String) {
        if let serial = disk.layout?.serial, let hit = candidates.first(where: { $0.serial == serial }) { return (FilePath(hit.path), "serial") }
        if let wwn = disk.layout?.wwn, let hit = candidates.first(where: { $0.wwn == wwn }) { return (FilePath(hit.path), "wwn") }
        let sized = candidates.filter { $0.size == disk.virtualSize }
        if sized.count == 1 { return (FilePath(sized[0].path), "size") }
        let listing = candidates.isEmpty ? "this machine has no other whole disk"
            : "this machine's disks: " + candidates.map { "\($0.path) \(ByteCount.format($0.size))\($0.serial.map { " serial \($0)" } ?? "")" }.joined(separator: ", ")
        let wanted = [disk.layout?.serial.map { "serial \($0)" }, disk.layout?.wwn.map { "WWN \($0)" }, "\(disk.virtualSize) bytes"].compactMap { $0 }.joined(separator: ", ")
        let why = sized.count > 1 ? "\(sized.count) disks have its size (\(sized.map(\.path).joined(separator: ", "))), so none is picked" : "no disk has its identity (\(wanted))"
        throw RecoveryError.unmatched(disk: disk.index, reason: "\(why); \(listing)")
    }

    struct Checked {
        var id: FileID
        var size: UInt64
    }

    /// Everything that makes `destination` unfit for `disk` of a point on `backupTarget`, checked
    /// before any write.
    static func check(_ destination: FilePath, for disk: ManifestDisk, target backupTarget: any BackupTarget) throws -> Checked {
        // A local target's folder: neither its disk nor a file inside it may be written.
        let target = (backupTarget as? LocalDirectoryTarget).map { FileOps.canonical($0.root) }
        var st = stat()
        guard stat(destination.string, &st) == 0 else {
            throw RecoveryError.badMap("disk \(disk.index): \(destination.string) does not exist (\(Errno(rawValue: errno))); give a whole disk (/dev/sdX) or an existing image file (create one with `truncate -s \(disk.virtualSize) FILE`)")
        }
        let id = FileID(path: destination) ?? FileID(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        var size: UInt64
        var reasons: [String] = []
        switch st.st_mode & S_IFMT {
        case S_IFBLK:
            let (major, minor) = HostDisks.split(st.st_rdev)
            guard let whole = HostDisks.wholeDisk(major: major, minor: minor), whole == (major, minor) else {
                throw RecoveryError.badMap("disk \(disk.index): \(destination.string) is a partition, not a whole disk; give the disk it is on")
            }
            let device = try BlockFile.open(destination, writable: false)
            defer { try? device.close() }
            size = try device.size()
            reasons += HostDisks.users(major: major, minor: minor)
            if let target, HostDisks.disks(holding: target).contains(where: { $0 == (major, minor) }) {
                reasons.append("it holds the backup target \(target.string)")
            }
        case S_IFREG:
            size = UInt64(st.st_size)
            reasons += HostDisks.loopDevices(backing: destination).map { "it is attached to \($0)" }
            if let target, FileOps.canonical(destination).string.hasPrefix(target.string + "/") {
                reasons.append("it lies inside the backup target \(target.string)")
            }
        default:
            throw RecoveryError.badMap("disk \(disk.index): \(destination.string) is neither a block device nor a regular file")
        }
        guard reasons.isEmpty else { throw RecoveryError.inUse(destination: destination.string, reasons: reasons) }
        guard size >= disk.virtualSize else {
            throw RecoveryError.tooSmall(disk: disk.index, destination: destination.string, size: size, needed: disk.virtualSize)
        }
        return Checked(id: id, size: size)
    }
}

/// What a path is, whatever it is called: a device number for block devices (two names of one disk
/// are one destination), else device and inode.
struct FileID: Hashable {
    var device: UInt64
    var inode: UInt64

    init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }

    init?(path: FilePath) {
        var st = stat()
        guard stat(path.string, &st) == 0 else { return nil }
        if st.st_mode & S_IFMT == S_IFBLK {
            self.init(device: UInt64(st.st_rdev), inode: 0)
        } else {
            self.init(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        }
    }
}
