import Foundation
import Glibc
import ShadowCopy
import Testing
import TestSupport

extension ShadowCopyTests {
    /// Hook processes: each call ends with the hook's own exit, its process group never outlives the
    /// call, and a freeze still running is killed before its thaw (in the coordinator and in the
    /// watchdog).
    @Suite struct HookProcesses {
        /// A hook that logs the start and end of each phase to `log`; its freeze takes `freezeSeconds`
        /// and leaves `flag` behind (the application is frozen), its thaw removes it.
        static func slowFreezeHook(_ path: String, log: String, flag: String, freezeSeconds: Double) throws {
            try makeScript(path, """
            case "$1" in
            freeze) echo freeze-start >> '\(log)'; sleep \(freezeSeconds); echo freeze-end >> '\(log)'; touch '\(flag)';;
            thaw) echo thaw-start >> '\(log)'; rm -f '\(flag)'; echo thaw-end >> '\(log)';;
            esac
            exit 0
            """)
        }

        static func lines(_ path: String) -> [String] {
            ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }

        static func pid(in path: String) throws -> Int32 {
            var text = ""
            for _ in 0..<300 {
                text = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
                if !text.isEmpty { break }
                usleep(10_000)
            }
            return try #require(Int32(text), "no pid in \(path)")
        }

        /// A freeze hook that leaves a background child holding its output open is finished when the
        /// hook exits (not when the output closes), and the child is killed with its group.
        @Test func hookLeavingABackgroundChildIsDoneWhenItExits() async throws {
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 64 << 10)
            let hook = out.file("bg.sh")
            try makeScript(hook, """
            if [ "$1" = freeze ]; then sleep 30 & echo $! > '\(out.file("child.pid"))'; echo "left a child"; fi
            exit 0
            """)
            let start = Date()
            let result = try await coordinator(state).snapshot(SnapshotRequest(
                writers: [HookWriter(path: hook, timeout: 5)], provider: CopyProvider(), disks: [disk],
                outputDirectory: out.path, policy: SnapshotPolicy(holdTimeout: 5)))
            #expect(Date().timeIntervalSince(start) < 2, "the hook was treated as hung until its timeout")
            #expect(result.consistency == .applicationConsistent)
            #expect(result.writers[0].state == .stable)
            #expect(result.log.contains { $0.contains("left a child") })
            let child = try Self.pid(in: out.file("child.pid"))
            var gone = false
            for _ in 0..<100 where !gone { gone = isGone(child); if !gone { usleep(10_000) } }
            #expect(gone, "the hook's background child \(child) outlived the hook")
        }

        /// The hold deadline passes while the hook's freeze still runs (its own timeout is longer):
        /// the thaw kills the freeze first, so the freeze never finishes after the thaw.
        @Test func freezeStillRunningAtTheThawIsKilledBeforeTheThaw() async throws {
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 64 << 10)
            let hook = out.file("slow.sh"), log = out.file("hook.log"), flag = out.file("app-frozen")
            try Self.slowFreezeHook(hook, log: log, flag: flag, freezeSeconds: 2)
            do {
                _ = try await coordinator(state).snapshot(SnapshotRequest(
                    writers: [HookWriter(path: hook, timeout: 10)], provider: CopyProvider(), disks: [disk],
                    outputDirectory: out.path, policy: SnapshotPolicy(holdTimeout: 1)))
                Issue.record("a freeze past the hold deadline succeeded")
            } catch let failure as SnapshotFailure {
                guard case .timedOut = failure.cause else { Issue.record("wrong cause \(failure.cause)"); return }
            }
            // Past the moment the freeze would have ended.
            try await Task.sleep(for: .milliseconds(1800))
            let events = Self.lines(log)
            #expect(events.contains("thaw-end"))
            #expect(!events.contains("freeze-end"), "the freeze finished after its thaw: \(events)")
            #expect(!FileManager.default.fileExists(atPath: flag), "the application was left frozen")
        }

        /// SIGKILL of the coordinator while a hook is in its freeze: the watchdog kills that freeze
        /// (its whole process group) before it runs the thaw, so the application ends thawed.
        @Test func watchdogKillsAHookFreezeInFlightBeforeItsThaw() async throws {
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 64 << 10)
            let hook = out.file("slow.sh"), log = out.file("hook.log"), flag = out.file("app-frozen")
            try Self.slowFreezeHook(hook, log: log, flag: flag, freezeSeconds: 1)
            let cli = Process()
            cli.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
            cli.arguments = ["snapshot", "create", "--disk", disk, "--provider", "copy", "--hook", hook,
                             "--timeout", "30s", "--output", out.path, "--state-dir", state.path]
            cli.standardOutput = FileHandle.nullDevice
            cli.standardError = FileHandle.nullDevice
            try cli.run()
            defer { stopProcess(cli) }
            for _ in 0..<500 where !Self.lines(log).contains("freeze-start") { usleep(10_000) }
            #expect(Self.lines(log).contains("freeze-start"))
            usleep(200_000)
            kill(cli.processIdentifier, SIGKILL)
            cli.waitUntilExit()
            // Past the moment the freeze would have ended (1 s after its start).
            for _ in 0..<150 where !Self.lines(log).contains("thaw-end") { usleep(10_000) }
            try await Task.sleep(for: .milliseconds(1500))
            let events = Self.lines(log)
            #expect(events.contains("thaw-end"), "the watchdog did not thaw: \(events)")
            #expect(!events.contains("freeze-end"), "the freeze finished after the watchdog's thaw: \(events)")
            #expect(!FileManager.default.fileExists(atPath: flag), "the application was left frozen")
            let record = try #require(try WriterStateStore(directory: state.path).load().first)
            #expect(record.state == .failed && record.lastError == .retryable)
        }

        /// A hook whose freeze hangs, after a guest agent froze (the hold deadline comes before the
        /// hook's own timeout): when `bulwark snapshot create` has exited, nothing of the hook runs.
        @Test func hungFreezeHookDoesNotOutliveTheCommand() async throws {
            guard try realPrerequisites("qemu-ga", "fsfreeze") else { return }
            let volume = try LoopVolume("ext4", size: "32M")
            defer { volume.cleanup() }
            let agent = try QemuAgent()
            defer { agent.stop() }
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 64 << 10)
            let hook = out.file("hang.sh")
            try makeScript(hook, """
            if [ "$1" = freeze ]; then echo $$ > '\(out.file("hook.pid"))'; sleep 60 & echo $! > '\(out.file("child.pid"))'; wait; fi
            exit 0
            """)
            let start = Date()
            let r = try run(TestEnv.bulwark, ["snapshot", "create", "--disk", disk, "--provider", "copy",
                                              "--qga", "\(agent.socket):\(volume.mountpoint)", "--hook", hook, "--timeout", "2s",
                                              "--output", out.path, "--state-dir", state.path])
            defer { _ = try? run(sys("fsfreeze"), ["-u", volume.mountpoint]) }
            #expect(r.status == 1)
            #expect(Date().timeIntervalSince(start) < 6)
            let pids = [try Self.pid(in: out.file("hook.pid")), try Self.pid(in: out.file("child.pid"))]
            for p in pids {
                #expect(isGone(p), "hook process \(p) still runs after the command exited")
                if !isGone(p) { kill(p, SIGKILL) }
            }
            #expect(try agent.status() == "thawed")
            #expect(volume.writeCompletes(within: 2))
        }
    }
}
