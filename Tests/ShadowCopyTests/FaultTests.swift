import Foundation
import Glibc
import ShadowCopy
import Testing
import TestSupport
import VirtualDisk

extension ShadowCopyTests {
    /// Faults: each ends thawed, with the right writer state and error class persisted, within the
    /// deadline + 1 s.
    @Suite struct Faults {
        func setup() throws -> (LoopVolume, TempDir, TempDir, String) {
            let volume = try LoopVolume("ext4", size: "32M")
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 1 << 20)
            return (volume, state, out, disk)
        }

        func record(_ state: TempDir, kind: String) throws -> WriterRecord? {
            try WriterStateStore(directory: state.path).load().first { $0.identity.kind == kind }
        }

        @Test func agentThatNeverAnswersTimesOut() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let (volume, state, out, disk) = try setup()
            defer { volume.cleanup() }
            let silent = try SilentAgent()
            defer { withExtendedLifetime(silent) {} }
            let start = Date()
            await #expect(throws: SnapshotFailure.self) {
                _ = try await coordinator(state).snapshot(SnapshotRequest(
                    writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint), GuestAgentWriter(socket: silent.socket, callTimeout: 1)],
                    provider: CopyProvider(), disks: [disk], outputDirectory: out.path))
            }
            #expect(Date().timeIntervalSince(start) < 2)
            #expect(volume.writeCompletes(within: 2))
            let qga = try #require(try record(state, kind: "qga"))
            #expect(qga.state == .failed && qga.lastError == .timedOut)
            #expect(qga.lastErrorMessage.contains("no answer"))
            #expect(try record(state, kind: "fsfreeze")?.state == .stable)
        }

        @Test func absentAgentIsRetryable() async throws {
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 4096)
            do {
                _ = try await coordinator(state).snapshot(SnapshotRequest(
                    writers: [GuestAgentWriter(socket: out.file("missing.sock"))], provider: CopyProvider(), disks: [disk], outputDirectory: out.path))
                Issue.record("snapshot with a missing agent succeeded")
            } catch let failure as SnapshotFailure {
                guard case .agentUnavailable = failure.cause else { Issue.record("wrong cause \(failure.cause)"); return }
            }
            #expect(try record(state, kind: "qga")?.lastError == .retryable)
        }

        @Test func absentAgentFallsBackToCrashConsistentWhenAllowed() async throws {
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            let data = try makeDisk(disk, size: 8192)
            let result = try await coordinator(state).snapshot(SnapshotRequest(
                writers: [GuestAgentWriter(socket: out.file("missing.sock"))], provider: CopyProvider(), disks: [disk],
                outputDirectory: out.path, policy: SnapshotPolicy(fallBackToCrashConsistent: true)))
            #expect(result.consistency == .crashConsistent)
            #expect(result.writers[0].state == .failed)
            #expect(try Data(contentsOf: URL(fileURLWithPath: result.copies[0])) == data)
        }

        @Test func hookThatHangsIsKilledWithItsProcessGroup() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let (volume, state, out, disk) = try setup()
            defer { volume.cleanup() }
            let hook = out.file("hang.sh")
            try makeScript(hook, """
            if [ "$1" = freeze ]; then echo "going to sleep"; sleep 60 & echo $! > '\(out.file("child.pid"))'; wait; fi
            exit 0
            """)
            let start = Date()
            do {
                _ = try await coordinator(state).snapshot(SnapshotRequest(
                    writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint), HookWriter(path: hook, timeout: 1)],
                    provider: CopyProvider(), disks: [disk], outputDirectory: out.path, policy: SnapshotPolicy(holdTimeout: 3)))
                Issue.record("a hanging hook did not fail the snapshot")
            } catch let failure as SnapshotFailure {
                #expect(failure.result.log.contains { $0.contains("going to sleep") })
                #expect(failure.result.writers[0].froze)
                #expect(failure.result.freezeHoldSeconds < 2)
            }
            #expect(Date().timeIntervalSince(start) < 2.5)
            #expect(volume.writeCompletes(within: 2))
            let hookRecord = try #require(try record(state, kind: "hook"))
            #expect(hookRecord.state == .failed && hookRecord.lastError == .timedOut)
            #expect(try record(state, kind: "fsfreeze")?.state == .stable)
            // The hook's own child (its process group) was killed too.
            let pid = Int32(try String(contentsOfFile: out.file("child.pid"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))!
            usleep(100_000)
            #expect(isGone(pid))
        }

        @Test func hookThatFailsIsNonRetryableAndItsOutputIsLogged() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let (volume, state, out, disk) = try setup()
            defer { volume.cleanup() }
            let hook = out.file("fail.sh")
            try makeScript(hook, """
            echo "phase $BULWARK_PHASE id $BULWARK_SNAPSHOT_ID disk $BULWARK_DISK"
            if [ "$1" = freeze ]; then echo "database refused" >&2; exit 3; fi
            """)
            do {
                _ = try await coordinator(state).snapshot(SnapshotRequest(
                    writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint), HookWriter(path: hook, timeout: 5)],
                    provider: CopyProvider(), disks: [disk], outputDirectory: out.path))
                Issue.record("a failing hook did not fail the snapshot")
            } catch let failure as SnapshotFailure {
                guard case let .hookFailed(_, phase, reason) = failure.cause else { Issue.record("wrong cause \(failure.cause)"); return }
                #expect(phase == "freeze" && reason.contains("exit status 3"))
                #expect(failure.result.log.contains { $0.contains("database refused") })
                #expect(failure.result.log.contains { $0.contains("phase freeze id \(failure.result.snapshotID) disk \(disk)") })
                // It is thawed too (thaw runs for every writer whose freeze was attempted).
                #expect(failure.result.log.contains { $0.contains("phase thaw") })
                #expect(!FileManager.default.fileExists(atPath: out.path + "/" + failure.result.snapshotID + "/disk.raw"))
            }
            #expect(volume.writeCompletes(within: 2))
            #expect(try record(state, kind: "hook")?.lastError == .nonRetryable)
        }

        @Test func providerFailureAfterFreezeThaws() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let (volume, state, out, disk) = try setup()
            defer { volume.cleanup() }
            do {
                _ = try await coordinator(state).snapshot(SnapshotRequest(
                    writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint)],
                    provider: FailingProvider(), disks: [disk], outputDirectory: out.path))
                Issue.record("a failing provider did not fail the snapshot")
            } catch let failure as SnapshotFailure {
                guard case .providerFailed = failure.cause else { Issue.record("wrong cause \(failure.cause)"); return }
                #expect(failure.result.writers[0].froze)
            }
            #expect(volume.writeCompletes(within: 2))
            let r = try #require(try record(state, kind: "fsfreeze"))
            #expect(r.state == .stable && r.lastError == .none)
        }

        @Test func holdPastTheDeadlineTimesOutEveryFrozenWriter() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let (volume, state, out, disk) = try setup()
            defer { volume.cleanup() }
            let start = Date()
            do {
                _ = try await coordinator(state).snapshot(SnapshotRequest(
                    writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint)], provider: CopyProvider(), disks: [disk],
                    outputDirectory: out.path, policy: SnapshotPolicy(holdTimeout: 1), pauseWhileFrozen: 30))
                Issue.record("an over-long hold did not fail")
            } catch let failure as SnapshotFailure {
                guard case .timedOut = failure.cause else { Issue.record("wrong cause \(failure.cause)"); return }
                #expect(failure.result.freezeHoldSeconds < 2)
            }
            #expect(Date().timeIntervalSince(start) < 2)
            #expect(volume.writeCompletes(within: 2))
            let r = try #require(try record(state, kind: "fsfreeze"))
            #expect(r.state == .failed && r.lastError == .timedOut)
        }

        @Test func cancellationWhileFrozenThaws() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let (volume, state, out, disk) = try setup()
            defer { volume.cleanup() }
            let c = coordinator(state)
            let task = Task {
                try await c.snapshot(SnapshotRequest(
                    writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint)], provider: CopyProvider(), disks: [disk],
                    outputDirectory: out.path, pauseWhileFrozen: 30))
            }
            try await Task.sleep(for: .milliseconds(500))
            #expect(!volume.writeCompletes(within: 0.2, name: "blocked"))
            task.cancel()
            let start = Date()
            do {
                _ = try await task.value
                Issue.record("a cancelled snapshot succeeded")
            } catch let failure as SnapshotFailure {
                #expect(failure.cause == .cancelled)
                #expect(failure.result.writers[0].froze)
            }
            #expect(Date().timeIntervalSince(start) < 1)
            #expect(volume.writeCompletes(within: 2))
            // Cancelled by the caller: the writer is not blamed.
            #expect(try record(state, kind: "fsfreeze")?.state == .stable)
        }
    }
}

