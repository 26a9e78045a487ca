import Foundation
import Replication
import Storage
import Synchronization
import SystemPackage
import Testing
import TestSupport

private let MiB = 1 << 20
private let KiB = 1 << 10

/// A clock that moves only when slept on: hours of throttling run in milliseconds, exactly.
private final class VirtualClock: Sendable {
    private let time: Mutex<Double>
    private let sleeps = Mutex(0)

    init(_ start: Date) { time = Mutex(start.timeIntervalSince1970) }

    var date: Date { Date(timeIntervalSince1970: time.withLock { $0 }) }
    var sleepCount: Int { sleeps.withLock { $0 } }

    func advance(_ seconds: Double) {
        time.withLock { $0 += seconds }
        sleeps.withLock { $0 += 1 }
    }

    func bucket(_ schedule: BandwidthSchedule, in zone: TimeZone = utc) -> TokenBucket {
        TokenBucket(schedule: schedule, timeZone: zone, now: { self.date }, sleep: { self.advance($0) })
    }
}

private func rate(_ text: String) throws -> ByteRate { try ByteRate(parsing: text) }

private func parseError(_ body: () throws -> Void) -> ThrottleSyntaxError? {
    do {
        try body()
        return nil
    } catch let error as ThrottleSyntaxError {
        return error
    } catch {
        return nil
    }
}

private func window(_ days: String?, _ from: String, _ to: String, _ rate: String) throws -> BandwidthSchedule.Window {
    try BandwidthSchedule.Window(days: days, from: from, to: to, rate: rate)
}

@Suite struct ThrottleParsingTests {
    @Test func ratesInEveryUnit() throws {
        #expect(try rate("10MiB/s").bytesPerSecond == 10 * 1_048_576)
        #expect(try rate("500KiB/s").bytesPerSecond == 512_000)
        #expect(try rate("1.5GiB/s").bytesPerSecond == 1_610_612_736)
        #expect(try rate("20MB/s").bytesPerSecond == 20_000_000)
        #expect(try rate("20kB/s").bytesPerSecond == 20_000)
        #expect(try rate("100Mbit/s").bytesPerSecond == 12_500_000)
        #expect(try rate("1234B/s").bytesPerSecond == 1234)
        #expect(try rate(" 10 MiB/s ").bytesPerSecond == 10 * 1_048_576, "blanks around and before the unit")
        #expect(try rate("10mib/s").bytesPerSecond == 10 * 1_048_576, "binary units in any case")
        #expect(try rate("unlimited") == .unlimited)
        #expect(try rate("Unlimited").isUnlimited)
        #expect(ByteRate.mebibytes(10) < ByteRate.gibibytes(1))
        #expect(ByteRate.gibibytes(1000) < .unlimited)
    }

    @Test func ratesPrintBackAndRoundTrip() throws {
        let cases = ["10MiB/s": "10MiB/s", "500KiB/s": "500KiB/s", "1.5GiB/s": "1.5GiB/s", "20MB/s": "20MB/s",
                     "100Mbit/s": "12.5MB/s", "1234B/s": "1.234KB/s", "1000B/s": "1KB/s", "1024000B/s": "1000KiB/s", "unlimited": "unlimited", "0.5MiB/s": "512KiB/s"]
        for (text, printed) in cases {
            let parsed = try rate(text)
            #expect(parsed.description == printed, "\(text)")
            #expect(try rate(parsed.description) == parsed, "\(text) reads back")
        }
        // Codable as its text, for JSON output.
        let json = try JSONEncoder().encode([try rate("10MiB/s")])
        #expect(String(decoding: json, as: UTF8.self) == #"["10MiB\/s"]"#)
        #expect(try JSONDecoder().decode([ByteRate].self, from: json) == [try rate("10MiB/s")])
    }

