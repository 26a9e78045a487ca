import Foundation

/// A calendar event in the systemd / Proxmox Backup Server style: `[WEEKDAYS] [[YEARS-]MONTHS-DAYS]
/// [HOURS:MINUTES[:SECONDS]]`, or one of the shorthands `minutely hourly daily weekly monthly yearly
/// annually quarterly semiannually`.
///
/// Why this syntax: administrators who schedule backups on Linux already write it for systemd timers
/// and Proxmox Backup Server jobs, and it says "Monday to Saturday at 23:05" in one short line.
///
/// - Weekdays: `mon`..`sun` or full names, lists `mon,wed,fri`, ranges `mon..sat` (omitted: every day).
/// - Date: `YYYY-MM-DD` or `MM-DD`; each part `*`, a number, a list `1,15`, a range `1..7`, or a
///   repetition `*/2` / `1/2` / `1..15/2` (start, then every N) (omitted: every day).
/// - Time: `HH:MM` or `HH:MM:SS` with the same forms per part (omitted: `00:00:00`; seconds omitted: `00`).
/// - The weekday and the date must both match, as in systemd.
///
/// Times are wall-clock times in the time zone given to `next(after:in:)`. A wall-clock time that does
/// not exist that day (skipped by a DST change) does not fire, as systemd does; one that happens twice
/// (the hour repeated in autumn) fires once, at its first occurrence.
public struct CalendarEvent: Sendable, Equatable, CustomStringConvertible {
    /// The text as written in the policy.
    public let text: String

    let years: CalendarField
    let months: [Int]
    let days: [Int]
    /// Bit n set: weekday n matches (0 is Monday ... 6 is Sunday).
    let weekdays: UInt8
    let hours: [Int]
    let minutes: [Int]
    let seconds: [Int]

    public var description: String { text }

    /// Parses `text`; throws `CalendarEventError` naming the part that is wrong and how to write it.
    public init(parsing text: String) throws {
        self.text = text
        var parser = CalendarEventParser(text: text)
        let parsed = try parser.parse()
        years = parsed.years
        months = (1...12).filter(parsed.months.contains)
        days = (1...31).filter(parsed.days.contains)
        weekdays = (0...6).reduce(UInt8(0)) { parsed.weekdays.contains($1) ? $0 | (1 << UInt8($1)) : $0 }
        hours = (0...23).filter(parsed.hours.contains)
        minutes = (0...59).filter(parsed.minutes.contains)
        seconds = (0...59).filter(parsed.seconds.contains)
    }
}

/// Why a calendar event could not be parsed, where, and how to write it instead.
public struct CalendarEventError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var fix: String?
    /// 1-based column inside the event text of the part that is wrong, when known.
    public var column: Int?

    public init(message: String, fix: String? = nil, column: Int? = nil) {
        self.message = message
        self.fix = fix
        self.column = column
    }

    public var description: String {
        (column.map { "column \($0): " } ?? "") + message + (fix.map { " (fix: \($0))" } ?? "")
    }
}

/// One part of an event (years, hours, ...): a union of ranges with a step; empty means "any".
struct CalendarField: Sendable, Equatable {
    struct Part: Sendable, Equatable {
        var low: Int
        var high: Int
        var step: Int
    }

    var parts: [Part] = []

    static let any = CalendarField()

    static func single(_ value: Int) -> CalendarField { CalendarField(parts: [Part(low: value, high: value, step: 1)]) }

    func contains(_ value: Int) -> Bool {
        parts.isEmpty || parts.contains { value >= $0.low && value <= $0.high && (value - $0.low) % $0.step == 0 }
    }

    /// The largest value that can match, or nil when the field is open-ended.
    var maximum: Int? { parts.isEmpty ? nil : parts.map(\.high).max() }
}

/// The grammar, kept apart from the search so each stays readable.
struct CalendarEventParser {
    struct Parsed {
        var years = CalendarField.any
        var months = CalendarField.any
        var days = CalendarField.any
        var weekdays = CalendarField.any
        var hours = CalendarField.single(0)
        var minutes = CalendarField.single(0)
        var seconds = CalendarField.single(0)
    }

    let text: String

