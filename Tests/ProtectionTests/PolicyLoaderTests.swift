import Foundation
import Protection
import Testing

/// The package root, found from this file (Tests/ProtectionTests/...).
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// The diagnostics `yaml` gets, or a failure if it parsed.
func diagnostics(_ yaml: String) -> [PolicyDiagnostic] {
    do {
        _ = try PolicyLoader.parse(yaml, file: "test.yaml")
        Issue.record("expected the policy to be refused")
        return []
    } catch let error as PolicyError {
        return error.diagnostics
    } catch {
        Issue.record("unexpected error \(error)")
        return []
    }
}

let minimal = """
name: n
machine: m
sources:
  - disk: /dev/sdz
target: /var/backups/bulwark

"""

@Suite struct PolicyLoaderTests {
    @Test func everyShippedPolicyLoads() throws {
        let folder = packageRoot.appendingPathComponent("policies").path
        let results = PolicyLoader.loadAll(directory: folder)
        #expect(results.map { ($0.file as NSString).lastPathComponent }.contains("web01-nightly.yaml"))
        #expect(results.map { ($0.file as NSString).lastPathComponent }.contains("demo.yaml"))
        for (file, result) in results {
            if case let .failure(error) = result { Issue.record("\(file) does not load:\n\(error)") }
        }
    }

