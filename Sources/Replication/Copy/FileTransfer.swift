import Foundation
import Storage
import SystemPackage
import Targets

/// One file copied between spaces, resumable and verified: written as `.NAME.partial` beside its
/// final name, resumed after the last whole piece an earlier run left (that piece is compared with
/// the source first), checked against the expected SHA-256, then renamed to its name (which must not
/// exist). A file whose name exists already with the expected digest counts as sent.
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

    struct Sent {
        var bytesSent: UInt64
        var bytesResumed: UInt64
        /// Seconds spent sending (from the first piece read to the last write acknowledged and the
        /// file closed): what a throttle bounds.
        var sendSeconds: Double = 0
        /// Seconds spent reading the copy back and checking its SHA-256.
        var verifySeconds: Double = 0
    }

    var partial: FilePath {
        to.removingLastComponent().appending(".\(to.lastComponent?.string ?? "file").partial")
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
            start = try resumePoint(existing, input)
            resumed = start
            try existing.truncate(to: start)
            output = wrap?(existing) ?? existing
        } else {
            let created = try destination.create(partial)
            output = wrap?(created) ?? created
        }
        let sendStarted = Date()
        do {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: pieceSize, alignment: 4096)
            defer { buffer.deallocate() }
            var offset = start
            while offset < size {
                try cancel?.checkCancelled()
                let n = Int(min(UInt64(pieceSize), size - offset))
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[..<n])
                try input.read(into: piece, at: offset)
                try output.write(UnsafeRawBufferPointer(piece), at: offset)
                offset += UInt64(n)
                sent += UInt64(n)
                progress?.report(offset, of: size)
            }
            try output.flush()
            try output.close()
        } catch {
            try? output.close()
            throw error
        }
        let verifyStarted = Date()
        // Never published unverified: a mismatch is sent again from the start.
        let got = try digest(of: partial, in: destination)
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
