import SystemPackage
import struct Foundation.UUID
import Storage

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

/// A container format's entry points. Each format (VHD, VHDX, raw) provides one. Formats see only
/// stores: where a store lives (a local file, a block device, a share) is the space's business.
public protocol DiskImageFormat: Sendable {
    static var format: DiskFormat { get }
    /// Whether `store` looks like this format (by its signatures; it need not be valid).
    static func probe(_ store: any ByteStore) throws -> Bool
    /// Opens one level (no parent attached).
    static func open(_ store: any ByteStore) throws -> any DiskImage
    /// Writes a new image into `store` (new, empty and writable). For a differencing image `parent`
    /// is the open parent level. A staged image is not flushed here.
    static func create(on store: any ByteStore, options: CreateOptions, parent: (any DiskImage)?) throws -> any DiskImage
}

/// The entry point to images of every format, in any store space (the local filesystem by default).
public enum DiskImages {
    /// Formats in probing order (raw last: it accepts anything).
    public static let formats: [any DiskImageFormat.Type] = [VHDXFormat.self, VHDFormat.self, RawFormat.self]

    static func driver(for format: DiskFormat) -> any DiskImageFormat.Type {
        switch format {
        case .vhd: VHDFormat.self
        case .vhdx: VHDXFormat.self
        case .raw: RawFormat.self
        }
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
    public static func detectFormat(_ path: FilePath, in space: any StoreSpace = LocalFileSystem()) throws -> DiskFormat {
        let store = try space.open(path, writable: false)
        defer { try? store.close() }
        return try detect(store).format
    }

    /// The format whose signature `store` carries. A file named as a VHD or VHDX (`.vhd`, `.avhd`,
    /// `.vhdx`, `.avhdx`) that carries none is refused rather than taken as raw: a truncated image
    /// read (or resized) as raw bytes would silently be the wrong disk.
    static func detect(_ store: any ByteStore) throws -> any DiskImageFormat.Type {
        for f in formats where f.format != .raw {
            if try f.probe(store) { return f }
        }
        let named = DiskFormat.fromExtension(of: store.path)
        guard named == .raw else {
            let size = try store.size()
            let missing = named == .vhd ? "no VHD footer (cookie \"conectix\") at its end or at offset 0"
                                        : "no VHDX file identifier (\"vhdxfile\") at offset 0"
            throw DiskError.notRecognized(path: store.path.string, expected: named,
                                          reason: "\(missing) (the file has \(size) byte\(size == 1 ? "" : "s"))")
        }
        return RawFormat.self
    }

    /// Opens one image level (no parents). Use `DiskChain.open` to read through differencing chains.
    /// `format` nil detects it (signatures, and the name for VHD and VHDX files); a format given is
    /// used as it is (`.raw` opens any file as raw bytes).
    public static func openLevel(_ path: FilePath, writable: Bool = false, format: DiskFormat? = nil,
                                 in space: any StoreSpace = LocalFileSystem()) throws -> any DiskImage {
        let store = try space.open(path, writable: writable)
        do {
            let driver = try format.map(driver(for:)) ?? detect(store)
            return try driver.open(store)
        } catch {
            try? store.close()
            throw error
        }
    }

    /// Creates an image. A differencing image's parent chain is opened (read-only, in the same space)
    /// and attached, so the returned image reads through it. The file appears only complete: a failed
    /// create removes what it wrote. A staged image (`options.staged`) is made durable by its final
    /// flush only; see `StagedImage`, which also publishes it.
    public static func create(at path: FilePath, options: CreateOptions, in space: any StoreSpace = LocalFileSystem()) throws -> any DiskImage {
        let path = space.absolute(path)
        var parentChain: DiskChain?
        if options.type == .differencing {
            guard let parentPath = options.parentPath else {
                throw DiskError.invalidArgument("\(path.string): a differencing image needs a parent image")
            }
            parentChain = try DiskChain.open(space.absolute(parentPath), in: space)
            guard parentChain!.leaf.format == options.format else {
                let leafFormat = parentChain!.leaf.format
                try? parentChain?.close()
                throw DiskError.unsupported(path: path.string, reason: "a \(options.format.rawValue.uppercased()) differencing image cannot have the \(leafFormat.rawValue.uppercased()) parent \(parentPath.string); parent and child must share a format")
            }
        } else if options.parentPath != nil {
            throw DiskError.invalidArgument("\(path.string): an image with a parent is a differencing image, not \(options.type.rawValue)")
        }
        let store: any ByteStore
        do {
            store = try space.create(path)
        } catch {
            try? parentChain?.close()
            throw error
        }
        do {
            let image = try driver(for: options.format).create(on: store, options: options, parent: parentChain?.leaf)
            if !options.staged { try space.syncFolder(of: path) }
            if let parent = parentChain?.leaf, image.parent == nil { try image.attachParent(parent) }
            return image
        } catch {
            try? store.close()
            try? space.remove(path)
            try? parentChain?.close()
            throw error
        }
    }
}
