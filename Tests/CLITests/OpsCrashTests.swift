import Foundation
import SystemPackage
import Testing
import TestSupport
import VirtualDisk
import Storage

/// Crash injection: the CLI runs in a child process with slowed-down copy loops
/// (`BULWARK_TEST_SLOW_IO`) and is killed with SIGKILL at random moments. After every kill the disk
/// reads correctly (the old or the new state), a re-run finishes with the right bytes, and `check`
/// is clean afterwards.
@Suite(.serialized) struct OpsCrashTests {
    static let kills = 50
    static let slowIO = 2000

    /// Formats whose images can be built in this build, for the operations that work on all of them.
    static var formats: [DiskFormat] { DiskFormat.allCases }

    func expectClean(_ path: FilePath) throws {
        let r = try run(TestEnv.bulwark, ["disk", "check", path.string])
        #expect(r.status == 0, "check \(path.string): \(r.out) \(r.err)")
    }

    @Test func mergeSurvivesKills() throws {
        let formats = Self.formats.filter { $0 != .raw }
        var rng = SeededRandom(seed: 101)
        var kills = 0
        var round = 0
        while kills < Self.kills {
            let format = formats[round % formats.count]
            round += 1
            let dir = try TempDir("ops-crash-merge")
            var model = ChainModel(size: OpsCLI.size)
            let paths = try OpsCLI.buildChain(in: dir.path, format: format, depth: 2, rng: &rng, model: &model)
            let expected = model.view(2)
            let args = ["disk", "merge", paths[2].string, "--into", paths[0].string]
            // Calibrate on an identical chain in another folder.
            let probeDir = try TempDir("ops-crash-probe")
            var probeModel = ChainModel(size: OpsCLI.size)
            var probeRng = rng
            let probe = try OpsCLI.buildChain(in: probeDir.path, format: format, depth: 2, rng: &probeRng, model: &probeModel)
            let span = try OpsCLI.duration(["disk", "merge", probe[2].string, "--into", probe[0].string], slowIO: Self.slowIO)
            var finished = false
            var attempts = 0
            while !finished {
                // A kill after the last step (record removed) leaves nothing to resume.
                if !FileOps.exists(paths[2]), !FileOps.exists(MergeIntent.recordPath(for: paths[2])) { break }
                attempts += 1
                let delay = attempts > 12 ? span * 4 : UInt32.random(in: 0...span, using: &rng)
                let outcome = try OpsCLI.runKilled(args, after: delay, slowIO: Self.slowIO)
                if outcome.killed {
                    kills += 1
                    // Old or merged state, read through the leaf while it exists, else the ancestor.
                    let readable = FileOps.exists(paths[2]) ? paths[2] : paths[0]
                    let bytes = try OpsCLI.readAll(readable)
                    #expect(OpsCLI.same(bytes, expected), "after a kill (\(format), round \(round), delay \(delay)µs) \(readable.string) reads the merged bytes")
                    if FileOps.exists(MergeIntent.recordPath(for: paths[2])) {
                        let r = try run(TestEnv.bulwark, ["disk", "check", readable.string])
                        #expect(r.status == 1 && r.out.contains("pending"), "check names the pending merge: \(r.out)")
                    }
                } else {
                    #expect(outcome.status == 0, "an uninterrupted merge succeeds: \(outcome.err)")
                    finished = outcome.status == 0 || attempts > 20
                }
            }
            #expect(!FileOps.exists(paths[2]) && !FileOps.exists(paths[1]))
            #expect(!FileOps.exists(MergeIntent.recordPath(for: paths[2])))
            #expect(OpsCLI.same(try OpsCLI.readAll(paths[0]), expected))
            try expectClean(paths[0])
        }
        #expect(kills >= Self.kills)
        print("merge: \(kills) kills over \(round) chains (\(formats.map(\.rawValue)))")
    }

    @Test func convertSurvivesKills() throws {
        var rng = SeededRandom(seed: 103)
        let formats = Self.formats
        let dir = try TempDir("ops-crash-convert")
        var model = ChainModel(size: OpsCLI.size)
        let sourceFormat = formats.contains(.vhdx) ? DiskFormat.vhdx : formats.last!
        let src = try OpsCLI.buildChain(in: dir.path, format: sourceFormat, depth: sourceFormat == .raw ? 0 : 1, rng: &rng, model: &model)
        let expected = model.view(src.count - 1)
        let snapshot = try src.map(OpsCLI.bytes)
        var kills = 0
        var round = 0
        while kills < Self.kills {
            let target = formats[round % formats.count]
            let type: DiskType = round % 2 == 0 ? .dynamic : .fixed
            round += 1
            let dst = FilePath(dir.file(OpsCLI.name("out", target)))
            let args = ["disk", "convert", src.last!.string, dst.string, "--type", type.rawValue]
            let span = try OpsCLI.duration(args, slowIO: Self.slowIO)
            try FileOps.remove(dst)
            for _ in 0..<5 {
                let delay = UInt32.random(in: 0...span, using: &rng)
                let outcome = try OpsCLI.runKilled(args, after: delay, slowIO: Self.slowIO)
                if outcome.killed { kills += 1 }
                if FileOps.exists(dst) {
                    #expect(OpsCLI.same(try OpsCLI.readAll(dst), expected), "a visible destination is complete (\(target) \(type), delay \(delay)µs)")
                    try FileOps.remove(dst)
                }
            }
            try runChecked(TestEnv.bulwark, args)
            #expect(OpsCLI.same(try OpsCLI.readAll(dst), expected))
            #expect(OpsCLI.partials(in: dir.path).isEmpty, "stale partial files are removed")
            try expectClean(dst)
            try FileOps.remove(dst)
        }
        #expect(try src.map(OpsCLI.bytes) == snapshot, "the source is never modified")
        print("convert: \(kills) kills over \(round) target configurations (\(formats.map(\.rawValue)))")
    }

