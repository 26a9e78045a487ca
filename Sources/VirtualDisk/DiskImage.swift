import Dispatch
import Synchronization
import SystemPackage
import struct Foundation.UUID
import Storage

/// The container format of an image file.
public enum DiskFormat: String, Sendable, CaseIterable, Codable {
    case vhd, vhdx, raw

    /// The format a file name implies: `.vhd`/`.avhd` → VHD, `.vhdx`/`.avhdx` → VHDX, anything else raw.
    public static func fromExtension(of path: FilePath) -> DiskFormat {
        switch path.extension?.lowercased() {
        case "vhd", "avhd": return .vhd
        case "vhdx", "avhdx": return .vhdx
        default: return .raw
        }
    }
}

/// How an image stores its blocks.
public enum DiskType: String, Sendable, CaseIterable, Codable {
    /// Every block is stored, in order.
    case fixed
    /// Blocks are allocated on first write; unallocated blocks read as zeros.
    case dynamic
    /// Blocks are allocated on first write; unallocated sectors read from the parent image.
    case differencing
}

/// What one level of a chain holds for a range of virtual bytes.
public struct DiskExtent: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        /// The bytes are stored in this image's store, starting at `fileOffset`.
        case data(fileOffset: UInt64)
        /// This level defines the bytes as zeros (without storing them).
        case zero
        /// This level holds nothing here: the bytes come from the parent, or are zeros without one.
        case unallocated
    }
    public var range: Range<UInt64>
    public var kind: Kind
    public init(range: Range<UInt64>, kind: Kind) {
        self.range = range
        self.kind = kind
    }
}

/// How a differencing image names its parent.
public struct ParentLocator: Equatable, Sendable, Codable {
    public enum Kind: String, Sendable, Codable {
        /// A path relative to the child's folder (VHD W2ru, VHDX relative_path).
        case relative
        /// An absolute path (VHD W2ku, VHDX absolute_win32_path).
        case absolute
        /// A volume path (VHDX volume_path).
        case volume
    }
    public var kind: Kind
    /// The path as stored (it may use Windows separators).
    public var path: String
    public init(kind: Kind, path: String) {
        self.kind = kind
        self.path = path
    }
}

/// What a differencing image records about its parent.
public struct ParentLink: Equatable, Sendable {
    /// The identity the parent must have (`DiskImage.identity` of the parent).
    public var expectedID: UUID
    /// Where to look, in the order the format prefers.
    public var locators: [ParentLocator]
    public init(expectedID: UUID, locators: [ParentLocator]) {
        self.expectedID = expectedID
        self.locators = locators
    }
}

/// One open level of a disk: a VHD, VHDX or raw image. All formats are used through this interface.
///
/// Reads go through the chain (a differencing image falls back to its `parent`); writes go to this
/// level only. Implementations do blocking I/O (see `BlockFile`).
public protocol DiskImage: PositionedIO, Closable {
    /// The store this level lives in (a local file, a block device, a file on a share, ...).
    var store: any ByteStore { get }
    var format: DiskFormat { get }
    var type: DiskType { get }
    /// Size of the virtual disk in bytes.
    var virtualSize: UInt64 { get }
    /// Logical sector size (512 or 4096): the unit of allocation inside a block.
    var logicalSectorSize: Int { get }
    var physicalSectorSize: Int { get }
    /// Allocation unit in bytes (VHD/VHDX block; for fixed and raw images a nominal unit).
    var blockSize: Int { get }
    /// The identity a child image records for this one (VHD unique id, VHDX DataWriteGuid).
    var identity: UUID { get }
    /// For a differencing image, what it says about its parent.
    var parentLink: ParentLink? { get }
    /// The attached parent, once `DiskChain` (or a caller) resolved it.
    var parent: (any DiskImage)? { get }
    /// Attaches the parent; the format checks it fits (sector size, virtual size).
    func attachParent(_ parent: any DiskImage) throws
    /// What this level holds over `range` (inside `0..<virtualSize`), as ordered, contiguous extents.
    func extents(in range: Range<UInt64>) throws -> [DiskExtent]
    /// Reads virtual bytes through the chain. A default implementation uses `extents(in:)`.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    /// Writes virtual bytes into this level (allocating and copying from the parent as needed).
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws
    /// Where a write of `range` would land in this file when the range is stored contiguously in place
    /// and writing it changes no metadata (inside one fully allocated block of a VHDX, anywhere in a raw
    /// image); nil otherwise. A non-nil answer starts the format's write session (a VHDX takes a new
    /// DataWriteGuid), so the caller may put the bytes there by other means (a reflink) and then `flush`.
    func inPlaceFileOffset(forWriting range: Range<UInt64>) throws -> UInt64?
    /// Where each virtual byte lives in the store, for images where writing never allocates or
    /// changes metadata (raw images, fixed images whose every block is stored), as sorted runs; nil
    /// for the others, which must be written through the format. Copy loops write such targets
    /// straight into the store, from several threads.
    func directLayout() throws -> [StoreRun]?
    /// Makes every completed write durable.
    func flush() throws
    /// Writes what the image keeps in memory (allocation tables, bitmaps) into its store, without
    /// waiting for it to be durable: afterwards the file holds its final bytes (a checksum of it can
    /// run while `flush` makes them durable). By default the same as `flush`.
    func writeBack() throws
    /// Flushes and closes the file; the object must not be used afterwards.
    func close() throws
    /// Format-specific facts for `bulwark disk info` (geometry, creator, GUIDs, ...).
    var properties: [String: String] { get }
    /// What is wrong with the file but tolerated by this open (e.g. a VHD footer checksum both copies
    /// get wrong, opened read-only), for `bulwark disk info`; `check` reports the same as problems.
    var warnings: [String] { get }
}

