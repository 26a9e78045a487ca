import Layout
import Storage
import SystemPackage
import Targets
import VirtualDisk

/// The bare-metal side of a backup: the disks a `machine: true` source stands for, and the layout
/// recorded with each disk so system recovery can recreate and match it.
enum DiskLayouts {
    /// The policy's disk sources as paths: `disk:` as written, `machine: true` as every whole disk of the
    /// host (`HostDisks.list()`) except the one holding a local target (a backup of the backup's own
    /// disk grows forever and cannot be restored onto itself).
    static func expand(_ sources: [PolicySource], target: any BackupTarget, policy: String) throws -> [String] {
        var out: [String] = []
        for source in sources {
            switch source {
            case let .disk(path):
                out.append(path)
            case .machine:
                let holding = (target as? LocalDirectoryTarget).map { HostDisks.disks(holding: $0.root) } ?? []
                let disks = HostDisks.list().filter { disk in !holding.contains { $0 == (disk.major, disk.minor) } }
                guard !disks.isEmpty else {
                    throw ProtectionError.sourceMissing(policy: policy, source: "machine: true (no whole disk found in /sys/block other than the one holding the target; list the disks with `- disk: /dev/...` instead)")
                }
                out += disks.map(\.path).filter { !out.contains($0) }
            case .files:
                continue  // file sets are captured by `FileSetBackup`
            }
        }
        return out
    }

    /// The layout of a disk as the point-in-time copy holds it, with the identity (serial, WWN,
    /// model) of the source device when it is one. nil when the copy is a VHD or VHDX (libblkid reads
    /// raw disks) or cannot be probed: the disk is still backed up, and the manifest says nothing
    /// about its layout.
    static func capture(source: String, copy: DiskChain) -> DiskLayout? {
        guard copy.levels.count == 1, copy.leaf.format == .raw, var layout = try? LayoutProbe.capture(copy.leaf.path) else { return nil }
        if let device = HostDisks.describe(path: FilePath(source)) {
            layout.serial = device.serial
            layout.wwn = device.wwn
            layout.model = device.model
            layout.physicalSectorSize = device.physicalSectorSize
        }
        return layout
    }
}
