import Foundation

/// Runs `operation` but gives up waiting after `seconds`: the caller gets `ShadowCopyError.timedOut`
/// while the operation (a blocking call that cannot be interrupted, say) is left to finish on its
/// own. With `cancellable`, task cancellation also stops the wait (`ShadowCopyError.cancelled`);
/// thaw uses `cancellable: false` so that it runs to the end even in a cancelled task.
func withDeadline<T: Sendable>(_ phase: String, seconds: Double, cancellable: Bool = true,
                               _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    let once = OnceResult<T>()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            once.set(continuation)
            if cancellable, Task.isCancelled { once.resume(.failure(ShadowCopyError.cancelled)) }
            let worker = Task {
                do { once.resume(.success(try await operation())) } catch { once.resume(.failure(error)) }
            }
            DispatchQueue.global().asyncAfter(deadline: .now() + max(0, seconds)) {
                once.resume(.failure(ShadowCopyError.timedOut(phase: phase, seconds: seconds)))
                worker.cancel()
            }
        }
    } onCancel: {
        if cancellable { once.resume(.failure(ShadowCopyError.cancelled)) }
    }
}

/// A continuation resumed at most once, from whichever side comes first.
private final class OnceResult<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<T, Error>?
    private var pending: Result<T, Error>?
    private var done = false

    func set(_ c: CheckedContinuation<T, Error>) {
        let early: Result<T, Error>? = lock.withLock {
            if let pending { self.pending = nil; return pending }
            continuation = c
            return nil
        }
        if let early { c.resume(with: early) }
    }

    func resume(_ result: Result<T, Error>) {
        let c: CheckedContinuation<T, Error>? = lock.withLock {
            if done { return nil }
            done = true
            if let c = continuation { continuation = nil; return c }
            pending = result
            return nil
        }
        c?.resume(with: result)
    }
}
