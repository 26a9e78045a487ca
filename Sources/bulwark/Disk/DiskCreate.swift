import ArgumentParser
import SystemPackage
import VirtualDisk
import Storage

struct DiskCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a fixed, dynamic or differencing image.",
        discussion: "The format follows the extension (.vhd/.avhd: VHD, .vhdx/.avhdx: VHDX, anything else: raw) unless --format is given. Give --size for a new fixed or dynamic image, or --parent for a differencing child of PARENT (which takes its size)."
    )

    @Argument(help: "The image to create.") var path: String
    @Option(parsing: .unconditional, help: ArgumentHelp("Virtual size: \(Size.forms).", valueName: "size"), transform: Size.parse)
    var size: Size?
    @Option(help: "fixed or dynamic (default dynamic; --parent makes a differencing image).") var type: StandaloneType?
    @Option(parsing: .unconditional, help: ArgumentHelp("Block size, a power of two (VHD: 512 bytes to 256M, default 2M; VHDX: 1M to 256M, default 32M, 2M for differencing).", valueName: "size"), transform: Size.parse)
    var blockSize: Size?
    @Option(help: "Logical sector size: 512 or 4096 (VHDX).") var logicalSectorSize: Int?
    @Option(help: "Physical sector size: 512 or 4096.") var physicalSectorSize: Int?
    @Option(help: "Make a differencing image of this parent.") var parent: String?
    @Option(help: "vhd, vhdx or raw (default: from the extension).") var format: DiskFormat?
    @OptionGroup var printing: OutputOptions

    func validate() throws {
        if parent == nil, size == nil {
            throw ValidationError("missing --size SIZE (a new image) or --parent PARENT (a differencing child of PARENT)")
        }
        if parent != nil, let type { throw ValidationError("--parent makes a differencing image; --type \(type.rawValue) does not apply") }
        if parent != nil, size != nil { throw ValidationError("a differencing image takes its parent's size; drop --size") }
        if let size, size.bytes == 0 { throw ValidationError("--size must be larger than zero") }
        try Size.checkBlockSize(blockSize)
    }

    func run() throws {
        let target = FilePath(path)
        let fmt = format ?? DiskFormat.fromExtension(of: target)
        let kind: DiskType = parent != nil ? .differencing : (type?.diskType ?? .dynamic)
        let options = CreateOptions(format: fmt, type: kind, virtualSize: size?.bytes ?? 0, blockSize: blockSize?.int,
                                    logicalSectorSize: logicalSectorSize, physicalSectorSize: physicalSectorSize,
                                    parentPath: parent.map { FilePath($0) })
        let image = try DiskImages.create(at: target, options: options)
        let description = try DiskDescription(image)
        try image.chain.forEach { try $0.close() }
        if printing.json {
            try Output.json(LevelJSON(description))
        } else {
            print("created \(path): \(fmt.rawValue) \(kind.rawValue), \(ByteCount.format(description.virtualSize)) (\(description.virtualSize) bytes)")
        }
    }
}
