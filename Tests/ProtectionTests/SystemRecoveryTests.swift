import Foundation
import Glibc
import Layout
@testable import Recovery
import SystemPackage
import Targets
import Testing
import TestSupport

/// A "machine" of two raw disk image files, backed up with a policy to a local target (a full, then
/// an incremental after a change on disk 0):
/// - disk 0, 64 MiB, GPT: `root` ext4 (label rootfs, files), `ESP` vfat (label ESPVOL), `empty`;
/// - disk 1, 320 MiB, MBR: one xfs partition (label data, files).
final class MachineBench: @unchecked Sendable {
    let dir: TempDir
    var disk0: String { dir.file("disk0.img") }
    var disk1: String { dir.file("disk1.img") }
    var target: String { dir.file("target") }
    var env: [String: String] { ["BULWARK_STATE_DIR": dir.file("state")] }
    var full = "", incremental = ""
    /// (disk, partition start, size) in bytes of each volume.
    static let root = (0, UInt64(2048 * 512), UInt64(40960 * 512))
    static let esp = (0, UInt64(43008 * 512), UInt64(20480 * 512))
    static let data = (1, UInt64(2048 * 512), UInt64((655360 - 2048) * 512))

    init() throws {
        dir = try TempDir("machine")
        let src = dir.file("rootsrc")
        try FileManager.default.createDirectory(atPath: src + "/etc", withIntermediateDirectories: true)
        try Data("machine hosts\n".utf8).write(to: URL(fileURLWithPath: src + "/etc/hosts"))
        var random = SeededRandom(seed: 17)
        try Data((0..<(3 << 20)).map { _ in UInt8.random(in: 0...255, using: &random) }).write(to: URL(fileURLWithPath: src + "/etc/blob"))
        try runChecked(sys("truncate"), ["-s", "64M", disk0])
        try runChecked(sys("truncate"), ["-s", "320M", disk1])
        try runChecked(sys("sfdisk"), ["-q", disk0], input: Data("label: gpt\nstart=2048, size=40960, type=L, name=\"root\"\nstart=43008, size=20480, type=U, name=\"ESP\"\nstart=63488, size=20480, type=L, name=\"empty\"\n".utf8))
        try runChecked(sys("sfdisk"), ["-q", disk1], input: Data("label: dos\nstart=2048, type=83\n".utf8))
        let part = dir.file("root.part")
        try runChecked(sys("truncate"), ["-s", String(Self.root.2), part])
        try runChecked(sys("mkfs.ext4"), ["-q", "-L", "rootfs", "-d", src, part])
        try runChecked(sys("dd"), ["if=\(part)", "of=\(disk0)", "bs=1M", "seek=\(Self.root.1)", "oflag=seek_bytes", "conv=notrunc", "status=none"])
        try runChecked(sys("mkfs.vfat"), ["-n", "ESPVOL", "--offset", String(Self.esp.1 / 512), disk0, String(Self.esp.2 / 1024)])
        let xfs = dir.file("data.part")
        try runChecked(sys("truncate"), ["-s", String(Self.data.2), xfs])
        try runChecked(sys("mkfs.xfs"), ["-q", "-L", "data", xfs])
        try Self.withMounted(xfs, 0, Self.data.2, readOnly: false, in: dir) { m in
            try Data("xfs file\n".utf8).write(to: URL(fileURLWithPath: m + "/a.txt"))
            try Data((0..<(5 << 20)).map { _ in UInt8.random(in: 0...255, using: &random) }).write(to: URL(fileURLWithPath: m + "/big.bin"))
        }
        try runChecked(sys("dd"), ["if=\(xfs)", "of=\(disk1)", "bs=1M", "seek=\(Self.data.1)", "oflag=seek_bytes", "conv=notrunc", "status=none"])
        try FileManager.default.removeItem(atPath: xfs)
        try FileManager.default.removeItem(atPath: part)
        try writeTestPolicy(dir.file("policy.yaml"), name: "machine", machine: "host1", sources: ["disk: \(disk0)", "disk: \(disk1)"], target: target)
        full = try backup()
        // The change between the points: a new file on the ext4 root (debugfs, never mounted).
        try Data("after the full\n".utf8).write(to: URL(fileURLWithPath: dir.file("new.txt")))
        try runChecked(sys("debugfs"), ["-w", "-R", "write \(dir.file("new.txt")) /etc/new.txt", "\(disk0)?offset=\(Self.root.1)"])
        sleep(1)
        incremental = try backup()
    }

