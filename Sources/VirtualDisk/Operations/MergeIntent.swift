import Foundation
import SystemPackage
import Storage

/// The record a merge writes (and fsyncs) beside the child before it touches the ancestor, and removes
/// last. While it exists the merge is pending: re-running `merge` on the child finishes it, and
/// `check` reports it.
public struct MergeIntent: Codable, Sendable, Equatable {
    public var version: Int
    /// The image being merged (the chain leaf named on the command line), absolute.
    public var child: String
    /// The levels folded into the ancestor, child first, up to the ancestor's direct child; absolute.
    public var levels: [String]
    /// The image receiving the data, absolute.
    public var ancestor: String
    /// Identities of `levels` (same order) when the merge started; they never change during it.
    public var levelIdentities: [String]
    /// The ancestor's identity when the merge started (writing may change it, e.g. a VHDX DataWriteGuid).
    public var ancestorIdentity: String
    /// Other images whose parent was the child, to re-point to the ancestor.
    public var childrenToRepoint: [String]
    /// When the merge started (ISO 8601).
    public var started: String
    /// The process running the merge (rewritten by a run that resumes it), so that a writer or reader
    /// refused meanwhile can say whether the merge is running or was interrupted. Absent in records
    /// of older versions.
    public var pid: Int32?

    public init(child: String, levels: [String], ancestor: String, levelIdentities: [String], ancestorIdentity: String,
                childrenToRepoint: [String], started: String) {
        self.version = 1
        self.child = child
        self.levels = levels
        self.ancestor = ancestor
        self.levelIdentities = levelIdentities
        self.ancestorIdentity = ancestorIdentity
        self.childrenToRepoint = childrenToRepoint
        self.started = started
        self.pid = getpid()
    }

    /// Whether the process that wrote the record is still running (the merge is in progress rather
    /// than interrupted).
    public var isRunning: Bool { pid.map(ProcessState.isRunning) ?? false }

    /// Where the record for merging `child` lives: `CHILD.merge.json` beside it.
    public static func recordPath(for child: FilePath) -> FilePath {
        let abs = FileOps.absolute(child)
        return abs.removingLastComponent().appending((abs.lastComponent?.string ?? "disk") + ".merge.json")
    }

    /// The record for `child`, or nil when no merge of it is pending.
    public static func load(for child: FilePath) throws -> MergeIntent? {
        let path = recordPath(for: child)
        guard FileOps.exists(path) else { return nil }
        return try load(path)
    }

    /// Reads a record store.
    public static func load(_ path: FilePath) throws -> MergeIntent {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path.string)) } catch {
            throw StorageError.io(path: path.string, operation: "read merge record", errno: .ioError)
        }
        return try decode([UInt8](data), path: path)
    }

    /// Decodes a record's bytes (read from `path`).
    static func decode(_ bytes: [UInt8], path: FilePath) throws -> MergeIntent {
        do { return try JSONDecoder().decode(MergeIntent.self, from: Data(bytes)) } catch {
            throw DiskError.corrupt(path: path.string, reason: "the merge record is not valid JSON (\(error)); it was written by an interrupted merge")
        }
    }

    /// Writes the record durably: a temporary store, fsync, rename, directory fsync. Any failure
    /// (the folder's fsync included: without it the rename may not survive a crash) is thrown and
    /// leaves no record, so the merge stops before any data moves.
    public func write(for child: FilePath) throws {
        let path = Self.recordPath(for: child)
        let temp = Self.temporaryPath(for: path, pid: getpid())
        var renamed = false
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let bytes = [UInt8](try encoder.encode(self))
        try? FileOps.remove(temp)
        let store = try BlockFile.create(temp)
        do {
            try store.write(bytes, at: 0)
            try store.flush()
            try store.close()
            guard rename(temp.string, path.string) == 0 else {
                throw StorageError.io(path: temp.string, operation: "rename to \(path.string)", errno: Errno(rawValue: errno))
            }
            renamed = true
            try FileOps.syncDirectory(of: path)
        } catch {
            try? store.close()
            try? FileOps.remove(temp)
            // A record whose rename may not be durable is taken back: the merge has not started.
            if renamed { try? FileOps.remove(path) }
            throw error
        }
    }

    /// The temporary name a record is written under by process `pid`: `.CHILD.merge.json.tmp-PID`.
    static func temporaryPath(for record: FilePath, pid: Int32) -> FilePath {
        record.removingLastComponent().appending(".\(record.lastComponent?.string ?? "merge.json").tmp-\(pid)")
    }

    /// Removes the temporary records (`.NAME.merge.json.tmp-PID`) in `folder` whose writer is gone:
    /// a kill while a record was being written leaves one, and nothing else would ever remove it.
    public static func removeStaleTemporaries(in folder: FilePath) {
        guard let names = try? FileOps.contents(of: folder) else { return }
        for name in names where name.hasPrefix(".") && name.contains(".merge.json.tmp-") {
            guard let dash = name.range(of: ".merge.json.tmp-", options: .backwards),
                  let pid = Int32(name[dash.upperBound...]), !ProcessState.isRunning(pid) else { continue }
            try? FileOps.remove(folder.appending(name))
        }
    }

    /// Removes the record durably.
    public static func remove(for child: FilePath) throws {
        let path = recordPath(for: child)
        try FileOps.remove(path)
        try FileOps.syncDirectory(of: path)
    }

    /// Every path the record names.
    public var allPaths: [String] { levels + [ancestor] + childrenToRepoint }

    /// A one-line account of what is pending, for `check` and errors.
    public var summary: String {
        let present = levels.filter { FileOps.exists(FilePath($0)) }
        var s = "merge of \(child) into \(ancestor) is pending (started \(started)): "
        if FileOps.exists(FilePath(child)) {
            s += "the data copy may be incomplete; \(present.count) level(s) still to remove (\(present.joined(separator: ", ")))"
        } else {
            s += "the data is merged; still to remove: \(present.isEmpty ? "only the record" : present.joined(separator: ", "))"
        }
        return s + "; merge \(child) again to finish it"
    }
}
