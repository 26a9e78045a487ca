import Foundation
import Storage
import SystemPackage
import Targets

/// One file copied between spaces, resumable and verified: written as `.NAME.partial` beside its
/// final name, resumed after the last whole piece an earlier run left (that piece is compared with
/// the source first), checked against the expected SHA-256, then renamed to its name (which must not
/// exist). A file whose name exists already with the expected digest counts as sent.
///
/// Three things run at once, so that a transfer costs about what its slowest part costs rather than
/// their sum: the source is read a piece ahead (`ReadAhead`), pieces are written to the destination,
/// and the destination file is read back from the start on a handle of its own (on a share, a
/// connection of its own) behind the acknowledged writes and hashed (`ReadBack`). The check still
/// hashes what the destination returns, all of it, and nothing is renamed before it matches.
struct FileTransfer {
    var source: any StoreSpace
    var from: FilePath
    var destination: any StoreSpace
    var to: FilePath
    var size: UInt64
    var sha256: String
    var pieceSize: Int
    var wrap: (@Sendable (any ByteStore) -> any ByteStore)?
    var progress: ProgressReporter?
    var cancel: ProgressReporter?
    /// Says where an interrupted copy is resumed (how much of it is kept).
    var log: (@Sendable (String) -> Void)? = nil

    struct Sent {
        var bytesSent: UInt64
        var bytesResumed: UInt64
        /// Seconds spent sending (from the first piece read to the last write acknowledged and the
        /// file closed): what a throttle bounds.
        var sendSeconds: Double = 0
        /// Seconds spent reading the copy back and checking its SHA-256.
        var verifySeconds: Double = 0
    }

    /// Bytes per read-back request (libsmbclient keeps several SMB2 reads of one request in flight).
    /// 8 MiB measured faster than 4 or 16 with the read-back beside the sending (tools/bench-smb on 2
    /// cores: the smaller piece keeps the read-back closer behind the writer, so less is left to read
    /// after the last write), and it keeps the transfer's buffers at 16 MiB.
    static let readBackPiece = 8 << 20

    var partial: FilePath { Self.partial(of: to) }

    /// The hidden name a file is written under before it is published: `.NAME.partial` beside it.
    /// Replication, seed import and the room check all look for the same name.
    static func partial(of path: FilePath) -> FilePath {
        path.removingLastComponent().appending(".\(path.lastComponent?.string ?? "file").partial")
    }

    func run() throws -> Sent {
        if destination.exists(to) {
            guard try digest(of: to, in: destination) == sha256 else {
                throw TargetError.damaged(path: to.string, reason: "a published file does not have the manifest's SHA-256; it is left as it is for inspection: remove it and replicate again")
            }
            return Sent(bytesSent: 0, bytesResumed: size)
        }
        let input = try source.open(from, writable: false)
        defer { try? input.close() }
        guard try input.size() == size else {
            throw TargetError.damaged(path: from.string, reason: "the source file is \(try input.size()) bytes; its manifest says \(size)")
        }
        input.advise(.sequential)
        var start: UInt64 = 0
        var resumed: UInt64 = 0
        var sent: UInt64 = 0
        let output: any ByteStore
        if destination.exists(partial) {
            let existing = try destination.open(partial, writable: true)
            let held = try existing.size()
            start = try resumePoint(existing, input)
            log?("\(to.lastComponent?.string ?? "file"): resuming at byte \(start) of \(size); the interrupted copy held \(held) bytes")
            resumed = start
            try existing.truncate(to: start)
            output = wrap?(existing) ?? existing
        } else {
            let created = try destination.create(partial)
            output = wrap?(created) ?? created
        }
        let sendStarted = Date()
        // The read-back runs beside the sending, on a connection of its own, trailing the acknowledged
        // writes (see `ReadBack`); the source is read a piece ahead on a thread of its own.
        let readBack = ReadBack(space: destination, path: partial, size: size, pieceSize: Self.readBackPiece, cancel: cancel)
        readBack.acknowledged(start)
        do {
            let ahead = ReadAhead(input, pieceSize: pieceSize, from: start, to: size)
            defer { ahead.finish() }
            while let piece = try ahead.next() {
                try cancel?.checkCancelled()
                try output.write(piece.bytes, at: piece.offset)
                let end = piece.offset + UInt64(piece.bytes.count)
                readBack.acknowledged(end)
                sent += UInt64(piece.bytes.count)
                progress?.report(end, of: size)
            }
            try output.flush()
            try output.close()
        } catch {
            readBack.abandon()
            try? output.close()
            throw error
        }
        let verifyStarted = Date()
        // Never published unverified: a mismatch is sent again from the start.
        let got = try readBack.digest()
        let verified = Date()
        guard got == sha256 else {
            try destination.remove(partial)
            throw TargetError.damaged(path: to.string, reason: "the copy read back with SHA-256 \(got), the manifest has \(sha256); the partial copy was removed, replicate again")
        }
        try destination.rename(partial, to: to)
        try destination.syncFolder(of: to)
        return Sent(bytesSent: sent, bytesResumed: resumed, sendSeconds: verifyStarted.timeIntervalSince(sendStarted),
                    verifySeconds: verified.timeIntervalSince(verifyStarted))
    }

    /// Where an interrupted copy continues: after its last whole piece, if that piece matches the
    /// source (0 otherwise, or when there is no whole piece).
    func resumePoint(_ existing: any ByteStore, _ input: any ByteStore) throws -> UInt64 {
        let length = min(try existing.size(), size)
        let whole = length / UInt64(pieceSize) * UInt64(pieceSize)
        guard whole > 0 else { return 0 }
        let at = whole - UInt64(pieceSize)
        let mine = try existing.read(count: pieceSize, at: at)
        let theirs = try input.read(count: pieceSize, at: at)
        return mine == theirs ? whole : 0
    }