    @Test func badRatesSayWhatIsWrongWithAnExample() throws {
        let cases: [(String, String, String)] = [
            ("", "empty rate", "10MiB/s"),
            ("10MiB", "has no '/s'", "10MiB/s"),
            ("fast", "has no '/s'", "unlimited"),
            ("10Mb/s", "ambiguous (bits or bytes?)", "10MB/s for bytes or 10Mbit/s for bits"),
            ("10kb/s", "ambiguous", "10kbit/s"),
            ("10MBps", "'/s'", "Mbit/s"),
            ("0MiB/s", "zero", "unlimited"),
            ("-5MiB/s", "negative", "10MiB/s"),
            ("10XB/s", "unknown unit 'XB'", "MiB"),
            ("MiB/s", "does not start with a number", "10MiB/s"),
            ("1.2.3MiB/s", "'1.2.3' in '1.2.3MiB/s' is not a number", "10MiB/s"),
            ("10/s", "has no unit", "10MiB/s"),
        ]
        for (text, message, fix) in cases {
            let error = parseError { _ = try rate(text) }
            #expect(error != nil, "'\(text)' is refused")
            #expect(error?.message.contains(message) == true, "'\(text)': \(error?.message ?? "-")")
            #expect(error?.fix?.contains(fix) == true, "'\(text)': \(error?.fix ?? "-")")
        }
    }

    @Test func weekdaysAndTimes() throws {
        #expect(try Weekday.parseSet("mon..fri") == [.monday, .tuesday, .wednesday, .thursday, .friday])
        #expect(try Weekday.parseSet("sat,sun") == [.saturday, .sunday])
        #expect(try Weekday.parseSet("Monday..wed,fri") == [.monday, .tuesday, .wednesday, .friday])
        #expect(Weekday.format([.monday, .tuesday, .wednesday, .friday, .saturday]) == "mon..wed,fri,sat")
        #expect(Weekday.format(Set(Weekday.allCases)) == "mon..sun")
        #expect(try TimeOfDay(parsing: "08:00").minutes == 480)
        #expect(try TimeOfDay(parsing: "8:30").description == "08:30")
        #expect(try TimeOfDay(parsing: "24:00") == .endOfDay)

        let backwards = parseError { _ = try Weekday.parseSet("fri..mon") }
        #expect(backwards?.message.contains("goes backwards") == true)
        #expect(backwards?.fix?.contains("fri,sat,sun,mon") == true)
        #expect(parseError { _ = try Weekday.parseSet("mon..frx") }?.message == "'frx' is not a weekday")
        #expect(parseError { _ = try TimeOfDay(parsing: "8am") }?.fix?.contains("HH:MM") == true)
        #expect(parseError { _ = try TimeOfDay(parsing: "24:01") }?.message.contains("out of range") == true)
        #expect(parseError { _ = try TimeOfDay(parsing: "12:60") }?.message.contains("out of range") == true)
    }

    @Test func windowsFromYAMLValues() throws {
        let work = try window("mon..fri", "08:00", "18:00", "10MiB/s")
        #expect(work == BandwidthSchedule.Window(days: [.monday, .tuesday, .wednesday, .thursday, .friday],
                                                 from: TimeOfDay(hour: 8), to: TimeOfDay(hour: 18), rate: .mebibytes(10)))
        #expect(work.description == "mon..fri 08:00-18:00 10MiB/s")
        #expect(try window(nil, "00:00", "24:00", "1MiB/s").days.count == 7, "no days: every day")
        #expect(try window("fri", "22:00", "06:00", "1MiB/s").crossesMidnight)

        let cases: [(String?, String, String, String, key: String, message: String)] = [
            ("fri..mon", "08:00", "18:00", "1MiB/s", "days", "goes backwards"),
            ("mon", "8am", "18:00", "1MiB/s", "from", "not a time of day"),
            ("mon", "08:00", "25:00", "1MiB/s", "to", "out of range"),
            ("mon", "08:00", "18:00", "10MiB", "rate", "has no '/s'"),
            ("mon", "08:00", "08:00", "1MiB/s", "to", "is empty"),
            ("mon", "24:00", "06:00", "1MiB/s", "from", "cannot start at 24:00"),
        ]
        for c in cases {
            let error = parseError { _ = try window(c.0, c.1, c.2, c.3) }
            #expect(error?.key == c.key, "\(c)")
            #expect(error?.message.contains(c.message) == true, "\(c): \(error?.message ?? "-")")
            #expect(error?.fix != nil)
        }
        let empty = parseError { _ = try window("mon", "08:00", "08:00", "1MiB/s") }
        #expect(empty?.description == "'to': window from 08:00 to 08:00 is empty (fix: for the whole day write from: \"00:00\", to: \"24:00\")")

        let schedule = BandwidthSchedule(workHours: [work], otherHours: try rate("50MiB/s"))
        #expect(schedule.description == "mon..fri 08:00-18:00 10MiB/s; other hours 50MiB/s")
        #expect(BandwidthSchedule.fixed(.mebibytes(20)).description == "20MiB/s")
    }
}

