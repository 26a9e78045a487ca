import Storage
import Dispatch
import Foundation

/// Overlaps reading and writing in the copy loops: a background thread reads the next pieces into a
/// few chunk buffers while writers store the ones already read. With one writer (the caller) pieces
/// are written in order; with several, in any order (only for targets whose writes are independent,
/// such as positioned writes straight into a store). Memory stays bounded (`depth` + writers buffers).
final class CopyPipeline<Piece>: @unchecked Sendable {
    private let pieces: [Piece]
    private let read: (Piece, UnsafeMutableRawBufferPointer) throws -> Void
    private let prefetch: ((Piece) -> Void)?
    private let lookahead: Int
    private let lock = NSLock()
    private var free: [UnsafeMutableRawBufferPointer]
    private var ready: [(index: Int, buffer: UnsafeMutableRawBufferPointer?, error: Error?)] = []
    private let freeSignal: DispatchSemaphore
    private let readySignal = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private var cancelled = false
    private var writerCount = 1
    private let buffers: [UnsafeMutableRawBufferPointer]

    /// `read` fills the buffer (at least as large as the piece needs) for one piece; it runs on the
    /// pipeline's thread and must only touch objects the writers do not use meanwhile.
    /// `prefetch`, when given, is called (on the reading thread) for the piece `lookahead` places
    /// ahead of the one being read, so the kernel fetches it in parallel (cold caches, virtual disks).
    init(pieces: [Piece], depth: Int = 3, writers: Int = 1, chunkSize: Int = OperationIO.chunkSize,
         lookahead: Int = 4, prefetch: ((Piece) -> Void)? = nil,
         read: @escaping (Piece, UnsafeMutableRawBufferPointer) throws -> Void) {
        self.pieces = pieces
        self.read = read
        self.prefetch = prefetch
        self.lookahead = lookahead
        writerCount = max(1, writers)
        buffers = (0..<(depth + writerCount)).map { _ in OperationIO.buffer(chunkSize) }
        free = buffers
        freeSignal = DispatchSemaphore(value: buffers.count)
    }

    deinit { for b in buffers { b.deallocate() } }

    /// Runs the reads in the background and calls `write` for each piece: on this thread, in order,
    /// with one writer; from `writers` threads (this one included), in any order, otherwise.
    func run(write: @escaping (Piece, UnsafeRawBufferPointer) throws -> Void) throws {
        guard !pieces.isEmpty else { return }
        let producer = Thread { [self] in produce() }
        producer.stackSize = 1 << 20
        producer.start()
        var firstError: Error?
        let errorLock = NSLock()
        let helpers = DispatchGroup()
        defer {
            lock.lock(); cancelled = true; lock.unlock()
            for _ in buffers { freeSignal.signal() }
            for _ in 0..<writerCount { readySignal.signal() }
            helpers.wait()
            finished.wait()
        }
        let consume: () -> Void = { [self] in
            while true {
                readySignal.wait()
                lock.lock()
                if cancelled || ready.isEmpty { lock.unlock(); return }
                let item = ready.removeFirst()
                lock.unlock()
                guard let buffer = item.buffer else { return }  // end of input
                do {
                    if let error = item.error { throw error }
                    try write(pieces[item.index], UnsafeRawBufferPointer(buffer))
                } catch {
                    errorLock.lock()
                    if firstError == nil { firstError = error }
                    errorLock.unlock()
                    lock.lock(); cancelled = true; lock.unlock()
                    for _ in 0..<writerCount { readySignal.signal() }
                    for _ in buffers { freeSignal.signal() }
                    return
                }
                lock.lock()
                free.append(buffer)
                lock.unlock()
                freeSignal.signal()
            }
        }
        let work = UncheckedWork(body: consume)
        for _ in 1..<writerCount {
            helpers.enter()
            let t = Thread { work.body(); helpers.leave() }
            t.stackSize = 1 << 20
            t.start()
        }
        consume()
        helpers.wait()
        errorLock.lock()
        defer { errorLock.unlock() }
        if let firstError { throw firstError }
    }

    private func produce() {
        defer { finished.signal() }
        if let prefetch { for piece in pieces.prefix(lookahead) { prefetch(piece) } }
        for index in pieces.indices {
            if let prefetch, index + lookahead < pieces.count { prefetch(pieces[index + lookahead]) }
            freeSignal.wait()
            lock.lock()
            if cancelled || free.isEmpty { lock.unlock(); return }
            let buffer = free.removeLast()
            lock.unlock()
            var failure: Error?
            do { try read(pieces[index], buffer) } catch { failure = error }
            lock.lock()
            ready.append((index, buffer, failure))
            lock.unlock()
            readySignal.signal()
            if failure != nil { return }
        }
        // One end marker per writer.
        lock.lock()
        for _ in 0..<writerCount { ready.append((-1, nil, nil)) }
        lock.unlock()
        for _ in 0..<writerCount { readySignal.signal() }
    }
}

/// A closure handed to a writer thread; the pipeline synchronises everything it touches.
private struct UncheckedWork: @unchecked Sendable {
    let body: () -> Void
}
