import Foundation
import Storage
import SystemPackage
import Targets
import VirtualDisk

/// Folding a removed point into the point that depends on it, announced in `prune.json` (in the
/// machine's folder) and made of steps that can each be repeated, so a crash anywhere is finished by
/// the next job that takes the lease (prune, backup, verify). Every listed point reads right at every
/// moment. The steps use only what every store space has (open, write, a rename that never replaces
/// an existing name, remove), so a fold runs the same on a local folder and on an SMB share, where
/// there are no hard links and a rename over an existing file deletes it first. Which step a crash
/// interrupted is read from the files themselves (which names exist, which identity each image and
/// link has), the way a merge record is; for each disk `D` of removed point `R`, child `C` and
/// grandchild `G`:
/// 0. the removed point's manifests are removed first (the journal keeps a copy): it is no longer
///    listed, so nobody reads `R/D` on its own while it changes;
/// 1. `C/D`'s own data is written into `R/D` (`FoldMerge`: `C`'s view is unchanged, a merge record
///    beside it lets readers accept its link to the changed `R/D`; at the end `C/D` is re-linked to
///    `R/D`'s new identity and the record removed). Skipped once `G` names `R/D` (step 2 done) or
///    `C/D` and `R/D` are one image (a fold by an earlier build that linked them);
/// 2. `G/D` is linked to `R/D` by identity, its relative locator naming `R/D` and its absolute one
///    `C/D`: it reads through `R/D` while that name exists and through `C/D` once it has moved;
/// 3. `C/D` moves aside to `C/.D.folded` (a name that does not exist). Until step 4, readers of `C`
///    find its data under `R/D` through the journal (`FoldJournal.imagePath`);
/// 4. `R/D` moves to `C/D` (free since step 3);
/// 5. `G/D` is linked to `C/D` again (its usual locators), and `C/.D.folded` is removed;
/// 6. the grandchild's and the child's next manifest revisions are published (new file digests; the
///    child takes the removed point's kind and parent);
/// 7. the rest of the removed point's folder is removed, then the journal.
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
    /// between its two renames (steps 3 and 4), the merged image under the removed point's name.
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
                let childImage = childFolder.appending(disk.image)
                try swap(points: points, merged: removedFolder.appending(removed.disks[i].image), child: childImage,
                         grandchild: grandchild.map { points.pointFolder($0).appending(disk.image) }, lease: lease)
                let (size, digest) = try Digest.file(childImage, in: space)
                childManifest.disks[i].imageSize = size
                childManifest.disks[i].imageSHA256 = digest
                childManifest.disks[i].parentImage = removed.disks[i].parentImage
            }
            // Step 6: the grandchild's revision first; the child's marks the fold done.
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
            try Self.checkpoint(points, .published)
        }
        // Step 7.
        try points.removePoint(remove)
        try space.remove(points.folder.appending(Self.name))
        try space.syncFolder(of: points.folder.appending(Self.name))
    }
}
