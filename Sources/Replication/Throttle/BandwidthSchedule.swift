import Foundation

/// A day of the week, Monday first (as ISO weeks and the policy calendar's `mon..fri` count them).
public enum Weekday: Int, Sendable, Hashable, CaseIterable, Comparable, Codable {
    case monday = 0, tuesday, wednesday, thursday, friday, saturday, sunday

    public static func < (a: Weekday, b: Weekday) -> Bool { a.rawValue < b.rawValue }

    public var shortName: String { ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][rawValue] }
    var longName: String { ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"][rawValue] }

    /// Foundation's weekday component (1 is Sunday ... 7 is Saturday).
    init(gregorian weekday: Int) { self = Weekday(rawValue: (weekday + 5) % 7)! }

    /// Parses the policy calendar's weekday syntax: `mon`..`sun` or full names, lists `mon,wed,fri`,
    /// ranges `mon..fri`, both `sat,mon..wed`. A range never wraps (weeks start on Monday), as in
    /// the calendar events: `fri..mon` is refused with the list to write instead.
    public static func parseSet(_ text: String) throws -> Set<Weekday> {
        let fix = "use mon, tue, wed, thu, fri, sat, sun (or full names), lists sat,sun and ranges mon..fri"
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        guard !trimmed.isEmpty else { throw ThrottleSyntaxError(message: "no weekdays given", fix: fix) }
        var days = Set<Weekday>()
        for item in trimmed.split(separator: ",", omittingEmptySubsequences: false) {
            let item = item.trimmingCharacters(in: .whitespaces)
            let bounds = item.components(separatedBy: "..")
            guard bounds.count <= 2, !item.isEmpty else {
                throw ThrottleSyntaxError(message: "'\(item)' is not a weekday or a weekday range", fix: "write a range as mon..fri")
            }
            let values = try bounds.map { name -> Weekday in
                guard let day = Weekday.allCases.first(where: { $0.shortName == name || $0.longName == name }) else {
                    throw ThrottleSyntaxError(message: "'\(name)' is not a weekday", fix: fix)
                }
                return day
            }
            let low = values[0], high = values[values.count - 1]
            guard low <= high else {
                let wrapped = (Weekday.allCases.filter { $0 >= low } + Weekday.allCases.filter { $0 <= high }).map(\.shortName)
                throw ThrottleSyntaxError(message: "weekday range '\(item)' goes backwards (weeks start on Monday)",
                                          fix: "list the days instead: \(wrapped.joined(separator: ","))")
            }
            days.formUnion(Weekday.allCases.filter { $0 >= low && $0 <= high })
        }
        return days
    }

    /// `mon..fri`, `sat,sun`, `mon..wed,fri`, `mon..sun`: runs of three or more days as ranges.
    public static func format(_ days: Set<Weekday>) -> String {
        var parts: [String] = []
        var index = 0
        let all = Weekday.allCases
        while index < all.count {
            guard days.contains(all[index]) else { index += 1; continue }
            var end = index
            while end + 1 < all.count, days.contains(all[end + 1]) { end += 1 }
            if end - index >= 2 {
                parts.append("\(all[index].shortName)..\(all[end].shortName)")
            } else {
                parts.append(contentsOf: all[index...end].map(\.shortName))
            }
            index = end + 1
        }
        return parts.joined(separator: ",")
    }
}

/// A wall-clock time of day to the minute, `00:00` to `24:00` (`24:00` is the end of the day, for a
/// window's `to` only).
public struct TimeOfDay: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Minutes since midnight, 0 ... 1440.
    public let minutes: Int

    public init(hour: Int, minute: Int = 0) {
        precondition((0...24).contains(hour) && (0...59).contains(minute) && hour * 60 + minute <= 1440, "time of day out of range")
        minutes = hour * 60 + minute
    }

    public static let midnight = TimeOfDay(hour: 0)
    public static let endOfDay = TimeOfDay(hour: 24)

    public static func < (a: TimeOfDay, b: TimeOfDay) -> Bool { a.minutes < b.minutes }

    /// Parses `HH:MM` (`8:00` too), `00:00` to `24:00`.
    public init(parsing text: String) throws {
        let fix = "write a time as HH:MM, from 00:00 to 24:00, e.g. \"08:00\" (quoted in YAML)"
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let parts = trimmed.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2,
              (1...2).contains(parts[0].count), parts[1].count == 2,
              parts.allSatisfy({ $0.allSatisfy { $0.isASCII && $0.isNumber } }),
              let hour = Int(parts[0]), let minute = Int(parts[1]) else {
            throw ThrottleSyntaxError(message: "'\(trimmed)' is not a time of day", fix: fix)
        }
        guard hour <= 24, minute <= 59, hour * 60 + minute <= 1440 else {
            throw ThrottleSyntaxError(message: "time '\(trimmed)' is out of range", fix: fix)
        }
        self.init(hour: hour, minute: minute)
    }

    public var description: String { String(format: "%02d:%02d", minutes / 60, minutes % 60) }
}

