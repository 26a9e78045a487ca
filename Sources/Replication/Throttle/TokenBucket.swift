import Foundation
import Storage
import Synchronization

/// A token bucket (restic's and rclone's limiter) whose rate follows a `BandwidthSchedule`: one
/// token is one byte; tokens accrue at the schedule's rate up to the burst; a transfer takes tokens
/// before it moves bytes and sleeps while there are too few.
///
/// Choices, and why:
/// - **Burst = min(rate × 0.25 s, 8 MiB).** The burst is the most that may pass at once beyond the
///   rate. A quarter of a second keeps the rate measured over any second within 25 % of the limit
///   (over five seconds, 5 %) while still leaving room for a sleeper that wakes late; 8 MiB caps the
///   memory-sized bursts of fast links and is the size of a large SMB write, so a throttled transfer
///   still writes several MiB per call.
/// - **The bucket starts empty**, and an unlimited stretch of the schedule leaves it empty: the
///   average rate of a transfer from its first byte is the configured rate, not the rate plus a free
///   burst (which at 10 MiB/s would add 5 % to a five-second measurement).
/// - **A taker waits for half the burst at most** (`take(upTo:)` waits until min(request, burst / 2)
///   tokens are there, then takes up to what is there, at most the burst): a sleeper that wakes up to
///   0.125 s late loses no tokens to the cap, so a busy machine does not slow a transfer below its
///   rate, and no grant ever exceeds the burst.
/// - **The rate is read from the schedule at every refill**, and a sleep never runs past the next
///   window edge: a transfer that crosses an edge switches rate at the edge, and the tokens of each
///   stretch accrue at that stretch's rate.
/// - **Sleeps last at most 0.25 s**, so a cancelled transfer stops waiting promptly.
///
/// Blocking: `take` sleeps on the calling thread, as stores are called from a blocking thread
/// (`BlockingPool`), never from Swift's cooperative pool. Several threads may take from one bucket
/// (parallel transfers share the link's rate); the state sits in a `Mutex`, held only to compute, never
/// while sleeping.
///
/// The clock is injected (`now`, `sleep`) so tests run hours of virtual time in milliseconds.
public final class TokenBucket: Sendable {
    /// Seconds of the rate the bucket holds at most.
    public static let burstDuration = 0.25
    /// The largest burst at any rate.
    public static let maximumBurst = 8 << 20
    /// The longest single sleep (cancellation is checked between sleeps).
    public static let maximumSleep = 0.25

    /// The burst at `rate` in bytes (at least 1), or nil when unlimited.
    public static func burst(for rate: ByteRate) -> Int? {
        guard let bytesPerSecond = rate.bytesPerSecond else { return nil }
        return max(1, min(Int(Double(bytesPerSecond) * burstDuration), maximumBurst))
    }

    private struct State {
        var schedule: BandwidthSchedule
        var tokens: Double = 0
        /// The instant the tokens were counted at.
        var last: Date
        /// The rate at `last`, valid until `edge` (nil: forever).
        var rate: ByteRate
        var edge: Date?
        var granted: UInt64 = 0
        var waited: Double = 0
    }

    private let state: Mutex<State>
    private let timeZone: TimeZone
    private let now: @Sendable () -> Date
    private let sleep: @Sendable (Double) -> Void

    /// A bucket following `schedule` in `timeZone`'s wall-clock time. `now` and `sleep` default to
    /// the real clock; tests pass a virtual one.
    public init(schedule: BandwidthSchedule, timeZone: TimeZone = .current,
                now: @escaping @Sendable () -> Date = { Date() },
                sleep: @escaping @Sendable (Double) -> Void = { Thread.sleep(forTimeInterval: $0) }) {
        self.timeZone = timeZone
        self.now = now
        self.sleep = sleep
        let start = now()
        state = Mutex(State(schedule: schedule, last: start, rate: schedule.rate(at: start, in: timeZone),
                            edge: schedule.nextChange(after: start, in: timeZone)))
    }

    /// A bucket at one fixed rate (`--limit`).
    public convenience init(rate: ByteRate,
                            now: @escaping @Sendable () -> Date = { Date() },
                            sleep: @escaping @Sendable (Double) -> Void = { Thread.sleep(forTimeInterval: $0) }) {
        self.init(schedule: .fixed(rate), timeZone: TimeZone(identifier: "UTC")!, now: now, sleep: sleep)
    }

    /// The schedule followed.
    public var schedule: BandwidthSchedule { state.withLock { $0.schedule } }

