#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemPackage

/// The local filesystem as a `StoreSpace`: files and block devices opened as `BlockFile`s, publish by
/// rename (temporary name, fsync, rename, fsync of the folder).
public struct LocalFileSystem: StoreSpace {
    public init() {}
    public var name: String { "local" }

    public func open(_ path: FilePath, writable: Bool) throws -> any ByteStore {
        try BlockFile.open(path, writable: writable)
    }

    public func create(_ path: FilePath) throws -> any ByteStore { try BlockFile.create(path) }

    public func kind(of path: FilePath) -> StoreObjectKind? {
        var st = stat()
        guard stat(path.string, &st) == 0 else { return nil }
        switch st.st_mode & S_IFMT {
        case S_IFREG: return .file
        case S_IFBLK: return .blockDevice
        case S_IFDIR: return .directory
        default: return .other
        }
    }

    public func remove(_ path: FilePath) throws { try FileOps.remove(path) }

    public func rename(_ from: FilePath, to: FilePath) throws {
        guard !FileOps.exists(to) else { throw StorageError.exists(path: to.string) }
        try FileOps.rename(from, to: to)
    }

    public func contents(of folder: FilePath) throws -> [String] { try FileOps.contents(of: folder) }
    public func makeFolder(_ path: FilePath) throws { try FileOps.makeFolder(path) }
    public func removeFolder(_ path: FilePath) throws {
        if rmdir(path.string) != 0, errno != ENOENT {
            throw StorageError.io(path: path.string, operation: "remove folder", errno: Errno(rawValue: errno))
        }
    }
    public func syncFolder(of path: FilePath) throws { try FileOps.syncDirectory(of: path) }
    public func absolute(_ path: FilePath) -> FilePath { FileOps.absolute(path) }
    public func canonical(_ path: FilePath) -> FilePath { FileOps.canonical(path) }
    public func availableSpace(at path: FilePath) throws -> UInt64? { try Self.available(at: path) }

    /// A word for the kind of a `stat` mode, for messages.
    static func kindName(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFIFO: return "FIFO (named pipe)"
        case S_IFSOCK: return "socket"
        case S_IFCHR: return "character device"
        case S_IFDIR: return "folder"
        case S_IFLNK: return "symbolic link"
        default: return "special file"
        }
    }

    /// Bytes available to unprivileged writers on the filesystem holding `path` (or its directory).
    public static func available(at path: FilePath) throws -> UInt64 {
        // Walk up to the nearest existing folder: the file itself may not exist yet.
        var st = statvfs()
        var probe = path
        while statvfs(probe.string, &st) != 0 {
            let e = Errno(rawValue: errno)
            guard e == .noSuchFileOrDirectory, !probe.removingLastComponent().isEmpty, probe.removingLastComponent() != probe else {
                throw StorageError.io(path: path.string, operation: "statvfs", errno: e)
            }
            probe = probe.removingLastComponent()
        }
        return UInt64(st.f_bavail) * UInt64(st.f_frsize)
    }
}

/// Whole-file helpers used by operations that publish a file atomically.
public enum FileOps {
    /// Renames `from` to `to` atomically and flushes the directory so the rename is durable.
    public static func rename(_ from: FilePath, to: FilePath) throws {
        guard Glibc.rename(from.string, to.string) == 0 else {
            throw StorageError.io(path: from.string, operation: "rename to \(to.string)", errno: Errno(rawValue: errno))
        }
        try syncDirectory(of: to)
    }

    /// Removes a file; a missing file is not an error.
    public static func remove(_ path: FilePath) throws {
        if unlink(path.string) != 0, errno != ENOENT {
            throw StorageError.io(path: path.string, operation: "unlink", errno: Errno(rawValue: errno))
        }
    }

