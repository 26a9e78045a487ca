import SystemPackage
import Storage

/// The writers' locks on every level of a merge, held from before the merge reads the levels until it
/// has finished (or failed).
///
/// A write into a merged level after its data was copied would be lost when the level is deleted, and
/// a write into the ancestor would be overwritten or mixed with the merged data; so every level is
/// opened for writing (which takes its exclusive `flock`, as any writer's open does) and kept open. A
/// writer meanwhile gets `StorageError.busy`, which `DiskChain.open` turns into `DiskError.mergePending`
/// naming the merge. The ancestor is held as the writable chain the merge writes through (a second
/// writable open in this process would conflict with the first lock).
final class MergeLocks {
    /// The ancestor, open for writing (with its parents, read-only).
    let ancestor: DiskChain
    /// The merged levels that exist, open for writing (the merge reads them through these).
    private(set) var levels: [any DiskImage]
    private var released = false

    /// Locks `levels` (those that still exist: a resumed merge may have deleted some) and opens
    /// `ancestor` for writing; fails with `StorageError.busy` (naming the holder) if a writer has one.
    init(levels paths: [FilePath], ancestor path: FilePath) throws {
        var levels: [any DiskImage] = []
        do {
            for p in paths where FileOps.exists(p) { levels.append(try DiskImages.openLevel(p, writable: true)) }
            ancestor = try DiskChain.open(path, writable: true, pendingMerges: .ignored)
        } catch {
            for l in levels { try? l.close() }
            throw error
        }
        self.levels = levels
    }

    /// Closes the ancestor and releases every lock. Later calls do nothing.
    func release() {
        guard !released else { return }
        released = true
        try? ancestor.close()
        for l in levels { try? l.close() }
        levels = []
    }
}