    @Test func web01NightlyAsWritten() throws {
        let file = packageRoot.appendingPathComponent("policies/web01-nightly.yaml").path
        let policy = try PolicyLoader.load(file: file)
        #expect(policy.name == "web01-nightly" && policy.machine == "web01" && policy.file == file)
        #expect(policy.sources == [.disk("/var/lib/machines/web01/disk0.vhdx"), .disk("/dev/vg0/data")])
        #expect(policy.consistency == ConsistencySettings(
            writers: [.qga(socket: "/run/web01/qga.sock", mountpoints: []), .hook(path: "/etc/bulwark/hooks/db-flush", timeout: nil)],
            provider: .auto, allowCrashConsistent: false, holdTimeout: 10, snapshotDirectory: nil))
        #expect(policy.target == "/var/backups/bulwark")
        #expect(policy.schedule?.text == "mon..sat 23:05" && policy.full?.text == "sun 23:05" && policy.verify?.text == "sat 12:00")
        #expect(policy.keep == KeepRules(last: 3, daily: 7, weekly: 4, monthly: 6))
        #expect(policy.retry == RetrySettings(attempts: 2, delay: 300))
    }

    @Test func everyWriterFormAndOptionalKey() throws {
        let policy = try PolicyLoader.parse(minimal + """
            consistency:
              writers:
                - {qga: /run/vm/qga.sock, mountpoints: [/, /var]}
                - hook: /etc/bulwark/hooks/db
                  timeout: 30s
                - {fsfreeze: /mnt/data}
              provider: Reflink
              allow-crash-consistent: yes
              hold-timeout: 20s
              snapshot-dir: /var/tmp/snaps
            schedule: daily
            retry: {attempts: 5, delay: 1h30m}
            keep: {hourly: 24, yearly: ~}
            verify: ~
            """, file: "p.yaml")
        #expect(policy.consistency == ConsistencySettings(
            writers: [.qga(socket: "/run/vm/qga.sock", mountpoints: ["/", "/var"]), .hook(path: "/etc/bulwark/hooks/db", timeout: 30),
                      .fsfreeze(mountpoint: "/mnt/data")],
            provider: .reflink, allowCrashConsistent: true, holdTimeout: 20, snapshotDirectory: "/var/tmp/snaps"))
        #expect(policy.retry == RetrySettings(attempts: 5, delay: 5400))
        #expect(policy.keep == KeepRules(hourly: 24))
        #expect(policy.verify == nil && policy.full == nil && policy.schedule?.text == "daily")
    }

    @Test func machineSourcesForBareMetal() throws {
        let policy = try PolicyLoader.parse("""
            name: n
            machine: m
            sources:
              - machine: true
              - disk: /srv/extra.img
            target: /var/backups/bulwark
            """, file: "test.yaml")
        #expect(policy.sources == [.machine, .disk("/srv/extra.img")])
        let found = diagnostics("""
            name: n
            machine: m
            sources:
              - machine: false
              - {machine: true, disk: /dev/sda}
              - machine: yes please
              - machine: true
              - machine: true
            target: /var/backups/bulwark
            """)
        #expect(found.map(\.line) == [4, 5, 6, 8], "\(found)")
        #expect(found.first?.message == "'machine: false' captures nothing")
        #expect(found[1].message.contains("either `disk: PATH` or `machine: true`"))
        #expect(found[2].message.contains("must be true or false"))
        #expect(found.last?.message == "'machine: true' is listed twice (first at line 7)")
    }

    @Test func fileSetSources() throws {
        let policy = try PolicyLoader.parse("""
            name: n
            machine: m
            sources:
              - files: [/etc, /srv/www]
              - files: [/home]
            target: /var/backups/bulwark
            """, file: "test.yaml")
        #expect(policy.sources == [.files(["/etc", "/srv/www"]), .files(["/home"])])
        let mixed = diagnostics("""
            name: n
            machine: m
            sources:
              - files: [/etc]
              - disk: /dev/sda
            target: /var/backups/bulwark
            """)
        #expect(mixed.count == 1 && mixed[0].line == 4 && mixed[0].message.contains("disks or file sets, not both"), "\(mixed)")
        let bad = diagnostics("""
            name: n
            machine: m
            sources:
              - files: []
              - files: [etc]
              - {files: [/a], disk: /b}
            target: /var/backups/bulwark
            """)
        #expect(bad.map(\.line) == [4, 5, 6], "\(bad)")
    }

    @Test func typoGetsSuggestionAtItsLineAndColumn() {
        let found = diagnostics(minimal + """
            shedule: daily
            consistency:
              alow-crash-consistent: true
            """)
        #expect(found.count == 2)
        #expect(found.first == PolicyDiagnostic(file: "test.yaml", line: 6, column: 1,
                                               message: "unknown key 'shedule' in the policy; did you mean 'schedule'?",
                                               fix: "rename it to 'schedule'"))
        #expect(found.last?.line == 8 && found.last?.column == 3)
        #expect(found.last?.message.contains("did you mean 'allow-crash-consistent'?") == true)
    }

    @Test func wrongTypesAndBadValues() {
        let found = diagnostics("""
            name: web 01
            machine: ..
            sources: /dev/sda
            target: relative/path
            consistency:
              writers: [{qga: /run/q.sock, timeout: 5s}, {hook: /h, fsfreeze: /mnt}]
              provider: reflnk
              allow-crash-consistent: maybe
              hold-timeout: 10x
            keep: {last: three, daily: -1}
            retry: {delay: soon}
            schedule: "mon..sat 25:05"
            """)
        let byLine = Dictionary(grouping: found, by: \.line)
        #expect(byLine[1]?.first?.message.contains("may hold only letters") == true)
        #expect(byLine[2]?.first?.message.contains("may hold only letters") == true)
        #expect(byLine[3]?.first?.message.contains("must be a list") == true)
        #expect(byLine[4]?.first?.message.contains("neither an absolute path nor an smb:// URL") == true)
        #expect(byLine[6]?.contains { $0.message.contains("'timeout' belongs to a hook writer") } == true)
        #expect(byLine[6]?.contains { $0.message.contains("not hook and fsfreeze") } == true)
        #expect(byLine[7]?.first?.message == "unknown provider 'reflnk'; did you mean 'reflink'?")
        #expect(byLine[8]?.first?.message.contains("true or false") == true)
        #expect(byLine[9]?.first?.message.contains("'10x' is not a duration") == true)
        #expect(byLine[10]?.contains { $0.message.contains("whole number") && $0.column == 14 } == true)
        #expect(byLine[10]?.contains { $0.message.contains("cannot be negative") && $0.column == 28 } == true)
        #expect(byLine[11]?.first?.message.contains("'soon' is not a duration") == true)
        // The column of the impossible hour inside the quoted event.
        #expect(byLine[12]?.first?.column == 21 && byLine[12]?.first?.message.contains("hour 25 is out of range") == true)
        #expect(found == found.sorted { ($0.line, $0.column) < ($1.line, $1.column) }, "sorted by line")
    }

    @Test func missingRequiredKeysAllReported() {
        let found = diagnostics("schedule: daily\n")
        #expect(Set(found.map(\.message)) == [
            "missing required key 'name'", "missing required key 'machine'", "missing required key 'sources'", "missing required key 'target'",
        ])
        #expect(found.allSatisfy { $0.line == 1 && $0.column == 1 && $0.fix != nil })
        let empty = diagnostics(minimal.replacingOccurrences(of: "  - disk: /dev/sdz\n", with: "") .replacingOccurrences(of: "sources:", with: "sources: []"))
        #expect(empty.first?.message.contains("'sources' is empty") == true)
        #expect(diagnostics("").first?.message == "the policy file is empty")
        #expect(diagnostics("- a\n").first?.message.contains("must be a mapping") == true)
    }

    @Test func yamlSyntaxErrors() {
        // An unquoted leading * starts an alias.
        let alias = diagnostics(minimal + "schedule: *-*-01 02:00\n")
        #expect(alias.count == 1 && alias.first?.line == 6 && alias.first?.message.hasPrefix("YAML syntax error") == true)
        #expect(alias.first?.fix?.contains("alias") == true)
        let indentation = diagnostics("name: n\n  machine: m\nsources: [\n")
        #expect(indentation.count == 1 && indentation.first?.line == 2)
        let twice = diagnostics(minimal + "name: again\n")
        #expect(twice.first?.message.contains("'name' given twice") == true)
    }

    @Test func smbTargetsAndBadOnes() throws {
        let smb = minimal.replacingOccurrences(of: "target: /var/backups/bulwark",
                                               with: "target: smb://backup@nas.example/backups/bulwark\ncredentials: /etc/bulwark/nas.cred")
        let policy = try PolicyLoader.parse(smb, file: "p.yaml")
        #expect(policy.target == "smb://backup@nas.example/backups/bulwark")
        #expect(policy.credentials == "/etc/bulwark/nas.cred")
        for bad in ["smb://nas", "smb://user:secret@nas/share", "nfs://nas/export"] {
            let found = diagnostics(minimal.replacingOccurrences(of: "target: /var/backups/bulwark", with: "target: \(bad)\ncredentials: /c"))
            #expect(found.count == 1 && found.first?.line == 5 && found.first?.column == 9, "\(bad): \(found)")
            #expect(found.allSatisfy { !$0.description.contains("secret") }, "a password in a URL is never repeated")
        }
        // A share needs a credentials file; a local folder must not have one.
        let bare = diagnostics(minimal.replacingOccurrences(of: "target: /var/backups/bulwark", with: "target: smb://backup@nas/share"))
        #expect(bare.count == 1 && bare.first?.line == 5 && bare.first?.message.contains("needs a 'credentials' file") == true)
        let local = diagnostics(minimal + "credentials: /etc/bulwark/nas.cred\n")
        #expect(local.count == 1 && local.first?.line == 6 && local.first?.message.contains("needs no credentials") == true)
    }

    @Test func replicateSectionAsTheIssueWritesIt() throws {
        let policy = try PolicyLoader.parse(minimal + """
            replicate:
              to: smb://backup@dr-site:445/bulwark
              credentials: /etc/bulwark/dr-site.cred
              throttle:
                work-hours: {days: mon..fri, from: "08:00", to: "18:00", rate: 10MiB/s}
                other-hours: unlimited
              keep: {last: 14, monthly: 12}
              alert-after: 12h
            """, file: "p.yaml")
        let r = try #require(policy.replicate)
        #expect(r.to == "smb://backup@dr-site:445/bulwark")
        #expect(r.credentials == "/etc/bulwark/dr-site.cred")
        #expect(r.throttle.workHours.count == 1)
        #expect(r.throttle.workHours.first?.rate == .mebibytes(10))
        #expect(r.throttle.workHours.first?.days == [.monday, .tuesday, .wednesday, .thursday, .friday])
        #expect(r.throttle.otherHours == .unlimited)
        #expect(r.keep?.last == 14 && r.keep?.monthly == 12)
        #expect(r.alertAfter == 12 * 3600)
        // A Tuesday at 09:00 UTC is work hours; 19:00 is not.
        let utc = TimeZone(identifier: "UTC")!
        let tuesday = ISO8601DateFormatter().date(from: "2026-12-01T09:00:00Z")!
        #expect(r.throttle.rate(at: tuesday, in: utc) == .mebibytes(10))
        #expect(r.throttle.rate(at: tuesday.addingTimeInterval(10 * 3600), in: utc) == .unlimited)
        // The scheduler queues a replication after each backup of this policy.
        #expect(policy.scheduled(in: utc).afterBackup == [.replication])

        let short = try PolicyLoader.parse(minimal + "replicate: {to: /srv/replica, throttle: 20MiB/s}\n", file: "p.yaml")
        #expect(short.replicate?.throttle == .fixed(.mebibytes(20)))
        #expect(short.replicate?.keep == nil && short.replicate?.alertAfter == 86_400)
        let windows = try PolicyLoader.parse(minimal + """
            replicate:
              to: /srv/replica
              throttle:
                work-hours:
                  - {days: sat, from: "10:00", to: "12:00", rate: 1MiB/s}
                  - {from: "22:00", to: "06:00", rate: 100Mbit/s}
            """, file: "p.yaml")
        #expect(windows.replicate?.throttle.workHours.count == 2)
        #expect(windows.replicate?.throttle.workHours.last?.crossesMidnight == true)
    }

    @Test func replicateMistakesAreReportedAtTheirLines() {
        let found = diagnostics(minimal + """
            replicate:
              to: smb://backup@dr-site/bulwark
              throtle: 10MiB/s
              keep: {last: 0}
              alert-after: 10s
            """)
        let byLine = Dictionary(grouping: found, by: \.line)
        #expect(byLine[7]?.first?.message.contains("needs a 'credentials' file") == true)
        #expect(byLine[8]?.first?.message == "unknown key 'throtle' in 'replicate'; did you mean 'throttle'?")
        #expect(byLine[9]?.first?.message.contains("keeps nothing") == true)
        #expect(byLine[10]?.first?.message.contains("would warn after almost every run") == true)

        let windows = diagnostics(minimal + """
            replicate:
              to: /srv/replica
              throttle:
                work-hours: {days: mon..fry, from: "08:00", to: "18:00", rate: 10MiB/s}
                other-hours: 5 parsecs
            """)
        #expect(windows.contains { $0.line == 9 && $0.column == 24 && $0.message.contains("'days'") }, "\(windows)")
        #expect(windows.contains { $0.line == 10 && $0.message.contains("'other-hours'") }, "\(windows)")
        let noTo = diagnostics(minimal + "replicate: {throttle: 1MiB/s}\n")
        #expect(noTo.first?.message == "missing required key 'to'")
        let late = diagnostics(minimal + "replicate: {to: /srv/r, throttle: {work-hours: {from: \"08:00\", to: \"25:00\", rate: 1MiB/s}}}\n")
        #expect(late.first?.line == 6 && late.first?.message.contains("'to'") == true, "\(late)")
    }

    @Test func errorDescriptionIsOneLinePerProblem() {
        let error = PolicyError(diagnostics: diagnostics(minimal + "shedule: daily\nkeep: {dayly: 3}\n"))
        #expect(error.description == """
            test.yaml:6:1: error: unknown key 'shedule' in the policy; did you mean 'schedule'? (fix: rename it to 'schedule')
            test.yaml:7:8: error: unknown key 'dayly' in 'keep'; did you mean 'daily'? (fix: rename it to 'daily')
            """)
    }

    @Test func loadReportsUnreadableFiles() throws {
        #expect {
            try PolicyLoader.load(file: "/nonexistent/p.yaml")
        } throws: { error in
            (error as? PolicyError)?.diagnostics.first?.message == "no such policy file"
        }
        let listed = PolicyLoader.loadAll(directory: "/nonexistent")
        #expect(listed.count == 1 && (try? listed.first?.result.get()) == nil)
    }
}
