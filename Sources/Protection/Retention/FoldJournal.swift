import Foundation
import Storage
import SystemPackage
import Targets
import VirtualDisk

/// Folding a removed point into the point that depends on it, announced in `prune.json` (in the
/// machine's folder) and made of steps that can each be repeated, so a crash anywhere is finished by
/// the next job that takes the lease (prune, backup, verify). Every listed point reads right at every
/// moment:
/// 0. the removed point's manifests are removed first (the journal keeps a copy): it is no longer
///    listed, so nobody reads it while its image changes;
/// 1. for each disk, the engine merges the child's image into the removed point's image (crash-safe
///    and resumable; while it runs the child reads through the merge record, and at its end the
///    grandchild is re-pointed to the merged image and the child's file is removed);
/// 2. the merged image gets the child's name as a second link (never a move: the grandchild still
///    names the old path). Between the end of step 1 and this link, readers find the child's image
///    through the journal (`FoldJournal.imagePath`);
/// 3. the grandchild is re-pointed to the child's name (the same file);
/// 4. the grandchild's and the child's next manifest revisions are published (new file digests; the
///    child takes the removed point's kind and parent);
/// 5. the old name and the rest of the removed point's folder are removed, then the journal.
struct FoldJournal: Codable {
    /// The removed point's manifest, as it was.
    var removed: PointManifest
    var into: String
    /// The point depending on `into`, if any (re-pointed in step 3).
    var grandchild: String?
    /// The child's manifest revision before the fold; the fold publishes the next one.
    var childRevision: Int
    /// The grandchild's revision before the fold: re-pointing it changes its image file, so it gets
    /// a new revision too (same virtual disk, new file digests).
    var grandchildRevision: Int?

    static let name = "prune.json"
    var remove: String { removed.version }

    static func fold(points: RecoveryPoints, remove: String, into child: String, lease: TargetLease, log: (@Sendable (String) -> Void)?) throws {
        guard points.target.space is LocalFileSystem else {
            throw ProtectionError.pruneRefused(machine: points.machine, reason: "folding points needs the engine's merge, which runs on local targets only; prune on the host that holds the target")
        }
        let listing = try points.listing()
        let grandchild = listing.first { $0.parent == child }?.version
        let journal = FoldJournal(removed: try points.manifest(remove), into: child, grandchild: grandchild,
                                  childRevision: try points.manifest(child).revision,
                                  grandchildRevision: try grandchild.map { try points.manifest($0).revision })
        try points.target.publish(try RecoveryPoints.encode(journal), at: points.folder.appending(name))
        try journal.finish(points: points, lease: lease, log: log)
    }

    /// The journal of an interrupted fold, if any.
    static func pending(_ points: RecoveryPoints) throws -> FoldJournal? {
        let path = points.folder.appending(name)
        guard points.target.space.exists(path) else { return nil }
        do {
            return try JSONDecoder().decode(FoldJournal.self, from: Data(try points.target.read(path, limit: 64 << 20)))
        } catch StorageError.notFound {
            return nil
        } catch {
            throw TargetError.damaged(path: path.string, reason: "the journal of an interrupted prune cannot be read (\(error)); check the machine's points with `bulwark verify`, then remove the file")
        }
    }

    /// Finishes a fold a crashed prune left, if any.
    static func resume(points: RecoveryPoints, lease: TargetLease, log: (@Sendable (String) -> Void)?) throws {
        guard let journal = try pending(points) else { return }
        log?("finishing an interrupted prune: folding \(journal.into) into \(journal.remove)")
        try journal.finish(points: points, lease: lease, log: log)
    }

    /// Where a point's image is read from: its own file, or, in the moment of an interrupted fold
    /// between the merge and the link (step 2), the merged image under the removed point's name.
    static func imagePath(_ points: RecoveryPoints, version: String, image: String) -> FilePath {
        let own = points.pointFolder(version).appending(image)
        guard !points.target.space.exists(own), let journal = try? pending(points), journal.into == version,
              let disk = journal.removed.disks.first(where: { $0.image == image }) else { return own }
        let merged = points.pointFolder(journal.remove).appending(disk.image)
        return points.target.space.exists(merged) ? merged : own
    }

