import Storage
import ArgumentParser
import SystemPackage
import VirtualDisk

struct DiskWrite: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write",
        abstract: "Write bytes from standard input or a file into an image at a virtual offset.",
        discussion: "Writes go to the image named (the leaf); a differencing image copies what it needs from its parents and never changes them."
    )

    @Argument(help: "The image to write into.") var path: String
    @Option(parsing: .unconditional, help: ArgumentHelp("Virtual byte offset to write at: \(Size.forms).", valueName: "size"), transform: Size.parse)
    var offset: Size
    @Option(name: .shortAndLong, help: "Read the bytes from this file (default: standard input).") var input: String?

    func run() throws {
        let source: FileDescriptor
        do {
            source = try input.map { try FileDescriptor.open(FilePath($0), .readOnly) } ?? .standardInput
        } catch let e as Errno {
            throw StorageError.io(path: input ?? "-", operation: "open", errno: e)
        }
        defer { if input != nil { try? source.close() } }
        let chain = try DiskChain.open(FilePath(path), writable: true)
        defer { try? chain.close() }
        let image = chain.leaf
        guard offset.bytes <= image.virtualSize else {
            throw DiskError.outOfRange(path: path, offset: offset.bytes, length: 0, virtualSize: image.virtualSize)
        }
        let chunk = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        var position = offset.bytes
        while true {
            // Fill the buffer completely (pipes deliver short reads) so writes stay large.
            var filled = 0
            while filled < chunk {
                let n: Int
                do {
                    n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]))
                } catch let e as Errno {
                    throw StorageError.io(path: input ?? "standard input", operation: "read", errno: e)
                }
                if n == 0 { break }
                filled += n
            }
            if filled == 0 { break }
            try image.write(UnsafeRawBufferPointer(rebasing: buffer[..<filled]), at: position)
            position += UInt64(filled)
            if filled < chunk { break }
        }
        try image.flush()
    }
}