@Suite struct BandwidthScheduleTests {
    /// DPM's default: work hours Monday to Friday 08:00-18:00 at 10 MiB/s, other hours unlimited.
    let workHours = BandwidthSchedule(workHours: [
        BandwidthSchedule.Window(days: [.monday, .tuesday, .wednesday, .thursday, .friday],
                                 from: TimeOfDay(hour: 8), to: TimeOfDay(hour: 18), rate: .mebibytes(10)),
    ])

    @Test func rateByWeekdayAndTimeInUTC() {
        // 2026-12-02 is a Wednesday, 2026-12-05 a Saturday.
        #expect(workHours.rate(at: instant("2026-12-02T07:59:59Z"), in: utc) == .unlimited)
        #expect(workHours.rate(at: instant("2026-12-02T08:00:00Z"), in: utc) == .mebibytes(10), "from is inside")
        #expect(workHours.rate(at: instant("2026-12-02T17:59:59Z"), in: utc) == .mebibytes(10))
        #expect(workHours.rate(at: instant("2026-12-02T18:00:00Z"), in: utc) == .unlimited, "to is outside")
        #expect(workHours.rate(at: instant("2026-12-05T12:00:00Z"), in: utc) == .unlimited, "Saturday")
        #expect(BandwidthSchedule.fixed(.mebibytes(20)).rate(at: instant("2026-12-05T12:00:00Z"), in: utc) == .mebibytes(20))
    }

    @Test func rateInBerlinWinterAndSummer() {
        // Winter (UTC+1): 08:30 in Berlin is 07:30 UTC.
        #expect(workHours.rate(at: instant("2026-12-02T07:30:00Z"), in: berlin) == .mebibytes(10))
        #expect(workHours.rate(at: instant("2026-12-02T07:30:00Z"), in: utc) == .unlimited)
        #expect(workHours.rate(at: instant("2026-12-02T17:30:00Z"), in: berlin) == .unlimited)
        #expect(workHours.rate(at: instant("2026-12-02T17:30:00Z"), in: utc) == .mebibytes(10))
        // Summer (UTC+2): the window is 06:00-16:00 UTC.
        #expect(workHours.rate(at: instant("2026-07-01T06:00:00Z"), in: berlin) == .mebibytes(10))
        #expect(workHours.rate(at: instant("2026-07-01T05:59:59Z"), in: berlin) == .unlimited)
        #expect(workHours.rate(at: instant("2026-07-01T16:00:00Z"), in: berlin) == .unlimited)
        // Friday 23:30 UTC is Saturday 00:30 in Berlin.
        #expect(workHours.rate(at: instant("2026-12-04T23:30:00+01:00"), in: berlin) == .unlimited)
        #expect(workHours.rate(at: instant("2026-12-04T17:30:00+01:00"), in: berlin) == .mebibytes(10))
    }

