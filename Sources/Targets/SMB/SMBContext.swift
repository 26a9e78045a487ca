#if canImport(Glibc)
import Glibc
#endif
import CSMBClient
import Synchronization
import SystemPackage

/// One libsmbclient context (`SMBCCTX`): one connection cache, one authentication, used by one thread
/// at a time.
///
/// Why this shape: libsmbclient is not thread-safe. Each worker (an open `SMBFile`, a metadata call of
/// `SMBSpace`) holds a context of its own, and a context's own lock keeps it in one call at a time, so
/// a context may be handed between threads but is never used by two at once. Beyond that, contexts
/// share process-wide state: the loadparm and debug globals while they are created and freed, and,
/// in every call, Samba's talloc stack frames, which this build of libsamba-util keeps in a plain
/// global (it has no thread-local storage, and `smbc_thread_posix`, declared in the header, is not
/// exported). So creating, freeing and every call run under one process-wide lock: calls on
/// different contexts never overlap. A single call still moves a lot (libsmbclient keeps several
/// SMB2 reads or writes in flight within one call of many MiB), and the lock is held only for the
/// call, so workers on other threads take turns rather than wait for a whole job.
///
/// Only the context function pointers (`smbc_getFunctionOpen(ctx)`, ...) are used, never the global
/// `smbc_*` compatibility API, whose one hidden context would be shared by every thread.
public final class SMBContext: Sendable {
    /// Serializes `smbc_new_context`/`smbc_init_context`/`smbc_free_context` and every call across
    /// the process (see the type's notes). Always taken after a context's own lock, never before.
    private static let library = Mutex<Void>(())

    /// The C context and the credentials box its user data points to (released after the free).
    /// Unchecked: the pointers are only used under this context's lock and the library lock.
    private struct Handle: @unchecked Sendable {
        var ctx: UnsafeMutablePointer<SMBCCTX>?
        let auth: Unmanaged<AuthData>
    }
    private let handle: Mutex<Handle>

    /// Makes and initializes a context for `location`'s server: SMB2 and SMB3 only, no anonymous
    /// fallback, no Kerberos, the location's port, the credentials through the authentication
    /// callback, and a timeout for each request.
    public init(location: SMBLocation, credentials: SMBCredentials, timeoutMilliseconds: Int32 = 30_000) throws {
        let user = location.user ?? credentials.username ?? ""
        let domain = location.domain ?? credentials.domain ?? "WORKGROUP"
        let auth = Unmanaged.passRetained(AuthData(workgroup: domain, user: user, password: credentials.password))
        var made: UnsafeMutablePointer<SMBCCTX>?
        Self.library.withLock { _ in
            guard let ctx = smbc_new_context() else { return }
            smbc_setDebug(ctx, 0)
            smbc_setOptionDebugToStderr(ctx, 1)
            // SMB1 is refused (insecure, and Windows turned it off); a server without SMB2 fails clearly.
            smbc_setOptionProtocols(ctx, "SMB2_02", "SMB3")
            // Never fall back silently to a guest session when the password is wrong.
            smbc_setOptionNoAutoAnonymousLogin(ctx, 1)
            smbc_setOptionUseKerberos(ctx, 0)
            smbc_setOptionFallbackAfterKerberos(ctx, 1)
            if let port = location.port { smbc_setPort(ctx, port) }
            smbc_setTimeout(ctx, timeoutMilliseconds)
            smbc_setOptionUserData(ctx, auth.toOpaque())
            smbc_setFunctionAuthDataWithContext(ctx) { c, _, _, wg, wglen, un, unlen, pw, pwlen in
                guard let c, let raw = smbc_getOptionUserData(c) else { return }
                let data = Unmanaged<AuthData>.fromOpaque(raw).takeUnretainedValue()
                AuthData.copy(data.workgroup, into: wg, capacity: wglen)
                AuthData.copy(data.user, into: un, capacity: unlen)
                AuthData.copy(data.password, into: pw, capacity: pwlen)
            }
            guard smbc_init_context(ctx) != nil else {
                smbc_free_context(ctx, 1)
                return
            }
            made = ctx
        }
        guard let ctx = made else {
            let e = Errno(rawValue: errno)
            auth.release()
            throw SMBCallFailure(errno: e, operation: "create an SMB client context")
        }
        handle = Mutex(Handle(ctx: ctx, auth: auth))
    }

