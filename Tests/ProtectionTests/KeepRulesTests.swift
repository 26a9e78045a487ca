import Foundation
import Protection
import Testing

/// 60 days of points, 2026-10-03 to 2026-12-01 (a Tuesday), at the given UTC times of day; ids are
/// `MM-DD HH:MM`.
func simulatedPoints(times: [String] = ["23:05"], protected: Set<String> = []) -> [RetentionCandidate] {
    let first = instant("2026-10-03T00:00:00Z")
    var points: [RetentionCandidate] = []
    for day in 0..<60 {
        let midnight = first.addingTimeInterval(Double(day) * 86_400)
        let date = ISO8601DateFormatter.string(from: midnight, timeZone: utc, formatOptions: [.withFullDate])
        for time in times {
            let parts = time.split(separator: ":").compactMap { Double($0) }
            let id = "\(date.dropFirst(5)) \(time)"
            points.append(RetentionCandidate(id: id, time: midnight.addingTimeInterval(parts[0] * 3600 + parts[1] * 60),
                                             protected: protected.contains(id)))
        }
    }
    return points.shuffled()
}

/// The kept ids and their rules, newest first.
func kept(_ decisions: [RetentionDecision]) -> [String] {
    decisions.filter(\.keep).map { "\($0.id): \($0.rule)" }
}

@Suite struct KeepRulesTests {
    @Test func lastDailyWeeklyMonthly() {
        let decisions = KeepRules(last: 3, daily: 7, weekly: 4, monthly: 6).evaluate(simulatedPoints(), in: utc)
        #expect(decisions.count == 60)
        #expect(decisions.first?.id == "12-01 23:05", "newest first")
        // last 3 takes Dec 1, Nov 30, Nov 29; daily 7 the seven days before; weekly 4 the newest point
        // of the four ISO weeks before those already covered (W49..W47); the months (Dec, Nov, Oct)
        // are all covered by then, so monthly adds nothing.
        #expect(kept(decisions) == [
            "12-01 23:05: last 1 of 3", "11-30 23:05: last 2 of 3", "11-29 23:05: last 3 of 3",
            "11-28 23:05: daily 2026-11-28", "11-27 23:05: daily 2026-11-27", "11-26 23:05: daily 2026-11-26",
            "11-25 23:05: daily 2026-11-25", "11-24 23:05: daily 2026-11-24", "11-23 23:05: daily 2026-11-23",
            "11-22 23:05: daily 2026-11-22",
            "11-15 23:05: weekly 2026-W46", "11-08 23:05: weekly 2026-W45", "11-01 23:05: weekly 2026-W44",
            "10-25 23:05: weekly 2026-W43",
        ])
        #expect(decisions.filter { !$0.keep }.allSatisfy { $0.rule == "no rule keeps it" })
    }

    @Test func severalPointsPerDayAndProtectedPoints() {
        let points = simulatedPoints(times: ["11:00", "23:05"], protected: ["11-22 23:05", "10-05 11:00"])
        let decisions = KeepRules(last: 2, daily: 3, weekly: 2).evaluate(points, in: utc)
        #expect(decisions.count == 120)
        // Only the newest point of a day counts for daily. The protected 11-22 23:05 is kept but
        // covers nothing, so week 47 is kept through its next point, 11-22 11:00.
        #expect(kept(decisions) == [
            "12-01 23:05: last 1 of 2", "12-01 11:00: last 2 of 2",
            "11-30 23:05: daily 2026-11-30", "11-29 23:05: daily 2026-11-29", "11-28 23:05: daily 2026-11-28",
            "11-22 23:05: protected", "11-22 11:00: weekly 2026-W47", "11-15 23:05: weekly 2026-W46",
            "10-05 11:00: protected",
        ])
    }

    @Test func monthlyAndYearly() {
        let decisions = KeepRules(monthly: 2, yearly: 1).evaluate(simulatedPoints(), in: utc)
        #expect(kept(decisions) == ["12-01 23:05: monthly 2026-12", "11-30 23:05: monthly 2026-11"])
        let yearly = KeepRules(yearly: 5).evaluate(simulatedPoints(), in: utc)
        #expect(kept(yearly) == ["12-01 23:05: yearly 2026"])
    }

    @Test func hourlyAndLastOnly() {
        let points = simulatedPoints(times: ["10:00", "10:30", "11:00"])
        #expect(kept(KeepRules(hourly: 3).evaluate(points, in: utc)) == [
            "12-01 11:00: hourly 2026-12-01T11", "12-01 10:30: hourly 2026-12-01T10", "11-30 11:00: hourly 2026-11-30T11",
        ])
        #expect(kept(KeepRules(last: 2, daily: 0).evaluate(points, in: utc)) == ["12-01 11:00: last 1 of 2", "12-01 10:30: last 2 of 2"])
    }

    @Test func noRulesKeepsEverything() {
        for rules in [KeepRules(), KeepRules(last: 0, daily: 0)] {
            let decisions = rules.evaluate(simulatedPoints(protected: ["11-01 23:05"]), in: utc)
            #expect(decisions.count == 60 && decisions.allSatisfy(\.keep))
            #expect(decisions.filter { $0.rule == "no keep rules: everything is kept" }.count == 59)
            #expect(decisions.first { $0.id == "11-01 23:05" }?.rule == "protected")
        }
        #expect(KeepRules(daily: 7).evaluate([], in: utc).isEmpty)
    }

    @Test func newestIsKeptEvenWhenProtectedPointsComeFirst() {
        let points = simulatedPoints(protected: ["12-01 23:05"])
        #expect(kept(KeepRules(last: 1).evaluate(points, in: utc)) == ["12-01 23:05: protected", "11-30 23:05: last 1 of 1"])
    }

    @Test func periodsFollowTheTimeZone() {
        // 23:05 UTC is 00:05 the next day in Berlin in winter.
        #expect(kept(KeepRules(daily: 2).evaluate(simulatedPoints(), in: berlin)) == [
            "12-01 23:05: daily 2026-12-02", "11-30 23:05: daily 2026-12-01",
        ])
    }

    @Test func isoWeeksAcrossTheYearEnd() {
        // 2027-01-01 (a Friday) is in 2026-W53; 2025-12-29 (a Monday) starts 2026-W01.
        let points = [
            RetentionCandidate(id: "a", time: instant("2027-01-04T12:00:00Z")),
            RetentionCandidate(id: "b", time: instant("2027-01-01T12:00:00Z")),
            RetentionCandidate(id: "c", time: instant("2025-12-29T12:00:00Z")),
            RetentionCandidate(id: "d", time: instant("2025-12-28T12:00:00Z")),
        ]
        #expect(kept(KeepRules(weekly: 4).evaluate(points, in: utc)) == [
            "a: weekly 2027-W01", "b: weekly 2026-W53", "c: weekly 2026-W01", "d: weekly 2025-W52",
        ])
    }
}
