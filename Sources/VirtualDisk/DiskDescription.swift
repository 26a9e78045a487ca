import Storage
import SystemPackage

/// A printable, encodable summary of one image level (what `bulwark disk info` shows).
public struct DiskDescription: Codable, Sendable, Equatable {
    public var path: String
    public var format: DiskFormat
    public var type: DiskType
    public var virtualSize: UInt64
    /// The file's apparent size (what `ls -l` shows).
    public var fileSize: UInt64
    /// The bytes the file occupies on its filesystem (`st_blocks` × 512): less than `fileSize` for a
    /// sparse file, the figure that matters for free space.
    public var allocatedSize: UInt64
    public var logicalSectorSize: Int
    public var physicalSectorSize: Int
    public var blockSize: Int
    public var identity: String
    /// For a differencing image: the parent identity it expects and its locators.
    public var parentID: String?
    public var parentLocators: [ParentLocator]?
    /// Format-specific facts (geometry, creator, size rule, GUIDs, ...).
    public var properties: [String: String]
    /// What the open tolerated (absent when nothing).
    public var warnings: [String]?

    public init(_ image: any DiskImage) throws {
        path = image.path.string
        format = image.format
        type = image.type
        virtualSize = image.virtualSize
        fileSize = try image.store.size()
        allocatedSize = try image.store.allocatedBytes()
        logicalSectorSize = image.logicalSectorSize
        physicalSectorSize = image.physicalSectorSize
        blockSize = image.blockSize
        identity = image.identityString
        parentID = image.parentLink?.expectedID.uuidString.lowercased()
        parentLocators = image.parentLink?.locators
        properties = image.properties
        warnings = image.warnings.isEmpty ? nil : image.warnings
    }
}
