import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Protection
import Storage
import SystemPackage
import Targets
import Testing
import TestSupport
import VirtualDisk

/// A real smbd started by `tools/samba` in a state folder and on a port of its own, stopped (and its
/// folder removed) by `stop()`. No mock server: everything goes through libsmbclient to Samba.
final class SambaServer: @unchecked Sendable {
    let state: TempDir
    let port: Int
    let credentialsFile: String
    /// More environment for `tools/samba` (e.g. BULWARK_SAMBA_EXTRA_SHARE).
    let extra: [String: String]
    static let user = "bulwark-smb"

    /// `tools/samba`, found from this file: Tests/ProtectionTests/SMBTests.swift is three levels down.
    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("tools/samba").path
    }

    /// Whether the machine can run the server (root for useradd, smbd installed); in CI a missing
    /// piece is a failure (`TestEnv.prerequisite`).
    static func available() throws -> Bool {
        guard try TestEnv.prerequisite(TestEnv.isRoot, "root (tools/samba creates a Unix account for the Samba user)") else { return false }
        return try TestEnv.tools("smbd", "smbpasswd")
    }

    init(environment extra: [String: String] = [:]) throws {
        self.extra = extra
        // Under /tmp, not BULWARK_TEST_TMP: smbd serves the share as the Samba user, who must be able
        // to walk down to it.
        state = try TempDir("bulwark-smbtest", under: "/tmp")
        var lastError = ""
        for _ in 0..<3 {
            let port = 4455 + 100 + Int.random(in: 0..<20_000)
            let r = try run(Self.script, ["start"], environment: Self.environment(state.path, port).merging(extra) { $1 })
            if r.status == 0 {
                self.port = port
                credentialsFile = state.file("credentials")
                return
            }
            lastError = r.err + r.out
        }
        throw TestFailure("tools/samba start failed: \(lastError)")
    }

    private static func environment(_ dir: String, _ port: Int) -> [String: String] {
        ["BULWARK_SAMBA_DIR": dir, "BULWARK_SAMBA_PORT": String(port)]
    }

    func stop() { _ = try? run(Self.script, ["stop"], environment: Self.environment(state.path, port)) }
    func start() throws {
        let r = try run(Self.script, ["start"], environment: Self.environment(state.path, port).merging(extra) { $1 })
        guard r.status == 0 else { throw TestFailure("tools/samba start failed: \(r.err)") }
    }

    /// The URL of a share (and a folder in it).
    func url(share: String = "backup", path: String = "") -> String { "smb://\(Self.user)@127.0.0.1:\(port)/\(share)\(path)" }
    func location(share: String = "backup", path: String = "") throws -> SMBLocation { try SMBLocation(parsing: url(share: share, path: path)) }
    var credentials: SMBCredentials { get throws { try SMBCredentials(file: FilePath(credentialsFile)) } }
    /// The folder smbd serves a share from, to check from the server's side.
    func shareFolder(_ share: String = "backup") -> String { state.file("shares/\(share)") }
    func serverFiles(_ share: String = "backup") throws -> [String] {
        try FileManager.default.subpathsOfDirectory(atPath: shareFolder(share)).sorted()
    }
    /// A fast retry policy for tests.
    static let retry = SMBRetryPolicy(attempts: 4, firstDelay: 0.1, maximumDelay: 0.5)
    func target(share: String = "backup", path: String = "", credentials: SMBCredentials? = nil) throws -> SMBTarget {
        SMBTarget(location: try location(share: share, path: path), credentials: try credentials ?? self.credentials, retry: Self.retry)
    }

    deinit { stop() }
}

/// Copies a local file to `path` in `space` in whole requests of `chunk` bytes.
func copyToSpace(_ local: String, _ path: FilePath, in space: any StoreSpace, chunk: Int = 8 << 20) throws {
    let source = try BlockFile.open(FilePath(local), writable: false)
    defer { try? source.close() }
    let out = try space.create(path)
    let size = try source.size()
    var offset: UInt64 = 0
    while offset < size {
        let n = Int(min(UInt64(chunk), size - offset))
        try out.write(try source.read(count: n, at: offset), at: offset)
        offset += UInt64(n)
    }
    try out.flush()
    try out.close()
}