    /// Runs `body` with the C context, alone on it. Throws when the context was freed.
    func withContext<R>(_ body: (UnsafeMutablePointer<SMBCCTX>) throws -> R) throws -> R {
        // The result leaves through a captured variable rather than as the lock's (`sending`) result.
        var result: R?
        try handle.withLock { h in
            guard let ctx = h.ctx else { throw SMBCallFailure(errno: .badFileDescriptor, operation: "use a freed SMB context") }
            try Self.library.withLock { _ in result = try body(ctx) }
        }
        return result!
    }

    /// Frees the context (closing its files and connections). Later calls do nothing.
    func free() {
        handle.withLock { h in
            guard let ctx = h.ctx else { return }
            h.ctx = nil
            Self.library.withLock { _ in _ = smbc_free_context(ctx, 1) }
            h.auth.release()
        }
    }

    deinit { free() }
}

/// The credentials the authentication callback copies from, as C strings. A class so that the
/// context's user data can point at it; immutable, and only read under the context's lock.
final class AuthData {
    let workgroup: [CChar]
    let user: [CChar]
    let password: [CChar]

    init(workgroup: String, user: String, password: String) {
        self.workgroup = Array(workgroup.utf8CString)
        self.user = Array(user.utf8CString)
        self.password = Array(password.utf8CString)
    }

    /// Copies a NUL-terminated string into a C buffer of `capacity` bytes, truncating if needed.
    static func copy(_ source: [CChar], into buffer: UnsafeMutablePointer<CChar>?, capacity: Int32) {
        guard let buffer, capacity > 0 else { return }
        let n = min(source.count - 1, Int(capacity) - 1)
        source.withUnsafeBufferPointer { src in
            if n > 0 { buffer.update(from: src.baseAddress!, count: n) }
        }
        buffer[max(n, 0)] = 0
    }

    deinit {
        // Wipe the password copy before the memory goes back to the allocator.
        password.withUnsafeBufferPointer { p in
            if let base = p.baseAddress { memset(UnsafeMutableRawPointer(mutating: base), 0, p.count) }
        }
    }
}

/// A libsmbclient call failed with `errno`; mapped to a public error (with the URL) by `SMBSession`.
struct SMBCallFailure: Error {
    let errno: Errno
    let operation: String
}

/// How often and how patiently an SMB operation is retried after the connection dropped (reset,
/// aborted, timed out, refused while the server restarts). Each retry uses a fresh context.
public struct SMBRetryPolicy: Sendable, Equatable {
    /// Attempts in all (the first one included); at least 1.
    public var attempts: Int
    /// Wait before the second attempt; doubled for each further one.
    public var firstDelay: Double
    /// Upper bound of one wait.
    public var maximumDelay: Double

    public init(attempts: Int = 5, firstDelay: Double = 0.2, maximumDelay: Double = 3) {
        self.attempts = max(1, attempts)
        self.firstDelay = firstDelay
        self.maximumDelay = maximumDelay
    }

    public static let standard = SMBRetryPolicy()

    func delay(beforeAttempt n: Int) -> Double { min(maximumDelay, firstDelay * Double(1 << min(max(n - 2, 0), 16))) }

    /// Errnos that mean the connection (not the request) failed: worth a new connection.
    static func isConnectionLoss(_ e: Errno) -> Bool {
        switch e {
        case .connectionReset, .connectionAbort, .timedOut, .brokenPipe, .socketNotConnected, .connectionRefused,
             .noRouteToHost, .networkUnreachable, .networkDown, .networkReset, .hostIsDown:
            return true
        default:
            return false
        }
    }
}
