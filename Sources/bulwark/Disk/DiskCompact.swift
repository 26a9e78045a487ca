import ArgumentParser
import SystemPackage
import VirtualDisk
import Storage

struct DiskCompact: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compact",
        abstract: "Release blocks that hold only zeros (in place, crash-safe).",
        discussion: "What the disk reads never changes. A disk that is the parent of differencing images is refused unless --force (they are re-pointed if its identity changes)."
    )

    @Argument(help: "The image.") var path: String
    @Option(name: .customLong("children"), parsing: .upToNextOption, help: "Other images or folders that may hold children of this disk.") var children: [String] = []
    @Flag(help: "Compact even if the disk has children.") var force = false
    @Flag(help: "Print the result as JSON.") var json = false

    func run() throws {
        let bar = ProgressBar("compact")
        defer { bar.finish() }
        let result = try CompactOperation.compact(path: FilePath(path), children: children.map { FilePath($0) }, force: force, progress: bar.handler)
        bar.finish()
        if json { try Output.json(result); return }
        print("\(result.path): reclaimed \(ByteCount.format(result.bytesReclaimed)) (\(result.bytesReclaimed) bytes)")
    }
}
