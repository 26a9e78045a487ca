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
/// in every call, Samba's talloc stack frames, which libsamba-util keeps in a plain global unless a
/// thread interface is installed (`smbc_thread_posix`, declared in the header, is not exported by
/// this build). So, before the first context, `SambaThreads` installs that interface itself (pthread
/// mutexes and thread-local keys, through `smb_thread_set_functions`, which libsamba-util exports):
/// from then on every thread has its own stack frames.
///
/// Calls then go under one process-wide reader-writer lock: creating and freeing contexts and every
/// metadata call (open, stat, rename, list, close, ...) take it exclusively; the data calls of an open
/// file (seek, read, write, fstat, on the file's own context) take it shared, so one file can be
/// written while another is read back on another connection (replication's verify trails its
/// writes), and nothing else ever overlaps. When the interface cannot be installed (the symbol is
/// missing), data calls take the lock exclusively too, as every call did before. `SMBConcurrencyTests`
/// stress this: several threads writing and reading back files on their own contexts at once, with
/// metadata calls in between, every byte checked.
///
/// Only the context function pointers (`smbc_getFunctionOpen(ctx)`, ...) are used, never the global
/// `smbc_*` compatibility API, whose one hidden context would be shared by every thread.
public final class SMBContext: Sendable {
    /// Exclusive for `smbc_new_context`/`smbc_init_context`/`smbc_free_context` and every metadata
    /// call, shared for the data calls of open files when Samba's thread interface is installed (see
    /// the type's notes). Always taken after a context's own lock, never before.
    private static let library = ReadWriteLock()

    /// Whether data calls on different contexts may overlap: Samba's thread interface is installed.
    /// Evaluated (once) before the first context is made.
    public static let concurrentData: Bool = SambaThreads.install()

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
        _ = Self.concurrentData
        Self.library.exclusive {
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

    /// Runs `body` with the C context, alone on it and alone in the library. Throws when the context
    /// was freed.
    func withContext<R>(_ body: (UnsafeMutablePointer<SMBCCTX>) throws -> R) throws -> R {
        try withContext(data: false, body)
    }

    /// Runs `body` with the C context, alone on it. With `data` (seek, read, write, fstat on an open
    /// file of this context, nothing else), other contexts' data calls may run at the same time
    /// when `concurrentData`; otherwise alone in the library.
    func withContext<R>(data: Bool, _ body: (UnsafeMutablePointer<SMBCCTX>) throws -> R) throws -> R {
        // The result leaves through a captured variable rather than as the lock's (`sending`) result.
        var result: R?
        try handle.withLock { h in
            guard let ctx = h.ctx else { throw SMBCallFailure(errno: .badFileDescriptor, operation: "use a freed SMB context") }
            if data && Self.concurrentData {
                try Self.library.shared { result = try body(ctx) }
            } else {
                try Self.library.exclusive { result = try body(ctx) }
            }
        }
        return result!
    }

    /// Frees the context (closing its files and connections). Later calls do nothing.
    func free() {
        handle.withLock { h in
            guard let ctx = h.ctx else { return }
            h.ctx = nil
            Self.library.exclusive { _ = smbc_free_context(ctx, 1) }
            h.auth.release()
        }
    }

    deinit { free() }
}

/// A pthread reader-writer lock (Synchronization has none). Never destroyed: it lives as long as the
/// process.
final class ReadWriteLock: @unchecked Sendable {
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        lock = .allocate(capacity: 1)
        lock.initialize(to: pthread_rwlock_t())
        precondition(pthread_rwlock_init(lock, nil) == 0, "pthread_rwlock_init failed")
    }

    func exclusive<R>(_ body: () throws -> R) rethrows -> R {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    func shared<R>(_ body: () throws -> R) rethrows -> R {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}

/// Samba's thread interface over pthreads (what Samba's own `SMB_THREADS_DEF_PTHREAD_IMPLEMENTATION`
/// defines): mutexes and thread-local keys, allocated and never freed (Samba makes a handful, once).
enum SambaThreads {
    /// The table Samba keeps a pointer to: it must live as long as the process.
    nonisolated(unsafe) private static let table: UnsafeMutablePointer<bulwark_smb_thread_functions> = {
        let t = UnsafeMutablePointer<bulwark_smb_thread_functions>.allocate(capacity: 1)
        t.initialize(to: bulwark_smb_thread_functions(
            create_mutex: { _, pplock, _ in
                let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
                m.initialize(to: pthread_mutex_t())
                let r = pthread_mutex_init(m, nil)
                if r != 0 { m.deallocate(); return r }
                pplock?.pointee = UnsafeMutableRawPointer(m)
                return 0
            },
            destroy_mutex: { plock, _ in
                guard let m = plock?.assumingMemoryBound(to: pthread_mutex_t.self) else { return }
                pthread_mutex_destroy(m)
                m.deallocate()
            },
            lock_mutex: { plock, type, _ in
                guard let m = plock?.assumingMemoryBound(to: pthread_mutex_t.self) else { return EINVAL }
                switch type {
                case 1: return pthread_mutex_lock(m)    // SMB_THREAD_LOCK
                case 2: return pthread_mutex_unlock(m)  // SMB_THREAD_UNLOCK
                default: return 0
                }
            },
            create_tls: { _, ppkey, _ in
                let k = UnsafeMutablePointer<pthread_key_t>.allocate(capacity: 1)
                let r = pthread_key_create(k, nil)
                if r != 0 { k.deallocate(); return r }
                ppkey?.pointee = UnsafeMutableRawPointer(k)
                return 0
            },
            destroy_tls: { pkey, _ in
                guard let p = pkey, let k = p.pointee?.assumingMemoryBound(to: pthread_key_t.self) else { return }
                pthread_key_delete(k.pointee)
                k.deallocate()
                p.pointee = nil
            },
            set_tls: { pkey, pval, _ in
                guard let k = pkey?.assumingMemoryBound(to: pthread_key_t.self) else { return EINVAL }
                return pthread_setspecific(k.pointee, pval)
            },
            get_tls: { pkey, _ in
                guard let k = pkey?.assumingMemoryBound(to: pthread_key_t.self) else { return nil }
                return pthread_getspecific(k.pointee)
            }))
        return t
    }()

    /// Installs the table; true when Samba took it. Must run before any other libsmbclient call in
    /// the process (Samba makes its thread-local key on first use: a key made without the table is
    /// a plain global forever). `BULWARK_SMB_SERIAL=1` skips it (every call alone in the library).
    static func install() -> Bool {
        if getenv("BULWARK_SMB_SERIAL").map({ String(cString: $0) }) == "1" { return false }
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "smb_thread_set_functions") else { return false }
        typealias SetFunctions = @convention(c) (UnsafePointer<bulwark_smb_thread_functions>?) -> Int32
        let set = unsafeBitCast(symbol, to: SetFunctions.self)
        return set(table) == 0
    }
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