    /// Creates a folder and any missing folders above it (mode 0755), making each new one durable in
    /// its parent; an existing folder is not an error.
    public static func makeFolder(_ path: FilePath) throws {
        var st = stat()
        if stat(path.string, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFDIR else { throw StorageError.unsupported(path: path.string, reason: "exists and is not a folder; move it away or choose another path") }
            return
        }
        let parent = path.removingLastComponent()
        if !parent.isEmpty, parent != path { try makeFolder(parent) }
        if mkdir(path.string, 0o755) != 0, errno != EEXIST {
            let e = Errno(rawValue: errno)
            if e == .noSpace { throw StorageError.insufficientSpace(path: path.string, needed: 4096, available: 0) }
            throw StorageError.io(path: path.string, operation: "create folder", errno: e)
        }
        try syncDirectory(of: path)
    }

    /// Gives the file at `existing` a second name `path` (a hard link; `path` must not exist) and
    /// makes it durable: a file that must stay reachable under its old name while it gains a new one.
    public static func link(_ existing: FilePath, as path: FilePath) throws {
        guard Glibc.link(existing.string, path.string) == 0 else {
            let e = Errno(rawValue: errno)
            if e == .fileExists { throw StorageError.exists(path: path.string) }
            throw StorageError.io(path: existing.string, operation: "link as \(path.string)", errno: e)
        }
        try syncDirectory(of: path)
    }

    /// Whether two paths name the same file (same device and inode).
    public static func sameFile(_ a: FilePath, _ b: FilePath) -> Bool {
        var sa = stat(), sb = stat()
        guard stat(a.string, &sa) == 0, stat(b.string, &sb) == 0 else { return false }
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
    }

    /// Whether a file (or anything) exists at `path`.
    public static func exists(_ path: FilePath) -> Bool {
        var st = stat()
        return stat(path.string, &st) == 0
    }

    /// fsyncs the directory holding `path`, making a create, rename or unlink in it durable.
    public static func syncDirectory(of path: FilePath) throws {
        var dir = path.removingLastComponent()
        if dir.isEmpty { dir = "." }
        let fd = Glibc.open(dir.string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw StorageError.io(path: dir.string, operation: "open directory", errno: Errno(rawValue: errno)) }
        defer { Glibc.close(fd) }
        // An error here means the rename or create may not survive a crash: report it.
        guard fsync(fd) == 0 else {
            throw StorageError.io(path: dir.string, operation: "fsync of the folder", errno: Errno(rawValue: errno))
        }
    }

    /// The names in a folder, without `.` and `..`, sorted.
    public static func contents(of folder: FilePath) throws -> [String] {
        guard let dir = opendir(folder.string) else {
            let e = Errno(rawValue: errno)
            if e == .noSuchFileOrDirectory { throw StorageError.notFound(path: folder.string) }
            throw StorageError.io(path: folder.string, operation: "open folder", errno: e)
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Reads a small file (a record, a /proc table) whole, as UTF-8.
    public static func readSmallFile(_ path: FilePath, limit: Int = 16 << 20) throws -> String {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(path, .readOnly, options: [.closeOnExec]) } catch let e as Errno {
            if e == .noSuchFileOrDirectory { throw StorageError.notFound(path: path.string) }
            throw StorageError.io(path: path.string, operation: "open", errno: e)
        }
        defer { try? fd.close() }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while bytes.count < limit {
            let n: Int
            do { n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) } } catch let e as Errno {
                throw StorageError.io(path: path.string, operation: "read", errno: e)
            }
            if n == 0 { break }
            bytes += chunk[..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The canonical absolute path of an existing file (symlinks resolved).
    public static func canonical(_ path: FilePath) -> FilePath {
        guard let p = realpath(path.string, nil) else { return absolute(path) }
        defer { free(p) }
        return FilePath(platformString: p)
    }

    /// `path` made absolute against the current directory, without touching the filesystem.
    public static func absolute(_ path: FilePath) -> FilePath {
        if path.isAbsolute { return path.lexicallyNormalized() }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return path }
        return FilePath(platformString: buffer).pushing(path).lexicallyNormalized()
    }
}