    @Test func nextEdge() {
        #expect(workHours.nextChange(after: instant("2026-12-02T06:00:00Z"), in: utc) == instant("2026-12-02T08:00:00Z"))
        #expect(workHours.nextChange(after: instant("2026-12-02T08:00:00Z"), in: utc) == instant("2026-12-02T18:00:00Z"))
        #expect(workHours.nextChange(after: instant("2026-12-02T06:00:00Z"), in: berlin) == instant("2026-12-02T07:00:00Z"))
        #expect(workHours.nextChange(after: instant("2026-07-01T03:00:00Z"), in: berlin) == instant("2026-07-01T06:00:00Z"))
        // Friday evening: the next edge is Monday morning.
        #expect(workHours.nextChange(after: instant("2026-12-04T18:00:00Z"), in: utc) == instant("2026-12-07T08:00:00Z"))
        #expect(workHours.nextChange(after: instant("2026-12-04T18:00:00+01:00"), in: berlin) == instant("2026-12-07T08:00:00+01:00"))
        // Across the autumn DST change (2026-10-25 in Berlin): Monday 08:00 is UTC+1 again.
        #expect(workHours.nextChange(after: instant("2026-10-23T20:00:00+02:00"), in: berlin) == instant("2026-10-26T08:00:00+01:00"))
        #expect(BandwidthSchedule.fixed(.mebibytes(1)).nextChange(after: instant("2026-12-02T06:00:00Z"), in: utc) == nil)
        let always = BandwidthSchedule(workHours: [.init(days: Set(Weekday.allCases), from: .midnight, to: .endOfDay, rate: .mebibytes(1))])
        #expect(always.rate(at: instant("2026-12-06T23:59:59Z"), in: utc) == .mebibytes(1))
        #expect(always.nextChange(after: instant("2026-12-02T06:00:00Z"), in: utc) == nil, "the rate never changes")
    }

