import ArgumentParser
import SystemPackage
import ShadowCopy

/// `--json`, shared by every command that prints a result, so the flag reads the same everywhere.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print the result as JSON (numbers and booleans typed, camelCase keys).") var json = false
}

/// `--children` and `--force`: how an operation that changes a disk finds the differencing images
/// that depend on it, and whether it may go ahead and break them. One group, so merge, resize and
/// compact explain the risk in the same words.
struct ChildrenOptions: ParsableArguments {
    @Option(name: .customLong("children"), parsing: .upToNextOption,
            help: ArgumentHelp("Other images or folders that may hold children of the disk (its own folder is always searched).", valueName: "path"))
    var paths: [String] = []
    @Flag(help: "Go ahead even if differencing children of the disk would no longer read correctly.") var force = false

    var filePaths: [FilePath] { paths.map { FilePath($0) } }
}

/// `--state-dir`: where job history, writer states and point-in-time copies are kept (default
/// $BULWARK_STATE_DIR, else /var/lib/bulwark). One group, so every job command finds the same history.
struct StateOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The state folder: job history, writer states, snapshot copies (default: $BULWARK_STATE_DIR, else /var/lib/bulwark).", valueName: "dir"))
    var stateDir: String?

    var directory: FilePath { FilePath(WriterStateStore.resolveDirectory(stateDir)) }
}
