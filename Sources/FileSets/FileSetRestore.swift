import CArchive
import Foundation
import Storage
import SystemPackage
import Targets
#if canImport(Glibc)
import Glibc
#endif

public struct FileSetRestoreOptions: Sendable {
    public var machine: String
    public var version: String
    /// Which file set of the point (0 for the first `files:` source).
    public var set: Int
    /// Absolute paths as they were backed up (`/etc/hosts`, `/srv/www`): each file or whole tree.
    public var paths: [String]
    /// A new or empty folder: each path comes back as `destination/<path>`.
    public var destination: FilePath
    public var progress: ProgressReporter?

    public init(machine: String, version: String, set: Int = 0, paths: [String], destination: FilePath, progress: ProgressReporter? = nil) {
        self.machine = machine
        self.version = version
        self.set = set
        self.paths = paths
        self.destination = destination
        self.progress = progress
    }
}

public struct FileSetRestoreResult: Codable, Sendable, Equatable {
    public var machine: String
    public var version: String
    public var set: Int
    public var destination: String
    /// Entries restored (files, folders, links) and the bytes of the files.
    public var entries: Int
    public var bytes: UInt64
    /// The points whose archives were read.
    public var archives: [String]
    public var seconds: Double
}

/// Why a file-set restore was refused.
public enum FileSetError: Error, CustomStringConvertible, Equatable, Sendable {
    case noFileSet(machine: String, version: String, set: Int, sets: Int)
    case pathNotFound(path: String, version: String, set: Int)
    case badPath(String)
    case destinationNotEmpty(String)

    public var description: String {
        switch self {
        case let .noFileSet(machine, version, set, sets):
            return sets == 0 ? "\(machine)/\(version) holds no file set (a point of disks: restore its files with --disk and --volume)"
                : "\(machine)/\(version) has no file set \(set) (it has \(sets): 0...\(sets - 1))"
        case let .pathNotFound(path, version, set):
            return "\(path) is not in file set \(set) of \(version); `bulwark files list` shows what the point holds"
        case let .badPath(path):
            return "--path \(path): give an absolute path without `.` or `..` parts, as it was backed up"
        case let .destinationNotEmpty(path):
            return "\(path) is not empty; restore into a new or empty folder"
        }
    }
}

