import CArchive
import Foundation
import Storage
import SystemPackage
import Targets
#if canImport(Glibc)
import Glibc
#endif

/// The header of a seed file (`bulwark-seed.json`, the archive's first entry).
///
/// A seed is a POSIX pax archive (`tar -tf` lists it) holding, after the header, for each point
/// oldest first (parents before children): `MACHINE/VERSION/MANIFEST` (the manifest revision readers
/// use, named as on the target: `manifest.json` or `manifest.rN.json`), then each image the manifest
/// names as `MACHINE/VERSION/IMAGE`, byte for byte as on the source target.
public struct SeedHeader: Codable, Sendable, Equatable {
    public var format: String = SeedHeader.currentFormat
    public static let currentFormat = "bulwark-seed/1"
    public static let entryName = "bulwark-seed.json"
    public var machine: String
    /// The points the seed holds, oldest (the full) first.
    public var versions: [String]
    /// The source target's location (never credentials).
    public var source: String
    /// When the seed was written (ISO 8601, UTC).
    public var created: String
    public var creator: String
    /// The images' bytes, all points together (for progress).
    public var imageBytes: UInt64?

    public init(machine: String, versions: [String], source: String, created: String, creator: String, imageBytes: UInt64?) {
        self.imageBytes = imageBytes
        self.machine = machine
        self.versions = versions
        self.source = source
        self.created = created
        self.creator = creator
    }
}

/// The file name a manifest revision has in a point's folder.
func manifestFileName(_ manifest: PointManifest) -> String {
    manifest.revision <= 1 ? "manifest.json" : "manifest.r\(manifest.revision).json"
}

/// Whether `name` is a plain file name (no separator, not `.`/`..`, not hidden, no NUL).
func isPlainName(_ name: String) -> Bool {
    !name.isEmpty && !name.hasPrefix(".") && !name.contains("/") && !name.contains("\0") && !name.contains("\\")
}

/// A libarchive writer over an open file descriptor (pax format).
final class SeedArchiveWriter {
    private let archive: OpaquePointer
    let path: String

    init(fd: Int32, path: String) throws {
        self.path = path
        guard let a = archive_write_new() else { throw StorageError.unsupported(path: path, reason: "libarchive could not start a writer") }
        archive = a
        archive_write_set_format_pax_restricted(a)
        archive_write_set_bytes_in_last_block(a, 1)
        guard archive_write_open_fd(a, fd) == ARCHIVE_OK else { throw failure("open") }
    }

    deinit { archive_write_free(archive) }

    func failure(_ what: String) -> Error {
        let message = archive_error_string(archive).map { String(cString: $0) } ?? "unknown libarchive error"
        return StorageError.unsupported(path: path, reason: "writing the seed failed (\(what)): \(message)")
    }

    func begin(_ name: String, size: UInt64, mtime: Date) throws {
        let entry = archive_entry_new()
        defer { archive_entry_free(entry) }
        archive_entry_set_pathname(entry, name)
        archive_entry_set_size(entry, la_int64_t(size))
        archive_entry_set_filetype(entry, 0o100000)
        archive_entry_set_perm(entry, 0o644)
        archive_entry_set_mtime(entry, time_t(mtime.timeIntervalSince1970), 0)
        guard archive_write_header(archive, entry) == ARCHIVE_OK else { throw failure("header of \(name)") }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let n = archive_write_data(archive, bytes.baseAddress! + offset, bytes.count - offset)
            guard n > 0 else { throw failure("data") }
            offset += n
        }
    }

    func finishEntry() throws {
        guard archive_write_finish_entry(archive) == ARCHIVE_OK else { throw failure("entry") }
    }

    func close() throws {
        guard archive_write_close(archive) == ARCHIVE_OK else { throw failure("close") }
    }
}

/// A libarchive reader of a seed file (tar formats only, no filters).
final class SeedArchiveReader {
    private let archive: OpaquePointer
    let path: String

    init(path: String) throws {
        self.path = path
        guard let a = archive_read_new() else { throw StorageError.unsupported(path: path, reason: "libarchive could not start a reader") }
        archive = a
        archive_read_support_format_tar(a)
        guard archive_read_open_filename(a, path, 1 << 20) == ARCHIVE_OK else {
            let message = archive_error_string(a).map { String(cString: $0) } ?? "cannot open"
            if access(path, F_OK) != 0 { throw StorageError.notFound(path: path) }
            throw TargetError.damaged(path: path, reason: "not a seed archive: \(message)")
        }
    }

    deinit { archive_read_free(archive) }

    var message: String { archive_error_string(archive).map { String(cString: $0) } ?? "unknown error" }

    /// The next entry: its name, size and whether it is a regular file; nil at the end.
    func next() throws -> (name: String, size: UInt64, regular: Bool)? {
        var entry: OpaquePointer?
        let r = archive_read_next_header(archive, &entry)
        if r == ARCHIVE_EOF { return nil }
        guard r == ARCHIVE_OK || r == ARCHIVE_WARN, let entry else {
            throw TargetError.damaged(path: path, reason: "the seed is damaged or truncated: \(message)")
        }
        let name = archive_entry_pathname(entry).map { String(cString: $0) } ?? ""
        let size = archive_entry_size_is_set(entry) != 0 ? UInt64(max(0, archive_entry_size(entry))) : 0
        return (name, size, archive_entry_filetype(entry) == 0o100000)
    }

    /// Reads up to `buffer.count` bytes of the current entry; 0 at its end.
    func read(into buffer: UnsafeMutableRawBufferPointer, context: String) throws -> Int {
        let n = archive_read_data(archive, buffer.baseAddress, buffer.count)
        guard n >= 0 else { throw TargetError.damaged(path: path, reason: "\(context): the seed is damaged or truncated: \(message)") }
        return n
    }

    /// The whole current entry (small entries: the header and manifests).
    func readAll(limit: Int, context: String) throws -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = try buffer.withUnsafeMutableBytes { try read(into: $0, context: context) }
            if n == 0 { return out }
            out += buffer[..<n]
            guard out.count <= limit else { throw TargetError.damaged(path: path, reason: "\(context): the entry is larger than \(limit) bytes") }
        }
    }

    func skip() throws {
        guard archive_read_data_skip(archive) == ARCHIVE_OK else {
            throw TargetError.damaged(path: path, reason: "the seed is damaged or truncated: \(message)")
        }
    }
}
