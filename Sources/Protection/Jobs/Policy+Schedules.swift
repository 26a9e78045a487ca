import Foundation

extension Policy {
    /// The policy's schedules as the daemon's scheduler takes them.
    public func scheduled(in timeZone: TimeZone) -> ScheduledPolicy {
        func event(_ e: CalendarEvent?) -> ScheduleEvent? {
            e.map { e in
                ScheduleEvent(e.text, next: { e.next(after: $0, in: timeZone) }, fired: { e.fired(between: $0, and: $1, in: timeZone) })
            }
        }
        return ScheduledPolicy(name: name, backup: event(schedule), full: event(full), verify: event(verify),
                               retry: RetryRule(attempts: max(0, retry.attempts) + 1, delay: retry.delay),
                               afterBackup: replicate == nil ? [] : [.replication])
    }
}
