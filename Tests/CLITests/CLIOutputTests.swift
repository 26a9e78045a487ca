import Foundation
import Testing
import TestSupport

/// What the disk commands print: `info` sizes, and `--json` shapes with typed values.
@Suite struct CLIOutputTests {
    func object(_ r: RunResult) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: r.stdout) as? [String: Any], "JSON object from \(r.out) \(r.err)")
    }

    /// JSONDecoder is strict about types: a number in quotes or "yes" for a boolean fails to decode.
    func decode<T: Decodable>(_ type: T.Type, _ r: RunResult) throws -> T {
        do { return try JSONDecoder().decode(T.self, from: r.stdout) } catch {
            throw TestFailure("\(T.self) from \(r.out): \(error)")
        }
    }

    struct Level: Decodable {
        var virtualSize, fileSize, allocatedSize: UInt64
        var blockSize, logicalSectorSize, physicalSectorSize: Int
        var parentID: String?
    }
    struct Info<P: Decodable>: Decodable {
        struct Entry: Decodable { var properties: P }
        var levels: [Entry]
    }
    struct VHDXProperties: Decodable {
        var hasParent, leaveBlocksAllocated: Bool
        var chunkRatio, logSize, headerSequence: UInt64
    }
    struct VHDProperties: Decodable {
        var savedState: Bool
        var currentSize, originalSize: UInt64
        var dataOffset, maxTableEntries, tableOffset, allocatedBlocks: UInt64?
    }

    @Test func infoShowsAllocatedBesideFileSize() throws {
        let dir = try TempDir()
        let image = dir.file("sparse.img")
        try runChecked(TestEnv.bulwark, ["disk", "create", image, "--size", "64M"])
        try runChecked(TestEnv.bulwark, ["disk", "write", image, "--offset", "1M"], input: Data(repeating: 1, count: 1 << 20))
        let text = try runChecked(TestEnv.bulwark, ["disk", "info", image]).out
        #expect(text.contains("file size"), "\(text)")
        #expect(text.contains("allocated size"), "\(text)")
        let level = try #require(try object(try runChecked(TestEnv.bulwark, ["disk", "info", image, "--json"]))["levels"] as? [[String: Any]]).first
        let file = try #require(level?["fileSize"] as? Int), allocated = try #require(level?["allocatedSize"] as? Int)
        #expect(file == 64 << 20)
        #expect(allocated >= 1 << 20 && allocated < 8 << 20, "a sparse file occupies what was written: \(allocated)")
    }

    @Test func infoAndInfoChainHaveOneShape() throws {
        let dir = try TempDir()
        let base = dir.file("base.vhdx"), child = dir.file("child.vhdx")
        try runChecked(TestEnv.bulwark, ["disk", "create", base, "--size", "8M"])
        try runChecked(TestEnv.bulwark, ["disk", "create", child, "--parent", base])
        let one = try #require(try object(try runChecked(TestEnv.bulwark, ["disk", "info", child, "--json"]))["levels"] as? [[String: Any]])
        let all = try #require(try object(try runChecked(TestEnv.bulwark, ["disk", "info", child, "--chain", "--json"]))["levels"] as? [[String: Any]])
        #expect(one.count == 1 && all.count == 2)
        #expect(Set(one[0].keys) == Set(all[1].keys), "every level has the same keys")
        #expect(all[1]["parentID"] is NSNull, "a base has a null parentID, not a missing one")
        let props = try #require(all[0]["properties"] as? [String: Any])
        #expect(props.keys.allSatisfy { !$0.contains(" ") && $0.first!.isLowercase }, "camelCase keys: \(props.keys.sorted())")
        let chain = try runChecked(TestEnv.bulwark, ["disk", "info", child, "--chain", "--json"])
        let typed = try decode(Info<VHDXProperties>.self, chain)
        #expect(typed.levels.map(\.properties.hasParent) == [true, false])
        struct Levels: Decodable { var levels: [Level] }
        let levels = try decode(Levels.self, chain).levels
        #expect(levels[0].parentID != nil && levels[1].parentID == nil)
    }

    @Test func vhdPropertiesAreTyped() throws {
        let dir = try TempDir()
        let fixed = dir.file("fixed.vhd"), dynamic = dir.file("dynamic.vhd")
        try runChecked(TestEnv.bulwark, ["disk", "create", fixed, "--size", "1M", "--type", "fixed"])
        let created = try runChecked(TestEnv.bulwark, ["disk", "create", dynamic, "--size", "1M", "--json"])
        struct Created: Decodable { var properties: VHDProperties }
        let dynamicProps = try decode(Created.self, created).properties
        #expect(dynamicProps.dataOffset == 512 && dynamicProps.maxTableEntries != nil && dynamicProps.allocatedBlocks == 0)
        let info = try decode(Info<VHDProperties>.self, try runChecked(TestEnv.bulwark, ["disk", "info", fixed, "--json"]))
        #expect(info.levels[0].properties.dataOffset == nil, "a fixed VHD has no data offset: null, not a string")
        #expect(info.levels[0].properties.currentSize == 1 << 20)
    }

    @Test func mapRowsAlwaysHaveEveryKey() throws {
        let dir = try TempDir()
        let image = dir.file("m.vhdx")
        try runChecked(TestEnv.bulwark, ["disk", "create", image, "--size", "8M"])
        let rows = try #require(try JSONSerialization.jsonObject(with: try runChecked(TestEnv.bulwark, ["disk", "map", image, "--all", "--json"]).stdout) as? [[String: Any]])
        #expect(rows.count == 1)
        #expect(Set(rows[0].keys) == ["start", "length", "level", "file", "zero"])
        #expect(rows[0]["level"] is NSNull && rows[0]["file"] is NSNull)
    }

    @Test func sharedOptionsReadTheSameEverywhere() throws {
        func line(_ command: String, _ option: String) throws -> String {
            let help = try runChecked(TestEnv.bulwark, ["disk", command, "--help"]).out
            let lines = help.split(separator: "\n").map(String.init).drop { $0 != "OPTIONS:" }
            let i = try #require(lines.firstIndex { $0.hasPrefix("  \(option) ") }, "\(command) has \(option)")
            // The option's line and its continuation lines (indented, not another option).
            let entry = [lines[i]] + lines[(i + 1)...].prefix { $0.hasPrefix("     ") && !$0.trimmingCharacters(in: .whitespaces).hasPrefix("-") }
            return entry.map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ")
        }
        for option in ["--force", "--children"] {
            let merge = try line("merge", option)
            #expect(try line("resize", option) == merge && (try line("compact", option)) == merge, "\(option)")
        }
        let json = try line("info", "--json")
        for command in ["create", "map", "merge", "reparent", "resize", "convert", "compact", "check"] {
            #expect(try line(command, "--json") == json, "\(command) --json")
        }
    }
}
