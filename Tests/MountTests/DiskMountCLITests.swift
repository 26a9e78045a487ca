import Foundation
import Glibc
import Mount
import Storage
import SystemPackage
import Testing
import TestSupport

/// `bulwark disk mount` and `bulwark umount`, as a user runs them.
@Suite(.serialized) struct DiskMountCLITests {
    /// The PIDs of processes whose command line contains `text` (the background servers).
    func servers(_ text: String) -> [Int32] {
        let ids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return ids.compactMap { Int32($0) }.filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let line = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            return line.contains("disk mount") && line.contains(text)
        }
    }

    func waitUntil(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }

    @Test func mountInBackgroundThenUmount() throws {
        guard try fusePrerequisites() else { return }
        let chain = try MountChain()
        let mnt = chain.dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        let r = try run(TestEnv.bulwark, ["disk", "mount", chain.leaf, mnt])
        defer { _ = try? run(TestEnv.bulwark, ["umount", "--lazy", mnt]) }
        // The command returned (its pipes closed by the background server) with the folder usable.
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.contains("Mounted \(chain.leaf) on \(mnt)"))
        #expect(r.out.contains("part1  30.0 MiB at offset 1048576"))
        #expect(mounted(mnt))
        #expect(servers(chain.leaf).count == 1)
        #expect(try sameBytes(mnt + "/disk", chain.expected))
        try withLoopMount(mnt + "/part1", in: chain.dir) { fs in
            for (name, data) in chain.files {
                #expect(FileManager.default.contents(atPath: fs + "/" + name) == data, "\(name)")
            }
            // Busy while the partition is mounted: refused with status 5, and still mounted.
            let busy = try run(TestEnv.bulwark, ["umount", mnt])
            #expect(busy.status == 5)
            #expect(busy.err.contains("in use"))
            #expect(mounted(mnt))
        }
        #expect(writeRefused(mnt + "/disk"))
        #expect(writeRefused(mnt + "/part1"))

        let u = try run(TestEnv.bulwark, ["umount", mnt])
        #expect(u.status == 0, "\(u.err)")
        #expect(!mounted(mnt))
        #expect(waitUntil(5) { servers(chain.leaf).isEmpty }, "the background server exits")
        // Unmounting again: nothing is mounted there (status 3).
        let again = try run(TestEnv.bulwark, ["umount", mnt])
        #expect(again.status == 3)
        #expect(again.err.contains("nothing is mounted there"))
    }

    @Test func foregroundEndsOnSIGTERM() throws {
        guard try fusePrerequisites() else { return }
        let chain = try MountChain()
        let mnt = chain.dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
        p.arguments = ["disk", "mount", chain.leaf, mnt, "--foreground"]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { _ = try? run(TestEnv.bulwark, ["umount", "--lazy", mnt]); p.waitUntilExit() } }
        #expect(waitUntil(10) { mounted(mnt) })
        #expect(try sameBytes(mnt + "/disk", chain.expected))
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(!mounted(mnt))
    }

    /// A server killed with SIGKILL leaves a dead mount (ENOTCONN): a new mount there is refused
    /// naming it, and `bulwark umount` clears it.
    @Test func deadServerMountIsClearedByUmount() throws {
        guard try fusePrerequisites() else { return }
        let dir = try TempDir("bulwark-mount-dead")
        let image = dir.file("d.vhdx")
        try runChecked(TestEnv.bulwark, ["disk", "create", image, "--size", "8M"])
        let mnt = dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        try runChecked(TestEnv.bulwark, ["disk", "mount", image, mnt])
        defer { _ = try? run(TestEnv.bulwark, ["umount", "--lazy", mnt]) }
        let pids = servers(image)
        #expect(pids.count == 1)
        for pid in pids { kill(pid, SIGKILL) }
        #expect(waitUntil(5) { servers(image).isEmpty })
        #expect(mounted(mnt))
        let again = try run(TestEnv.bulwark, ["disk", "mount", image, mnt])
        #expect(again.status == 8)
        #expect(again.err.contains("whose server is gone"))
        #expect(again.err.contains("bulwark umount \(mnt)"))
        let u = try run(TestEnv.bulwark, ["umount", mnt])
        #expect(u.status == 0, "\(u.err)")
        #expect(!mounted(mnt))
    }

    @Test func refusals() throws {
        guard try fusePrerequisites() else { return }
        let dir = try TempDir("bulwark-mount-cli")
        let image = dir.file("d.vhdx")
        try runChecked(TestEnv.bulwark, ["disk", "create", image, "--size", "8M"])

        // A missing parent folder: a clear error, status 3, no mount and no server left.
        let missing = dir.file("absent/mnt")
        let r = try run(TestEnv.bulwark, ["disk", "mount", image, missing])
        #expect(r.status == 3)
        #expect(r.err.contains("\(missing): mount folder does not exist"))
        // (Other suites mount their own volumes meanwhile: only this image's mounts are looked for.)
        #expect(!DiskMount.mountTable().contains { $0.source.contains(image) || $0.mountpoint.hasPrefix(dir.path) })
        #expect(servers(image).isEmpty)

        // A missing image: the engine's not-found (status 3), no mount.
        let mnt = dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        let noImage = try run(TestEnv.bulwark, ["disk", "mount", dir.file("nope.vhdx"), mnt])
        #expect(noImage.status == 3)
        #expect(noImage.err.contains("nope.vhdx"))
        #expect(!mounted(mnt))

        // A file instead of a folder: a usage error.
        let notDir = try run(TestEnv.bulwark, ["disk", "mount", image, image])
        #expect(notDir.status == 64)
        #expect(notDir.err.contains("not a folder"))

        // umount of something that is not a Bulwark mount: refused (status 8), left alone.
        let proc = try run(TestEnv.bulwark, ["umount", "/proc"])
        #expect(proc.status == 8)
        #expect(proc.err.contains("/proc: is a proc mount, not a Bulwark disk mount"))
        #expect(mounted("/proc"))
        // umount of a folder with nothing mounted: status 3 with a hint.
        let nothing = try run(TestEnv.bulwark, ["umount", mnt])
        #expect(nothing.status == 3)
        #expect(nothing.err.contains("hint:"))
    }
}
