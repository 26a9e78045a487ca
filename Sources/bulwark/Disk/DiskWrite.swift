#if canImport(Glibc)
import Glibc
#endif
import Storage
import ArgumentParser
import SystemPackage
import VirtualDisk

struct DiskWrite: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write",
        abstract: "Write bytes from standard input or a file into an image at a virtual offset.",
        discussion: "Writes go to the image named (the leaf); a differencing image copies what it needs from its parents and never changes them. An image that is the parent of differencing disks is refused (writing it would break them) unless --force; they are looked for in its folder and in the --children given. All-zero input where the disk already reads zeros is not stored."
    )

    @Argument(help: "The image to write into.") var path: String
    @Option(parsing: .unconditional, help: ArgumentHelp("Virtual byte offset to write at: \(Size.forms).", valueName: "size"), transform: Size.parse)
    var offset: Size
    @Option(name: .shortAndLong, help: "Read the bytes from this file (default: standard input).") var input: String?
    @OptionGroup var children: ChildrenOptions

    func run() throws {
        let source: FileDescriptor
        do {
            source = try input.map { try FileDescriptor.open(FilePath($0), .readOnly) } ?? .standardInput
        } catch let e as Errno {
            throw StorageError.io(path: input ?? "-", operation: "open", errno: e)
        }
        defer { if input != nil { try? source.close() } }
        // A bar for long writes only (a file input of 64 MiB or more), as `read` does.
        var st = stat()
        let long = fstat(source.rawValue, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG && st.st_size >= 64 << 20
        let bar = long ? ProgressBar("write") : nil
        defer { bar?.finish() }
        _ = try WriteOperation.write(into: FilePath(path), at: offset.bytes, from: source, inputName: input ?? "standard input",
                                     options: WriteOptions(children: children.filePaths, force: children.force),
                                     progress: bar?.handler)
    }
}
