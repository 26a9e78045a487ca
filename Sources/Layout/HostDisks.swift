import Foundation
import Glibc
import Storage
import SystemPackage

/// A whole disk of this host, as the kernel and udev describe it.
public struct HostDisk: Codable, Sendable, Equatable {
    /// `/dev/sda`.
    public var path: String
    public var major: UInt32
    public var minor: UInt32
    public var size: UInt64
    public var logicalSectorSize: Int
    public var physicalSectorSize: Int
    public var serial: String?
    public var wwn: String?
    public var model: String?

    public init(path: String, major: UInt32 = 0, minor: UInt32 = 0, size: UInt64, logicalSectorSize: Int = 512, physicalSectorSize: Int = 512,
                serial: String? = nil, wwn: String? = nil, model: String? = nil) {
        self.path = path
        self.major = major
        self.minor = minor
        self.size = size
        self.logicalSectorSize = logicalSectorSize
        self.physicalSectorSize = physicalSectorSize
        self.serial = serial
        self.wwn = wwn
        self.model = model
    }
}

/// The host's whole disks (`/sys/block`), what identifies them (udev's `ID_SERIAL_SHORT`, `ID_WWN`,
/// `ID_MODEL`, else sysfs), which disk a file lives on, and what is using a disk (mounted
/// filesystems, swap, device-mapper or RAID holders, loop devices over an image file): what a
/// bare-metal backup enumerates and what system recovery must never overwrite by mistake.
public enum HostDisks {
    /// Kinds of block device that are not disks of the machine (memory, optical, loop, mapped).
    static let virtualPrefixes = ["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd", "zd"]

