import ArgumentParser
import SystemPackage
import VirtualDisk

struct DiskReparent: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reparent",
        abstract: "Point a differencing image at a moved or copied parent (Set-VHD -ParentPath).",
        discussion: "The new parent must carry the identity the child recorded, the same format, virtual size and sector size. --ignore-id-mismatch accepts a different parent and records its identity."
    )

    @Argument(help: "The differencing image.") var child: String
    @Option(help: "The new parent image.") var parent: String
    @Flag(help: "Accept a parent whose identity differs from the recorded one.") var ignoreIdMismatch = false
    @OptionGroup var printing: OutputOptions

    func run() throws {
        let result = try ReparentOperation.reparent(child: FilePath(child), parent: FilePath(parent), ignoreIDMismatch: ignoreIdMismatch)
        if printing.json { try Output.json(result); return }
        print("\(result.child): parent is now \(result.parent) (id \(result.newParentID))")
    }
}
