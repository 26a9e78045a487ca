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
    @OptionGroup var children: ChildrenOptions
    @OptionGroup var printing: OutputOptions

    func run() throws {
        let bar = ProgressBar("compact")
        defer { bar.finish() }
        let result = try CompactOperation.compact(path: FilePath(path), children: children.filePaths, force: children.force, progress: bar.handler)
        bar.finish()
        if printing.json { try Output.json(result); return }
        print("\(result.path): reclaimed \(ByteCount.format(result.bytesReclaimed)) (\(result.bytesReclaimed) bytes)")
    }
}