    @Test func edgesAcrossDSTChangesInBerlin() throws {
        let early = BandwidthSchedule(workHours: [try window(nil, "02:30", "06:00", "1MiB/s")])
        // Spring, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 never happens, so the
        // window starts at the jump.
        #expect(early.nextChange(after: instant("2026-03-29T00:00:00Z"), in: berlin) == instant("2026-03-29T01:00:00Z"))
        #expect(early.rate(at: instant("2026-03-29T01:00:00Z"), in: berlin) == .mebibytes(1))
        #expect(early.nextChange(after: instant("2026-03-29T01:00:00Z"), in: berlin) == instant("2026-03-29T06:00:00+02:00"))
        // Autumn, 2026-10-25: 03:00 CEST goes back to 02:00 CET (01:00 UTC); 02:30 happens twice, and
        // the wall clock leaves the window at the jump back.
        var changes: [Date] = []
        var from = instant("2026-10-24T23:00:00Z")
        for _ in 0..<4 {
            guard let next = early.nextChange(after: from, in: berlin) else { break }
            changes.append(next)
            from = next
        }
        #expect(changes == [instant("2026-10-25T00:30:00Z"), instant("2026-10-25T01:00:00Z"),
                            instant("2026-10-25T01:30:00Z"), instant("2026-10-25T05:00:00Z")])
    }

    @Test func windowAcrossMidnightBelongsToTheDayItStarts() throws {
        let night = BandwidthSchedule(workHours: [try window("fri", "22:00", "06:00", "1MiB/s")], otherHours: .mebibytes(100))
        #expect(night.rate(at: instant("2026-12-04T21:59:59Z"), in: utc) == .mebibytes(100), "Friday before")
        #expect(night.rate(at: instant("2026-12-04T22:00:00Z"), in: utc) == .mebibytes(1))
        #expect(night.rate(at: instant("2026-12-05T03:00:00Z"), in: utc) == .mebibytes(1), "Saturday early is Friday's night")
        #expect(night.rate(at: instant("2026-12-05T06:00:00Z"), in: utc) == .mebibytes(100))
        #expect(night.rate(at: instant("2026-12-05T23:00:00Z"), in: utc) == .mebibytes(100), "Saturday night is not listed")
        #expect(night.rate(at: instant("2026-12-04T03:00:00Z"), in: utc) == .mebibytes(100), "Friday early is Thursday's night")
        #expect(night.nextChange(after: instant("2026-12-04T12:00:00Z"), in: utc) == instant("2026-12-04T22:00:00Z"))
        #expect(night.nextChange(after: instant("2026-12-04T23:00:00Z"), in: utc) == instant("2026-12-05T06:00:00Z"))
        #expect(night.nextChange(after: instant("2026-12-05T06:00:00Z"), in: utc) == instant("2026-12-11T22:00:00Z"))
        // In Berlin the same window is 21:00-05:00 UTC in winter.
        #expect(night.rate(at: instant("2026-12-04T21:30:00Z"), in: berlin) == .mebibytes(1))
        #expect(night.nextChange(after: instant("2026-12-04T23:00:00Z"), in: berlin) == instant("2026-12-05T05:00:00Z"))
    }

    @Test func wholeDaysOverlapsAndAdjoiningWindows() throws {
        let weekend = BandwidthSchedule(workHours: [try window("sat,sun", "00:00", "24:00", "5MiB/s")], otherHours: .mebibytes(1))
        #expect(weekend.rate(at: instant("2026-12-05T00:00:00Z"), in: utc) == .mebibytes(5))
        #expect(weekend.rate(at: instant("2026-12-06T23:59:59Z"), in: utc) == .mebibytes(5))
        #expect(weekend.rate(at: instant("2026-12-07T00:00:00Z"), in: utc) == .mebibytes(1))
        #expect(weekend.nextChange(after: instant("2026-12-04T12:00:00Z"), in: utc) == instant("2026-12-05T00:00:00Z"))
        #expect(weekend.nextChange(after: instant("2026-12-05T12:00:00Z"), in: utc) == instant("2026-12-07T00:00:00Z"),
                "Sunday midnight is an edge of two windows of one rate: no change")

        // The first window listed wins: a lunch-hour exception before the general rule.
        let lunch = BandwidthSchedule(workHours: [try window("mon..fri", "12:00", "13:00", "1MiB/s"),
                                                  try window("mon..fri", "08:00", "18:00", "10MiB/s")])
        #expect(lunch.rate(at: instant("2026-12-02T12:30:00Z"), in: utc) == .mebibytes(1))
        #expect(lunch.rate(at: instant("2026-12-02T13:00:00Z"), in: utc) == .mebibytes(10))
        #expect(lunch.nextChange(after: instant("2026-12-02T09:00:00Z"), in: utc) == instant("2026-12-02T12:00:00Z"))
        #expect(lunch.nextChange(after: instant("2026-12-02T12:00:00Z"), in: utc) == instant("2026-12-02T13:00:00Z"))

        let split = BandwidthSchedule(workHours: [try window("mon..fri", "08:00", "12:00", "10MiB/s"),
                                                  try window("mon..fri", "12:00", "18:00", "10MiB/s")])
        #expect(split.nextChange(after: instant("2026-12-02T09:00:00Z"), in: utc) == instant("2026-12-02T18:00:00Z"))
    }
}

@Suite struct TokenBucketTests {
    @Test func burstIsAQuarterSecondUpTo8MiB() {
        #expect(TokenBucket.burst(for: .mebibytes(10)) == 10 * MiB / 4)
        #expect(TokenBucket.burst(for: .mebibytes(20)) == 5 * MiB)
        #expect(TokenBucket.burst(for: .mebibytes(100)) == 8 * MiB)
        #expect(TokenBucket.burst(for: .bytes(1)) == 1)
        #expect(TokenBucket.burst(for: .unlimited) == nil)
    }

