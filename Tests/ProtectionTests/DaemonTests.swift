import Foundation
import Logging
import Protection
import Synchronization
import TestSupport
import Testing

/// The daemon with fake job runners and a clock 1000 times faster than real time (1 ms = 1 s), which
/// starts when the daemon has said READY=1: its start-up, however slow on a busy machine, takes no
/// virtual time, so a fire time soon after the start is not seen as before the first start.
@Suite struct DaemonTests {
    /// A daemon over a fresh history, and its task.
    struct Harness {
        let dir: TempDir
        let history: JobHistory
        let clock: FastClock
        let capture = LogCapture()
        let receiver: DatagramReceiver
        let daemon: Daemon
        let task: Task<Void, any Error>

        init(start: Date, environment: [String: String] = [:], prepare: (JobHistory) throws -> Void = { _ in },
             policies: @escaping @Sendable () throws -> [ScheduledPolicy],
             runJob: @escaping @Sendable (DueJob) async -> JobOutcome) async throws {
            dir = try TempDir("daemon")
            history = try JobHistory(stateDirectory: dir.path)
            try prepare(history)
            clock = FastClock(start: start)
            receiver = try DatagramReceiver(dir.file("notify.sock"))
            let notifier = SystemdNotifier(environment: environment.merging(["NOTIFY_SOCKET": receiver.address]) { a, _ in a })
            let daemon = Daemon(history: history, logger: capture.logger(), notifier: notifier, clock: clock.daemonClock,
                                recheckInterval: 3_600, loadPolicies: policies, runJob: runJob)
            self.daemon = daemon
            task = Task { try await daemon.run(handlingSignals: false) }
            // Wait without blocking a thread of the cooperative pool (the daemon needs one).
            var ready: String?
            _ = await eventually(30) { ready = receiver.receive(timeout: 0); return ready != nil }
            guard ready?.hasPrefix("READY=1") == true else {
                task.cancel()
                throw TestFailure("the daemon did not send READY=1: \(capture.text)")
            }
            clock.release()
        }

        func stop() async throws {
            daemon.shutdown()
            try await task.value
        }
    }

