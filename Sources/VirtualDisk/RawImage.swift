import SystemPackage
import struct Foundation.UUID

/// A raw image: virtual byte N is file byte N. Holes in a sparse file are reported as unallocated.
public final class RawImage: DiskImage {
    public let file: BlockFile
    public var format: DiskFormat { .raw }
    public var type: DiskType { .fixed }
    public private(set) var virtualSize: UInt64
    public var logicalSectorSize: Int { 512 }
    public var physicalSectorSize: Int { 4096 }
    /// Raw images have no blocks; 1 MiB is the unit used when copying them.
    public var blockSize: Int { 1 << 20 }
    /// Raw files carry no identity; a fixed zero UUID.
    public var identity: UUID { UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)) }
    public var parentLink: ParentLink? { nil }
    public var parent: (any DiskImage)? { nil }
    public var properties: [String: String] { [:] }

    init(file: BlockFile) throws {
        self.file = file
        self.virtualSize = try file.size()
    }

    public func attachParent(_ parent: any DiskImage) throws {
        throw DiskError.unsupported(path: path.string, reason: "a raw image cannot have a parent")
    }

    public func extents(in range: Range<UInt64>) throws -> [DiskExtent] {
        var out: [DiskExtent] = []
        var pos = range.lowerBound
        while pos < range.upperBound {
            guard let data = try file.nextData(from: pos), data < range.upperBound else {
                out.append(DiskExtent(range: pos..<range.upperBound, kind: .unallocated))
                break
            }
            if data > pos { out.append(DiskExtent(range: pos..<data, kind: .unallocated)) }
            let hole = min(try file.nextHole(from: data), range.upperBound)
            out.append(DiskExtent(range: data..<hole, kind: .data(fileOffset: data)))
            pos = hole
        }
        return out
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try checkRange(offset: offset, length: buffer.count)
        try file.write(buffer, at: offset)
    }

    public func inPlaceFileOffset(forWriting range: Range<UInt64>) throws -> UInt64? {
        try checkRange(offset: range.lowerBound, length: range.count)
        return isWritable ? range.lowerBound : nil
    }

    public func flush() throws { try file.sync() }

    public func close() throws {
        if file.isWritable { try file.sync() }
        try file.close()
    }

    /// Sets the size of the raw file (growing reads as zeros).
    public func resize(to size: UInt64) throws {
        guard size <= RawFormat.maximumSize else { throw RawFormat.tooLarge(path, size) }
        try file.truncate(to: size)
        virtualSize = size
    }
}

/// The raw format driver.
public enum RawFormat: DiskImageFormat {
    public static var format: DiskFormat { .raw }
    /// The largest raw image: the largest file offset Linux has (2^63 - 1 bytes); a filesystem may
    /// allow less (ext4 16 TiB), which its own error then reports.
    public static let maximumSize = UInt64(Int64.max)

    static func tooLarge(_ path: FilePath, _ size: UInt64) -> DiskError {
        .invalidArgument("\(path.string): raw image size \(size) bytes exceeds the largest file size, \(maximumSize) bytes (8 EiB - 1)")
    }

    public static func probe(_ file: BlockFile) throws -> Bool { true }
    public static func open(_ file: BlockFile) throws -> any DiskImage { try RawImage(file: file) }
    public static func create(at path: FilePath, options: CreateOptions, parent: (any DiskImage)?) throws -> any DiskImage {
        guard options.type != .differencing else {
            throw DiskError.invalidArgument("\(path.string): raw images cannot be differencing; use .vhd or .vhdx")
        }
        guard options.virtualSize <= maximumSize else { throw tooLarge(path, options.virtualSize) }
        let file = try BlockFile.create(path)
        do {
            try file.truncate(to: options.virtualSize)
            if options.type == .fixed { try file.preallocate(at: 0, length: options.virtualSize) }
            try file.sync()
            try FileOps.syncDirectory(of: path)
            return try RawImage(file: file)
        } catch {
            try? file.close()
            throw error
        }
    }
}