/// When replication may use how much bandwidth: windows of the week with their own rate (DPM's "work
/// hours"), and one rate for the rest of the time (its "other hours", unlimited by default).
///
/// A window covers `from` up to but not including `to` on each of its days, in the wall-clock time of
/// the time zone given to `rate(at:in:)` (the host's, as the policy calendar). When `to` is before
/// `from` the window runs across midnight and belongs to the day it starts: `{days: fri, from: 22:00,
/// to: 06:00}` is Friday 22:00 to Saturday 06:00. `00:00` to `24:00` is the whole day. Where windows
/// overlap, the one listed first applies, so a narrower exception is written before the general rule.
///
/// Pure: the time is always passed in, so the schedule is tested at any instant without waiting.
public struct BandwidthSchedule: Sendable, Equatable, CustomStringConvertible {
    /// One window of the week and its rate.
    public struct Window: Sendable, Equatable, CustomStringConvertible {
        public var days: Set<Weekday>
        public var from: TimeOfDay
        public var to: TimeOfDay
        public var rate: ByteRate

        public init(days: Set<Weekday>, from: TimeOfDay, to: TimeOfDay, rate: ByteRate) {
            self.days = days
            self.from = from
            self.to = to
            self.rate = rate
        }

        /// The YAML-facing form, from the scalars of `{days: mon..fri, from: "08:00", to: "18:00",
        /// rate: 10MiB/s}` (`days` nil: every day). Errors carry the key at fault in `key`.
        public init(days: String?, from: String, to: String, rate: String) throws {
            func keyed<T>(_ key: String, _ body: () throws -> T) throws -> T {
                do { return try body() } catch var error as ThrottleSyntaxError {
                    error.key = key
                    throw error
                }
            }
            let parsedDays = try keyed("days") { try days.map(Weekday.parseSet) ?? Set(Weekday.allCases) }
            let start = try keyed("from") { try TimeOfDay(parsing: from) }
            let end = try keyed("to") { try TimeOfDay(parsing: to) }
            let parsedRate = try keyed("rate") { try ByteRate(parsing: rate) }
            guard start != .endOfDay else {
                throw ThrottleSyntaxError(message: "a window cannot start at 24:00", fix: "start it at 00:00 of the next day", key: "from")
            }
            guard start != end else {
                throw ThrottleSyntaxError(message: "window from \(start) to \(end) is empty",
                                          fix: "for the whole day write from: \"00:00\", to: \"24:00\"", key: "to")
            }
            self.init(days: parsedDays, from: start, to: end, rate: parsedRate)
        }

        /// Whether the window runs across midnight into the next day.
        public var crossesMidnight: Bool { to < from }

        /// `mon..fri 08:00-18:00 10MiB/s`.
        public var description: String { "\(Weekday.format(days)) \(from)-\(to) \(rate)" }

        /// Whether the window covers `second` (since local midnight) of a day that is `day`, given
        /// whether the day before is one of its days.
        func covers(second: Double, day: Weekday) -> Bool {
            let start = Double(from.minutes * 60), end = Double(to.minutes * 60)
            if from < to { return days.contains(day) && second >= start && second < end }
            if from == to { return false }
            let yesterday = Weekday(rawValue: (day.rawValue + 6) % 7)!
            return (days.contains(day) && second >= start) || (days.contains(yesterday) && second < end)
        }
    }

    /// The windows, first match wins.
    public var workHours: [Window]
    /// The rate outside every window.
    public var otherHours: ByteRate

    /// A schedule from parsed values (what the policy's `throttle: {work-hours, other-hours}` holds).
    public init(workHours: [Window], otherHours: ByteRate = .unlimited) {
        self.workHours = workHours
        self.otherHours = otherHours
    }

    /// One rate at every hour (`--limit RATE`, which overrides the policy's schedule).
    public static func fixed(_ rate: ByteRate) -> BandwidthSchedule { BandwidthSchedule(workHours: [], otherHours: rate) }

    /// No limit at any time.
    public static let unlimited = BandwidthSchedule.fixed(.unlimited)

