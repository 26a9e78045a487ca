import Foundation
import ShadowCopy
import Yams

/// Loads policy files. It walks Yams' node tree (not `Decodable`) so that every value keeps its line
/// and column and every problem in a file is reported at once, each with a fix.
public enum PolicyLoader {
    /// The top-level keys, in the order README "Policies" documents them.
    public static let keys = ["name", "machine", "sources", "consistency", "target", "credentials", "schedule", "full", "keep", "verify", "retry",
                              "replicate"]
    static let consistencyKeys = ["writers", "provider", "allow-crash-consistent", "hold-timeout", "snapshot-dir"]
    static let writerKeys = ["qga", "mountpoints", "hook", "timeout", "fsfreeze"]
    static let retryKeys = ["attempts", "delay"]
    static let replicateKeys = ["to", "credentials", "throttle", "keep", "alert-after"]
    static let throttleKeys = ["work-hours", "other-hours"]
    static let windowKeys = ["days", "from", "to", "rate"]

    /// Reads and parses `file`; throws `PolicyError` with every problem found.
    public static func load(file: String) throws -> Policy {
        let text = try read(file: file)
        return try parse(text, file: file)
    }

    /// Parses policy YAML; `file` names it in diagnostics and becomes `Policy.file`.
    public static func parse(_ yaml: String, file: String) throws -> Policy {
        let parsed = parseLocated(yaml, file: file)
        guard let policy = parsed.policy, parsed.diagnostics.isEmpty else {
            throw PolicyError(diagnostics: PolicyDiagnostic.sorted(parsed.diagnostics))
        }
        return policy
    }

