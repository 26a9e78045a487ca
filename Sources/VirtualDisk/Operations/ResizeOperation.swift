import SystemPackage
import Storage

/// What a resize did.
public struct ResizeResult: Codable, Sendable, Equatable {
    public var path: String
    public var oldSize: UInt64
    public var newSize: UInt64
}

/// Changes an image's virtual size through `MaintainableImage.resize` (every format).
/// A disk that is the parent of differencing children is refused (naming them) unless `force`.
public enum ResizeOperation {
    public static func resize(path: FilePath, to newSize: UInt64, children: [FilePath] = [], force: Bool = false) throws -> ResizeResult {
        guard newSize > 0 else { throw DiskError.invalidArgument("\(path.string): the new size must be larger than zero") }
        let found = try ChildFinder(near: [path], extra: children).children(of: path)
        // Closed through `use`: the close is the resize's last flush, and its failure is the resize's.
        return try DiskChain.open(path, writable: true).use { chain in
            let image = chain.leaf
            let old = image.virtualSize
            // The same size changes nothing, but still goes to the format: a re-run after a resize was
            // killed part way completes what it left (a VHD's footer copy at offset 0).
            if newSize != old, !found.isEmpty, !force { throw DiskError.hasChildren(path: path.string, children: found.map(\.string)) }
            guard let maintainable = image as? any MaintainableImage else {
                throw DiskError.unsupported(path: path.string, reason: "resizing \(image.format.rawValue) images is not supported")
            }
            try maintainable.resize(to: newSize)
            try maintainable.flush()
            return ResizeResult(path: FileOps.absolute(path).string, oldSize: old, newSize: image.virtualSize)
        }
    }

    /// The refusal of a shrink that would cut off data: where the data ends, in units, and the smallest
    /// size (`dataEnd` rounded up to `alignment`) the disk can take.
    static func shrinkRefusal(_ path: FilePath, to newSize: UInt64, dataEnd: UInt64, alignment: UInt64) -> DiskError {
        let (rounded, overflow) = dataEnd.addingReportingOverflow(alignment - 1)
        let smallest = overflow ? dataEnd : rounded / alignment * alignment
        return .unsupported(path: path.string, reason: "cannot shrink to \(ByteCount.format(newSize)) (\(newSize) bytes): data is stored up to \(ByteCount.format(dataEnd)) (\(dataEnd) bytes); the smallest size that keeps it is \(ByteCount.format(smallest)) (\(smallest) bytes)")
    }
}
