import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import SystemPackage
import VirtualDisk
import Storage

struct DiskConvert: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Copy a disk (or a whole differencing chain, flattened) into a new image of any format and type.",
        discussion: "SRC is never modified. DST is written under a temporary name and appears only when complete; it must not exist. Holes stay holes and all-zero blocks are not stored. SRC may be a block device; DST may be one only with --overwrite-device (written raw, every byte)."
    )

    @Argument(help: "The source image (a chain leaf is flattened).") var source: String
    @Argument(help: "The new image.") var destination: String
    @Option(help: "vhd, vhdx or raw (default: from DST's extension).") var format: DiskFormat?
    @Option(help: "fixed or dynamic (default: fixed for a fixed VHD/VHDX source, else dynamic).") var type: StandaloneType?
    @Option(parsing: .unconditional, help: ArgumentHelp("Block size of the new image, a power of two (VHD: 512 bytes to 256M; VHDX: 1M to 256M).", valueName: "size"), transform: Size.parse)
    var blockSize: Size?
    @Flag(help: "Allow DST to be a block device: the disk is written onto it raw, erasing what it held.") var overwriteDevice = false
    @OptionGroup var printing: OutputOptions

    func validate() throws {
        try Size.checkBlockSize(blockSize)
    }

    func run() throws {
        let bar = ProgressBar("convert")
        defer { bar.finish() }
        // One reporter: SIGINT/SIGTERM cancel it, and the engine removes its staged file before exiting.
        let reporter = bar.handler
        let interruption = Interruption(cancelling: reporter)
        defer { interruption.stop() }
        let result: ConvertResult
        do {
            result = try ConvertOperation.convert(source: FilePath(source), destination: FilePath(destination),
                                                  options: ConvertOptions(format: format, type: type?.diskType, blockSize: blockSize?.int,
                                                                          allowDeviceDestination: overwriteDevice),
                                                  progress: reporter)
        } catch is OperationCancelled {
            bar.finish()
            let signal = interruption.signal ?? SIGINT
            Output.note("convert: stopped by \(Interruption.name(of: signal)); \(destination) was not created")
            throw ExitCode(Interruption.exitCode(for: signal))
        }
        bar.finish()
        if printing.json { try Output.json(result); return }
        print("converted \(result.source) -> \(result.destination): \(result.format.rawValue) \(result.type.rawValue), \(ByteCount.format(result.virtualSize)), \(ByteCount.format(result.bytesWritten)) written\(result.bytesCloned > 0 ? " (\(ByteCount.format(result.bytesCloned)) of it shared by reflink)" : ""), file \(ByteCount.format(result.allocatedBytes)) on disk")
    }
}
