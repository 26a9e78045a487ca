#if canImport(Glibc)
import Glibc
#endif
import CSMBClient
import Foundation
import Storage
import Synchronization
import SystemPackage

/// What an `SMBSpace`, its files and its target share: the location, the credentials, the retry
/// policy and a few idle contexts.
///
/// Every operation borrows a context for its duration (one context, one thread at a time) and gives
/// it back; an open file keeps its own until it is closed. Idle contexts are kept (up to
/// `idleLimit`) so that reading many small files (manifests, catalogs) does not log on each time.
final class SMBSession: Sendable {
    let location: SMBLocation
    let credentials: SMBCredentials
    let retry: SMBRetryPolicy
    let timeoutMilliseconds: Int32
    private let idle = Mutex<[SMBContext]>([])
    /// Whether the share has been reached once with these credentials: from then on ENOENT means
    /// "no such file" and EACCES "access denied", not "no such share" and "logon failed".
    private let shareChecked = Mutex(false)
    static let idleLimit = 4

    init(location: SMBLocation, credentials: SMBCredentials, retry: SMBRetryPolicy, timeoutMilliseconds: Int32) {
        self.location = location
        self.credentials = credentials
        self.retry = retry
        self.timeoutMilliseconds = timeoutMilliseconds
    }

    var user: String { location.user ?? credentials.username ?? "(none)" }

    /// An idle context, or a new one.
    func borrow() throws -> SMBContext {
        if let c = idle.withLock({ $0.popLast() }) { return c }
        return try SMBContext(location: location, credentials: credentials, timeoutMilliseconds: timeoutMilliseconds)
    }

    /// Returns a healthy context for reuse; beyond the limit it is freed.
    func giveBack(_ context: SMBContext) {
        let kept = idle.withLock { list -> Bool in
            guard list.count < Self.idleLimit else { return false }
            list.append(context)
            return true
        }
        if !kept { context.free() }
    }

    /// Runs one request with a context of its own. A lost connection frees the context and tries
    /// again with a fresh one, after a growing wait, up to `retry.attempts` in all (only when
    /// `idempotent`: a request whose reply was lost may have been done). The first request of the
    /// session first checks the share root, so that a wrong password or share name gets its own
    /// message. Every failure comes out as a public error naming the URL of `path`.
    ///
    /// With `keepContext` the context is not given back after success: the caller (an opened file)
    /// owns it from then on.
    func perform<R>(_ operation: String, _ path: FilePath, writing: Bool = false, idempotent: Bool = true,
                    keepContext: Bool = false, _ body: (SMBContext) throws -> R) throws -> R {
        var attempt = 1
        while true {
            let context: SMBContext
            do { context = try borrow() } catch let f as SMBCallFailure {
                throw map(f.errno, operation: operation, path: path, writing: writing, attempts: attempt)
            }
            do {
                try checkShare(context)
                let result = try body(context)
                if !keepContext { giveBack(context) }
                return result
            } catch let f as SMBCallFailure {
                if SMBRetryPolicy.isConnectionLoss(f.errno) {
                    context.free()
                    if (idempotent || f.errno == .connectionRefused) && attempt < retry.attempts {
                        attempt += 1
                        Thread.sleep(forTimeInterval: retry.delay(beforeAttempt: attempt))
                        continue
                    }
                } else {
                    giveBack(context)
                }
                throw map(f.errno, operation: f.operation, path: path, writing: writing, attempts: attempt)
            } catch {
                giveBack(context)
                throw error
            }
        }
    }

    /// Stats the share's top once per session and turns its failure into the share-level error.
    func checkShare(_ context: SMBContext) throws {
        if shareChecked.withLock({ $0 }) { return }
        let url = location.libraryURL("/")
        let result: Errno? = try context.withContext { ctx in
            var st = stat()
            return smbc_getFunctionStat(ctx)(ctx, url, &st) == 0 ? nil : Errno(rawValue: errno)
        }
        guard let e = result else {
            shareChecked.withLock { $0 = true }
            return
        }
        switch e {
        case .permissionDenied, .notPermitted:
            throw SMBError.logonFailed(share: location.shareURL, user: user)
        case .noSuchFileOrDirectory, .operationNotSupportedByDevice, .notDirectory:
            throw SMBError.shareNotFound(share: location.shareURL)
        default:
            // Connection failures are retried by `perform`, and reported as `unreachable` at the end.
            throw SMBCallFailure(errno: e, operation: "connect")
        }
    }

