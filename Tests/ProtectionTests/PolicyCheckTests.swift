import Foundation
import Protection
import TestSupport
import Testing

/// A policy file in a temporary folder with a real source disk and target folder, so each test can
/// break one thing at a time.
struct CheckFixture {
    let folder: TempDir
    let disk: String
    let target: String

    init() throws {
        folder = try TempDir("bulwark-policy-check")
        disk = folder.file("guest.img")
        target = folder.file("target")
        guard FileManager.default.createFile(atPath: disk, contents: Data(count: 4096)) else { throw TestFailure("cannot create \(disk)") }
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
    }

    /// Writes the policy and checks it on 2026-12-02 in UTC.
    func check(_ body: String? = nil, schedule: String = "\"mon..sat 23:05\"", extra: String = "") throws -> [PolicyDiagnostic] {
        let text = body ?? """
            name: test
            machine: guest
            sources:
              - disk: \(disk)
            consistency:
              writers: [{fsfreeze: /mnt/data}]
            target: \(target)
            schedule: \(schedule)
            keep: {last: 3, daily: 7}

            """ + extra
        let file = folder.file("policy.yaml")
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        return PolicyCheck.check(file: file, now: instant("2026-12-02T00:00:00Z"), timeZone: utc)
    }
}

@Suite struct PolicyCheckTests {
    @Test func goodPolicyHasNoDiagnostics() throws {
        let fixture = try CheckFixture()
        #expect(try fixture.check() == [])
        #expect(try fixture.check(extra: "full: \"sun 23:05\"\nverify: weekly\n") == [])
    }

    @Test func missingSourceNamedAtItsLine() throws {
        let fixture = try CheckFixture()
        let missing = fixture.folder.file("gone.vhdx")
        let found = try fixture.check("""
            name: test
            machine: guest
            sources:
              - disk: \(fixture.disk)
              - disk: \(missing)
            consistency: {provider: none}
            target: \(fixture.target)
            """)
        #expect(found.count == 1)
        #expect(found.first?.line == 5 && found.first?.column == 11 && found.first?.severity == .error)
        #expect(found.first?.message == "source disk '\(missing)' does not exist")
        let folderSource = try fixture.check("name: t\nmachine: m\nsources: [{disk: \(fixture.target)}]\ntarget: \(fixture.target)\nconsistency: {provider: none}\n")
        #expect(folderSource.first?.message.contains("is a folder") == true)
    }

    @Test func impossibleAndPastSchedules() throws {
        let fixture = try CheckFixture()
        let never = try fixture.check(schedule: "\"*-02-30 00:00\"")
        #expect(never.count == 1 && never.first?.line == 8 && never.first?.column == 11)
        #expect(never.first?.message.contains("never fires") == true)
        let past = try fixture.check(schedule: "2020-01-01", extra: "verify: \"*-04-31\"\n")
        #expect(past.map(\.line) == [8, 10])
        // A parse error in an event is reported as a parse error, at its column.
        let bad = try fixture.check(schedule: "\"mon..sat 23:65\"")
        #expect(bad.count == 1 && bad.first?.column == 24 && bad.first?.message.contains("minute 65") == true)
    }

    @Test func fullWithoutSchedule() throws {
        let fixture = try CheckFixture()
        let found = try fixture.check("""
            name: test
            machine: guest
            sources: [{disk: \(fixture.disk)}]
            consistency: {allow-crash-consistent: true}
            target: \(fixture.target)
            full: "sun 23:05"
            """)
        #expect(found.count == 1 && found.first?.line == 6 && found.first?.message.contains("'schedule' is not") == true)
    }

