import Crypto
import Foundation
import Storage
import SystemPackage

/// SHA-256 digests as the target's files record them (lower-case hex).
public enum Digest {
    public static func sha256(_ bytes: UnsafeRawBufferPointer) -> String { hex(SHA256.hash(data: bytes)) }
    public static func sha256(_ bytes: [UInt8]) -> String { bytes.withUnsafeBytes { sha256($0) } }

    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        let table = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(64)
        for b in digest {
            out.append(table[Int(b >> 4)])
            out.append(table[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// An incremental SHA-256 over a stream (an image file read back in pieces).
    public struct Stream {
        private var hasher = SHA256()
        public init() {}
        public mutating func update(_ bytes: UnsafeRawBufferPointer) { hasher.update(bufferPointer: bytes) }
        public mutating func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { hasher.update(bufferPointer: $0) } }
        public func finish() -> String { hex(hasher.finalize()) }
    }

    /// The digest of `count` zero bytes (a hole in a disk reads as zeros; its chunk digest is this).
    public static func zeros(_ count: Int) -> String {
        if let cached = zeroCache.withLock({ $0[count] }) { return cached }
        let value = sha256([UInt8](repeating: 0, count: count))
        zeroCache.withLock { $0[count] = value }
        return value
    }
    private static let zeroCache = Mutex<[Int: String]>([:])

    /// Size and SHA-256 of a whole file in `space`, read in 8 MiB pieces: what manifests record
    /// per image file, and what verify and replication check files against.
    public static func file(_ path: FilePath, in space: any StoreSpace, progress: ProgressReporter? = nil) throws -> (size: UInt64, sha256: String) {
        let store = try space.open(path, writable: false)
        defer { try? store.close() }
        store.advise(.sequential)
        let size = try store.size()
        var hasher = Stream()
        let piece = 8 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: piece, alignment: 4096)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        while offset < size {
            let n = Int(min(UInt64(piece), size - offset))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<n])
            try store.read(into: slice, at: offset)
            hasher.update(UnsafeRawBufferPointer(slice))
            offset += UInt64(n)
            try progress?.checkCancelled()
        }
        store.advise(.dontNeed(0..<size))
        return (size, hasher.finish())
    }
}

import Synchronization
