#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CLinux
import Synchronization
import SystemPackage

/// Whatever serves byte ranges of named files and nothing more: a helper process at the end of a
/// pipe (`HelperProcessSource`), and later an HTTP range server or an object store. A read-only
/// `RangeSpace` turns one into a `StoreSpace`, so the disk engine reads a chain through it.
public protocol ByteRangeSource: Sendable {
    /// A name for messages.
    var name: String { get }
    /// What `path` is and its size, or nil when nothing is there.
    func stat(_ path: FilePath) throws -> (kind: StoreObjectKind, size: UInt64)?
    /// Reads exactly `buffer.count` bytes of `path` at `offset`.
    func read(_ path: FilePath, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
    /// The names in a folder.
    func contents(of folder: FilePath) throws -> [String]
}

/// A read-only store space over a `ByteRangeSource`: what a restore needs from a medium it only reads.
public struct RangeSpace: StoreSpace {
    public let source: any ByteRangeSource
    public init(_ source: any ByteRangeSource) { self.source = source }
    public var name: String { source.name }

    public func open(_ path: FilePath, writable: Bool) throws -> any ByteStore {
        let path = absolute(path)
        guard !writable else { throw StorageError.unsupported(path: path.string, reason: "\(name) is read-only: open it read-only") }
        guard let st = try source.stat(path) else { throw StorageError.notFound(path: path.string) }
        guard st.kind == .file || st.kind == .blockDevice else {
            throw StorageError.notAFile(path: path.string, kind: st.kind == .directory ? "folder" : "special file")
        }
        return RangeStore(path: path, size: st.size, space: self)
    }

    public func create(_ path: FilePath) throws -> any ByteStore {
        throw StorageError.unsupported(path: path.string, reason: "\(name) is read-only: nothing can be created there")
    }
    public func kind(of path: FilePath) -> StoreObjectKind? { (try? source.stat(absolute(path)))??.kind }
    public func remove(_ path: FilePath) throws {
        throw StorageError.unsupported(path: path.string, reason: "\(name) is read-only: nothing can be removed there")
    }
    public func makeFolder(_ path: FilePath) throws {
        throw StorageError.unsupported(path: path.string, reason: "\(name) is read-only: cannot create a folder")
    }

    public func removeFolder(_ path: FilePath) throws {
        throw StorageError.unsupported(path: path.string, reason: "\(name) is read-only: cannot remove a folder")
    }

    public func rename(_ from: FilePath, to: FilePath) throws {
        throw StorageError.unsupported(path: from.string, reason: "\(name) is read-only: nothing can be renamed there")
    }
    public func syncFolder(of path: FilePath) throws {}
    public func contents(of folder: FilePath) throws -> [String] { try source.contents(of: absolute(folder)) }
    public func absolute(_ path: FilePath) -> FilePath {
        (path.isAbsolute ? path : FilePath("/").pushing(path)).lexicallyNormalized()
    }
    public func canonical(_ path: FilePath) -> FilePath { absolute(path) }
    public func availableSpace(at path: FilePath) throws -> UInt64? { nil }
}

/// One file of a `RangeSpace`: reads go to the source; writes are refused. It counts its reads, so
/// tests (and a future throttle) see what crossed the seam.
public final class RangeStore: ByteStore {
    public let path: FilePath
    public var isWritable: Bool { false }
    public let space: any StoreSpace
    private let fileSize: UInt64
    private let source: any ByteRangeSource
    private let counters = Mutex((reads: 0, bytes: UInt64(0)))

    init(path: FilePath, size: UInt64, space: RangeSpace) {
        self.path = path
        self.fileSize = size
        self.space = space
        self.source = space.source
    }

    /// Read calls made and bytes read so far.
    public var readCount: (reads: Int, bytes: UInt64) { counters.withLock { $0 } }

    public func size() throws -> UInt64 { fileSize }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        guard !buffer.isEmpty else { return }
        let (end, overflow) = offset.addingReportingOverflow(UInt64(buffer.count))
        guard !overflow, end <= fileSize else {
            throw StorageError.endOfFile(path: path.string, needed: overflow ? .max : end, actual: fileSize)
        }
        try source.read(path, at: offset, into: buffer)
        counters.withLock { $0.reads += 1; $0.bytes += UInt64(buffer.count) }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws { throw StorageError.readOnly(path: path.string) }
    public func truncate(to size: UInt64) throws { throw StorageError.readOnly(path: path.string) }
    public func flush() throws {}
    public func close() throws {}
}

/// A `ByteRangeSource` at the end of a pipe: a helper process (`bulwark storage serve ROOT`, or the
/// same over `ssh`) answers requests for the files under its root. One request at a time (a mutex
/// orders them); the helper ends when its input closes.
///
/// The protocol is line-based with raw payloads: `STAT <hex path>` → `OK <kind> <size>` or `NONE`;
/// `READ <hex path> <offset> <length>` → `OK <length>` and the bytes; `LIST <hex path>` →
/// `OK <count>` and one hex name per line; any failure → `ERR <errno> <message>`.
public final class HelperProcessSource: ByteRangeSource {
    public let name: String
    private let pid: pid_t
    private struct Pipes: ~Copyable {
        var toHelper: Int32
        var fromHelper: Int32
        var pending: [UInt8] = []
    }
    private let pipes: Mutex<Pipes>

