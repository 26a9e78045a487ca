import Foundation
import Glibc
import Testing
import TestSupport

/// A folder tree backed up as a file set (`files:`) to a local target: a full, then an incremental
/// after one file changed, one was added and one removed.
final class FileSetBench: @unchecked Sendable {
    let dir: TempDir
    var src: String { dir.file("src") }
    var target: String { dir.file("target") }
    var env: [String: String] { ["BULWARK_STATE_DIR": dir.file("state")] }
    var full = "", incremental = ""
    /// A POSIX access ACL (user::rw-, user:1234:r--, group::r--, mask::r--, other::---), as the
    /// kernel stores it in `system.posix_acl_access`.
    static let acl: [UInt8] = {
        var b: [UInt8] = [2, 0, 0, 0]
        func add(_ tag: UInt16, _ perm: UInt16, _ id: UInt32) {
            b += [UInt8(tag & 0xFF), UInt8(tag >> 8), UInt8(perm & 0xFF), UInt8(perm >> 8)]
            b += [UInt8(id & 0xFF), UInt8((id >> 8) & 0xFF), UInt8((id >> 16) & 0xFF), UInt8(id >> 24)]
        }
        add(0x01, 6, 0xFFFF_FFFF); add(0x02, 4, 1234); add(0x04, 4, 0xFFFF_FFFF); add(0x10, 4, 0xFFFF_FFFF); add(0x20, 0, 0xFFFF_FFFF)
        return b
    }()

    init(keep: String = "{last: 10}") throws {
        dir = try TempDir("fileset")
        let fm = FileManager.default
        for d in ["etc", "data/deep", "empty"] { try fm.createDirectory(atPath: src + "/" + d, withIntermediateDirectories: true) }
        try Data("hosts file\n".utf8).write(to: URL(fileURLWithPath: src + "/etc/hosts"))
        try Data("to be removed\n".utf8).write(to: URL(fileURLWithPath: src + "/etc/old.conf"))
        var random = SeededRandom(seed: 5)
        try Data((0..<(2 << 20)).map { _ in UInt8.random(in: 0...255, using: &random) }).write(to: URL(fileURLWithPath: src + "/data/deep/big.bin"))
        try Data("#!/bin/sh\n".utf8).write(to: URL(fileURLWithPath: src + "/data/run.sh"))
        try Self.check(chmod(src + "/etc/hosts", 0o640) == 0 && chown(src + "/etc/hosts", 12, 34) == 0)
        try Self.check(chmod(src + "/data/run.sh", 0o4755) == 0 && chmod(src + "/data/deep", 0o750) == 0)
        try Self.check(symlink("../etc/hosts", src + "/data/link") == 0)
        let acl = Self.acl.map { String($0) }.joined(separator: ",")
        try runChecked("/usr/bin/python3", ["-c", "import os; os.setxattr('\(src)/etc/hosts', 'user.note', b'hello'); os.setxattr('\(src)/data/run.sh', 'system.posix_acl_access', bytes([\(acl)]))"])
        try runChecked(sys("touch"), ["-h", "-d", "2020-01-02 03:04:05 UTC", src + "/etc/hosts", src + "/data/link"])
        try writeTestPolicy(dir.file("policy.yaml"), name: "files", machine: "fileserver", sources: ["files: [\(src)]"], target: target, keep: keep)
        full = try backup()
        sleep(1)
        try Data("hosts file, changed\n".utf8).write(to: URL(fileURLWithPath: src + "/etc/hosts"))
        try Data("new\n".utf8).write(to: URL(fileURLWithPath: src + "/etc/new.txt"))
        try fm.removeItem(atPath: src + "/etc/old.conf")
        incremental = try backup()
    }

    func backup() throws -> String {
        try backupPoint(policy: dir.file("policy.yaml"), environment: env, machineFolder: target + "/BulwarkBackup/fileserver")
    }

