import Foundation
import Protection
import Testing

/// `next(after:)` and `fired(between:)` against a brute-force oracle: every minute of a few days around
/// DST changes, read with Foundation's Calendar, matched by a plain Swift predicate. The oracle's
/// rule for repeated wall times is the documented one: a wall time fires at its first occurrence only.
@Suite struct CalendarEventOracleTests {
    typealias Wall = DateComponents

    static let events: [(String, @Sendable (Wall) -> Bool)] = [
        ("mon..sat 23:05", { $0.weekday != 1 && $0.hour == 23 && $0.minute == 5 }),
        ("*:0/15", { ($0.minute ?? -1) % 15 == 0 }),
        ("02:30", { $0.hour == 2 && $0.minute == 30 }),
        ("02:00", { $0.hour == 2 && $0.minute == 0 }),
        ("03:00", { $0.hour == 3 && $0.minute == 0 }),
        ("sun 1..3:*/20", { $0.weekday == 1 && (1...3).contains($0.hour ?? -1) && ($0.minute ?? -1) % 20 == 0 }),
        ("*-*-25..31 0/3:10", { ($0.day ?? 0) >= 25 && ($0.hour ?? -1) % 3 == 0 && $0.minute == 10 }),
        ("hourly", { $0.minute == 0 }),
    ]

    /// (zone, a day before a DST change): Berlin's autumn and spring changes, and Lord Howe Island's,
    /// whose clocks move by 30 minutes.
    static let windows: [(String, String)] = [
        ("Europe/Berlin", "2026-10-24T00:00:00Z"), ("Europe/Berlin", "2027-03-27T00:00:00Z"),
        ("Australia/Lord_Howe", "2026-10-03T00:00:00Z"), ("Australia/Lord_Howe", "2027-04-03T00:00:00Z"),
        ("UTC", "2026-12-30T00:00:00Z"),
    ]

    /// The firings of `matches` in `[start, start + days)`, minute by minute.
    static func oracle(_ matches: (Wall) -> Bool, zone: TimeZone, from start: Date, days: Int) -> [Date] {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = zone
        func wall(_ date: Date) -> Wall {
            calendar.dateComponents([.year, .month, .day, .hour, .minute, .second, .weekday], from: date)
        }
        var result: [Date] = []
        for minute in 0..<(days * 1440) {
            let date = start.addingTimeInterval(Double(minute) * 60)
            let here = wall(date)
            guard here.second == 0, matches(here) else { continue }
            // Only the first occurrence of a repeated wall time fires.
            let repeated = (1...4).contains { wall(date.addingTimeInterval(-1800 * Double($0))) == here }
            if !repeated { result.append(date) }
        }
        return result
    }

    @Test(arguments: 0..<windows.count)
    func nextMatchesTheOracle(window: Int) throws {
        let (zoneName, startText) = Self.windows[window]
        guard let zone = TimeZone(identifier: zoneName) else { return }
        let start = instant(startText)
        for (text, predicate) in Self.events {
            let event = try CalendarEvent(parsing: text)
            let expected = Self.oracle(predicate, zone: zone, from: start, days: 3)
            var actual: [Date] = []
            var from = start.addingTimeInterval(-1)
            while let next = event.next(after: from, in: zone), next < start.addingTimeInterval(3 * 86_400) {
                actual.append(next)
                from = next
            }
            #expect(actual == expected, "\(text) in \(zoneName) from \(startText)")
            // fired(between:) agrees at a spread of end points.
            for hours in stride(from: 1, through: 71, by: 5) {
                let end = start.addingTimeInterval(Double(hours) * 3600 + 1234)
                let latest = expected.last { $0 <= end && $0 > start }
                #expect(event.fired(between: start, and: end, in: zone) == latest, "\(text) in \(zoneName) up to \(end)")
            }
        }
    }
}
