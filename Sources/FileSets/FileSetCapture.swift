import CArchive
import Foundation
import Storage
import SystemPackage
import Targets
#if canImport(Glibc)
import Glibc
#endif

/// Captures one file set of a point: walks the policy's paths (never following symbolic links, so
/// nothing outside them is read), and writes into a pax archive compressed with zstd, straight into
/// the target's space, every folder and link and every regular file that is new or changed since the
/// previous set (size, mtime, inode-change time, inode or device differ), with owner, group, mode,
/// times, xattrs and ACLs (libarchive's disk reader). Unchanged files are listed in the new index
/// with the version that already holds them. The archive appears under its name only when complete
/// (`.NAME.partial-PID`, flush, rename); the index is published after it.
///
/// Files are read as they are while the job runs (no snapshot under a file set): a file that changes
/// while it is read is stored as read, padded or cut to the size it had when listed.
public struct FileSetCapture {
    public struct Result: Sendable, Equatable {
        public var entries: Int
        public var bytes: UInt64
        public var storedEntries: Int
        public var storedBytes: UInt64
        public var archiveSize: UInt64
        public var archiveSHA256: String
        public var indexSize: UInt64
        public var indexSHA256: String
        public var references: [String]
        /// Paths that vanished while the set was walked (left out).
        public var vanished: [String]
    }

    /// Absolute paths of folders or files.
    public var paths: [String]
    /// The version being made: the holder of what this archive stores.
    public var version: String
    /// The previous set's index (nil: a full).
    public var previous: FileSetIndex?
    public var target: any BackupTarget
    /// The archive and the index, in the target's space.
    public var archive: FilePath
    public var index: FilePath
    public var progress: ProgressReporter?

    public init(paths: [String], version: String, previous: FileSetIndex?, target: any BackupTarget, archive: FilePath, index: FilePath,
                progress: ProgressReporter? = nil) {
        self.paths = paths
        self.version = version
        self.previous = previous
        self.target = target
        self.archive = archive
        self.index = index
        self.progress = progress
    }

    struct Found {
        var path: String
        var stat: stat
    }

