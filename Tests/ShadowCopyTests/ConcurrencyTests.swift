import Foundation
import ShadowCopy
import Testing
import TestSupport

extension ShadowCopyTests {
    @Suite struct Concurrency {
        @Test func threeGuestsAtOnceAllSucceed() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let volumes = try (0..<3).map { _ in try LoopVolume("ext4", size: "32M") }
            defer { volumes.forEach { $0.cleanup() } }
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disks = try (0..<3).map { i -> String in
                let d = out.file("guest\(i).raw")
                _ = try makeDisk(d, size: 2 << 20, seed: UInt64(i))
                return d
            }
            let c = coordinator(state)
            let start = Date()
            let results = try await withThrowingTaskGroup(of: SnapshotResult.self) { group in
                for i in 0..<3 {
                    let (volume, disk) = (volumes[i], disks[i])
                    group.addTask {
                        try await c.snapshot(SnapshotRequest(
                            writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint)], provider: CopyProvider(),
                            disks: [disk], outputDirectory: out.path, pauseWhileFrozen: 0.6))
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let elapsed = Date().timeIntervalSince(start)
            #expect(results.count == 3)
            #expect(results.allSatisfy { $0.consistency == .applicationConsistent })
            // The three holds overlapped: nothing serialized them.
            let windows = results.compactMap { r in r.freezeStarted.map { ($0, $0.addingTimeInterval(r.freezeHoldSeconds)) } }
            #expect(windows.count == 3)
            #expect(windows.map(\.0).max()! < windows.map(\.1).min()!, "three independent snapshots were serialized (\(elapsed) s)")
            for v in volumes { #expect(v.writeCompletes(within: 2)) }
            #expect(try WriterStateStore(directory: state.path).load().filter { $0.state == .stable }.count == 3)
        }

        @Test func twoSnapshotsOfOneGuestSerialize() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let volume = try LoopVolume("ext4", size: "32M")
            defer { volume.cleanup() }
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let a = out.file("a.raw"), b = out.file("b.raw")
            _ = try makeDisk(a, size: 1 << 20)
            _ = try makeDisk(b, size: 1 << 20)
            let start = Date()
            // Two coordinators (as two processes would be): the lock is per resource, not per object.
            let results = try await withThrowingTaskGroup(of: SnapshotResult.self) { group in
                for disk in [a, b] {
                    group.addTask {
                        try await coordinator(state).snapshot(SnapshotRequest(
                            writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint)], provider: CopyProvider(),
                            disks: [disk], outputDirectory: out.path, pauseWhileFrozen: 0.5))
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(results.count == 2)
            #expect(Date().timeIntervalSince(start) >= 1.0)
            // The holds did not overlap.
            let w = results.compactMap { r in r.freezeStarted.map { ($0, $0.addingTimeInterval(r.freezeHoldSeconds)) } }.sorted { $0.0 < $1.0 }
            #expect(w.count == 2 && w[0].1 <= w[1].0)
            #expect(volume.writeCompletes(within: 2))
        }

        @Test func sameResourceAcrossProcessesWaitsForTheFileLock() async throws {
            guard try realPrerequisites("fsfreeze") else { return }
            let volume = try LoopVolume("ext4", size: "32M")
            defer { volume.cleanup() }
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("a.raw")
            _ = try makeDisk(disk, size: 1 << 20)
            let cli = Process()
            cli.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
            cli.arguments = ["snapshot", "create", "--disk", out.file("other.raw"), "--provider", "copy", "--fsfreeze", volume.mountpoint,
                             "--output", out.path, "--state-dir", state.path, "--pause-while-frozen", "1"]
            _ = try makeDisk(out.file("other.raw"), size: 1 << 20)
            cli.standardOutput = FileHandle.nullDevice
            cli.standardError = FileHandle.nullDevice
            try cli.run()
            // Wait until the other process holds the freeze.
            var frozen = false
            for _ in 0..<100 where !frozen {
                frozen = !volume.writeCompletes(within: 0.05, name: "probe-\(UUID().uuidString.prefix(4))")
            }
            #expect(frozen)
            let start = Date()
            let result = try await coordinator(state).snapshot(SnapshotRequest(
                writers: [FilesystemFreezeWriter(mountpoint: volume.mountpoint)], provider: CopyProvider(),
                disks: [disk], outputDirectory: out.path))
            cli.waitUntilExit()
            #expect(cli.terminationStatus == 0)
            #expect(result.consistency == .applicationConsistent)
            #expect(Date().timeIntervalSince(start) >= 0.3, "did not wait for the other process")
            #expect(volume.writeCompletes(within: 2))
        }
    }

    @Suite struct CommandLine {
        @Test func writersListShowsPersistedStates() async throws {
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 4096)
            let hook = out.file("ok.sh")
            try makeScript(hook, "exit 0")
            let bad = out.file("bad.sh")
            try makeScript(bad, "[ \"$1\" = freeze ] && exit 4; exit 0")
            let ok = try run(TestEnv.bulwark, ["snapshot", "create", "--disk", disk, "--provider", "copy", "--hook", hook,
                                               "--output", out.path, "--state-dir", state.path, "--json"])
            #expect(ok.status == 0, "\(ok.err)")
            let result = try JSONDecoder().decode(SnapshotResult.self, from: ok.stdout)
            #expect(result.consistency == .applicationConsistent)
            #expect(FileManager.default.fileExists(atPath: result.copies[0]))
            let failed = try run(TestEnv.bulwark, ["snapshot", "create", "--disk", disk, "--provider", "copy", "--hook", bad,
                                                   "--output", out.path], environment: ["BULWARK_STATE_DIR": state.path])
            #expect(failed.status == 1)
            #expect(failed.err.contains("exit status 4"))

            let list = try runChecked(TestEnv.bulwark, ["writers", "list", "--json", "--state-dir", state.path])
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .iso8601
            let records = try decoder.decode([WriterRecord].self, from: list.stdout)
            #expect(records.count == 2)
            #expect(records.first { $0.identity.name == "hook:ok.sh" }?.state == .stable)
            let badRecord = records.first { $0.identity.name == "hook:bad.sh" }
            #expect(badRecord?.state == .failed && badRecord?.lastError == .nonRetryable)
            let table = try runChecked(TestEnv.bulwark, ["writers", "list", "--state-dir", state.path])
            #expect(table.out.contains("hook:bad.sh") && table.out.contains("nonRetryable"))
        }

        @Test func writerIdsAreStable() {
            #expect(GuestAgentWriter(socket: "/run/a.sock").identity.id == GuestAgentWriter(socket: "/run/a.sock").identity.id)
            #expect(GuestAgentWriter(socket: "/run/a.sock").identity.id != GuestAgentWriter(socket: "/run/b.sock").identity.id)
        }
    }
}
