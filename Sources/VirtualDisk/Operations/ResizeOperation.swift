import SystemPackage
import Storage

/// What a resize did.
public struct ResizeResult: Codable, Sendable, Equatable {
    public var path: String
    public var oldSize: UInt64
    public var newSize: UInt64
}

/// Changes an image's virtual size: VHD/VHDX through `MaintainableImage.resize`, raw by truncating.
/// A disk that is the parent of differencing children is refused (naming them) unless `force`.
public enum ResizeOperation {
    public static func resize(path: FilePath, to newSize: UInt64, children: [FilePath] = [], force: Bool = false) throws -> ResizeResult {
        guard newSize > 0 else { throw DiskError.invalidArgument("\(path.string): the new size must be larger than zero") }
        let found = try ChildFinder(near: [path], extra: children).children(of: path)
        let chain = try DiskChain.open(path, writable: true)
        defer { try? chain.close() }
        let image = chain.leaf
        let old = image.virtualSize
        // The same size changes nothing, but still goes to the format: a re-run after a resize was
        // killed part way completes what it left (a VHD's footer copy at offset 0).
        if newSize != old, !found.isEmpty, !force { throw DiskError.hasChildren(path: path.string, children: found.map(\.string)) }
        if let raw = image as? RawImage {
            if newSize < old, let data = try raw.store.nextData(from: newSize), data < old {
                throw DiskError.unsupported(path: path.string, reason: "cannot shrink to \(newSize) bytes: the tail holds data (at \(data))")
            }
            try raw.resize(to: newSize)
            try raw.flush()
        } else if let maintainable = image as? any MaintainableImage {
            try maintainable.resize(to: newSize)
            try maintainable.flush()
        } else {
            throw DiskError.unsupported(path: path.string, reason: "resizing \(image.format.rawValue) images is not supported")
        }
        return ResizeResult(path: FileOps.absolute(path).string, oldSize: old, newSize: image.virtualSize)
    }
}