    /// `mon..fri 08:00-18:00 10MiB/s; other hours unlimited`, or just the rate for a fixed schedule.
    public var description: String {
        guard !workHours.isEmpty else { return otherHours.description }
        return workHours.map(\.description).joined(separator: "; ") + "; other hours \(otherHours)"
    }

    static func calendar(_ timeZone: TimeZone) -> Calendar {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        return calendar
    }

    /// The rate that applies at `date`, in the wall-clock time of `timeZone`.
    public func rate(at date: Date, in timeZone: TimeZone) -> ByteRate {
        guard !workHours.isEmpty else { return otherHours }
        let calendar = Self.calendar(timeZone)
        let parts = calendar.dateComponents([.weekday, .hour, .minute, .second, .nanosecond], from: date)
        let second = Double((parts.hour ?? 0) * 3600 + (parts.minute ?? 0) * 60 + (parts.second ?? 0))
            + Double(parts.nanosecond ?? 0) / 1e9
        let day = Weekday(gregorian: parts.weekday ?? 2)
        return workHours.first { $0.covers(second: second, day: day) }?.rate ?? otherHours
    }

    /// The first instant after `date` at which the rate differs from the rate at `date` (a window's
    /// edge; edges where the rate stays the same, such as two adjoining windows of one rate, are
    /// skipped), or nil when the rate never changes. A throttle sleeps no further than this, so a
    /// transfer that runs into a window switches rate at its edge.
    ///
    /// Edges are wall-clock times in `timeZone`: one that does not exist on a day (skipped when the
    /// clocks go forward) takes effect at the jump; one that happens twice (clocks going back) is an
    /// edge both times, and the jump back itself is one (the wall clock may leave a window there).
    public func nextChange(after date: Date, in timeZone: TimeZone) -> Date? {
        guard !workHours.isEmpty else { return nil }
        let current = rate(at: date, in: timeZone)
        let calendar = Self.calendar(timeZone)
        let today = calendar.dateComponents([.year, .month, .day], from: date)
        guard let noon = calendar.date(from: DateComponents(year: today.year, month: today.month, day: today.day, hour: 12)) else { return nil }
        // Every edge of the days from yesterday (a window across its midnight ends today) to eight
        // days ahead (a whole week after the next day, so every weekly edge is seen once).
        var edges: [Date] = []
        func add(_ wall: DateComponents) {
            guard let edge = calendar.date(from: wall) else { return }
            let fields: Set<Calendar.Component> = [.day, .hour, .minute]
            func isWall(_ instant: Date) -> Bool {
                let local = calendar.dateComponents(fields, from: instant)
                return local.day == wall.day && local.hour == wall.hour && local.minute == wall.minute
            }
            if isWall(edge) {
                edges.append(edge)
                // The same wall time once more when the clocks go back (the repeated hour).
                for other in [edge.addingTimeInterval(-3600), edge.addingTimeInterval(3600)] where isWall(other) {
                    edges.append(other)
                }
            } else if let jump = timeZone.nextDaylightSavingTimeTransition(after: edge.addingTimeInterval(-3 * 3600)), jump <= edge {
                // Skipped when the clocks go forward: it takes effect at the jump.
                edges.append(jump)
            } else {
                edges.append(edge)
            }
        }
        for offset in -1...8 {
            guard let dayNoon = calendar.date(byAdding: .day, value: offset, to: noon) else { continue }
            let day = calendar.dateComponents([.year, .month, .day, .weekday], from: dayNoon)
            let weekday = Weekday(gregorian: day.weekday ?? 2)
            for window in workHours where window.days.contains(weekday) && window.from != window.to {
                let endDay = window.to <= window.from ? 1 : 0
                for (minutes, dayShift) in [(window.from.minutes, 0), (window.to.minutes, endDay)] {
                    let shift = dayShift + minutes / 1440
                    guard let base = shift == 0 ? dayNoon : calendar.date(byAdding: .day, value: shift, to: dayNoon) else { continue }
                    let ymd = calendar.dateComponents([.year, .month, .day], from: base)
                    add(DateComponents(year: ymd.year, month: ymd.month, day: ymd.day,
                                       hour: (minutes % 1440) / 60, minute: minutes % 60))
                }
            }
        }
        // A DST change moves the wall clock under a window: the rate may change at the jump itself.
        var transition = date
        let horizon = date.addingTimeInterval(9 * 86_400)
        while let next = timeZone.nextDaylightSavingTimeTransition(after: transition), next < horizon {
            edges.append(next)
            transition = next
        }
        edges = edges.filter { $0 > date }
        for edge in edges.sorted() where rate(at: edge, in: timeZone) != current {
            return edge
        }
        return nil
    }
}
