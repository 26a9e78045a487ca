#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemPackage
import Storage

/// How `DiskChain.open` treats merge records (`CHILD.merge.json`) in the folders of a chain's levels.
public enum PendingMergePolicy: Sendable, Equatable {
    /// Readers and writers of a chain that a merge is running on, or left pending, get consistent
    /// content or a clear refusal, never mixed bytes: a chain opened through the merging child reads
    /// through the merge (its link to the changed ancestor is accepted, see `PendingMergeChain`);
    /// a merged level or the ancestor opened without that child, and any writable open of a level of
    /// the merge, are refused with `DiskError.mergePending`. The default.
    case guarded
    /// Records are not consulted: for the merge itself, which owns its record and holds its levels.
    case ignored
}

/// Opening chains that a running or pending merge has touched.
///
/// While a merge copies data, the ancestor changes (and a VHDX ancestor gets a new DataWriteGuid), so
/// the merged child's link to it no longer verifies. The child levels still hold every byte they held
/// before and the ancestor holds the rest, so reading through the leaf gives the merged contents;
/// `DiskChain.open` (with `PendingMergePolicy.guarded`, its default) allows exactly that link, and
/// only when a merge record names it. Everything else that would see the ancestor mid-change (the
/// ancestor or an intermediate level read on their own, a sibling of the child, any writer of a level)
/// is refused, naming the merge.
public enum PendingMergeChain {
    /// Throws `DiskError.mergePending` if a merge record that appeared since `chain` was opened now
    /// makes what it read inconsistent (a reader of an ancestor that opened it just before a merge
    /// into it started). Readers call it after reading, so that a race never passes silently.
    public static func verify(_ chain: DiskChain) throws {
        try guardChain(chain.levels.map(\.path), writable: false)
    }

    /// The merge records in the folders of `paths`.
    public static func pendingIntents(near paths: [FilePath], in space: any StoreSpace = LocalFileSystem()) -> [MergeIntent] {
        var folders: [FilePath] = []
        for p in paths {
            let f = space.absolute(p).removingLastComponent()
            if !folders.contains(f) { folders.append(f) }
        }
        var out: [MergeIntent] = []
        for folder in folders {
            for record in recordFiles(in: folder, space: space) {
                if let intent = try? load(record, in: space) { out.append(intent) }
            }
        }
        return out
    }

    static func recordFiles(in folder: FilePath, space: any StoreSpace) -> [FilePath] {
        let names = (try? space.contents(of: folder)) ?? []
        return names.filter { $0.hasSuffix(".merge.json") && !$0.hasPrefix(".") }.sorted().map { folder.appending($0) }
    }

    /// Reads a merge record through a store space.
    static func load(_ record: FilePath, in space: any StoreSpace) throws -> MergeIntent {
        let store = try space.open(record, writable: false)
        defer { try? store.close() }
        let size = try store.size()
        guard size <= 1 << 20 else { throw DiskError.corrupt(path: record.string, reason: "a merge record of \(size) bytes is too large") }
        return try MergeIntent.decode(try store.read(count: Int(size), at: 0), path: record)
    }

    /// Whether some record allows `child` (a merged level) to link to `parent` (its ancestor) whatever
    /// the ancestor's identity now is.
    static func allows(child: FilePath, parent: FilePath, intents: [MergeIntent], in space: any StoreSpace = LocalFileSystem()) -> Bool {
        let c = space.canonical(child), p = space.canonical(parent)
        return intents.contains { i in
            i.levels.last.map { space.canonical(FilePath($0)) } == c && space.canonical(FilePath(i.ancestor)) == p
        }
    }

    /// `DiskChain.open`'s identity-mismatch hook under `PendingMergePolicy.guarded`.
    static func acceptsMergeLink(child: FilePath, parent: FilePath, in space: any StoreSpace = LocalFileSystem()) -> Bool {
        allows(child: child, parent: parent, intents: pendingIntents(near: [child, parent], in: space), in: space)
    }

    /// A writable open that found `path` locked: when a merge record names it, the lock is the merge's
    /// (or the merge was interrupted and someone else writes), and the error says so.
    static func explain(_ error: StorageError, opening path: FilePath) -> any Error {
        guard case let .busy(_, holder) = error else { return error }
        let key = OperationIO.key(path)
        for intent in pendingIntents(near: [path]) where (intent.levels + [intent.ancestor]).contains(where: { OperationIO.key(FilePath($0)) == key }) {
            return mergePending(path: path, intent, runningPID: holder ?? (intent.isRunning ? intent.pid : nil))
        }
        return error
    }

    /// Refuses a chain (leaf first) that would see a merge's ancestor mid-change, or a writable open
    /// of a level of a merge. See `PendingMergePolicy.guarded`.
    static func guardChain(_ paths: [FilePath], writable: Bool) throws {
        let keys = paths.map(OperationIO.key)
        for intent in pendingIntents(near: paths) {
            let merged = Set(intent.levels.map { OperationIO.key(FilePath($0)) })
            let involved = merged.union([OperationIO.key(FilePath(intent.ancestor))])
            guard let first = keys.firstIndex(where: involved.contains) else { continue }
            let throughChild = keys.contains(OperationIO.key(FilePath(intent.child)))
            // Without the child on top, the view mixes the ancestor's new data with the levels' old
            // (while the child exists, the copy may be incomplete; once it is gone, leftover levels
            // are stale). A writer of any level would change what the merge copies or has copied.
            let mixed = !throughChild && (FileOps.exists(FilePath(intent.child)) || keys.contains(where: merged.contains))
            let written = writable && involved.contains(keys[0])
            if mixed || written {
                throw mergePending(path: paths[written ? 0 : first], intent, runningPID: intent.isRunning ? intent.pid : nil)
            }
        }
    }

    static func mergePending(path: FilePath, _ intent: MergeIntent, runningPID: Int32?) -> DiskError {
        DiskError.mergePending(path: FileOps.absolute(path).string, child: intent.child, ancestor: intent.ancestor,
                               record: MergeIntent.recordPath(for: FilePath(intent.child)).string, runningPID: runningPID)
    }
}
