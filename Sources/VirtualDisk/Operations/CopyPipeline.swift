import Dispatch
import Foundation

/// Overlaps reading and writing in the copy loops: a background thread reads the next pieces into a
/// few chunk buffers while the caller writes the ones already read, in order. Memory stays bounded
/// (`depth` + 1 chunk buffers).
final class CopyPipeline<Piece>: @unchecked Sendable {
    private let pieces: [Piece]
    private let read: (Piece, UnsafeMutableRawBufferPointer) throws -> Void
    private let lock = NSLock()
    private var free: [UnsafeMutableRawBufferPointer]
    private var ready: [(UnsafeMutableRawBufferPointer, Error?)] = []
    private let freeSignal: DispatchSemaphore
    private let readySignal = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private var cancelled = false
    private let buffers: [UnsafeMutableRawBufferPointer]

    /// `read` fills the buffer (at least as large as the piece needs) for one piece; it runs on the
    /// pipeline's thread and must only touch objects the caller does not use meanwhile.
    init(pieces: [Piece], depth: Int = 3, chunkSize: Int = OperationIO.chunkSize,
         read: @escaping (Piece, UnsafeMutableRawBufferPointer) throws -> Void) {
        self.pieces = pieces
        self.read = read
        buffers = (0...depth).map { _ in OperationIO.buffer(chunkSize) }
        free = buffers
        freeSignal = DispatchSemaphore(value: buffers.count)
    }

    deinit { for b in buffers { b.deallocate() } }

    /// Runs the reads in the background and calls `write` for each piece, in order, on this thread.
    func run(write: (Piece, UnsafeRawBufferPointer) throws -> Void) throws {
        guard !pieces.isEmpty else { return }
        let thread = Thread { [self] in produce() }
        thread.stackSize = 1 << 20
        thread.start()
        defer {
            lock.lock(); cancelled = true; lock.unlock()
            for _ in buffers { freeSignal.signal() }
            finished.wait()
        }
        for piece in pieces {
            readySignal.wait()
            lock.lock()
            let (buffer, error) = ready.removeFirst()
            lock.unlock()
            if let error { throw error }
            try write(piece, UnsafeRawBufferPointer(buffer))
            lock.lock()
            free.append(buffer)
            lock.unlock()
            freeSignal.signal()
        }
    }

    private func produce() {
        defer { finished.signal() }
        for piece in pieces {
            freeSignal.wait()
            lock.lock()
            if cancelled || free.isEmpty { lock.unlock(); return }
            let buffer = free.removeLast()
            lock.unlock()
            var failure: Error?
            do { try read(piece, buffer) } catch { failure = error }
            lock.lock()
            ready.append((buffer, failure))
            lock.unlock()
            readySignal.signal()
            if failure != nil { return }
        }
    }
}
