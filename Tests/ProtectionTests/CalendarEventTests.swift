import Foundation
import Protection
import Testing

/// An instant written with its offset, so each expectation reads as the wall time it means.
func instant(_ text: String) -> Date {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    guard let date = formatter.date(from: text) else { fatalError("bad test date \(text)") }
    return date
}

let utc = TimeZone(identifier: "UTC") ?? TimeZone(secondsFromGMT: 0)!
let berlin = TimeZone(identifier: "Europe/Berlin")!

/// The next `count` firings after `start`.
func firings(_ text: String, after start: String, count: Int, in zone: TimeZone = utc) throws -> [Date] {
    let event = try CalendarEvent(parsing: text)
    var result: [Date] = []
    var from = instant(start)
    for _ in 0..<count {
        guard let next = event.next(after: from, in: zone) else { break }
        result.append(next)
        from = next
    }
    return result
}

@Suite struct CalendarEventTests {
    @Test func weekdayRangeWithTime() throws {
        // 2026-12-02 is a Wednesday; Sunday is skipped; the start instant itself never fires.
        #expect(try firings("mon..sat 23:05", after: "2026-12-02T12:00:00Z", count: 5) == [
            instant("2026-12-02T23:05:00Z"), instant("2026-12-03T23:05:00Z"), instant("2026-12-04T23:05:00Z"),
            instant("2026-12-05T23:05:00Z"), instant("2026-12-07T23:05:00Z"),
        ])
        #expect(try firings("mon..sat 23:05", after: "2026-12-05T23:05:00Z", count: 1) == [instant("2026-12-07T23:05:00Z")])
    }

    @Test func weekdayListsAndFullNames() throws {
        #expect(try firings("mon,wed,fri 08:00", after: "2026-12-02T08:00:00Z", count: 3) == [
            instant("2026-12-04T08:00:00Z"), instant("2026-12-07T08:00:00Z"), instant("2026-12-09T08:00:00Z"),
        ])
        #expect(try firings("Saturday 12:00", after: "2026-12-02T00:00:00Z", count: 2) == [
            instant("2026-12-05T12:00:00Z"), instant("2026-12-12T12:00:00Z"),
        ])
        #expect(try firings("sun", after: "2026-12-02T00:00:00Z", count: 1) == [instant("2026-12-06T00:00:00Z")])
        #expect(try firings("Mon..Tue,fri 06:30", after: "2026-12-04T07:00:00Z", count: 3) == [
            instant("2026-12-07T06:30:00Z"), instant("2026-12-08T06:30:00Z"), instant("2026-12-11T06:30:00Z"),
        ])
    }

    @Test func timeListsRangesAndRepetitions() throws {
        #expect(try firings("*:0/15", after: "2026-12-02T10:07:00Z", count: 4) == [
            instant("2026-12-02T10:15:00Z"), instant("2026-12-02T10:30:00Z"), instant("2026-12-02T10:45:00Z"), instant("2026-12-02T11:00:00Z"),
        ])
        #expect(try firings("*:*/20", after: "2026-12-02T10:41:00Z", count: 2) == [instant("2026-12-02T11:00:00Z"), instant("2026-12-02T11:20:00Z")])
        #expect(try firings("8..18:00,30", after: "2026-12-02T18:00:00Z", count: 3) == [
            instant("2026-12-02T18:30:00Z"), instant("2026-12-03T08:00:00Z"), instant("2026-12-03T08:30:00Z"),
        ])
        #expect(try firings("0/2:00", after: "2026-12-02T21:00:00Z", count: 3) == [
            instant("2026-12-02T22:00:00Z"), instant("2026-12-03T00:00:00Z"), instant("2026-12-03T02:00:00Z"),
        ])
        #expect(try firings("8..16/4:15", after: "2026-12-02T13:00:00Z", count: 3) == [
            instant("2026-12-02T16:15:00Z"), instant("2026-12-03T08:15:00Z"), instant("2026-12-03T12:15:00Z"),
        ])
        #expect(try firings("12:00:30", after: "2026-12-02T12:00:30Z", count: 1) == [instant("2026-12-03T12:00:30Z")])
        #expect(try firings("*:*:0/20", after: "2026-12-02T12:00:50Z", count: 2) == [instant("2026-12-02T12:01:00Z"), instant("2026-12-02T12:01:20Z")])
        // A fraction of a second after a firing is after it.
        let event = try CalendarEvent(parsing: "*:*:*")
        #expect(event.next(after: instant("2026-12-02T12:00:00Z").addingTimeInterval(0.5), in: utc) == instant("2026-12-02T12:00:01Z"))
    }

    @Test func dates() throws {
        #expect(try firings("*-*-01 02:00", after: "2026-12-02T00:00:00Z", count: 3) == [
            instant("2027-01-01T02:00:00Z"), instant("2027-02-01T02:00:00Z"), instant("2027-03-01T02:00:00Z"),
        ])
        #expect(try firings("2030-06-15 10:00", after: "2026-12-02T00:00:00Z", count: 2) == [instant("2030-06-15T10:00:00Z")])
        #expect(try firings("*-02-29", after: "2026-12-02T00:00:00Z", count: 2) == [instant("2028-02-29T00:00:00Z"), instant("2032-02-29T00:00:00Z")])
        #expect(try firings("12-24..26 18:00", after: "2026-12-25T19:00:00Z", count: 2) == [instant("2026-12-26T18:00:00Z"), instant("2027-12-24T18:00:00Z")])
        #expect(try firings("*-*-1/10 00:00", after: "2026-12-02T00:00:00Z", count: 4) == [
            instant("2026-12-11T00:00:00Z"), instant("2026-12-21T00:00:00Z"), instant("2026-12-31T00:00:00Z"), instant("2027-01-01T00:00:00Z"),
        ])
        // Weekday and date must both match: Friday the 13th.
        #expect(try firings("fri *-*-13 09:00", after: "2026-12-02T00:00:00Z", count: 2) == [instant("2027-08-13T09:00:00Z"), instant("2028-10-13T09:00:00Z")])
        // The leap day of a century that skips it is eight years after the previous one.
        #expect(try firings("*-02-29 00:00", after: "2096-03-01T00:00:00Z", count: 1) == [instant("2104-02-29T00:00:00Z")])
    }

    @Test func shorthands() throws {
        let after = "2026-12-02T10:07:30Z"
        #expect(try firings("minutely", after: after, count: 1) == [instant("2026-12-02T10:08:00Z")])
        #expect(try firings("hourly", after: after, count: 1) == [instant("2026-12-02T11:00:00Z")])
        #expect(try firings("daily", after: after, count: 1) == [instant("2026-12-03T00:00:00Z")])
        #expect(try firings("weekly", after: after, count: 1) == [instant("2026-12-07T00:00:00Z")])
        #expect(try firings("monthly", after: after, count: 1) == [instant("2027-01-01T00:00:00Z")])
        #expect(try firings("yearly", after: after, count: 1) == [instant("2027-01-01T00:00:00Z")])
        #expect(try firings("quarterly", after: after, count: 2) == [instant("2027-01-01T00:00:00Z"), instant("2027-04-01T00:00:00Z")])
        #expect(try CalendarEvent(parsing: " Daily ").text == " Daily ")
    }

    @Test func neverFiring() throws {
        let now = instant("2026-12-02T00:00:00Z")
        let never = try ["*-02-30 00:00", "*-04-31", "2020-01-01 00:00", "2026-12-01 23:00"].map { try CalendarEvent(parsing: $0) }
        let always = try CalendarEvent(parsing: "*:*:*")
        let elapsed = ContinuousClock().measure {
            for event in never { #expect(event.next(after: now, in: event.text == "*-04-31" ? berlin : utc) == nil, "\(event)") }
            #expect(always.next(after: now, in: utc) == now.addingTimeInterval(1))
        }
        #expect(elapsed < .seconds(1), "a never-firing event is found out quickly (\(elapsed))")
        // Dates far outside the calendar neither trap nor loop.
        #expect(always.next(after: Date(timeIntervalSince1970: 1e300), in: utc) == nil)
        #expect(always.next(after: .distantPast, in: utc) != nil)
        #expect(never[0].fired(between: Date(timeIntervalSince1970: -1e300), and: Date(timeIntervalSince1970: 1e300), in: utc) == nil)
        #expect(always.fired(between: .distantPast, and: now, in: utc) == now)
    }

    @Test func berlinAcrossDaylightSavingChanges() throws {
        // Spring: 2027-03-28 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that day.
        #expect(try firings("02:30", after: "2027-03-27T12:00:00+01:00", count: 2, in: berlin) == [
            instant("2027-03-29T02:30:00+02:00"), instant("2027-03-30T02:30:00+02:00"),
        ])
        #expect(try firings("daily", after: "2027-03-27T12:00:00+01:00", count: 2, in: berlin) == [
            instant("2027-03-28T00:00:00+01:00"), instant("2027-03-29T00:00:00+02:00"),
        ])
        #expect(try firings("mon..sat 23:05", after: "2027-03-26T12:00:00+01:00", count: 2, in: berlin) == [
            instant("2027-03-26T23:05:00+01:00"), instant("2027-03-27T23:05:00+01:00"),
        ])
        #expect(try firings("mon..sat 23:05", after: "2027-03-28T12:00:00+02:00", count: 1, in: berlin) == [instant("2027-03-29T23:05:00+02:00")])
        // Autumn: 2026-10-25 03:00 CEST goes back to 02:00 CET; 02:30 happens twice and fires once.
        #expect(try firings("02:30", after: "2026-10-24T12:00:00+02:00", count: 2, in: berlin) == [
            instant("2026-10-25T02:30:00+02:00"), instant("2026-10-26T02:30:00+01:00"),
        ])
        #expect(try firings("*:0/30", after: "2026-10-25T01:45:00+02:00", count: 4, in: berlin) == [
            instant("2026-10-25T02:00:00+02:00"), instant("2026-10-25T02:30:00+02:00"),
            instant("2026-10-25T03:00:00+01:00"), instant("2026-10-25T03:30:00+01:00"),
        ])
        // Asked from inside the repeated hour, the next firing is still after the question.
        #expect(try firings("*:0/30", after: "2026-10-25T02:10:00+01:00", count: 1, in: berlin) == [instant("2026-10-25T03:00:00+01:00")])
        // The same event is an hour apart in UTC and in Berlin in winter.
        #expect(try firings("sun 23:05", after: "2026-12-02T00:00:00Z", count: 1, in: berlin) == [instant("2026-12-06T22:05:00Z")])
    }

    @Test func catchUp() throws {
        let event = try CalendarEvent(parsing: "mon..sat 23:05")
        // Down from Monday noon to Thursday morning: one catch-up run for Wednesday's firing.
        #expect(event.fired(between: instant("2026-11-30T12:00:00Z"), and: instant("2026-12-03T08:00:00Z"), in: utc) == instant("2026-12-02T23:05:00Z"))
        #expect(event.fired(between: instant("2026-12-02T23:06:00Z"), and: instant("2026-12-03T23:04:00Z"), in: utc) == nil)
        // (start, end]: the end is included, the start is not.
        #expect(event.fired(between: instant("2026-12-01T12:00:00Z"), and: instant("2026-12-02T23:05:00Z"), in: utc) == instant("2026-12-02T23:05:00Z"))
        #expect(event.fired(between: instant("2026-12-02T23:05:00Z"), and: instant("2026-12-03T12:00:00Z"), in: utc) == nil)
        // Sunday is no firing: down over the weekend, Saturday's run is the one to catch up.
        #expect(event.fired(between: instant("2026-12-05T12:00:00Z"), and: instant("2026-12-07T12:00:00Z"), in: utc) == instant("2026-12-05T23:05:00Z"))
        #expect(event.fired(between: instant("2026-12-03T00:00:00Z"), and: instant("2026-12-02T00:00:00Z"), in: utc) == nil)
        // Long outages stay cheap: a minutely event over a year.
        let minutely = try CalendarEvent(parsing: "minutely")
        #expect(minutely.fired(between: instant("2025-12-02T00:00:00Z"), and: instant("2026-12-02T00:00:30Z"), in: utc) == instant("2026-12-02T00:00:00Z"))
        // In the repeated autumn hour the firing is its first occurrence.
        let halfHourly = try CalendarEvent(parsing: "*:0/30")
        #expect(halfHourly.fired(between: instant("2026-10-25T01:00:00+02:00"), and: instant("2026-10-25T02:10:00+01:00"), in: berlin)
                == instant("2026-10-25T02:30:00+02:00"))
        #expect(try CalendarEvent(parsing: "02:30").fired(between: instant("2027-03-27T12:00:00+01:00"), and: instant("2027-03-28T12:00:00+02:00"), in: berlin) == nil)
    }

    @Test(arguments: [
        ("", 1, "empty"),
        ("mnday 10:00", 1, "not a weekday"),
        ("sat..mon 10:00", 1, "goes backwards"),
        ("mon..sat 25:00", 10, "hour 25 is out of range"),
        ("*-13-01", 3, "month 13"),
        ("*:*/0", 3, "step"),
        ("10:00 extra", 7, "unexpected 'extra'"),
        ("mon 10", 5, "neither a weekday"),
        ("10:00:00:00", 1, "not a time"),
        ("*-*-*-* 10:00", 1, "not a date"),
        ("18..8:00", 1, "goes backwards"),
    ])
    func parseErrors(text: String, column: Int, message: String) {
        #expect {
            try CalendarEvent(parsing: text)
        } throws: { error in
            guard let error = error as? CalendarEventError else { return false }
            return error.column == column && error.message.contains(message) && error.fix != nil
        }
    }
}
