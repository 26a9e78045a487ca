import Foundation
import Glibc

/// A raw disk (GPT, one ext4 partition made with `mkfs.ext4 -d`: modes, an owner, a setuid file, an
/// old mtime, symbolic links, an xattr) backed up with a policy to a local target: `full`; then a
/// file added and one removed with debugfs and backed up again: `incremental`.
public final class PointBench: @unchecked Sendable {
    public let dir: TempDir
    public var disk: String { dir.file("disk.img") }
    public var target: String { dir.file("target") }
    public var env: [String: String] { ["BULWARK_STATE_DIR": dir.file("state")] }
    public var full = "", incremental = ""
    /// The partition's start on the disk.
    public static let offset = 1 << 20

    public init() throws {
        dir = try TempDir("point-files")
        let src = dir.file("src")
        let fm = FileManager.default
        for d in ["etc", "data/deep", "empty"] { try fm.createDirectory(atPath: src + "/" + d, withIntermediateDirectories: true) }
        try Data("hosts file\n".utf8).write(to: URL(fileURLWithPath: src + "/etc/hosts"))
        try Data(String(repeating: "big line\n", count: 2000).utf8).write(to: URL(fileURLWithPath: src + "/data/deep/big.txt"))
        try Data("#!/bin/sh\n".utf8).write(to: URL(fileURLWithPath: src + "/data/run.sh"))
        try check(chmod(src + "/etc/hosts", 0o640) == 0)
        try check(chown(src + "/etc/hosts", 12, 34) == 0)
        try check(chmod(src + "/data/run.sh", 0o4755) == 0)
        try check(chmod(src + "/data/deep", 0o750) == 0)
        try check(symlink("../etc/hosts", src + "/data/link") == 0)
        try check(symlink("/etc/passwd", src + "/data/abs") == 0)
        try runChecked(sys("touch"), ["-h", "-d", "2020-01-02 03:04:05 UTC", src + "/etc/hosts", src + "/data/link"])
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: { fm.createFile(atPath: disk, contents: nil); return disk }()))
        try h.truncate(atOffset: 40 << 20)
        try h.close()
        try runChecked(sys("sfdisk"), ["-q", disk], input: Data("label: gpt\nstart=2048, size=60000, type=L\n".utf8))
        let part = dir.file("part.img")
        fm.createFile(atPath: part, contents: nil)
        try runChecked(sys("truncate"), ["-s", String(60000 * 512), part])
        try runChecked(sys("mkfs.ext4"), ["-q", "-d", src, part])
        try runChecked(sys("debugfs"), ["-w", "-R", "ea_set /etc/hosts user.note hello", part])
        try runChecked(sys("dd"), ["if=\(part)", "of=\(disk)", "bs=512", "seek=2048", "conv=notrunc", "status=none"])
        try writeTestPolicy(dir.file("policy.yaml"), name: "files", machine: "guest", sources: ["disk: \(disk)"], target: target)
        full = try backup()
        // The change: a new file, a removed one (debugfs on the partition, never mounted).
        try Data("new\n".utf8).write(to: URL(fileURLWithPath: dir.file("new.txt")))
        let fs = "\(disk)?offset=\(Self.offset)"
        try runChecked(sys("debugfs"), ["-w", "-R", "write \(dir.file("new.txt")) /etc/new.txt", fs])
        try runChecked(sys("debugfs"), ["-w", "-R", "rm /data/deep/big.txt", fs])
        sleep(1)
        incremental = try backup()
    }

    public func backup() throws -> String {
        try backupPoint(policy: dir.file("policy.yaml"), environment: env, machineFolder: target + "/BulwarkBackup/guest")
    }

    public func bulwark(_ args: [String]) throws -> RunResult {
        try run(TestEnv.bulwark, args, environment: env)
    }

    public func point(_ v: String) -> [String] { ["--target", target, "--version", v] }

    private func check(_ ok: Bool) throws { if !ok { throw TestFailure("fixture: errno \(errno)") } }
}

/// Runs one backup job of `policy` (`bulwark backup start`) and returns the newest version in the
/// machine's folder on the target.
public func backupPoint(policy: String, environment: [String: String], machineFolder: String) throws -> String {
    let r = try run(TestEnv.bulwark, ["backup", "start", "--policy", policy], environment: environment)
    guard r.status == 0 else { throw TestFailure("backup: \(r.err)") }
    guard let newest = try FileManager.default.contentsOfDirectory(atPath: machineFolder).filter({ $0.hasPrefix("20") }).sorted().last else {
        throw TestFailure("backup: no point in \(machineFolder)")
    }
    return newest
}

/// Writes the policy a test fixture backs up with: `sources` as YAML list items (`disk: PATH`,
/// `files: [PATH]`), read as they are (provider none, crash-consistent allowed).
public func writeTestPolicy(_ path: String, name: String, machine: String, sources: [String], target: String, keep: String = "{last: 10}") throws {
    try """
    name: \(name)
    machine: \(machine)
    sources:
    \(sources.map { "  - " + $0 }.joined(separator: "\n"))
    consistency:
      provider: none
      allow-crash-consistent: true
    target: \(target)
    keep: \(keep)
    """.write(toFile: path, atomically: true, encoding: .utf8)
}
