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
    /// The ancestor, open for writing (with its parents, read-only), until `closeAncestor`.
    var ancestor: DiskChain {
        guard let ancestorChain else { preconditionFailure("the merge's ancestor was closed") }
        return ancestorChain
    }
    private var ancestorChain: DiskChain?
    /// The ancestor's lock once its image is closed.
    private var ancestorLock: BlockFile?
    /// The merged levels that exist, open for writing (the merge reads them through these).
    private(set) var levels: [any DiskImage]
    private var released = false

    /// Locks `levels` (those that still exist: a resumed merge may have deleted some) and opens
    /// `ancestor` for writing; fails with `StorageError.busy` (naming the holder) if a writer has one.
    init(levels paths: [FilePath], ancestor path: FilePath) throws {
        var levels: [any DiskImage] = []
        do {
            for p in paths where FileOps.exists(p) { levels.append(try DiskImages.openLevel(p, writable: true)) }
            ancestorChain = try DiskChain.open(path, writable: true, pendingMerges: .ignored)
        } catch {
            for l in levels { try? l.close() }
            throw error
        }
        self.levels = levels
    }

    /// Closes the top merged level and opens it again (its VHDX log is then clean). A writer that
    /// takes the lock in between is refused by the merge record and lets go of it.
    func reopenTopLevel() throws {
        guard let top = levels.popLast() else { return }
        try top.close()
        levels.append(try DiskImages.openLevel(top.path, writable: true))
    }

    /// Closes the ancestor's image once its data is written (a VHDX marks its log clean on close, so
    /// a kill from here on leaves a clean file) and goes on holding its lock with a plain open. A
    /// writer that takes the lock in between is refused by the merge record and lets go of it.
    func closeAncestor() throws {
        guard let chain = ancestorChain else { return }
        ancestorChain = nil
        try chain.close()
        ancestorLock = try BlockFile.open(chain.leaf.path, writable: true)
    }

    /// Closes the ancestor and releases every lock. Later calls do nothing.
    func release() {
        guard !released else { return }
        released = true
        try? ancestorChain?.close()
        try? ancestorLock?.close()
        for l in levels { try? l.close() }
        levels = []
    }
}
