#if canImport(Glibc)
import Glibc
#endif
import CSMBClient
import Foundation
import Storage
import Synchronization
import SystemPackage

/// A file on an SMB share as a `ByteStore`: the disk engine reads and writes images on the share
/// through it.
///
/// The file holds a libsmbclient context of its own for its whole life (one open file = one worker =
/// one context), so files used on different threads never share a context. Calls on one file are
/// serialized by its lock (a positioned read is a seek and a read on the shared handle).
///
/// Large I/O goes out as whole requests of up to `maximumRequest` bytes; libsmbclient splits each into
/// the server's maximum read or write size and keeps several in flight.
///
/// When the connection drops, a read, write, size, truncate or flush frees the context, opens the file
/// again on a fresh context (without create or truncate flags) and repeats the request from where it
/// stopped, a bounded number of times (`SMBRetryPolicy`). Positioned writes are idempotent, so
/// repeating one whose reply was lost changes nothing.
public final class SMBFile: ByteStore, Sendable {
    public let path: FilePath
    public let isWritable: Bool
    let session: SMBSession

    /// Bytes per libsmbclient read or write call.
    public static let maximumRequest = 16 << 20

    /// Unchecked: the `SMBCFILE *` is only used under the file's lock, through its own context.
    private struct OpenState: @unchecked Sendable {
        var context: SMBContext?
        /// The `SMBCFILE *`; nil after a lost connection until the next request opens it again.
        var file: OpaquePointer?
        var closed = false
    }
    private let state: Mutex<OpenState>

    private init(path: FilePath, writable: Bool, session: SMBSession, context: SMBContext, file: OpaquePointer) {
        self.path = path
        self.isWritable = writable
        self.session = session
        self.state = Mutex(OpenState(context: context, file: file))
    }

    public var space: any StoreSpace { SMBSpace(session: session) }

    /// The file's URL, for messages.
    public var url: String { session.location.display(path) }

    static func open(_ path: FilePath, writable: Bool, session: SMBSession) throws -> SMBFile {
        try openFile(path, flags: writable ? O_RDWR : O_RDONLY, writable: writable, session: session, idempotent: true)
    }

    /// Creates a new, empty file: `StorageError.exists` when anything is there (O_CREAT|O_EXCL: the
    /// server decides, so two creators cannot both win).
    static func create(_ path: FilePath, session: SMBSession) throws -> SMBFile {
        try openFile(path, flags: O_RDWR | O_CREAT | O_EXCL, writable: true, session: session, idempotent: false)
    }

    private static func openFile(_ path: FilePath, flags: Int32, writable: Bool, session: SMBSession, idempotent: Bool) throws -> SMBFile {
        let url = session.location.libraryURL(path)
        let operation = flags & O_CREAT != 0 ? "create" : "open"
        return try session.perform(operation, path, writing: writable, idempotent: idempotent, keepContext: true) { context in
            let file = try context.withContext { ctx -> OpaquePointer in
                guard let f = smbc_getFunctionOpen(ctx)(ctx, url, flags, 0o644) else {
                    throw SMBCallFailure(errno: Errno(rawValue: errno), operation: operation)
                }
                return f
            }
            return SMBFile(path: path, writable: writable, session: session, context: context, file: file)
        }
    }

    /// Runs `body` on the open handle, opening the file again on a fresh context after a lost
    /// connection (see the type's notes). Errors come out mapped, naming the file's URL.
    private func withHandle<R>(_ operation: String, writing: Bool, data: Bool = false,
                               _ body: (UnsafeMutablePointer<SMBCCTX>, OpaquePointer) throws -> R) throws -> R {
        var result: R?
        try state.withLock { s in
            var attempt = 1
            while true {
                guard !s.closed else { throw StorageError.unsupported(path: url, reason: "\(operation) on a closed file") }
                do {
                    if s.file == nil { try reopen(&s) }
                    guard let context = s.context, let file = s.file else { continue }
                    result = try context.withContext(data: data) { ctx in try body(ctx, file) }
                    return
                } catch let f as SMBCallFailure where SMBRetryPolicy.isConnectionLoss(f.errno) && attempt < session.retry.attempts {
                    s.context?.free()
                    s.context = nil
                    s.file = nil
                    attempt += 1
                    Thread.sleep(forTimeInterval: session.retry.delay(beforeAttempt: attempt))
                } catch let f as SMBCallFailure {
                    if SMBRetryPolicy.isConnectionLoss(f.errno) {
                        s.context?.free()
                        s.context = nil
                        s.file = nil
                    }
                    throw session.map(f.errno, operation: f.operation, path: path, writing: writing, attempts: attempt)
                }
            }
        }
        return result!
    }