/// Restores paths of a file set from a point: reads the point's index (checked against the
/// manifest), then each archive that holds a wanted entry (the point's own and those of earlier
/// points it refers to), straight from the target, extracting only the wanted entries under the
/// destination with owner, mode, times, xattrs and ACLs (libarchive's disk writer). Every entry name
/// of every archive read is checked: an absolute path, a `..`, a hard link or anything that is not
/// a plain relative name refuses the restore at once (a crafted archive), and the disk writer never
/// writes through a symbolic link. Each archive's SHA-256 is checked as it is read.
public enum FileSetRestore {
    public static func run(target: any BackupTarget, options: FileSetRestoreOptions) throws -> FileSetRestoreResult {
        let started = Date()
        let points = RecoveryPoints(target: target, machine: options.machine)
        let manifest = try points.manifest(options.version)
        let sets = manifest.fileSets ?? []
        guard let set = sets.first(where: { $0.index == options.set }) else {
            throw FileSetError.noFileSet(machine: options.machine, version: options.version, set: options.set, sets: sets.count)
        }
        let index = try loadIndex(points: points, version: options.version, set: set)

        // What to restore, by holder.
        var wanted: [String: Set<String>] = [:]
        var count = 0, bytes: UInt64 = 0
        for path in options.paths {
            guard let hits = index.entries(under: path) else { throw FileSetError.badPath(path) }
            guard !hits.isEmpty else { throw FileSetError.pathNotFound(path: path, version: options.version, set: options.set) }
            for hit in hits where wanted[hit.holder, default: []].insert(hit.path).inserted {
                count += 1
                bytes += hit.size
            }
        }

        let destination = try prepare(options.destination)
        guard let disk = archive_write_disk_new() else { throw StorageError.unsupported(path: destination, reason: "libarchive could not start a disk writer") }
        defer { archive_write_free(disk) }
        let flags = ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_ACL | ARCHIVE_EXTRACT_XATTR
            | ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT
        archive_write_disk_set_options(disk, flags)
        archive_write_disk_set_standard_lookup(disk)
        var done: UInt64 = 0
        // Older archives first; the point's own (folders, links, changed files) last.
        for holder in wanted.keys.sorted() {
            try options.progress?.checkCancelled()
            let source = holder == options.version ? set : try points.manifest(holder).fileSets?.first(where: { $0.index == options.set })
            guard let source else {
                throw TargetError.damaged(path: points.pointFolder(holder).string, reason: "file set \(options.set) of \(options.version) has files in \(holder), which has no such file set")
            }
            var remaining = wanted[holder] ?? []
            try extract(from: points.pointFolder(holder).appending(source.archive), in: target.space, sha256: source.archiveSHA256,
                        wanted: &remaining, into: destination, disk: disk) { n in
                done += n
                options.progress?.report(done, of: bytes)
            }
            guard remaining.isEmpty else {
                throw TargetError.damaged(path: points.pointFolder(holder).appending(source.archive).string,
                                          reason: "the index says it holds \(remaining.sorted().prefix(3).joined(separator: ", ")), and it does not")
            }
        }
        guard archive_write_close(disk) == ARCHIVE_OK else {
            throw StorageError.unsupported(path: destination, reason: "finishing the restore (folder times and modes) failed: \(archiveMessage(disk))")
        }
        // Folder times last, deepest first: writing into a folder (from any archive) moves its mtime.
        let restored = Set(wanted.values.flatMap { $0 })
        let folders = index.entries.filter { $0.type == "folder" && restored.contains($0.path) }
        for folder in folders.sorted(by: { $0.path.count > $1.path.count }) { setTimes(destination, folder.path, mtime: folder.mtime) }
        return FileSetRestoreResult(machine: options.machine, version: options.version, set: options.set, destination: destination,
                                    entries: count, bytes: bytes, archives: wanted.keys.sorted(), seconds: Date().timeIntervalSince(started))
    }

    /// The index of a point's file set, checked against the manifest's size and SHA-256.
    public static func loadIndex(points: RecoveryPoints, version: String, set: ManifestFileSet) throws -> FileSetIndex {
        let path = points.pointFolder(version).appending(set.indexFile)
        let bytes = try points.target.read(path, limit: Int(max(set.indexSize, 1)))
        guard UInt64(bytes.count) == set.indexSize, Digest.sha256(bytes) == set.indexSHA256 else {
            throw TargetError.damaged(path: path.string, reason: "the index is not the one the manifest names (size or SHA-256 differ); run `bulwark verify`")
        }
        return try FileSetIndex.decode(bytes, path: path.string)
    }

