#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import struct Foundation.Date

/// UTC timestamps for records, logs and identifiers, formatted with `gmtime_r` rather than
/// Foundation's date formatters (which load time-zone data: about 30 ms on a cold start).
public enum Timestamp {
    /// ISO 8601 in UTC with separators, e.g. `2026-11-22T19:20:05Z`.
    public static func iso8601(_ date: Date = Date()) -> String {
        format(date, "%Y-%m-%dT%H:%M:%SZ")
    }

    /// ISO 8601 in UTC without ':' (Windows shares refuse it), sorting by time, e.g. `2026-11-22T192005Z`:
    /// the form of version and snapshot identifiers.
    public static func compact(_ date: Date = Date()) -> String {
        format(date, "%Y-%m-%dT%H%M%SZ")
    }

    private static func format(_ date: Date, _ pattern: String) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let n = strftime(&buffer, buffer.count, pattern, &parts)
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
