import Foundation
import Yams

/// A place in a policy file (1-based; 0 and 0: the file as a whole).
struct PolicyLocation: Sendable, Equatable {
    var line: Int
    var column: Int

    static let file = PolicyLocation(line: 0, column: 0)
}

/// Walks a composed YAML node tree and collects every problem instead of stopping at the first, so
/// one `policy check` run lists all there is to fix. Each reader returns nil when the value is
/// unusable (after recording why); the loader then carries on with the other keys.
struct PolicyReader {
    let file: String
    var diagnostics: [PolicyDiagnostic] = []

    init(file: String) {
        self.file = file
    }

    static func location(_ node: Node?) -> PolicyLocation {
        guard let mark = node?.mark else { return .file }
        return PolicyLocation(line: mark.line, column: mark.column)
    }

    mutating func error(_ at: PolicyLocation, _ message: String, fix: String? = nil) {
        diagnostics.append(PolicyDiagnostic(file: file, line: at.line, column: at.column, message: message, fix: fix))
    }

    mutating func error(_ node: Node?, _ message: String, fix: String? = nil) {
        error(Self.location(node), message, fix: fix)
    }

    static func isNull(_ node: Node) -> Bool {
        if case let .scalar(scalar) = node { return scalar.style == .plain && node.tag == Tag(.null) }
        return false
    }

    static func kind(_ node: Node) -> String {
        switch node {
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .alias: "an alias"
        case .scalar: isNull(node) ? "nothing" : "'\(node.scalar?.string ?? "")'"
        }
    }

    /// A mapping's entries by key. Keys not in `allowed` are reported with the closest valid key.
    mutating func mapping(_ node: Node, _ what: String, allowed: [String]) -> [String: (key: Node, value: Node)]? {
        guard case let .mapping(mapping) = node else {
            error(node, "\(what) must be a mapping of keys to values, not \(Self.kind(node))",
                  fix: "write it as `key: value` lines indented under it, or {key: value}; keys: \(allowed.joined(separator: ", "))")
            return nil
        }
        var entries: [String: (key: Node, value: Node)] = [:]
        for (key, value) in mapping {
            guard case let .scalar(scalar) = key else {
                error(key, "a key in \(what) must be a plain word, not \(Self.kind(key))")
                continue
            }
            let name = scalar.string
            guard allowed.contains(name) else {
                if let near = Self.closest(name, in: allowed) {
                    error(key, "unknown key '\(name)' in \(what); did you mean '\(near)'?", fix: "rename it to '\(near)'")
                } else {
                    error(key, "unknown key '\(name)' in \(what)", fix: "valid keys: \(allowed.joined(separator: ", "))")
                }
                continue
            }
            entries[name] = (key, value)
        }
        return entries
    }

    /// The value of a required key, or an error at the mapping when it is absent or empty.
    mutating func required(_ entries: [String: (key: Node, value: Node)], _ key: String, in parent: Node, fix: String) -> Node? {
        guard let entry = entries[key] else {
            error(parent, "missing required key '\(key)'", fix: fix)
            return nil
        }
        if Self.isNull(entry.value) {
            error(entry.key, "'\(key)' has no value", fix: fix)
            return nil
        }
        return entry.value
    }

    mutating func string(_ node: Node, _ what: String) -> String? {
        guard case let .scalar(scalar) = node, !Self.isNull(node) else {
            error(node, "\(what) must be a single value, not \(Self.kind(node))")
            return nil
        }
        return scalar.string
    }

    mutating func absolutePath(_ node: Node, _ what: String) -> String? {
        guard let path = string(node, what) else { return nil }
        guard path.hasPrefix("/") else {
            error(node, "\(what) '\(path)' is not an absolute path",
                  fix: "write the full path from /: jobs run from the daemon, whose working folder is not this file's")
            return nil
        }
        return path
    }

    mutating func sequence(_ node: Node, _ what: String, example: String) -> [Node]? {
        guard case let .sequence(sequence) = node else {
            error(node, "\(what) must be a list, not \(Self.kind(node))", fix: "write one `- \(example)` line per item, or [\(example)]")
            return nil
        }
        return Array(sequence)
    }

    mutating func count(_ node: Node, _ what: String) -> Int? {
        guard case .scalar = node, let value = node.int else {
            error(node, "\(what) must be a whole number, not \(Self.kind(node))", fix: "write a number such as 7")
            return nil
        }
        guard value >= 0 else {
            error(node, "\(what) cannot be negative (\(value))", fix: "write 0 or more")
            return nil
        }
        return value
    }

    mutating func bool(_ node: Node, _ what: String) -> Bool? {
        guard case .scalar = node, let value = node.bool else {
            error(node, "\(what) must be true or false, not \(Self.kind(node))")
            return nil
        }
        return value
    }

    /// A duration in seconds: a number, or a string of number+unit pairs (`30s`, `5m`, `2h`, `1d`, `1h30m`).
    mutating func duration(_ node: Node, _ what: String) -> Double? {
        let fix = "write seconds as a number (30) or with a unit: 30s, 5m, 2h, 1d"
        guard case let .scalar(scalar) = node, !Self.isNull(node) else {
            error(node, "\(what) must be a duration, not \(Self.kind(node))", fix: fix)
            return nil
        }
        guard let seconds = Self.parseDuration(scalar.string) else {
            if scalar.string.hasPrefix("-") {
                error(node, "\(what) cannot be negative ('\(scalar.string)')", fix: fix)
            } else {
                error(node, "\(what) '\(scalar.string)' is not a duration", fix: fix)
            }
            return nil
        }
        return seconds
    }

    static func parseDuration(_ text: String) -> Double? {
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        if let plain = Double(trimmed) { return plain.isFinite && plain >= 0 ? plain : nil }
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        var total = 0.0
        var number = ""
        for character in trimmed {
            if character.isNumber || character == "." {
                number.append(character)
            } else if let unit = units[character], let value = Double(number) {
                total += value * unit
                number = ""
            } else {
                return nil
            }
        }
        return number.isEmpty && !trimmed.isEmpty && total.isFinite ? total : nil
    }

    /// A calendar event; an error points at the column of the part that is wrong.
    mutating func calendarEvent(_ node: Node, _ key: String) -> CalendarEvent? {
        guard case let .scalar(scalar) = node, !Self.isNull(node) else {
            error(node, "'\(key)' must be a calendar event such as \"mon..sat 23:05\", not \(Self.kind(node))")
            return nil
        }
        do {
            return try CalendarEvent(parsing: scalar.string)
        } catch let failure as CalendarEventError {
            var at = Self.location(node)
            let quoted = scalar.style == .singleQuoted || scalar.style == .doubleQuoted
            if at.line > 0, scalar.style != .literal, scalar.style != .folded {
                at.column += (quoted ? 1 : 0) + (failure.column ?? 1) - 1
            }
            error(at, "'\(key)': \(failure.message) in \"\(scalar.string)\"", fix: failure.fix)
        } catch {
            self.error(node, "'\(key)': \(error)")
        }
        return nil
    }

    /// The candidate nearest to `word` by edit distance, if near enough to be a typo.
    static func closest(_ word: String, in candidates: [String]) -> String? {
        let scored = candidates.map { (candidate: $0, distance: editDistance(word.lowercased(), $0)) }
        guard let best = scored.min(by: { $0.distance < $1.distance }) else { return nil }
        return best.distance <= max(2, word.count / 3) ? best.candidate : nil
    }

    /// Levenshtein distance.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}
