import ArgumentParser
import SystemPackage
import VirtualDisk
import Storage

struct DiskMerge: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Fold a differencing image (and the levels above an ancestor) into the ancestor (Merge-VHD).",
        discussion: "CHILD's data is copied into ANCESTOR (default: CHILD's parent), images whose parent was CHILD are re-pointed to ANCESTOR, and CHILD and any intermediate levels are deleted. The merge is crash-safe: a record (CHILD.merge.json) is written first; if the merge is interrupted, run the same command again to finish it."
    )

    @Argument(help: "The differencing image to merge.") var child: String
    @Option(help: "The ancestor to merge into (default: the child's parent).") var into: String?
    @Option(name: .customLong("children"), parsing: .upToNextOption, help: "Other images or folders that may hold children of these disks.") var children: [String] = []
    @Flag(help: "Merge even if it breaks other children of the ancestor.") var force = false
    @Flag(help: "Print the result as JSON.") var json = false

    func run() throws {
        let bar = ProgressBar("merge")
        defer { bar.finish() }
        let result = try Hints.adding {
            try MergeOperation.merge(child: FilePath(child), options: MergeOptions(
                into: into.map { FilePath($0) }, children: children.map { FilePath($0) }, force: force), progress: bar.handler)
        }
        bar.finish()
        if json { try Output.json(result); return }
        print("merged \(result.child) into \(result.ancestor)\(result.resumed ? " (finished an interrupted merge)" : ""): \(ByteCount.format(result.bytesCopied)) copied\(result.bytesCloned > 0 ? " (\(ByteCount.format(result.bytesCloned)) of it shared by reflink)" : "")")
        for r in result.removed { print("removed \(r)") }
        for r in result.repointed { print("re-pointed \(r) to \(result.ancestor)") }
    }
}
