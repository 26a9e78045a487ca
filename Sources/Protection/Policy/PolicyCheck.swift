import Layout
import Foundation
import SystemPackage
import Targets

/// `bulwark policy check`: everything that would make a policy fail or surprise at its first run,
/// found before that run: the parse errors, then what the values point at on this machine (disks,
/// the target folder), schedules that never fire, and settings that contradict each other.
public enum PolicyCheck {
    /// The diagnostics for `file`, sorted by line (empty: the policy is good). `now` and `timeZone`
    /// decide whether a schedule still fires.
    public static func check(file: String, now: Date = Date(), timeZone: TimeZone = .current) -> [PolicyDiagnostic] {
        let text: String
        do {
            text = try PolicyLoader.read(file: file)
        } catch {
            return error.diagnostics
        }
        let parsed = PolicyLoader.parseLocated(text, file: file)
        guard let policy = parsed.policy else { return PolicyDiagnostic.sorted(parsed.diagnostics) }
        return PolicyDiagnostic.sorted(semantic(policy, locations: parsed.locations, file: file, now: now, timeZone: timeZone))
    }

    static func semantic(_ policy: Policy, locations: PolicyLoader.Locations, file: String, now: Date, timeZone: TimeZone) -> [PolicyDiagnostic] {
        var found: [PolicyDiagnostic] = []
        func add(_ at: PolicyLocation, _ severity: PolicyDiagnostic.Severity, _ message: String, fix: String?) {
            found.append(PolicyDiagnostic(file: file, line: at.line, column: at.column, message: message, fix: fix, severity: severity))
        }

        // Schedules.
        let events: [(String, CalendarEvent?, PolicyLocation)] = [
            ("schedule", policy.schedule, locations.schedule), ("full", policy.full, locations.full), ("verify", policy.verify, locations.verify),
        ]
        for (key, event, at) in events {
            guard let event, event.next(after: now, in: timeZone) == nil else { continue }
            add(at, .error, "'\(key)' \"\(event.text)\" never fires (no date matches in the next ten years, \(timeZone.identifier))",
                fix: "check the date part: a day that does not exist in that month (*-02-30), a date in the past, or a weekday that never falls on that date")
        }
        if policy.full != nil, policy.schedule == nil {
            add(locations.full, .error, "'full' is set but 'schedule' is not: with no scheduled runs, none of them is ever a full",
                fix: "add `schedule:` for the incremental runs, or remove `full:`")
        }

        // Sources.
        for (index, source) in policy.sources.enumerated() {
            let at = index < locations.sources.count ? locations.sources[index] : locations.root
            if case let .files(paths) = source {
                for path in paths where !FileManager.default.fileExists(atPath: path) {
                    add(at, .error, "file-set path '\(path)' does not exist", fix: "fix the path, or remove it from `files:`")
                }
                continue
            }
            guard case .disk = source else {
                if HostDisks.list().isEmpty {
                    add(at, .error, "'machine: true' finds no whole disk on this host (/sys/block lists only loop, RAM or mapped devices)",
                        fix: "list the disks to capture with `- disk: /dev/...` or `- disk: /path/to/image`")
                }
                continue
            }
            if let problem = sourceProblem(source.path) {
                add(at, .error, "source disk '\(source.path)' \(problem.message)", fix: problem.fix)
            }
        }

        // Target.
        if policy.target.hasPrefix("/") {
            for diagnostic in targetProblems(policy.target) {
                add(locations.target, diagnostic.severity, diagnostic.message, fix: diagnostic.fix)
            }
        }

        if let file = policy.credentials, let problem = credentialsProblem(file) {
            add(locations.credentials, .error, problem.message, fix: problem.fix)
        }

        // Replication.
        if let replicate = policy.replicate {
            if replicate.to.hasPrefix("/") {
                for diagnostic in targetProblems(replicate.to) {
                    add(locations.replicate, diagnostic.severity, "replicate: " + diagnostic.message, fix: diagnostic.fix)
                }
            }
            if let file = replicate.credentials, let problem = credentialsProblem(file) {
                add(locations.replicateCredentials, .error, "replicate: " + problem.message, fix: problem.fix)
            }
            if replicate.to == policy.target {
                add(locations.replicate, .error, "replicate 'to' is the policy's own target", fix: "name a second target, at another site")
            }
        }

        // Consistency.
        let consistency = policy.consistency
        if consistency.writers.isEmpty, !consistency.allowCrashConsistent, consistency.provider != .none {
            add(locations.writers == .file ? locations.root : locations.writers, .error,
                "no writers are listed, so every point would be crash-consistent, and allow-crash-consistent is false",
                fix: "list the writers that quiesce the data (qga, hook, fsfreeze), or set `allow-crash-consistent: true` (or `provider: none`) to accept crash-consistent points")
        }

        // Retention.
        let counts = [policy.keep.last, policy.keep.hourly, policy.keep.daily, policy.keep.weekly, policy.keep.monthly, policy.keep.yearly]
        if counts.contains(where: { $0 != nil }), !policy.keep.keepsSelection {
            add(locations.keep, .warning, "every keep count is 0: retention keeps every point and the target only grows",
                fix: "give at least one count, e.g. keep: {last: 3, daily: 7}, or remove `keep:` to keep everything on purpose")
        }
        return found
    }

