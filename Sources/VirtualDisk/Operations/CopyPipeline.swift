import Storage
import Dispatch
import Foundation
import Synchronization

/// Overlaps reading and writing in the copy loops: a background thread reads the next pieces into a
/// few chunk buffers while writers store the ones already read. With one writer (the caller) pieces
/// are written in order; with several, in any order (only for targets whose writes are independent,
/// such as positioned writes straight into a store). Memory stays bounded (`depth` + writers buffers).
final class CopyPipeline<Piece>: @unchecked Sendable {
    private let pieces: [Piece]
    private let read: (Piece, UnsafeMutableRawBufferPointer) throws -> Void
    private let prefetch: ((Piece) -> Void)?
    private let lookahead: Int
    private let lock = Mutex(())
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
        let firstError = Mutex<(any Error)?>(nil)
        let helpers = DispatchGroup()
        defer {
            lock.withLock { _ in cancelled = true }
            for _ in buffers { freeSignal.signal() }
            for _ in 0..<writerCount { readySignal.signal() }
            helpers.wait()
            finished.wait()
        }
        let consume: () -> Void = { [self] in
            while true {
                readySignal.wait()
                let next = lock.withLock { _ -> (index: Int, buffer: UnsafeMutableRawBufferPointer?, error: Error?)? in
                    if cancelled || ready.isEmpty { return nil }
                    return ready.removeFirst()
                }
                guard let item = next, let buffer = item.buffer else { return }  // cancelled, or end of input
                do {
                    if let error = item.error { throw error }
                    try write(pieces[item.index], UnsafeRawBufferPointer(buffer))
                } catch {
                    firstError.withLock { if $0 == nil { $0 = error } }
                    lock.withLock { _ in cancelled = true }
                    for _ in 0..<writerCount { readySignal.signal() }
                    for _ in buffers { freeSignal.signal() }
                    return
                }
                lock.withLock { _ in free.append(buffer) }
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
        if let error = firstError.withLock({ $0 }) { throw error }
    }

    private func produce() {
        defer { finished.signal() }
        if let prefetch { for piece in pieces.prefix(lookahead) { prefetch(piece) } }
        for index in pieces.indices {
            if let prefetch, index + lookahead < pieces.count { prefetch(pieces[index + lookahead]) }
            freeSignal.wait()
            guard let buffer = lock.withLock({ _ -> UnsafeMutableRawBufferPointer? in
                cancelled || free.isEmpty ? nil : free.removeLast()
            }) else { return }
            var failure: Error?
            do { try read(pieces[index], buffer) } catch { failure = error }
            lock.withLock { _ in ready.append((index, buffer, failure)) }
            readySignal.signal()
            if failure != nil { return }
        }
        // One end marker per writer.
        lock.withLock { _ in for _ in 0..<writerCount { ready.append((-1, nil, nil)) } }
        for _ in 0..<writerCount { readySignal.signal() }
    }
}

/// A closure handed to a writer thread; the pipeline synchronises everything it touches.
private struct UncheckedWork: @unchecked Sendable {
    let body: () -> Void
}
