import Foundation
import Protection
import Testing

/// A made-up day: day `d` at `h:m:s` UTC, days counted from 2027-01-04 (a Monday).
func at(day d: Int, _ h: Int, _ m: Int = 0, _ s: Int = 0) -> Date {
    let seconds: Int = d * 86_400 + h * 3_600 + m * 60 + s
    return Date(timeIntervalSince1970: 1_799_020_800 + Double(seconds))
}

/// A schedule firing every `period` seconds at `anchor + k * period`.
func every(_ period: TimeInterval, from anchor: Date, text: String? = nil) -> ScheduleEvent {
    ScheduleEvent(text ?? "every \(period) s from \(anchor.timeIntervalSince1970)", next: { after in
        let k = ((after.timeIntervalSince(anchor)) / period).rounded(.down) + 1
        return anchor.addingTimeInterval(max(k, 0) * period)
    })
}

func daily(_ h: Int, _ m: Int = 0) -> ScheduleEvent { every(86_400, from: at(day: 0, h, m), text: "daily \(h):\(m)") }
func weekly(day: Int, _ h: Int, _ m: Int = 0) -> ScheduleEvent { every(7 * 86_400, from: at(day: day, h, m), text: "weekly \(day) \(h):\(m)") }

@Suite struct SchedulerTests {
    let backup = ScheduleKey(policy: "web", kind: .backup)

    @Test func firstStartCatchesUpNothingAndMarksNow() {
        let now = at(day: 10, 12)
        var s = Scheduler(policies: [ScheduledPolicy(name: "web", backup: daily(2), verify: daily(5))], marks: [:], now: now)
        #expect(s.due(now: now).isEmpty)
        let marks = s.takeChangedMarks()
        #expect(marks == [backup: now, ScheduleKey(policy: "web", kind: .verify): now])
        #expect(s.takeChangedMarks().isEmpty)
        #expect(s.nextWake(after: now) == at(day: 11, 2))
    }

    @Test func onTimeFireIsScheduled() {
        var s = Scheduler(policies: [ScheduledPolicy(name: "web", backup: daily(2))], marks: [:], now: at(day: 10, 1))
        #expect(s.due(now: at(day: 10, 1, 30)).isEmpty)
        let jobs = s.due(now: at(day: 10, 2, 0, 5))
        #expect(jobs.count == 1)
        #expect(jobs.first?.trigger == .schedule)
        #expect(jobs.first?.fired == at(day: 10, 2))
        #expect(jobs.first?.attempt == 1)
        // Handing it out advances the mark to the moment it was seen.
        #expect(s.takeChangedMarks()[backup] == at(day: 10, 2, 0, 5))
    }

    @Test func threeDaysDownIsCaughtUpOnce() {
        // Last handled just after day 10's 02:00 run; the daemon comes back on day 13 at noon.
        let marks = [backup: at(day: 10, 2, 1)]
        let now = at(day: 13, 12)
        var s = Scheduler(policies: [ScheduledPolicy(name: "web", backup: daily(2))], marks: marks, now: now)
        let jobs = s.due(now: now)
        #expect(jobs.count == 1)
        #expect(jobs.first?.trigger == .catchUp)
        #expect(s.due(now: now.addingTimeInterval(1)).isEmpty)
        s.jobEnded(jobs[0], status: .ok, now: now.addingTimeInterval(600))
        #expect(s.due(now: now.addingTimeInterval(601)).isEmpty)
        #expect(s.takeChangedMarks()[backup] == now)
        #expect(s.nextWake(after: now.addingTimeInterval(601)) == at(day: 14, 2))
        // A restart from the persisted mark does not catch it up again.
        var again = Scheduler(policies: [ScheduledPolicy(name: "web", backup: daily(2))], marks: [backup: now], now: at(day: 13, 13))
        #expect(again.due(now: at(day: 13, 13)).isEmpty)
    }

    @Test func aFireLateByMoreThanTheGraceIsACatchUp() {
        var s = Scheduler(policies: [ScheduledPolicy(name: "web", backup: daily(2))], marks: [backup: at(day: 10, 1)], now: at(day: 10, 1))
        let jobs = s.due(now: at(day: 10, 2, 1, 1))
        #expect(jobs.map(\.trigger) == [.catchUp])
    }

