import Dispatch
import Storage
import Synchronization
import SystemPackage

/// A new image of any type (fixed, dynamic or differencing) written under a temporary name in its
/// final folder (`.NAME.partial-PID`) and published by rename only once complete and flushed: the
/// engine's way to write a file that nothing must see half-written (a converted image, a backup's
/// full or incremental recovery point).
///
/// A staged image skips what keeps a visible file consistent at every moment (VHDX log entries and
/// header sessions, ordered syncs): it is made consistent and durable once, by `publish()`. A crash
/// or a cancellation leaves only the hidden temporary file, which `discard()` (or the next staging to
/// the same name, once its writer is gone) removes. Nothing published is ever overwritten.
///
/// Not Sendable: one owner writes and publishes it (blocking calls: run it on `BlockingPool.disk`).
public final class StagedImage {
    /// Where the image appears when published.
    public let destination: FilePath
    /// The hidden name it is written under.
    public let temporaryPath: FilePath
    /// The space both live in.
    public let space: any StoreSpace
    private var open: (any DiskImage)?
    private var finished = false

    /// The image being written (writable; a differencing one reads through its parents).
    public var image: any DiskImage {
        guard let open else { preconditionFailure("StagedImage used after publish() or discard()") }
        return open
    }

    /// Creates the image under its temporary name. `destination` must not exist; a differencing
    /// image's parent (`options.parentPath`) is resolved in the same space, and its relative locator
    /// is the one the published file needs (both names share a folder).
    public init(at destination: FilePath, options: CreateOptions, in space: any StoreSpace = LocalFileSystem()) throws {
        let destination = space.absolute(destination)
        guard !space.exists(destination) else { throw StorageError.exists(path: destination.string) }
        let name = destination.lastComponent?.string ?? "disk"
        let folder = destination.removingLastComponent()
        Self.removeStale(folder: folder, name: name, in: space)
        self.destination = destination
        self.temporaryPath = folder.appending(".\(name).partial-\(getpid())")
        self.space = space
        try? space.remove(temporaryPath)
        var staged = options
        staged.staged = true
        open = try DiskImages.create(at: temporaryPath, options: staged, in: space)
    }

    deinit { if !finished { discard() } }

    /// Flushes the image once, closes it and renames it into place (refusing to replace anything that
    /// appeared at the destination meanwhile). Failures leave the destination absent and remove the
    /// temporary file.
    ///
    /// `alongside`, when given, runs on another thread once the file holds its final bytes, while the
    /// flush makes them durable (a checksum of the finished file costs no extra time then); it reads
    /// `temporaryPath`. Its failure fails the publish.
    public func publish(alongside: (@Sendable () throws -> Void)? = nil) throws {
        guard let image = open, !finished else { return }
        do {
            if let alongside {
                try image.writeBack()
                let outcome = Mutex<(any Error)?>(nil)
                let done = DispatchSemaphore(value: 0)
                DispatchQueue.global().async {
                    do { try alongside() } catch { outcome.withLock { $0 = error } }
                    done.signal()
                }
                var flushError: (any Error)?
                do { try image.flush() } catch { flushError = error }
                done.wait()
                if let flushError { throw flushError }
                if let error = outcome.withLock({ $0 }) { throw error }
            } else {
                try image.flush()
            }
            try image.close()
            open = nil
            try space.rename(temporaryPath, to: destination)
            finished = true
        } catch {
            discard()
            throw error
        }
    }

    /// Abandons the image: closes it and removes the temporary file. Safe to call more than once.
    public func discard() {
        if let image = open { try? image.close() }
        open = nil
        if !finished { try? space.remove(temporaryPath) }
        finished = true
    }

    /// Removes temporary files left for `name` by stagings whose process is gone (killed, crashed).
    static func removeStale(folder: FilePath, name: String, in space: any StoreSpace) {
        let prefix = ".\(name).partial-"
        guard let names = try? space.contents(of: folder) else { return }
        for n in names where n.hasPrefix(prefix) {
            if let pid = Int32(n.dropFirst(prefix.count)), !ProcessState.isRunning(pid) {
                try? space.remove(folder.appending(n))
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
