import ArgumentParser
import SystemPackage
import VirtualDisk
import Storage

/// `bulwark disk ...`: the VHD/VHDX/raw disk utility.
struct DiskCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disk",
        abstract: "Create, inspect, read, write, merge, resize, convert, compact and check VHD, VHDX and raw disk images and differencing chains.",
        subcommands: [DiskCreate.self, DiskInfo.self, DiskRead.self, DiskWrite.self, DiskMap.self,
                      DiskMerge.self, DiskReparent.self, DiskResize.self, DiskConvert.self, DiskCompact.self, DiskCheck.self]
    )
}

extension DiskFormat: ExpressibleByArgument {}
extension DiskType: ExpressibleByArgument {}

/// A byte count argument: `64G`, `512M`, `4096`.
struct Size: ExpressibleByArgument {
    var bytes: UInt64
    init?(argument: String) {
        guard let b = try? ByteCount.parse(argument) else { return nil }
        bytes = b
    }
    static var defaultValueDescription: String { "a size such as 64G, 512M or 1048576" }
}