/// Copies a local folder tree into `space` under `destination`.
func copyTree(_ local: String, to destination: FilePath, in space: any StoreSpace) throws {
    try space.makeFolder(destination)
    for name in try FileManager.default.contentsOfDirectory(atPath: local).sorted() {
        let path = local + "/" + name
        var isDir: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
        if isDir.boolValue { try copyTree(path, to: destination.appending(name), in: space) }
        else { try copyToSpace(path, destination.appending(name), in: space) }
    }
}

/// The SMB target and store against a real Samba server (`tools/samba`): publishing, reading,
/// listing, the disk engine reading a chain off the share, recovery points on the share, and the
/// errors a user meets (wrong password, missing share, read-only share, a readable credentials file).
@Suite(.serialized) struct SMBTests {
    @Test func publishReadListAndRemoveOnTheShare() async throws {
        guard try SambaServer.available() else { return }
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            let target = try server.target(path: "/bulwark")
            #expect(target.location == server.url(path: "/bulwark"))
            #expect(target.root == "/bulwark")
            #expect(target.writableProblem() == nil, "a root that does not exist yet is made by the first job")
            let space = target.smbSpace
            try space.makeFolder(target.machineFolder("m1"))
            #expect(space.kind(of: target.machineFolder("m1")) == .directory)
            try space.makeFolder(target.machineFolder("m1"))  // existing: not an error

            let a = target.machineFolder("m1").appending("a.json")
            try target.publish(Array("one".utf8), at: a)
            #expect(try target.read(a, limit: 100) == Array("one".utf8))
            #expect(throws: StorageError.exists(path: space.url(of: a))) { try target.publish(Array("two".utf8), at: a) }
            #expect(try target.read(a, limit: 100) == Array("one".utf8), "the first content stays")
            #expect(try space.contents(of: target.machineFolder("m1")) == ["a.json"], "no .partial file is left")
            #expect(try space.contents(of: target.backupFolder) == ["m1"])
            #expect(throws: StorageError.notFound(path: space.url(of: "/bulwark/none"))) { try space.contents(of: "/bulwark/none") }
            #expect(try server.serverFiles().contains("bulwark/BulwarkBackup/m1/a.json"), "the file is on the server")

            // Rename refuses an existing destination (libsmbclient's would delete it), and leaves both.
            let b = target.machineFolder("m1").appending("b.json")
            try target.publish(Array("bee".utf8), at: b)
            #expect(throws: StorageError.exists(path: space.url(of: a))) { try space.rename(b, to: a) }
            #expect(try target.read(a, limit: 100) == Array("one".utf8))
            #expect(try target.read(b, limit: 100) == Array("bee".utf8))
            let c = target.machineFolder("m1").appending("c.json")
            try space.rename(b, to: c)
            #expect(space.kind(of: b) == nil)
            #expect(try target.read(c, limit: 100) == Array("bee".utf8))

            // Create is exclusive.
            #expect(throws: StorageError.exists(path: space.url(of: c))) { try space.create(c) }

            // Large positioned I/O through one file: 20 MiB in one write, unaligned reads, size,
            // truncate, and a read past the end.
            var rng = SeededRandom(seed: 11)
            let big = rng.bytes(20 << 20)
            let bigPath = target.machineFolder("m1").appending("big.bin")
            let store = try space.create(bigPath)
            try store.write(big, at: 0)
            try store.write(Array("tail".utf8), at: UInt64(big.count))
            try store.flush()
            #expect(try store.size() == UInt64(big.count + 4))
            #expect(try store.read(count: 1000, at: 12_345_677) == Array(big[12_345_677..<12_346_677]))
            try store.truncate(to: UInt64(big.count))
            #expect(try store.size() == UInt64(big.count))
            #expect(throws: StorageError.endOfFile(path: space.url(of: bigPath), needed: UInt64(big.count + 1), actual: UInt64(big.count))) {
                try store.read(count: 2, at: UInt64(big.count - 1))
            }
            try store.close()
            let reread = try space.open(bigPath, writable: false)
            #expect(try reread.read(count: big.count, at: 0) == big)
            #expect(throws: StorageError.readOnly(path: space.url(of: bigPath))) { try reread.write([1], at: 0) }
            try reread.close()
            #expect(try space.availableSpace(at: bigPath).map { $0 > 0 } == true)

