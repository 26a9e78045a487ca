import SystemPackage
import struct Foundation.UUID
import Storage

/// The VHDX format driver (MS-VHDX): probing, opening, creating and checking.
public enum VHDXFormat: DiskImageFormat, CheckableFormat {
    public static var format: DiskFormat { .vhdx }
    /// Hyper-V's default block size for dynamic disks.
    public static let defaultBlockSize = 32 << 20
    /// Hyper-V's default block size for differencing disks, whatever the parent's: a child holds only
    /// the changes, so small blocks keep it (and every incremental copied off the host) small.
    public static let differencingBlockSize = 2 << 20
    /// The block sizes `create` accepts (powers of two).
    public static let blockSizeRange = (1 << 20)...(256 << 20)
    static let creatorName = "Bulwark"

    public static func probe(_ store: any ByteStore) throws -> Bool {
        guard try store.size() >= 8 else { return false }
        return try store.read(count: 8, at: 0).hasSignature(VHDXFileIdentifier.signature)
    }

    public static func open(_ store: any ByteStore) throws -> any DiskImage { try VHDXImage(store: store) }

    public static func create(on store: any ByteStore, options: CreateOptions, parent: (any DiskImage)?) throws -> any DiskImage {
        let path = store.path
        let differencing = options.type == .differencing
        if differencing, parent == nil {
            throw DiskError.invalidArgument("\(path.string): a differencing image needs a parent")
        }
        let blockSize = options.blockSize ?? (differencing ? differencingBlockSize : defaultBlockSize)
        guard blockSizeRange.contains(blockSize), blockSize & (blockSize - 1) == 0 else {
            throw DiskError.invalidArgument("\(path.string): VHDX block size \(blockSize) must be a power of two from 1 MiB to 256 MiB")
        }
        let logical = options.logicalSectorSize ?? parent?.logicalSectorSize ?? 512
        guard logical == 512 || logical == 4096 else {
            throw DiskError.invalidArgument("\(path.string): logical sector size \(logical) must be 512 or 4096")
        }
        let physical = options.physicalSectorSize ?? parent?.physicalSectorSize ?? 4096
        guard physical == 512 || physical == 4096 else {
            throw DiskError.invalidArgument("\(path.string): physical sector size \(physical) must be 512 or 4096")
        }
        let size = differencing ? parent!.virtualSize : options.virtualSize
        if let parent, differencing, parent.logicalSectorSize != logical {
            throw DiskError.invalidArgument("\(path.string): a differencing image takes its parent's logical sector size (\(parent.logicalSectorSize)), not \(logical)")
        }
        guard size > 0, size <= 64 << 40 else {
            throw DiskError.invalidArgument("\(path.string): VHDX virtual size \(size) must be between 1 byte and 64 TiB")
        }
        guard size % UInt64(logical) == 0 else {
            throw DiskError.invalidArgument("\(path.string): virtual size \(size) is not a multiple of the logical sector size \(logical)")
        }
        var parentEntries: [(String, String)]?
        if differencing, let parent {
            parentEntries = [("parent_linkage", VHDXGUID.braced(parent.identity))]
            for l in ParentLocator.locators(child: path, parent: parent.path) {
                parentEntries!.append((l.kind == .relative ? "relative_path" : l.kind == .volume ? "volume_path" : "absolute_win32_path", l.path))
            }
        }
        let meta = VHDXMetadata(blockSize: UInt32(blockSize), leaveBlocksAllocated: options.type == .fixed, hasParent: differencing,
                                virtualSize: size, diskID: UUID(), logicalSectorSize: UInt32(logical),
                                physicalSectorSize: UInt32(physical), parentEntries: parentEntries)
        let geometry = VHDXGeometry(virtualSize: size, blockSize: UInt64(blockSize), logicalSectorSize: UInt64(logical))
        let mib = VHDXSize.mib
        let logOffset = mib, logLength = mib
        let metadataOffset = 2 * mib
        let batOffset = 3 * mib
        let batLength = VHDXSize.roundUp(max(geometry.reservedEntryCount * 8, 1), mib)
        let dataStart = batOffset + batLength
        // A differencing image gets its sector bitmap blocks (zeroed: every sector in the parent) at
        // creation. The spec allows them absent, but libvhdi (20210425, Debian 12) then reads the
        // bitmap of every chunk without one as garbage and returns zeros for parent data; with them
        // present every reader agrees. The cost is 1 MiB per chunk (4 GiB of disk at 512-byte
        // sectors), sparse where the store has holes.
        let bitmapStart = dataStart
        let bitmapBytes = differencing ? geometry.bitmapBlocks * mib : 0
        let end = options.type == .fixed ? dataStart + geometry.payloadBlocks * UInt64(blockSize) : dataStart + bitmapBytes

        do {
            try store.truncate(to: end)
            try store.write(VHDXFileIdentifier(creator: creatorName).encode(), at: 0)
            let regions = VHDXRegionTable(entries: [
                .init(guid: VHDXRegionTable.bat, fileOffset: batOffset, length: UInt32(batLength), required: true),
                .init(guid: VHDXRegionTable.metadata, fileOffset: metadataOffset, length: UInt32(mib), required: true),
            ]).encode()
            for o in VHDXRegionTable.offsets { try store.write(regions, at: o) }
            try store.write(meta.encode(), at: metadataOffset)
            if options.type == .fixed {
                try store.preallocate(at: dataStart, length: end - dataStart)
                var entries = [UInt64](repeating: 0, count: Int(geometry.reservedEntryCount))
                for block in 0..<geometry.payloadBlocks {
                    entries[geometry.payloadIndex(block)] = VHDXBATEntry(state: VHDXBlockState.fullyPresent.rawValue,
                                                                        fileOffset: dataStart + block * UInt64(blockSize)).raw
                }
                var bytes = [UInt8](repeating: 0, count: entries.count * 8)
                for (i, e) in entries.enumerated() where e != 0 { bytes.setLE64(i * 8, e) }
                try store.write(bytes, at: batOffset)
            }
            if differencing {
                var bytes = [UInt8](repeating: 0, count: Int(geometry.reservedEntryCount) * 8)
                for chunk in 0..<geometry.bitmapBlocks {
                    bytes.setLE64(geometry.bitmapIndex(chunk: chunk) * 8,
                                  VHDXBATEntry(state: VHDXBitmapState.present, fileOffset: bitmapStart + chunk * mib).raw)
                }
                try store.write(bytes, at: batOffset)
            }
            var header = VHDXHeader(sequenceNumber: 0, fileWriteGuid: UUID(), dataWriteGuid: UUID(), logGuid: VHDXGUID.zero,
                                    logLength: UInt32(logLength), logOffset: logOffset)
            try store.write(header.encode(), at: VHDXHeader.offsets[0])
            header.sequenceNumber = 1
            try store.write(header.encode(), at: VHDXHeader.offsets[1])
            if !options.staged { try store.flush() }
            let image = try VHDXImage(store: store, staged: options.staged)
            if let parent, differencing { try image.attachParent(parent) }
            return image
        }
    }
}
