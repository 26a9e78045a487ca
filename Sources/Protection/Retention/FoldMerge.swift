import Foundation
import Storage
import SystemPackage
import Targets
import VirtualDisk

/// The data part of a fold, for one disk: everything a point's differencing image holds itself is
/// written into its parent's image (the removed point's, hidden by then), through the target's space,
/// so it runs the same on a local folder and on an SMB share (the engine's `MergeOperation` needs
/// local files: flocks, fsync'd records, reflinks).
///
/// Writing the child's blocks into the parent leaves the child's view (parent + child) unchanged, so
/// the copy can be repeated after a crash at any point. What does change is a VHDX parent's identity
/// (its DataWriteGuid, new with its first write): for that moment a merge record
/// (`CHILD.merge.json`, the engine's format) is published beside the child first, and every reader
/// that opens the chain (`DiskChain.open`, in any space) accepts the child's link to the changed
/// parent while the record is there. Once the parent is flushed, the child is re-linked to the
/// parent's new identity (a header-only change: the child's own identity, which its children
/// record, stays) and the record is removed.
enum FoldMerge {
    /// Merges `child`'s own data into `parent` (the image its link names) and re-links `child` to
    /// the result. Repeatable: a crash anywhere leaves the record (or a valid link) behind, and the
    /// next call copies again. `copying` is called once the first chunk is written (tests stop the fold there).
    static func merge(child: FilePath, into parent: FilePath, target: any BackupTarget, lease: TargetLease,
                      copying: () throws -> Void = {}) throws {
        let space = target.space
        let record = MergeIntent.recordPath(for: child)
        let (childID, size, parentID) = try DiskImages.openLevel(child, in: space).use { image -> (String, UInt64, String) in
            guard let link = image.parentLink else {
                throw DiskError.invalidArgument("\(image.path.string): is not a differencing image, so there is nothing to fold into \(parent.string); the prune journal does not match the files (check them with `bulwark verify`)")
            }
            let named = DiskChain.candidatePaths(of: child, link: link, in: space).first(where: space.exists)
            guard named.map(space.canonical) == space.canonical(parent) else {
                throw DiskError.invalidArgument("\(child.string): its parent is \(named?.string ?? "missing"), not \(parent.string) as the prune journal says; check the points with `bulwark verify`")
            }
            let parentID = try DiskImages.openLevel(parent, in: space).use { $0.identityString }
            return (image.identityString, image.virtualSize, parentID)
        }
        if !space.exists(record) {
            // Room first: the parent grows by at most the child's file.
            let store = try space.open(child, writable: false)
            defer { try? store.close() }
            let needed = try store.size()
            if let available = try space.availableSpace(at: parent), available < needed {
                throw StorageError.insufficientSpace(path: parent.string, needed: needed, available: available)
            }
            let intent = MergeIntent(child: child.string, levels: [child.string], ancestor: parent.string,
                                     levelIdentities: [childID], ancestorIdentity: parentID, childrenToRepoint: [],
                                     started: Timestamp.iso8601())
            try target.publish(try RecoveryPoints.encode(intent), at: record)
        }
        try copy(child, into: parent, size: size, space: space, lease: lease, copying: copying)
        try lease.check()
        // The merged parent now presents exactly the child's view, and is about to take the child's
        // name: it takes the child's identity too, so the child's children here, and every copy of
        // them replicated elsewhere or sent later, link to it unchanged.
        guard let adopted = UUID(uuidString: childID) else {
            throw DiskError.invalidArgument("\(child.string): its identity \(childID) is not a UUID")
        }
        try DiskImages.openLevel(parent, writable: true, in: space).use { image in
            guard let maintainable = image as? any MaintainableImage else {
                throw DiskError.unsupported(path: parent.string, reason: "cannot give this \(image.format.rawValue) image the identity of \(child.string)")
            }
            try maintainable.adoptIdentity(adopted)
        }
        let newID = try DiskImages.openLevel(parent, in: space).use { $0.identity }
        try DiskImages.openLevel(child, writable: true, in: space).use { image in
            guard let link = image.parentLink, let maintainable = image as? any MaintainableImage else {
                throw DiskError.unsupported(path: child.string, reason: "cannot re-link this \(image.format.rawValue) image to \(parent.string)")
            }
            if link.expectedID != newID {
                try maintainable.setParent(ParentLink(expectedID: newID, locators: link.locators))
                try maintainable.flush()
            }
        }
        try space.remove(record)
        try space.syncFolder(of: record)
    }

    /// Writes every run the child holds itself (its data, and its explicit zero blocks, which read
    /// as zeros whatever the parent holds) into the parent at the same virtual offsets, then flushes.
    private static func copy(_ child: FilePath, into parent: FilePath, size: UInt64, space: any StoreSpace, lease: TargetLease,
                             copying: () throws -> Void) throws {
        let level = try DiskImages.openLevel(child, in: space)
        defer { try? level.close() }
        let runs = try DiskChain(levels: [level]).map(0..<size).filter { $0.level == 0 }
        try DiskImages.openLevel(parent, writable: true, in: space).use { target in
            guard target.virtualSize == size else {
                throw DiskError.unsupported(path: child.string, reason: "its virtual size (\(size) bytes) differs from its parent \(parent.string)'s (\(target.virtualSize)); resize one of them first")
            }
            let chunk: UInt64 = 4 << 20
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunk), alignment: 4096)
            defer { buffer.deallocate() }
            var written = 0
            for run in runs {
                var at = run.range.lowerBound
                while at < run.range.upperBound {
                    let n = Int(min(chunk, run.range.upperBound - at))
                    let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<n])
                    if run.isZero {
                        slice.initializeMemory(as: UInt8.self, repeating: 0)
                    } else {
                        try level.read(into: slice, at: at)
                    }
                    try target.write(UnsafeRawBufferPointer(slice), at: at)
                    at += UInt64(n)
                    written += 1
                    if written == 1 { try copying() }
                    if written % 16 == 0 { try lease.check() }
                }
            }
            try target.flush()
        }
    }
}
