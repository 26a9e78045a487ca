#if canImport(Glibc)
import Glibc
#endif
import SystemPackage
import Storage

/// A connected AF_UNIX stream socket with deadline-bounded I/O (poll + non-blocking read/write).
/// Blocking: use from a `BlockingPool` thread.
final class UnixSocket {
    enum Failure: Error {
        /// No such socket, or nobody listens (ENOENT, ECONNREFUSED, ...).
        case unavailable(String)
        case timedOut
        case closed
        case io(String, Errno)
    }

    let fd: Int32
    private var closed = false

    /// Connects to `path`, waiting at most until `deadline` (a monotonic `Clock.now()` value).
    init(connectingTo path: String, deadline: Double) throws {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard s >= 0 else { throw Failure.io("socket", Errno(rawValue: errno)) }
        fd = s
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else {
            Glibc.close(s)
            throw Failure.unavailable("socket path is longer than \(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        var rc: Int32 = -1
        while true {
            rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, len) } }
            if rc == 0 { break }
            let e = Errno(rawValue: errno)
            if e == .interrupted { continue }
            if e == .nowInProgress || e == .resourceTemporarilyUnavailable {
                // A full backlog (EAGAIN) or an in-progress connect: retry until the deadline.
                if Clock.now() >= deadline { Glibc.close(s); throw Failure.timedOut }
                if e == .nowInProgress {
                    try? Self.wait(s, events: Int16(POLLOUT), deadline: deadline)
                    var err: Int32 = 0
                    var l = socklen_t(4)
                    getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &l)
                    if err == 0 { rc = 0; break }
                    Glibc.close(s)
                    throw Failure.unavailable(String(cString: strerror(err)))
                }
                usleep(10_000)
                continue
            }
            Glibc.close(s)
            throw Failure.unavailable("\(e)")
        }
    }

    deinit { close() }

    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }

    private static func wait(_ fd: Int32, events: Int16, deadline: Double) throws {
        while true {
            let remaining = deadline - Clock.now()
            if remaining <= 0 { throw Failure.timedOut }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let rc = poll(&p, 1, Int32(min(remaining * 1000 + 1, 60_000)))
            if rc > 0 { return }
            if rc < 0, errno != EINTR { throw Failure.io("poll", Errno(rawValue: errno)) }
        }
    }

    /// Writes all of `bytes` before `deadline`.
    func send(_ bytes: [UInt8], deadline: Double) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            if n > 0 { done += n; continue }
            let e = Errno(rawValue: errno)
            if n < 0, e == .interrupted { continue }
            if n < 0, e == .resourceTemporarilyUnavailable { try Self.wait(fd, events: Int16(POLLOUT), deadline: deadline); continue }
            if e == .brokenPipe || e == .connectionReset { throw Failure.closed }
            throw Failure.io("send", e)
        }
    }

    /// Reads what is available (at least one byte) before `deadline`.
    func receive(max: Int = 4096, deadline: Double) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: max)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress!, max, 0) }
            if n > 0 { return Array(buffer[..<n]) }
            if n == 0 { throw Failure.closed }
            let e = Errno(rawValue: errno)
            if e == .interrupted { continue }
            if e == .resourceTemporarilyUnavailable { try Self.wait(fd, events: Int16(POLLIN), deadline: deadline); continue }
            if e == .connectionReset { throw Failure.closed }
            throw Failure.io("recv", e)
        }
    }
}
