import SystemPackage

/// The byte-range store every image sits on (qemu's `bs->file`, restic's `Backend`): read and write
/// at an offset, size, truncate, flush. The disk formats use nothing else, so the same VHDX code reads
/// a local file, a block device, a file on an SMB share or a file served by a helper process.
///
/// Optional capabilities (hole punching, preallocation, reflinks, writeback hints, the extents of the
/// underlying file) have default implementations that report "not done" or do nothing; a format asks
/// for them and falls back without, so a store implements only what its medium can do.
///
/// Concurrency: stores are `Sendable` and their positioned reads and writes may be issued from several
/// threads at once (a copy pipeline reads on one thread while the caller writes on another), but
/// calls are blocking: make them from a thread of `BlockingPool`, never directly from Swift's
/// cooperative pool.
public protocol ByteStore: PositionedIO, Sendable {
    /// The path the store was opened with, as its space names it (used in every error message).
    var path: FilePath { get }
    /// Whether writes are allowed.
    var isWritable: Bool { get }
    /// The space the store lives in: a differencing image's parents are opened through it.
    var space: any StoreSpace { get }
    /// The store's current size in bytes.
    func size() throws -> UInt64
    /// Reads exactly `buffer.count` bytes at `offset`; reading past the end is `StorageError.endOfFile`.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    /// Writes all of `buffer` at `offset` (growing the store when writing past its end).
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws
    /// Sets the size; growing leaves a range that reads as zeros.
    func truncate(to size: UInt64) throws
    /// Makes every completed write (data and size) durable.
    func flush() throws
    /// Releases the store (and its writer's lock). Later calls do nothing.
    func close() throws

    // Optional capabilities: the defaults below say "not available".

    /// Makes completed data writes durable without necessarily the file's metadata (`fdatasync`).
    func flushData() throws
    /// Deallocates `length` bytes at `offset`, keeping the size; the range reads as zeros afterwards.
    /// Returns false when the store cannot (the caller may write zeros instead).
    func punchHole(at offset: UInt64, length: UInt64) throws -> Bool
    /// Reserves space for a range so later writes cannot fail for lack of space (best effort).
    func preallocate(at offset: UInt64, length: UInt64) throws
    /// Makes `length` bytes at `offset` share `source`'s storage at `sourceOffset` (a reflink).
    /// Returns false where the store cannot (different kinds of store, no reflink support, misaligned).
    func cloneRange(from source: any ByteStore, sourceOffset: UInt64, to offset: UInt64, length: UInt64) throws -> Bool
    /// Copies `length` bytes from `source` at `sourceOffset` to `offset`, inside the medium where it
    /// can (an in-kernel copy between local files), else through `buffer`.
    func copyRange(from source: any ByteStore, sourceOffset: UInt64, to offset: UInt64, length: UInt64,
                   buffer: UnsafeMutableRawBufferPointer) throws
    /// The next offset at or after `offset` that may hold data, or nil when only a hole follows.
    /// Stores that do not know their holes report everything as data.
    func nextData(from offset: UInt64) throws -> UInt64?
    /// The next hole at or after `offset`; the end counts as a hole.
    func nextHole(from offset: UInt64) throws -> UInt64
    /// Bytes the store occupies on its medium (less than `size()` for sparse files).
    func allocatedBytes() throws -> UInt64
    /// A hint about how a range will be used next (readahead, cache eviction, early writeback).
    func advise(_ advice: StoreAdvice)
    /// The medium's allocation unit (the unit of reflinks and holes), 4096 when unknown.
    var allocationUnit: UInt64 { get }
    /// Logical and physical sector sizes of a block device; nil for files.
    var deviceSectorSizes: (logical: Int, physical: Int)? { get }
}

/// Hints a store may use or ignore.
public enum StoreAdvice: Sendable, Equatable {
    /// The whole store will be read front to back.
    case sequential
    /// A range will be read soon: start fetching it.
    case willNeed(Range<UInt64>)
    /// A range will not be read again: its cached pages may go.
    case dontNeed(Range<UInt64>)
    /// Start writing dirty data (of a range, or of everything) to the medium without waiting, so a
    /// later flush is short.
    case startWriteback(Range<UInt64>?)
}

