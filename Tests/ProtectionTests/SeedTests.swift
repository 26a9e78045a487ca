import Foundation
import Protection
import Replication
import Storage
import SystemPackage
import Targets
import Testing
import TestSupport

/// `bulwark seed export` / `seed import`: initial replication over removable media. A seed holds a
/// point and its parents; importing it publishes them whole and verified, so a later `replicate`
/// sends only what the seed lacked; damaged, truncated and hostile seeds are refused.
@Suite struct SeedTests {
    static func bulwark(_ args: [String], state: String) throws -> RunResult {
        try run(TestEnv.bulwark, args, environment: ["BULWARK_STATE_DIR": state])
    }

    static func json(_ r: RunResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any], "\(r.out) \(r.err)")
    }

    /// The hidden `.partial` files and version folders under a target's machine folder.
    static func partials(_ target: String) -> [String] {
        let root = URL(fileURLWithPath: target)
        guard let walk = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil) else { return [] }
        return walk.compactMap { ($0 as? URL)?.lastPathComponent }.filter { $0.hasSuffix(".partial") }
    }

    /// A ustar archive by hand (the tests need entries no careful writer produces).
    static func ustar(_ entries: [(String, [UInt8])]) -> [UInt8] {
        var out: [UInt8] = []
        for (name, data) in entries {
            var h = [UInt8](repeating: 0, count: 512)
            func put(_ s: String, _ at: Int) { for (i, b) in s.utf8.enumerated() { h[at + i] = b } }
            put(name, 0)
            put("0000644", 100); put("0000000", 108); put("0000000", 116)
            put(String(format: "%011o", data.count), 124)
            put(String(format: "%011o", 0), 136)
            put("        ", 148)
            h[156] = UInt8(ascii: "0")
            put("ustar", 257); put("00", 263)
            let sum = h.reduce(0) { $0 + Int($1) }
            put(String(format: "%06o", sum), 148); h[154] = 0; h[155] = UInt8(ascii: " ")
            out += h + data + [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
        }
        return out + [UInt8](repeating: 0, count: 1024)
    }

    @Test func aSeedCarriesAPointAndItsParentsAndReplicationContinuesFromIt() async throws {
        let bench = try BackupBench(size: 16 << 20, seed: 91)
        try bench.write(bench.rng.bytes(6 << 20), at: 0)
        var versions: [String] = []
        for day in 0..<3 {
            try bench.scribble(writes: 2)
            versions.append(try await bench.backup(at: .day(day)).version)
        }
        let chain = versions
        try await offPool { try Self.seedRoundTrip(bench, chain) }
    }

    static func seedRoundTrip(_ bench: BackupBench, _ versions: [String]) throws {
        let seed = bench.dir.file("site.seed")
        // Export the middle point: it and its parent.
        let export = try bulwark(["seed", "export", "--target", bench.targetPath, "--machine", "guest", "--version", versions[1], "--to", seed, "--json"], state: bench.state)
        #expect(export.status == 0, "\(export.err)")
        #expect(try json(export)["versions"] as? [String] == Array(versions[0...1]))
        #expect(!FileManager.default.fileExists(atPath: bench.dir.file(".site.seed.partial")))
        let listed = try runChecked("/usr/bin/tar", ["-tf", seed]).out.split(separator: "\n").map(String.init)
        #expect(listed == ["bulwark-seed.json",
                           "guest/\(versions[0])/manifest.json", "guest/\(versions[0])/disk0.vhdx",
                           "guest/\(versions[1])/manifest.json", "guest/\(versions[1])/disk0.vhdx"])
        // An existing file is never overwritten.
        let again = try bulwark(["seed", "export", "--target", bench.targetPath, "--machine", "guest", "--to", seed], state: bench.state)
        #expect(again.status == 8 && again.err.contains(seed), "\(again.err)")
        #expect(try json(export)["fileBytes"] as? Int == (try FileManager.default.attributesOfItem(atPath: seed)[.size] as? Int))

        // Import into an empty target: two points, verified, restored byte for byte.
        let site = bench.dir.file("dr-site")
        let imported = try bulwark(["seed", "import", seed, "--target", site, "--json"], state: bench.state)
        #expect(imported.status == 0, "\(imported.err)")
        #expect(try json(imported)["imported"] as? [String] == Array(versions[0...1]))
        let dest = LocalDirectoryTarget(path: FilePath(site))
        let points = RecoveryPoints(target: dest, machine: "guest")
        #expect(try points.listing().map(\.version) == Array(versions[0...1]))
        let shown = try bulwark(["versions", "--target", site, "--json"], state: bench.state)
        let shownRows = try JSONSerialization.jsonObject(with: shown.stdout) as? [Any]
        #expect(shown.status == 0 && shownRows?.count == 2, "\(shown.out)")
        #expect(try VerifyOperation.run(target: dest, machine: "guest", options: VerifyOptions()).allSatisfy(\.ok))
        let restored = bench.dir.file("restored.img")
        let restore = try bulwark(["restore", "disk", "--target", site, "--version", versions[1], "--to", restored], state: bench.state)
        #expect(restore.status == 0, "\(restore.err)")
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: restored))) == bench.read(versions[1]))

        // Replication sends only the point the seed lacked.
        let newest = try bench.points.manifest(versions[2])
        let replicate = try bulwark(["replicate", "--from", bench.targetPath, "--to", site, "--json"], state: bench.state)
        #expect(replicate.status == 0, "\(replicate.err)")
        let rows = try #require(try JSONSerialization.jsonObject(with: replicate.stdout) as? [[String: Any]])
        #expect(rows.first?["shipped"] as? [String] == [versions[2]])
        #expect(rows.first?["bytesSent"] as? Int == Int(newest.disks.reduce(0) { $0 + $1.imageSize }))
        #expect(try VerifyOperation.run(target: dest, machine: "guest", options: VerifyOptions()).allSatisfy(\.ok))

        // Importing again changes nothing.
        let before = try FileManager.default.subpathsOfDirectory(atPath: site).filter { !$0.contains("lease") && !$0.contains("catalog") }.sorted()
        let twice = try bulwark(["seed", "import", seed, "--target", site, "--json"], state: bench.state)
        #expect(twice.status == 0, "\(twice.err)")
        #expect(try json(twice)["imported"] as? [String] == [] && json(twice)["skipped"] as? [String] == Array(versions[0...1]))
        #expect(try FileManager.default.subpathsOfDirectory(atPath: site).filter { !$0.contains("lease") && !$0.contains("catalog") }.sorted() == before)

        // A truncated seed: refused, nothing of the cut point visible.
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: seed)))
        let cut = bench.dir.file("cut.seed")
        try Data(bytes.prefix(bytes.count * 3 / 4)).write(to: URL(fileURLWithPath: cut))
        let other = bench.dir.file("other-site")
        let truncated = try bulwark(["seed", "import", cut, "--target", other], state: bench.state)
        #expect(truncated.status != 0)
        #expect(truncated.err.contains(cut) && truncated.err.contains("guest/"), "\(truncated.err)")
        let otherPoints = RecoveryPoints(target: LocalDirectoryTarget(path: FilePath(other)), machine: "guest")
        let afterCut = try otherPoints.listing().map(\.version)
        #expect(afterCut.count < 2, "the cut point is not published")
        #expect(partials(other).isEmpty, "\(partials(other))")
        #expect(try otherPoints.incompleteVersions().isEmpty, "the cut point's folder is removed")

        // A flipped byte in the second point's image: that point is refused, never published.
        var flipped = bytes
        let name = Array("guest/\(versions[1])/disk0.vhdx".utf8)
        var found: Int?
        for at in stride(from: 0, to: flipped.count - 512, by: 512) where flipped[at + name.count] == 0 {
            if Array(flipped[at..<(at + name.count)]) == name { found = at }
        }
        let block = try #require(found)
        flipped[block + 512 + 100_000] ^= 0x40
        let bad = bench.dir.file("bad.seed")
        try Data(flipped).write(to: URL(fileURLWithPath: bad))
        let third = bench.dir.file("third-site")
        let damaged = try bulwark(["seed", "import", bad, "--target", third], state: bench.state)
        #expect(damaged.status == 4, "\(damaged.err)")
        #expect(damaged.err.contains(bad) && damaged.err.contains(versions[1]) && damaged.err.contains("SHA-256"), "\(damaged.err)")
        let thirdPoints = RecoveryPoints(target: LocalDirectoryTarget(path: FilePath(third)), machine: "guest")
        #expect(try thirdPoints.listing().map(\.version) == [versions[0]], "the good parent is published, the bad point is not")
        #expect(partials(third).isEmpty)
        #expect(try thirdPoints.incompleteVersions().isEmpty)
        // The damaged seed leaves a target with the points unchanged.
        let skipped = try bulwark(["seed", "import", bad, "--target", site, "--json"], state: bench.state)
        #expect(skipped.status == 0, "points already there are skipped unread: \(skipped.err)")
        #expect(try points.listing().map(\.version) == versions)
    }

    @Test func hostileArchivesAreRefused() async throws {
        let dir = try TempDir("seed-hostile")
        let header = SeedHeader(machine: "guest", versions: ["2026-11-22T192005Z"], source: "/x", created: "2026-11-22T19:20:05Z", creator: "test", imageBytes: 0)
        let headerBytes = try RecoveryPoints.encode(header)
        for name in ["../x", "/etc/x", "guest/2026-11-22T192005Z/../../x", "guest/2026-11-22T192005Z/evil.sh", "other/2026-11-22T192005Z/manifest.json"] {
            let file = dir.file("hostile.seed")
            try? FileManager.default.removeItem(atPath: file)
            try Data(Self.ustar([("bulwark-seed.json", headerBytes), (name, Array("boom".utf8))])).write(to: URL(fileURLWithPath: file))
            let site = dir.file("site")
            let r = try Self.bulwark(["seed", "import", file, "--target", site], state: dir.file("state"))
            #expect(r.status == 4, "\(name): \(r.err)")
            #expect(r.err.contains(name), "\(name): \(r.err)")
            #expect(!FileManager.default.fileExists(atPath: dir.file("x")))
            #expect(Self.partials(site).isEmpty)
        }
        // Not a seed at all.
        let plain = dir.file("plain.tar")
        try Data(Self.ustar([("README", Array("hi".utf8))])).write(to: URL(fileURLWithPath: plain))
        let r = try Self.bulwark(["seed", "import", plain, "--target", dir.file("site")], state: dir.file("state"))
        #expect(r.status == 4 && r.err.contains("not a Bulwark seed"), "\(r.err)")
    }

    @Test func aSeedGoesOntoAShareAndComesBackFromIt() async throws {
        guard try SambaServer.available() else { return }
        let bench = try BackupBench(size: 12 << 20, seed: 93)
        try bench.write(bench.rng.bytes(5 << 20), at: 0)
        var versions: [String] = []
        for day in 0..<3 {
            try bench.scribble(writes: 2)
            versions.append(try await bench.backup(at: .day(day)).version)
        }
        let chain = versions
        try await offPool { try Self.shareBody(bench, chain) }
    }

    static func shareBody(_ bench: BackupBench, _ versions: [String]) throws {
        let server = try SambaServer()
        defer { server.stop() }
        let url = server.url(path: "/seeded")
        let seed = bench.dir.file("share.seed")
        // The seed carries the first two points; the third goes by replication afterwards.
        #expect(try bulwark(["seed", "export", "--target", bench.targetPath, "--machine", "guest", "--version", versions[1], "--to", seed], state: bench.state).status == 0)
        // A damaged seed first: nothing of the bad point on the server.
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: seed)))
        bytes[bytes.count - 1024 - 4096] ^= 0x01
        let bad = bench.dir.file("bad.seed")
        try Data(bytes).write(to: URL(fileURLWithPath: bad))
        let refused = try bulwark(["seed", "import", bad, "--target", url, "--credentials", server.credentialsFile], state: bench.state)
        #expect(refused.status == 4, "\(refused.err)")
        let files = try server.serverFiles()
        #expect(files.allSatisfy { !$0.hasSuffix(".partial") && !$0.contains("/\(versions[1])") }, "\(files)")
        // The good seed: the missing point is published, verified on the share.
        let imported = try bulwark(["seed", "import", seed, "--target", url, "--credentials", server.credentialsFile, "--json"], state: bench.state)
        #expect(imported.status == 0, "\(imported.err)")
        #expect(try json(imported)["imported"] as? [String] == [versions[1]] && json(imported)["skipped"] as? [String] == [versions[0]])
        let verify = try bulwark(["verify", "--target", url, "--credentials", server.credentialsFile], state: bench.state)
        #expect(verify.status == 0, "\(verify.err)")
        // Replication after the seed sends only the newer point.
        let rep = try bulwark(["replicate", "--from", bench.targetPath, "--to", url, "--credentials", server.credentialsFile, "--json"], state: bench.state)
        #expect(rep.status == 0, "\(rep.err)")
        let results = try JSONSerialization.jsonObject(with: rep.stdout) as? [[String: Any]]
        #expect(results?.first?["shipped"] as? [String] == [versions[2]], "\(rep.out)")
        let third = try bench.points.manifest(versions[2]).storedBytes
        #expect((results?.first?["bytesSent"] as? Int).map(UInt64.init) == third, "only the third point's images went over the wire")
        // The share as a source: its seed is the same points, byte for byte.
        let back = bench.dir.file("back.seed")
        let export = try bulwark(["seed", "export", "--target", url, "--credentials", server.credentialsFile, "--machine", "guest", "--to", back], state: bench.state)
        #expect(export.status == 0, "\(export.err)")
        let local = bench.dir.file("local-site")
        #expect(try bulwark(["seed", "import", back, "--target", local], state: bench.state).status == 0)
        for v in versions {
            let a = try Data(contentsOf: URL(fileURLWithPath: bench.points.pointFolder(v).appending("disk0.vhdx").string))
            let b = try Data(contentsOf: URL(fileURLWithPath: RecoveryPoints(target: LocalDirectoryTarget(path: FilePath(local)), machine: "guest").pointFolder(v).appending("disk0.vhdx").string))
            #expect(a == b, "\(v) came back the same")
        }
    }
}