    /// The public error for a failed request.
    func map(_ e: Errno, operation: String, path: FilePath, writing: Bool, attempts: Int) -> Error {
        let url = location.display(path)
        switch e {
        case .noSuchFileOrDirectory:
            return StorageError.notFound(path: url)
        case .fileExists:
            return StorageError.exists(path: url)
        case .permissionDenied, .notPermitted, .readOnlyFileSystem:
            return writing || e == .readOnlyFileSystem
                ? SMBError.writeDenied(path: url, operation: operation, user: user)
                : SMBError.accessDenied(path: url, operation: operation, user: user)
        case .noSpace, .diskQuotaExceeded:
            return SMBError.diskFull(path: url)
        case .isDirectory:
            return StorageError.notAFile(path: url, kind: "folder")
        default:
            if SMBRetryPolicy.isConnectionLoss(e) {
                if !shareChecked.withLock({ $0 }) { return SMBError.unreachable(share: location.shareURL, errno: e) }
                return SMBError.connectionLost(path: url, operation: operation, attempts: attempts, errno: e)
            }
            return StorageError.io(path: url, operation: operation, errno: e)
        }
    }

    deinit {
        for c in idle.withLock({ list -> [SMBContext] in defer { list = [] }; return list }) { c.free() }
    }
}

/// Calls a libsmbclient function that returns -1 (or a negative value) on failure.
@inline(__always)
func smbCheck(_ operation: String, _ result: Int) throws {
    if result < 0 { throw SMBCallFailure(errno: Errno(rawValue: errno), operation: operation) }
}

/// An SMB share as a `StoreSpace`: the disk engine opens, creates and reads images on the share
/// through it exactly as on a local folder (a chain's parents are found by their relative locators in
/// the same share), and `SMBTarget` keeps recovery points there.
///
/// Paths are absolute paths inside the share, `/`-separated (`/BulwarkBackup/m1/...`). Every call is
/// blocking (a network round trip or several): call from a `BlockingPool` thread, never from Swift's
/// cooperative pool.
///
/// Differences from a local folder, by necessity of SMB through libsmbclient:
/// - `rename` refuses an existing destination by checking first, because libsmbclient's rename
///   deletes an existing destination. Between the check and the rename another client could create
///   the destination, which the rename would then replace: publishers avoid this by writing only
///   names they own (a version folder made by the lease holder).
/// - `flush` cannot force the server's disk: libsmbclient has no fsync (SMB2 FLUSH is not exposed).
///   Every write has been acknowledged by the server when it returns, so the data is in the
///   server's hands; it survives a crash of this host, not necessarily a power loss of the server.
/// - `syncFolder` does nothing: creates, renames and removes are done by the server when they return.
/// - A writable open takes no writer lock (SMB share modes are not exposed by libsmbclient); the
///   target's lease is what keeps two writers apart.
public struct SMBSpace: StoreSpace {
    let session: SMBSession

    /// A space on the share `location` names (its path is not used here: paths are share-absolute).
    /// Nothing is contacted until the first call.
    public init(location: SMBLocation, credentials: SMBCredentials, retry: SMBRetryPolicy = .standard, timeoutMilliseconds: Int32 = 30_000) {
        session = SMBSession(location: location, credentials: credentials, retry: retry, timeoutMilliseconds: timeoutMilliseconds)
    }

    init(session: SMBSession) { self.session = session }

    /// The location (no secrets).
    public var location: SMBLocation { session.location }

    public var name: String { session.location.shareURL }

    /// The URL of a path inside the share, for messages.
    public func url(of path: FilePath) -> String { session.location.display(absolute(path)) }

    public func open(_ path: FilePath, writable: Bool) throws -> any ByteStore {
        try SMBFile.open(absolute(path), writable: writable, session: session)
    }

    public func create(_ path: FilePath) throws -> any ByteStore {
        try SMBFile.create(absolute(path), session: session)
    }

    public func kind(of path: FilePath) -> StoreObjectKind? {
        guard let st = try? status(of: path) else { return nil }
        return Self.kind(st.st_mode)
    }

    static func kind(_ mode: mode_t) -> StoreObjectKind {
        switch mode & S_IFMT {
        case S_IFREG: return .file
        case S_IFDIR: return .directory
        case S_IFBLK: return .blockDevice
        default: return .other
        }
    }

    /// The `stat` of `path`, nil when nothing is there; other failures throw.
    public func status(of path: FilePath) throws -> Glibc.stat? {
        let p = absolute(path)
        let url = session.location.libraryURL(p)
        do {
            return try session.perform("stat", p) { context in
                try context.withContext { ctx in
                    var st = Glibc.stat()
                    try smbCheck("stat", Int(smbc_getFunctionStat(ctx)(ctx, url, &st)))
                    return st
                }
            }
        } catch StorageError.notFound {
            return nil
        }
    }

    /// Removes a file; a missing file is not an error.
    public func remove(_ path: FilePath) throws {
        let p = absolute(path)
        let url = session.location.libraryURL(p)
        do {
            try session.perform("remove", p, writing: true) { context in
                try context.withContext { ctx in try smbCheck("remove", Int(smbc_getFunctionUnlink(ctx)(ctx, url))) }
            }
        } catch StorageError.notFound {}
    }