            // The lease works on the share (create, rewrite in place, read, remove).
            let lease = try TargetLease.acquire(target, machine: "m1", purpose: "test", duration: 60)
            #expect(TargetLease.holder(target, machine: "m1")?.isCurrentProcess == true)
            lease.refresh()
            try lease.check()
            lease.release()
            #expect(TargetLease.holder(target, machine: "m1") == nil)

            // Remove: files, a missing file (not an error), the folder.
            for name in try space.contents(of: target.machineFolder("m1")) { try space.remove(target.machineFolder("m1").appending(name)) }
            try space.remove(a)
            try space.removeFolder(target.machineFolder("m1"))
            try space.removeFolder(target.machineFolder("m1"))
            #expect(try space.contents(of: target.backupFolder) == [])
        }
    }

    @Test func theDiskEngineReadsAChainStraightFromTheShare() async throws {
        guard try SambaServer.available() else { return }
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            let dir = try TempDir("smb-chain")
            let base = FilePath(dir.file("base.vhdx")), child = FilePath(dir.file("child.vhdx"))
            var rng = SeededRandom(seed: 5)
            let parent = try DiskImages.create(at: base, options: CreateOptions(format: .vhdx, type: .dynamic, virtualSize: 64 << 20))
            for i in 0..<6 { try parent.write(rng.bytes(300_000), at: UInt64(i) * (9 << 20) + 4096) }
            try parent.close()
            let diff = try DiskImages.create(at: child, options: CreateOptions(format: .vhdx, type: .differencing, parentPath: base))
            for i in 0..<4 { try diff.write(rng.bytes(200_000), at: UInt64(i) * (13 << 20) + 512) }
            try diff.close()
            let localChain = try DiskChain.open(child)
            let expected = try localChain.leaf.read(count: Int(localChain.leaf.virtualSize), at: 0)
            try localChain.close()

            let target = try server.target()
            let space = target.smbSpace
            try space.makeFolder("/chain")
            try copyToSpace(base.string, "/chain/base.vhdx", in: space)
            try copyToSpace(child.string, "/chain/child.vhdx", in: space, chunk: 1 << 20)
            let remote = try DiskChain.open("/chain/child.vhdx", in: space)
            defer { try? remote.close() }
            #expect(remote.levels.count == 2, "the parent was found on the share by its relative locator")
            #expect(remote.leaf.store is SMBFile)
            let read = try remote.leaf.read(count: Int(remote.leaf.virtualSize), at: 0)
            #expect(read.count == expected.count)
            #expect(read == expected, "the chain reads the same bytes off the share as locally")
        }
    }

    @Test func recoveryPointsAreListedAndReadFromTheShare() async throws {
        guard try SambaServer.available() else { return }
        let bench = try BackupBench(size: 16 << 20, seed: 21)
        try bench.scribble(writes: 20)
        let full = try await bench.backup(at: .day(0))
        try bench.scribble(writes: 10)
        let incremental = try await bench.backup(at: .day(1))
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            let target = try server.target(path: "/site")
            try copyTree(bench.targetPath + "/BulwarkBackup", to: target.backupFolder, in: target.smbSpace)
            let local = bench.points
            let remote = RecoveryPoints(target: target, machine: "guest")
            #expect(try RecoveryPoints.machines(on: target) == ["guest"])
            #expect(try remote.completeVersions() == [full.version, incremental.version])
            #expect(try remote.listing() == (try local.listing()))
            #expect(try remote.manifest(incremental.version) == (try local.manifest(incremental.version)))
            #expect(try remote.manifest(incremental.version).parent == full.version)
            // The incremental's disk, read through its chain on the share, is the local one.
            let chain = try remote.openDisk(incremental.version, disk: try remote.manifest(incremental.version).disks[0])
            defer { try? chain.close() }
            #expect(chain.levels.count == 2)
            #expect(try chain.leaf.read(count: Int(chain.leaf.virtualSize), at: 0) == (try bench.read(incremental.version)))
        }
    }

    @Test func wrongPasswordMissingShareAndReadOnlyShareAreClearErrors() async throws {
        guard try SambaServer.available() else { return }
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            let good = try server.credentials

            // Wrong password: logon failure, naming the user and what to check, never the password.
            let wrong = try server.target(credentials: SMBCredentials(username: SambaServer.user, password: "not-the-password", domain: "WORKGROUP"))
            do {
                try wrong.publish([1, 2, 3], at: "/x.bin")
                Issue.record("a publish with a wrong password succeeded")
            } catch let e as SMBError {
                #expect(e == .logonFailed(share: server.url(), user: SambaServer.user))
                #expect("\(e)".contains("logon failed") && "\(e)".contains("password") && !"\(e)".contains("not-the-password"))
            }
            #expect(wrong.writableProblem()?.contains("logon failed") == true)
            #expect(throws: SMBError.logonFailed(share: server.url(), user: SambaServer.user)) { try wrong.read("/x.bin", limit: 10) }

            // Missing share.
            let missing = try server.target(share: "nosuch", credentials: good)
            do {
                _ = try missing.smbSpace.contents(of: "/")
                Issue.record("listing a missing share succeeded")
            } catch let e as SMBError {
                #expect(e == .shareNotFound(share: server.url(share: "nosuch")))
                #expect("\(e)".contains("share not found"))
            }
            #expect(missing.writableProblem()?.contains("share not found") == true)

            // Read-only share: reading works, writing is a clear error and leaves nothing.
            let readOnly = try server.target(share: "readonly", credentials: good)
            #expect(try readOnly.read("/hello.txt", limit: 100) == Array("hello from the read-only share\n".utf8))
            do {
                try readOnly.publish([1, 2, 3], at: "/x.bin")
                Issue.record("a publish on a read-only share succeeded")
            } catch let e as SMBError {
                guard case let .writeDenied(path, _, user) = e else { Issue.record("unexpected \(e)"); return }
                #expect(path.hasPrefix(server.url(share: "readonly")) && user == SambaServer.user)
                #expect("\(e)".contains("read-only"))
            }
            #expect(readOnly.writableProblem()?.contains("read-only") == true)
            #expect(throws: SMBError.self) { try readOnly.smbSpace.makeFolder("/BulwarkBackup") }

            // Nothing was left on either share by the failures.
            #expect(try server.serverFiles() == [])
            #expect(try server.serverFiles("readonly") == ["hello.txt"])
        }
    }

    @Test func aReadFollowsTheServerThroughARestart() async throws {
        guard try SambaServer.available() else { return }
        try await offPool {
            let server = try SambaServer()
            defer { server.stop() }
            let target = try server.target()
            try target.publish(Array(repeating: 7, count: 100_000), at: "/f.bin")
            let store = try target.space.open("/f.bin", writable: false)
            defer { try? store.close() }
            #expect(try store.read(count: 10, at: 0) == Array(repeating: 7, count: 10))
            server.stop()
            try server.start()
            // The open handle died with the server; the read opens the file again on a fresh context.
            #expect(try store.read(count: 10, at: 50_000) == Array(repeating: 7, count: 10))
            #expect(try target.read("/f.bin", limit: 1 << 20).count == 100_000)
        }
    }

    @Test func credentialsAndURLsKeepSecretsOut() throws {
        let dir = try TempDir("smb-cred")
        let file = dir.file("cred")
        try "username=alice\npassword=s3cret pass\ndomain=CORP\n".write(toFile: file, atomically: true, encoding: .utf8)
        chmod(file, 0o644)
        do {
            _ = try SMBCredentials(file: FilePath(file))
            Issue.record("a world-readable credentials file was accepted")
        } catch let e as SMBError {
            let text = "\(e)"
            #expect(text.contains("0644") && text.contains("chmod 600") && text.contains(file))
            #expect(!text.contains("s3cret"))
        }
        chmod(file, 0o600)
        let creds = try SMBCredentials(file: FilePath(file))
        #expect(creds.username == "alice" && creds.domain == "CORP")
        #expect(creds == SMBCredentials(username: "alice", password: "s3cret pass", domain: "CORP"))
        var dumped = ""
        dump(creds, to: &dumped)
        for text in ["\(creds)", String(reflecting: creds), dumped] { #expect(!text.contains("s3cret"), "\(text)") }
        try "username=alice\n".write(toFile: file, atomically: true, encoding: .utf8)
        chmod(file, 0o600)
        #expect(throws: SMBError.credentialsFile(path: file, reason: "has no password= line")) { try SMBCredentials(file: FilePath(file)) }

        // URLs: parts, percent-decoding, printing, and a password refused without being repeated.
        let l = try SMBLocation(parsing: "smb://CORP;al%20ice@nas.example:4455/back%20ups/bulwark/site%231")
        #expect(l.domain == "CORP" && l.user == "al ice" && l.host == "nas.example" && l.port == 4455)
        #expect(l.share == "back ups" && l.path == "/bulwark/site#1")
        #expect(l.description == "smb://CORP;al%20ice@nas.example:4455/back%20ups/bulwark/site%231")
        #expect(try SMBLocation(parsing: "smb://nas/share").path == "/")
        do {
            _ = try SMBLocation(parsing: "smb://alice:hunter2@nas/share")
            Issue.record("a password in the URL was accepted")
        } catch {
            #expect("\(error)".contains("password") && "\(error)".contains("--credentials") && !"\(error)".contains("hunter2"))
        }
        for bad in ["smb://nas", "smb://nas/", "smb://@nas/s", "smb://nas:0/s", "smb://nas:99999/s", "smb://nas/s/../x", "smb://nas/s%zz"] {
            #expect(throws: TargetError.self, "\(bad)") { try SMBLocation(parsing: bad) }
        }
        // Targets.open: an smb:// URL without credentials says how to give them.
        do {
            _ = try Targets.open("smb://alice@nas/share")
            Issue.record("an smb target opened without credentials")
        } catch {
            #expect("\(error)".contains("--credentials FILE") && "\(error)".contains("BULWARK_SMB_PASSWORD"))
        }
        #expect(try Targets.open("smb://alice@nas/share/b", credentials: creds) is SMBTarget)
        #expect(try Targets.open("/var/backups/x") is LocalDirectoryTarget)
    }
}

