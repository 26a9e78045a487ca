import Foundation

/// Finding firings. The search walks local calendar days with integer civil-date arithmetic (no
/// Calendar or date formatter per step) and turns each matching wall-clock time into an instant with
/// the time zone's UTC offsets, so ten years of days cost a few thousand integer steps.
extension CalendarEvent {
    /// How far `next(after:in:)` looks before it decides the event never fires: ten years, enough for
    /// `*-02-29` (leap days can be eight years apart, 2096 to 2104).
    static let searchDays = 366 * 10 + 3

    /// The instants searched: years 1 to 9999 (as the event syntax), which also keeps every
    /// conversion to whole seconds in range whatever date a caller passes.
    static let earliest = -62_135_596_800.0
    static let latest = 253_402_300_799.0

    /// The first firing strictly after `date`, or nil if the event does not fire within ten years
    /// (`*-02-30`, a date in the past): `bulwark policy check` reports such events.
    public func next(after date: Date, in timeZone: TimeZone) -> Date? {
        let after = date.timeIntervalSince1970
        guard after.isFinite, after < Self.latest else { return nil }
        let base = Int(max(after, Self.earliest).rounded(.down))
        // Any wall time whose instant is after `date` lies at or after `date` read with the smallest
        // offset around it.
        let startWall = base + (Self.offsets(around: base, timeZone).min() ?? 0)
        let (startDay, startSecond) = Self.divide(startWall, 86_400)
        let maxYear = years.maximum
        for day in startDay...(startDay + Self.searchDays) {
            let (year, month, dayOfMonth) = Self.civil(fromDays: day)
            if let maxYear, year > maxYear { return nil }
            guard matches(day: day, year: year, month: month, dayOfMonth: dayOfMonth) else { continue }
            let floor = day == startDay ? startSecond : 0
            for hour in hours where hour * 3600 + 3599 >= floor {
                for minute in minutes where hour * 3600 + minute * 60 + 59 >= floor {
                    for second in seconds {
                        let secondOfDay = hour * 3600 + minute * 60 + second
                        guard secondOfDay >= floor else { continue }
                        if let instant = Self.instant(wall: day * 86_400 + secondOfDay, timeZone), Double(instant) > after {
                            return Date(timeIntervalSince1970: Double(instant))
                        }
                    }
                }
            }
        }
        return nil
    }

    /// The latest firing in `(start, end]`, or nil if the event did not fire in that span: a scheduler
    /// that was down from `start` to `end` runs one catch-up job for it (not one per missed firing).
    /// It looks back at most ten years from `end`, as `next(after:in:)` looks ahead.
    public func fired(between start: Date, and end: Date, in timeZone: TimeZone) -> Date? {
        guard start.timeIntervalSince1970.isFinite, end.timeIntervalSince1970.isFinite else { return nil }
        let upper = min(end.timeIntervalSince1970, Self.latest)
        let lower = max(start.timeIntervalSince1970, upper - Double(Self.searchDays) * 86_400, Self.earliest - 1)
        guard lower < upper else { return nil }
        let top = Int(upper.rounded(.down))
        let bottom = Int(lower.rounded(.down))
        // Wall times whose instant is at or before `end` lie at or before `end` read with the largest
        // offset; wall times after `start` at or after `start` read with the smallest.
        let (startDay, startSecond) = Self.divide(top + (Self.offsets(around: top, timeZone).max() ?? 0), 86_400)
        let (lastDay, _) = Self.divide(bottom + (Self.offsets(around: bottom, timeZone).min() ?? 0), 86_400)
        guard startDay >= lastDay else { return nil }
        for day in stride(from: startDay, through: lastDay, by: -1) {
            let (year, month, dayOfMonth) = Self.civil(fromDays: day)
            guard matches(day: day, year: year, month: month, dayOfMonth: dayOfMonth) else { continue }
            let ceiling = day == startDay ? startSecond : 86_399
            for hour in hours.reversed() where hour * 3600 <= ceiling {
                for minute in minutes.reversed() where hour * 3600 + minute * 60 <= ceiling {
                    for second in seconds.reversed() {
                        let secondOfDay = hour * 3600 + minute * 60 + second
                        guard secondOfDay <= ceiling,
                              let instant = Self.instant(wall: day * 86_400 + secondOfDay, timeZone),
                              Double(instant) <= upper else { continue }
                        // Instants fall as wall times fall: the first one at or before `end` is the
                        // latest firing, and if it is not after `start` nothing in the span fired.
                        return Double(instant) > lower ? Date(timeIntervalSince1970: Double(instant)) : nil
                    }
                }
            }
        }
        return nil
    }

    func matches(day: Int, year: Int, month: Int, dayOfMonth: Int) -> Bool {
        years.contains(year) && months.contains(month) && days.contains(dayOfMonth)
            && weekdays & (1 << UInt8(Self.weekday(fromDays: day))) != 0
    }

    // MARK: Civil-date arithmetic (proleptic Gregorian, days since 1970-01-01)

    /// Howard Hinnant's `civil_from_days`.
    static func civil(fromDays days: Int) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// Howard Hinnant's `days_from_civil`.
    static func days(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// 0 is Monday ... 6 is Sunday (1970-01-01 was a Thursday).
    static func weekday(fromDays days: Int) -> Int {
        ((days + 3) % 7 + 7) % 7
    }

    static func divide(_ value: Int, _ by: Int) -> (Int, Int) {
        let quotient = value >= 0 ? value / by : -((-value + by - 1) / by)
        return (quotient, value - quotient * by)
    }

    // MARK: Wall time to instant

    /// The UTC offsets in force a day either side of `second`: every offset a wall time near it can use.
    static func offsets(around second: Int, _ timeZone: TimeZone) -> [Int] {
        [second - 86_400, second, second + 86_400].map {
            timeZone.secondsFromGMT(for: Date(timeIntervalSince1970: Double($0)))
        }
    }

    /// The first instant (seconds since the epoch) whose wall-clock reading in `timeZone` is `wall`,
    /// or nil when that wall time does not exist (skipped by a DST change).
    static func instant(wall: Int, _ timeZone: TimeZone) -> Int? {
        var best: Int?
        for offset in Set(offsets(around: wall, timeZone)) {
            let candidate = wall - offset
            if timeZone.secondsFromGMT(for: Date(timeIntervalSince1970: Double(candidate))) == offset {
                best = min(best ?? candidate, candidate)
            }
        }
        return best
    }
}