    /// Takes `piece`-byte grants until `seconds` of virtual time have passed; returns the grants with
    /// the instant each was made.
    private func run(_ bucket: TokenBucket, _ clock: VirtualClock, seconds: Double, piece: Int) throws -> [(at: Date, bytes: Int)] {
        let end = clock.date.addingTimeInterval(seconds)
        var grants: [(at: Date, bytes: Int)] = []
        while true {
            let n = try bucket.take(upTo: piece)
            let at = clock.date
            guard at <= end else { break }
            grants.append((at, n))
        }
        return grants
    }

    @Test func tenVirtualSecondsAt10MiBPerSecond() throws {
        let clock = VirtualClock(instant("2026-12-02T12:00:00Z"))
        let start = clock.date
        let bucket = clock.bucket(.fixed(.mebibytes(10)))
        let grants = try run(bucket, clock, seconds: 10, piece: 64 * KiB)
        let total = grants.reduce(0) { $0 + $1.bytes }
        #expect(abs(Double(total) - Double(100 * MiB)) <= 0.01 * Double(100 * MiB), "\(total) bytes")
        // No moment lets more through than the rate allows since the start plus one burst.
        let burst = Double(TokenBucket.burst(for: .mebibytes(10))!)
        var sum = 0
        for grant in grants {
            sum += grant.bytes
            #expect(Double(sum) <= grant.at.timeIntervalSince(start) * Double(10 * MiB) + burst)
        }
        #expect(bucket.statistics.granted >= UInt64(total))
        #expect(abs(bucket.statistics.waited - 10) < 0.1, "the taker waited for its tokens, not more")
        // A large request is granted in pieces of at most the burst.
        #expect(try bucket.take(upTo: 100 * MiB) <= Int(burst))
    }

    @Test func windowEdgeCrossedMidTransferSwitchesTheRate() throws {
        let schedule = BandwidthSchedule(workHours: [try window("mon..fri", "08:00", "18:00", "10MiB/s")], otherHours: .mebibytes(40))
        let clock = VirtualClock(instant("2026-12-02T17:59:50Z"))
        let bucket = clock.bucket(schedule)
        #expect(bucket.currentRate() == .mebibytes(10))
        let edge = instant("2026-12-02T18:00:00Z")
        let grants = try run(bucket, clock, seconds: 20, piece: 64 * KiB)
        let before = grants.filter { $0.at < edge }.reduce(0) { $0 + $1.bytes }
        let after = grants.filter { $0.at >= edge }.reduce(0) { $0 + $1.bytes }
        #expect(abs(Double(before) / Double(100 * MiB) - 1) <= 0.02, "\(before) bytes in 10 s at 10 MiB/s")
        #expect(abs(Double(after) / Double(400 * MiB) - 1) <= 0.02, "\(after) bytes in 10 s at 40 MiB/s")
        #expect(bucket.currentRate() == .mebibytes(40))
    }

    @Test func aWaitingTakerWakesAtTheEdgeInBerlin() throws {
        // 1 KiB/s until 08:00 Berlin (07:00 UTC), then unlimited: a request for 1 MiB made a second
        // before the edge would need 1024 s at the old rate; it is served at the edge.
        let schedule = BandwidthSchedule(workHours: [try window(nil, "00:00", "08:00", "1KiB/s")])
        let clock = VirtualClock(instant("2026-12-02T06:59:59Z"))
        let bucket = clock.bucket(schedule, in: berlin)
        var total = 0
        while total < MiB { total += try bucket.take(upTo: MiB - total) }
        #expect(clock.date <= instant("2026-12-02T07:00:00Z").addingTimeInterval(0.001), "served at the edge, not 1024 s later")
    }

