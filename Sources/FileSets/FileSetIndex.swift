import Foundation
import Storage
import Targets

/// The whole content of a file set at one point: every folder, file and link under the policy's
/// paths, with what an incremental compares (size, mtime, inode-change time, inode) and which
/// point's archive holds it. `fileset<N>.index.json` in the point's folder.
public struct FileSetIndex: Codable, Sendable, Equatable {
    public var format: String = FileSetIndex.currentFormat
    public static let currentFormat = "bulwark-fileset-index/1"
    public var entries: [Entry]

    public struct Entry: Codable, Sendable, Equatable {
        /// The absolute path without its leading `/` (`etc/hosts`): the archive entry's name.
        public var path: String
        /// `file`, `folder`, `link` or `other` (devices, FIFOs: metadata only).
        public var type: String
        public var size: UInt64
        /// Nanoseconds since 1970.
        public var mtime: Int64
        public var ctime: Int64
        public var inode: UInt64
        public var device: UInt64
        /// Permission bits (with setuid, setgid, sticky), owner and group, for listings.
        public var mode: UInt32
        public var uid: UInt32
        public var gid: UInt32
        /// A symbolic link's target.
        public var target: String?
        /// The version whose archive holds this entry.
        public var holder: String
    }

    public init(entries: [Entry]) {
        self.entries = entries
    }

    /// Parses an index read from a target, refusing one whose paths could write outside a restore's
    /// folder (absolute, `..`, empty components) or that is not an index at all.
    public static func decode(_ bytes: [UInt8], path: String) throws -> FileSetIndex {
        let index: FileSetIndex
        do {
            index = try JSONDecoder().decode(FileSetIndex.self, from: Data(bytes))
        } catch {
            throw TargetError.damaged(path: path, reason: "not a file-set index (\(error))")
        }
        guard index.format == currentFormat else {
            throw TargetError.damaged(path: path, reason: "a file-set index of format \(index.format), not \(currentFormat); a newer Bulwark wrote it")
        }
        for entry in index.entries where !isSafe(entry.path) {
            throw TargetError.damaged(path: path, reason: "it lists '\(entry.path)', a path that would leave the restore folder (absolute, `..` or empty parts): refused")
        }
        return index
    }

    /// The entries at and under `path` (absolute, as backed up: `/etc` gives `etc` and everything in
    /// it; `/` gives all), nil for a path that is not absolute or has `.` or `..` parts.
    public func entries(under path: String) -> [Entry]? {
        var name = String(path.drop(while: { $0 == "/" }))
        while name.hasSuffix("/") { name.removeLast() }
        guard path.hasPrefix("/"), name.isEmpty || Self.isSafe(name) else { return nil }
        return entries.filter { name.isEmpty || $0.path == name || $0.path.hasPrefix(name + "/") }
    }

    public func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(self))
    }

    /// A relative path with no `.`, `..` or empty component and no NUL.
    public static func isSafe(_ path: String) -> Bool {
        guard !path.isEmpty, !path.hasPrefix("/"), !path.contains("\0") else { return false }
        return !path.split(separator: "/", omittingEmptySubsequences: false).contains { $0.isEmpty || $0 == "." || $0 == ".." }
    }
}
