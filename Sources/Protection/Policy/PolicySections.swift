import Foundation
import ShadowCopy
import Yams

/// The readers of each policy section: the values' shapes and ranges. What the values point at (a
/// disk that exists, a writable target) is `PolicyCheck`'s business, so a policy can be parsed on a
/// machine other than the one it runs on.
extension PolicyReader {
    /// `name` and `machine`: `[A-Za-z0-9._-]+`, and not `.` or `..` (the machine becomes a folder).
    mutating func identifier(_ node: Node, _ key: String) -> String? {
        guard let value = string(node, "'\(key)'") else { return nil }
        let allowed = value.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "." || $0 == "_" || $0 == "-"
        }
        guard !value.isEmpty, allowed, value.contains(where: { $0 != "." }) else {
            error(node, "\(key) '\(value)' may hold only letters, digits, '.', '_' and '-' (and not only dots)",
                  fix: key == "machine" ? "it becomes a folder name on the target: use e.g. web01" : "use e.g. web01-nightly")
            return nil
        }
        return value
    }

    mutating func sources(_ node: Node, locations: inout PolicyLoader.Locations) -> [PolicySource]? {
        guard let items = sequence(node, "'sources'", example: "disk: /path/to/disk.vhdx") else { return nil }
        guard !items.isEmpty else {
            error(node, "'sources' is empty: a policy backs up at least one disk", fix: "add a `- disk: /path/to/disk.vhdx` line")
            return nil
        }
        var result: [PolicySource] = []
        var seen: [String: PolicyLocation] = [:]
        var failed = false
        for item in items {
            guard let entries = mapping(item, "a source", allowed: ["disk", "machine", "files"]) else { failed = true; continue }
            if let files = entries["files"]?.value {
                guard entries.count == 1 else {
                    error(item, "a source is one of `disk: PATH`, `machine: true` or `files: [PATH, ...]`", fix: "split them into separate `- ` items")
                    failed = true
                    continue
                }
                guard let list = sequence(files, "'files'", example: "files: [/etc, /srv/www]"), !list.isEmpty else {
                    if case .sequence = files { error(files, "'files' is empty", fix: "list the folders and files to archive, e.g. `files: [/etc, /srv/www]`") }
                    failed = true
                    continue
                }
                var paths: [String] = []
                for node in list {
                    guard let path = absolutePath(node, "a file-set path") else { failed = true; continue }
                    paths.append(path)
                }
                locations.sources.append(Self.location(files))
                result.append(.files(paths))
                continue
            }
            if let machine = entries["machine"]?.value {
                guard entries["disk"] == nil else {
                    error(item, "a source is either `disk: PATH` or `machine: true`, not both", fix: "split them into two `- ` items")
                    failed = true
                    continue
                }
                let all = bool(machine, "machine")
                guard all == true else {
                    if all == false {
                        error(machine, "'machine: false' captures nothing", fix: "remove the source, or write `machine: true` for every whole disk")
                    }
                    failed = true
                    continue
                }
                if let first = seen["machine"] {
                    error(item, "'machine: true' is listed twice (first at line \(first.line))", fix: "remove one of them")
                    failed = true
                    continue
                }
                seen["machine"] = Self.location(machine)
                locations.sources.append(Self.location(machine))
                result.append(.machine)
                continue
            }
            guard let value = required(entries, "disk", in: item, fix: "write the source as `- disk: /path/to/disk.vhdx` (or `- machine: true` for every whole disk)"),
                  let path = absolutePath(value, "disk") else { failed = true; continue }
            let at = Self.location(value)
            if let first = seen[path] {
                error(value, "disk '\(path)' is listed twice (first at line \(first.line))", fix: "remove one of them")
                failed = true
                continue
            }
            seen[path] = at
            locations.sources.append(at)
            result.append(.disk(path))
        }
        if !failed, result.contains(where: { if case .files = $0 { true } else { false } }),
           result.contains(where: { if case .files = $0 { false } else { true } }) {
            error(node, "a policy backs up disks or file sets, not both (retention folds disk points, and file sets are kept differently)",
                  fix: "move the `files:` sources into a policy of their own")
            return nil
        }
        return failed ? nil : result
    }

    mutating func consistency(_ node: Node, locations: inout PolicyLoader.Locations) -> ConsistencySettings? {
        guard let entries = mapping(node, "'consistency'", allowed: PolicyLoader.consistencyKeys) else { return nil }
        var settings = ConsistencySettings()
        if let entry = entries["writers"] {
            locations.writers = Self.location(entry.key)
            if !Self.isNull(entry.value), let items = sequence(entry.value, "'writers'", example: "{qga: /run/vm/qga.sock}") {
                settings.writers = items.compactMap { writer($0) }
            }
        }
        if let entry = entries["provider"], let value = string(entry.value, "'provider'") {
            if let kind = ProviderKind(rawValue: value.lowercased()) {
                settings.provider = kind
            } else {
                let names = ProviderKind.allCases.map(\.rawValue)
                let near = Self.closest(value, in: names)
                error(entry.value, "unknown provider '\(value)'" + (near.map { "; did you mean '\($0)'?" } ?? ""),
                      fix: "use one of \(names.joined(separator: ", "))")
            }
        }
        if let entry = entries["allow-crash-consistent"], let value = bool(entry.value, "'allow-crash-consistent'") {
            settings.allowCrashConsistent = value
        }
        if let entry = entries["hold-timeout"], let seconds = duration(entry.value, "'hold-timeout'") {
            if let problem = SnapshotPolicy.holdTimeoutProblem(seconds) {
                error(entry.value, "'hold-timeout': \(problem)")
            } else {
                settings.holdTimeout = seconds
            }
        }
        if let entry = entries["snapshot-dir"], !Self.isNull(entry.value) {
            settings.snapshotDirectory = absolutePath(entry.value, "snapshot-dir")
        }
        return settings
    }

    /// `{qga: SOCKET[, mountpoints: [...]]}`, `{hook: PATH[, timeout: 30s]}` or `{fsfreeze: MOUNTPOINT}`.
    mutating func writer(_ node: Node) -> WriterSpec? {
        guard let entries = mapping(node, "a writer", allowed: PolicyLoader.writerKeys) else { return nil }
        let kinds = ["qga", "hook", "fsfreeze"].filter { entries[$0] != nil }
        let forms = "write {qga: SOCKET}, {hook: PATH} or {fsfreeze: MOUNTPOINT}"
        guard kinds.count == 1, let kind = kinds.first, let entry = entries[kind] else {
            error(node, kinds.isEmpty ? "a writer needs one of qga, hook or fsfreeze"
                                      : "a writer is one of qga, hook or fsfreeze, not \(kinds.joined(separator: " and "))",
                  fix: kinds.isEmpty ? forms : "give each writer its own list item: \(forms)")
            return nil
        }
        if kind != "qga", let extra = entries["mountpoints"] {
            error(extra.key, "'mountpoints' belongs to a qga writer, not a \(kind) writer", fix: "move it next to the qga socket, or remove it")
        }
        if kind != "hook", let extra = entries["timeout"] {
            error(extra.key, "'timeout' belongs to a hook writer, not a \(kind) writer",
                  fix: "remove it; the freeze hold is consistency.hold-timeout")
        }
        let what = ["qga": "qga socket", "hook": "hook", "fsfreeze": "fsfreeze mountpoint"][kind] ?? kind
        guard let path = absolutePath(entry.value, what) else { return nil }
        switch kind {
        case "qga":
            var mountpoints: [String] = []
            if let list = entries["mountpoints"], !Self.isNull(list.value),
               let items = sequence(list.value, "'mountpoints'", example: "/var") {
                mountpoints = items.compactMap { absolutePath($0, "mountpoint") }
            }
            return .qga(socket: path, mountpoints: mountpoints)
        case "hook":
            var timeout: Double?
            if let value = entries["timeout"]?.value, !Self.isNull(value) {
                timeout = duration(value, "hook 'timeout'")
                if timeout == 0 { error(value, "hook 'timeout' must be more than 0", fix: "give it time to run, e.g. 30s") }
            }
            return .hook(path: path, timeout: timeout)
        default:
            return .fsfreeze(mountpoint: path)
        }
    }

    mutating func keep(_ node: Node) -> KeepRules? {
        guard let entries = mapping(node, "'keep'", allowed: KeepRules.keys) else { return nil }
        func value(_ key: String) -> Int? {
            guard let entry = entries[key], !Self.isNull(entry.value) else { return nil }
            return count(entry.value, "keep '\(key)'")
        }
        return KeepRules(last: value("last"), hourly: value("hourly"), daily: value("daily"),
                         weekly: value("weekly"), monthly: value("monthly"), yearly: value("yearly"))
    }

    mutating func retry(_ node: Node) -> RetrySettings? {
        guard let entries = mapping(node, "'retry'", allowed: PolicyLoader.retryKeys) else { return nil }
        var settings = RetrySettings()
        if let entry = entries["attempts"], let attempts = count(entry.value, "retry 'attempts'") { settings.attempts = attempts }
        if let entry = entries["delay"], let delay = duration(entry.value, "retry 'delay'") { settings.delay = delay }
        return settings
    }
}