    func backup() throws -> String {
        try backupPoint(policy: dir.file("policy.yaml"), environment: env, machineFolder: target + "/BulwarkBackup/host1")
    }

    /// Runs `body` with the partition at `offset` of `image` mounted (read-only: ext4 `noload`, xfs
    /// `norecovery`, so nothing is written), then unmounts it.
    static func withMounted(_ image: String, _ offset: UInt64, _ size: UInt64, readOnly: Bool = true, in dir: TempDir,
                            _ body: (String) throws -> Void) throws {
        let loop = try runChecked(sys("losetup"), ["-f", "--show"] + (readOnly ? ["-r"] : []) + ["-o", String(offset), "--sizelimit", String(size), image])
            .out.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? run(sys("losetup"), ["-d", loop]) }
        let type = try runChecked(sys("blkid"), ["-p", "-o", "value", "-s", "TYPE", loop]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        let mountpoint = dir.file("mnt-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        let options = readOnly ? (type == "xfs" ? ["-o", "ro,norecovery"] : ["-o", "ro,noload"]) : []
        try runChecked(sys("mount"), options + [loop, mountpoint])
        defer { _ = try? run(sys("umount"), [mountpoint]) }
        try body(mountpoint)
    }

    /// The SHA-256 of every regular file under the volume, by relative path.
    static func files(_ image: String, _ offset: UInt64, _ size: UInt64, in dir: TempDir) throws -> [String: String] {
        var out: [String: String] = [:]
        try withMounted(image, offset, size, in: dir) { m in
            let r = try runChecked(sys("sh"), ["-c", "cd '\(m)' && find . -type f -print0 | sort -z | xargs -0 -r sha256sum"])
            for line in r.out.split(separator: "\n") {
                let parts = line.split(separator: " ", maxSplits: 1)
                out[String(parts[1]).trimmingCharacters(in: .whitespaces)] = String(parts[0])
            }
        }
        return out
    }
}

/// `restore sysrecovery`: a whole machine from a point, onto blank disks (image files here).
@Suite(.serialized) struct SystemRecoveryTests {
    static func prerequisites() throws -> Bool {
        guard try TestEnv.prerequisite(TestEnv.isRoot, "root (loop devices and mounts)") else { return false }
        return try TestEnv.tools("sfdisk", "mkfs.ext4", "mkfs.xfs", "mkfs.vfat", "debugfs", "blkid", "losetup", "e2fsck", "xfs_repair", "fsck.vfat")
    }

    /// A new disk image file of `mib` MiB: sparse zeros, or every byte `fill` (a disk with old data).
    func blank(_ dir: TempDir, _ name: String, _ mib: Int, fill: UInt8? = nil) throws -> String {
        let path = dir.file(name)
        if let fill {
            try Data(repeating: fill, count: mib << 20).write(to: URL(fileURLWithPath: path))
        } else {
            try runChecked(sys("truncate"), ["-s", "\(mib)M", path])
        }
        return path
    }

    /// sfdisk's dump without the lines that name the file or the disk's end.
    func layout(_ image: String) throws -> [String] {
        let dump = try runChecked(sys("sfdisk"), ["--dump", image]).out
        let name = URL(fileURLWithPath: image).lastPathComponent
        return dump.split(separator: "\n").map { $0.replacingOccurrences(of: image, with: "DISK").replacingOccurrences(of: name, with: "DISK") }
            .filter { !$0.hasPrefix("device:") && !$0.hasPrefix("last-lba:") }
    }

    func probe(_ image: String, _ offset: UInt64) throws -> String {
        try runChecked(sys("blkid"), ["-p", "-o", "export", "--offset", String(offset), image]).out
            .split(separator: "\n").filter { $0.hasPrefix("TYPE=") || $0.hasPrefix("UUID=") || $0.hasPrefix("LABEL=") }.sorted().joined(separator: ",")
    }