/// The command line against a real share: back up to a local folder, replicate to the share, list the
/// versions from the share alone and restore from it, byte for byte.
@Suite(.serialized) struct SMBReplicationCLITests {
    @Test func backupReplicateListAndRestoreFromTheShare() async throws {
        guard try SambaServer.available() else { return }
        try await offPool { try Self.body() }
    }

    static func body() throws {
        let server = try SambaServer()
        defer { server.stop() }
        let bench = try BackupBench(size: 16 << 20, seed: 91)
        let env = ["BULWARK_STATE_DIR": bench.state]
        var models: [[UInt8]] = []
        for _ in 0..<2 {
            try bench.scribble(writes: 3, maxLength: 1 << 20)
            let r = try run(TestEnv.bulwark, ["backup", "start", "--policy", bench.policyFile], environment: env)
            #expect(r.status == 0, "\(r.err)")
            models.append(bench.model)
        }
        let share = server.url(path: "/dr")
        let replicate = try run(TestEnv.bulwark, ["replicate", "--from", bench.targetPath, "--to", share, "--credentials", server.credentialsFile, "--json"])
        #expect(replicate.status == 0, "\(replicate.err)")
        let versions = try run(TestEnv.bulwark, ["versions", "--target", share, "--credentials", server.credentialsFile, "--json"])
        #expect(versions.status == 0, "\(versions.err)")
        let rows = try #require(try JSONSerialization.jsonObject(with: versions.stdout) as? [[String: Any]])
        #expect(rows.map { $0["kind"] as? String } == ["full", "incremental"])
        for (i, row) in rows.enumerated() {
            let out = bench.dir.file("from-share-\(i).img")
            let restore = try run(TestEnv.bulwark, ["restore", "disk", "--target", share, "--credentials", server.credentialsFile,
                                                    "--version", row["version"] as! String, "--to", out])
            #expect(restore.status == 0, "\(restore.err)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(models[i]), "version \(i) restored from the share byte for byte")
        }
        let verify = try run(TestEnv.bulwark, ["verify", "--target", share, "--credentials", server.credentialsFile])
        #expect(verify.status == 0, "\(verify.out) \(verify.err)")
        // Without credentials, or with a wrong password: a clear error, non-zero, nothing written.
        let none = try run(TestEnv.bulwark, ["versions", "--target", share], environment: ["BULWARK_SMB_PASSWORD": ""])
        #expect(none.status == 64 && none.err.contains("--credentials"), "\(none.err)")
        let wrong = try run(TestEnv.bulwark, ["versions", "--target", share], environment: ["BULWARK_SMB_PASSWORD": "not-the-password"])
        #expect(wrong.status != 0 && !wrong.err.contains("not-the-password"), "\(wrong.err)")
    }
}

