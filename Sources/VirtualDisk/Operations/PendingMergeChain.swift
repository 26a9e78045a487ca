#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemPackage
import Storage

/// Opening chains that a pending merge has touched.
///
/// While a merge copies data, the ancestor changes (and a VHDX ancestor gets a new DataWriteGuid), so
/// the merged child's link to it no longer verifies with `DiskChain.open`. The child levels still hold
/// every byte they held before and the ancestor holds the rest, so reading through the leaf gives the
/// merged contents; `PendingMergeChain.open` allows exactly that link, and only when a merge record names it.
public enum PendingMergeChain {
    /// Opens `path` like `DiskChain.open`, except that a parent identity mismatch is accepted on a link
    /// from a merged level to its ancestor named by a pending merge record. Records are read through
    /// `space`, so a chain on a share or behind a helper process reads mid-merge too.
    public static func open(_ path: FilePath, in space: any StoreSpace = LocalFileSystem()) throws -> DiskChain {
        do {
            return try DiskChain.open(path, in: space)
        } catch let error as DiskError {
            guard case .parentMismatch = error else { throw error }
            return try openAllowing(path, intents: [], in: space)
        }
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

    static func openAllowing(_ path: FilePath, intents: [MergeIntent], in space: any StoreSpace = LocalFileSystem()) throws -> DiskChain {
        try DiskChain.open(path, in: space) { child, parent in
            allows(child: child, parent: parent, intents: intents + pendingIntents(near: [child], in: space), in: space)
        }
    }
}
