import Foundation
import SystemPackage
import VirtualDisk
import Storage

/// Point-in-time copy of a VHD/VHDX disk the coordinator manages, the way Hyper-V makes an .avhdx:
/// the current leaf file becomes the frozen point-in-time image, and a new differencing child of it
/// (next to it, `<stem>_<snapshot id>.avhdx` / `.avhd`) becomes the live leaf the guest must write to
/// from now on. Takes milliseconds; merging the child back later is the disk engine's merge.
///
/// The children go into `childDirectory` when one is given (Hyper-V's snapshot file location; the
/// child finds its parent by a relative locator), else next to each disk.
public struct DifferencingProvider: SnapshotProvider {
    /// Where the new children go (nil: next to each disk).
    public var childDirectory: String?

    public init(childDirectory: String? = nil) { self.childDirectory = childDirectory.map(Paths.canonical) }
    public var name: String { "differencing" }

    /// The new child's path for `disk`: in `directory`, or next to the disk.
    public static func childPath(of disk: String, format: DiskFormat, snapshotID: String, in directory: String? = nil) -> String {
        let path = FilePath(disk)
        let stem = path.stem ?? "disk"
        let ext = format == .vhdx ? "avhdx" : "avhd"
        let folder = directory.map { FilePath($0) } ?? path.removingLastComponent()
        return folder.appending("\(stem)_\(snapshotID).\(ext)").string
    }

    private static func format(of disk: String) throws -> DiskFormat {
        let format = try DiskImages.detectFormat(FilePath(disk))
        guard format == .vhd || format == .vhdx else {
            throw ShadowCopyError.providerFailed(provider: "differencing", reason: "\(disk) is a \(format.rawValue) image; differencing snapshots need a VHD or VHDX disk")
        }
        return format
    }

    public func prepare(disks: [String], context: SnapshotContext) async throws {
        let (id, folder) = (context.snapshotID, childDirectory)
        try await BlockingPool.disk.run {
            for disk in disks {
                let child = Self.childPath(of: disk, format: try Self.format(of: disk), snapshotID: id, in: folder)
                if FileOps.exists(FilePath(child)) { throw ShadowCopyError.providerFailed(provider: "differencing", reason: "\(child) exists already") }
            }
        }
    }

    public func snapshot(disks: [String], context: SnapshotContext, deadline: Date) async throws -> ProviderSnapshot {
        let (id, folder) = (context.snapshotID, childDirectory)
        let children = try await BlockingPool.disk.run {
            var made: [String] = []
            do {
                for disk in disks {
                    let format = try Self.format(of: disk)
                    let child = Self.childPath(of: disk, format: format, snapshotID: id, in: folder)
                    let image = try DiskImages.create(at: FilePath(child), options: CreateOptions(format: format, type: .differencing, parentPath: FilePath(disk)))
                    made.append(child)
                    try image.flush()
                    for level in image.chain { try level.close() }
                }
            } catch {
                for c in made { try? FileOps.remove(FilePath(c)) }
                throw error
            }
            return made
        }
        return ProviderSnapshot(copies: disks, newLeaves: children)
    }

    public func finish(_ snapshot: ProviderSnapshot, context: SnapshotContext) async throws {
        let leaves = snapshot.newLeaves
        try await BlockingPool.disk.run { try ProviderFiles.sync(leaves, provider: "differencing") }
    }

    public func abort(disks: [String], context: SnapshotContext) async {
        for disk in disks {
            for format in [DiskFormat.vhd, .vhdx] {
                try? FileOps.remove(FilePath(Self.childPath(of: disk, format: format, snapshotID: context.snapshotID, in: childDirectory)))
            }
        }
    }
}