    @Test func unlimitedNeverWaits() throws {
        let clock = VirtualClock(instant("2026-12-02T12:00:00Z"))
        let bucket = clock.bucket(.unlimited)
        #expect(try bucket.take(upTo: 1 << 40) == 1 << 40)
        try bucket.take(5 << 30)
        #expect(clock.sleepCount == 0)
        // A limit set later applies from then on, starting empty.
        bucket.setSchedule(.fixed(.mebibytes(1)))
        try bucket.take(MiB)
        #expect(abs(clock.date.timeIntervalSince(instant("2026-12-02T12:00:00Z")) - 1) < 0.01)
    }

    @Test func cancelledWhileWaiting() throws {
        let clock = VirtualClock(instant("2026-12-02T12:00:00Z"))
        let bucket = clock.bucket(.fixed(.kibibytes(1)))
        let reporter = ProgressReporter()
        reporter.cancel()
        #expect(throws: OperationCancelled.self) { try bucket.take(MiB, cancellation: reporter) }
    }

    @Test func sleepsAreShortSoCancellationIsPrompt() throws {
        let clock = VirtualClock(instant("2026-12-02T12:00:00Z"))
        let longest = Mutex(0.0)
        let bucket = TokenBucket(schedule: .fixed(.bytes(1)), timeZone: utc, now: { clock.date },
                                 sleep: { s in longest.withLock { $0 = max($0, s) }; clock.advance(s) })
        try bucket.take(3)
        #expect(longest.withLock { $0 } <= TokenBucket.maximumSleep)
        #expect(abs(clock.date.timeIntervalSince(instant("2026-12-02T12:00:00Z")) - 3) < 0.01)
    }
}

@Suite struct ThrottledStoreTests {
    @Test func writesArePacedAndLandWhereTheyShould() throws {
        let dir = try TempDir("throttle")
        let clock = VirtualClock(instant("2026-12-02T12:00:00Z"))
        let bucket = clock.bucket(.fixed(.mebibytes(1)))
        let file = try BlockFile.create(FilePath(dir.file("a")))
        let store = ThrottledStore(file, bucket: bucket)
        defer { try? store.close() }
        var random = SeededRandom(seed: 7)
        let data = random.bytes(3 * MiB + 123)
        try store.write(data, at: 0)
        #expect(abs(clock.date.timeIntervalSince(instant("2026-12-02T12:00:00Z")) - Double(data.count) / Double(MiB)) < 0.01)
        #expect(try store.read(count: data.count, at: 0) == data)
        let reading = clock.date
        _ = try store.read(count: MiB, at: 0)
        #expect(clock.date == reading, "reads are not throttled unless asked")
        #expect(try store.size() == UInt64(data.count))
        // Capabilities reach the file underneath.
        try store.truncate(to: UInt64(8 * MiB))
        #expect(try store.punchHole(at: UInt64(4 * MiB), length: UInt64(MiB)) == true)
        #expect(try store.nextData(from: UInt64(5 * MiB)) == (try file.nextData(from: UInt64(5 * MiB))))
        #expect(try store.nextHole(from: 0) == (try file.nextHole(from: 0)))
        #expect(try store.allocatedBytes() == (try file.allocatedBytes()))
        #expect(store.allocationUnit == file.allocationUnit)
        #expect(store.path == file.path && store.isWritable)
        #expect(store.space is ThrottledSpace)
    }

