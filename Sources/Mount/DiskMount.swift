import Layout
import CFuse
import Foundation
import Storage
import Synchronization
import SystemPackage
import VirtualDisk

/// How a disk is mounted.
public struct MountOptions: Sendable {
    /// Let users other than the one mounting read the files (FUSE's `allow_other`; for a user other
    /// than root, /etc/fuse.conf must say `user_allow_other`).
    public var allowOther: Bool
    public init(allowOther: Bool = false) {
        self.allowOther = allowOther
    }
}

/// One file of a mounted disk: `disk` or `partN`.
public struct MountedFile: Equatable, Sendable {
    public var name: String
    /// Where the file starts on the virtual disk.
    public var offset: UInt64
    public var size: UInt64
    /// The partition it shows (nil for `disk`).
    public var partition: Partition?
}

/// A read-only FUSE view of a virtual disk (Mount-VHD for Linux): inside the mount folder, `disk` is
/// the whole virtual disk and `part1`, `part2`, ... are the partitions of its GPT or MBR table, as
/// files of mode 0444. Reads go to the disk on demand. The mount appears in /proc/mounts as
/// `fuse.bulwark` with the source `bulwark:NAME`.
///
/// `mount` returns once the folder is usable; FUSE requests are served on a thread of this process
/// until `unmount()` (or an unmount from outside: `bulwark umount`, `fusermount3 -u`, `umount`).
public final class DiskMount: @unchecked Sendable {
    /// The filesystem type in /proc/mounts (`fuse.` + FUSE's subtype).
    public static let fsType = "fuse.bulwark"

    public let mountpoint: FilePath
    public let files: [MountedFile]
    public let table: PartitionTable
    public let diskName: String

    private let server: FuseServer
    private let fuse: OpaquePointer
    private let completion = Completion()

    /// Set by the serving thread once the mount is gone and the disk closed.
    final class Completion: Sendable {
        let done = Atomic<Bool>(false)
        let semaphore = DispatchSemaphore(value: 0)
        func finish() {
            done.store(true, ordering: .sequentiallyConsistent)
            semaphore.signal()
        }
    }

    /// Opens the image at `image` with its parents (read-only, in `space`) and mounts it at `at`.
    public static func mount(image: FilePath, format: DiskFormat? = nil, in space: any StoreSpace = LocalFileSystem(),
                             at mountpoint: FilePath, options: MountOptions = MountOptions()) throws -> DiskMount {
        let target = try checkMountpoint(mountpoint)
        let disk = try ChainDisk(opening: image, format: format, in: space)
        do {
            return try mount(disk: disk, checkedMountpoint: target, options: options)
        } catch {
            try? disk.close()
            throw error
        }
    }

    /// Mounts `disk` at `mountpoint`. On success the mount owns the disk (closed after unmounting);
    /// on failure the caller still does.
    public static func mount(disk: any MountableDisk, at mountpoint: FilePath, options: MountOptions = MountOptions()) throws -> DiskMount {
        try mount(disk: disk, checkedMountpoint: try checkMountpoint(mountpoint), options: options)
    }

    private static func mount(disk: any MountableDisk, checkedMountpoint: FilePath, options: MountOptions) throws -> DiskMount {
        let table = try PartitionTable.read(size: disk.size, sectorSize: disk.sectorSize) { offset, count in
            var bytes = [UInt8](repeating: 0, count: count)
            guard offset < disk.size, UInt64(count) <= disk.size - offset else { return bytes }
            try bytes.withUnsafeMutableBytes { try disk.read(into: $0, at: offset) }
            return bytes
        }
        var files = [MountedFile(name: "disk", offset: 0, size: disk.size, partition: nil)]
        for p in table.partitions {
            files.append(MountedFile(name: "part\(p.number)", offset: p.offset, size: p.length, partition: p))
        }
        return try DiskMount(disk: disk, files: files, table: table, mountpoint: checkedMountpoint, options: options)
    }

