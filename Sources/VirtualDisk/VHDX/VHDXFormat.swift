import SystemPackage

// PLACEHOLDER: replaced by the VHDX implementation.
public enum VHDXFormat: DiskImageFormat {
    public static var format: DiskFormat { .vhdx }
    public static func probe(_ file: BlockFile) throws -> Bool { false }
    public static func open(_ file: BlockFile) throws -> any DiskImage {
        throw DiskError.unsupported(path: file.path.string, reason: "VHDX not implemented yet")
    }
    public static func create(at path: FilePath, options: CreateOptions, parent: (any DiskImage)?) throws -> any DiskImage {
        throw DiskError.unsupported(path: path.string, reason: "VHDX not implemented yet")
    }
}
