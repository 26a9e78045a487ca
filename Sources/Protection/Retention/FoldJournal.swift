import Foundation
import Storage
import SystemPackage
import Targets
import VirtualDisk

/// Folding a removed point into the point that depends on it, step by repeatable step, announced in
/// `prune.json` (in the machine's folder) so that a crash anywhere is finished by the next prune or
/// backup:
/// 1. for each disk, merge the child's image into the removed point's image (the engine's merge:
///    crash-safe, resumable; it re-points the grandchild to the merged image);
/// 2. move the merged image into the child's folder under the child's image name;
/// 3. re-point the grandchild's image to it (its relative locator names the child's folder again);
/// 4. publish the next manifest revisions of the grandchild (new file digests) and of the child
///    (parent, kind, image sizes and digests);
/// 5. remove the removed point (manifest first), then the journal.
struct FoldJournal: Codable {
    var remove: String
    var into: String
    /// The point depending on `into`, if any (re-pointed in step 3).
    var grandchild: String?
    /// The child's manifest revision before the fold; the fold publishes the next one.
    var childRevision: Int
    /// The grandchild's revision before the fold: re-pointing it changes its image file, so it gets
    /// a new revision too (same virtual disk, new file digests).
    var grandchildRevision: Int?

    static let name = "prune.json"

    static func fold(points: RecoveryPoints, remove: String, into child: String, lease: TargetLease, log: (@Sendable (String) -> Void)?) throws {
        guard points.target.space is LocalFileSystem else {
            throw ProtectionError.pruneRefused(machine: points.machine, reason: "folding points needs the engine's merge, which runs on local targets only; prune on the host that holds the target")
        }
        let listing = try points.listing()
        let grandchild = listing.first { $0.parent == child }?.version
        let journal = FoldJournal(remove: remove, into: child, grandchild: grandchild, childRevision: try points.manifest(child).revision,
                                  grandchildRevision: try grandchild.map { try points.manifest($0).revision })
        try points.target.publish(try RecoveryPoints.encode(journal), at: points.folder.appending(name))
        try journal.finish(points: points, lease: lease, log: log)
    }

    /// Finishes a fold a crashed prune left, if any.
    static func resume(points: RecoveryPoints, lease: TargetLease, log: (@Sendable (String) -> Void)?) throws {
        let path = points.folder.appending(name)
        guard points.target.space.exists(path) else { return }
        let journal: FoldJournal
        do {
            journal = try JSONDecoder().decode(FoldJournal.self, from: Data(try points.target.read(path, limit: 1 << 20)))
        } catch {
            throw TargetError.damaged(path: path.string, reason: "the journal of an interrupted prune cannot be read (\(error)); check the machine's points with `bulwark verify`, then remove the file")
        }
        log?("finishing an interrupted prune: folding \(journal.into) into \(journal.remove)")
        try journal.finish(points: points, lease: lease, log: log)
    }

    func finish(points: RecoveryPoints, lease: TargetLease, log: (@Sendable (String) -> Void)?) throws {
        let space = points.target.space
        let old = try? points.manifest(remove)
        var childManifest = try points.manifest(into)
        let removedFolder = points.pointFolder(remove)
        let childFolder = points.pointFolder(into)
        let newRevision = childRevision + 1
        if let old {
            for (i, disk) in childManifest.disks.enumerated() {
                try lease.check()
                let merged = removedFolder.appending(old.disks[i].image)
                let childImage = childFolder.appending(disk.image)
                let grandImage = grandchild.map { points.pointFolder($0).appending(disk.image) }
                // Step 1: merge (skipped when the child's image is gone and the merged one exists).
                if space.exists(childImage) && space.exists(merged) {
                    _ = try MergeOperation.merge(child: childImage, options: MergeOptions(into: merged, children: grandImage.map { [$0] } ?? []))
                }
                // Step 2: the merged image takes the child's place.
                if space.exists(merged) && !space.exists(childImage) {
                    try space.rename(merged, to: childImage)
                }
                // Step 3: the grandchild names the child's folder again.
                if let grandImage, space.exists(grandImage) {
                    _ = try ReparentOperation.reparent(child: grandImage, parent: childImage)
                }
                let (size, digest) = try DiskCapture.fileDigest(childImage, in: space)
                childManifest.disks[i].imageSize = size
                childManifest.disks[i].imageSHA256 = digest
                childManifest.disks[i].parentImage = old.disks[i].parentImage
            }
            // Step 4: the grandchild's and the child's next revisions (the grandchild's first: the
            // child's is what marks the fold done).
            if let grandchild, let base = grandchildRevision {
                var m = try points.manifest(grandchild)
                if m.revision <= base {
                    for (i, disk) in m.disks.enumerated() {
                        let (size, digest) = try DiskCapture.fileDigest(points.pointFolder(grandchild).appending(disk.image), in: space)
                        m.disks[i].imageSize = size
                        m.disks[i].imageSHA256 = digest
                    }
                    m.revision = base + 1
                    m.notes.append("revision \(m.revision): its parent \(into) took over the data of \(remove), removed by retention; the image now names it again")
                    try lease.check()
                    try points.publish(m)
                }
            }
            // The child's next revision.
            if childManifest.revision < newRevision {
                childManifest.revision = newRevision
                childManifest.kind = old.kind
                childManifest.parent = old.parent
                childManifest.notes.append("revision \(newRevision): \(remove) was removed by retention and folded into this point")
                try lease.check()
                try points.publish(childManifest)
            }
        }
        // Step 5.
        try points.removePoint(remove)
        try space.remove(points.folder.appending(Self.name))
        try space.syncFolder(of: points.folder.appending(Self.name))
    }
}
