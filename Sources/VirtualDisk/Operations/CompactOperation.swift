import SystemPackage
import Storage

/// What a compaction reclaimed.
public struct CompactResult: Codable, Sendable, Equatable {
    public var path: String
    public var format: DiskFormat
    /// File space released (as the format reports it; for raw images the allocated bytes freed).
    public var bytesReclaimed: UInt64
    public var allocatedBefore: UInt64
    public var allocatedAfter: UInt64
    /// Children re-pointed because the image's identity changed (only with `force`).
    public var repointed: [String]
}

/// Releases file space that holds only zeros, without changing any byte read through the chain.
///
/// Every format compacts through `MaintainableImage.compact`: VHD and VHDX crash-safely in the
/// format, raw images by punching holes over all-zero runs (which cannot change their contents).
public enum CompactOperation {
    public static func compact(path: FilePath, children: [FilePath] = [], force: Bool = false,
                               progress: ProgressReporter? = nil) throws -> CompactResult {
        let found = try ChildFinder(near: [path], extra: children).children(of: path)
        if !found.isEmpty, !force { throw DiskError.hasChildren(path: path.string, children: found.map(\.string)) }
        // The whole chain: a differencing level compares its zero blocks with what its parent reads.
        let chain = try DiskChain.open(path, writable: true)
        let image = chain.leaf
        var closed = false
        defer { if !closed { try? chain.close() } }
        let before = try image.store.allocatedBytes()
        let oldID = image.identity
        let reclaimed: UInt64
        guard let maintainable = image as? any MaintainableImage else {
            throw DiskError.unsupported(path: path.string, reason: "compacting \(image.format.rawValue) images is not supported")
        }
        reclaimed = try maintainable.compact(progress: progress)
        try maintainable.flush()
        let after = try image.store.allocatedBytes()
        let newID = image.identity
        try chain.close()
        closed = true
        var repointed: [String] = []
        if newID != oldID {
            for c in found {
                let done = try DiskImages.openLevel(c, writable: true).use { level -> Bool in
                    guard let m = level as? any MaintainableImage else { return false }
                    try m.setParent(ParentLink(expectedID: newID, locators: ParentLocator.locators(child: c, parent: path)))
                    return true
                }
                if done { repointed.append(c.string) }
            }
        }
        return CompactResult(path: FileOps.absolute(path).string, format: image.format, bytesReclaimed: reclaimed,
                             allocatedBefore: before, allocatedAfter: after, repointed: repointed)
    }
}