    static let shorthands: [String: String] = [
        "minutely": "*-*-* *:*:00",
        "hourly": "*-*-* *:00:00",
        "daily": "*-*-* 00:00:00",
        "weekly": "mon *-*-* 00:00:00",
        "monthly": "*-*-01 00:00:00",
        "yearly": "*-01-01 00:00:00",
        "annually": "*-01-01 00:00:00",
        "quarterly": "*-01,04,07,10-01 00:00:00",
        "semiannually": "*-01,07-01 00:00:00",
        "semi-annually": "*-01,07-01 00:00:00",
    ]

    static let weekdayNames: [(short: String, long: String)] = [
        ("mon", "monday"), ("tue", "tuesday"), ("wed", "wednesday"), ("thu", "thursday"),
        ("fri", "friday"), ("sat", "saturday"), ("sun", "sunday"),
    ]

    static let example = "write it like \"mon..sat 23:05\", \"*-*-01 02:00\", \"*:0/15\" or \"daily\""

    mutating func parse() throws -> Parsed {
        let lowered = text.lowercased()
        let trimmed = lowered.trimmingCharacters(in: .whitespaces)
        if let expansion = Self.shorthands[trimmed] {
            var inner = CalendarEventParser(text: expansion)
            return try inner.parse()
        }
        let tokens = Self.tokens(lowered)
        guard !tokens.isEmpty else {
            throw CalendarEventError(message: "empty calendar event", fix: Self.example, column: 1)
        }
        var parsed = Parsed()
        var index = 0
        if let first = tokens.first?.text.first, first.isLetter {
            parsed.weekdays = try weekdays(tokens[0])
            index = 1
        }
        if index < tokens.count, !tokens[index].text.contains(":") {
            let token = tokens[index]
            guard token.text.contains("-") else {
                throw CalendarEventError(message: "'\(token.text)' is neither a weekday, a date (MONTH-DAY or YEAR-MONTH-DAY) nor a time (HH:MM)",
                                         fix: Self.example, column: token.column)
            }
            try date(token, into: &parsed)
            index += 1
        }
        if index < tokens.count {
            let token = tokens[index]
            guard token.text.contains(":") else {
                throw CalendarEventError(message: "'\(token.text)' is not a time (HH:MM or HH:MM:SS)",
                                         fix: "the time comes last: \(Self.example)", column: token.column)
            }
            try time(token, into: &parsed)
            index += 1
        }
        if index < tokens.count {
            let token = tokens[index]
            throw CalendarEventError(message: "unexpected '\(token.text)' after the end of the event",
                                     fix: "the order is WEEKDAYS DATE TIME, each at most once: \(Self.example)", column: token.column)
        }
        return parsed
    }

    struct Token {
        var text: Substring
        /// 1-based.
        var column: Int
    }

    static func tokens(_ text: String) -> [Token] {
        var result: [Token] = []
        var start: String.Index?
        var column = 0
        var startColumn = 0
        for index in text.indices {
            column += 1
            let blank = text[index] == " " || text[index] == "\t"
            if blank, let s = start {
                result.append(Token(text: text[s..<index], column: startColumn))
                start = nil
            } else if !blank, start == nil {
                start = index
                startColumn = column
            }
        }
        if let s = start { result.append(Token(text: text[s...], column: startColumn)) }
        return result
    }

    func weekdays(_ token: Token) throws -> CalendarField {
        var field = CalendarField()
        for (item, column) in Self.split(token.text, by: ",", column: token.column) {
            let bounds = item.components(separatedBy: "..")
            guard bounds.count <= 2 else {
                throw CalendarEventError(message: "'\(item)' is not a weekday or a weekday range", fix: "write a range as mon..fri", column: column)
            }
            let values = try bounds.map { name -> Int in
                guard let value = Self.weekdayNames.firstIndex(where: { $0.short == name || $0.long == name }) else {
                    throw CalendarEventError(message: "'\(name)' is not a weekday",
                                             fix: "use mon, tue, wed, thu, fri, sat, sun (or full names), lists mon,wed and ranges mon..fri",
                                             column: column)
                }
                return value
            }
            let low = values[0], high = values[values.count - 1]
            guard low <= high else {
                throw CalendarEventError(message: "weekday range '\(item)' goes backwards (weeks start on Monday)",
                                         fix: "list the days instead, e.g. sat,sun,mon", column: column)
            }
            field.parts.append(.init(low: low, high: high, step: 1))
        }
        return field
    }

