#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Protection
import Synchronization

/// An AF_UNIX datagram socket bound at a path (or an abstract name, `@name`): systemd's side of
/// `NOTIFY_SOCKET`.
final class DatagramReceiver: Sendable {
    let fd: Int32
    /// What to put in `NOTIFY_SOCKET`.
    let address: String

    init(_ address: String) throws {
        self.address = address
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(address.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in raw.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard rc == 0 else { close(fd); throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    }

    deinit { close(fd) }

    /// The next datagram, waiting at most `timeout` seconds.
    func receive(timeout: Double = 5) -> String? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(timeout * 1000)) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        return n < 0 ? nil : String(decoding: buffer[..<n], as: UTF8.self)
    }

    /// Every datagram waiting now.
    func drain() -> [String] {
        var out: [String] = []
        while let m = receive(timeout: 0) { out.append(m) }
        return out
    }
}

/// Virtual time running `factor` times faster than real time from `start`, once `release()` is called
/// (until then it stands still, so a slow start-up on a busy machine does not eat virtual time).
final class FastClock: Sendable {
    let start: Date
    let factor: Double
    private let origin = Mutex<ContinuousClock.Instant?>(nil)

    init(start: Date, factor: Double = 1000) {
        self.start = start
        self.factor = factor
    }

    func release() { origin.withLock { $0 = $0 ?? ContinuousClock.now } }

    var now: Date {
        guard let origin = origin.withLock({ $0 }) else { return start }
        let elapsed = ContinuousClock.now - origin
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return start.addingTimeInterval(seconds * factor)
    }

    var daemonClock: DaemonClock {
        DaemonClock(now: { self.now }, sleep: { try await self.sleep($0) })
    }

    /// Sleeps `seconds` of virtual time (waking early is fine: the daemon looks at `now` again).
    func sleep(_ seconds: TimeInterval) async throws { try await Task.sleep(for: .seconds(seconds / factor)) }
}

/// Log records written by a `JournalLogHandler`, kept for the test to read.
final class LogCapture: Sendable {
    private let lines = Mutex<[String]>([])

    func logger(_ format: JournalLogHandler.Format = .plain, level: Logger.Level = .debug) -> Logger {
        var logger = Logger(label: "test") { [self] label in
            JournalLogHandler(label: label, format: format, write: { text in self.lines.withLock { $0.append(text) } })
        }
        logger.logLevel = level
        return logger
    }

    var text: String { lines.withLock { $0.joined() } }
}

/// Polls `condition` until it holds or `timeout` real seconds pass.
func eventually(_ timeout: Double = 10, _ condition: () throws -> Bool) async rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return try condition()
}
