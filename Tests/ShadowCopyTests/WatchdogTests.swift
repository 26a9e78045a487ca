import Foundation
import Glibc
@testable import ShadowCopy
import Testing
import TestSupport

extension ShadowCopyTests {
    @Suite struct WatchdogProcess {
        /// A coordinator that is alive but stuck past the deadline: the watchdog thaws on its own and
        /// records the writer as timed out.
        @Test func thawsAtTheDeadlineWhileTheCoordinatorHangs() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let volume = try LoopVolume("ext4", size: "32M")
            defer { volume.cleanup() }
            let state = try TempDir("bulwark-state")
            let writer = FilesystemFreezeWriter(mountpoint: volume.mountpoint)
            let handle = try WatchdogHandle.start(WatchdogConfiguration(executable: TestEnv.bulwark), stateDirectory: state.path, keep: [])
            try handle.send(.start(snapshotID: "stuck", stateDirectory: state.path, deadline: Clock.now() + 0.5))
            try handle.send(.frozen(identity: writer.identity, action: .filesystem(mountpoint: volume.mountpoint)))
            try runChecked(sys("fsfreeze"), ["-f", volume.mountpoint])
            let start = Date()
            #expect(volume.writeCompletes(within: 2, name: "after-deadline"))
            #expect(Date().timeIntervalSince(start) < 1.5)
            var record: WriterRecord?
            for _ in 0..<100 where record == nil {
                record = try WriterStateStore(directory: state.path).load().first
                if record == nil { usleep(20_000) }
            }
            #expect(record?.state == .failed && record?.lastError == .timedOut)
            #expect(record?.snapshotID == "stuck")
            handle.abandon(wait: 2)
            #expect(isGone(handle.pid))
        }

        /// Told "thawed", the watchdog exits without touching anything.
        @Test func exitsQuietlyAfterACleanThaw() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let volume = try LoopVolume("ext4", size: "32M")
            defer { volume.cleanup() }
            let state = try TempDir("bulwark-state")
            let writer = FilesystemFreezeWriter(mountpoint: volume.mountpoint)
            let handle = try WatchdogHandle.start(WatchdogConfiguration(executable: TestEnv.bulwark), stateDirectory: state.path, keep: [])
            try handle.send(.start(snapshotID: "clean", stateDirectory: state.path, deadline: Clock.now() + 30))
            try handle.send(.frozen(identity: writer.identity, action: .filesystem(mountpoint: volume.mountpoint)))
            // Frozen by someone else after our clean thaw: the watchdog must leave it alone.
            handle.finish()
            try runChecked(sys("fsfreeze"), ["-f", volume.mountpoint])
            #expect(!volume.writeCompletes(within: 0.3, name: "left-frozen"))
            #expect(isGone(handle.pid))
            #expect(try WriterStateStore(directory: state.path).load().isEmpty)
        }

        @Test func aMissingWatchdogExecutableFailsBeforeAnyFreeze() async throws {
            let start = Date()
            defer { #expect(Date().timeIntervalSince(start) < 2) }
            guard try realPrerequisites("fsfreeze") else { return }
            let volume = try LoopVolume("ext4", size: "32M")
            defer { volume.cleanup() }
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 4096)
            let c = SnapshotCoordinator(stateDirectory: state.path, watchdog: WatchdogConfiguration(executable: "/nonexistent/bulwark"))
            do {
                _ = try await c.snapshot(SnapshotRequest(writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint)],
                                                         provider: CopyProvider(), disks: [disk], outputDirectory: out.path))
                Issue.record("snapshot without a watchdog succeeded")
            } catch let failure as SnapshotFailure {
                guard case .watchdogFailed = failure.cause else { Issue.record("wrong cause \(failure.cause)"); return }
                #expect(failure.result.writers[0].froze == false)
            }
            #expect(volume.writeCompletes(within: 2))
        }
    }
}