    @Test func fullWhenTheFullEventFiredSinceTheLastBackup() {
        // Daily backups at 02:00; a full every Sunday (day 6) at 03:00.
        let policy = ScheduledPolicy(name: "web", backup: daily(2), full: weekly(day: 6, 3))
        var s = Scheduler(policies: [policy], marks: [:], now: at(day: 5, 12))
        let saturday = s.due(now: at(day: 6, 2))
        #expect(saturday.map(\.full) == [false])
        s.jobEnded(saturday[0], status: .ok, now: at(day: 6, 2, 30))
        // Sunday 03:00 fires between Sunday's 02:00 run and Monday's.
        #expect(s.due(now: at(day: 6, 3)).isEmpty)
        let monday = s.due(now: at(day: 7, 2))
        #expect(monday.map(\.full) == [true])
        #expect(monday.first?.fullReason?.contains("weekly") == true)
        s.jobEnded(monday[0], status: .ok, now: at(day: 7, 2, 30))
        let tuesday = s.due(now: at(day: 8, 2))
        #expect(tuesday.map(\.full) == [false])
    }

    @Test func fullWhenTheFullEventCoincidesWithTheSchedule() {
        let policy = ScheduledPolicy(name: "web", backup: daily(2), full: weekly(day: 6, 2))
        var s = Scheduler(policies: [policy], marks: [:], now: at(day: 5, 12))
        let jobs = s.due(now: at(day: 6, 2, 0, 3))
        #expect(jobs.map(\.full) == [true])
    }

    @Test func aFailedFullMakesTheNextBackupFull() {
        let policy = ScheduledPolicy(name: "web", backup: daily(2), full: weekly(day: 6, 2))
        var s = Scheduler(policies: [policy], marks: [:], now: at(day: 5, 12))
        let sunday = s.due(now: at(day: 6, 2))
        #expect(sunday.map(\.full) == [true])
        s.jobEnded(sunday[0], status: .failed, now: at(day: 6, 2, 10))
        let monday = s.due(now: at(day: 7, 2))
        #expect(monday.map(\.full) == [true])
        #expect(monday.first?.fullReason?.contains("ended failed") == true)
        s.jobEnded(monday[0], status: .ok, now: at(day: 7, 2, 10))
        #expect(s.due(now: at(day: 8, 2)).map(\.full) == [false])
    }

    @Test func oneJobPerPolicyAtATime() {
        let web = ScheduledPolicy(name: "web", backup: every(3_600, from: at(day: 0, 0)), verify: daily(2))
        let db = ScheduledPolicy(name: "db", backup: daily(2))
        var s = Scheduler(policies: [web, db], marks: [:], now: at(day: 10, 1, 30))
        // At 02:00 web's backup and verify and db's backup fire: web runs its backup, db runs too.
        let first = s.due(now: at(day: 10, 2))
        #expect(Set(first.map(\.key)) == [backup, ScheduleKey(policy: "db", kind: .backup)])
        #expect(s.pending.keys.map(\.description) == ["web verify"])
        // The backup runs three hours: hourly fires while it runs leave one pending backup.
        #expect(s.due(now: at(day: 10, 3)).isEmpty)
        #expect(s.due(now: at(day: 10, 4)).isEmpty)
        #expect(s.due(now: at(day: 10, 5)).isEmpty)
        #expect(s.pending.count == 2)
        let webBackup = first.first { $0.policy == "web" }!
        s.jobEnded(webBackup, status: .ok, now: at(day: 10, 5, 0, 1))
        // The verify was due first (02:00): it runs next, alone; the backup waits for it.
        let next = s.due(now: at(day: 10, 5, 0, 2))
        #expect(next.map(\.kind) == [.verify])
        #expect(next.first?.trigger == .schedule)
        #expect(s.due(now: at(day: 10, 5, 0, 3)).isEmpty)
        s.jobEnded(next[0], status: .ok, now: at(day: 10, 5, 10))
        let last = s.due(now: at(day: 10, 5, 10, 1))
        #expect(last.map(\.kind) == [.backup])
        #expect(s.pending.isEmpty)
        #expect(s.jobStarted(DueJob(policy: "web", kind: .prune, trigger: .manual, fired: at(day: 10, 6))) == false)
    }

    @Test func retryAfterTheDelayUpToTheAttempts() {
        let policy = ScheduledPolicy(name: "web", backup: daily(2), full: weekly(day: 10, 2), retry: RetryRule(attempts: 3, delay: 600))
        var s = Scheduler(policies: [policy], marks: [:], now: at(day: 10, 1))
        var job = s.due(now: at(day: 10, 2))[0]
        #expect(job.full)
        for attempt in 2...3 {
            let end = at(day: 10, 3, attempt * 20)
            s.jobEnded(job, status: .failedRetryable, now: end)
            #expect(s.due(now: end.addingTimeInterval(599)).isEmpty)
            #expect(s.nextWake(after: end.addingTimeInterval(599)) == end.addingTimeInterval(600))
            let retried = s.due(now: end.addingTimeInterval(600))
            #expect(retried.count == 1)
            #expect(retried.first?.trigger == .retry)
            #expect(retried.first?.attempt == attempt)
            #expect(retried.first?.full == true)
            job = retried[0]
        }
        s.jobEnded(job, status: .failedRetryable, now: at(day: 10, 5))
        #expect(s.pending.isEmpty)
        #expect(s.nextWake(after: at(day: 10, 5)) == at(day: 11, 2))
        // A plain failure is not retried.
        let tomorrow = s.due(now: at(day: 11, 2))
        s.jobEnded(tomorrow[0], status: .failed, now: at(day: 11, 2, 5))
        #expect(s.pending.isEmpty)
    }