    @Test func targets() throws {
        let fixture = try CheckFixture()
        func targetDiagnostics(_ target: String) throws -> [PolicyDiagnostic] {
            try fixture.check("name: t\nmachine: m\nsources: [{disk: \(fixture.disk)}]\nconsistency: {provider: none}\ntarget: \(target)\n")
        }
        let later = try targetDiagnostics(fixture.folder.file("new/target"))
        #expect(later.count == 1 && later.first?.severity == .warning && later.first?.line == 5 && later.first?.column == 9)
        #expect(later.first?.message.contains("will create it") == true)
        // Under a file, the target can never be made, whoever runs the job (root included).
        let impossible = try targetDiagnostics(fixture.disk + "/target")
        #expect(impossible.count == 1 && impossible.first?.severity == .error && impossible.first?.fix?.contains("mkdir -p") == true)
        let file = try targetDiagnostics(fixture.disk)
        #expect(file.first?.message.contains("is not a folder") == true)
        // A share is not reached from here, but its credentials file is read as the job will read it.
        let credentials = fixture.folder.file("nas.cred")
        try "username=backup\npassword=s3cret-pw\n".write(toFile: credentials, atomically: false, encoding: .utf8)
        chmod(credentials, 0o600)
        #expect(try targetDiagnostics("smb://backup@nas/share/bulwark\ncredentials: \(credentials)") == [])
        chmod(credentials, 0o644)
        let exposed = try targetDiagnostics("smb://backup@nas/share/bulwark\ncredentials: \(credentials)")
        #expect(exposed.count == 1 && exposed.first?.line == 6 && exposed.first?.message.contains("group or others may read it") == true, "\(exposed)")
        #expect(exposed.allSatisfy { !$0.description.contains("s3cret") })
        let missing = try targetDiagnostics("smb://backup@nas/share/bulwark\ncredentials: \(credentials).gone")
        #expect(missing.first?.message.contains("no such file") == true)
        // The same checks for a replication destination.
        let replica = try fixture.check("name: t\nmachine: m\nsources: [{disk: \(fixture.disk)}]\nconsistency: {provider: none}\ntarget: \(fixture.folder.path)\nreplicate:\n  to: smb://backup@dr/share\n  credentials: \(credentials)\n")
        #expect(replica.count == 1 && replica.first?.line == 8 && replica.first?.message.hasPrefix("replicate: credentials file") == true, "\(replica)")
        let itself = try fixture.check("name: t\nmachine: m\nsources: [{disk: \(fixture.disk)}]\nconsistency: {provider: none}\ntarget: \(fixture.folder.path)\nreplicate: {to: \(fixture.folder.path)}\n")
        #expect(itself.contains { $0.message.contains("the policy's own target") }, "\(itself)")
    }

    @Test func crashConsistentWithoutConsent() throws {
        let fixture = try CheckFixture()
        let found = try fixture.check("""
            name: test
            machine: guest
            sources: [{disk: \(fixture.disk)}]
            consistency:
              writers: []
              provider: copy
            target: \(fixture.target)
            """)
        #expect(found.count == 1 && found.first?.line == 5 && found.first?.message.contains("crash-consistent") == true)
        let noSection = try fixture.check("name: t\nmachine: m\nsources: [{disk: \(fixture.disk)}]\ntarget: \(fixture.target)\n")
        #expect(noSection.count == 1 && noSection.first?.line == 1)
    }

    @Test func allZeroKeepWarns() throws {
        let fixture = try CheckFixture()
        #expect(try fixture.check().isEmpty)
        let zero = try fixture.check("""
            name: test
            machine: guest
            sources: [{disk: \(fixture.disk)}]
            consistency: {provider: none}
            target: \(fixture.target)
            keep: {last: 0, daily: 0}
            """)
        #expect(zero.count == 1 && zero.first?.severity == .warning && zero.first?.line == 6)
    }

    @Test func severalProblemsSortedByLine() throws {
        let fixture = try CheckFixture()
        let found = try fixture.check("""
            name: test
            machine: guest
            sources: [{disk: /nonexistent/a.img}, {disk: /nonexistent/b.img}]
            target: \(fixture.folder.file("later"))
            schedule: "*-02-30"
            keep: {last: 0}
            """)
        #expect(found.map(\.line) == [1, 3, 3, 4, 5, 6])
        #expect(found.map(\.severity) == [.error, .error, .error, .warning, .error, .warning])
        // Parse errors stop the semantic checks: they would only repeat them.
        let parse = try fixture.check("name: test\nshedule: daily\n")
        #expect(parse.contains { $0.message.contains("did you mean 'schedule'") })
    }

    @Test func shippedPoliciesParseForCheck() throws {
        let file = packageRoot.appendingPathComponent("policies/web01-nightly.yaml").path
        let found = PolicyCheck.check(file: file, now: instant("2026-12-02T00:00:00Z"), timeZone: utc)
        // The disks of web01 do not exist on a test machine; nothing else is wrong with it.
        #expect(found.allSatisfy { $0.message.contains("source disk") || $0.message.contains("target") }, "\(found)")
        #expect(found.contains { $0.line == 4 && $0.column == 11 })
    }
}