    @Test func throttledReadsAndASharedSpace() throws {
        let dir = try TempDir("throttle")
        let clock = VirtualClock(instant("2026-12-02T12:00:00Z"))
        let bucket = clock.bucket(.fixed(.mebibytes(2)))
        let space = ThrottledSpace(LocalFileSystem(), bucket: bucket, throttleReads: true)
        let a = try space.create(FilePath(dir.file("a")))
        let b = try space.create(FilePath(dir.file("b")))
        #expect(a is ThrottledStore && b is ThrottledStore)
        let start = clock.date
        try a.write([UInt8](repeating: 1, count: 2 * MiB), at: 0)
        try b.write([UInt8](repeating: 2, count: 2 * MiB), at: 0)
        #expect(abs(clock.date.timeIntervalSince(start) - 2) < 0.01, "two files share one rate")
        _ = try a.read(count: 2 * MiB, at: 0)
        #expect(abs(clock.date.timeIntervalSince(start) - 3) < 0.01, "reads throttled when asked")
        // A copy between throttled files reaches the files underneath and takes tokens for its bytes
        // (here twice: the source throttles its reads too).
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: MiB, alignment: 4096)
        defer { buffer.deallocate() }
        try b.copyRange(from: a, sourceOffset: 0, to: 0, length: UInt64(MiB), buffer: buffer)
        #expect(abs(clock.date.timeIntervalSince(start) - 4) < 0.01)
        #expect(try b.read(count: 16, at: 0) == [UInt8](repeating: 1, count: 16))
        #expect(ThrottledSpace(space, bucket: bucket).base is LocalFileSystem, "one bucket is not applied twice")
        try a.close()
        try b.close()
        let reopened = try space.open(FilePath(dir.file("a")), writable: false)
        #expect(reopened is ThrottledStore && !reopened.isWritable)
        try reopened.close()
    }
}

/// Real time on a real file. Alone, because it measures the wall clock.
@Suite(.serialized) struct ThrottleRealTimeTests {
    @Test func twentyMiBPerSecondForFiveSeconds() async throws {
        let dir = try TempDir("throttle-real")
        let result = try await offPool { () -> (bytes: Int, elapsed: Double, worstExcess: Double) in
            let file = try BlockFile.create(FilePath(dir.file("paced")))
            let rate = 20 * MiB
            let bucket = TokenBucket(rate: .mebibytes(20))
            let store = ThrottledStore(file, bucket: bucket)
            defer { try? store.close() }
            let piece = [UInt8](repeating: 0xA5, count: MiB)
            let start = Date()
            var written = 0
            var worstExcess = 0.0
            // 100 MiB in 1 MiB writes over an 8 MiB region, so the page cache, not the disk, takes them.
            while written < 5 * rate {
                try store.write(piece, at: UInt64(written % (8 * MiB)))
                written += piece.count
                // Bytes beyond what the rate allows since the start: never more than one burst.
                worstExcess = max(worstExcess, Double(written) - Date().timeIntervalSince(start) * Double(rate))
            }
            return (written, Date().timeIntervalSince(start), worstExcess)
        }
        let measured = Double(result.bytes) / result.elapsed / Double(MiB)
        #expect(abs(measured - 20) <= 2, "measured \(measured) MiB/s over \(result.elapsed) s")
        #expect(result.worstExcess <= Double(TokenBucket.burst(for: .mebibytes(20))!), "excess \(result.worstExcess) bytes")
    }

    @Test func twoWritersShareOneSpaceRate() async throws {
        // Two files written at once through one throttled space: together, not each, at 20 MiB/s.
        let dir = try TempDir("throttle-real")
        let space = ThrottledSpace(LocalFileSystem(), bucket: TokenBucket(rate: .mebibytes(20)))
        let start = Date()
        async let first = offPool { try Self.fill(space, FilePath(dir.file("a")), bytes: 20 * MiB) }
        async let second = offPool { try Self.fill(space, FilePath(dir.file("b")), bytes: 20 * MiB) }
        let total = try await first + second
        let elapsed = Date().timeIntervalSince(start)
        let measured = Double(total) / elapsed / Double(MiB)
        #expect(abs(measured - 20) <= 2, "measured \(measured) MiB/s over \(elapsed) s")
    }

    private static func fill(_ space: ThrottledSpace, _ path: FilePath, bytes: Int) throws -> Int {
        let store = try space.create(path)
        defer { try? store.close() }
        let piece = [UInt8](repeating: 0x5A, count: MiB)
        var written = 0
        while written < bytes {
            try store.write(piece, at: UInt64(written % (8 * MiB)))
            written += piece.count
        }
        return written
    }
}
