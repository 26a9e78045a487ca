import ArgumentParser
import Foundation
import SystemPackage
import VirtualDisk
import Storage

struct DiskInfo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show an image's format, type, sizes (virtual, file, allocated), geometry, block size, identity and parent.",
        discussion: "--json prints {\"levels\": [...]}: one level, or with --chain every level of the chain, leaf first."
    )

    @Argument(help: "The image.") var path: String
    @Flag(help: "Describe every level of the differencing chain, leaf first.") var chain = false
    @OptionGroup var printing: OutputOptions
    @Option(help: "Open PATH as vhd, vhdx or raw (default: detected; a .vhd/.vhdx name needs its signature).") var format: DiskFormat?

    func run() throws {
        let descriptions: [DiskDescription]
        if chain {
            let opened = try DiskChain.open(FilePath(path), format: format)
            defer { try? opened.close() }
            descriptions = try opened.levels.map { try DiskDescription($0) }
        } else {
            let image = try DiskImages.openLevel(FilePath(path), format: format)
            defer { try? image.close() }
            descriptions = [try DiskDescription(image)]
        }
        if printing.json {
            try Output.json(InfoJSON(levels: descriptions.map(LevelJSON.init)))
            return
        }
        for (i, d) in descriptions.enumerated() {
            if chain { print("level \(i)\(i == 0 ? " (leaf)" : ""):") }
            var rows: [(String, String)] = [
                ("path", d.path),
                ("format", d.format.rawValue),
                ("type", d.type.rawValue),
                ("virtual size", "\(ByteCount.format(d.virtualSize)) (\(d.virtualSize) bytes)"),
                ("file size", "\(ByteCount.format(d.fileSize)) (\(d.fileSize) bytes)"),
                ("allocated size", "\(ByteCount.format(d.allocatedSize)) (\(d.allocatedSize) bytes on disk)"),
                ("block size", "\(ByteCount.format(UInt64(d.blockSize)))"),
                ("logical sector size", "\(d.logicalSectorSize)"),
                ("physical sector size", "\(d.physicalSectorSize)"),
                ("identity", d.identity),
            ]
            if let parentID = d.parentID { rows.append(("parent id", parentID)) }
            for locator in d.parentLocators ?? [] { rows.append(("parent locator (\(locator.kind.rawValue))", locator.path)) }
            for key in d.properties.keys.sorted() { rows.append((key, d.properties[key]!)) }
            for warning in d.warnings ?? [] { rows.append(("warning", warning)) }
            let width = rows.map(\.0.count).max() ?? 0
            for (k, v) in rows { print("  \(k.padding(toLength: width, withPad: " ", startingAt: 0))  \(v)") }
        }
    }
}