    @Test func aReplicationFollowsEachSuccessfulBackup() {
        let policy = ScheduledPolicy(name: "web", backup: daily(2), retry: RetryRule(attempts: 2, delay: 300), afterBackup: [.replication])
        #expect(policy.summary.contains("replication after each backup"))
        var s = Scheduler(policies: [policy], marks: [:], now: at(day: 10, 1))
        let backup = s.due(now: at(day: 10, 2))[0]
        #expect(s.due(now: at(day: 10, 2, 1)).isEmpty, "nothing else of the policy while the backup runs")
        s.jobEnded(backup, status: .ok, now: at(day: 10, 2, 30))
        #expect(s.nextWake(after: at(day: 10, 2, 30)) == at(day: 10, 2, 30))
        let follow = s.due(now: at(day: 10, 2, 30))
        #expect(follow.count == 1 && follow.first?.kind == .replication && follow.first?.trigger == .afterBackup)
        // A replication that fails retryably is retried like any job; a later backup's replication replaces the retry.
        s.jobEnded(follow[0], status: .failedRetryable, now: at(day: 10, 3))
        #expect(s.pending[ScheduleKey(policy: "web", kind: .replication)]?.trigger == .retry)
        let retry = s.due(now: at(day: 10, 3, 5))
        #expect(retry.first?.kind == .replication && retry.first?.attempt == 2)
        s.jobEnded(retry[0], status: .failed, now: at(day: 10, 3, 10))
        #expect(s.pending.isEmpty)
        // A failed backup is not replicated.
        let next = s.due(now: at(day: 11, 2))[0]
        s.jobEnded(next, status: .failed, now: at(day: 11, 2, 10))
        #expect(s.due(now: at(day: 11, 2, 10)).isEmpty)
        // Nor is anything queued for a policy without replicate:, or after a verify.
        var plain = Scheduler(policies: [ScheduledPolicy(name: "db", backup: daily(2), verify: daily(4))], marks: [:], now: at(day: 10, 1))
        plain.jobEnded(plain.due(now: at(day: 10, 2))[0], status: .ok, now: at(day: 10, 2, 10))
        #expect(plain.pending.isEmpty)
        // A reload that removes replicate: drops a waiting replication.
        var busy = Scheduler(policies: [policy], marks: [:], now: at(day: 10, 1))
        busy.jobEnded(busy.due(now: at(day: 10, 2))[0], status: .okWithWarnings, now: at(day: 10, 2, 5))
        #expect(busy.pending.count == 1)
        busy.update(policies: [ScheduledPolicy(name: "web", backup: daily(2))], now: at(day: 10, 2, 6))
        #expect(busy.pending.isEmpty)
    }

    @Test func aScheduleEditedToFireSoonerTakesEffectWithoutCatchUp() {
        var s = Scheduler(policies: [ScheduledPolicy(name: "web", backup: daily(2))], marks: [:], now: at(day: 10, 0))
        #expect(s.nextWake(after: at(day: 10, 0, 10)) == at(day: 10, 2))
        _ = s.takeChangedMarks()
        // At 01:00 the schedule is edited to 00:30 and 01:30: 00:30 has passed and is not caught up.
        let edited = ScheduleEvent("00:30 and 01:30", next: { after in
            [at(day: 10, 0, 30), at(day: 10, 1, 30), at(day: 11, 0, 30)].first { $0 > after }
        })
        let changes = s.update(policies: [ScheduledPolicy(name: "web", backup: edited)], now: at(day: 10, 1))
        #expect(changes.changed == ["web"])
        #expect(s.takeChangedMarks() == [backup: at(day: 10, 1)])
        #expect(s.due(now: at(day: 10, 1, 0, 1)).isEmpty)
        #expect(s.nextWake(after: at(day: 10, 1, 0, 1)) == at(day: 10, 1, 30))
        let jobs = s.due(now: at(day: 10, 1, 30))
        #expect(jobs.map(\.trigger) == [.schedule])
        // Unchanged policies report no change; a removed one drops its waiting jobs.
        #expect(s.update(policies: [ScheduledPolicy(name: "web", backup: edited)], now: at(day: 10, 2)).isEmpty)
        #expect(s.update(policies: [], now: at(day: 10, 2)).removed == ["web"])
        #expect(s.nextWake(after: at(day: 10, 2)) == nil)
    }
}
