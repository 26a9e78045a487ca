import Storage
import SystemPackage

/// A store whose writes (and, if asked, reads) pass through a `TokenBucket`: the throttle sits on the
/// storage seam, as restic's limiter wraps a backend, so whatever writes through it (the replication
/// copier, a staged image, the disk engine) is paced without knowing, and the rate applies to the
/// bytes that go to the medium (on a share, the bytes on the wire).
///
/// A write is cut into the bucket's grants (at most its burst each) and each piece is written as soon
/// as its tokens are taken, so the store never lets more than the burst through at once beyond the
/// rate. Replication throttles the destination's writes; `throttleReads` also paces reads (a source
/// on the slow link).
///
/// Everything else is forwarded unchanged, the optional capabilities included (the protocol's
/// defaults would hide the wrapped store's holes, reflinks and in-kernel copies). Two deliberate
/// differences:
/// - `space` is the wrapped store's space throttled by the same bucket, so a differencing image's
///   parents, opened through it, are paced too;
/// - a `source` that is itself throttled is unwrapped before it reaches the wrapped store's
///   `cloneRange` / `copyRange`, which look for their own kind of store (a reflink between two local
///   files must still see two `BlockFile`s). A reflink moves no bytes and takes no tokens; a
///   `copyRange` takes them for every byte, however the medium copies.
///
/// Blocking, like every store: call it from a `BlockingPool` thread. `cancellation` ends a wait for
/// tokens with `OperationCancelled` (the replication job's reporter).
public final class ThrottledStore: ByteStore {
    /// The store written through.
    public let base: any ByteStore
    public let bucket: TokenBucket
    public let throttleReads: Bool
    public let cancellation: ProgressReporter?

    public init(_ base: any ByteStore, bucket: TokenBucket, throttleReads: Bool = false, cancellation: ProgressReporter? = nil) {
        self.base = base
        self.bucket = bucket
        self.throttleReads = throttleReads
        self.cancellation = cancellation
    }

    public var path: FilePath { base.path }
    public var isWritable: Bool { base.isWritable }
    public var space: any StoreSpace {
        ThrottledSpace(base.space, bucket: bucket, throttleReads: throttleReads, cancellation: cancellation)
    }

    public func size() throws -> UInt64 { try base.size() }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        guard throttleReads, buffer.count > 0 else { return try base.read(into: buffer, at: offset) }
        var done = 0
        while done < buffer.count {
            let n = try bucket.take(upTo: buffer.count - done, cancellation: cancellation)
            try base.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + n)]), at: offset + UInt64(done))
            done += n
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard buffer.count > 0 else { return try base.write(buffer, at: offset) }
        var done = 0
        while done < buffer.count {
            let n = try bucket.take(upTo: buffer.count - done, cancellation: cancellation)
            try base.write(UnsafeRawBufferPointer(rebasing: buffer[done..<(done + n)]), at: offset + UInt64(done))
            done += n
        }
    }

    public func truncate(to size: UInt64) throws { try base.truncate(to: size) }
    public func flush() throws { try base.flush() }
    public func close() throws { try base.close() }

    public func flushData() throws { try base.flushData() }
    public func punchHole(at offset: UInt64, length: UInt64) throws -> Bool { try base.punchHole(at: offset, length: length) }
    public func preallocate(at offset: UInt64, length: UInt64) throws { try base.preallocate(at: offset, length: length) }

    public func cloneRange(from source: any ByteStore, sourceOffset: UInt64, to offset: UInt64, length: UInt64) throws -> Bool {
        try base.cloneRange(from: Self.unwrap(source), sourceOffset: sourceOffset, to: offset, length: length)
    }

    /// Copies in the bucket's grants; each piece also takes the source's tokens when the source
    /// throttles its reads (the bytes cross its link too).
    public func copyRange(from source: any ByteStore, sourceOffset: UInt64, to offset: UInt64, length: UInt64,
                          buffer: UnsafeMutableRawBufferPointer) throws {
        let origin = Self.unwrap(source)
        let readBucket = (source as? ThrottledStore).flatMap { $0.throttleReads ? $0.bucket : nil }
        var done: UInt64 = 0
        while done < length {
            let n = try bucket.take(upTo: Int(min(length - done, UInt64(Int.max))), cancellation: cancellation)
            try readBucket?.take(n, cancellation: cancellation)
            try base.copyRange(from: origin, sourceOffset: sourceOffset + done, to: offset + done, length: UInt64(n), buffer: buffer)
            done += UInt64(n)
        }
    }

    public func nextData(from offset: UInt64) throws -> UInt64? { try base.nextData(from: offset) }
    public func nextHole(from offset: UInt64) throws -> UInt64 { try base.nextHole(from: offset) }
    public func allocatedBytes() throws -> UInt64 { try base.allocatedBytes() }
    public func advise(_ advice: StoreAdvice) { base.advise(advice) }
    public var allocationUnit: UInt64 { base.allocationUnit }
    public var deviceSectorSizes: (logical: Int, physical: Int)? { base.deviceSectorSizes }

    /// The innermost store under any number of throttles.
    static func unwrap(_ store: any ByteStore) -> any ByteStore {
        var current = store
        while let throttled = current as? ThrottledStore { current = throttled.base }
        return current
    }
}

/// A space whose every opened or created store is a `ThrottledStore` on one shared bucket: a
/// replication to a destination gives the copier the destination's space through this, and every
/// file it writes there shares the link's rate. Everything else is forwarded unchanged.
public struct ThrottledSpace: StoreSpace {
    public let base: any StoreSpace
    public let bucket: TokenBucket
    public let throttleReads: Bool
    public let cancellation: ProgressReporter?

    public init(_ base: any StoreSpace, bucket: TokenBucket, throttleReads: Bool = false, cancellation: ProgressReporter? = nil) {
        // A space wrapped twice in the same bucket would take tokens twice per byte.
        if let inner = base as? ThrottledSpace, inner.bucket === bucket {
            self.base = inner.base
        } else {
            self.base = base
        }
        self.bucket = bucket
        self.throttleReads = throttleReads
        self.cancellation = cancellation
    }

    private func wrap(_ store: any ByteStore) -> any ByteStore {
        ThrottledStore(store, bucket: bucket, throttleReads: throttleReads, cancellation: cancellation)
    }

    public var name: String { base.name }
    public func open(_ path: FilePath, writable: Bool) throws -> any ByteStore { wrap(try base.open(path, writable: writable)) }
    public func create(_ path: FilePath) throws -> any ByteStore { wrap(try base.create(path)) }
    public func kind(of path: FilePath) -> StoreObjectKind? { base.kind(of: path) }
    public func remove(_ path: FilePath) throws { try base.remove(path) }
    public func rename(_ from: FilePath, to: FilePath) throws { try base.rename(from, to: to) }
    public func syncFolder(of path: FilePath) throws { try base.syncFolder(of: path) }
    public func contents(of folder: FilePath) throws -> [String] { try base.contents(of: folder) }
    public func makeFolder(_ path: FilePath) throws { try base.makeFolder(path) }
    public func removeFolder(_ path: FilePath) throws { try base.removeFolder(path) }
    public func absolute(_ path: FilePath) -> FilePath { base.absolute(path) }
    public func canonical(_ path: FilePath) -> FilePath { base.canonical(path) }
    public func availableSpace(at path: FilePath) throws -> UInt64? { try base.availableSpace(at: path) }
}
