import ArgumentParser
import SystemPackage
import VirtualDisk

struct DiskMap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "map",
        abstract: "List the allocated ranges of a disk and the chain level that holds each."
    )

    @Argument(help: "The image (a chain leaf).") var path: String
    @OptionGroup var printing: OutputOptions
    @Flag(help: "Also list ranges that read as zeros.") var all = false

    struct Row: Encodable {
        var start: UInt64
        var length: UInt64
        /// 0 = the leaf; nil = no level holds it (zeros).
        var level: Int?
        var file: String?
        var zero: Bool

        /// `level` and `file` are null for zeros, never missing: every row has the same keys.
        enum CodingKeys: String, CodingKey { case start, length, level, file, zero }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(start, forKey: .start)
            try c.encode(length, forKey: .length)
            try c.encode(level, forKey: .level)
            try c.encode(file, forKey: .file)
            try c.encode(zero, forKey: .zero)
        }
    }

    func run() throws {
        let chain = try DiskChain.open(FilePath(path))
        defer { try? chain.close() }
        let rows = try chain.map().filter { all || !$0.isZero }.map {
            Row(start: $0.range.lowerBound, length: UInt64($0.range.count), level: $0.level,
                file: $0.level.map { chain.levels[$0].path.string }, zero: $0.isZero)
        }
        if printing.json { try Output.json(rows); return }
        print(Output.table(["START", "LENGTH", "LEVEL", "DATA", "FILE"], rows.map {
            [String($0.start), String($0.length), $0.level.map(String.init) ?? "-", $0.zero ? "zero" : "data", $0.file ?? "-"]
        }))
    }
}
