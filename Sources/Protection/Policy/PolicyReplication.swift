import Foundation
import Replication
import Targets
import Yams

/// The readers of the target's location and credentials and of the `replicate:` section.
extension PolicyReader {
    /// A local absolute path, or `smb://[domain;]user@host[:port]/share[/path]` (no password: that
    /// goes in the credentials file). `key` names the setting in messages (`target`, `replicate 'to'`).
    mutating func location(_ node: Node, _ key: String) -> String? {
        guard let value = string(node, "'\(key)'") else { return nil }
        let fix = "write a local folder (/var/backups/bulwark) or smb://user@host/share/path"
        if value.hasPrefix("/") { return value }
        if let scheme = value.range(of: "://") {
            let name = value[..<scheme.lowerBound].lowercased()
            guard name == "smb" else {
                error(node, "\(key) scheme '\(name)' is not supported (only local folders and smb://)", fix: fix)
                return nil
            }
            do {
                _ = try SMBLocation(parsing: value)
            } catch let failure as TargetError {
                if case let .invalidLocation(shown, reason) = failure {
                    error(node, "\(key) '\(shown)': \(reason)", fix: fix)
                } else {
                    error(node, "\(key): \(failure)", fix: fix)
                }
                return nil
            } catch {
                self.error(node, "\(key): \(error)", fix: fix)
                return nil
            }
            return value
        }
        error(node, "\(key) '\(value)' is neither an absolute path nor an smb:// URL", fix: fix)
        return nil
    }

    /// The credentials file a location needs: required for `smb://`, refused for a local folder
    /// (a stray password file named in a policy is a mistake worth pointing out).
    mutating func credentials(_ entry: (key: Node, value: Node)?, for location: String?, key: String, at locationNode: Node) -> String? {
        guard let location else { return nil }
        let isSMB = SMBLocation.isSMB(location)
        guard let entry, !Self.isNull(entry.value) else {
            if isSMB {
                error(locationNode, "\(location) is an smb:// share: it needs a 'credentials' file next to it",
                      fix: "add `credentials: /etc/bulwark/NAME.cred` naming a file with username=, password= (and domain=) lines, mode 0600")
            }
            return nil
        }
        guard let path = absolutePath(entry.value, "'\(key)'") else { return nil }
        if !isSMB {
            error(entry.key, "'\(key)' is given but \(location) is a local folder, which needs no credentials", fix: "remove it")
            return nil
        }
        return path
    }

    mutating func replicate(_ node: Node) -> ReplicationSettings? {
        guard let entries = mapping(node, "'replicate'", allowed: PolicyLoader.replicateKeys) else { return nil }
        guard let toNode = required(entries, "to", in: node, fix: "add `to: smb://user@host/share/path` (or a local folder)"),
              let to = location(toNode, "replicate 'to'") else {
            return nil
        }
        var settings = ReplicationSettings(to: to)
        settings.credentials = credentials(entries["credentials"], for: to, key: "credentials", at: toNode)
        if let entry = entries["throttle"], !Self.isNull(entry.value), let schedule = throttle(entry.value) {
            settings.throttle = schedule
        }
        if let entry = entries["keep"], !Self.isNull(entry.value), let rules = keep(entry.value) {
            if rules.keepsSelection {
                settings.keep = rules
            } else {
                error(entry.value, "replicate 'keep' keeps nothing: every count is 0 or absent",
                      fix: "give at least one count, e.g. keep: {last: 14}, or remove it so the destination keeps every point")
            }
        }
        if let entry = entries["alert-after"], let seconds = duration(entry.value, "replicate 'alert-after'") {
            if seconds < 60 {
                error(entry.value, "replicate 'alert-after' of \(Int(seconds)) s would warn after almost every run", fix: "use hours, e.g. 24h")
            } else {
                settings.alertAfter = seconds
            }
        }
        return settings
    }

    /// `throttle: RATE` (the same rate all week), or
    /// `{work-hours: WINDOW or [WINDOW, ...], other-hours: RATE}` with each window
    /// `{days: mon..fri, from: "08:00", to: "18:00", rate: 10MiB/s}`.
    mutating func throttle(_ node: Node) -> BandwidthSchedule? {
        if case .scalar = node {
            guard let text = string(node, "replicate 'throttle'") else { return nil }
            guard let rate = rate(node, text, "replicate 'throttle'") else { return nil }
            return .fixed(rate)
        }
        guard let entries = mapping(node, "replicate 'throttle'", allowed: PolicyLoader.throttleKeys) else { return nil }
        var windows: [BandwidthSchedule.Window] = []
        var failed = false
        if let entry = entries["work-hours"], !Self.isNull(entry.value) {
            let items: [Node]
            if case .sequence = entry.value { items = sequence(entry.value, "'work-hours'", example: "{days: mon..fri, from: \"08:00\", to: \"18:00\", rate: 10MiB/s}") ?? [] } else { items = [entry.value] }
            for item in items {
                if let window = window(item) { windows.append(window) } else { failed = true }
            }
        }
        var other = ByteRate.unlimited
        if let entry = entries["other-hours"], !Self.isNull(entry.value), let text = string(entry.value, "'other-hours'") {
            if let rate = rate(entry.value, text, "'other-hours'") { other = rate } else { failed = true }
        }
        return failed ? nil : BandwidthSchedule(workHours: windows, otherHours: other)
    }

    mutating func rate(_ node: Node, _ text: String, _ what: String) -> ByteRate? {
        do {
            return try ByteRate(parsing: text)
        } catch let failure as ThrottleSyntaxError {
            error(node, "\(what): \(failure.message)", fix: failure.fix ?? ByteRate.examples)
        } catch {
            self.error(node, "\(what): \(error)", fix: ByteRate.examples)
        }
        return nil
    }

    /// One work-hours window; an error points at the key at fault.
    mutating func window(_ node: Node) -> BandwidthSchedule.Window? {
        guard let entries = mapping(node, "a work-hours window", allowed: PolicyLoader.windowKeys) else { return nil }
        var values: [String: String] = [:]
        for key in ["from", "to", "rate"] {
            guard let value = required(entries, key, in: node, fix: "write the window as {days: mon..fri, from: \"08:00\", to: \"18:00\", rate: 10MiB/s}"),
                  let text = string(value, "window '\(key)'") else { return nil }
            values[key] = text
        }
        var days: String?
        if let entry = entries["days"], !Self.isNull(entry.value) {
            guard let text = string(entry.value, "window 'days'") else { return nil }
            days = text
        }
        do {
            return try BandwidthSchedule.Window(days: days, from: values["from"]!, to: values["to"]!, rate: values["rate"]!)
        } catch let failure as ThrottleSyntaxError {
            let at = failure.key.flatMap { entries[$0]?.value } ?? node
            error(at, "work-hours window\(failure.key.map { " '\($0)'" } ?? ""): \(failure.message)", fix: failure.fix)
        } catch {
            self.error(node, "work-hours window: \(error)")
        }
        return nil
    }
}
