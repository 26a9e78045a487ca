import ArgumentParser
import Dispatch
import Foundation
import Mount
import Storage
import SystemPackage
import VirtualDisk

/// `bulwark disk mount IMAGE DIR`: the virtual disk of an image chain, and each of its partitions, as
/// read-only files through FUSE (Mount-VHD). By default the command returns once DIR is usable and a
/// background process serves the mount until `bulwark umount DIR`.
struct DiskMountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Show an image's virtual disk (DIR/disk) and its partitions (DIR/part1, ...) as read-only files through FUSE.",
        discussion: "Reads go through the differencing chain on demand. A partition loop-mounts read-only: `mount -o ro,loop DIR/part1 MNT`. Unmount with `bulwark umount DIR`."
    )

    @Argument(help: "The image (a chain leaf).") var image: String
    @Argument(help: "An existing folder to mount on.") var dir: String
    @Flag(help: "Serve the mount in this process until it is unmounted (or SIGINT/SIGTERM), instead of in the background.")
    var foreground = false
    @Flag(help: "Let other users read the files (FUSE allow_other; a user other than root needs user_allow_other in /etc/fuse.conf).")
    var allowOther = false
    @Option(help: "Open IMAGE as vhd, vhdx or raw (default: detected).") var format: DiskFormat?
    /// Set on the background process: the pipe on which it says that the mount is ready.
    @Option(help: .hidden) var readyFd: Int32?

    func run() throws {
        var arguments = ["disk", "mount", image, dir]
        if allowOther { arguments.append("--allow-other") }
        if let format { arguments += ["--format", format.rawValue] }
        if !foreground && readyFd == nil { return try MountServer.daemonize(arguments, dir: dir) }
        let mount = try DiskMount.mount(image: FilePath(image), format: format, at: FilePath(dir),
                                        options: MountOptions(allowOther: allowOther))
        MountServer.serve(mount, readyFd: readyFd)
    }
}

/// The serving side shared by `bulwark disk mount` and `bulwark mount`: a command either serves its
/// mount itself (`--foreground`), or starts itself again in the background with `--ready-fd 3` and
/// returns once that server says the mount is ready.
enum MountServer {
    /// Prints the mount's summary, tells a waiting starter (`readyFd`) that it is ready, and serves
    /// until the mount is gone (`bulwark umount`, or SIGINT/SIGTERM/SIGHUP, which unmount it).
    static func serve(_ mount: DiskMount, readyFd: Int32?) {
        // The mount stands: a closed standard output is no reason to leave it without its server.
        try? Output.out(Array(summary(mount).utf8))
        if let readyFd {
            // Ready: tell the waiting command, then let go of its terminal and pipes.
            _ = try? FileDescriptor(rawValue: readyFd).writeAll(Array("ready\n".utf8))
            _ = close(readyFd)
            let null = open("/dev/null", O_RDWR)
            if null >= 0 {
                for fd in Int32(0)...2 { _ = dup2(null, fd) }
                if null > 2 { _ = close(null) }
            }
        }
        // SIGINT, SIGTERM, SIGHUP: unmount (detached if busy: it goes when its last user does) and
        // let the serving thread finish.
        var sources: [any DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { try? mount.unmount(lazy: true) }
            source.resume()
            sources.append(source)
        }
        mount.wait()
        for s in sources { s.cancel() }
    }

    static func summary(_ mount: DiskMount) -> String {
        var lines = ["Mounted \(mount.diskName) on \(mount.mountpoint) (read-only; unmount with `bulwark umount \(mount.mountpoint)`):"]
        let scheme = mount.table.scheme == .none ? "no partition table" : "\(mount.table.scheme.rawValue.uppercased()) partition table"
        for f in mount.files {
            if let p = f.partition {
                let name = p.name.map { $0.isEmpty ? "" : " \"\($0)\"" } ?? ""
                lines.append("  \(f.name)  \(ByteCount.format(f.size)) at offset \(f.offset), type \(p.type)\(name)")
            } else {
                lines.append("  \(f.name)  \(ByteCount.format(f.size)), the whole virtual disk (\(scheme))")
            }
        }
        for w in mount.table.warnings { lines.append("warning: \(w)") }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Starts this command again in the background (a new session, standard input from /dev/null)
    /// and waits until it says the mount is ready, or exits with its status when it fails.
    /// `arguments` are the command's own (without the program name); `dir` names the mount in errors.
    static func daemonize(_ arguments: [String], dir: String) throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            throw StorageError.io(path: dir, operation: "pipe", errno: Errno(rawValue: errno))
        }
        // Neither end leaks into other children; the server gets the write end as fd 3 (dup2 clears
        // the flag on the copy).
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        // Nothing else is inherited either: a descriptor of whoever started us must not be kept open
        // by the long-lived server (Foundation's Process, for one, sees its child exit when a socket
        // the child holds closes).
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
            if let fd = Int32(name), fd > 2 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        }
        let arguments = ["bulwark"] + arguments + ["--ready-fd", "3"]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGPIPE] { sigaddset(&defaults, sig) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        // POSIX_SPAWN_SETSID (glibc 2.26): the server leaves the terminal's session and process group.
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | 0x80))
        // This program by its real path, so the server's name (`ps`, a busy image's hint) is bulwark.
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "/proc/self/exe"
        var pid: pid_t = 0
        let spawned = withCStringArray(arguments) { argv in
            posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        }
        _ = close(fds[1])
        guard spawned == 0 else {
            _ = close(fds[0])
            throw StorageError.io(path: executable, operation: "posix_spawn", errno: Errno(rawValue: spawned))
        }
        var said: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64)
        while true {
            let n = read(fds[0], &buffer, buffer.count)
            if n > 0 { said += buffer[0..<n]; continue }
            if n < 0 && errno == EINTR { continue }
            break
        }
        _ = close(fds[0])
        if String(decoding: said, as: UTF8.self).hasPrefix("ready") { return }
        // The server failed before the mount was ready: it printed why on our standard error.
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = status & 0x7F == 0
        let code = exited ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        throw ExitCode(code == 0 ? ExitStatus.failed : code)
    }
}

/// `bulwark umount DIR`: ends a `bulwark disk mount` (its server exits).
struct UmountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "umount",
        abstract: "Unmount a disk mounted with `bulwark disk mount` or `bulwark mount`."
    )

    @Argument(help: "The folder the disk is mounted on.") var dir: String
    @Flag(help: "Detach a busy mount now; it goes away when its last user (an open file, a loop device) does.")
    var lazy = false

    func run() throws {
        try DiskMount.unmount(at: FilePath(dir), lazy: lazy)
    }
}

/// Calls `body` with a NULL-terminated C argv of `strings` (valid only during the call).
func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    let pointers = strings.map { strdup($0) } + [nil]
    defer { for p in pointers { free(p) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