    /// Every `*.yaml` and `*.yml` file in `directory`, sorted by name, each loaded or failed on its
    /// own (one bad file does not hide the others). A folder that cannot be listed gives one failed
    /// entry named after the folder.
    public static func loadAll(directory: String) -> [(file: String, result: Result<Policy, PolicyError>)] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            let diagnostic = PolicyDiagnostic(file: directory, line: 0, column: 0, message: "cannot list the policy folder: \(describe(error))",
                                              fix: "check that the folder exists and is readable")
            return [(directory, .failure(PolicyError(diagnostics: [diagnostic])))]
        }
        let base = directory.hasSuffix("/") ? directory : directory + "/"
        return names.filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }.sorted().map { name in
            let path = base + name
            do {
                return (path, .success(try load(file: path)))
            } catch let error as PolicyError {
                return (path, .failure(error))
            } catch {
                return (path, .failure(PolicyError(diagnostics: [PolicyDiagnostic(file: path, line: 0, column: 0, message: describe(error))])))
            }
        }
    }

    // MARK: Internals shared with PolicyCheck

    /// Where the values `PolicyCheck` looks at further were written.
    struct Locations {
        var root = PolicyLocation(line: 1, column: 1)
        var sources: [PolicyLocation] = []
        var target = PolicyLocation.file
        var credentials = PolicyLocation.file
        var replicate = PolicyLocation.file
        var replicateCredentials = PolicyLocation.file
        var schedule = PolicyLocation.file
        var full = PolicyLocation.file
        var verify = PolicyLocation.file
        var keep = PolicyLocation.file
        var consistency = PolicyLocation.file
        var writers = PolicyLocation.file
    }

    static func read(file: String) throws(PolicyError) -> String {
        func failure(_ message: String, _ fix: String) -> PolicyError {
            PolicyError(diagnostics: [PolicyDiagnostic(file: file, line: 0, column: 0, message: message, fix: fix)])
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: file, isDirectory: &isDirectory) else {
            throw failure("no such policy file", "check the path (policies live in the policies/ folder)")
        }
        guard !isDirectory.boolValue else { throw failure("is a folder, not a policy file", "name a .yaml file in it") }
        guard let data = FileManager.default.contents(atPath: file) else {
            throw failure("cannot read the policy file", "check its permissions")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw failure("the policy file is not UTF-8 text", "save it as UTF-8")
        }
        return text
    }

    static func parseLocated(_ yaml: String, file: String) -> (policy: Policy?, diagnostics: [PolicyDiagnostic], locations: Locations) {
        var reader = PolicyReader(file: file)
        var locations = Locations()
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            return (nil, [syntaxDiagnostic(error, file: file)], locations)
        }
        guard let root else {
            reader.error(PolicyLocation(line: 1, column: 1), "the policy file is empty",
                         fix: "give at least name, machine, sources and target (see policies/web01-nightly.yaml)")
            return (nil, reader.diagnostics, locations)
        }
        locations.root = PolicyReader.location(root)
        guard let entries = reader.mapping(root, "the policy", allowed: keys) else { return (nil, reader.diagnostics, locations) }

        let name = reader.required(entries, "name", in: root, fix: "add `name: NAME` (letters, digits, '.', '_', '-')")
            .flatMap { reader.identifier($0, "name") }
        let machine = reader.required(entries, "machine", in: root, fix: "add `machine: MACHINE`, the folder name of its points on the target")
            .flatMap { reader.identifier($0, "machine") }
        var sources: [PolicySource]?
        if let node = reader.required(entries, "sources", in: root, fix: "add `sources:` with a `- disk: /path/to/disk.vhdx` line") {
            sources = reader.sources(node, locations: &locations)
        }
        var target: String?
        var credentials: String?
        if let node = reader.required(entries, "target", in: root, fix: "add `target: /var/backups/bulwark` (a local folder) or an smb:// URL") {
            locations.target = PolicyReader.location(node)
            target = reader.location(node, "target")
            credentials = reader.credentials(entries["credentials"], for: target, key: "credentials", at: node)
        }
        if let entry = entries["credentials"] { locations.credentials = PolicyReader.location(entry.value) }
        var consistency = ConsistencySettings()
        if let entry = entries["consistency"] {
            locations.consistency = PolicyReader.location(entry.key)
            locations.writers = locations.consistency
            if !PolicyReader.isNull(entry.value) {
                consistency = reader.consistency(entry.value, locations: &locations) ?? consistency
            }
        }
        func event(_ key: String, _ location: inout PolicyLocation) -> CalendarEvent? {
            guard let entry = entries[key] else { return nil }
            location = PolicyReader.location(entry.value)
            return PolicyReader.isNull(entry.value) ? nil : reader.calendarEvent(entry.value, key)
        }
        let schedule = event("schedule", &locations.schedule)
        let full = event("full", &locations.full)
        let verify = event("verify", &locations.verify)
        var keep = KeepRules()
        if let entry = entries["keep"] {
            locations.keep = PolicyReader.location(entry.key)
            if !PolicyReader.isNull(entry.value) { keep = reader.keep(entry.value) ?? keep }
        }
        var retry = RetrySettings()
        if let entry = entries["retry"], !PolicyReader.isNull(entry.value) {
            retry = reader.retry(entry.value) ?? retry
        }

        var replicate: ReplicationSettings?
        if let entry = entries["replicate"], !PolicyReader.isNull(entry.value) {
            locations.replicate = PolicyReader.location(entry.key)
            if case let .mapping(m) = entry.value, let c = m.first(where: { $0.key.scalar?.string == "credentials" })?.value { locations.replicateCredentials = PolicyReader.location(c) }
            replicate = reader.replicate(entry.value)
        }

        guard reader.diagnostics.isEmpty, let name, let machine, let sources, let target else {
            return (nil, reader.diagnostics, locations)
        }
        let policy = Policy(name: name, machine: machine, sources: sources, consistency: consistency, target: target,
                            credentials: credentials, schedule: schedule, full: full, keep: keep, verify: verify, retry: retry,
                            replicate: replicate, file: file)
        return (policy, [], locations)
    }

    /// A YAML syntax error, at the line and column libyaml reports.
    static func syntaxDiagnostic(_ error: any Error, file: String) -> PolicyDiagnostic {
        let quoteFix = "check indentation and quoting there; quote values that start with * & ! { [ or contain ': ' (schedule: \"*-*-01 02:00\")"
        guard let yamlError = error as? YamlError else {
            return PolicyDiagnostic(file: file, line: 0, column: 0, message: "cannot parse the YAML: \(error)", fix: quoteFix)
        }
        func context(_ context: YamlError.Context?) -> String {
            context.map { " (\($0.text) at line \($0.mark.line), column \($0.mark.column))" } ?? ""
        }
        switch yamlError {
        case let .scanner(ctx, problem, mark, _), let .parser(ctx, problem, mark, _), let .composer(ctx, problem, mark, _):
            let about = problem + " " + (ctx?.text ?? "")
            let fix = about.contains("alias") || about.contains("anchor")
                ? "quote the value: a leading * or & starts a YAML alias or anchor (schedule: \"*-*-01 02:00\")" : quoteFix
            return PolicyDiagnostic(file: file, line: mark.line, column: mark.column, message: "YAML syntax error: \(problem)\(context(ctx))", fix: fix)
        case let .duplicatedKeysInMapping(duplicates, ctx):
            return PolicyDiagnostic(file: file, line: ctx.mark.line, column: ctx.mark.column,
                                    message: "key \(duplicates.map { "'\($0)'" }.joined(separator: ", ")) given twice in one mapping",
                                    fix: "keep one of them")
        default:
            return PolicyDiagnostic(file: file, line: 0, column: 0, message: "cannot parse the YAML: \(yamlError)", fix: quoteFix)
        }
    }

    static func describe(_ error: any Error) -> String {
        (error as NSError).localizedFailureReason ?? (error as NSError).localizedDescription
    }
}