    /// The destination made (or found empty), as a real path (the disk writer refuses to write
    /// through symbolic links, those above the destination included).
    static func prepare(_ folder: FilePath) throws -> String {
        let path = FileOps.absolute(folder).string
        if FileManager.default.fileExists(atPath: path) {
            guard (try FileManager.default.contentsOfDirectory(atPath: path)).isEmpty else { throw FileSetError.destinationNotEmpty(path) }
        } else {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        guard let real = realpath(path, nil) else { throw StorageError.io(path: path, operation: "realpath", errno: Errno(rawValue: errno)) }
        defer { free(real) }
        return String(cString: real)
    }

    /// Reads one archive from the target, extracting the entries named in `wanted` (removed as they
    /// come) under `destination`, refusing any entry whose name or link could leave it.
    static func extract(from path: FilePath, in space: any StoreSpace, sha256: String, wanted: inout Set<String>, into destination: String,
                        disk: OpaquePointer, progress: (UInt64) -> Void) throws {
        let store = try space.open(path, writable: false)
        defer { try? store.close() }
        let source = try ArchiveSource(store: store)
        guard let reader = archive_read_new() else { throw StorageError.unsupported(path: path.string, reason: "libarchive could not start a reader") }
        defer { archive_read_free(reader) }
        archive_read_support_filter_all(reader)
        archive_read_support_format_tar(reader)
        func damaged(_ what: String) -> any Error {
            source.failure ?? TargetError.damaged(path: path.string, reason: "\(what): \(archiveMessage(reader))")
        }
        guard source.open(reader) == ARCHIVE_OK else { throw damaged("not a readable archive") }
        var entry: OpaquePointer?
        while true {
            let r = archive_read_next_header(reader, &entry)
            if r == ARCHIVE_EOF { break }
            guard r >= ARCHIVE_WARN, let entry else { throw damaged("the archive is damaged or truncated") }
            var name = archive_entry_pathname(entry).map { String(cString: $0) } ?? ""
            // pax writes a folder's name with a trailing slash.
            if archive_entry_filetype(entry) == 0o040000, name.hasSuffix("/") { name.removeLast() }
            guard FileSetIndex.isSafe(name) else {
                throw TargetError.damaged(path: path.string, reason: "it holds an entry named '\(name)', which would be written outside the restore folder: a crafted archive, refused")
            }
            guard archive_entry_hardlink(entry) == nil else {
                throw TargetError.damaged(path: path.string, reason: "it holds a hard link '\(name)', which Bulwark never writes: a crafted archive, refused")
            }
            guard wanted.remove(name) != nil else {
                guard archive_read_data_skip(reader) == ARCHIVE_OK else { throw damaged("skipping \(name)") }
                continue
            }
            archive_entry_copy_pathname(entry, destination + "/" + name)
            guard archive_write_header(disk, entry) >= ARCHIVE_WARN else {
                throw StorageError.unsupported(path: destination + "/" + name, reason: "it cannot be restored: \(archiveMessage(disk))")
            }
            var block: UnsafeRawPointer?
            var size = 0
            var offset: la_int64_t = 0
            while true {
                let d = archive_read_data_block(reader, &block, &size, &offset)
                if d == ARCHIVE_EOF { break }
                guard d >= ARCHIVE_WARN else { throw damaged("reading \(name)") }
                guard archive_write_data_block(disk, block, size, offset) >= ARCHIVE_WARN else {
                    throw StorageError.unsupported(path: destination + "/" + name, reason: "writing it failed: \(archiveMessage(disk))")
                }
                progress(UInt64(size))
            }
            guard archive_write_finish_entry(disk) >= ARCHIVE_WARN else {
                throw StorageError.unsupported(path: destination + "/" + name, reason: "finishing it failed: \(archiveMessage(disk))")
            }
        }
        try source.drain()
        let digest = source.hasher.finish()
        guard digest == sha256 else {
            throw TargetError.damaged(path: path.string, reason: "the archive has SHA-256 \(digest), the manifest says \(sha256): what was restored from it may be wrong; run `bulwark verify`")
        }
    }
}

extension FileSetRestore {
    /// Sets a restored folder's access and modification times, opening each component with
    /// O_NOFOLLOW so a link planted in the restored tree is never followed. Best effort.
    static func setTimes(_ root: String, _ path: String, mtime: Int64) {
        var fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        for part in path.split(separator: "/") {
            let next = openat(fd, String(part), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            close(fd)
            guard next >= 0 else { return }
            fd = next
        }
        let t = timespec(tv_sec: Int(mtime / 1_000_000_000), tv_nsec: Int(mtime % 1_000_000_000))
        var times = (t, t)
        withUnsafePointer(to: &times) { $0.withMemoryRebound(to: timespec.self, capacity: 2) { _ = futimens(fd, $0) } }
        close(fd)
    }
}