    public func run() throws -> Result {
        var found: [Found] = []
        var vanished: [String] = []
        for root in paths { try walk(root, into: &found, vanished: &vanished) }
        let before = Dictionary((previous?.entries ?? []).map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        let space = target.space
        let partial = archive.removingLastComponent().appending(".\(archive.lastComponent?.string ?? "archive").partial-\(ProcessState.currentPID)")
        try? space.remove(partial)
        let store = try space.create(partial)
        var entries: [FileSetIndex.Entry] = []
        var storedEntries = 0, total: UInt64 = 0, stored: UInt64 = 0
        let sink = ArchiveSink(store: store, path: archive.string)
        do {
            guard let writer = archive_write_new() else { throw StorageError.unsupported(path: archive.string, reason: "libarchive could not start a writer") }
            defer { archive_write_free(writer) }
            archive_write_set_format_pax(writer)
            archive_write_add_filter_zstd(writer)
            archive_write_set_bytes_in_last_block(writer, 1)
            func fail(_ what: String) -> any Error {
                sink.failure ?? StorageError.unsupported(path: archive.string, reason: "writing the archive failed (\(what)): \(archiveMessage(writer))")
            }
            guard sink.open(writer) == ARCHIVE_OK else { throw fail("open") }
            guard let disk = archive_read_disk_new() else { throw StorageError.unsupported(path: archive.string, reason: "libarchive could not start a disk reader") }
            defer { archive_read_free(disk) }
            archive_read_disk_set_standard_lookup(disk)
            let totalBytes = found.reduce(UInt64(0)) { $0 + ($1.stat.st_mode & S_IFMT == S_IFREG ? UInt64($1.stat.st_size) : 0) }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
            defer { buffer.deallocate() }
            var done: UInt64 = 0
            for item in found {
                try progress?.checkCancelled()
                var st = item.stat
                let name = String(item.path.drop(while: { $0 == "/" }))
                let mode = st.st_mode & S_IFMT
                let type = mode == S_IFREG ? "file" : mode == S_IFDIR ? "folder" : mode == S_IFLNK ? "link" : "other"
                var entry = FileSetIndex.Entry(path: name, type: type, size: mode == S_IFREG ? UInt64(st.st_size) : 0,
                                               mtime: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec),
                                               ctime: Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec),
                                               inode: UInt64(st.st_ino), device: UInt64(st.st_dev), mode: UInt32(st.st_mode & 0o7777),
                                               uid: st.st_uid, gid: st.st_gid,
                                               target: mode == S_IFLNK ? try? FileManager.default.destinationOfSymbolicLink(atPath: item.path) : nil,
                                               holder: version)
                total += entry.size
                if type == "file", let old = before[name], old.type == "file", old.size == entry.size, old.mtime == entry.mtime,
                   old.ctime == entry.ctime, old.inode == entry.inode, old.device == entry.device {
                    entry.holder = old.holder
                    entries.append(entry)
                    done += entry.size
                    continue
                }
                var fd: Int32 = -1
                if mode == S_IFREG {
                    fd = open(item.path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | 0o1000000)  // O_NOATIME
                    if fd < 0, errno == EPERM { fd = open(item.path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) }
                    if fd < 0 {
                        if errno == ENOENT { vanished.append(item.path); continue }
                        throw StorageError.io(path: item.path, operation: "open", errno: Errno(rawValue: errno))
                    }
                }
                defer { if fd >= 0 { close(fd) } }
                let e = archive_entry_new()
                defer { archive_entry_free(e) }
                archive_entry_copy_sourcepath(e, item.path)
                archive_entry_copy_pathname(e, name)
                guard archive_read_disk_entry_from_file(disk, e, fd, &st) == ARCHIVE_OK else {
                    throw StorageError.unsupported(path: item.path, reason: "its metadata cannot be read: \(archiveMessage(disk))")
                }
                archive_entry_copy_pathname(e, name)
                guard archive_write_header(writer, e) >= ARCHIVE_WARN else { throw fail("header of \(item.path)") }
                if fd >= 0 {
                    var remaining = entry.size
                    while remaining > 0 {
                        let n = read(fd, buffer.baseAddress, Int(min(UInt64(buffer.count), remaining)))
                        if n < 0 { throw StorageError.io(path: item.path, operation: "read", errno: Errno(rawValue: errno)) }
                        if n == 0 { break }  // it shrank while read: libarchive pads the entry
                        var offset = 0
                        while offset < n {
                            let w = archive_write_data(writer, buffer.baseAddress! + offset, n - offset)
                            guard w > 0 else { throw fail("data of \(item.path)") }
                            offset += w
                        }
                        remaining -= UInt64(n)
                        done += UInt64(n)
                        progress?.report(done, of: totalBytes)
                    }
                    stored += entry.size
                }
                guard archive_write_finish_entry(writer) >= ARCHIVE_WARN else { throw fail("entry \(item.path)") }
                storedEntries += 1
                entries.append(entry)
            }
            guard archive_write_close(writer) == ARCHIVE_OK else { throw fail("close") }
            try store.flush()
            try store.close()
            try space.rename(partial, to: archive)
            try space.syncFolder(of: archive)
        } catch {
            try? store.close()
            try? space.remove(partial)
            throw error
        }
        let indexBytes = try FileSetIndex(entries: entries).encoded()
        try target.publish(indexBytes, at: index)
        let references = Set(entries.map(\.holder)).sorted()
        return Result(entries: entries.count, bytes: total, storedEntries: storedEntries, storedBytes: stored, archiveSize: sink.offset,
                      archiveSHA256: sink.hasher.finish(), indexSize: UInt64(indexBytes.count), indexSHA256: Digest.sha256(indexBytes),
                      references: references, vanished: vanished)
    }

    /// Lists `path` and, for a folder, everything under it (sorted, folders before their content),
    /// without following symbolic links.
    func walk(_ path: String, into found: inout [Found], vanished: inout [String]) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            // A path under a root that went away meanwhile is left out; a root the policy names must exist.
            if errno == ENOENT, !paths.contains(path) { vanished.append(path); return }
            if errno == ENOENT { throw StorageError.notFound(path: path) }
            throw StorageError.io(path: path, operation: "lstat", errno: Errno(rawValue: errno))
        }
        found.append(Found(path: path, stat: st))
        guard st.st_mode & S_IFMT == S_IFDIR else { return }
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: path).sorted()
        } catch {
            if !FileManager.default.fileExists(atPath: path) { vanished.append(path); return }
            throw StorageError.io(path: path, operation: "opendir", errno: Errno(rawValue: EACCES))
        }
        for name in names { try walk(path == "/" ? "/" + name : path + "/" + name, into: &found, vanished: &vanished) }
    }
}
