import SystemPackage
import struct Foundation.UUID
import Storage

/// A raw image: virtual byte N is file byte N. Holes in a sparse file are reported as unallocated.
public final class RawImage: DiskImage {
    public let store: any ByteStore
    public var format: DiskFormat { .raw }
    public var type: DiskType { .fixed }
    public internal(set) var virtualSize: UInt64
    /// A block device's own sector sizes; 512 and 4096 for files.
    public var logicalSectorSize: Int { store.deviceSectorSizes?.logical ?? 512 }
    public var physicalSectorSize: Int { store.deviceSectorSizes?.physical ?? 4096 }
    /// Raw images have no blocks; 1 MiB is the unit used when copying them.
    public var blockSize: Int { 1 << 20 }
    /// Raw files carry no identity; a fixed zero UUID.
    public var identity: UUID { UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)) }
    public var parentLink: ParentLink? { nil }
    public var parent: (any DiskImage)? { nil }
    public var properties: [String: String] {
        guard let sectors = store.deviceSectorSizes else { return [:] }
        return ["block device": "yes", "device sectors": "\(sectors.logical)/\(sectors.physical) bytes (logical/physical)"]
    }

    init(store: any ByteStore) throws {
        self.store = store
        self.virtualSize = try store.size()
    }

    public func attachParent(_ parent: any DiskImage) throws {
        throw DiskError.unsupported(path: path.string, reason: "a raw image cannot have a parent")
    }

    public func extents(in range: Range<UInt64>) throws -> [DiskExtent] {
        var out: [DiskExtent] = []
        var pos = range.lowerBound
        while pos < range.upperBound {
            guard let data = try store.nextData(from: pos), data < range.upperBound else {
                out.append(DiskExtent(range: pos..<range.upperBound, kind: .unallocated))
                break
            }
            if data > pos { out.append(DiskExtent(range: pos..<data, kind: .unallocated)) }
            let hole = min(try store.nextHole(from: data), range.upperBound)
            out.append(DiskExtent(range: data..<hole, kind: .data(fileOffset: data)))
            pos = hole
        }
        return out
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try checkRange(offset: offset, length: buffer.count)
        try store.write(buffer, at: offset)
    }

    public func inPlaceFileOffset(forWriting range: Range<UInt64>) throws -> UInt64? {
        try checkRange(offset: range.lowerBound, length: range.count)
        return isWritable ? range.lowerBound : nil
    }

    /// Virtual byte N is store byte N.
    public func directLayout() throws -> [StoreRun]? { [StoreRun(range: 0..<virtualSize, fileOffset: 0)] }

    public func flush() throws { try store.flush() }

    public func close() throws {
        if store.isWritable { try store.flush() }
        try store.close()
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

    public static func probe(_ store: any ByteStore) throws -> Bool { true }
    public static func open(_ store: any ByteStore) throws -> any DiskImage { try RawImage(store: store) }
    public static func create(on store: any ByteStore, options: CreateOptions, parent: (any DiskImage)?) throws -> any DiskImage {
        guard options.type != .differencing else {
            throw DiskError.invalidArgument("\(store.path.string): raw images cannot be differencing; use .vhd or .vhdx")
        }
        guard options.virtualSize <= maximumSize else { throw tooLarge(store.path, options.virtualSize) }
        try store.truncate(to: options.virtualSize)
        if options.type == .fixed { try store.preallocate(at: 0, length: options.virtualSize) }
        if !options.staged { try store.flush() }
        return try RawImage(store: store)
    }
}