    /// Starts `executable` with `arguments`; it must speak the protocol on its standard input and output.
    public init(executable: String, arguments: [String], name: String? = nil) throws {
        var toChild: [Int32] = [-1, -1], fromChild: [Int32] = [-1, -1]
        guard bulwark_pipe_cloexec(&toChild) == 0, bulwark_pipe_cloexec(&fromChild) == 0 else {
            throw StorageError.io(path: executable, operation: "pipe", errno: Errno(rawValue: errno))
        }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        var environment: [String] = []
        var e = environ
        while let p = e.pointee { environment.append(String(cString: p)); e += 1 }
        let envp = environment.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        let child = bulwark_spawn(executable, argv, envp, toChild[0], fromChild[1], 2, nil, 0, 0)
        let spawnErrno = errno
        Glibc.close(toChild[0])
        Glibc.close(fromChild[1])
        guard child > 0 else {
            Glibc.close(toChild[1]); Glibc.close(fromChild[0])
            throw StorageError.io(path: executable, operation: "start the helper", errno: Errno(rawValue: spawnErrno))
        }
        // A helper that dies must not kill us with SIGPIPE on the next request.
        signal(SIGPIPE, SIG_IGN)
        self.pid = child
        self.name = name ?? "helper \(executable) (pid \(child))"
        self.pipes = Mutex(Pipes(toHelper: toChild[1], fromHelper: fromChild[0]))
    }

    deinit {
        pipes.withLock { p in Glibc.close(p.toHelper); Glibc.close(p.fromHelper) }
        var status: Int32 = 0
        // The helper ends when its input closes; make sure of it.
        if waitpid(pid, &status, WNOHANG) == 0 {
            kill(pid, SIGKILL)
            _ = waitpid(pid, &status, 0)
        }
    }

    public func stat(_ path: FilePath) throws -> (kind: StoreObjectKind, size: UInt64)? {
        try pipes.withLock { p in
            let reply = try request(&p, "STAT \(RangeServer.hex(path.string))", path: path)
            if reply == ["NONE"] { return nil }
            guard reply.count == 3, let kind = StoreObjectKind(rawValue: String(reply[1])), let size = UInt64(reply[2]) else {
                throw protocolError(path, reply)
            }
            return (kind, size)
        }
    }

    /// Requests are at most `RangeServer.maximumRead` bytes; larger reads are split.
    public func read(_ path: FilePath, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let n = min(buffer.count - done, RangeServer.maximumRead)
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n])
            try pipes.withLock { p in
                let reply = try request(&p, "READ \(RangeServer.hex(path.string)) \(offset + UInt64(done)) \(n)", path: path)
                guard reply.count == 2, Int(reply[1]) == n else { throw protocolError(path, reply) }
                try readExactly(&p, into: piece, path: path)
            }
            done += n
        }
    }

    public func contents(of folder: FilePath) throws -> [String] {
        try pipes.withLock { p in
            let reply = try request(&p, "LIST \(RangeServer.hex(folder.string))", path: folder)
            guard reply.count == 2, let count = Int(reply[1]) else { throw protocolError(folder, reply) }
            return try (0..<count).map { _ in
                guard let name = RangeServer.unhex(try readLine(&p, path: folder)) else { throw protocolError(folder, ["bad name"]) }
                return name
            }
        }
    }

    private func protocolError(_ path: FilePath, _ reply: [Substring]) -> StorageError {
        .io(path: path.string, operation: "\(name) answered \"\(reply.joined(separator: " "))\"", errno: .protocolError)
    }

    /// Sends one request line and returns the reply line's words (`OK ...`, `NONE`), throwing for `ERR`.
    private func request(_ p: inout Pipes, _ line: String, path: FilePath) throws -> [Substring] {
        var bytes = Array((line + "\n").utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(p.toHelper, $0.baseAddress! + sent, $0.count - sent) }
            if n < 0 {
                if errno == EINTR { continue }
                throw StorageError.io(path: path.string, operation: "send a request to \(name)", errno: Errno(rawValue: errno))
            }
            sent += n
        }
        bytes.removeAll()
        let reply = try readLine(&p, path: path).split(separator: " ", maxSplits: 2)
        if reply.first == "ERR" {
            let code = reply.count > 1 ? Int32(reply[1]) ?? EIO : EIO
            let message = reply.count > 2 ? String(reply[2]) : "failed"
            if code == ENOENT { throw StorageError.notFound(path: path.string) }
            throw StorageError.io(path: path.string, operation: "\(name): \(message)", errno: Errno(rawValue: code))
        }
        return reply
    }

    private func fill(_ p: inout Pipes, path: FilePath) throws {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(p.fromHelper, $0.baseAddress, $0.count) }
            if n > 0 { p.pending += chunk[..<n]; return }
            if n < 0, errno == EINTR { continue }
            throw StorageError.io(path: path.string, operation: "read the reply of \(name) (it ended)", errno: n == 0 ? .brokenPipe : Errno(rawValue: errno))
        }
    }

    private func readLine(_ p: inout Pipes, path: FilePath) throws -> String {
        while true {
            if let nl = p.pending.firstIndex(of: 10) {
                let line = String(decoding: p.pending[..<nl], as: UTF8.self)
                p.pending.removeFirst(nl + 1)
                return line
            }
            try fill(&p, path: path)
        }
    }

    private func readExactly(_ p: inout Pipes, into buffer: UnsafeMutableRawBufferPointer, path: FilePath) throws {
        var done = 0
        while done < buffer.count {
            if p.pending.isEmpty {
                // Large payloads go straight into the caller's buffer.
                let n = Glibc.read(p.fromHelper, buffer.baseAddress! + done, buffer.count - done)
                if n > 0 { done += n; continue }
                if n < 0, errno == EINTR { continue }
                throw StorageError.io(path: path.string, operation: "read from \(name) (it ended)", errno: n == 0 ? .brokenPipe : Errno(rawValue: errno))
            }
            let n = min(p.pending.count, buffer.count - done)
            p.pending.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n]).copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[..<n])) }
            p.pending.removeFirst(n)
            done += n
        }
    }
}

