import ArgumentParser
import FileSets
import Foundation
import Storage
import SystemPackage
import Targets

/// `files list` and `restore files` on a point of file sets: listed from the set's index and
/// restored from the archives, with no mount and no root needed.
struct FileSetPoint {
    let target: any BackupTarget
    let points: RecoveryPoints
    let manifest: PointManifest
    let set: ManifestFileSet

    /// The point's file set when the point has file sets (nil for a point of disks). `--fileset`
    /// on a point of disks is an error.
    static func open(_ options: PointDiskOptions, set: Int?) throws -> FileSetPoint? {
        let target = try options.access.open(options.target)
        let machine = try options.access.machine(options.machine, on: target)
        let points = RecoveryPoints(target: target, machine: machine)
        let manifest = try points.manifest(options.version)
        let sets = manifest.fileSets ?? []
        guard !sets.isEmpty || set != nil else { return nil }
        guard let chosen = sets.first(where: { $0.index == (set ?? 0) }) else {
            throw FileSetError.noFileSet(machine: machine, version: options.version, set: set ?? 0, sets: sets.count)
        }
        return FileSetPoint(target: target, points: points, manifest: manifest, set: chosen)
    }

    /// The entries at and under `path` (absolute, as backed up), as a listing prints them.
    func list(_ path: String) throws -> [FileEntry] {
        let index = try FileSetRestore.loadIndex(points: points, version: manifest.version, set: set)
        guard let hits = index.entries(under: path) else { throw FileSetError.badPath(path) }
        guard !hits.isEmpty else { throw FileSetError.pathNotFound(path: path, version: manifest.version, set: set.index) }
        return hits.map(Self.entry)
    }

    static func entry(_ e: FileSetIndex.Entry) -> FileEntry {
        let type = e.type == "folder" ? "directory" : e.type == "link" ? "symlink" : e.type
        let mtime = Timestamp.iso8601(Date(timeIntervalSince1970: Double(e.mtime) / 1e9))
        return FileEntry(path: "/" + e.path, type: type, size: e.size, mode: String(format: "%04o", e.mode), uid: e.uid, gid: e.gid,
                         mtime: mtime, target: e.target)
    }
}