    @Test func runsADueJobAndRecordsIt() async throws {
        // A row left running by a process that is gone is recovered on start.
        let ended = Process()
        ended.executableURL = URL(fileURLWithPath: "/bin/true")
        try ended.run()
        ended.waitUntilExit()
        let seen = Mutex<[DueJob]>([])
        let h = try await Harness(start: at(day: 10, 1, 58), prepare: { history in
            _ = try history.insert(JobRecord(policy: "old", kind: .backup, status: .running, trigger: .schedule, pid: ended.processIdentifier))
        }, policies: { [ScheduledPolicy(name: "web", backup: daily(2))] }, runJob: { job in
            seen.withLock { $0.append(job) }
            return JobOutcome(status: .ok, target: "/srv/backup", point: "2027-01-14T020000Z", pointKind: "incremental",
                              bytesRead: 100, bytesWritten: 10, bytesChanged: 5, detail: #"{"changedBlocks":3}"#)
        })
        #expect(try await eventually { try h.history.list(policy: "web").first?.status == .ok })
        try await h.stop()
        let rows = try h.history.list(policy: "web")
        #expect(rows.count == 1)
        let r = try #require(rows.first)
        #expect(r.trigger == .schedule)
        #expect(r.attempt == 1)
        #expect(r.point == "2027-01-14T020000Z")
        #expect(r.pointKind == "incremental")
        #expect(r.bytesRead == 100 && r.bytesWritten == 10 && r.bytesChanged == 5)
        #expect(r.pid == getpid())
        #expect(r.started != nil && r.ended != nil && r.started! <= r.ended!)
        #expect(r.queued >= at(day: 10, 2) && r.queued < at(day: 10, 2, 1))
        // The scheduler's detail and the runner's, merged.
        #expect(r.detail?.contains("\"changedBlocks\":3") == true)
        #expect(r.detail?.contains("\"full\":\"false\"") == true)
        #expect(seen.withLock { $0.map(\.record) } == [r.id])
        #expect(try h.history.schedulerMark(policy: "web", kind: .backup).map { $0 >= at(day: 10, 2) } == true)
        let old = try #require(try h.history.list(policy: "old").first)
        #expect(old.status == .failed)
        #expect(old.error?.hasPrefix("interrupted:") == true)
        #expect(h.capture.text.contains("[web] starting web backup (incremental) [schedule]"))
        #expect(h.capture.text.contains("[web] web backup (incremental) [schedule] ended ok: point 2027-01-14T020000Z"))
    }

    @Test func aScheduleMissedForThreeDaysIsCaughtUpOnce() async throws {
        let h = try await Harness(start: at(day: 10, 12), prepare: { history in
            try history.setSchedulerMark(policy: "web", kind: .backup, to: at(day: 7, 2, 0, 30))
        }, policies: {
            [ScheduledPolicy(name: "web", backup: every(3_600 * 4, from: at(day: 0, 2))), ScheduledPolicy(name: "new", backup: daily(2))]
        }, runJob: { _ in JobOutcome(status: .ok) })
        #expect(try await eventually { try h.history.list(policy: "web").first?.status == .ok })
        // Another 200 (virtual) seconds: nothing more is due before 14:00.
        try await h.clock.sleep(200)
        try await h.stop()
        #expect(try h.history.list(policy: "web").map(\.trigger) == [.catchUp])
        // A policy seen for the first time catches up nothing.
        #expect(try h.history.list(policy: "new").isEmpty)
        #expect(try h.history.schedulerMark(policy: "new", kind: .backup) != nil)
    }

    @Test func jobsOfOnePolicyNeverOverlapAndPoliciesRunTogether() async throws {
        struct Counts { var active: [String: Int] = [:]; var maxPerPolicy = 0; var maxTotal = 0; var total = 0 }
        let counts = Mutex(Counts())
        let clock = Mutex<FastClock?>(nil)  // the runner needs the harness's clock, made after it
        let h = try await Harness(start: at(day: 10, 0), policies: {
            [ScheduledPolicy(name: "web", backup: every(30, from: at(day: 0, 0)), verify: every(45, from: at(day: 0, 0))),
             ScheduledPolicy(name: "db", backup: every(30, from: at(day: 0, 0)))]
        }, runJob: { job in
            counts.withLock { c in
                c.active[job.policy, default: 0] += 1
                c.maxPerPolicy = max(c.maxPerPolicy, c.active[job.policy]!)
                c.maxTotal = max(c.maxTotal, c.active.values.reduce(0, +))
                c.total += 1
            }
            try? await clock.withLock { $0 }?.sleep(40)
            counts.withLock { $0.active[job.policy]! -= 1 }
            return JobOutcome(status: .ok)
        })
        clock.withLock { $0 = h.clock }
        #expect(await eventually { counts.withLock { $0.total } >= 12 })
        try await h.stop()
        let c = counts.withLock { $0 }
        #expect(c.maxPerPolicy == 1)
        #expect(c.maxTotal == 2)
        for policy in ["web", "db"] {
            let rows = try h.history.list(policy: policy).sorted { $0.started! < $1.started! }
            #expect(rows.count >= 4)
            for (a, b) in zip(rows, rows.dropFirst()) where a.ended != nil {
                #expect(b.started! >= a.ended!, "\(policy): job \(b.id!) started before job \(a.id!) ended")
            }
        }
        #expect(Set(try h.history.list(policy: "web").map(\.kind)) == [.backup, .verify])
    }

    @Test func shutdownCancelsRunningJobsAndRecordsThemCanceled() async throws {
        let h = try await Harness(start: at(day: 10, 1, 58), environment: ["WATCHDOG_USEC": "20000000"], policies: {
            [ScheduledPolicy(name: "web", backup: daily(2)), ScheduledPolicy(name: "db", backup: daily(2))]
        }, runJob: { job in
            do {
                try await Task.sleep(for: .seconds(3_600))
                return JobOutcome(status: .ok)
            } catch {
                // One runner says canceled, the other fails because it was stopped: both are canceled.
                return job.policy == "web" ? JobOutcome(status: .canceled, error: "rolled back") : JobOutcome(status: .failed, error: "stopped")
            }
        })
        #expect(try await eventually { try h.history.list().filter { $0.status == .running }.count == 2 })
        // Watchdog pings every 10 virtual seconds.
        try await h.clock.sleep(50)
        // Read them now: a datagram socket queues only ~10 (net.unix.max_dgram_qlen).
        let before = h.receiver.drain()
        #expect(before.contains("WATCHDOG=1"))
        try await h.stop()
        let rows = try h.history.list()
        #expect(rows.map(\.status) == [.canceled, .canceled])
        #expect(rows.first { $0.policy == "web" }?.error == "rolled back")
        #expect(rows.first { $0.policy == "db" }?.error == "canceled by the daemon's shutdown (stopped)")
        #expect(rows.allSatisfy { $0.ended != nil })
        // READY=1 came first (the harness waited for it).
        let messages = h.receiver.drain()
        // STOPPING=1 after READY=1 (watchdog pings may follow while the jobs wind down).
        let stopping = messages.firstIndex { $0.hasPrefix("STOPPING=1") }
        #expect(stopping != nil)
        #expect(messages[(stopping ?? 0)...].allSatisfy { $0.hasPrefix("STOPPING=1") || $0 == "WATCHDOG=1" })
        #expect(h.capture.text.contains("stopping: canceling 2 running jobs"))
    }

    @Test func retryableFailuresAreRetriedAfterTheDelay() async throws {
        let tries = Mutex(0)
        let h = try await Harness(start: at(day: 10, 1, 58), policies: {
            [ScheduledPolicy(name: "web", backup: daily(2), retry: RetryRule(attempts: 3, delay: 120))]
        }, runJob: { _ in
            let n = tries.withLock { $0 += 1; return $0 }
            return n < 3 ? JobOutcome(status: .failedRetryable, error: "target offline") : JobOutcome(status: .ok)
        })
        #expect(try await eventually { try h.history.list().count == 3 && h.history.list().first?.status == .ok })
        try await h.stop()
        let rows = try h.history.list().reversed().map { $0 }
        try #require(rows.count == 3)
        #expect(rows.map(\.attempt) == [1, 2, 3])
        #expect(rows.map(\.trigger) == [.schedule, .retry, .retry])
        #expect(rows.map(\.status) == [.failedRetryable, .failedRetryable, .ok])
        // Started no sooner than the delay after the failure.
        #expect(rows[1].started!.timeIntervalSince(rows[0].ended!) >= 120)
        #expect(h.capture.text.contains("attempt 2 at"))
    }

    @Test func reloadAddsPoliciesAndKeepsTheOldOnesWhenLoadingFails() async throws {
        enum Load { case one, two, broken }
        struct Broken: Error, CustomStringConvertible { var description: String { "policies/web.yaml: line 3: bad schedule" } }
        let mode = Mutex(Load.one)
        let h = try await Harness(start: at(day: 10, 1), policies: {
            switch mode.withLock({ $0 }) {
            case .one: return [ScheduledPolicy(name: "web", backup: daily(2))]
            case .two: return [ScheduledPolicy(name: "web", backup: daily(2)), ScheduledPolicy(name: "db", backup: every(60, from: at(day: 0, 0)))]
            case .broken: throw Broken()
            }
        }, runJob: { _ in JobOutcome(status: .ok) })
        mode.withLock { $0 = .two }
        h.daemon.reload()
        #expect(try await eventually { try h.history.list(policy: "db").first?.status == .ok })
        #expect(h.receiver.drain().contains { $0.hasPrefix("RELOADING=1\nMONOTONIC_USEC=") })
        mode.withLock { $0 = .broken }
        h.daemon.reload()
        #expect(await eventually { h.capture.text.contains("reload failed, the previous policies stay in force: policies/web.yaml: line 3: bad schedule") })
        let count = try h.history.list(policy: "db").count
        #expect(try await eventually { try h.history.list(policy: "db").count > count })
        try await h.stop()
        #expect(h.capture.text.contains("[db] added: backup"))
    }
}

/// Real signals, to a daemon in a child process (this test bundle re-run with only
/// `daemonSignalChild`), so the test run's own signal dispositions are never touched: SIGHUP reloads
/// (RELOADING=1, then READY=1), SIGTERM stops (STOPPING=1) and the process exits 0.
@Suite struct DaemonSignalTests {
    @Test func sighupReloadsAndSigtermStopsTheProcess() throws {
        let dir = try TempDir("daemon-signals")
        let receiver = try DatagramReceiver(dir.file("notify.sock"))
        let child = Process()
        child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        child.arguments = ["--testing-library", "swift-testing", "--filter", "daemonSignalChild"]
        child.environment = ProcessInfo.processInfo.environment.merging(
            ["BULWARK_DAEMON_SIGNAL_CHILD": dir.path, "NOTIFY_SOCKET": receiver.address]) { $1 }
        child.standardOutput = FileHandle.nullDevice
        child.standardError = FileHandle.nullDevice
        try child.run()
        defer { if child.isRunning { kill(child.processIdentifier, SIGKILL); child.waitUntilExit() } }
        /// The next datagram with `prefix`, skipping STATUS= lines.
        func next(_ prefix: String) -> String? {
            while let m = receiver.receive(timeout: 30) { if m.hasPrefix(prefix) { return m } }
            return nil
        }
        #expect(next("READY=1") != nil)
        kill(child.processIdentifier, SIGHUP)
        #expect(next("RELOADING=1\nMONOTONIC_USEC=") != nil)
        #expect(next("READY=1") != nil)
        kill(child.processIdentifier, SIGTERM)
        #expect(next("STOPPING=1") != nil)
        child.waitUntilExit()
        #expect(child.terminationReason == .exit)
        #expect(child.terminationStatus == 0)
        let log = (try? String(contentsOfFile: dir.file("log"), encoding: .utf8)) ?? ""
        #expect(log.contains("reloaded the policies: nothing changed"), "\(log)")
        #expect(log.contains("stopped"))
    }

    /// The daemon of `sighupReloadsAndSigtermStopsTheProcess`; does nothing unless run by it.
    @Test func daemonSignalChild() async throws {
        let environment = ProcessInfo.processInfo.environment
        guard let dir = environment["BULWARK_DAEMON_SIGNAL_CHILD"] else { return }
        let history = try JobHistory(stateDirectory: dir)
        guard FileManager.default.createFile(atPath: dir + "/log", contents: nil),
              let log = FileHandle(forWritingAtPath: dir + "/log") else { throw TestFailure("cannot create \(dir)/log") }
        let logger = Logger(label: "child") { label in
            JournalLogHandler(label: label, format: .plain, write: { log.write(Data($0.utf8)) })
        }
        let daemon = Daemon(history: history, logger: logger, notifier: SystemdNotifier(environment: environment),
                            loadPolicies: { [ScheduledPolicy(name: "web", backup: daily(2))] }, runJob: { _ in JobOutcome(status: .ok) })
        try await daemon.run(handlingSignals: true)
    }
}
