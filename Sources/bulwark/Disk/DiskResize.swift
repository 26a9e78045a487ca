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
    @Option(parsing: .unconditional, help: ArgumentHelp("The new virtual size: \(Size.forms).", valueName: "size"), transform: Size.parse)
    var size: Size
    @OptionGroup var children: ChildrenOptions
    @OptionGroup var printing: OutputOptions

    func validate() throws {
        if size.bytes == 0 { throw ValidationError("--size must be larger than zero") }
    }

    func run() throws {
        let result = try ResizeOperation.resize(path: FilePath(path), to: size.bytes, children: children.filePaths, force: children.force)
        if printing.json { try Output.json(result); return }
        print("\(result.path): \(ByteCount.format(result.oldSize)) -> \(ByteCount.format(result.newSize)) (\(result.newSize) bytes)")
    }
}
