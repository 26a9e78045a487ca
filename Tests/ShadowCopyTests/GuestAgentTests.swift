import Foundation
import Glibc
import ShadowCopy
import Testing
import TestSupport
import VirtualDisk

/// All snapshot tests run one at a time: they mount, freeze and time holds.
@Suite(.serialized) struct ShadowCopyTests {}

extension ShadowCopyTests {
    @Suite struct GuestAgent {
        /// The writer process: files with known content, written to a temporary name and renamed,
        /// and after each one a line "index wall-clock-time" in a log outside the volume.
        static let writerScript = """
        import os, sys, time
        mnt, log = sys.argv[1], sys.argv[2]
        i = 0
        with open(log, "w", buffering=1) as out:
            while True:
                i += 1
                data = ("%08d" % i).encode() * 2048
                p = "%s/f%06d" % (mnt, i)
                with open(p + ".tmp", "wb") as f:
                    f.write(data)
                os.rename(p + ".tmp", p)
                out.write("%d %.6f\\n" % (i, time.time()))
                time.sleep(0.005)
        """

        @Test func qgaFreezeCopiesAConsistentGuestDisk() async throws {
            guard try realPrerequisites("qemu-ga", "fsck.ext4", "fsfreeze", "/usr/bin/python3") else { return }
            let volume = try LoopVolume("ext4", size: "64M")
            defer { volume.cleanup() }
            let agent = try QemuAgent()
            defer { agent.stop() }
            let work = try TempDir("bulwark-qga-work")
            let state = try TempDir("bulwark-state")
            try FileManager.default.createDirectory(atPath: work.file("out"), withIntermediateDirectories: true)
            try Self.writerScript.write(toFile: work.file("writer.py"), atomically: true, encoding: .utf8)
            let writer = Process()
            writer.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            writer.arguments = [work.file("writer.py"), volume.mountpoint, work.file("writer.log")]
            try writer.run()
            defer { stopProcess(writer) }
            try await Task.sleep(for: .milliseconds(400))

            let pause = 0.8
            let before = Date().timeIntervalSince1970
            let result: SnapshotResult
            do {
                result = try await coordinator(state).snapshot(SnapshotRequest(
                    writers: [GuestAgentWriter(socket: agent.socket, mountpoints: [volume.mountpoint])],
                    provider: CopyProvider(), disks: [volume.image], outputDirectory: work.file("out"),
                    pauseWhileFrozen: pause))
            } catch {
                _ = try? run(sys("fsfreeze"), ["-u", volume.mountpoint])
                throw error
            }
            let after = Date().timeIntervalSince1970
            #expect(try agent.status() == "thawed")
            try await Task.sleep(for: .milliseconds(300))
            stopProcess(writer)

            #expect(result.consistency == .applicationConsistent)
            #expect(result.writers.first?.froze == true)
            #expect(result.writers.first?.state == .stable)
            #expect(result.freezeHoldSeconds >= pause && result.freezeHoldSeconds < pause + 1)
            let copy = try #require(result.copies.first)
            #expect(copy.hasPrefix(work.file("out")))

            // The copy is a clean filesystem and every file in it is complete.
            let fsck = try run(sys("fsck.ext4"), ["-n", "-f", copy])
            #expect(fsck.status == 0, "fsck: \(fsck.out) \(fsck.err)")
            let check = try TempDir("bulwark-copy-mnt")
            try runChecked(sys("mount"), ["-o", "loop,ro", copy, check.path])
            defer { _ = try? run(sys("umount"), [check.path]) }
            let names = try FileManager.default.contentsOfDirectory(atPath: check.path).filter { $0.hasPrefix("f") && !$0.hasSuffix(".tmp") }
            #expect(names.count > 10)
            for name in names {
                let index = Int(name.dropFirst())!
                let content = try Data(contentsOf: URL(fileURLWithPath: check.path + "/" + name))
                #expect(content == Data(String(format: "%08d", index).utf8.map { $0 }).repeated(2048), "file \(name) is incomplete")
            }

            // The writer was blocked during the hold only: its longest pause between two files is
            // about the hold, inside the snapshot's window; elsewhere it wrote steadily.
            let lines = try String(contentsOfFile: work.file("writer.log"), encoding: .utf8).split(separator: "\n")
            let times = lines.compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }
            #expect(times.count > names.count)
            var gaps: [(start: Double, length: Double)] = []
            for (a, b) in zip(times, times.dropFirst()) { gaps.append((a, b - a)) }
            let longest = try #require(gaps.max { $0.length < $1.length })
            #expect(longest.length >= result.freezeHoldSeconds * 0.8)
            #expect(longest.length <= result.freezeHoldSeconds + 0.5)
            #expect(longest.start >= before - 0.1 && longest.start + longest.length <= after + 0.5)
            let others = gaps.filter { $0.start != longest.start }.map(\.length).max() ?? 0
            #expect(others < longest.length / 2, "the writer also stalled outside the hold (\(others) s)")
        }

