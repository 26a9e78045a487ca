import Foundation
import Glibc
import ShadowCopy
import Testing
import TestSupport

extension ShadowCopyTests {
    /// A writer must freeze everything it was asked to: a guest agent that froze fewer filesystems
    /// than mountpoints given is a failed writer, never an application-consistent snapshot.
    @Suite struct FreezeCoverage {
        @Test func qgaWithAMistypedMountpointFailsNamingIt() async throws {
            guard try TestEnv.tools("qemu-ga") else { return }
            let agent = try QemuAgent()
            defer { agent.stop() }
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 64 << 10)
            let args = ["snapshot", "create", "--disk", disk, "--provider", "copy", "--qga", "\(agent.socket):/typo/mnt",
                        "--output", out.path, "--state-dir", state.path]
            let failed = try run(TestEnv.bulwark, args)
            #expect(failed.status == 1)
            #expect(failed.err.contains("did not freeze /typo/mnt"), "\(failed.err)")
            #expect(!failed.out.contains("applicationConsistent"))
            let record = try #require(try WriterStateStore(directory: state.path).load().first)
            #expect(record.state == .failed && record.lastError == .nonRetryable)
            #expect(record.lastErrorMessage.contains("/typo/mnt"))

            // Allowed to fall back: crash-consistent, said so, and the writer is failed.
            let allowed = try run(TestEnv.bulwark, args + ["--allow-crash-consistent", "--json"])
            #expect(allowed.status == 0, "\(allowed.err)")
            let result = try JSONDecoder().decode(SnapshotResult.self, from: allowed.stdout)
            #expect(result.consistency == .crashConsistent)
            #expect(result.writers[0].state == .failed && !result.writers[0].froze)
            #expect(try agent.status() == "thawed")
        }

        @Test func qgaFreezingFewerFilesystemsThanGivenIsAFailedWriter() async throws {
            guard try realPrerequisites("qemu-ga", "fsfreeze") else { return }
            let volume = try LoopVolume("ext4", size: "32M")
            defer { volume.cleanup() }
            let agent = try QemuAgent()
            defer { agent.stop() }
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 64 << 10)
            let writer = GuestAgentWriter(socket: agent.socket, mountpoints: [volume.mountpoint, "/typo/mnt"])
            do {
                _ = try await coordinator(state).snapshot(SnapshotRequest(
                    writers: [writer], provider: CopyProvider(), disks: [disk], outputDirectory: out.path))
                Issue.record("a freeze of 1 of 2 mountpoints passed")
            } catch let failure as SnapshotFailure {
                guard case let .notFrozen(_, mountpoints, _) = failure.cause else { Issue.record("wrong cause \(failure.cause)"); return }
                #expect(mountpoints == ["/typo/mnt"])
                #expect(failure.result.writers[0].lastError == .nonRetryable)
            }
            #expect(try agent.status() == "thawed")
            #expect(volume.writeCompletes(within: 2))

            let result = try await coordinator(state).snapshot(SnapshotRequest(
                writers: [writer], provider: CopyProvider(), disks: [disk], outputDirectory: out.path,
                policy: SnapshotPolicy(fallBackToCrashConsistent: true)))
            #expect(result.consistency == .crashConsistent)
            #expect(result.writers[0].state == .failed)
            #expect(try agent.status() == "thawed")
            #expect(volume.writeCompletes(within: 2))
        }
    }
}