/// `bulwark mount --target smb://...`, `files list` and `restore files` reading a point straight
/// from a share (through the target's SMB space).
@Suite(.serialized) struct SMBPointFilesTests {
    @Test func mountListAndRestoreFilesFromAShare() throws {
        guard try SambaServer.available() else { return }
        guard try TestEnv.prerequisite(access("/dev/fuse", R_OK | W_OK) == 0, "/dev/fuse") else { return }
        guard try TestEnv.tools("sfdisk", "mkfs.ext4", "debugfs", "blkid") else { return }
        let server = try SambaServer()
        defer { server.stop() }
        let b = try PointBench()
        let share = server.url(path: "/files")
        let creds = ["--credentials", server.credentialsFile]
        let replicate = try run(TestEnv.bulwark, ["replicate", "--from", b.target, "--to", share] + creds)
        #expect(replicate.status == 0, "\(replicate.err)")
        func point(_ v: String) -> [String] { ["--target", share, "--version", v] + creds }

        let mnt = b.dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        let m = try run(TestEnv.bulwark, ["mount"] + point(b.incremental) + [mnt])
        #expect(m.status == 0, "\(m.err)")
        #expect(try run(sys("cmp"), [mnt + "/disk", b.disk]).status == 0, "the share's point reads as the source disk")
        let u = try run(TestEnv.bulwark, ["umount", mnt])
        #expect(u.status == 0, "\(u.err)")

        let l = try run(TestEnv.bulwark, ["files", "list"] + point(b.incremental) + ["--path", "/etc"])
        #expect(l.status == 0 && l.out.contains("/etc/new.txt"), "\(l.out)\(l.err)")
        let to = b.dir.file("from-share")
        let r = try run(TestEnv.bulwark, ["restore", "files"] + point(b.full) + ["--path", "/data", "--to", to])
        #expect(r.status == 0, "\(r.err)")
        #expect(FileManager.default.contents(atPath: to + "/data/deep/big.txt") == Data(String(repeating: "big line\n", count: 2000).utf8))
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: to + "/data/link") == "../etc/hosts")
        // Nothing of this test stays mounted (other suites' mounts may come and go meanwhile: only
        // the share's images are looked for).
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        #expect(!mounts.split(separator: "\n").contains { $0.hasPrefix("bulwark:") && $0.contains("/files/BulwarkBackup/") } && !mounts.contains(mnt), "\(mounts)")
    }
}