    private init(disk: any MountableDisk, files: [MountedFile], table: PartitionTable, mountpoint: FilePath, options: MountOptions) throws {
        self.mountpoint = mountpoint
        self.files = files
        self.table = table
        diskName = disk.name
        server = FuseServer(disk: disk, files: files)

        // The source shown in the mount table; commas would split FUSE's option list.
        let source = "bulwark:" + String(disk.name.map { $0 == "," || $0 == "\\" ? "_" : $0 })
        var opts = "ro,default_permissions,fsname=\(source),subtype=bulwark"
        if options.allowOther { opts += ",allow_other" }
        let arguments = ["bulwark", "-o", opts]
        FuseLog.start()
        let unmanaged = Unmanaged.passRetained(server)
        var ops = FuseServer.operations
        let created: OpaquePointer? = withCStrings(arguments) { argv in
            bulwark_fuse_new(Int32(arguments.count), argv, &ops, unmanaged.toOpaque())
        }
        guard let created else {
            unmanaged.release()
            throw MountError.failed(path: mountpoint.string, reason: "FUSE refused the mount options \(opts): \(FuseLog.take())")
        }
        fuse = created
        guard fuse_mount(created, mountpoint.string) == 0 else {
            fuse_destroy(created)
            unmanaged.release()
            let log = FuseLog.take()
            if access("/dev/fuse", R_OK | W_OK) != 0 {
                throw MountError.fuseUnavailable(path: mountpoint.string, reason: "/dev/fuse is missing or not accessible (\(log))")
            }
            throw MountError.fuseUnavailable(path: mountpoint.string, reason: log.isEmpty ? "the mount was refused" : log)
        }
        _ = FuseLog.take()
        let completion = self.completion
        let disk = server.disk
        nonisolated(unsafe) let pointer = created
        let thread = Thread {
            // Single-threaded: the disk's reads are serialized anyway, and the kernel reads ahead.
            _ = fuse_loop(pointer)
            // Gone from the mount table (unmounted from outside, or by `unmount`); fuse_unmount only
            // acts when the kernel still has it.
            fuse_unmount(pointer)
            fuse_destroy(pointer)
            unmanaged.release()
            try? disk.close()
            completion.finish()
        }
        thread.name = "bulwark-fuse"
        thread.start()
    }

    /// Whether the mount has ended (unmounted, from here or from outside).
    public var isFinished: Bool { completion.done.load(ordering: .sequentiallyConsistent) }

    /// Blocks until the mount ends (from outside or by `unmount`).
    public func wait() {
        guard !isFinished else { return }
        completion.semaphore.wait()
        completion.semaphore.signal()
    }

    /// Unmounts and waits until the serving thread has closed the disk. `lazy` detaches a busy mount
    /// (it goes away when its last user does); otherwise a busy mount is `MountError.busy` and stays.
    public func unmount(lazy: Bool = false) throws {
        if isFinished { return }
        try Self.unmountDirectory(mountpoint, lazy: lazy)
        wait()
    }

    // MARK: unmounting what another process mounted

    /// Unmounts the Bulwark disk mount at `directory` (the serving process then exits). Refuses a
    /// folder with nothing mounted or with another kind of mount.
    public static func unmount(at directory: FilePath, lazy: Bool = false) throws {
        let path = LocalFileSystem().absolute(directory)
        guard let entry = mountEntry(at: path) else {
            var st = stat()
            if stat(path.string, &st) != 0, errno == ENOENT { throw MountError.mountpointMissing(path: path.string) }
            throw MountError.notMounted(path: path.string)
        }
        guard entry.fstype == fsType else { throw MountError.notBulwarkMount(path: path.string, fstype: entry.fstype) }
        try unmountDirectory(FilePath(entry.mountpoint), lazy: lazy)
    }

