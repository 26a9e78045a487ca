import Foundation
import Glibc
import Testing
import TestSupport

/// getxattr(2) (Glibc does not export it to Swift).
@_silgen_name("getxattr") func xattrGet(_ path: UnsafePointer<CChar>, _ name: UnsafePointer<CChar>, _ value: UnsafeMutableRawPointer?, _ size: Int) -> Int

/// `bulwark mount --target`, `bulwark files list` and `bulwark restore files` on real points: a raw
/// disk with a GPT and an ext4 partition, backed up full, changed with debugfs, backed up again.
@Suite(.serialized) struct PointFilesCLITests {
    /// Nothing of a files command is left behind: no mount of its temporary folders, no folder.
    func leftovers() -> [String] {
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        let temp = ((try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? []).filter { $0.hasPrefix("bulwark-files.") }
        return mounts.split(separator: "\n").filter { $0.contains("bulwark-files.") }.map(String.init) + temp
    }

    func prerequisites() throws -> Bool {
        guard try fusePrerequisites() else { return false }
        return try TestEnv.tools("debugfs", "blkid", "cp")
    }

    @Test func mountFilesListAndRestoreFiles() throws {
        guard try prerequisites() else { return }
        #expect(leftovers().isEmpty, "\(leftovers())")
        let b = try PointBench()

        // mount --target: the incremental's disk, byte for byte what `restore disk` writes.
        let mnt = b.dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        let m = try b.bulwark(["mount"] + b.point(b.incremental) + [mnt])
        #expect(m.status == 0, "\(m.err)")
        #expect(mounted(mnt))
        let restored = b.dir.file("restored.img")
        let r = try b.bulwark(["restore", "disk"] + b.point(b.incremental) + ["--to", restored])
        #expect(r.status == 0, "\(r.err)")
        #expect(try sameBytes(mnt + "/disk", restored))
        #expect(try sameBytes(mnt + "/disk", b.disk))
        let u = try b.bulwark(["umount", mnt])
        #expect(u.status == 0, "\(u.err)")
        #expect(!mounted(mnt))

        // files list: the changed tree in the incremental, the old one in the full point.
        struct Entry: Decodable { var path: String; var type: String; var size: UInt64; var mode: String; var mtime: String; var target: String? }
        struct Listing: Decodable { var entries: [Entry] }
        func list(_ v: String) throws -> [String: Entry] {
            let l = try b.bulwark(["files", "list"] + b.point(v) + ["--json"])
            #expect(l.status == 0, "\(l.err)")
            #expect(leftovers().isEmpty, "\(leftovers())")
            let listing = try JSONDecoder().decode(Listing.self, from: l.stdout)
            return Dictionary(listing.entries.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        }
        let now = try list(b.incremental), before = try list(b.full)
        #expect(now["/etc/new.txt"]?.size == 4)
        #expect(now["/data/deep/big.txt"] == nil)
        #expect(before["/etc/new.txt"] == nil)
        #expect(before["/data/deep/big.txt"]?.size == 18000)
        #expect(now["/etc/hosts"]?.mode == "0640")
        #expect(now["/etc/hosts"]?.mtime == "2020-01-02T03:04:05Z")
        #expect(now["/data/link"]?.type == "symlink" && now["/data/link"]?.target == "../etc/hosts")
        #expect(now["/data/deep"]?.type == "directory" && now["/data/deep"]?.mode == "0750")
        let sub = try b.bulwark(["files", "list"] + b.point(b.incremental) + ["--path", "/etc"])
        #expect(sub.status == 0 && sub.out.contains("/etc/new.txt") && !sub.out.contains("/data"), "\(sub.out)\(sub.err)")

        // restore files: one file from the incremental.
        let one = b.dir.file("one")
        let f = try b.bulwark(["restore", "files"] + b.point(b.incremental) + ["--path", "/etc/hosts", "--to", one])
        #expect(f.status == 0, "\(f.err)")
        #expect(leftovers().isEmpty, "\(leftovers())")
        #expect(try FileManager.default.contentsOfDirectory(atPath: one) == ["etc"])
        #expect(FileManager.default.contents(atPath: one + "/etc/hosts") == Data("hosts file\n".utf8))
        var st = stat()
        #expect(lstat(one + "/etc/hosts", &st) == 0)
        #expect(st.st_mode & 0o7777 == 0o640 && st.st_uid == 12 && st.st_gid == 34)
        #expect(st.st_mtim.tv_sec == 1_577_934_245)
        var value = [UInt8](repeating: 0, count: 64)
        let n = xattrGet(one + "/etc/hosts", "user.note", &value, value.count)
        #expect(n == 5 && Array(value[0..<max(0, n)]) == Array("hello".utf8), "the xattr comes back")

        // A whole tree from the full point: contents, modes, links as links.
        let tree = b.dir.file("tree")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        let t = try b.bulwark(["restore", "files"] + b.point(b.full) + ["--path", "/data", "--path", "etc/hosts", "--to", tree, "--json"])
        #expect(t.status == 0, "\(t.err)")
        #expect(leftovers().isEmpty, "\(leftovers())")
        #expect(FileManager.default.contents(atPath: tree + "/data/deep/big.txt") == Data(String(repeating: "big line\n", count: 2000).utf8))
        #expect(!FileManager.default.fileExists(atPath: tree + "/etc/new.txt"))
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: tree + "/data/link") == "../etc/hosts")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: tree + "/data/abs") == "/etc/passwd")
        #expect(lstat(tree + "/data/link", &st) == 0 && st.st_mtim.tv_sec == 1_577_934_245)
        #expect(lstat(tree + "/data/deep", &st) == 0 && st.st_mode & 0o7777 == 0o750)
        #expect(lstat(tree + "/data/run.sh", &st) == 0 && st.st_mode & 0o7777 == 0o4755)
        // The same tree from the incremental: the removed file is gone, the new one is there.
        let tree2 = b.dir.file("tree2")
        let t2 = try b.bulwark(["restore", "files"] + b.point(b.incremental) + ["--path", "/", "--to", tree2])
        #expect(t2.status == 0, "\(t2.err)")
        #expect(FileManager.default.contents(atPath: tree2 + "/etc/new.txt") == Data("new\n".utf8))
        #expect(!FileManager.default.fileExists(atPath: tree2 + "/data/deep/big.txt"))

        // A missing path: status 3, naming the volume; nothing created.
        let missing = b.dir.file("missing")
        let x = try b.bulwark(["restore", "files"] + b.point(b.full) + ["--path", "/etc/new.txt", "--to", missing])
        #expect(x.status == 3)
        #expect(x.err.contains("/etc/new.txt") && x.err.contains("volume 1"), "\(x.err)")
        #expect(!FileManager.default.fileExists(atPath: missing))
        let xl = try b.bulwark(["files", "list"] + b.point(b.full) + ["--path", "/nope"])
        #expect(xl.status == 3)
        // Never overwrite: a non-empty --to is refused and left alone.
        let again = try b.bulwark(["restore", "files"] + b.point(b.full) + ["--path", "/etc/hosts", "--to", one])
        #expect(again.status == 8, "\(again.err)")
        #expect(FileManager.default.contents(atPath: one + "/etc/hosts") == Data("hosts file\n".utf8))
        // Nothing may leave the volume: `..` and paths through symbolic links are refused.
        for p in ["../etc", "/data/link/x"] {
            let bad = try b.bulwark(["restore", "files"] + b.point(b.full) + ["--path", p, "--to", b.dir.file("bad")])
            #expect(bad.status == 64, "\(p): \(bad.err)")
        }
        #expect(!FileManager.default.fileExists(atPath: b.dir.file("bad")))
        #expect(leftovers().isEmpty, "\(leftovers())")

        // Two machines on the target: --machine is needed, and the error lists them.
        try FileManager.default.createDirectory(atPath: b.target + "/BulwarkBackup/other", withIntermediateDirectories: true)
        let which = try b.bulwark(["files", "list"] + b.point(b.full))
        #expect(which.status == 3 && which.err.contains("guest") && which.err.contains("other"), "\(which.err)")
        let named = try b.bulwark(["files", "list"] + b.point(b.full) + ["--machine", "guest", "--path", "/etc/hosts"])
        #expect(named.status == 0 && named.out.contains("/etc/hosts"), "\(named.err)")
        #expect(leftovers().isEmpty, "\(leftovers())")
    }

    /// SIGTERM at any step (starting, opening the target, mounting, copying): the command exits with
    /// 143 (or dies of it before it made anything), or finishes, and leaves nothing mounted and no temporary folder.
    @Test func interruptedAtAnyStepLeavesNothing() throws {
        guard try prerequisites() else { return }
        let b = try PointBench()
        var interrupted = 0
        for (i, delay) in [0.0, 0.03, 0.06, 0.09, 0.11, 0.13, 0.15, 0.18, 0.22, 0.3, 0.5].enumerated() {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: TestEnv.bulwark)
            p.arguments = ["restore", "files"] + b.point(b.full) + ["--path", "/", "--to", b.dir.file("kill\(i)")]
            p.environment = ProcessInfo.processInfo.environment.merging(b.env) { $1 }
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            usleep(UInt32(delay * 1_000_000))
            kill(p.processIdentifier, SIGTERM)
            p.waitUntilExit()
            // 15: killed by the signal while starting, before it made anything.
            #expect([0, 143, 15].contains(p.terminationStatus), "after \(delay) s: \(p.terminationStatus)")
            if p.terminationStatus == 143 { interrupted += 1 }
            #expect(leftovers().isEmpty, "after \(delay) s: \(leftovers())")
        }
        #expect(interrupted > 0)
    }

    /// Two ext4 partitions: without --volume the one where the path exists, else an error listing
    /// the volumes with their sizes and filesystems.
    @Test func choosingTheVolume() throws {
        guard try prerequisites() else { return }
        let dir = try TempDir("point-volumes")
        let fm = FileManager.default
        let disk = dir.file("disk.img")
        fm.createFile(atPath: disk, contents: nil)
        try runChecked(sys("truncate"), ["-s", "40M", disk])
        try runChecked(sys("sfdisk"), ["-q", disk], input: Data("label: dos\nstart=2048, size=30000, type=83\nstart=34816, size=30000, type=83\n".utf8))
        for (i, name) in ["one.txt", "two.txt"].enumerated() {
            let src = dir.file("src\(i)")
            try fm.createDirectory(atPath: src, withIntermediateDirectories: true)
            try Data("volume \(i + 1)\n".utf8).write(to: URL(fileURLWithPath: src + "/" + name))
            let part = dir.file("part\(i).img")
            fm.createFile(atPath: part, contents: nil)
            try runChecked(sys("truncate"), ["-s", String(30000 * 512), part])
            try runChecked(sys("mkfs.ext4"), ["-q", "-d", src, part])
            try runChecked(sys("dd"), ["if=\(part)", "of=\(disk)", "bs=512", "seek=\([2048, 34816][i])", "conv=notrunc", "status=none"])
        }
        try """
        name: volumes
        machine: vm
        sources:
          - disk: \(disk)
        consistency:
          provider: none
          allow-crash-consistent: true
        target: \(dir.file("target"))
        keep: {last: 10}
        """.write(toFile: dir.file("policy.yaml"), atomically: true, encoding: .utf8)
        let env = ["BULWARK_STATE_DIR": dir.file("state")]
        let backup = try run(TestEnv.bulwark, ["backup", "start", "--policy", dir.file("policy.yaml")], environment: env)
        #expect(backup.status == 0, "\(backup.err)")
        let version = try fm.contentsOfDirectory(atPath: dir.file("target") + "/BulwarkBackup/vm").filter { $0.hasPrefix("20") }.sorted().last!
        let point = ["--target", dir.file("target"), "--version", version]

        let ambiguous = try run(TestEnv.bulwark, ["files", "list"] + point, environment: env)
        #expect(ambiguous.status == 64, "\(ambiguous.err)")
        #expect(ambiguous.err.contains("--volume") && ambiguous.err.contains("1 (14.6 MiB, ext4)") && ambiguous.err.contains("2 (14.6 MiB, ext4)"), "\(ambiguous.err)")
        let found = try run(TestEnv.bulwark, ["restore", "files"] + point + ["--path", "/two.txt", "--to", dir.file("two")], environment: env)
        #expect(found.status == 0, "\(found.err)")
        #expect(fm.contents(atPath: dir.file("two/two.txt")) == Data("volume 2\n".utf8))
        let chosen = try run(TestEnv.bulwark, ["files", "list"] + point + ["--volume", "1"], environment: env)
        #expect(chosen.status == 0 && chosen.out.contains("/one.txt") && !chosen.out.contains("/two.txt"), "\(chosen.out)\(chosen.err)")
        let wrong = try run(TestEnv.bulwark, ["files", "list"] + point + ["--volume", "1", "--path", "/two.txt"], environment: env)
        #expect(wrong.status == 3 && wrong.err.contains("volume 1"), "\(wrong.err)")
        let nowhere = try run(TestEnv.bulwark, ["files", "list"] + point + ["--path", "/three.txt"], environment: env)
        #expect(nowhere.status == 3 && nowhere.err.contains("none of the volumes"), "\(nowhere.err)")
        let none = try run(TestEnv.bulwark, ["files", "list"] + point + ["--volume", "5"], environment: env)
        #expect(none.status == 3, "\(none.err)")
        #expect(leftovers().isEmpty, "\(leftovers())")
    }
}