        @Test func alreadyFrozenAgentIsThawedFirstAndSaysSo() async throws {
            guard try realPrerequisites("qemu-ga", "fsfreeze") else { return }
            let volume = try LoopVolume("ext4", size: "32M")
            defer { volume.cleanup() }
            let agent = try QemuAgent()
            defer { agent.stop() }
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            // A freeze left behind by someone else.
            let c = try GuestAgentClient(socket: agent.socket, timeout: 3)
            try c.freeze(mountpoints: [volume.mountpoint])
            c.close()
            #expect(try agent.status() == "frozen")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 1 << 20)
            let result = try await coordinator(state).snapshot(SnapshotRequest(
                writers: [GuestAgentWriter(socket: agent.socket, mountpoints: [volume.mountpoint])],
                provider: CopyProvider(), disks: [disk], outputDirectory: out.path))
            #expect(result.writers[0].notes.contains { $0.contains("already frozen") })
            #expect(result.consistency == .applicationConsistent)
            #expect(try agent.status() == "thawed")
            #expect(volume.writeCompletes(within: 2))
        }

        @Test func sigkillOfTheCoordinatorWhileFrozenIsThawedByTheWatchdog() async throws {
            guard try realPrerequisites("qemu-ga", "fsfreeze") else { return }
            let volume = try LoopVolume("ext4", size: "32M")
            defer { volume.cleanup() }
            let agent = try QemuAgent()
            defer { agent.stop() }
            let state = try TempDir("bulwark-state"), out = try TempDir("bulwark-out")
            let disk = out.file("disk.raw")
            _ = try makeDisk(disk, size: 4 << 20)
            let hook = out.file("hook.sh")
            try makeScript(hook, "echo \"$1 $BULWARK_SNAPSHOT_ID\" >> '\(out.file("hook.log"))'")
            let cli = Process()
            cli.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
            cli.arguments = ["snapshot", "create", "--disk", disk, "--provider", "copy",
                             "--qga", "\(agent.socket):\(volume.mountpoint)", "--hook", hook,
                             "--timeout", "30s", "--output", out.path, "--state-dir", state.path,
                             "--pause-while-frozen", "25"]
            cli.standardOutput = FileHandle.nullDevice
            cli.standardError = FileHandle.nullDevice
            try cli.run()
            defer { if cli.isRunning { kill(cli.processIdentifier, SIGKILL) } }
            // The hook is the last writer frozen: once it ran, everything is frozen.
            var frozen = false
            for _ in 0..<500 {
                if let log = try? String(contentsOfFile: out.file("hook.log"), encoding: .utf8), log.contains("freeze") { frozen = true; break }
                usleep(10_000)
            }
            #expect(frozen)
            #expect(!volume.writeCompletes(within: 0.3, name: "blocked"))
            kill(cli.processIdentifier, SIGKILL)
            let killed = Date()
            cli.waitUntilExit()
            var status = ""
            while Date().timeIntervalSince(killed) < 3 {
                if let s = try? agent.status(), s == "thawed" { status = s; break }
                usleep(20_000)
            }
            let thawAfter = Date().timeIntervalSince(killed)
            #expect(status == "thawed")
            #expect(thawAfter < 1.0, "thawed \(thawAfter) s after the kill")
            #expect(volume.writeCompletes(within: 2))
            // The watchdog also ran the hook's thaw and recorded the writers as failed (retryable).
            for _ in 0..<100 {
                if let log = try? String(contentsOfFile: out.file("hook.log"), encoding: .utf8), log.contains("thaw") { break }
                usleep(20_000)
            }
            #expect(try String(contentsOfFile: out.file("hook.log"), encoding: .utf8).contains("thaw"))
            var records: [WriterRecord] = []
            for _ in 0..<100 {
                records = try WriterStateStore(directory: state.path).load()
                if records.count == 2, records.allSatisfy({ $0.state == .failed }) { break }
                usleep(20_000)
            }
            #expect(records.count == 2)
            #expect(records.allSatisfy { $0.state == .failed && $0.lastError == .retryable })

            // The next snapshot resets the stuck writers and says so.
            let next = try await coordinator(state).snapshot(SnapshotRequest(
                writers: [GuestAgentWriter(socket: agent.socket, mountpoints: [volume.mountpoint])],
                provider: CopyProvider(), disks: [disk], outputDirectory: out.path))
            #expect(next.writers[0].wasReset)
            #expect(next.writers[0].resetFrom?.contains("failed (retryable") == true)
            #expect(next.writers[0].state == .stable)
            #expect(try WriterStateStore(directory: state.path).load().first { $0.identity.kind == "qga" }?.state == .stable)
        }
    }
}

extension Data {
    func repeated(_ n: Int) -> Data {
        var d = Data(capacity: count * n)
        for _ in 0..<n { d.append(self) }
        return d
    }
}
