import CBlkid
import Glibc
import Storage
import SystemPackage

/// Reads a disk's layout with libblkid: the partition table (type, identifier), each partition
/// (start, size, type, UUID, name, flags) and the filesystem in each (type, UUID, label), plus the
/// device's serial and WWN when it is a block device (`HostDisks`). Works on block devices and on
/// disk image files alike (a raw file, or a point-in-time copy's leaf when it is raw).
///
/// Only reads. A disk libblkid cannot make sense of is `table: none` with no volume: the backup still
/// captures its bytes; the plan says there was nothing to describe.
public enum LayoutProbe {
    public static func capture(_ path: FilePath) throws -> DiskLayout {
        let fd = try FileDescriptor.open(path, .readOnly, options: [.closeOnExec])
        defer { try? fd.close() }
        guard let probe = blkid_new_probe() else {
            throw StorageError.io(path: path.string, operation: "blkid_new_probe", errno: .noMemory)
        }
        defer { blkid_free_probe(probe) }
        guard blkid_probe_set_device(probe, fd.rawValue, 0, 0) == 0 else {
            throw StorageError.io(path: path.string, operation: "blkid_probe_set_device", errno: Errno(rawValue: errno))
        }
        let size = UInt64(max(0, blkid_probe_get_size(probe)))
        let logical = Int(blkid_probe_get_sectorsize(probe))
        var physical = logical
        var device: HostDisk? = nil
        var st = stat()
        if fstat(fd.rawValue, &st) == 0, st.st_mode & S_IFMT == S_IFBLK {
            let (a, b) = HostDisks.split(st.st_rdev)
            device = HostDisks.describe(major: a, minor: b)
            physical = device?.physicalSectorSize ?? logical
        }

        blkid_probe_enable_partitions(probe, 1)
        blkid_probe_set_partitions_flags(probe, Int32(BLKID_PARTS_ENTRY_DETAILS))
        var table = "none", tableID: String? = nil
        var partitions: [LayoutPartition] = []
        if let list = blkid_probe_get_partitions(probe), let tab = blkid_partlist_get_table(list) {
            table = string(blkid_parttable_get_type(tab)) ?? "none"
            tableID = string(blkid_parttable_get_id(tab))
            for i in 0..<max(0, blkid_partlist_numof_partitions(list)) {
                guard let part = blkid_partlist_get_partition(list, i) else { continue }
                // libblkid counts in 512-byte sectors whatever the device's sector size.
                let start = UInt64(max(0, blkid_partition_get_start(part))) * 512
                let length = UInt64(max(0, blkid_partition_get_size(part))) * 512
                let gpt = table == "gpt"
                let type = gpt ? (string(blkid_partition_get_type_string(part))?.uppercased() ?? "")
                               : "0x" + String(blkid_partition_get_type(part), radix: 16)
                let flags = blkid_partition_get_flags(part)
                let extended = blkid_partition_is_extended(part) != 0
                var entry = LayoutPartition(number: Int(blkid_partition_get_partno(part)), start: start, size: length, type: type,
                                            uuid: string(blkid_partition_get_uuid(part)), name: gpt ? string(blkid_partition_get_name(part)) ?? "" : nil,
                                            flags: flags == 0 ? nil : "0x" + String(flags, radix: 16), extended: extended)
                if !extended, length > 0 { entry.volume = volume(fd, offset: start, length: length) }
                partitions.append(entry)
            }
        }
        return DiskLayout(table: table, tableID: tableID, size: size, logicalSectorSize: logical, physicalSectorSize: physical,
                          serial: device?.serial, wwn: device?.wwn, model: device?.model, partitions: partitions,
                          volume: partitions.isEmpty && table == "none" ? volume(fd, offset: 0, length: size) : nil)
    }

    /// The filesystem (or other superblock) in `offset..<offset+length` of the disk, if libblkid
    /// recognises exactly one.
    static func volume(_ fd: FileDescriptor, offset: UInt64, length: UInt64) -> LayoutVolume? {
        guard let probe = blkid_new_probe() else { return nil }
        defer { blkid_free_probe(probe) }
        guard blkid_probe_set_device(probe, fd.rawValue, blkid_loff_t(offset), blkid_loff_t(length)) == 0 else { return nil }
        blkid_probe_enable_superblocks(probe, 1)
        blkid_probe_set_superblocks_flags(probe, Int32(BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID | BLKID_SUBLKS_LABEL))
        // A partition's own table (an MBR inside an extended partition, a nested GPT) is not a volume.
        blkid_probe_enable_partitions(probe, 0)
        guard blkid_do_safeprobe(probe) == 0, let type = value(probe, "TYPE") else { return nil }
        return LayoutVolume(type: type, uuid: value(probe, "UUID"), label: value(probe, "LABEL"))
    }

    static func value(_ probe: blkid_probe, _ name: String) -> String? {
        var data: UnsafePointer<CChar>? = nil
        var length = 0
        guard blkid_probe_lookup_value(probe, name, &data, &length) == 0, let data else { return nil }
        return String(cString: data)
    }

    static func string(_ pointer: UnsafePointer<CChar>?) -> String? {
        guard let pointer else { return nil }
        let s = String(cString: pointer)
        return s.isEmpty ? nil : s
    }
}
