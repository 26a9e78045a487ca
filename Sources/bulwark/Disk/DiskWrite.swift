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
    @Option(help: "Virtual byte offset to write at.") var offset: Size
    @Option(name: .shortAndLong, help: "Read the bytes from this file (default: standard input).") var input: String?
    @Option(name: .customLong("children"), parsing: .upToNextOption, help: "Other images or folders that may hold children of this disk.") var children: [String] = []
    @Flag(help: "Write even if the disk has children (they break).") var force = false

    func run() throws {
        let source: FileDescriptor
        do {
            source = try input.map { try FileDescriptor.open(FilePath($0), .readOnly) } ?? .standardInput
        } catch let e as Errno {
            throw StorageError.io(path: input ?? "-", operation: "open", errno: e)
        }
        defer { if input != nil { try? source.close() } }
        let bar = ProgressBar("write")
        defer { bar.finish() }
        try Hints.adding {
            _ = try WriteOperation.write(into: FilePath(path), at: offset.bytes, from: source, inputName: input ?? "standard input",
                                         options: WriteOptions(children: children.map { FilePath($0) }, force: force),
                                         progress: bar.handler)
        }
    }
}
