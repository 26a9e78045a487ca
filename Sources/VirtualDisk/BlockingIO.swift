import Dispatch

/// Runs blocking work (pread/pwrite, fsync, ioctl, libsmbclient) on threads outside Swift's
/// cooperative pool, so an `async` caller never stalls other tasks while the kernel works.
public enum BlockingIO {
    private static let queue = DispatchQueue(label: "bulwark.blocking-io", qos: .utility, attributes: .concurrent)

    /// Runs `body` on a blocking-I/O thread and returns its result.
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try body() }) }
        }
    }
}

/// Reports progress of a long operation: bytes done out of a total.
public typealias ProgressHandler = (_ completed: UInt64, _ total: UInt64) -> Void