    /// Every whole disk, in name order.
    public static func list() -> [HostDisk] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []).sorted()
        return names.filter { name in !virtualPrefixes.contains { name.hasPrefix($0) } }.compactMap { name in
            guard let (major, minor) = deviceNumber(file: "/sys/block/\(name)/dev") else { return nil }
            return describe(major: major, minor: minor)
        }
    }

    /// The whole disk `major:minor` names; nil when unknown or when it names a partition (see
    /// `wholeDisk(major:minor:)`).
    public static func describe(major: UInt32, minor: UInt32) -> HostDisk? {
        let sys = "/sys/dev/block/\(major):\(minor)"
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: sys), let name = target.split(separator: "/").last.map(String.init),
              !FileManager.default.fileExists(atPath: sys + "/partition") else { return nil }
        let sectors = read(sys + "/size").flatMap { UInt64($0) } ?? 0
        let udev = udevProperties(major: major, minor: minor)
        return HostDisk(path: "/dev/\(name)", major: major, minor: minor, size: sectors * 512,
                        logicalSectorSize: read(sys + "/queue/logical_block_size").flatMap { Int($0) } ?? 512,
                        physicalSectorSize: read(sys + "/queue/physical_block_size").flatMap { Int($0) } ?? 512,
                        serial: udev["ID_SERIAL_SHORT"] ?? read(sys + "/device/serial") ?? read(sys + "/serial"),
                        wwn: udev["ID_WWN"] ?? read(sys + "/wwid") ?? read(sys + "/device/wwid"),
                        model: udev["ID_MODEL"] ?? read(sys + "/device/model"))
    }

    /// The whole disk a block device path names (`/dev/sda`, `/dev/disk/by-id/...`), nil for a
    /// partition or anything that is not a block device.
    public static func describe(path: FilePath) -> HostDisk? {
        var st = stat()
        guard stat(path.string, &st) == 0, st.st_mode & S_IFMT == S_IFBLK else { return nil }
        let (a, b) = split(st.st_rdev)
        return describe(major: a, minor: b)
    }

    /// The whole disk holding the device `major:minor` (a partition's disk, or itself).
    public static func wholeDisk(major: UInt32, minor: UInt32) -> (UInt32, UInt32)? {
        let sys = "/sys/dev/block/\(major):\(minor)"
        if FileManager.default.fileExists(atPath: sys + "/partition") {
            // /sys/dev/block/8:1 -> ../../devices/.../sda/sda1: the parent folder is the disk.
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: sys) else { return nil }
            let parent = URL(fileURLWithPath: "/sys/dev/block/").appendingPathComponent(target).deletingLastPathComponent().standardized.path
            return deviceNumber(file: parent + "/dev")
        }
        return FileManager.default.fileExists(atPath: sys) ? (major, minor) : nil
    }

    /// The whole disks the file system holding `path` lives on: its disk and, when that is a loop
    /// device, the disk of its backing file, and so on; empty for a filesystem with no disk (tmpfs,
    /// a network share). Writing any of them would destroy what is at `path`.
    public static func disks(holding path: FilePath) -> [(UInt32, UInt32)] {
        var st = stat()
        guard stat(path.string, &st) == 0 else { return [] }
        var device = split(st.st_dev)
        var out: [(UInt32, UInt32)] = []
        for _ in 0..<8 {
            guard let whole = wholeDisk(major: device.0, minor: device.1) else { break }
            out.append(whole)
            guard let backing = read("/sys/dev/block/\(whole.0):\(whole.1)/loop/backing_file"), stat(backing, &st) == 0 else { break }
            device = split(st.st_dev)
        }
        return out
    }

    /// Why writing the whole disk `major:minor` would hurt something in use (empty when nothing
    /// uses it): a mounted filesystem on it or on one of its partitions, swap, a holder (LVM,
    /// device-mapper, RAID).
    public static func users(major: UInt32, minor: UInt32) -> [String] {
        var found: [String] = []
        let sys = "/sys/dev/block/\(major):\(minor)"
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: sys), let name = target.split(separator: "/").last.map(String.init) else { return [] }
        let disk = "/sys/block/\(name)"
        var devices: [(String, UInt32, UInt32)] = [(name, major, minor)]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: disk)) ?? [] where entry.hasPrefix(name) {
            if let (a, b) = deviceNumber(file: disk + "/\(entry)/dev") { devices.append((entry, a, b)) }
        }
        let mounts = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { continue }
            // The mount's device numbers, and its source device's (btrfs mounts show anonymous numbers).
            var source: String? = nil
            if let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count, fields[dash + 2].hasPrefix("/dev/"),
               let (a, b) = number(of: FilePath(String(fields[dash + 2]))) {
                source = "\(a):\(b)"
            }
            if let (dev, _, _) = devices.first(where: { "\($0.1):\($0.2)" == fields[2] || "\($0.1):\($0.2)" == source }) {
                found.append("/dev/\(dev) is mounted on \(fields[4])")
            }
        }
        // Whatever else holds it: the kernel refuses an exclusive open of a disk in use.
        if found.isEmpty {
            let fd = open("/dev/\(name)", O_RDONLY | O_EXCL | O_CLOEXEC)
            if fd >= 0 { close(fd) } else if errno == EBUSY { found.append("the kernel reports /dev/\(name) busy (mounted, or held by LVM, RAID or swap)") }
        }
        let swaps = (try? String(contentsOfFile: "/proc/swaps", encoding: .utf8)) ?? ""
        for (dev, _, _) in devices where swaps.contains("/dev/\(dev) ") { found.append("/dev/\(dev) is in use as swap") }
        for (dev, _, _) in devices {
            let holders = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/block/\(dev)/holders")) ?? []
            for h in holders { found.append("/dev/\(dev) is held by /dev/\(h)") }
        }
        return found
    }

    /// The loop devices whose backing file is `path` (an image file attached with losetup).
    public static func loopDevices(backing path: FilePath) -> [String] {
        var st = stat(), other = stat()
        guard stat(path.string, &st) == 0 else { return [] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []
        return names.filter { $0.hasPrefix("loop") }.sorted().filter { name in
            guard let backing = read("/sys/block/\(name)/loop/backing_file"), stat(backing, &other) == 0 else { return false }
            return other.st_dev == st.st_dev && other.st_ino == st.st_ino
        }.map { "/dev/\($0)" }
    }

    public static func split(_ dev: dev_t) -> (UInt32, UInt32) {
        let d = UInt64(dev)
        return (UInt32(truncatingIfNeeded: ((d >> 8) & 0xFFF) | ((d >> 32) & ~0xFFF)),
                UInt32(truncatingIfNeeded: (d & 0xFF) | ((d >> 12) & ~0xFF)))
    }

    public static func number(of path: FilePath) -> (UInt32, UInt32)? {
        var st = stat()
        guard stat(path.string, &st) == 0 else { return nil }
        return split(st.st_mode & S_IFMT == S_IFBLK ? st.st_rdev : st.st_dev)
    }

    static func deviceNumber(file devFile: String) -> (UInt32, UInt32)? {
        guard let text = read(devFile) else { return nil }
        let parts = text.split(separator: ":")
        guard parts.count == 2, let a = UInt32(parts[0]), let b = UInt32(parts[1]) else { return nil }
        return (a, b)
    }

    static func udevProperties(major: UInt32, minor: UInt32) -> [String: String] {
        guard let text = try? String(contentsOfFile: "/run/udev/data/b\(major):\(minor)", encoding: .utf8) else { return [:] }
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("E:") {
            let kv = line.dropFirst(2).split(separator: "=", maxSplits: 1)
            if kv.count == 2 { out[String(kv[0])] = String(kv[1]) }
        }
        return out
    }

    /// A sysfs attribute, trimmed; nil when absent or empty.
    static func read(_ path: String) -> String? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return trimmed.isEmpty ? nil : trimmed
    }
}
