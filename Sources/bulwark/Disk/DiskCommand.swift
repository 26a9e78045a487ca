import ArgumentParser
import SystemPackage
import VirtualDisk
import Storage

/// `bulwark disk ...`: the VHD/VHDX/raw disk utility.
struct DiskCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disk",
        abstract: "Create, inspect, read, write, merge, resize, convert, compact, check and mount VHD, VHDX and raw disk images and differencing chains.",
        subcommands: [DiskCreate.self, DiskInfo.self, DiskRead.self, DiskWrite.self, DiskMap.self,
                      DiskMerge.self, DiskReparent.self, DiskResize.self, DiskConvert.self, DiskCompact.self, DiskCheck.self, DiskMountCommand.self]
    )
}

extension DiskFormat: ExpressibleByArgument {}

/// The types a user chooses. Differencing is not among them: `--parent` makes one, and `convert`
/// always writes a standalone image, so neither help nor completion offers it.
enum StandaloneType: String, ExpressibleByArgument, CaseIterable {
    case fixed, dynamic
    var diskType: DiskType { self == .fixed ? .fixed : .dynamic }
}
