import ArgumentParser
import SystemPackage
import VirtualDisk
import Storage

struct DiskResize: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resize",
        abstract: "Change a disk's virtual size (expand; shrink only where the cut-off tail holds no data).",
        discussion: "New space reads as zeros. A disk that is the parent of differencing images is refused (they would break) unless --force."
    )

    @Argument(help: "The image.") var path: String
    @Option(help: "The new virtual size, e.g. 64G.") var size: Size
    @Option(name: .customLong("children"), parsing: .upToNextOption, help: "Other images or folders that may hold children of this disk.") var children: [String] = []
    @Flag(help: "Resize even if the disk has children.") var force = false
    @Flag(help: "Print the result as JSON.") var json = false

    func run() throws {
        let result = try ResizeOperation.resize(path: FilePath(path), to: size.bytes, children: children.map { FilePath($0) }, force: force)
        if json { try Output.json(result); return }
        print("\(result.path): \(ByteCount.format(result.oldSize)) -> \(ByteCount.format(result.newSize)) (\(result.newSize) bytes)")
    }
}