    @Test func aMachineComesBackFromTheShareOntoBlankDisks() throws {
        guard try Self.prerequisites(), try SambaServer.available() else { return }
        let b = try MachineBench()
        let server = try SambaServer()
        defer { server.stop() }
        let share = server.url(path: "/machines")
        let creds = ["--credentials", server.credentialsFile]
        let replicate = try run(TestEnv.bulwark, ["replicate", "--from", b.target, "--to", share] + creds)
        try #require(replicate.status == 0, "\(replicate.err)")

        // Disk 0 onto a larger disk, disk 1 onto one of its size, from the share, the newest point.
        let r0 = try blank(b.dir, "new0.img", 100), r1 = try blank(b.dir, "new1.img", 320)
        let r = try run(TestEnv.bulwark, ["restore", "sysrecovery", "--target", share, "--version", b.incremental,
                                          "--map", "0=\(r0)", "--map", "1=\(r1)", "--yes", "--json"] + creds)
        try #require(r.status == 0, "\(r.err)")
        let report = try JSONSerialization.jsonObject(with: r.stdout) as! [String: Any]
        let result = report["result"] as! [String: Any]
        let disks = result["disks"] as! [[String: Any]]
        #expect(disks.map { $0["verified"] as? Bool } == [true, true])
        #expect(disks.map { $0["tableFitted"] as? Bool } == [true, false], "the GPT is fitted to the larger disk, the MBR needs nothing")
        let planned = (report["plan"] as! [String: Any])["disks"] as! [[String: Any]]
        #expect(planned[0]["freeAfter"] as? Int == 36 << 20)
        let recorded = try #require(planned[0]["layout"] as? [String: Any])
        #expect(recorded["table"] as? String == "gpt")
        #expect((recorded["partitions"] as? [[String: Any]])?.compactMap { ($0["volume"] as? [String: Any])?["label"] as? String } == ["rootfs", "ESPVOL"])

        // The same layout (the larger disk's extra space free, its table sound), the same volumes.
        #expect(try layout(r0) == layout(b.disk0))
        #expect(try layout(r1) == layout(b.disk1))
        let verify = try run(sys("sfdisk"), ["--verify", r0])
        #expect(verify.status == 0 && verify.out.contains("No errors detected"), "\(verify.out)")
        let lastLBA = try runChecked(sys("sfdisk"), ["--dump", r0]).out.split(separator: "\n").first { $0.hasPrefix("last-lba:") }
        #expect(lastLBA == "last-lba: \((100 << 20) / 512 - 34)")
        for (disk, offset, _) in [MachineBench.root, MachineBench.esp, MachineBench.data] {
            let (source, restored) = disk == 0 ? (b.disk0, r0) : (b.disk1, r1)
            let before = try probe(source, offset)
            #expect(before.contains("UUID=") && before.contains("LABEL="))
            #expect(try probe(restored, offset) == before)
        }
        // Clean filesystems, the same files.
        for (image, volume, checker) in [(r0, MachineBench.root, ["e2fsck", "-fn"]), (r0, MachineBench.esp, ["fsck.vfat", "-n"]), (r1, MachineBench.data, ["xfs_repair", "-n"])] {
            let loop = try runChecked(sys("losetup"), ["-f", "--show", "-r", "-o", String(volume.1), "--sizelimit", String(volume.2), image]).out.trimmingCharacters(in: .whitespacesAndNewlines)
            let fsck = try run(sys(checker[0]), Array(checker.dropFirst()) + [loop])
            _ = try? run(sys("losetup"), ["-d", loop])
            #expect(fsck.status == 0, "\(checker[0]) on \(image) at \(volume.1): \(fsck.out)\(fsck.err)")
        }
        let rootFiles = try MachineBench.files(b.disk0, MachineBench.root.1, MachineBench.root.2, in: b.dir)
        #expect(rootFiles["./etc/new.txt"] != nil && rootFiles["./etc/blob"] != nil)
        #expect(try MachineBench.files(r0, MachineBench.root.1, MachineBench.root.2, in: b.dir) == rootFiles)
        let dataFiles = try MachineBench.files(b.disk1, MachineBench.data.1, MachineBench.data.2, in: b.dir)
        #expect(dataFiles.count == 2)
        #expect(try MachineBench.files(r1, MachineBench.data.1, MachineBench.data.2, in: b.dir) == dataFiles)
        // The vfat volume, byte for byte (this kernel cannot mount vfat).
        let esp = try run(sys("cmp"), ["-n", String(MachineBench.esp.2), "-i", "\(MachineBench.esp.1):\(MachineBench.esp.1)", b.disk0, r0])
        #expect(esp.status == 0, "\(esp.out)")
    }