    func date(_ token: Token, into parsed: inout Parsed) throws {
        let parts = Self.split(token.text, by: "-", column: token.column)
        switch parts.count {
        case 3:
            parsed.years = try field(parts[0], name: "year", 1970...9999)
            parsed.months = try field(parts[1], name: "month", 1...12)
            parsed.days = try field(parts[2], name: "day", 1...31)
        case 2:
            parsed.months = try field(parts[0], name: "month", 1...12)
            parsed.days = try field(parts[1], name: "day", 1...31)
        default:
            throw CalendarEventError(message: "'\(token.text)' is not a date", fix: "write YEAR-MONTH-DAY or MONTH-DAY, e.g. *-*-01 or 2027-01-01", column: token.column)
        }
    }

    func time(_ token: Token, into parsed: inout Parsed) throws {
        let parts = Self.split(token.text, by: ":", column: token.column)
        guard parts.count == 2 || parts.count == 3 else {
            throw CalendarEventError(message: "'\(token.text)' is not a time", fix: "write HH:MM or HH:MM:SS, e.g. 23:05 or *:0/15", column: token.column)
        }
        parsed.hours = try field(parts[0], name: "hour", 0...23)
        parsed.minutes = try field(parts[1], name: "minute", 0...59)
        parsed.seconds = parts.count == 3 ? try field(parts[2], name: "second", 0...59) : .single(0)
    }

    /// One part: `*`, `N`, `A..B`, `N/S`, `*/S`, `A..B/S`, or a comma list of those.
    func field(_ part: (Substring, Int), name: String, _ range: ClosedRange<Int>) throws -> CalendarField {
        var field = CalendarField()
        for (item, column) in Self.split(part.0, by: ",", column: part.1) {
            let stepSplit = item.split(separator: "/", omittingEmptySubsequences: false)
            guard stepSplit.count <= 2 else {
                throw CalendarEventError(message: "'\(item)' has more than one '/'", fix: "write START/STEP, e.g. 0/15", column: column)
            }
            var step = 1
            if stepSplit.count == 2 {
                guard let value = Int(stepSplit[1]), value > 0 else {
                    throw CalendarEventError(message: "'\(stepSplit[1])' is not a repetition step for the \(name)",
                                             fix: "the step after '/' is a whole number of at least 1, e.g. */15", column: column)
                }
                step = value
            }
            let base = stepSplit[0]
            if base == "*" {
                if stepSplit.count == 1 { field.parts = []; return .any }
                field.parts.append(.init(low: range.lowerBound, high: range.upperBound, step: step))
                continue
            }
            let bounds = base.components(separatedBy: "..")
            guard bounds.count <= 2 else {
                throw CalendarEventError(message: "'\(item)' is not a \(name)", fix: "write a range as 8..18", column: column)
            }
            let values = try bounds.map { text -> Int in
                guard !text.isEmpty, text.allSatisfy(\.isASCII), text.allSatisfy(\.isNumber), let value = Int(text) else {
                    throw CalendarEventError(message: "'\(text)' is not a \(name)",
                                             fix: "use a number from \(range.lowerBound) to \(range.upperBound), *, a list 1,15, a range 1..5 or a repetition */2",
                                             column: column)
                }
                guard range.contains(value) else {
                    throw CalendarEventError(message: "\(name) \(value) is out of range",
                                             fix: "use a \(name) from \(range.lowerBound) to \(range.upperBound)", column: column)
                }
                return value
            }
            let low = values[0]
            let high = bounds.count == 2 ? values[1] : (stepSplit.count == 2 ? range.upperBound : low)
            guard low <= high else {
                throw CalendarEventError(message: "\(name) range '\(base)' goes backwards", fix: "write the smaller \(name) first", column: column)
            }
            field.parts.append(.init(low: low, high: high, step: step))
        }
        return field
    }

    /// Splits `text` keeping the 1-based column of each piece.
    static func split(_ text: Substring, by separator: Character, column: Int) -> [(Substring, Int)] {
        var result: [(Substring, Int)] = []
        var offset = column
        for piece in text.split(separator: separator, omittingEmptySubsequences: false) {
            result.append((piece, offset))
            offset += piece.count + 1
        }
        return result
    }
}