extension ByteStore {
    public func flushData() throws { try flush() }
    public func punchHole(at offset: UInt64, length: UInt64) throws -> Bool { false }
    public func preallocate(at offset: UInt64, length: UInt64) throws {}
    public func cloneRange(from source: any ByteStore, sourceOffset: UInt64, to offset: UInt64, length: UInt64) throws -> Bool { false }
    public func copyRange(from source: any ByteStore, sourceOffset: UInt64, to offset: UInt64, length: UInt64,
                          buffer: UnsafeMutableRawBufferPointer) throws {
        try copyThroughBuffer(from: source, sourceOffset: sourceOffset, to: offset, length: length, buffer: buffer)
    }
    public func nextData(from offset: UInt64) throws -> UInt64? { offset < (try size()) ? offset : nil }
    public func nextHole(from offset: UInt64) throws -> UInt64 { try size() }
    public func allocatedBytes() throws -> UInt64 { try size() }
    public func advise(_ advice: StoreAdvice) {}
    public var allocationUnit: UInt64 { 4096 }
    public var deviceSectorSizes: (logical: Int, physical: Int)? { nil }

    /// Writes `count` zero bytes at `offset`, in bounded chunks.
    public func writeZeros(count: UInt64, at offset: UInt64) throws {
        let chunk = Int(min(count, 1 << 20))
        guard chunk > 0 else { return }
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var done: UInt64 = 0
        while done < count {
            let n = Int(min(UInt64(chunk), count - done))
            try write(UnsafeRawBufferPointer(rebasing: zeros[..<n]), at: offset + done)
            done += UInt64(n)
        }
    }

    /// Copies `length` bytes from `source` at `sourceOffset` to this store at `offset` through
    /// `buffer`: the fallback of `copyRange`.
    public func copyThroughBuffer(from source: any ByteStore, sourceOffset: UInt64, to offset: UInt64, length: UInt64,
                                  buffer: UnsafeMutableRawBufferPointer) throws {
        var done: UInt64 = 0
        while done < length {
            let n = Int(min(UInt64(buffer.count), length - done))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<n])
            try source.read(into: slice, at: sourceOffset + done)
            try write(UnsafeRawBufferPointer(slice), at: offset + done)
            done += UInt64(n)
        }
    }
}

/// Anything read and written at byte offsets: stores (file offsets) and disk images (virtual offsets).
public protocol PositionedIO: AnyObject {
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws
}

extension PositionedIO {
    /// Reads `count` bytes at `offset` into a new array.
    public func read(count: Int, at offset: UInt64) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        return bytes
    }

    /// Writes `bytes` at `offset`.
    public func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }
}

/// What kind of object a path names, as far as opening it as a store is concerned.
public enum StoreObjectKind: String, Sendable, Codable {
    case file, blockDevice, directory, other
}

/// A namespace of stores (qemu's protocol drivers, restic's backend locations): the local filesystem,
/// an SMB share, a helper process serving files. A chain whose leaf lives in a space finds its parents
/// in the same space by their relative locators, so a chain is read straight off a share.
///
/// Paths are the space's own: absolute paths inside it, `/`-separated.
public protocol StoreSpace: Sendable {
    /// A short name for messages ("local", "smb://host/share", ...).
    var name: String { get }
    /// Opens an existing object. Only regular files and block devices are opened (a FIFO would block).
    /// A writable open takes the space's writer lock where it has one (`StorageError.busy`).
    func open(_ path: FilePath, writable: Bool) throws -> any ByteStore
    /// Creates a new, empty file; `StorageError.exists` if something is there.
    func create(_ path: FilePath) throws -> any ByteStore
    /// What `path` names, or nil when nothing is there.
    func kind(of path: FilePath) -> StoreObjectKind?
    /// Removes a file; a missing file is not an error.
    func remove(_ path: FilePath) throws
    /// Publishes `from` under `to`, durably. `to` must not exist (nothing published is ever
    /// overwritten in place); stores without rename may copy and remove.
    func rename(_ from: FilePath, to: FilePath) throws
    /// Makes a create, rename or remove in the folder holding `path` durable (a local folder's fsync;
    /// nothing where the space's own operations are durable).
    func syncFolder(of path: FilePath) throws
    /// The names in a folder (not recursive, without `.` and `..`).
    func contents(of folder: FilePath) throws -> [String]
    /// Creates a folder (and missing folders above it); an existing folder is not an error.
    func makeFolder(_ path: FilePath) throws
    /// Removes an empty folder; a missing one is not an error.
    func removeFolder(_ path: FilePath) throws
    /// `path` made absolute and normalized without touching anything (relative to the space's
    /// working folder).
    func absolute(_ path: FilePath) -> FilePath
    /// A key that is equal for two paths naming the same object (symlinks resolved where possible).
    func canonical(_ path: FilePath) -> FilePath
    /// Free bytes where `path` would be written, nil when the space cannot say.
    func availableSpace(at path: FilePath) throws -> UInt64?
}

extension StoreSpace {
    /// Whether anything exists at `path`.
    public func exists(_ path: FilePath) -> Bool { kind(of: path) != nil }
}