    @Test func refusalsWriteNothing() throws {
        guard try Self.prerequisites() else { return }
        let b = try MachineBench()
        let point = ["restore", "sysrecovery", "--target", b.target, "--version", b.full]
        func digest(_ path: String) throws -> String { try runChecked(sys("sha256sum"), [path]).out.prefix(64).description }

        // Too small: refused with both sizes, before disk 0 (mapped first, large enough) is touched.
        let ok0 = try blank(b.dir, "ok0.img", 64, fill: 0x5A), small1 = try blank(b.dir, "small1.img", 300, fill: 0x5A)
        let before = try [digest(ok0), digest(small1)]
        let tooSmall = try run(TestEnv.bulwark, point + ["--map", "0=\(ok0)", "--map", "1=\(small1)", "--yes"])
        #expect(tooSmall.status == 8, "\(tooSmall.err)")
        #expect(tooSmall.err.contains("disk 1 needs \(320 << 20) bytes") && tooSmall.err.contains("holds \(300 << 20)") && tooSmall.err.contains("nothing was written"), "\(tooSmall.err)")
        #expect(try [digest(ok0), digest(small1)] == before)

        // --dry-run: the plan, and nothing written.
        let other1 = try blank(b.dir, "other1.img", 320, fill: 0x5A)
        let otherBefore = try digest(other1)
        let dry = try run(TestEnv.bulwark, point + ["--map", "0=\(ok0)", "--map", "1=\(other1)", "--dry-run"])
        #expect(dry.status == 0, "\(dry.err)")
        #expect(dry.out.contains("disk 0 (\(b.disk0), 64.0 MiB, GPT) -> \(ok0)") && dry.out.contains("ext4 label \"rootfs\"") && dry.out.contains("nothing was written"), "\(dry.out)")
        #expect(try [digest(ok0), digest(other1)] == [before[0], otherBefore])
        let dryJSON = try run(TestEnv.bulwark, point + ["--map", "0=\(ok0)", "--map", "1=\(other1)", "--dry-run", "--json"])
        let plan = try #require((try JSONSerialization.jsonObject(with: dryJSON.stdout) as? [String: Any])?["plan"] as? [String: Any])
        #expect((plan["disks"] as? [[String: Any]])?.map { $0["destinationSize"] as? Int } == [64 << 20, 320 << 20])
        #expect(try digest(ok0) == before[0])

        // --exclude-disk: disk 1's would-be destination keeps its bytes; disk 0 is restored.
        let excluded = try run(TestEnv.bulwark, point + ["--map", "0=\(ok0)", "--exclude-disk", "1", "--yes"])
        #expect(excluded.status == 0, "\(excluded.err)")
        #expect(excluded.out.contains("disk 1 (\(b.disk1), 320.0 MiB, MBR): excluded"), "\(excluded.out)")
        #expect(try digest(other1) == otherBefore)
        #expect(try digest(ok0) != before[0])
        #expect(try probe(ok0, MachineBench.root.1) == probe(b.disk0, MachineBench.root.1))
        #expect(try MachineBench.files(ok0, MachineBench.root.1, MachineBench.root.2, in: b.dir)["./etc/new.txt"] == nil, "the full, from before the change")

        // Without --yes and without a terminal: refused, nothing written.
        let fresh = try blank(b.dir, "fresh0.img", 64, fill: 0x11)
        let freshBefore = try digest(fresh)
        let unconfirmed = try run(TestEnv.bulwark, point + ["--map", "0=\(fresh)", "--exclude-disk", "1"])
        #expect(unconfirmed.status != 0 && unconfirmed.err.contains("--yes"), "\(unconfirmed.err)")
        #expect(try digest(fresh) == freshBefore)

        // A destination inside the backup target, or attached to a loop device, or given twice.
        let inside = b.target + "/disk.img"
        try runChecked(sys("truncate"), ["-s", "64M", inside])
        let intoTarget = try run(TestEnv.bulwark, point + ["--map", "0=\(inside)", "--exclude-disk", "1", "--yes"])
        #expect(intoTarget.status == 8 && intoTarget.err.contains("inside the backup target"), "\(intoTarget.err)")
        let loop = try runChecked(sys("losetup"), ["-f", "--show", fresh]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        let attached = try run(TestEnv.bulwark, point + ["--map", "0=\(fresh)", "--exclude-disk", "1", "--yes"])
        _ = try? run(sys("losetup"), ["-d", loop])
        #expect(attached.status == 8 && attached.err.contains("attached to \(loop)"), "\(attached.err)")
        let twice = try run(TestEnv.bulwark, point + ["--map", "0=\(other1)", "--map", "1=\(other1)", "--yes"])
        #expect(twice.status != 0 && twice.err.contains("both be written to"), "\(twice.err)")
        let unknown = try run(TestEnv.bulwark, point + ["--map", "7=\(other1)", "--yes"])
        #expect(unknown.status != 0 && unknown.err.contains("has no disk 7"), "\(unknown.err)")
        #expect(try digest(fresh) == freshBefore && digest(other1) == otherBefore)
    }

    /// A system recovery killed at any moment leaves the point untouched, and running it again
    /// completes: the disks come out as a run that was never interrupted makes them.
    @Test func aKilledRecoveryCompletesWhenRunAgain() throws {
        guard try Self.prerequisites() else { return }
        let b = try MachineBench()
        let r0 = try blank(b.dir, "k0.img", 100), r1 = try blank(b.dir, "k1.img", 320)
        let args = ["restore", "sysrecovery", "--target", b.target, "--version", b.incremental, "--map", "0=\(r0)", "--map", "1=\(r1)", "--yes"]
        let (duration, first) = try KilledRun.duration(args)
        try #require(first.status == 0, "\(first.err)")
        func digest(_ path: String) throws -> String { String(try runChecked(sys("sha256sum"), [path]).out.prefix(64)) }
        let good = try [digest(r0), digest(r1)]
        var random = SeededRandom(seed: 23)
        var kills = 0
        for round in 0..<5 {
            // Old bytes on the destinations first, so a half-done restore is visible.
            for path in [r0, r1] { try runChecked(sys("dd"), ["if=/dev/urandom", "of=\(path)", "bs=1M", "count=8", "conv=notrunc", "status=none"]) }
            let outcome = try KilledRun.run(args, after: UInt32.random(in: duration / 20...max(duration / 20 + 1, duration * 9 / 10), using: &random))
            if outcome.killed { kills += 1 } else { #expect(outcome.status == 0, "round \(round): \(outcome.err)") }
            let again = try run(TestEnv.bulwark, args)
            #expect(again.status == 0, "round \(round): \(again.err)")
            #expect(try [digest(r0), digest(r1)] == good, "round \(round): the re-run makes the same disks")
        }
        #expect(kills > 0)
        #expect(try run(TestEnv.bulwark, ["verify", "--target", b.target]).status == 0, "the point is untouched")
    }

    /// `restore disk --to /dev/...`: written in place and verified; a device with a mounted
    /// filesystem is refused before anything is written.
    @Test func aDiskIsRestoredOntoABlockDevice() throws {
        guard try Self.prerequisites() else { return }
        let b = try MachineBench()
        let backing = try blank(b.dir, "device1.img", 320, fill: 0x77)
        let loop = try runChecked(sys("losetup"), ["-f", "--show", backing]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? run(sys("losetup"), ["-d", loop]) }
        let r = try run(TestEnv.bulwark, ["restore", "disk", "--target", b.target, "--version", b.incremental, "--disk", "1", "--to", loop, "--json"])
        #expect(r.status == 0, "\(r.err)")
        #expect((try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])?["verified"] as? Bool == true)
        _ = try? run(sys("sync"), [])
        #expect(try run(sys("cmp"), [loop, b.disk1]).status == 0, "the device holds the backed-up disk")

        // A device with a mounted filesystem.
        let busy = try blank(b.dir, "busy.img", 64)
        try runChecked(sys("mkfs.ext4"), ["-q", busy])
        let busyLoop = try runChecked(sys("losetup"), ["-f", "--show", busy]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? run(sys("losetup"), ["-d", busyLoop]) }
        let mountpoint = b.dir.file("busy-mnt")
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        try runChecked(sys("mount"), ["-o", "ro,noload", busyLoop, mountpoint])  // read-only: the file's bytes stay as they are
        defer { _ = try? run(sys("umount"), [mountpoint]) }
        let before = try runChecked(sys("sha256sum"), [busy]).out
        #expect(!before.isEmpty)
        let refused = try run(TestEnv.bulwark, ["restore", "disk", "--target", b.target, "--version", b.incremental, "--disk", "0", "--to", busyLoop])
        #expect(refused.status == 8 && refused.err.contains("is mounted on \(mountpoint)"), "\(refused.err)")
        _ = try run(sys("umount"), [mountpoint])
        #expect(try runChecked(sys("sha256sum"), [busy]).out == before)

        // The disk that holds the backup target is never a destination.
        let holder = try blank(b.dir, "holder.img", 200)
        try runChecked(sys("mkfs.ext4"), ["-q", holder])
        let holderLoop = try runChecked(sys("losetup"), ["-f", "--show", holder]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? run(sys("losetup"), ["-d", holderLoop]) }
        let holderMount = b.dir.file("holder-mnt")
        try FileManager.default.createDirectory(atPath: holderMount, withIntermediateDirectories: true)
        try runChecked(sys("mount"), [holderLoop, holderMount])
        defer { _ = try? run(sys("umount"), [holderMount]) }
        let rep = try run(TestEnv.bulwark, ["replicate", "--from", b.target, "--to", holderMount + "/target"])
        try #require(rep.status == 0, "\(rep.err)")
        let onItself = try run(TestEnv.bulwark, ["restore", "sysrecovery", "--target", holderMount + "/target", "--version", b.full,
                                                 "--map", "0=\(holderLoop)", "--exclude-disk", "1", "--yes"])
        #expect(onItself.status == 8 && onItself.err.contains("it holds the backup target \(holderMount)/target"), "\(onItself.err)")
    }

    /// Without --map: the recorded serial, then WWN, then the one disk of exactly the size; several
    /// of that size, or none, is an error that lists the disks.
    @Test func disksAreMatchedBySerialThenWWNThenAUniqueSize() throws {
        let dir = try TempDir("match")
        func disk(_ index: Int, size: UInt64, serial: String? = nil, wwn: String? = nil) -> ManifestDisk {
            ManifestDisk(index: index, source: "/dev/sd\(index)", virtualSize: size, logicalSectorSize: 512, physicalSectorSize: 512, image: "disk\(index).vhdx",
                         blockSize: 4 << 20, imageSize: 0, imageSHA256: "", parentImage: nil, chunkSize: 4 << 20, chunks: [], changedBytes: 0,
                         changeDetection: "full", layout: DiskLayout(table: "gpt", tableID: nil, size: size, logicalSectorSize: 512, physicalSectorSize: 512,
                                                                     serial: serial, wwn: wwn, partitions: []))
        }
        let host = [HostDisk(path: dir.file("a"), size: 64 << 20, serial: "S-A", wwn: "0x5000a"),
                    HostDisk(path: dir.file("b"), size: 64 << 20, serial: "S-B"),
                    HostDisk(path: dir.file("c"), size: 128 << 20)]
        #expect(try SystemRecovery.match(disk(0, size: 64 << 20, serial: "S-B"), among: host) == (FilePath(dir.file("b")), "serial"))
        #expect(try SystemRecovery.match(disk(0, size: 64 << 20, serial: "gone", wwn: "0x5000a"), among: host) == (FilePath(dir.file("a")), "wwn"))
        #expect(try SystemRecovery.match(disk(0, size: 128 << 20, serial: "gone"), among: host) == (FilePath(dir.file("c")), "size"))
        #expect(throws: RecoveryError.self) { try SystemRecovery.match(disk(0, size: 64 << 20), among: host) }
        do {
            _ = try SystemRecovery.match(disk(1, size: 64 << 20), among: host)
        } catch let RecoveryError.unmatched(index, reason) {
            #expect(index == 1 && reason.contains("2 disks have its size") && reason.contains(dir.file("c")), "\(reason)")
        }
        do {
            _ = try SystemRecovery.match(disk(2, size: 32 << 20, serial: "X"), among: host)
        } catch let RecoveryError.unmatched(_, reason) {
            #expect(reason.contains("no disk has its identity (serial X, 33554432 bytes)"), "\(reason)")
        }
    }
}
