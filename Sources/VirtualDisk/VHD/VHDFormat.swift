import SystemPackage

// PLACEHOLDER: replaced by the VHD implementation.
public enum VHDFormat: DiskImageFormat {
    public static var format: DiskFormat { .vhd }
    public static func probe(_ file: BlockFile) throws -> Bool { false }
    public static func open(_ file: BlockFile) throws -> any DiskImage {
        throw DiskError.unsupported(path: file.path.string, reason: "VHD not implemented yet")
    }
    public static func create(at path: FilePath, options: CreateOptions, parent: (any DiskImage)?) throws -> any DiskImage {
        throw DiskError.unsupported(path: path.string, reason: "VHD not implemented yet")
    }
}
