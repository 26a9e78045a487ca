import ArgumentParser
import SystemPackage
import VirtualDisk
import Storage

struct DiskCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a fixed, dynamic or differencing image.",
        discussion: "The format follows the extension (.vhd/.avhd: VHD, .vhdx/.avhdx: VHDX, anything else: raw) unless --format is given. With --parent the image is a differencing child of PARENT and takes its size."
    )

    @Argument(help: "The image to create.") var path: String
    @Option(help: "Virtual size, e.g. 64G (binary suffixes K, M, G, T).") var size: Size?
    @Option(help: "fixed or dynamic (default dynamic; differencing with --parent).") var type: DiskType?
    @Option(help: "Block size, a power of two (VHD default 2M; VHDX default 32M, 2M for differencing).") var blockSize: Size?
    @Option(help: "Logical sector size: 512 or 4096 (VHDX).") var logicalSectorSize: Int?
    @Option(help: "Physical sector size: 512 or 4096.") var physicalSectorSize: Int?
    @Option(help: "Make a differencing image of this parent.") var parent: String?
    @Option(help: "vhd, vhdx or raw (default: from the extension).") var format: DiskFormat?
    @Flag(help: "Print the new image's description as JSON.") var json = false

    func run() throws {
        let target = FilePath(path)
        let fmt = format ?? DiskFormat.fromExtension(of: target)
        let kind: DiskType = parent != nil ? .differencing : (type ?? .dynamic)
        if parent == nil, size == nil { throw ValidationError("--size is required (or --parent for a differencing image)") }
        if parent != nil, let type, type != .differencing { throw ValidationError("--parent makes a differencing image; --type \(type.rawValue) does not apply") }
        if parent != nil, size != nil { throw ValidationError("a differencing image takes its parent's size; drop --size") }
        if let blockSize, blockSize.bytes > 1 << 30 { throw ValidationError("--block-size is too large") }
        let options = CreateOptions(format: fmt, type: kind, virtualSize: size?.bytes ?? 0, blockSize: blockSize.map { Int($0.bytes) },
                                    logicalSectorSize: logicalSectorSize, physicalSectorSize: physicalSectorSize,
                                    parentPath: parent.map { FilePath($0) })
        let image = try DiskImages.create(at: target, options: options)
        let description = try DiskDescription(image)
        try image.chain.forEach { try $0.close() }
        if json {
            try Output.json(description)
        } else {
            print("created \(path): \(fmt.rawValue) \(kind.rawValue), \(ByteCount.format(description.virtualSize)) (\(description.virtualSize) bytes)")
        }
    }
}