extension ShadowCopyTests.Faults {
    @Test func sigtermOfTheCommandThawsThenExits() async throws {
        guard try realPrerequisites("fsfreeze") else { return }
        let (volume, state, out, disk) = try setup()
        defer { volume.cleanup() }
        let cli = Process()
        cli.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
        let hook = out.file("mark.sh")
        try makeScript(hook, "[ \"$1\" = freeze ] && touch '\(out.file("frozen"))'; exit 0")
        cli.arguments = ["snapshot", "create", "--disk", disk, "--provider", "copy", "--fsfreeze", volume.mountpoint, "--hook", hook,
                         "--output", out.path, "--state-dir", state.path, "--pause-while-frozen", "20", "--timeout", "30s"]
        cli.standardOutput = FileHandle.nullDevice
        cli.standardError = FileHandle.nullDevice
        try cli.run()
        defer { stopProcess(cli) }
        // The hook is frozen last: once it ran, the volume is frozen.
        for _ in 0..<500 where !FileManager.default.fileExists(atPath: out.file("frozen")) { usleep(10_000) }
        #expect(!volume.writeCompletes(within: 0.1, name: "blocked"))
        kill(cli.processIdentifier, SIGTERM)
        let start = Date()
        while cli.isRunning, Date().timeIntervalSince(start) < 3 { usleep(10_000) }
        #expect(!cli.isRunning)
        #expect(cli.terminationStatus == 128 + SIGTERM)
        #expect(Date().timeIntervalSince(start) < 1)
        #expect(volume.writeCompletes(within: 2))
        let r = try #require(try record(state, kind: "fsfreeze"))
        #expect(r.state == .stable, "\(r.lastErrorMessage)")
    }
}