    /// Renames `from` to `to`, refusing (`StorageError.exists`) when `to` exists: libsmbclient's
    /// rename would delete it first. See the type's notes for the race that remains.
    public func rename(_ from: FilePath, to: FilePath) throws {
        let a = absolute(from), b = absolute(to)
        if try status(of: b) != nil { throw StorageError.exists(path: url(of: b)) }
        let urlA = session.location.libraryURL(a), urlB = session.location.libraryURL(b)
        // Not retried: a rename whose reply was lost has been done, and a second one would fail or,
        // worse, find a new file under the old name.
        try session.perform("rename to \(url(of: b))", a, writing: true, idempotent: false) { context in
            try context.withContext { ctx in
                try smbCheck("rename to \(self.url(of: b))", Int(smbc_getFunctionRename(ctx)(ctx, urlA, ctx, urlB)))
            }
        }
    }

    /// Nothing to do: the server has done a create, rename or remove when the call returns.
    public func syncFolder(of path: FilePath) throws {}

    public func contents(of folder: FilePath) throws -> [String] {
        let p = absolute(folder)
        let url = session.location.libraryURL(p)
        return try session.perform("list folder", p) { context in
            try context.withContext { ctx -> [String] in
                guard let dir = smbc_getFunctionOpendir(ctx)(ctx, url) else {
                    throw SMBCallFailure(errno: Errno(rawValue: errno), operation: "list folder")
                }
                defer { _ = smbc_getFunctionClosedir(ctx)(ctx, dir) }
                var names: [String] = []
                let nameOffset = MemoryLayout<smbc_dirent>.offset(of: \smbc_dirent.name)!
                while let entry = smbc_getFunctionReaddir(ctx)(ctx, dir) {
                    // `name` is a flexible array member: read it in place, never through a copy.
                    let name = String(cString: (UnsafeRawPointer(entry) + nameOffset).assumingMemoryBound(to: CChar.self))
                    if name != "." && name != ".." { names.append(name) }
                }
                return names.sorted()
            }
        }
    }

    /// Creates a folder and the missing folders above it; an existing folder is not an error.
    public func makeFolder(_ path: FilePath) throws {
        let p = absolute(path)
        if let st = try status(of: p) {
            guard Self.kind(st.st_mode) == .directory else {
                throw StorageError.unsupported(path: url(of: p), reason: "exists and is not a folder; move it away or choose another path")
            }
            return
        }
        let parent = p.removingLastComponent()
        if parent != p, !parent.components.isEmpty { try makeFolder(parent) }
        let url = session.location.libraryURL(p)
        do {
            try session.perform("create folder", p, writing: true) { context in
                try context.withContext { ctx in try smbCheck("create folder", Int(smbc_getFunctionMkdir(ctx)(ctx, url, 0o755))) }
            }
        } catch StorageError.exists {
            // Made meanwhile (or by a retried request whose first reply was lost).
        }
    }

    /// Removes an empty folder; a missing one is not an error.
    public func removeFolder(_ path: FilePath) throws {
        let p = absolute(path)
        let url = session.location.libraryURL(p)
        do {
            try session.perform("remove folder", p, writing: true) { context in
                try context.withContext { ctx in try smbCheck("remove folder", Int(smbc_getFunctionRmdir(ctx)(ctx, url))) }
            }
        } catch StorageError.notFound {}
    }

    /// `path` as an absolute, normalized path inside the share (a relative path is taken from the top).
    public func absolute(_ path: FilePath) -> FilePath {
        (path.isAbsolute ? path : FilePath("/").pushing(path)).lexicallyNormalized()
    }

    /// The same as `absolute`: the share has no symbolic links this client follows by name.
    public func canonical(_ path: FilePath) -> FilePath { absolute(path) }

    /// Free bytes on the share where `path` would be written (statvfs of its nearest existing
    /// folder), nil when the server does not say.
    public func availableSpace(at path: FilePath) throws -> UInt64? {
        var probe = absolute(path)
        while (try? status(of: probe)) == nil {
            let up = probe.removingLastComponent()
            if up == probe || up.components.isEmpty { probe = "/"; break }
            probe = up
        }
        let p = probe
        let url = session.location.libraryURL(p)
        return try? session.perform("statvfs", p) { context in
            try context.withContext { ctx -> UInt64 in
                var sv = statvfs()
                try url.withCString { c in
                    try smbCheck("statvfs", Int(smbc_getFunctionStatVFS(ctx)(ctx, UnsafeMutablePointer(mutating: c), &sv)))
                }
                // libsmbclient fills f_bsize with the bytes per sector and f_frsize with the sectors
                // per allocation unit (seen with Samba 4.17: 512 and 2), so a unit is their product.
                let unit = UInt64(max(sv.f_bsize, 1)) * UInt64(max(sv.f_frsize, 1))
                return UInt64(sv.f_bavail) * unit
            }
        }
    }
}
