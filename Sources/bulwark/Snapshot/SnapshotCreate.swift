import ArgumentParser
import Foundation
import ShadowCopy

struct SnapshotCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Take an application-consistent point-in-time copy of a guest disk.",
        discussion: """
        Writers are frozen in the order qga, fsfreeze, hook, for at most --timeout (default 10s), \
        while the provider copies the disk into OUTPUT/<snapshot id>/ (OUTPUT is created when \
        missing and checked before anything is frozen): auto (the default: reflink where the output \
        folder's filesystem can, else copy), reflink (FICLONE, xfs reflink=1 or btrfs, on the disk's \
        filesystem), copy (any filesystem, slower hold) or differencing (VHD/VHDX: the current file \
        becomes the point-in-time image and a new differencing child, next to it or in --output, \
        becomes the live disk). A differencing disk is copied with its whole chain. Without a writer \
        the copy is only crash-consistent. Writer states go to the state folder (--state-dir, \
        $BULWARK_STATE_DIR, default /var/lib/bulwark).
        """
    )

    enum ProviderName: String, ExpressibleByArgument, CaseIterable { case auto, reflink, copy, differencing }

    @Option(help: "The guest disk file.") var disk: [String]
    @Option(help: "auto, reflink, copy or differencing.") var provider: ProviderName = .auto
    @Option(help: ArgumentHelp("A QEMU guest agent socket, optionally with the mountpoints to freeze.", valueName: "SOCKET[:MOUNT,...]"))
    var qga: [String] = []
    @Option(help: "Freeze this host filesystem (FIFREEZE).") var fsfreeze: [String] = []
    @Option(help: "An executable called with freeze and thaw.") var hook: [String] = []
    @Option(parsing: .unconditional, help: ArgumentHelp("Longest freeze hold (1s to 1h).", valueName: "duration"))
    var timeout: Seconds = Seconds(10)
    @Option(help: "Where copies go (differencing: where the new child goes; default next to the disk).") var output: String?
    @Option(help: "The writer state folder.") var stateDir: String?
    @Flag(help: "Continue crash-consistent when a writer fails, instead of failing.") var allowCrashConsistent = false
    @OptionGroup var printing: OutputOptions
    @Option(help: .hidden) var pauseWhileFrozen: Double = 0

    func validate() throws {
        if disk.isEmpty { throw ValidationError("--disk is required") }
        if let error = timeout.validationError(option: "timeout") { throw error }
        if let problem = SnapshotPolicy.holdTimeoutProblem(timeout.value) { throw ValidationError("--timeout \(timeout.given): \(problem)") }
        if output == nil, provider != .differencing { throw ValidationError("--output is required for the \(provider.rawValue) provider") }
    }

    func run() async throws {
        var writers: [any SnapshotWriter] = []
        for spec in qga {
            let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
            let mounts = parts.count > 1 ? parts[1].split(separator: ",").map(String.init) : []
            writers.append(GuestAgentWriter(socket: parts[0], mountpoints: mounts))
        }
        writers += fsfreeze.map { FilesystemFreezeWriter(mountpoint: $0) }
        writers += hook.map { HookWriter(path: $0, timeout: timeout.value) }
        let chosen: any SnapshotProvider
        switch provider {
        case .auto: chosen = AutoProvider()
        case .reflink: chosen = ReflinkProvider()
        case .copy: chosen = CopyProvider()
        case .differencing: chosen = DifferencingProvider(childDirectory: output)
        }
        // Differencing without --output writes next to the (first) disk: that is the folder to check.
        let folder = output ?? URL(fileURLWithPath: disk[0]).deletingLastPathComponent().path
        let request = SnapshotRequest(
            writers: writers, provider: chosen, disks: disk, outputDirectory: folder,
            policy: SnapshotPolicy(holdTimeout: timeout.value, fallBackToCrashConsistent: allowCrashConsistent),
            pauseWhileFrozen: pauseWhileFrozen)
        var echo: (@Sendable (String) -> Void)?
        if !printing.json { echo = { @Sendable line in Output.err(line + "\n") } }
        let coordinator = SnapshotCoordinator(stateDirectory: WriterStateStore.resolveDirectory(stateDir), echo: echo)
        do {
            let result = try await SignalCancellation.run { try await coordinator.snapshot(request) }
            if printing.json {
                // Echo is off with --json: the warnings still go to standard error.
                for w in result.warnings { Output.note("warning: \(w)") }
                try Output.json(result)
                return
            }
            for (i, copy) in result.copies.enumerated() {
                print("copy: \(copy)")
                if i < result.newLeaves.count { print("live disk: \(result.newLeaves[i])") }
            }
            for w in result.writers {
                var line = "writer \(w.identity.name): \(w.froze ? "froze and thawed" : "not frozen"), \(w.state.rawValue)"
                if w.lastError != .none { line += ", \(w.lastError.rawValue): \(w.errorMessage)" }
                if let from = w.resetFrom { line += " (reset from \(from))" }
                print(line)
            }
            print("snapshot: \(result.snapshotID)")
            print("provider: \(result.provider)" + (result.providerChoice.map { " (\(provider.rawValue): \($0))" } ?? ""))
            if let folder = result.output { print("output: \(folder.path) (\(folder.filesystem)\(folder.created ? ", created" : ""))") }
            print("consistency: \(result.consistency.rawValue)")
            print(String(format: "freeze hold: %.3f s", result.freezeHoldSeconds))
        } catch let failure as SnapshotFailure {
            if printing.json { try Output.json(failure.result) }
            throw failure
        }
    }
}
