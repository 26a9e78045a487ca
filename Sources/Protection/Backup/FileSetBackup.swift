import FileSets
import Foundation
import Storage
import SystemPackage
import Targets

/// The file sets of a backup job: each `files:` source captured into the point's folder as
/// `fileset<N>.tar.zst` and `fileset<N>.index.json`, incremental against the parent point's set with
/// the same paths (a full captures everything).
enum FileSetBackup {
    struct Captured {
        var sets: [ManifestFileSet]
        var warnings: [String]
    }

    static func capture(policy: Policy, target: any BackupTarget, points: RecoveryPoints, version: String, parent: PointManifest?,
                        progress: ProgressReporter?, log: @Sendable (String) -> Void) throws -> Captured {
        var out = Captured(sets: [], warnings: [])
        for (n, paths) in policy.fileSetPaths.enumerated() {
            try progress?.checkCancelled()
            let archive = "fileset\(n).tar.zst", indexFile = "fileset\(n).index.json"
            var previous: FileSetIndex? = nil
            if let parent, let set = parent.fileSets?.first(where: { $0.index == n && $0.paths == paths }) {
                previous = try FileSetRestore.loadIndex(points: points, version: parent.version, set: set)
            }
            let folder = points.pointFolder(version)
            let r = try FileSetCapture(paths: paths, version: version, previous: previous, target: target, archive: folder.appending(archive),
                                       index: folder.appending(indexFile), progress: progress).run()
            out.sets.append(ManifestFileSet(index: n, paths: paths, archive: archive, archiveSize: r.archiveSize, archiveSHA256: r.archiveSHA256,
                                            indexFile: indexFile, indexSize: r.indexSize, indexSHA256: r.indexSHA256, entries: r.entries, bytes: r.bytes,
                                            storedEntries: r.storedEntries, storedBytes: r.storedBytes, references: r.references))
            log("file set \(n) (\(paths.joined(separator: ", "))): \(r.entries) entries, \(ByteCount.format(r.bytes)); stored \(r.storedEntries) entries, \(ByteCount.format(r.storedBytes)) (\(ByteCount.format(r.archiveSize)) compressed)")
            if !r.vanished.isEmpty {
                out.warnings.append("file set \(n): \(r.vanished.count) path(s) vanished while the set was read, left out: \(r.vanished.prefix(5).joined(separator: ", "))")
            }
        }
        return out
    }
}