    /// Opens the file again after a lost connection, on a fresh context.
    private func reopen(_ s: inout OpenState) throws {
        s.context?.free()
        s.context = nil
        let context = try session.borrow()
        let url = session.location.libraryURL(path)
        let flags = isWritable ? O_RDWR : O_RDONLY
        do {
            let file = try context.withContext { ctx -> OpaquePointer in
                guard let f = smbc_getFunctionOpen(ctx)(ctx, url, flags, 0) else {
                    throw SMBCallFailure(errno: Errno(rawValue: errno), operation: "open again after a lost connection")
                }
                return f
            }
            s.context = context
            s.file = file
        } catch {
            context.free()
            throw error
        }
    }

    public func size() throws -> UInt64 {
        try withHandle("size", writing: false) { ctx, f in try Self.fileSize(ctx, f) }
    }

    private static func fileSize(_ ctx: UnsafeMutablePointer<SMBCCTX>, _ f: OpaquePointer) throws -> UInt64 {
        var st = stat()
        try smbCheck("fstat", Int(smbc_getFunctionFstat(ctx)(ctx, f, &st)))
        return UInt64(st.st_size)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        guard buffer.count > 0, let base = buffer.baseAddress else { return }
        var done = 0
        try withHandle("read", writing: false, data: true) { ctx, f in
            while done < buffer.count {
                let n = min(buffer.count - done, Self.maximumRequest)
                let position = offset + UInt64(done)
                try smbCheck("seek", Int(smbc_getFunctionLseek(ctx)(ctx, f, off_t(position), SEEK_SET)))
                let got = smbc_getFunctionRead(ctx)(ctx, f, base + done, n)
                try smbCheck("read", got)
                if got == 0 {
                    let size = try Self.fileSize(ctx, f)
                    throw StorageError.endOfFile(path: url, needed: offset + UInt64(buffer.count), actual: size)
                }
                done += got
            }
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard isWritable else { throw StorageError.readOnly(path: url) }
        guard buffer.count > 0, let base = buffer.baseAddress else { return }
        var done = 0
        try withHandle("write", writing: true, data: true) { ctx, f in
            while done < buffer.count {
                let n = min(buffer.count - done, Self.maximumRequest)
                try smbCheck("seek", Int(smbc_getFunctionLseek(ctx)(ctx, f, off_t(offset + UInt64(done)), SEEK_SET)))
                let put = smbc_getFunctionWrite(ctx)(ctx, f, base + done, n)
                try smbCheck("write", put)
                if put == 0 { throw SMBCallFailure(errno: .ioError, operation: "write (the server accepted no bytes)") }
                done += put
            }
        }
    }

    public func truncate(to size: UInt64) throws {
        guard isWritable else { throw StorageError.readOnly(path: url) }
        try withHandle("truncate", writing: true) { ctx, f in
            try smbCheck("truncate", Int(smbc_getFunctionFtruncate(ctx)(ctx, f, off_t(size))))
        }
    }

    /// What SMB through libsmbclient can do for durability: every write has been acknowledged by the
    /// server when it returned, and libsmbclient exposes no fsync (no SMB2 FLUSH). This makes one more
    /// round trip on the handle (an fstat), so that a connection that dropped after the last write is
    /// noticed here, before the caller publishes the file.
    public func flush() throws {
        _ = try withHandle("flush", writing: true) { ctx, f in try Self.fileSize(ctx, f) }
    }

    public func close() throws {
        var context: SMBContext?
        var file: OpaquePointer?
        state.withLock { s in
            guard !s.closed else { return }
            s.closed = true
            context = s.context
            file = s.file
            s.context = nil
            s.file = nil
        }
        guard let context else { return }
        guard let file else {
            context.free()
            return
        }
        var failure: Errno?
        do {
            failure = try context.withContext { ctx in smbc_getFunctionClose(ctx)(ctx, file) == 0 ? nil : Errno(rawValue: errno) }
        } catch {
            failure = .badFileDescriptor
        }
        guard let failure else {
            session.giveBack(context)
            return
        }
        context.free()
        // Writes were acknowledged one by one, so a connection lost at close loses nothing.
        if SMBRetryPolicy.isConnectionLoss(failure) { return }
        throw session.map(failure, operation: "close", path: path, writing: isWritable, attempts: 1)
    }

    deinit { try? close() }
}
