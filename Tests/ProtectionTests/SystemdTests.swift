#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Protection
import TestSupport
import Testing

@Suite struct SystemdNotifierTests {
    @Test func sendsDatagramsToAPathSocket() throws {
        let dir = try TempDir("notify")
        let receiver = try DatagramReceiver(dir.file("notify.sock"))
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": receiver.address])
        #expect(notifier.isEnabled)
        try notifier.ready(status: "idle")
        #expect(receiver.receive() == "READY=1\nSTATUS=idle")
        try notifier.watchdog()
        #expect(receiver.receive() == "WATCHDOG=1")
        try notifier.status("two\nlines")
        #expect(receiver.receive() == "STATUS=two lines")
        let before = SystemdNotifier.monotonicMicroseconds()
        try notifier.reloading()
        let reloading = receiver.receive() ?? ""
        #expect(reloading.hasPrefix("RELOADING=1\nMONOTONIC_USEC="))
        let usec = UInt64(reloading.split(separator: "=").last ?? "") ?? 0
        #expect(usec >= before && usec <= SystemdNotifier.monotonicMicroseconds())
        try notifier.stopping()
        #expect(receiver.receive() == "STOPPING=1")
    }

    @Test func sendsDatagramsToAnAbstractSocket() throws {
        let name = "@bulwark-test-\(UUID().uuidString.prefix(8))"
        let receiver = try DatagramReceiver(name)
        try SystemdNotifier(environment: ["NOTIFY_SOCKET": name]).ready()
        #expect(receiver.receive() == "READY=1")
    }

    @Test func withoutASocketNothingIsSentAndAGoneSocketIsAnError() throws {
        let quiet = SystemdNotifier(environment: [:])
        #expect(!quiet.isEnabled)
        try quiet.ready()
        let dir = try TempDir("notify")
        let gone = SystemdNotifier(environment: ["NOTIFY_SOCKET": dir.file("nobody.sock")])
        let error = #expect(throws: NotifyError.self) { try gone.ready() }
        #expect(error?.description.contains(dir.file("nobody.sock")) == true)
    }

    @Test func watchdogIntervalFromTheEnvironment() {
        #expect(SystemdNotifier(environment: [:]).watchdogInterval == nil)
        #expect(SystemdNotifier(environment: ["WATCHDOG_USEC": "30000000"]).watchdogInterval == 30)
        #expect(SystemdNotifier(environment: ["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "\(getpid())"]).watchdogInterval == 30)
        // Meant for another process (a parent that exec'd us without clearing it).
        #expect(SystemdNotifier(environment: ["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"], pid: 4242).watchdogInterval == nil)
        #expect(SystemdNotifier(environment: ["WATCHDOG_USEC": "0"]).watchdogInterval == nil)
        #expect(SystemdNotifier(environment: ["WATCHDOG_USEC": "soon"]).watchdogInterval == nil)
    }
}

@Suite struct JournalLogHandlerTests {
    let date = Date(timeIntervalSince1970: 1_796_193_000)  // 2026-12-02T06:30:00Z

    @Test func journalLinesCarryTheSyslogPriorityAndNoTimestamp() {
        let line = JournalLogHandler.format(level: .warning, message: "disk slow", metadata: ["policy": "web", "bytes": "12", "note": "a b"],
                                            format: .journal, date: date)
        #expect(line == "<4>[web] disk slow bytes=12 note=\"a b\"\n")
        let levels: [(Logger.Level, Int)] = [(.trace, 7), (.debug, 7), (.info, 6), (.notice, 5), (.warning, 4), (.error, 3), (.critical, 2)]
        for (level, priority) in levels {
            #expect(JournalLogHandler.format(level: level, message: "m", metadata: [:], format: .journal, date: date) == "<\(priority)>m\n")
        }
        // Each line of a multi-line message is its own journal entry: each gets the priority.
        #expect(JournalLogHandler.format(level: .error, message: "one\ntwo", metadata: [:], format: .journal, date: date) == "<3>one\n<3>two\n")
    }

    @Test func plainLinesCarryTimeLevelAndPolicy() {
        #expect(JournalLogHandler.format(level: .info, message: "backup ok", metadata: ["policy": "web", "job": "7"], format: .plain, date: date)
                == "2026-12-02T06:30:00Z info [web] backup ok job=7\n")
        #expect(JournalLogHandler.format(level: .error, message: "x", metadata: ["why": "say \"no\""], format: .plain, date: date)
                == "2026-12-02T06:30:00Z error x why=\"say \\\"no\\\"\"\n")
    }

    @Test func loggerMetadataIsMerged() {
        let capture = LogCapture()
        var logger = capture.logger(.journal)
        logger[metadataKey: "policy"] = "db"
        logger.notice("started", metadata: ["attempt": "2"])
        #expect(capture.text == "<5>[db] started attempt=2\n")
    }

    @Test func journalFormatOnlyWhenStandardErrorIsTheJournalStream() throws {
        let dir = try TempDir("journal")
        let fd = open(dir.file("stream"), O_RDWR | O_CREAT, 0o600)
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        #expect(JournalLogHandler.standardErrorIsJournal(environment: ["JOURNAL_STREAM": "\(st.st_dev):\(st.st_ino)"], descriptor: fd))
        #expect(!JournalLogHandler.standardErrorIsJournal(environment: ["JOURNAL_STREAM": "\(st.st_dev):\(st.st_ino + 1)"], descriptor: fd))
        #expect(!JournalLogHandler.standardErrorIsJournal(environment: [:], descriptor: fd))
        #expect(!JournalLogHandler.standardErrorIsJournal(environment: ["JOURNAL_STREAM": "junk"], descriptor: fd))
    }
}
