import SystemPackage
import Storage

/// Writing a chain onto a block device (a restore onto a disk, `convert IMAGE /dev/sdX`): the device
/// gets every virtual byte, holes included (written as zeros, or zeroed by the device where it can),
/// since it still holds whatever it held before. Refused unless the caller allowed a device
/// destination, and when the device is smaller than the disk.
enum DeviceWrite {
    static func convert(source: FilePath, device: FilePath, options: ConvertOptions, progress: ProgressReporter?) throws -> ConvertResult {
        guard options.allowDeviceDestination else {
            throw DiskError.invalidArgument("\(device.string): is a block device; writing the image onto it erases everything it holds, so it must be allowed explicitly")
        }
        if let format = options.format, format != .raw {
            throw DiskError.invalidArgument("\(device.string): a block device receives the raw disk; a \(format.rawValue.uppercased()) image cannot be written onto it")
        }
        let chain = try DiskChain.open(source, in: options.sourceSpace)
        defer { try? chain.close() }
        let leaf = chain.leaf
        let store = try BlockFile.open(device, writable: true)
        defer { try? store.close() }
        let capacity = try store.size()
        guard capacity >= leaf.virtualSize else {
            throw DiskError.invalidArgument("\(device.string): the device holds \(ByteCount.format(capacity)) (\(capacity) bytes) but the disk is \(ByteCount.format(leaf.virtualSize)) (\(leaf.virtualSize) bytes); use a device at least as large")
        }
        let written = try ChainWrite.onto(store, from: chain, progress: progress)
        return ConvertResult(source: options.sourceSpace.absolute(source).string, destination: device.string, format: .raw, type: .fixed,
                             virtualSize: leaf.virtualSize, bytesWritten: written, bytesCloned: 0,
                             fileSize: capacity, allocatedBytes: capacity)
    }
}

/// Writing a chain's virtual disk over an existing store from offset 0: a block device, or a disk
/// image file that already exists (a restore onto a machine's disks). The store still holds
/// whatever it held before, so holes are zeroed too: punched where the store can (a file's extents
/// freed, a device's write-zeroes), written as zeros where it cannot. Written data is pushed to the
/// device as it goes and flushed at the end.
public enum ChainWrite {
    /// Writes the whole virtual disk; `observe` sees every piece first (a checksum, say: it may throw
    /// to stop before the piece is written). Returns the data bytes written (holes excluded).
    @discardableResult
    public static func onto(_ store: BlockFile, from chain: DiskChain, progress: ProgressReporter? = nil,
                            observe: ((ChainReader.Chunk) throws -> Void)? = nil) throws -> UInt64 {
        var written: UInt64 = 0
        var unsynced: UInt64 = 0
        try ChainReader(chain).forEach(progress: progress) { chunk in
            try observe?(chunk)
            switch chunk {
            case let .data(offset, bytes):
                try store.write(bytes, at: offset)
                written += UInt64(bytes.count)
                unsynced += UInt64(bytes.count)
            case let .hole(range):
                if try !store.punchHole(at: range.lowerBound, length: UInt64(range.count)) {
                    try store.writeZeros(count: UInt64(range.count), at: range.lowerBound)
                }
                unsynced += UInt64(range.count)
            }
            OperationIO.startWriteback(store, written: &unsynced)
        }
        try store.flush()
        return written
    }
}
