import SystemPackage
import Storage

/// What a reparent did.
public struct ReparentResult: Codable, Sendable, Equatable {
    public var child: String
    public var parent: String
    /// The parent identity the child recorded before and records now.
    public var oldParentID: String
    public var newParentID: String
}

/// Set-VHD -ParentPath: points a differencing image at a (moved or copied) parent.
///
/// The new parent must have the identity the child recorded (unless `ignoreIDMismatch`, which then
/// records the new identity), the same format, virtual size and logical sector size.
public enum ReparentOperation {
    public static func reparent(child: FilePath, parent: FilePath, ignoreIDMismatch: Bool = false) throws -> ReparentResult {
        if OperationIO.key(child) == OperationIO.key(parent) {
            throw DiskError.invalidArgument("\(child.string): an image cannot be its own parent")
        }
        let newParent = try DiskImages.openLevel(parent)
        defer { try? newParent.close() }
        // Closed through `use`: the close is the last flush of the new locators, and its failure is ours.
        return try DiskImages.openLevel(child, writable: true).use { image in
            guard let link = image.parentLink else {
                throw DiskError.invalidArgument("\(child.string): is not a differencing image; only a differencing image has a parent")
            }
            guard let maintainable = image as? any MaintainableImage else {
                throw DiskError.unsupported(path: child.string, reason: "reparenting \(image.format.rawValue) images is not supported")
            }
            guard newParent.format == image.format else {
                throw DiskError.unsupported(path: child.string, reason: "the new parent \(parent.string) is \(newParent.format.rawValue.uppercased()) but the child is \(image.format.rawValue.uppercased())")
            }
            guard newParent.virtualSize == image.virtualSize else {
                throw DiskError.invalidArgument("\(child.string): its virtual size is \(image.virtualSize) bytes but the new parent \(parent.string) has \(newParent.virtualSize)")
            }
            guard newParent.logicalSectorSize == image.logicalSectorSize else {
                throw DiskError.invalidArgument("\(child.string): its logical sector size is \(image.logicalSectorSize) but the new parent \(parent.string) has \(newParent.logicalSectorSize)")
            }
            // The new parent must not lead back to the child.
            var cursor = FileOps.absolute(parent)
            var hops = 0
            while let next = ChildFinder.parentPath(of: cursor), hops < 256 {
                if OperationIO.key(next) == OperationIO.key(child) {
                    throw DiskError.chainLoop(path: child.string, chain: [child.string, parent.string, next.string])
                }
                cursor = next
                hops += 1
            }
            if newParent.identity != link.expectedID, !ignoreIDMismatch {
                throw DiskError.parentMismatch(child: child.string, parent: parent.string,
                                               expectedID: link.expectedID.uuidString.lowercased(), foundID: newParent.identityString)
            }
            try maintainable.setParent(ParentLink(expectedID: newParent.identity, locators: ParentLocator.locators(child: child, parent: parent)))
            try maintainable.flush()
            return ReparentResult(child: FileOps.absolute(child).string, parent: FileOps.absolute(parent).string,
                                  oldParentID: link.expectedID.uuidString.lowercased(), newParentID: newParent.identityString)
        }
    }
}
