import SystemPackage
import struct Foundation.UUID

/// What to create. A differencing image takes its size and sector size from `parent`.
public struct CreateOptions: Sendable {
    public var format: DiskFormat
    public var type: DiskType
    /// Virtual size in bytes (ignored for differencing images, which take the parent's).
    public var virtualSize: UInt64
    /// Block size in bytes; nil means the format's default (VHD 2 MiB; VHDX 32 MiB, 2 MiB for differencing).
    public var blockSize: Int?
    /// Logical sector size: 512, or 4096 (VHDX only). nil means 512 or the parent's.
    public var logicalSectorSize: Int?
    /// Physical sector size; nil means the format's default.
    public var physicalSectorSize: Int?
    /// The parent's path, for a differencing image.
    public var parentPath: FilePath?
    /// Whether the new file is staged: written under a name nothing opens, and made visible (renamed
    /// into place) only after its final `flush` or `close`. A staged image skips the work that keeps a
    /// visible file consistent at every moment (VHDX log entries, header updates, ordered syncs) and
    /// becomes consistent once, at the flush. `convert` and backups writing new files use it.
    public var staged: Bool

    public init(format: DiskFormat, type: DiskType, virtualSize: UInt64 = 0, blockSize: Int? = nil,
                logicalSectorSize: Int? = nil, physicalSectorSize: Int? = nil, parentPath: FilePath? = nil,
                staged: Bool = false) {
        self.format = format
        self.type = type
        self.virtualSize = virtualSize
        self.blockSize = blockSize
        self.logicalSectorSize = logicalSectorSize
        self.physicalSectorSize = physicalSectorSize
        self.parentPath = parentPath
        self.staged = staged
    }
}

/// A container format's entry points. Each format (VHD, VHDX, raw) provides one.
public protocol DiskImageFormat: Sendable {
    static var format: DiskFormat { get }
    /// Whether `file` looks like this format (by its signatures; it need not be valid).
    static func probe(_ file: BlockFile) throws -> Bool
    /// Opens one level (no parent attached).
    static func open(_ file: BlockFile) throws -> any DiskImage
    /// Creates a new image at `path`. For a differencing image `parent` is the open parent level.
    static func create(at path: FilePath, options: CreateOptions, parent: (any DiskImage)?) throws -> any DiskImage
}

/// The entry point to images of every format.
public enum DiskImages {
    /// Formats in probing order (raw last: it accepts anything).
    public static let formats: [any DiskImageFormat.Type] = [VHDXFormat.self, VHDFormat.self, RawFormat.self]

    static func driver(for format: DiskFormat) -> any DiskImageFormat.Type {
        formats.first { $0.format == format }!
    }

    /// Refuses a block size `format` cannot take, before anything is written (convert checks it up
    /// front so the refusal names the destination, not its temporary file). Raw images have no blocks.
    public static func checkBlockSize(_ blockSize: Int, format: DiskFormat, path: FilePath) throws {
        let range: ClosedRange<Int>
        switch format {
        case .vhd: range = VHDFormat.blockSizeRange
        case .vhdx: range = VHDXFormat.blockSizeRange
        case .raw: return
        }
        guard range.contains(blockSize), blockSize & (blockSize - 1) == 0 else {
            throw DiskError.invalidArgument("\(path.string): \(format.rawValue.uppercased()) block size \(blockSize) must be a power of two from \(ByteCount.format(UInt64(range.lowerBound))) to \(ByteCount.format(UInt64(range.upperBound)))")
        }
    }

    /// Detects the format of the file at `path` by its signatures.
    public static func detectFormat(_ path: FilePath) throws -> DiskFormat {
        let file = try BlockFile.open(path, writable: false)
        defer { try? file.close() }
        return try detect(file).format
    }

    static func detect(_ file: BlockFile) throws -> any DiskImageFormat.Type {
        for f in formats where try f.probe(file) { return f }
        return RawFormat.self
    }

    /// Opens one image level (no parents). Use `DiskChain.open` to read through differencing chains.
    public static func openLevel(_ path: FilePath, writable: Bool = false) throws -> any DiskImage {
        let file = try BlockFile.open(path, writable: writable)
        do {
            return try detect(file).open(file)
        } catch {
            try? file.close()
            throw error
        }
    }

    /// Creates an image. A differencing image's parent chain is opened (read-only) and attached,
    /// so the returned image reads through it. The file appears only complete: a failed create
    /// removes what it wrote.
    public static func create(at path: FilePath, options: CreateOptions) throws -> any DiskImage {
        var parentChain: DiskChain?
        if options.type == .differencing {
            guard let parentPath = options.parentPath else {
                throw DiskError.invalidArgument("\(path.string): a differencing image needs a parent image")
            }
            parentChain = try DiskChain.open(parentPath)
            guard parentChain!.leaf.format == options.format else {
                throw DiskError.unsupported(path: path.string, reason: "a \(options.format.rawValue.uppercased()) differencing image cannot have the \(parentChain!.leaf.format.rawValue.uppercased()) parent \(parentPath.string); parent and child must share a format")
            }
        } else if options.parentPath != nil {
            throw DiskError.invalidArgument("\(path.string): an image with a parent is a differencing image, not \(options.type.rawValue)")
        }
        if FileOps.exists(path) { throw DiskError.exists(path: path.string) }
        do {
            let image = try driver(for: options.format).create(at: path, options: options, parent: parentChain?.leaf)
            if let parent = parentChain?.leaf, image.parent == nil { try image.attachParent(parent) }
            return image
        } catch {
            if case DiskError.exists = error {} else { try? FileOps.remove(path) }
            throw error
        }
    }
}
