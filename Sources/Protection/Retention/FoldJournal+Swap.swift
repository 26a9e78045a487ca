import Foundation
import Storage
import Synchronization
import SystemPackage
import Targets
import VirtualDisk

/// The steps of a fold of one disk, in order (see `FoldJournal`), named so that tests can stop a
/// fold at each of them the way a crash would.
enum FoldStep: String, CaseIterable, Sendable {
    /// Step 1 has written its first chunk into the removed point's image (and not flushed it).
    case mergeCopying = "merge-copying"
    /// Step 1 is done: the child's data is in the removed point's image, the child re-linked.
    case merged
    /// Step 2 is done: the grandchild names the merged image.
    case grandchildOnMerged = "grandchild-on-merged"
    /// Step 3 is done: the child's image is under its `.folded` name.
    case childAside = "child-aside"
    /// Step 4 is done: the merged image has the child's name.
    case mergedMoved = "merged-moved"
    /// Step 5 is done: the grandchild names the child again, the `.folded` image is gone.
    case swapped
    /// Step 6 is done: the new manifest revisions are published.
    case published
}

extension FoldJournal {
    /// A hook tests set to end a fold at a step (by throwing, as if the process died there); it is
    /// given the machine's folder, so that folds of other tests running meanwhile go on.
    static let interruption = Mutex<(@Sendable (FilePath, FoldStep) throws -> Void)?>(nil)

    static func checkpoint(_ points: RecoveryPoints, _ step: FoldStep) throws {
        if let hook = interruption.withLock({ $0 }) { try hook(points.folder, step) }
    }

    /// The hidden name the child's image moves aside to (step 3): `.disk0.vhdx.folded`.
    static func asideName(_ image: FilePath) -> FilePath {
        image.removingLastComponent().appending(".\(image.lastComponent?.string ?? "disk").folded")
    }

    /// Steps 1 to 5 for one disk: `merged` (the removed point's image) takes `child`'s data and then
    /// its name, and `grandchild` follows. Each step is done only if the files show it is not done yet,
    /// so a call after a crash at any point finishes the job.
    func swap(points: RecoveryPoints, merged: FilePath, child: FilePath, grandchild: FilePath?, lease: TargetLease) throws {
        let space = points.target.space
        let aside = Self.asideName(child)
        let identity = { (path: FilePath) throws -> UUID in try DiskImages.openLevel(path, in: space).use { $0.identity } }
        let grandLink = { () throws -> ParentLink? in
            guard let grandchild, space.exists(grandchild) else { return nil }
            return try DiskImages.openLevel(grandchild, in: space).use { $0.parentLink }
        }
        // Step 1, unless done: the grandchild already names the merged image (step 2), or the child's
        // name is the merged image already (linked by an earlier build).
        if space.exists(child), space.exists(merged), !space.exists(aside) {
            let childID = try identity(child)
            let grandNamesChild = try grandLink().map { $0.expectedID == childID } ?? true
            if grandNamesChild, childID != (try identity(merged)) {
                try FoldMerge.merge(child: child, into: merged, target: points.target, lease: lease) {
                    try Self.checkpoint(points, .mergeCopying)
                }
                try Self.checkpoint(points, .merged)
            }
        }
        // Step 2: the grandchild reads through the merged image, under either name.
        if let grandchild, space.exists(grandchild), space.exists(merged) {
            let mergedID = try identity(merged)
            let relative = ParentLocator.locators(child: space.absolute(grandchild), parent: space.absolute(merged))
                .filter { $0.kind == .relative }
            try relink(grandchild, to: ParentLink(expectedID: mergedID, locators: relative + [ParentLocator(kind: .absolute, path: space.absolute(child).string)]), in: space)
            try Self.checkpoint(points, .grandchildOnMerged)
        }
        // Step 3: the child's image moves aside (never over anything).
        if space.exists(child), space.exists(merged) {
            guard !space.exists(aside) else {
                throw TargetError.damaged(path: aside.string, reason: "an interrupted prune left both \(child.string) and this file while \(merged.string) still exists; check the points with `bulwark verify` and remove the one that is not a valid image")
            }
            try lease.check()
            try space.rename(child, to: aside)
            try space.syncFolder(of: aside)
            try Self.checkpoint(points, .childAside)
        }
        // Step 4: the merged image takes the child's name.
        if !space.exists(child), space.exists(merged) {
            try lease.check()
            try space.rename(merged, to: child)
            try space.syncFolder(of: child)
            try space.syncFolder(of: merged)
            try Self.checkpoint(points, .mergedMoved)
        }
        guard space.exists(child) else {
            throw TargetError.damaged(path: child.string, reason: "missing while an interrupted prune folds \(into) into \(remove) (and \(merged.string) is missing too); restore the point from a replica, then remove \(FoldJournal.name)")
        }
        // Step 5: the grandchild names the child's image again, with its usual locators.
        if let grandchild, space.exists(grandchild) {
            let childID = try identity(child)
            try relink(grandchild, to: ParentLink(expectedID: childID, locators: ParentLocator.locators(child: space.absolute(grandchild), parent: space.absolute(child))), in: space)
        }
        try space.remove(aside)
        // A merge record an earlier build's fold may have left beside the child.
        try space.remove(MergeIntent.recordPath(for: child))
        try space.syncFolder(of: child)
        try Self.checkpoint(points, .swapped)
    }

    /// Sets a differencing image's parent link (a header-only change: the image's own identity, which
    /// its children record, stays), unless it already is `link`.
    private func relink(_ path: FilePath, to link: ParentLink, in space: any StoreSpace) throws {
        if try DiskImages.openLevel(path, in: space).use({ $0.parentLink == link }) { return }
        try DiskImages.openLevel(path, writable: true, in: space).use { image in
            guard image.parentLink != nil, let maintainable = image as? any MaintainableImage else {
                throw DiskError.unsupported(path: path.string, reason: "cannot re-link this \(image.format.rawValue) image to its new parent; it is not a differencing image this build can change")
            }
            try maintainable.setParent(link)
            try maintainable.flush()
        }
    }
}
