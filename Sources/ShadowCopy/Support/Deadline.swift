import Synchronization
import Foundation

/// Runs `operation` but gives up waiting after `seconds`: the caller gets `ShadowCopyError.timedOut`
/// while the operation (a blocking call that cannot be interrupted, say) is left to finish on its
/// own. With `cancellable`, task cancellation also stops the wait (`ShadowCopyError.cancelled`);
/// thaw uses `cancellable: false` so that it runs to the end even in a cancelled task.
func withDeadline<T: Sendable>(_ phase: String, seconds: Double, cancellable: Bool = true,
                               _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    let once = OnceResult<T>()
    let worker = Task {
        do { once.resume(.success(try await operation())) } catch { once.resume(.failure(error)) }
    }
    DispatchQueue.global().asyncAfter(deadline: .now() + max(0, seconds)) {
        if once.resume(.failure(ShadowCopyError.timedOut(phase: phase, seconds: seconds))) { worker.cancel() }
    }
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            once.set(continuation)
            if cancellable, Task.isCancelled, once.resume(.failure(ShadowCopyError.cancelled)) { worker.cancel() }
        }
    } onCancel: {
        if cancellable, once.resume(.failure(ShadowCopyError.cancelled)) { worker.cancel() }
    }
}

/// A continuation resumed at most once, from whichever side comes first.
private final class OnceResult<T: Sendable>: @unchecked Sendable {
    private let lock = Mutex(())
    private var continuation: CheckedContinuation<T, Error>?
    private var pending: Result<T, Error>?
    private var done = false

    func set(_ c: CheckedContinuation<T, Error>) {
        let early: Result<T, Error>? = lock.withLock { _ in
            if let pending { self.pending = nil; return pending }
            continuation = c
            return nil
        }
        if let early { c.resume(with: early) }
    }

    /// Resumes with `result` unless already resumed; returns whether this call won.
    @discardableResult
    func resume(_ result: Result<T, Error>) -> Bool {
        let (won, c): (Bool, CheckedContinuation<T, Error>?) = lock.withLock { _ in
            if done { return (false, nil) }
            done = true
            if let c = continuation { continuation = nil; return (true, c) }
            pending = result
            return (true, nil)
        }
        c?.resume(with: result)
        return won
    }
}
