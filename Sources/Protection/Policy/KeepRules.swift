import Foundation

/// Which recovery points retention keeps: the YAML `keep: {last: 3, daily: 7, weekly: 4, monthly: 6}`.
///
/// The selection is Proxmox Backup Server's prune (pbs-datastore `compute_prune_info` /
/// `mark_selections`, documented in PBS "Maintenance Tasks: Pruning"), so a PBS or restic user reads
/// it the way they expect:
/// - Points are taken newest first. Rules run in the order last, hourly, daily, weekly (ISO 8601
///   weeks, Monday to Sunday), monthly, yearly; periods are read in the time zone given.
/// - `last N` keeps the N newest points. A period rule `daily N` keeps the newest point of each of the
///   N newest days that have points; the other points of such a day are marked for removal.
/// - A rule does not take care of what an earlier rule already covered: it skips points already
///   decided and periods that already hold a kept point, and stops after N new periods, so it only
///   reaches older points ("keep 3 last, 7 daily" keeps 3 points, then 7 days older than them).
/// - Protected points are always kept and count toward no rule.
/// - With every count nil or 0 nothing is removed (PBS refuses to prune without keep options).
/// - The newest point is always kept (any rule with a count keeps it; the rule says so if none did).
public struct KeepRules: Sendable, Equatable, Codable {
    public var last: Int?
    public var hourly: Int?
    public var daily: Int?
    public var weekly: Int?
    public var monthly: Int?
    public var yearly: Int?

    public init(last: Int? = nil, hourly: Int? = nil, daily: Int? = nil, weekly: Int? = nil, monthly: Int? = nil, yearly: Int? = nil) {
        self.last = last
        self.hourly = hourly
        self.daily = daily
        self.weekly = weekly
        self.monthly = monthly
        self.yearly = yearly
    }

    /// Whether any rule has a count above 0 (otherwise everything is kept).
    public var keepsSelection: Bool {
        [last, hourly, daily, weekly, monthly, yearly].contains { ($0 ?? 0) > 0 }
    }

    /// The YAML keys, in the order the rules are applied.
    public static let keys = ["last", "hourly", "daily", "weekly", "monthly", "yearly"]
}

/// A recovery point retention decides about.
public struct RetentionCandidate: Sendable {
    public var id: String
    public var time: Date
    /// Protected points (pinned by an administrator) are never removed.
    public var protected: Bool

    public init(id: String, time: Date, protected: Bool = false) {
        self.id = id
        self.time = time
        self.protected = protected
    }
}

/// What retention decided for one point and which rule decided it: `"last 2 of 3"`, `"daily
/// 2026-11-30"`, `"weekly 2026-W48"`, `"monthly 2026-11"`, `"yearly 2026"`, `"hourly 2026-11-30T14"`,
/// `"protected"`, `"no keep rules: everything is kept"`, or `"no rule keeps it"`.
public struct RetentionDecision: Sendable, Equatable, Codable {
    public var id: String
    public var keep: Bool
    public var rule: String

    public init(id: String, keep: Bool, rule: String) {
        self.id = id
        self.keep = keep
        self.rule = rule
    }
}

extension KeepRules {
    /// Decides for every point, newest first in the output (see the type's documentation for the rules).
    public func evaluate(_ points: [RetentionCandidate], in timeZone: TimeZone) -> [RetentionDecision] {
        let sorted = points.sorted { $0.time != $1.time ? $0.time > $1.time : $0.id > $1.id }
        guard keepsSelection else {
            return sorted.map { RetentionDecision(id: $0.id, keep: true, rule: $0.protected ? "protected" : "no keep rules: everything is kept") }
        }
        enum Mark { case keep(String), remove }
        var marks = [Mark?](repeating: nil, count: sorted.count)
        let periods = sorted.map { PeriodKeys(time: $0.time, timeZone) }

        let rules: [(name: String, count: Int?, key: (Int) -> String)] = [
            ("last", last, { String($0) }),
            ("hourly", hourly, { periods[$0].hour }),
            ("daily", daily, { periods[$0].day }),
            ("weekly", weekly, { periods[$0].week }),
            ("monthly", monthly, { periods[$0].month }),
            ("yearly", yearly, { periods[$0].year }),
        ]
        for rule in rules {
            guard let count = rule.count, count > 0 else { continue }
            var covered = Set<String>()
            for index in sorted.indices {
                if case .keep = marks[index] { covered.insert(rule.key(index)) }
            }
            var included: [String] = []
            for index in sorted.indices where marks[index] == nil && !sorted[index].protected {
                let key = rule.key(index)
                if covered.contains(key) { continue }
                if included.contains(key) {
                    marks[index] = .remove
                    continue
                }
                if included.count >= count { break }
                included.append(key)
                marks[index] = .keep(rule.name == "last" ? "last \(included.count) of \(count)" : "\(rule.name) \(key)")
            }
        }
        return sorted.indices.map { index in
            if sorted[index].protected { return RetentionDecision(id: sorted[index].id, keep: true, rule: "protected") }
            if case let .keep(rule) = marks[index] { return RetentionDecision(id: sorted[index].id, keep: true, rule: rule) }
            if index == 0 { return RetentionDecision(id: sorted[index].id, keep: true, rule: "newest point") }
            return RetentionDecision(id: sorted[index].id, keep: false, rule: "no rule keeps it")
        }
    }
}

/// The periods one point falls in, as labels that also name them in decisions.
struct PeriodKeys {
    var hour: String
    var day: String
    var week: String
    var month: String
    var year: String

    init(time: Date, _ timeZone: TimeZone) {
        let seconds = Int(time.timeIntervalSince1970.rounded(.down))
        let wall = seconds + timeZone.secondsFromGMT(for: time)
        let (days, secondOfDay) = CalendarEvent.divide(wall, 86_400)
        let (y, m, d) = CalendarEvent.civil(fromDays: days)
        // ISO 8601: the week belongs to the year of its Thursday.
        let thursday = days - CalendarEvent.weekday(fromDays: days) + 3
        let isoYear = CalendarEvent.civil(fromDays: thursday).year
        let isoWeek = (thursday - CalendarEvent.days(year: isoYear, month: 1, day: 1)) / 7 + 1
        year = Self.pad(y, 4)
        month = year + "-" + Self.pad(m, 2)
        day = month + "-" + Self.pad(d, 2)
        hour = day + "T" + Self.pad(secondOfDay / 3600, 2)
        week = Self.pad(isoYear, 4) + "-W" + Self.pad(isoWeek, 2)
    }

    static func pad(_ value: Int, _ width: Int) -> String {
        let text = String(value)
        return text.count >= width ? text : String(repeating: "0", count: width - text.count) + text
    }
}
