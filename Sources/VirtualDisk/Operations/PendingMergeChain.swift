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
    /// from a merged level to its ancestor named by a pending merge record.
    public static func open(_ path: FilePath) throws -> DiskChain {
        do {
            return try DiskChain.open(path)
        } catch let error as DiskError {
            guard case .parentMismatch = error else { throw error }
            return try openAllowing(path, intents: [])
        }
    }

    /// The merge records in the folders of `paths`.
    public static func pendingIntents(near paths: [FilePath]) -> [MergeIntent] {
        var folders: [String] = []
        for p in paths {
            let f = FileOps.absolute(p).removingLastComponent().string
            if !folders.contains(f) { folders.append(f) }
        }
        var out: [MergeIntent] = []
        for folder in folders {
            for store in recordFiles(in: FilePath(folder)) {
                if let intent = try? MergeIntent.load(store) { out.append(intent) }
            }
        }
        return out
    }

    static func recordFiles(in folder: FilePath) -> [FilePath] {
        guard let dir = opendir(folder.string) else { return [] }
        defer { closedir(dir) }
        var out: [FilePath] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name.hasSuffix(".merge.json"), !name.hasPrefix(".") { out.append(folder.appending(name)) }
        }
        return out.sorted { $0.string < $1.string }
    }

    /// Whether some record allows `child` (a merged level) to link to `parent` (its ancestor) whatever
    /// the ancestor's identity now is.
    static func allows(child: FilePath, parent: FilePath, intents: [MergeIntent]) -> Bool {
        let c = OperationIO.key(child), p = OperationIO.key(parent)
        return intents.contains { i in
            i.levels.last.map { OperationIO.key(FilePath($0)) } == c && OperationIO.key(FilePath(i.ancestor)) == p
        }
    }

    static func openAllowing(_ path: FilePath, intents: [MergeIntent]) throws -> DiskChain {
        try DiskChain.open(path) { child, parent in
            allows(child: child, parent: parent, intents: intents + pendingIntents(near: [child]))
        }
    }
}
