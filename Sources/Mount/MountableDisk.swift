import Storage
import SystemPackage
import Synchronization
import VirtualDisk

/// What a mount serves: a readable virtual disk of `size` bytes. Reads may come from several threads
/// (an implementation serializes them if it must). The mount owns the disk and closes it once it is
/// unmounted.
public protocol MountableDisk: AnyObject, Sendable {
    /// The virtual size in bytes.
    var size: UInt64 { get }
    /// The logical sector size (512 or 4096): partition tables count in it.
    var sectorSize: Int { get }
    /// What the disk is, for the mount table (`bulwark:NAME`) and messages: a path, a URL and version.
    var name: String { get }
    /// Fills `buffer` with the virtual bytes at `offset` (the range lies inside the disk).
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    func close() throws
}

/// A disk image chain (a leaf and its parents, opened in any `StoreSpace`: a local folder, a target's
/// share) as a `MountableDisk`. Reads are serialized: an open chain has one owner at a time.
public final class ChainDisk: MountableDisk, @unchecked Sendable {
    private let lock = Mutex<Void>(())
    /// Guarded by `lock`.
    private var chain: DiskChain?
    public let size: UInt64
    public let sectorSize: Int
    public let name: String

    /// Takes over an open chain (closed by `close`).
    public init(_ chain: DiskChain, name: String? = nil) {
        size = chain.leaf.virtualSize
        sectorSize = chain.leaf.logicalSectorSize
        self.name = name ?? chain.leaf.path.string
        self.chain = chain
    }

    /// Opens `path` with its parents, read-only, in `space` (see `DiskChain.open`).
    public convenience init(opening path: FilePath, format: DiskFormat? = nil, in space: any StoreSpace = LocalFileSystem()) throws {
        self.init(try DiskChain.open(path, writable: false, format: format, in: space), name: space.absolute(path).string)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        try lock.withLock { _ in
            guard let chain else { throw StorageError.io(path: name, operation: "read", errno: .badFileDescriptor) }
            try chain.leaf.read(into: buffer, at: offset)
        }
    }

    public func close() throws {
        let open = lock.withLock { _ -> DiskChain? in
            defer { chain = nil }
            return chain
        }
        try open?.close()
    }
}
