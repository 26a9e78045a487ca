import ArgumentParser
import Foundation
import Protection
import Storage

struct JobsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jobs",
        abstract: "The job history: backups, prunes, verifies and replications, by hand or by the daemon.",
        subcommands: [JobsList.self, JobsShow.self]
    )
}

/// A job as `--json` prints it: typed numbers, ISO 8601 times, the detail as an object.
struct JobJSON: Encodable {
    var id: Int64?
    var policy: String
    var kind: String
    var status: String
    var trigger: String
    var attempt: Int
    var queued: String
    var started: String?
    var ended: String?
    var seconds: Double?
    var target: String?
    var point: String?
    var pointKind: String?
    var bytesRead: Int64
    var bytesWritten: Int64
    var bytesChanged: Int64
    var error: String?
    var warnings: [String]
    var detail: [String: String]?
    var pid: Int32?
    var host: String?
    /// Replication jobs: what went over the wire, how fast, and how far the destination is behind.
    var bytesSent: Int64?
    var bytesPerSecond: Double?
    var lagSeconds: Double?

    init(_ r: JobRecord) {
        id = r.id
        policy = r.policy
        kind = r.kind.rawValue
        status = r.status.rawValue
        trigger = r.trigger.rawValue
        attempt = r.attempt
        queued = Timestamp.iso8601(r.queued)
        started = r.started.map { Timestamp.iso8601($0) }
        ended = r.ended.map { Timestamp.iso8601($0) }
        seconds = r.duration
        target = r.target
        point = r.point
        pointKind = r.pointKind
        bytesRead = r.bytesRead
        bytesWritten = r.bytesWritten
        bytesChanged = r.bytesChanged
        error = r.error
        warnings = r.warnings
        detail = r.detail.flatMap { try? JSONDecoder().decode([String: String].self, from: Data($0.utf8)) }
        pid = r.pid
        host = r.host
        if r.kind == .replication {
            bytesSent = r.bytesWritten
            bytesPerSecond = detail?["bytesPerSecond"].flatMap(Double.init)
            lagSeconds = detail?["lagSeconds"].flatMap(Double.init)
        }
    }
}

struct JobsList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List jobs, newest first.",
        discussion: """
        Replication jobs show the bytes sent, the rate and the lag (how far the destination is behind the \
        newest point). A policy whose replication has not succeeded for longer than its `alert-after` \
        (24 h unless --policies names the policy files that say otherwise) is reported as a warning on \
        standard error, after the table or the JSON.
        """)
    @Option(help: ArgumentHelp("Only this policy's jobs.", valueName: "name")) var policy: String?
    @Option(help: "At most this many jobs.") var limit: Int = 50
    @Option(help: ArgumentHelp("The folder of policy files, for each policy's replication alert-after.", valueName: "dir"))
    var policies: String?
    @OptionGroup var state: StateOptions
    @OptionGroup var printing: OutputOptions

    func run() throws {
        let history = try JobHistory(stateDirectory: state.directory.string)
        let jobs = try history.list(policy: policy, limit: limit)
        defer { warnReplication(history) }
        if printing.json { try Output.json(jobs.map(JobJSON.init)); return }
        if jobs.isEmpty { print("no jobs recorded in \(history.path)\(policy.map { " for policy \($0)" } ?? "")"); return }
        print(Output.table(["ID", "POLICY", "KIND", "STATUS", "STARTED", "TIME", "READ", "WRITTEN", "POINT"], jobs.map { j in
            [String(j.id ?? 0), j.policy, j.kind.rawValue, j.status.rawValue, j.started.map { Timestamp.iso8601($0) } ?? "-",
             j.duration.map { String(format: "%.1fs", $0) } ?? "-", ByteCount.format(UInt64(max(0, j.bytesRead))),
             ByteCount.format(UInt64(max(0, j.bytesWritten))), Self.what(j)]
        }))
    }

    /// The last column: the point made, or for a replication what it sent, how fast, and the lag.
    static func what(_ j: JobRecord) -> String {
        guard j.kind == .replication else { return j.point.map { "\($0)\(j.pointKind.map { " (\($0))" } ?? "")" } ?? "-" }
        let json = JobJSON(j)
        var parts: [String] = []
        if let shipped = json.detail?["shipped"], !shipped.isEmpty { parts.append("sent \(shipped.split(separator: ",").count) point(s)") }
        if let rate = json.bytesPerSecond, rate > 0 { parts.append("\(ByteCount.format(UInt64(rate)))/s") }
        if let lag = json.lagSeconds { parts.append(lag == 0 ? "in step" : "lag \(Self.duration(lag))") }
        return parts.isEmpty ? (j.status.isSuccess ? "nothing to send" : "-") : parts.joined(separator: ", ")
    }

    static func duration(_ seconds: Double) -> String {
        seconds < 120 ? String(format: "%.0f s", seconds) : seconds < 7200 ? String(format: "%.0f min", seconds / 60) : String(format: "%.1f h", seconds / 3600)
    }

    /// Replication health warnings on standard error (so `--json` output stays one JSON value).
    func warnReplication(_ history: JobHistory) {
        var found: [ReplicationWarning] = []
        if let folder = policies {
            let loaded = PolicyLoader.loadAll(directory: folder).compactMap { try? $0.result.get() }
            found = (try? ReplicationHealth.warnings(for: loaded, history: history)) ?? []
        } else {
            found = (try? ReplicationHealth.warnings(history: history)) ?? []
        }
        for w in found where policy == nil || w.policy == policy {
            FileHandle.standardError.write(Data("warning: policy \(w.policy): \(w)\n".utf8))
        }
    }
}

struct JobsShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one job in full.")
    @Argument(help: "The job id (from `jobs list`).") var id: Int64
    @OptionGroup var state: StateOptions
    @OptionGroup var printing: OutputOptions

    func run() throws {
        let history = try JobHistory(stateDirectory: state.directory.string)
        guard let job = try history.record(id: id) else {
            throw ValidationError("no job \(id) in \(history.path); `bulwark jobs list` shows the ids")
        }
        let j = JobJSON(job)
        if printing.json { try Output.json(j); return }
        var rows: [(String, String)] = [("job", String(id)), ("policy", j.policy), ("kind", j.kind), ("status", j.status),
                                         ("trigger", "\(j.trigger) (attempt \(j.attempt))"), ("queued", j.queued)]
        if let s = j.started { rows.append(("started", s)) }
        if let e = j.ended { rows.append(("ended", e)) }
        if let s = j.seconds { rows.append(("time", String(format: "%.1f s", s))) }
        if let t = j.target { rows.append(("target", t)) }
        if let p = j.point { rows.append(("point", "\(p)\(j.pointKind.map { " (\($0))" } ?? "")")) }
        rows += [("bytes read", ByteCount.format(UInt64(max(0, j.bytesRead)))), ("bytes written", ByteCount.format(UInt64(max(0, j.bytesWritten)))),
                 ("bytes changed", ByteCount.format(UInt64(max(0, j.bytesChanged))))]
        for (k, v) in (j.detail ?? [:]).sorted(by: { $0.key < $1.key }) { rows.append((k, v)) }
        if let e = j.error { rows.append(("error", e)) }
        for w in j.warnings { rows.append(("warning", w)) }
        if let pid = j.pid { rows.append(("process", "PID \(pid) on \(j.host ?? "?")")) }
        let width = rows.map(\.0.count).max() ?? 0
        for (k, v) in rows { print("  \(k.padding(toLength: width, withPad: " ", startingAt: 0))  \(v)") }
    }
}