    func manifest(_ version: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(target)/BulwarkBackup/fileserver/\(version)/manifest.json"))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    static func check(_ ok: Bool) throws { if !ok { throw TestFailure("fixture: errno \(errno)") } }

    /// Everything `restore` must bring back about each entry under `root`: type, mode, owner, mtime,
    /// size, content digest, link target and xattrs (ACLs included), by relative path.
    static func describe(_ root: String) throws -> [String: String] {
        var out: [String: String] = [:]
        let script = "cd '\(root)' && find . -mindepth 1 | sort | while read -r p; do printf '%s|' \"$p\"; stat -c '%F|%a|%u:%g|%Y|%s' \"$p\" | tr '\\n' '|'; if [ -f \"$p\" ] && [ ! -L \"$p\" ]; then sha256sum \"$p\" | cut -c1-16 | tr '\\n' '|'; fi; [ -L \"$p\" ] && readlink \"$p\" | tr '\\n' '|'; echo; done"
        for line in try runChecked(sys("sh"), ["-c", script]).out.split(separator: "\n") {
            let parts = line.split(separator: "|", maxSplits: 1)
            out[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
        let xattrs = try runChecked("/usr/bin/python3", ["-c", """
            import os, sys
            root = sys.argv[1]
            for d, dirs, files in os.walk(root):
                for n in sorted(dirs + files):
                    p = os.path.join(d, n)
                    for a in sorted(os.listxattr(p, follow_symlinks=False)):
                        print('./' + os.path.relpath(p, root) + '|' + a + '=' + os.getxattr(p, a, follow_symlinks=False).hex())
            """, root]).out
        for line in xattrs.split(separator: "\n") {
            let parts = line.split(separator: "|", maxSplits: 1)
            out[String(parts[0]), default: ""] += " " + String(parts[1])
        }
        return out
    }
}

@Suite(.serialized) struct FileSetTests {
    static func prerequisites() throws -> Bool {
        try TestEnv.prerequisite(TestEnv.isRoot, "root (file owners and ACLs)")
    }

    @Test func incrementalsStoreWhatChangedAndRestoreTheWholeSet() throws {
        guard try Self.prerequisites() else { return }
        let b = try FileSetBench()
        let sets = try #require(try b.manifest(b.incremental)["fileSets"] as? [[String: Any]])
        #expect(sets.count == 1)
        // The incremental's archive holds the two changed files and the folders and the link; the
        // unchanged files stay in the full's archive.
        #expect(sets[0]["entries"] as? Int == 10, "\(sets[0])")
        #expect(sets[0]["storedEntries"] as? Int == 2 + 5 + 1, "\(sets[0])")
        #expect(sets[0]["storedBytes"] as? Int == "hosts file, changed\n".utf8.count + "new\n".utf8.count)
        #expect(sets[0]["references"] as? [String] == [b.full, b.incremental])
        let fullSets = try #require(try b.manifest(b.full)["fileSets"] as? [[String: Any]])
        #expect(fullSets[0]["storedBytes"] as? Int ?? 0 > 2 << 20)
        #expect(try b.manifest(b.incremental)["parent"] as? String == b.full)

        // The whole set from the incremental: exactly the source, metadata included.
        let whole = b.dir.file("whole")
        let r = try run(TestEnv.bulwark, ["restore", "files", "--target", b.target, "--version", b.incremental, "--path", b.src, "--to", whole, "--json"])
        #expect(r.status == 0, "\(r.err)")
        let restored = try FileSetBench.describe(whole + b.src)
        let source = try FileSetBench.describe(b.src)
        #expect(restored == source)
        #expect(source["./data/run.sh"]?.contains("system.posix_acl_access=") == true, "the ACL is part of what is compared")
        #expect(source["./etc/hosts"]?.contains("user.note=68656c6c6f") == true)
        #expect(source["./etc/old.conf"] == nil && source["./etc/new.txt"] != nil)

        // One path from the full: the removed file is there, the new one is not.
        let one = b.dir.file("one")
        let o = try run(TestEnv.bulwark, ["restore", "files", "--target", b.target, "--version", b.full, "--path", b.src + "/etc", "--to", one])
        #expect(o.status == 0, "\(o.err)")
        #expect(FileManager.default.contents(atPath: one + b.src + "/etc/old.conf") == Data("to be removed\n".utf8))
        #expect(FileManager.default.contents(atPath: one + b.src + "/etc/hosts") == Data("hosts file\n".utf8))
        #expect(!FileManager.default.fileExists(atPath: one + b.src + "/etc/new.txt"))
        #expect(!FileManager.default.fileExists(atPath: one + b.src + "/data"))

        // Listing from the index, no mount; a missing path and a `..` path are errors.
        let l = try run(TestEnv.bulwark, ["files", "list", "--target", b.target, "--version", b.incremental, "--path", b.src + "/etc", "--json"])
        #expect(l.status == 0, "\(l.err)")
        let listing = try JSONSerialization.jsonObject(with: l.stdout) as! [String: Any]
        let entries = listing["entries"] as! [[String: Any]]
        #expect(entries.map { $0["path"] as! String } == [b.src + "/etc", b.src + "/etc/hosts", b.src + "/etc/new.txt"])
        #expect(entries[1]["mode"] as? String == "0640" && entries[1]["uid"] as? Int == 12 && entries[1]["gid"] as? Int == 34)
        let missing = try run(TestEnv.bulwark, ["restore", "files", "--target", b.target, "--version", b.incremental, "--path", b.src + "/etc/old.conf", "--to", b.dir.file("m")])
        #expect(missing.status == 3 && missing.err.contains("is not in file set 0"), "\(missing.err)")
        let dotdot = try run(TestEnv.bulwark, ["restore", "files", "--target", b.target, "--version", b.incremental, "--path", b.src + "/../etc", "--to", b.dir.file("d")])
        #expect(dotdot.status == 64 && dotdot.err.contains("without `.` or `..`"), "\(dotdot.err)")

        // Verify reads the archives and indexes.
        let v = try run(TestEnv.bulwark, ["verify", "--target", b.target, "--json"])
        #expect(v.status == 0, "\(v.out)\(v.err)")
    }

    @Test func aCraftedArchiveIsRefusedAndWritesNothingOutside() throws {
        guard try Self.prerequisites() else { return }
        let b = try FileSetBench()
        let folder = "\(b.target)/BulwarkBackup/fileserver/\(b.full)"
        // A tar whose first entry climbs out, with the manifest's size and checksum made to match
        // (whoever can write the archive can write the manifest).
        let name = String(b.src.dropFirst()) + "/etc/hosts"
        try runChecked("/usr/bin/python3", ["-c", """
            import tarfile, io
            with tarfile.open('\(folder)/fileset0.tar.zst', 'w', format=tarfile.PAX_FORMAT) as t:
                for n in ['../../escaped.txt', '\(name)']:
                    data = b'crafted'
                    info = tarfile.TarInfo(n); info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
            """])
        let archive = try Data(contentsOf: URL(fileURLWithPath: folder + "/fileset0.tar.zst"))
        let digest = try runChecked(sys("sha256sum"), [folder + "/fileset0.tar.zst"]).out.prefix(64)
        var manifest = try String(contentsOfFile: folder + "/manifest.json", encoding: .utf8)
        let m = try b.manifest(b.full)
        let set = (m["fileSets"] as! [[String: Any]])[0]
        manifest = manifest.replacingOccurrences(of: set["archiveSHA256"] as! String, with: String(digest))
            .replacingOccurrences(of: "\"archiveSize\":\(set["archiveSize"] as! Int)", with: "\"archiveSize\":\(archive.count)")
            .replacingOccurrences(of: "\"archiveSize\" : \(set["archiveSize"] as! Int)", with: "\"archiveSize\" : \(archive.count)")
        try manifest.write(toFile: folder + "/manifest.json", atomically: true, encoding: .utf8)
        let to = b.dir.file("deep/a/b")
        let r = try run(TestEnv.bulwark, ["restore", "files", "--target", b.target, "--version", b.full, "--path", "/" + name, "--to", to])
        #expect(r.status == 4, "\(r.out)\(r.err)")
        #expect(r.err.contains("'../../escaped.txt'") && r.err.contains("crafted archive, refused"), "\(r.err)")
        for candidate in [b.dir.file("deep/escaped.txt"), b.dir.file("deep/a/escaped.txt"), b.dir.file("escaped.txt")] {
            #expect(!FileManager.default.fileExists(atPath: candidate), "\(candidate)")
        }
        #expect(!FileManager.default.fileExists(atPath: to + "/" + name), "refused before the wanted entry")
    }

    /// A file-set backup killed at any moment leaves every point as it was (the half-written one has
    /// no manifest and is never listed); the next job removes the leftovers and completes.
    @Test func killedFileSetBackupsLeaveThePointsAsTheyWere() throws {
        guard try Self.prerequisites() else { return }
        let b = try FileSetBench()
        var random = SeededRandom(seed: 11)
        try Data((0..<(24 << 20)).map { _ in UInt8.random(in: 0...255, using: &random) }).write(to: URL(fileURLWithPath: b.src + "/data/large.bin"))
        let args = ["backup", "start", "--policy", b.dir.file("policy.yaml"), "--full"]
        let (duration, first) = try KilledRun.duration(args, environment: b.env)
        try #require(first.status == 0, "\(first.err)")
        let machine = b.target + "/BulwarkBackup/fileserver"
        func complete() throws -> [String] {
            try FileManager.default.contentsOfDirectory(atPath: machine).filter { $0.hasPrefix("20") }
                .filter { FileManager.default.fileExists(atPath: machine + "/" + $0 + "/manifest.json") }.sorted()
        }
        var kills = 0
        for round in 0..<6 {
            let before = try complete()
            let outcome = try KilledRun.run(args, after: UInt32.random(in: duration / 10...max(duration / 10 + 1, duration * 9 / 10), using: &random),
                                            environment: b.env)
            if outcome.killed { kills += 1 } else { #expect(outcome.status == 0, "round \(round): \(outcome.err)") }
            let after = try complete()
            #expect(Set(before).isSubset(of: Set(after)), "round \(round): a point vanished")
            let listed = try run(TestEnv.bulwark, ["versions", "--target", b.target, "--json"])
            let versions = (try JSONSerialization.jsonObject(with: listed.stdout) as? [[String: Any]])?.compactMap { $0["version"] as? String }
            #expect(versions.map(Set.init) == Set(after), "round \(round): only complete points are listed")
            sleep(1)
        }
        #expect(kills > 0)
        let last = try b.backup()
        let to = b.dir.file("after-kills")
        let r = try run(TestEnv.bulwark, ["restore", "files", "--target", b.target, "--version", last, "--path", b.src, "--to", to])
        #expect(r.status == 0, "\(r.err)")
        #expect(try FileSetBench.describe(to + b.src) == FileSetBench.describe(b.src))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: machine).filter { $0.hasPrefix("20") }
            .filter { !FileManager.default.fileExists(atPath: machine + "/" + $0 + "/manifest.json") }
        #expect(leftovers.isEmpty, "\(leftovers)")
        #expect(try run(TestEnv.bulwark, ["verify", "--target", b.target]).status == 0)
    }

    /// Retention keeps a point whose archive a kept point still needs, and removes it once none does.
    @Test func retentionKeepsArchivesThatKeptPointsNeed() throws {
        guard try Self.prerequisites() else { return }
        let b = try FileSetBench(keep: "{last: 1}")
        // `backup start` pruned with last: 1: the full stays, the incremental's unchanged files live in it.
        let dry = try run(TestEnv.bulwark, ["prune", "--policy", b.dir.file("policy.yaml"), "--dry-run", "--json"], environment: b.env)
        #expect(dry.status == 0, "\(dry.err)")
        let decisions = (try JSONSerialization.jsonObject(with: dry.stdout) as! [String: Any])["decisions"] as! [[String: Any]]
        #expect(decisions.map { $0["version"] as! String } == [b.incremental, b.full])
        #expect(decisions.map { $0["keep"] as! Bool } == [true, true])
        #expect(decisions[1]["rule"] as? String == "the file set of \(b.incremental) needs its archive")
        // A new full: nothing needs the old points any more.
        let full = try run(TestEnv.bulwark, ["backup", "start", "--policy", b.dir.file("policy.yaml"), "--full"], environment: b.env)
        #expect(full.status == 0, "\(full.err)")
        let left = try FileManager.default.contentsOfDirectory(atPath: b.target + "/BulwarkBackup/fileserver").filter { $0.hasPrefix("20") }
        #expect(left.count == 1 && !left.contains(b.full) && !left.contains(b.incremental), "\(left)")
        let r = try run(TestEnv.bulwark, ["restore", "files", "--target", b.target, "--version", left[0], "--path", b.src, "--to", b.dir.file("after")])
        #expect(r.status == 0, "\(r.err)")
        #expect(try FileSetBench.describe(b.dir.file("after") + b.src) == FileSetBench.describe(b.src))
    }

    @Test func fileSetPointsReplicateToTheShareAndRestoreFromIt() throws {
        guard try Self.prerequisites(), try SambaServer.available() else { return }
        let b = try FileSetBench()
        let server = try SambaServer()
        defer { server.stop() }
        let share = server.url(path: "/filesets")
        let creds = ["--credentials", server.credentialsFile]
        let rep = try run(TestEnv.bulwark, ["replicate", "--from", b.target, "--to", share] + creds)
        #expect(rep.status == 0, "\(rep.err)")
        let to = b.dir.file("from-share")
        let r = try run(TestEnv.bulwark, ["restore", "files", "--target", share, "--version", b.incremental, "--path", b.src, "--to", to] + creds)
        #expect(r.status == 0, "\(r.err)")
        #expect(try FileSetBench.describe(to + b.src) == FileSetBench.describe(b.src))
    }
}