extension ShadowCopyTests.Faults {
    /// A coordinator that died without a watchdog left its writer frozen and recorded mid-snapshot:
    /// the next snapshot thaws and resets it (the "stuck writer"), and says so.
    @Test func stuckWriterFromACrashIsThawedAndReset() async throws {
        guard try realPrerequisites("fsfreeze") else { return }
        let (volume, state, out, disk) = try setup()
        defer { volume.cleanup() }
        let writer = FilesystemFreezeWriter(mountpoint: volume.mountpoint)
        try WriterStateStore(directory: state.path).update { map in
            map[writer.identity.id] = WriterRecord(identity: writer.identity, state: .waitingForThaw, snapshotID: "crashed")
        }
        try runChecked(sys("fsfreeze"), ["-f", volume.mountpoint])
        #expect(!volume.writeCompletes(within: 0.2, name: "blocked"))
        let result = try await SnapshotCoordinator(stateDirectory: state.path, watchdog: nil).snapshot(SnapshotRequest(
            writers: [writer], provider: CopyProvider(), disks: [disk], outputDirectory: out.path))
        #expect(result.writers[0].wasReset)
        #expect(result.writers[0].resetFrom?.hasPrefix("waitingForThaw") == true)
        #expect(result.writers[0].froze)
        #expect(result.consistency == .applicationConsistent)
        #expect(result.log.contains { $0.contains("reset to stable") })
        #expect(volume.writeCompletes(within: 2))
        #expect(try record(state, kind: "fsfreeze")?.state == .stable)
    }

    /// A filesystem someone else froze is not thawed by a writer whose FIFREEZE failed (EBUSY).
    @Test func foreignFreezeIsLeftAlone() async throws {
        guard try realPrerequisites("fsfreeze") else { return }
        let (volume, state, out, disk) = try setup()
        defer { volume.cleanup() }
        try runChecked(sys("fsfreeze"), ["-f", volume.mountpoint])
        await #expect(throws: SnapshotFailure.self) {
            _ = try await coordinator(state).snapshot(SnapshotRequest(
                writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint)], provider: CopyProvider(), disks: [disk], outputDirectory: out.path))
        }
        #expect(!volume.writeCompletes(within: 0.3, name: "still-frozen"))
        try runChecked(sys("fsfreeze"), ["-u", volume.mountpoint])
        #expect(volume.writeCompletes(within: 2))
        #expect(try record(state, kind: "fsfreeze")?.lastError == .nonRetryable)
    }
}

extension ShadowCopyTests.Faults {
    /// The agent answers the handshake but hangs in its freeze: the per-call timeout fails it, the
    /// filesystem frozen before it is thawed, and the agent gets its thaw.
    @Test func agentHangingInFreezeTimesOutAndEverythingIsThawed() async throws {
        guard try realPrerequisites("fsfreeze") else { return }
        let (volume, state, out, disk) = try setup()
        defer { volume.cleanup() }
        let agent = try HangingAgent(hangOn: ["guest-fsfreeze-freeze-list"])
        defer { withExtendedLifetime(agent) {} }
        let start = Date()
        do {
            _ = try await coordinator(state).snapshot(SnapshotRequest(
                writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint),
                          GuestAgentWriter(socket: agent.socket, mountpoints: ["/guest"], callTimeout: 1)],
                provider: CopyProvider(), disks: [disk], outputDirectory: out.path, policy: SnapshotPolicy(holdTimeout: 3)))
            Issue.record("a hanging agent did not fail the snapshot")
        } catch let failure as SnapshotFailure {
            guard case .agentTimedOut(_, let command, _) = failure.cause else { Issue.record("wrong cause \(failure.cause)"); return }
            #expect(command == "guest-fsfreeze-freeze-list")
            #expect(failure.result.writers[0].froze)
            #expect(failure.result.freezeHoldSeconds < 2)
        }
        #expect(Date().timeIntervalSince(start) < 2.5)
        #expect(volume.writeCompletes(within: 2))
        #expect(agent.commands.contains("guest-ping") && agent.commands.last == "guest-fsfreeze-thaw")
        let qga = try #require(try record(state, kind: "qga"))
        #expect(qga.state == .failed && qga.lastError == .timedOut)
        #expect(try record(state, kind: "fsfreeze")?.state == .stable)
    }
}
