import Storage
import ArgumentParser
import SystemPackage
import VirtualDisk

struct DiskRead: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read",
        abstract: "Read virtual bytes through the differencing chain to standard output or a file."
    )

    @Argument(help: "The image (a chain leaf).") var path: String
    @Option(parsing: .unconditional, help: ArgumentHelp("Byte offset to start at: \(Size.forms).", valueName: "size"), transform: Size.parse)
    var offset: Size?
    @Option(parsing: .unconditional, help: ArgumentHelp("Number of bytes (default: to the end of the disk).", valueName: "size"), transform: Size.parse)
    var length: Size?
    @Option(name: .shortAndLong, help: "Write to this file instead of standard output.") var output: String?
    @Option(help: "Open PATH as vhd, vhdx or raw (default: detected; a .vhd/.vhdx name needs its signature).") var format: DiskFormat?

    func run() throws {
        let chain = try DiskChain.open(FilePath(path), format: format)
        defer { try? chain.close() }
        try copy(chain)
        // Read through a running or pending merge (`DiskChain.open`); afterwards, check that no merge
        // started meanwhile on what was read alone (an ancestor), so mixed bytes never pass silently.
        try PendingMergeChain.verify(chain)
    }

    func copy(_ chain: DiskChain) throws {
        let image = chain.leaf
        // Both checks before any arithmetic: a huge offset or length is refused, never overflows.
        let start = offset?.bytes ?? 0
        guard start <= image.virtualSize else {
            throw DiskError.outOfRange(path: path, offset: start, length: length?.bytes ?? 0, virtualSize: image.virtualSize)
        }
        let count = length?.bytes ?? (image.virtualSize - start)
        guard count <= image.virtualSize - start else {
            throw DiskError.outOfRange(path: path, offset: start, length: count, virtualSize: image.virtualSize)
        }
        let sink: FileDescriptor
        if let output {
            sink = try FileDescriptor.open(FilePath(output), .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } else {
            sink = .standardOutput
        }
        defer { if output != nil { try? sink.close() } }
        let progress = output != nil && count >= 64 << 20 ? ProgressBar("read") : nil
        defer { progress?.finish() }
        // A regular file keeps holes as holes; a pipe or a device gets the zeros written out.
        let sparse = output != nil && LocalFileSystem().kind(of: FilePath(output!)) == .file
        let name = output ?? "standard output"
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        let reader = ChainReader(chain, ranges: [start..<start + count])
        do {
            try reader.forEach(progress: progress?.handler) { chunk in
                switch chunk {
                case let .data(at, bytes):
                    if sparse {
                        _ = try sink.writeAll(toAbsoluteOffset: Int64(at - start), bytes)
                    } else {
                        _ = try sink.writeAll(bytes)
                    }
                case let .hole(range):
                    guard !sparse else { return }
                    var left = UInt64(range.count)
                    while left > 0 {
                        let n = Int(min(left, UInt64(zeros.count)))
                        _ = try sink.writeAll(UnsafeRawBufferPointer(rebasing: zeros[..<n]))
                        left -= UInt64(n)
                    }
                }
            }
            if sparse { try sink.resize(to: Int64(count)) }
        } catch let e as Errno {
            throw StorageError.io(path: name, operation: "write", errno: e)
        }
    }
}