    static func unmountDirectory(_ path: FilePath, lazy: Bool) throws {
        if geteuid() == 0 {
            if umount2(path.string, lazy ? Int32(MNT_DETACH) : 0) == 0 { return }
            let e = errno
            if e == EBUSY { throw MountError.busy(path: path.string) }
            if e == EINVAL || e == ENOENT, mountEntry(at: path) == nil { return }
            throw MountError.failed(path: path.string, reason: "umount2 failed: \(String(cString: strerror(e))) (errno \(e))")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ["/usr/bin/fusermount3", "/bin/fusermount3"].first { access($0, X_OK) == 0 } ?? "/usr/bin/fusermount3")
        process.arguments = ["-u"] + (lazy ? ["-z"] : []) + ["--", path.string]
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        do { try process.run() } catch {
            throw MountError.fuseUnavailable(path: path.string, reason: "fusermount3 could not be started (\(error))")
        }
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            if message.contains("busy") { throw MountError.busy(path: path.string) }
            throw MountError.failed(path: path.string, reason: "fusermount3 -u failed: \(message.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    // MARK: the mount table

    /// A line of /proc/self/mountinfo.
    public struct MountEntry: Equatable, Sendable {
        public var mountpoint: String
        public var fstype: String
        public var source: String
    }

    /// The mounts of this process's namespace, in mount order.
    public static func mountTable() -> [MountEntry] {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        var out: [MountEntry] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            guard fields.count >= 10, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { continue }
            out.append(MountEntry(mountpoint: unescape(fields[4]), fstype: fields[dash + 1], source: unescape(fields[dash + 2])))
        }
        return out
    }

    /// The topmost mount on `path` (absolute), if any.
    public static func mountEntry(at path: FilePath) -> MountEntry? {
        var key = path.string
        while key.count > 1, key.hasSuffix("/") { key.removeLast() }
        return mountTable().last { $0.mountpoint == key }
    }

    /// The mount table escapes space, tab, newline and backslash as `\ooo`.
    static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        let u = Array(s.utf8)
        var bytes: [UInt8] = []
        var i = 0
        while i < u.count {
            if u[i] == UInt8(ascii: "\\"), i + 4 <= u.count,
               let v = UInt8(String(decoding: u[i + 1..<i + 4], as: UTF8.self), radix: 8) {
                bytes.append(v)
                i += 4
            } else {
                bytes.append(u[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Checks the folder before anything is opened: it exists, is a folder, and has no mount on it.
    static func checkMountpoint(_ mountpoint: FilePath) throws -> FilePath {
        let path = LocalFileSystem().absolute(mountpoint)
        var st = stat()
        guard stat(path.string, &st) == 0 else {
            let e = errno
            if e == ENOENT || e == ENOTDIR { throw MountError.mountpointMissing(path: path.string) }
            if e == ENOTCONN, let entry = mountEntry(at: path) {
                throw MountError.alreadyMounted(path: path.string, fstype: "\(entry.fstype), whose server is gone")
            }
            throw MountError.failed(path: path.string, reason: "cannot use it as a mount folder: \(String(cString: strerror(e)))")
        }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw MountError.notADirectory(path: path.string) }
        let canonical = LocalFileSystem().canonical(path)
        if let entry = mountEntry(at: canonical) { throw MountError.alreadyMounted(path: path.string, fstype: entry.fstype) }
        return canonical
    }
}

/// Calls `body` with a NULL-terminated C argv of `strings` (valid only during the call).
func withCStrings<R>(_ strings: [String], _ body: (UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    let pointers = strings.map { strdup($0) } + [nil]
    defer { for p in pointers { free(p) } }
    var argv = pointers
    return argv.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
}

/// libfuse's messages while a mount is being set up, kept to explain a failure.
enum FuseLog {
    static let messages = Mutex<[String]>([])

    static func start() {
        messages.withLock { $0 = [] }
        fuse_set_log_func { _, format, arguments in
            guard let format, let arguments else { return }
            var buffer = [UInt8](repeating: 0, count: 1024)
            let n = buffer.withUnsafeMutableBufferPointer { b in
                b.withMemoryRebound(to: CChar.self) { vsnprintf($0.baseAddress, $0.count, format, arguments) }
            }
            let text = String(decoding: buffer.prefix(max(0, min(Int(n), buffer.count - 1))), as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            FuseLog.messages.withLock { $0.append(text) }
        }
    }

    static func take() -> String {
        messages.withLock { m in
            defer { m = [] }
            return m.joined(separator: "; ")
        }
    }
}
