import ArgumentParser
import Foundation
import Mount
import Protection
import Storage
import SystemPackage
import Targets
import VirtualDisk

/// The options that name one disk of a recovery point on a target: `--target`, `--machine`,
/// `--version`, `--disk` and the target's credentials (shared by `mount`, `files list`, `restore files`).
struct PointDiskOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The target.", valueName: "url")) var target: String
    @Option(help: ArgumentHelp("The machine (needed when the target holds several).", valueName: "name")) var machine: String?
    @Option(help: ArgumentHelp("The version (`bulwark versions` lists them).", valueName: "version")) var version: String
    @Option(help: "The disk's index in the point.") var disk: Int = 0
    @OptionGroup var access: CredentialOptions

    /// The arguments that give these options again (for a background server).
    var arguments: [String] {
        var out = ["--target", target, "--version", version, "--disk", String(disk)]
        if let machine { out += ["--machine", machine] }
        if let credentials = access.credentials { out += ["--credentials", credentials] }
        return out
    }

    /// Opens the target and the point's chain for the disk (read-only, through the target's space; a
    /// point whose data an interrupted prune moved is read where the fold journal says).
    func openDisk() throws -> ChainDisk {
        let t = try access.open(target)
        let machine = try access.machine(machine, on: t)
        let points = RecoveryPoints(target: t, machine: machine)
        let manifest = try points.manifest(version)
        guard let entry = manifest.disks.first(where: { $0.index == disk }) else {
            throw TargetError.pointNotFound(target: t.location, machine: machine, version: "\(version) disk \(disk) (the point has disks \(manifest.disks.map { String($0.index) }.joined(separator: ", ")))")
        }
        // On a local target the levels are held against writers (a merge or retention is busy while
        // the point is shown), as `disk mount` does.
        return try ChainDisk(opening: points.imagePath(version, disk: entry), in: t.space)
    }
}

/// `bulwark mount --target URL --version V DIR`: a recovery point's disk, read straight from the
/// target, served like `bulwark disk mount`.
struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Show a recovery point's disk (DIR/disk) and its partitions (DIR/part1, ...) as read-only files through FUSE.",
        discussion: "Reads the point's chain straight from the target (a folder or an SMB share) on demand; nothing is copied. A partition loop-mounts read-only: `mount -o ro,loop,noload DIR/part1 MNT` (ext4). Unmount with `bulwark umount DIR`."
    )

    @OptionGroup var point: PointDiskOptions
    @Argument(help: "An existing folder to mount on.") var dir: String
    @Flag(help: "Serve the mount in this process until it is unmounted (or SIGINT/SIGTERM), instead of in the background.")
    var foreground = false
    @Flag(help: "Let other users read the files (FUSE allow_other).")
    var allowOther = false
    @Option(help: .hidden) var readyFd: Int32?

    func run() throws {
        if !foreground && readyFd == nil {
            return try MountServer.daemonize(["mount"] + point.arguments + [dir] + (allowOther ? ["--allow-other"] : []), dir: dir)
        }
        let disk = try point.openDisk()
        let mount: DiskMount
        do {
            mount = try DiskMount.mount(disk: disk, at: FilePath(dir), options: MountOptions(allowOther: allowOther))
        } catch {
            try? disk.close()
            throw error
        }
        MountServer.serve(mount, readyFd: readyFd)
    }
}