    @Test func compactSurvivesKills() throws {
        var rng = SeededRandom(seed: 107)
        var kills = 0
        var round = 0
        while kills < Self.kills {
            let format = Self.formats[round % Self.formats.count]
            round += 1
            let dir = try TempDir("ops-crash-compact")
            var model = ChainModel(size: OpsCLI.size)
            let path = try OpsCLI.buildChain(in: dir.path, format: format, baseType: format == .raw ? .fixed : .dynamic, depth: 0, rng: &rng, model: &model)[0]
            // Whole blocks of stored zeros to release.
            let image = try DiskImages.openLevel(path, writable: true)
            try image.write(rng.bytes(3 << 20), at: 4 << 20)
            try image.flush()
            try image.write([UInt8](repeating: 0, count: 3 << 20), at: 4 << 20)
            try image.close()
            model.write(level: 0, offset: 4 << 20, bytes: [UInt8](repeating: 0, count: 3 << 20))
            let expected = model.view(0)
            let args = ["disk", "compact", path.string]
            let probe = FilePath(dir.file("probe-" + (path.lastComponent?.string ?? "")))
            try FileManager.default.copyItem(atPath: path.string, toPath: probe.string)
            let span = try OpsCLI.duration(["disk", "compact", probe.string], slowIO: Self.slowIO)
            try FileOps.remove(probe)
            for _ in 0..<8 {
                let outcome = try OpsCLI.runKilled(args, after: UInt32.random(in: 0...span, using: &rng), slowIO: Self.slowIO)
                if outcome.killed { kills += 1 }
                #expect(OpsCLI.same(try OpsCLI.readAll(path), expected), "compaction never changes what the disk reads (\(format))")
            }
            try runChecked(TestEnv.bulwark, args)
            #expect(OpsCLI.same(try OpsCLI.readAll(path), expected))
            try expectClean(path)
        }
        print("compact: \(kills) kills over \(round) images (\(Self.formats.map(\.rawValue)))")
    }

    @Test func resizeSurvivesKills() throws {
        var rng = SeededRandom(seed: 109)
        var kills = 0
        var attempts = 0
        var round = 0
        while kills < Self.kills, attempts < 400 {
            let format = Self.formats[round % Self.formats.count]
            round += 1
            let dir = try TempDir("ops-crash-resize")
            var model = ChainModel(size: OpsCLI.size)
            let path = try OpsCLI.buildChain(in: dir.path, format: format, depth: 0, rng: &rng, model: &model)[0]
            let expected = model.view(0)
            let newSize = UInt64(OpsCLI.size) * 4
            let args = ["disk", "resize", path.string, "--size", String(newSize)]
            let probe = FilePath(dir.file("probe-" + (path.lastComponent?.string ?? "")))
            try FileManager.default.copyItem(atPath: path.string, toPath: probe.string)
            let span = try OpsCLI.duration(["disk", "resize", probe.string, "--size", String(newSize)], slowIO: Self.slowIO)
            try FileOps.remove(probe)
            for _ in 0..<10 {
                attempts += 1
                let outcome = try OpsCLI.runKilled(args, after: UInt32.random(in: 0...span, using: &rng), slowIO: Self.slowIO)
                if outcome.killed { kills += 1 }
                let bytes = try OpsCLI.readAll(path)
                #expect(bytes.count == OpsCLI.size || UInt64(bytes.count) == newSize, "old or new size (\(format))")
                #expect(OpsCLI.same(Array(bytes.prefix(OpsCLI.size)), expected), "the data survives (\(format))")
                #expect(OpsCLI.zeros(bytes, from: OpsCLI.size), "new space reads as zeros")
            }
            try runChecked(TestEnv.bulwark, args)
            #expect(try DiskImages.openLevel(path).virtualSize == newSize)
            // A kill between the VHD end footer and its copy at offset 0 leaves the copy stale; the
            // re-run (same size) completes it, so the chain must now check clean.
            try expectClean(path)
        }
        print("resize: \(kills) kills in \(attempts) runs (\(Self.formats.map(\.rawValue)))")
        #expect(kills >= Self.kills / 2, "most kills land while the process runs (\(kills) of \(attempts))")
    }
}