/// Something that must be closed, and whose close can fail: a writable image's close is its last
/// flush (and a VHDX's final header update), so a failed close is a failed operation.
public protocol Closable {
    func close() throws
}

extension Closable {
    /// Runs `body`, then closes: a failure of the close is thrown when `body` succeeded (never
    /// swallowed, as `defer { try? close() }` would), and the close is still attempted when it failed.
    public func use<T>(_ body: (Self) throws -> T) throws -> T {
        let result: T
        do { result = try body(self) } catch {
            try? close()
            throw error
        }
        try close()
        return result
    }
}

/// A run of virtual bytes stored contiguously at `fileOffset` in an image's store.
public struct StoreRun: Equatable, Sendable {
    public var range: Range<UInt64>
    public var fileOffset: UInt64
    public init(range: Range<UInt64>, fileOffset: UInt64) {
        self.range = range
        self.fileOffset = fileOffset
    }
}

extension DiskImage {
    /// Fixed images whose extents are all stored data have a direct layout; others have none.
    public func writeBack() throws { try flush() }

    public func directLayout() throws -> [StoreRun]? {
        guard type == .fixed else { return nil }
        var layout: [StoreRun] = []
        for e in coalesce(try extents(in: 0..<virtualSize)) {
            guard case .data(let offset) = e.kind else { return nil }
            layout.append(StoreRun(range: e.range, fileOffset: offset))
        }
        return layout
    }

    /// By default nothing is written in place from outside the format.
    public func inPlaceFileOffset(forWriting range: Range<UInt64>) throws -> UInt64? { nil }
    /// By default an open tolerates nothing wrong.
    public var warnings: [String] { [] }

    public var path: FilePath { store.path }
    public var isWritable: Bool { store.isWritable }
    /// The identity as a lowercase string (how records, reports and errors print it).
    public var identityString: String { identity.uuidString.lowercased() }

    /// Checks that `offset..<offset+length` lies inside the virtual disk.
    public func checkRange(offset: UInt64, length: Int) throws {
        let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
        guard !overflow, end <= virtualSize else {
            throw DiskError.outOfRange(path: path.string, offset: offset, length: UInt64(length), virtualSize: virtualSize)
        }
    }

    /// Reads through `extents(in:)`: stored data from this store, zeros, and the parent for the rest.
    /// Every format reads this way. Large stored runs are read in parallel 1 MiB pieces, up to four at
    /// once (as qemu keeps several requests in flight: a cold disk, a remote store or a device answers
    /// faster with a queue); zeros and the parent's share are done on the calling thread.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        try checkRange(offset: offset, length: buffer.count)
        guard !buffer.isEmpty else { return }
        var pieces: [(lower: Int, count: Int, fileOffset: UInt64)] = []
        let piece = 1 << 20
        for extent in try extents(in: offset..<offset + UInt64(buffer.count)) {
            let lower = Int(extent.range.lowerBound - offset)
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[lower..<lower + extent.range.count])
            switch extent.kind {
            case .data(let fileOffset):
                var done = 0
                while done < slice.count {
                    let n = min(piece, slice.count - done)
                    pieces.append((lower + done, n, fileOffset + UInt64(done)))
                    done += n
                }
            case .zero:
                slice.initializeMemory(as: UInt8.self, repeating: 0)
            case .unallocated:
                try readBelow(into: slice, at: extent.range.lowerBound)
            }
        }
        if pieces.count < 2 {
            for p in pieces { try store.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[p.lower..<p.lower + p.count]), at: p.fileOffset) }
            return
        }
        let lanes = min(pieces.count, 4)
        let failure = Mutex<(any Error)?>(nil)
        let store = self.store
        nonisolated(unsafe) let target = buffer
        let work = pieces
        DispatchQueue.concurrentPerform(iterations: lanes) { lane in
            for i in stride(from: lane, to: work.count, by: lanes) {
                let p = work[i]
                do {
                    try store.read(into: UnsafeMutableRawBufferPointer(rebasing: target[p.lower..<p.lower + p.count]), at: p.fileOffset)
                } catch {
                    failure.withLock { if $0 == nil { $0 = error } }
                }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }
    }

    /// Reads what lies below this level: the parent's bytes (zeros past a shorter parent's end), or
    /// zeros when there is no parent.
    public func readBelow(into slice: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        guard let parent, offset < parent.virtualSize else {
            slice.initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        let n = Int(min(UInt64(slice.count), parent.virtualSize - offset))
        try parent.read(into: UnsafeMutableRawBufferPointer(rebasing: slice[..<n]), at: offset)
        if n < slice.count {
            UnsafeMutableRawBufferPointer(rebasing: slice[n...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    /// The chain from this level to its base, this level first.
    public var chain: [any DiskImage] {
        var levels: [any DiskImage] = [self]
        while let p = levels.last!.parent { levels.append(p) }
        return levels
    }
}

/// Merges adjacent extents of the same kind (and contiguous file offsets) into one.
public func coalesce(_ extents: [DiskExtent]) -> [DiskExtent] {
    var out: [DiskExtent] = []
    out.reserveCapacity(extents.count)
    for e in extents where !e.range.isEmpty {
        if var last = out.last, last.range.upperBound == e.range.lowerBound {
            switch (last.kind, e.kind) {
            case (.zero, .zero), (.unallocated, .unallocated):
                last.range = last.range.lowerBound..<e.range.upperBound
                out[out.count - 1] = last
                continue
            case let (.data(a), .data(b)) where a + UInt64(last.range.count) == b:
                last.range = last.range.lowerBound..<e.range.upperBound
                out[out.count - 1] = last
                continue
            default: break
            }
        }
        out.append(e)
    }
    return out
}
