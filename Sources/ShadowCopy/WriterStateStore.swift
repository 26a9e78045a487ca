#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SystemPackage
import Storage

/// The persisted writer states: `<state dir>/writers.json`, one record per writer id, rewritten
/// under an exclusive `flock` on `writers.json.lock` and published by rename, so a reader never sees
/// half a file. Several coordinators (and the watchdog) share it.
///
/// Reading takes no lock and writes nothing (a rename-published file is always whole), so
/// `bulwark writers list` works for a user who may read the state folder but not write it.
///
/// Blocking: call from a `BlockingPool` thread.
public struct WriterStateStore: Sendable {
    /// The default state folder, unless BULWARK_STATE_DIR says otherwise.
    public static let defaultDirectory = "/var/lib/bulwark"

    /// `explicit`, else $BULWARK_STATE_DIR, else /var/lib/bulwark.
    public static func resolveDirectory(_ explicit: String? = nil) -> String {
        if let explicit, !explicit.isEmpty { return explicit }
        if let env = ProcessInfo.processInfo.environment["BULWARK_STATE_DIR"], !env.isEmpty { return env }
        return defaultDirectory
    }

    public let directory: String
    public var path: String { FilePath(directory).appending("writers.json").string }

    public init(directory: String) { self.directory = directory }

    /// Every record, ordered by name then id. A missing file is an empty list. Read-only.
    public func load() throws -> [WriterRecord] {
        try read()
    }

    /// Applies `change` to the records and writes them back, atomically under the lock.
    public func update(_ change: (inout [String: WriterRecord]) throws -> Void) throws {
        try ensureDirectory()
        try locked {
            var map = Dictionary(try read().map { ($0.identity.id, $0) }, uniquingKeysWith: { $1 })
            try change(&map)
            try write(map.values.sorted { ($0.identity.name, $0.identity.id) < ($1.identity.name, $1.identity.id) })
        }
    }

    private func ensureDirectory() throws {
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw ShadowCopyError.stateFile(path: directory, reason: "cannot create the state folder: \(error.localizedDescription)")
        }
    }

    private func locked<T>(_ body: () throws -> T) throws -> T {
        let lockPath = path + ".lock"
        if !FileOps.exists(FilePath(directory)) { return try body() }
        let fd = open(lockPath, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Self.failure(lockPath, "cannot open the lock file to change the writer states", Errno(rawValue: errno)) }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            if errno != EINTR { throw ShadowCopyError.stateFile(path: lockPath, reason: "flock: \(Errno(rawValue: errno))") }
        }
        return try body()
    }

    private func read() throws -> [WriterRecord] {
        let data: [UInt8]
        do {
            let file = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
            defer { try? file.close() }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 64 << 10)
            while true {
                let n = try chunk.withUnsafeMutableBytes { try file.read(into: $0, retryOnInterrupt: true) }
                if n == 0 { break }
                bytes += chunk[..<n]
            }
            data = bytes
        } catch let e as Errno {
            if e == .noSuchFileOrDirectory { return [] }
            throw Self.failure(path, "cannot read the writer states", e)
        }
        if data.isEmpty { return [] }
        do {
            return try Self.decoder.decode([WriterRecord].self, from: Data(data))
        } catch {
            throw ShadowCopyError.stateFile(path: path, reason: "not a valid writer state file: \(error)")
        }
    }

    private func write(_ records: [WriterRecord]) throws {
        let data = try Self.encoder.encode(records)
        let temp = path + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: temp, contents: data) else {
            throw ShadowCopyError.stateFile(path: temp, reason: "cannot write")
        }
        do {
            let f = try BlockFile.open(FilePath(temp), writable: false)
            try f.flush()
            try f.close()
            try FileOps.rename(FilePath(temp), to: FilePath(path))
        } catch {
            try? FileOps.remove(FilePath(temp))
            throw ShadowCopyError.stateFile(path: path, reason: "\(error)")
        }
    }

    /// A state file error that says what to do about a permission problem.
    static func failure(_ path: String, _ what: String, _ e: Errno) -> ShadowCopyError {
        let hint = e == .permissionDenied || e == .notPermitted || e == .readOnlyFileSystem
            ? "; the writer states belong to the user who takes snapshots (root, usually): run as that user, or use a state folder you may \(what.hasPrefix("cannot read") ? "read" : "write")"
            : ""
        return .stateFile(path: path, reason: "\(what): \(e) (errno \(e.rawValue))\(hint)")
    }

    static var encoder: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        e.dateEncodingStrategy = .iso8601
        return e
    }

    static var decoder: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}