    static func sourceProblem(_ path: String) -> (message: String, fix: String)? {
        var status = stat()
        guard stat(path, &status) == 0 else {
            let code = errno
            if code == ENOENT || code == ENOTDIR {
                return ("does not exist", "check the path, or create the disk before the first run")
            }
            return ("cannot be examined: \(String(cString: strerror(code)))", "check the permissions of the folders leading to it")
        }
        let type = status.st_mode & S_IFMT
        if type == S_IFDIR {
            return ("is a folder, not a disk image or block device", "name the image file (.vhdx, .vhd, .img) or the block device")
        }
        guard type == S_IFREG || type == S_IFBLK else {
            return ("is neither a disk image file nor a block device", "name the image file or the block device")
        }
        guard access(path, R_OK) == 0 else {
            return ("is not readable by this user", "run as the user the jobs run as (usually root), or fix its permissions")
        }
        return nil
    }

    /// Whether a credentials file can be used (exists, private, has a password): read it as the job
    /// will, and report why not without ever showing what is in it.
    static func credentialsProblem(_ file: String) -> (message: String, fix: String)? {
        do {
            _ = try SMBCredentials(file: FilePath(file))
            return nil
        } catch let SMBError.credentialsFile(path, reason) {
            return ("credentials file '\(path)': \(reason)", "create it with username=, password= (and domain=) lines, owned by the job's user, mode 0600")
        } catch {
            return ("credentials file '\(file)': \(error)", "check the file")
        }
    }

    static func targetProblems(_ path: String) -> [(severity: PolicyDiagnostic.Severity, message: String, fix: String)] {
        var status = stat()
        if stat(path, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFDIR else {
                return [(.error, "target '\(path)' is not a folder", "name a folder; points go into <target>/BulwarkBackup/<machine>/")]
            }
            guard access(path, W_OK | X_OK) == 0 else {
                return [(.error, "target folder '\(path)' is not writable by this user",
                         "check its permissions and owner (jobs usually run as root), or choose another folder")]
            }
            return []
        }
        // The nearest existing ancestor decides whether the job can create it.
        var parent = (path as NSString).deletingLastPathComponent
        while !parent.isEmpty, parent != "/", stat(parent, &status) != 0 {
            parent = (parent as NSString).deletingLastPathComponent
        }
        if parent.isEmpty { parent = "/" }
        if stat(parent, &status) == 0, status.st_mode & S_IFMT == S_IFDIR, access(parent, W_OK | X_OK) == 0 {
            return [(.warning, "target folder '\(path)' does not exist yet; the first job will create it",
                     "create it now (mkdir -p \(path)) if it should be on a mounted volume, so the job cannot fill the root filesystem instead")]
        }
        return [(.error, "target folder '\(path)' does not exist and cannot be created ('\(parent)' is not a writable folder)",
                 "create it (mkdir -p \(path)) or check the permissions of \(parent)")]
    }
}
