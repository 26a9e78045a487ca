import Storage
/// Payload block states (the low three bits of a payload BAT entry).
enum VHDXBlockState: UInt8 {
    case notPresent = 0, undefined = 1, zero = 2, unmapped = 3, fullyPresent = 6, partiallyPresent = 7
}

/// Sector bitmap block states.
enum VHDXBitmapState {
    static let notPresent: UInt8 = 0
    static let present: UInt8 = 6
}

/// A 64-bit BAT entry: state in bits 0-2, file offset in MiB in bits 20-63.
struct VHDXBATEntry: Equatable {
    var raw: UInt64
    init(raw: UInt64) { self.raw = raw }
    init(state: UInt8, fileOffset: UInt64) { raw = (fileOffset >> 20) << 20 | UInt64(state & 7) }
    var state: UInt8 { UInt8(raw & 7) }
    var fileOffset: UInt64 { (raw >> 20) << 20 }
}

/// The arithmetic of blocks, chunks and BAT indexes for one virtual disk geometry.
struct VHDXGeometry: Equatable {
    var virtualSize: UInt64
    var blockSize: UInt64
    var logicalSectorSize: UInt64

    /// Payload blocks per sector bitmap block: (2^23 * logical sector size) / block size.
    var chunkRatio: UInt64 { (UInt64(1) << 23) * logicalSectorSize / blockSize }
    var payloadBlocks: UInt64 { (virtualSize + blockSize - 1) / blockSize }
    var bitmapBlocks: UInt64 { (payloadBlocks + chunkRatio - 1) / chunkRatio }
    var sectorsPerBlock: UInt64 { blockSize / logicalSectorSize }

    /// BAT entries the spec requires for this geometry.
    func entryCount(differencing: Bool) -> UInt64 {
        if differencing { return bitmapBlocks * (chunkRatio + 1) }
        return payloadBlocks == 0 ? 0 : payloadBlocks + (payloadBlocks - 1) / chunkRatio
    }
    /// Entries Bulwark reserves room for: enough for the differencing layout.
    var reservedEntryCount: UInt64 { bitmapBlocks * (chunkRatio + 1) }

    func payloadIndex(_ block: UInt64) -> Int { Int(block + block / chunkRatio) }
    func bitmapIndex(chunk: UInt64) -> Int { Int(chunk * (chunkRatio + 1) + chunkRatio) }
    /// Byte offset inside the chunk's 1 MiB sector bitmap where `block`'s bits start.
    func bitmapByteOffset(_ block: UInt64) -> Int { Int((block % chunkRatio) * sectorsPerBlock / 8) }
}
