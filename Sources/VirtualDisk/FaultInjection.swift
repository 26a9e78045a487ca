import Synchronization

/// Faults the engine injects on request, so crash tests can kill an operation in the middle or at a
/// chosen point. The library never reads them from the environment: the command line (or a test)
/// sets them explicitly with `FaultInjection.set`, once, before any operation starts.
public struct FaultInjection: Sendable, Equatable {
    /// Where to end the process abruptly (`_exit(137)`, as a `kill -9` would).
    public enum CrashPoint: String, Sendable, CaseIterable {
        /// A VHDX write session, right after its log entry is flushed and before the entry is applied.
        case afterLogFlush = "after-log-flush"
    }

    /// Microseconds to sleep after each chunk of a copy loop (0: none). Copy loops then also move
    /// smaller chunks (256 KiB), so that small test images take many paced steps.
    public var slowIOMicroseconds: UInt32
    /// Where to crash, if anywhere.
    public var crashPoint: CrashPoint?

    public init(slowIOMicroseconds: UInt32 = 0, crashPoint: CrashPoint? = nil) {
        self.slowIOMicroseconds = slowIOMicroseconds
        self.crashPoint = crashPoint
    }

    private static let state = Mutex(FaultInjection())

    /// The faults in force (none unless `set` was called).
    public static var current: FaultInjection { state.withLock { $0 } }

    /// Sets the faults for this process.
    public static func set(_ faults: FaultInjection) { state.withLock { $0 = faults } }

    /// Ends the process here when `point` is the crash point in force.
    static func crash(at point: CrashPoint) {
        if current.crashPoint == point { _exit(137) }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