    /// Follows `schedule` from now on (a reloaded policy); tokens already there stay, within the new
    /// burst.
    public func setSchedule(_ schedule: BandwidthSchedule) {
        let time = now()
        state.withLock { s in
            refill(&s, at: time)
            s.schedule = schedule
            s.rate = schedule.rate(at: time, in: timeZone)
            s.edge = schedule.nextChange(after: time, in: timeZone)
            s.tokens = min(s.tokens, Double(Self.burst(for: s.rate) ?? 0))
        }
    }

    /// The rate that applies now.
    public func currentRate() -> ByteRate {
        let time = now()
        return state.withLock { s in
            refill(&s, at: time)
            return s.rate
        }
    }

    /// Bytes granted so far, and seconds spent waiting for tokens (for a job's record).
    public var statistics: (granted: UInt64, waited: Double) { state.withLock { ($0.granted, $0.waited) } }

    /// Waits until some of `bytes` may pass and returns how many (1 ... `bytes`): all of them when
    /// the rate is unlimited, else at most the burst. The caller moves that many bytes and asks again
    /// for the rest. Throws `OperationCancelled` (from `cancellation`) instead of waiting on.
    public func take(upTo bytes: Int, cancellation: ProgressReporter? = nil) throws -> Int {
        precondition(bytes >= 0, "negative byte count")
        guard bytes > 0 else { return 0 }
        enum Decision { case grant(Int), wait(Double) }
        while true {
            let time = now()
            let decision: Decision = state.withLock { s in
                refill(&s, at: time)
                guard let burst = Self.burst(for: s.rate), let perSecond = s.rate.bytesPerSecond else {
                    s.granted += UInt64(bytes)
                    return .grant(bytes)
                }
                let need = Double(min(bytes, max(1, burst / 2)))
                // A millionth of slack absorbs rounding in the accrual (a sleep computed to the
                // byte can end a hair short of it) without granting early at tiny rates.
                let slack = need * 1e-6
                if s.tokens + slack >= need {
                    let n = max(Int(need), min(bytes, burst, Int(s.tokens + slack)))
                    s.tokens -= Double(n)
                    s.granted += UInt64(n)
                    return .grant(n)
                }
                var seconds = (need - s.tokens) / Double(perSecond)
                if let edge = s.edge { seconds = min(seconds, edge.timeIntervalSince(time)) }
                return .wait(max(1e-6, min(seconds, Self.maximumSleep)))
            }
            switch decision {
            case let .grant(n):
                return n
            case let .wait(seconds):
                try cancellation?.checkCancelled()
                sleep(seconds)
                state.withLock { $0.waited += seconds }
            }
        }
    }

    /// Waits until all of `bytes` may pass (in grants of at most the burst): for callers that move
    /// the bytes in one piece anyway and only need the pace.
    public func take(_ bytes: Int, cancellation: ProgressReporter? = nil) throws {
        var left = bytes
        while left > 0 { left -= try take(upTo: left, cancellation: cancellation) }
    }

    /// Counts the tokens accrued from `s.last` to `time`, each stretch of the schedule at its own
    /// rate, and moves `s.rate` / `s.edge` on to the stretch holding `time`.
    private func refill(_ s: inout State, at time: Date) {
        if time < s.last || time.timeIntervalSince(s.last) > 3600 {
            // The wall clock was set back, or an hour or more went by: start over at `time` (after
            // an hour the bucket would be full anyway; a clock set back accrues nothing).
            let jumpedForward = time > s.last
            s.last = time
            s.rate = s.schedule.rate(at: time, in: timeZone)
            s.edge = s.schedule.nextChange(after: time, in: timeZone)
            s.tokens = jumpedForward ? Double(Self.burst(for: s.rate) ?? 0) : min(s.tokens, Double(Self.burst(for: s.rate) ?? 0))
            return
        }
        while true {
            let end = s.edge.map { min($0, time) } ?? time
            let seconds = end.timeIntervalSince(s.last)
            if seconds > 0 {
                if let burst = Self.burst(for: s.rate), let perSecond = s.rate.bytesPerSecond {
                    s.tokens = min(s.tokens + seconds * Double(perSecond), Double(burst))
                } else {
                    s.tokens = 0
                }
                s.last = end
            }
            guard let edge = s.edge, time >= edge else { return }
            s.last = edge
            s.rate = s.schedule.rate(at: edge, in: timeZone)
            s.edge = s.schedule.nextChange(after: edge, in: timeZone)
            s.tokens = min(s.tokens, Double(Self.burst(for: s.rate) ?? 0))
        }
    }
}