/// The serving end of `HelperProcessSource`: answers requests for files under `root` (paths in
/// requests are relative to it; `..` cannot leave it) from `input` until it closes.
public enum RangeServer {
    /// The most bytes one READ request asks for.
    public static let maximumRead = 8 << 20

    public static func serve(root: FilePath, input: FileDescriptor = .standardInput, output: FileDescriptor = .standardOutput) throws {
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: maximumRead, alignment: 4096)
        defer { buffer.deallocate() }
        var open: (path: String, store: BlockFile)?
        func reply(_ line: String) throws { _ = try output.writeAll(Array((line + "\n").utf8)) }
        while true {
            guard let nl = pending.firstIndex(of: 10) else {
                let n = try chunk.withUnsafeMutableBytes { try input.read(into: $0) }
                if n == 0 { return }
                pending += chunk[..<n]
                continue
            }
            let words = String(decoding: pending[..<nl], as: UTF8.self).split(separator: " ")
            pending.removeFirst(nl + 1)
            guard words.count >= 2, let relative = unhex(String(words[1])) else { try reply("ERR \(EINVAL) bad request"); continue }
            let path = root.pushing(FilePath(relative).lexicallyNormalized().removingRoot()).lexicallyNormalized()
            guard path.starts(with: root) else { try reply("ERR \(EACCES) outside the served folder"); continue }
            do {
                switch words[0] {
                case "STAT":
                    let local = LocalFileSystem()
                    guard let kind = local.kind(of: path) else { try reply("NONE"); continue }
                    var size: UInt64 = 0
                    if kind == .file || kind == .blockDevice {
                        let f = try BlockFile.open(path, writable: false)
                        size = try f.size()
                        try f.close()
                    }
                    try reply("OK \(kind.rawValue) \(size)")
                case "READ":
                    guard words.count == 4, let offset = UInt64(words[2]), let length = Int(words[3]), length >= 0, length <= buffer.count else {
                        try reply("ERR \(EINVAL) bad read request"); continue
                    }
                    if open?.path != path.string { open = (path.string, try BlockFile.open(path, writable: false)) }
                    let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<length])
                    try open!.store.read(into: slice, at: offset)
                    try reply("OK \(length)")
                    _ = try output.writeAll(UnsafeRawBufferPointer(slice))
                case "LIST":
                    let names = try FileOps.contents(of: path)
                    try reply("OK \(names.count)")
                    for n in names { try reply(hex(n)) }
                default:
                    try reply("ERR \(EINVAL) unknown request \(words[0])")
                }
            } catch let e as StorageError {
                let code: Int32
                switch e {
                case .notFound: code = ENOENT
                case let .io(_, _, errno): code = errno.rawValue
                default: code = EIO
                }
                try reply("ERR \(code) \(e.description.split(separator: "\n").first ?? "")")
            }
        }
    }

    static func hex(_ text: String) -> String {
        text.utf8.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    static func unhex(_ text: String) -> String? {
        guard text.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        var i = text.startIndex
        while i < text.endIndex {
            let j = text.index(i, offsetBy: 2)
            guard let b = UInt8(text[i..<j], radix: 16) else { return nil }
            bytes.append(b)
            i = j
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