    func digest(of path: FilePath, in space: any StoreSpace) throws -> String {
        try Digest.file(path, in: space, progress: cancel).sha256
    }
}

/// The read-back check of a file being sent: a thread of its own opens the destination file on a
/// connection of its own (an SMB store gets a context of its own) and reads it from the start, each
/// request only once the writer has said those bytes were acknowledged (`acknowledged(_:)`), and
/// hashes what the server returns. So the verify reads the server's bytes, as a pass after the
/// sending did, but overlaps the sending instead of doubling its time. Its requests are never
/// throttled (the throttle bounds what is sent).
final class ReadBack: @unchecked Sendable {
    private let condition = NSCondition()
    // Guarded by `condition`.
    private var available: UInt64 = 0
    private var stopped = false
    private var result: Result<String, any Error>?

    init(space: any StoreSpace, path: FilePath, size: UInt64, pieceSize: Int, cancel: ProgressReporter?) {
        let thread = Thread { [self] in
            let outcome = Result { try self.read(space: space, path: path, size: size, pieceSize: pieceSize, cancel: cancel) }
            condition.lock()
            result = outcome
            condition.broadcast()
            condition.unlock()
        }
        thread.name = "bulwark read-back"
        thread.start()
    }

    private func read(space: any StoreSpace, path: FilePath, size: UInt64, pieceSize: Int, cancel: ProgressReporter?) throws -> String {
        let store = try space.open(path, writable: false)
        defer { try? store.close() }
        var hasher = Digest.Stream()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: pieceSize, alignment: 4096)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        while offset < size {
            let n = Int(min(UInt64(pieceSize), size - offset))
            condition.lock()
            while available < offset + UInt64(n) && !stopped { condition.wait() }
            let stop = stopped
            condition.unlock()
            if stop { throw OperationCancelled() }
            try cancel?.checkCancelled()
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<n])
            try store.read(into: slice, at: offset)
            hasher.update(UnsafeRawBufferPointer(slice))
            offset += UInt64(n)
        }
        // Only what the writer sent: a longer file is a different file.
        let actual = try store.size()
        guard actual == size else {
            throw TargetError.damaged(path: path.string, reason: "read back \(actual) bytes after sending \(size)")
        }
        store.advise(.dontNeed(0..<size))
        return hasher.finish()
    }

    /// The first `bytes` of the file are written and acknowledged: the read-back may read them.
    func acknowledged(_ bytes: UInt64) {
        condition.lock()
        available = max(available, bytes)
        condition.broadcast()
        condition.unlock()
    }

    /// Waits for the read-back to end and returns the SHA-256 of what it read.
    func digest() throws -> String {
        condition.lock()
        while result == nil { condition.wait() }
        let r = result!
        condition.unlock()
        return try r.get()
    }

    /// The sending failed: stops the read-back and waits until it has closed its file.
    func abandon() {
        condition.lock()
        stopped = true
        condition.broadcast()
        while result == nil { condition.wait() }
        condition.unlock()
    }
}

/// Reads a store's bytes `from ..< to` in pieces, one piece ahead of the consumer, on a thread of its
/// own: the source's disk and the destination's link work at the same time. Two buffers: the one
/// handed out stays valid until the next call of `next()`.
final class ReadAhead: @unchecked Sendable {
    struct Piece {
        var offset: UInt64
        var bytes: UnsafeRawBufferPointer
    }

    private let input: any ByteStore
    private let pieceSize: Int
    private let end: UInt64
    private let buffers: [UnsafeMutableRawBufferPointer]
    private let queue = DispatchQueue(label: "bulwark.read-ahead")
    private var pending: (offset: UInt64, count: Int, slot: Int, done: DispatchSemaphore, error: Box)?
    private var nextOffset: UInt64
    private var nextSlot = 0

    final class Box: @unchecked Sendable { var error: (any Error)? }
    /// A buffer handed to the reading thread; the consumer touches it only after the read signalled.
    struct Target: @unchecked Sendable { let buffer: UnsafeMutableRawBufferPointer }

    init(_ input: any ByteStore, pieceSize: Int, from start: UInt64, to end: UInt64) {
        self.input = input
        self.pieceSize = pieceSize
        self.end = end
        self.nextOffset = start
        buffers = (0..<2).map { _ in .allocate(byteCount: pieceSize, alignment: 4096) }
        schedule()
    }

    private func schedule() {
        guard nextOffset < end else { pending = nil; return }
        let n = Int(min(UInt64(pieceSize), end - nextOffset))
        let done = DispatchSemaphore(value: 0)
        let box = Box()
        let target = Target(buffer: UnsafeMutableRawBufferPointer(rebasing: buffers[nextSlot][..<n]))
        let offset = nextOffset
        let input = self.input
        queue.async {
            do { try input.read(into: target.buffer, at: offset) } catch { box.error = error }
            done.signal()
        }
        pending = (offset, n, nextSlot, done, box)
        nextOffset += UInt64(n)
        nextSlot = 1 - nextSlot
    }

    /// The next piece (nil after the last); starts reading the one after it.
    func next() throws -> Piece? {
        guard let p = pending else { return nil }
        p.done.wait()
        pending = nil
        if let error = p.error.error { throw error }
        schedule()
        return Piece(offset: p.offset, bytes: UnsafeRawBufferPointer(rebasing: buffers[p.slot][..<p.count]))
    }

    /// Waits for a read still running, then frees the buffers.
    func finish() {
        if let p = pending { p.done.wait(); pending = nil }
        for b in buffers { b.deallocate() }
    }
}
