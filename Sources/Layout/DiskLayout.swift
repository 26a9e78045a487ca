/// What a whole disk looked like when it was backed up: the partition table and what each partition
/// held, and how the disk can be recognised again (serial, WWN, size). Recorded in a point's manifest
/// (`ManifestDisk.layout`) by `LayoutProbe`, shown by system recovery's plan, and used to match and
/// check the disks a machine is recreated on.
///
/// Offsets and sizes are in bytes (whatever the sector size), so a plan reads the same for 512- and
/// 4096-byte sectors.
public struct DiskLayout: Codable, Sendable, Equatable {
    /// `gpt`, `dos` (MBR) or `none` (a filesystem on the whole disk, or nothing recognised).
    public var table: String
    /// The table's identifier: the GPT disk GUID, or the MBR disk signature (`0x1234abcd`).
    public var tableID: String?
    public var size: UInt64
    public var logicalSectorSize: Int
    public var physicalSectorSize: Int
    /// What identifies the physical disk (block devices only; nil for an image file or where the
    /// device does not report one).
    public var serial: String?
    public var wwn: String?
    public var model: String?
    public var partitions: [LayoutPartition]
    /// The filesystem on the whole disk when there is no partition table.
    public var volume: LayoutVolume?

    public init(table: String, tableID: String?, size: UInt64, logicalSectorSize: Int, physicalSectorSize: Int, serial: String? = nil,
                wwn: String? = nil, model: String? = nil, partitions: [LayoutPartition], volume: LayoutVolume? = nil) {
        self.table = table
        self.tableID = tableID
        self.size = size
        self.logicalSectorSize = logicalSectorSize
        self.physicalSectorSize = physicalSectorSize
        self.serial = serial
        self.wwn = wwn
        self.model = model
        self.partitions = partitions
        self.volume = volume
    }
}

/// One partition as the table describes it, and the volume found in it.
public struct LayoutPartition: Codable, Sendable, Equatable {
    /// As Linux numbers it (GPT entry index + 1; MBR 1-4, logical from 5).
    public var number: Int
    public var start: UInt64
    public var size: UInt64
    /// GPT: the type GUID; MBR: the type byte (`0x83`).
    public var type: String
    /// GPT: the partition's unique GUID; MBR: `<disk signature>-<number>` as Linux reports it.
    public var uuid: String?
    /// GPT only: the partition's name.
    public var name: String?
    /// GPT attribute bits, or the MBR boot flag (0x80), as hex; nil when none are set.
    public var flags: String?
    /// An MBR extended partition (a container of logical ones: it holds no volume).
    public var extended: Bool
    public var volume: LayoutVolume?

    public init(number: Int, start: UInt64, size: UInt64, type: String, uuid: String? = nil, name: String? = nil, flags: String? = nil,
                extended: Bool = false, volume: LayoutVolume? = nil) {
        self.number = number
        self.start = start
        self.size = size
        self.type = type
        self.uuid = uuid
        self.name = name
        self.flags = flags
        self.extended = extended
        self.volume = volume
    }
}

/// A filesystem (or other recognised content: swap, LVM, RAID member) as libblkid reports it.
public struct LayoutVolume: Codable, Sendable, Equatable {
    /// `ext4`, `xfs`, `vfat`, `swap`, ...
    public var type: String
    public var uuid: String?
    public var label: String?

    public init(type: String, uuid: String? = nil, label: String? = nil) {
        self.type = type
        self.uuid = uuid
        self.label = label
    }
}
