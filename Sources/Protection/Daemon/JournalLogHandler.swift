#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation
import Logging
import Storage

/// A swift-log handler for the daemon and the command line.
///
/// Run by systemd (stderr is the journal's stream, `JOURNAL_STREAM`), each line is `<N>message` with
/// the syslog priority of sd-daemon(3), so `journalctl -p warning` works, and no timestamp (the journal
/// keeps its own). Otherwise lines are `2026-12-02T06:30:00Z warning [policy] message key=value`.
/// The metadata key `policy` is shown as `[policy]` before the message; other metadata follows it as
/// `key=value` (quoted when it contains a space or a quote). Every line of a multi-line message gets
/// the prefix (the journal makes one entry per line). A record is written with one `write(2)`, so
/// records of concurrent tasks never interleave.
public struct JournalLogHandler: LogHandler {
    public enum Format: Sendable, Equatable {
        /// `<N>` priority prefixes, no timestamps.
        case journal
        /// A UTC timestamp and the level name.
        case plain
    }

    public let label: String
    public let format: Format
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let write: @Sendable (String) -> Void
    private let now: @Sendable () -> Date

    /// `write` receives each record, newline included (default: standard error); `now` is the clock of
    /// the plain format's timestamps.
    public init(label: String, format: Format, write: @escaping @Sendable (String) -> Void = JournalLogHandler.writeToStandardError,
                now: @escaping @Sendable () -> Date = { Date() }) {
        self.label = label
        self.format = format
        self.write = write
        self.now = now
    }

    /// The handler for `environment`: journal format when standard error is the journal's stream.
    public init(label: String, environment: [String: String]) {
        self.init(label: label, format: Self.standardErrorIsJournal(environment: environment) ? .journal : .plain)
    }

    /// Whether standard error is the stream systemd connected to the journal: `JOURNAL_STREAM` is
    /// `DEVICE:INODE` of that stream, and matches stderr unless it was redirected since (systemd.exec(5)).
    public static func standardErrorIsJournal(environment: [String: String], descriptor: Int32 = 2) -> Bool {
        guard let value = environment["JOURNAL_STREAM"] else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(descriptor, &st) == 0 else { return false }
        return UInt64(st.st_dev) == device && UInt64(st.st_ino) == inode
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        write(Self.format(level: event.level, message: event.message.description, metadata: merged, format: format, date: now()))
    }

    /// The syslog priority of a level (sd-daemon(3) `SD_*` values).
    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// One record as written, ending in a newline.
    public static func format(level: Logger.Level, message: String, metadata: Logger.Metadata, format: Format, date: Date) -> String {
        var body = ""
        if let policy = metadata["policy"] { body += "[\(policy)] " }
        body += message
        for key in metadata.keys.sorted() where key != "policy" {
            body += " \(key)=\(quoted(metadata[key]!.description))"
        }
        let prefix: String
        switch format {
        case .journal: prefix = "<\(priority(level))>"
        case .plain: prefix = "\(Timestamp.iso8601(date)) \(level.rawValue) "
        }
        var out = ""
        for line in body.split(separator: "\n", omittingEmptySubsequences: false) {
            out += prefix + line + "\n"
        }
        return out
    }

    private static func quoted(_ value: String) -> String {
        guard value.isEmpty || value.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" || $0 == "\n" }) else { return value }
        return "\"" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n") + "\""
    }

    /// Writes `text` to file descriptor 2 in one call (retrying short writes).
    public static let writeToStandardError: @Sendable (String) -> Void = { text in
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; return }
            bytes = bytes.dropFirst(n)
        }
    }
}
