import ArgumentParser
import SystemPackage
import VirtualDisk

struct DiskRead: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read",
        abstract: "Read virtual bytes through the differencing chain to standard output or a file."
    )

    @Argument(help: "The image (a chain leaf).") var path: String
    @Option(help: "Byte offset to start at.") var offset: Size?
    @Option(help: "Number of bytes (default: to the end of the disk).") var length: Size?
    @Option(name: .shortAndLong, help: "Write to this file instead of standard output.") var output: String?

    func run() throws {
        try Hints.adding(read)
    }

    /// Reads through a running or pending merge (`DiskChain.open`), and checks afterwards that no merge
    /// started meanwhile on what was read alone (an ancestor), so mixed bytes never pass silently.
    func read() throws {
        let chain = try DiskChain.open(FilePath(path))
        defer { try? chain.close() }
        try copy(chain)
        try PendingMergeChain.verify(chain)
    }

    func copy(_ chain: DiskChain) throws {
        let image = chain.leaf
        let start = offset?.bytes ?? 0
        guard start <= image.virtualSize else {
            throw DiskError.outOfRange(path: path, offset: start, length: 0, virtualSize: image.virtualSize)
        }
        let count = length?.bytes ?? (image.virtualSize - start)
        try image.checkRange(offset: start, length: Int(count))
        let sink: FileDescriptor
        if let output {
            sink = try FileDescriptor.open(FilePath(output), .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } else {
            sink = .standardOutput
        }
        defer { if output != nil { try? sink.close() } }
        let progress = output != nil && count >= 64 << 20 ? ProgressBar("read") : nil
        defer { progress?.finish() }
        if let output, SparseRead.isRegularFile(sink) {
            try SparseRead.copy(chain, start: start, count: count, to: sink, path: output, progress: progress)
            return
        }
        try ChunkedCopy.stream(count: count, chunk: 4 << 20) { buffer, done in
            try image.read(into: buffer, at: start + done)
            _ = try sink.writeAll(UnsafeRawBufferPointer(buffer))
            progress?.update(done + UInt64(buffer.count), count)
        }
    }
}

/// Runs `body` over consecutive chunks of one reusable, page-aligned buffer.
enum ChunkedCopy {
    static func stream(count: UInt64, chunk: Int, _ body: (UnsafeMutableRawBufferPointer, UInt64) throws -> Void) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        var done: UInt64 = 0
        while done < count {
            let n = Int(min(UInt64(chunk), count - done))
            try body(UnsafeMutableRawBufferPointer(rebasing: buffer[..<n]), done)
            done += UInt64(n)
        }
    }
}