    /// The points whose image files an interrupted fold is changing (their data reads right; their
    /// file digests are the next revision's).
    static func inFlux(_ points: RecoveryPoints) -> Set<String> {
        guard let journal = try? pending(points) else { return [] }
        return Set([journal.into] + (journal.grandchild.map { [$0] } ?? []))
    }

    func finish(points: RecoveryPoints, lease: TargetLease, log: (@Sendable (String) -> Void)?) throws {
        let space = points.target.space
        let removedFolder = points.pointFolder(remove)
        let childFolder = points.pointFolder(into)
        // Step 0.
        for name in (try? space.contents(of: removedFolder))?.filter({ $0.hasPrefix("manifest") }) ?? [] {
            try space.remove(removedFolder.appending(name))
        }
        try? space.syncFolder(of: removedFolder.appending("manifest.json"))
        var childManifest = try points.manifest(into)
        let done = childManifest.revision > childRevision
        if !done {
            for (i, disk) in childManifest.disks.enumerated() {
                try lease.check()
                let merged = removedFolder.appending(removed.disks[i].image)
                let childImage = childFolder.appending(disk.image)
                let grandImage = grandchild.map { points.pointFolder($0).appending(disk.image) }
                // Step 1: merge, unless the child's name already is the merged file (step 2 done).
                if space.exists(merged), space.exists(childImage), !FileOps.sameFile(merged, childImage) {
                    _ = try MergeOperation.merge(child: childImage, options: MergeOptions(into: merged, children: grandImage.map { [$0] } ?? []))
                } else if !space.exists(childImage), FileOps.exists(MergeIntent.recordPath(for: childImage)) {
                    // The merge finished its copy and removed the child; let it finish its record.
                    _ = try MergeOperation.merge(child: childImage, options: MergeOptions(into: merged, children: grandImage.map { [$0] } ?? []))
                }
                // Step 2: the merged image takes the child's name as well.
                if space.exists(merged), !space.exists(childImage) {
                    try FileOps.link(merged, as: childImage)
                }
                // Step 3: the grandchild names the child's folder again.
                if let grandImage, space.exists(grandImage) {
                    _ = try ReparentOperation.reparent(child: grandImage, parent: childImage)
                }
                let (size, digest) = try Digest.file(childImage, in: space)
                childManifest.disks[i].imageSize = size
                childManifest.disks[i].imageSHA256 = digest
                childManifest.disks[i].parentImage = removed.disks[i].parentImage
            }
            // Step 4: the grandchild's revision first; the child's marks the fold done.
            if let grandchild, let base = grandchildRevision {
                var m = try points.manifest(grandchild)
                if m.revision <= base {
                    for (i, disk) in m.disks.enumerated() {
                        let (size, digest) = try Digest.file(points.pointFolder(grandchild).appending(disk.image), in: space)
                        m.disks[i].imageSize = size
                        m.disks[i].imageSHA256 = digest
                    }
                    m.revision = base + 1
                    m.notes.append("revision \(m.revision): its parent \(into) took over the data of \(remove), removed by retention; the image now names it again")
                    try lease.check()
                    try points.publish(m)
                }
            }
            childManifest.revision = childRevision + 1
            childManifest.kind = removed.kind
            childManifest.parent = removed.parent
            childManifest.notes.append("revision \(childManifest.revision): \(remove) was removed by retention and folded into this point")
            try lease.check()
            try points.publish(childManifest)
        }
        // Step 5.
        try points.removePoint(remove)
        try space.remove(points.folder.appending(Self.name))
        try space.syncFolder(of: points.folder.appending(Self.name))
    }
}
