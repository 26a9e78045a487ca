import Foundation
import Storage
import Synchronization
import SystemPackage
import Targets
import Testing
import TestSupport

/// The proof behind `SMBContext`'s shared lock for data calls: with Samba's thread interface
/// installed, reads and writes on different contexts run at the same time. Several threads each write
/// a file of their own in pieces of uneven sizes while a second handle reads the same file back
/// behind the writes (as replication's verify does), and another thread keeps making, listing,
/// stat-ing, publishing and removing small files (metadata calls, exclusive) in between. Every byte
/// written is checked, from the read-back, from a fresh read and from the server's own disk.
///
/// The control, checked 2026-12-02: with the lock shared for data calls but Samba's thread interface
/// not installed (the talloc stack frames one global again), this test dies within seconds (SIGABRT
/// or SIGSEGV inside libsmbclient); with it installed it passed every time.
@Suite(.serialized) struct SMBConcurrencyTests {
    /// Deterministic bytes of writer `w` (a different pattern per writer and position), made 8 bytes
    /// at a time (a debug build is slow byte by byte).
    static func pattern(_ w: Int, _ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            var x = UInt64(w + 1) &* 0xBF58_476D_1CE4_E5B9
            for i in 0..<words.count {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                words[i] = x
            }
        }
        return out
    }

    @Test func concurrentReadsAndWritesOnSeparateContextsKeepEveryByte() async throws {
        guard try SambaServer.available() else { return }
        try await offPool {
            #expect(SMBContext.concurrentData || ProcessInfo.processInfo.environment["BULWARK_SMB_SERIAL"] == "1",
                    "Samba's thread interface was not installed: data calls are serialized")
            let server = try SambaServer()
            defer { server.stop() }
            let target = try server.target()
            let space = target.smbSpace
            let writers = 4
            let size = 24 << 20
            let expected = (0..<writers).map { Self.pattern($0, size) }
            let failures = Mutex<[String]>([])
            let readBack = Mutex<[Int: [UInt8]]>([:])
            let stop = Atomic<Bool>(false)
            let group = DispatchGroup()
            func spawn(_ body: @escaping @Sendable () throws -> Void) {
                group.enter()
                Thread.detachNewThread {
                    defer { group.leave() }
                    do { try body() } catch { failures.withLock { $0.append("\(error)") } }
                }
            }
            for w in 0..<writers {
                let path = FilePath("/w\(w).bin")
                let written = Atomic<Int>(0)
                let bytes = expected[w]
                // The writer: uneven pieces, from 1 byte to 3 MiB.
                let out = try space.create(path)
                spawn {
                    defer { try? out.close() }
                    var rng = SystemRandomNumberGenerator()
                    var offset = 0
                    while offset < size {
                        let n = min(size - offset, [1, 4096, 65_537, 1 << 20, 3 << 20].randomElement(using: &rng)!)
                        try bytes.withUnsafeBytes { all in
                            try out.write(UnsafeRawBufferPointer(rebasing: all[offset..<(offset + n)]), at: UInt64(offset))
                        }
                        offset += n
                        written.store(offset, ordering: .releasing)
                    }
                    try out.flush()
                }
                // The read-back: another handle (another context), behind the writer, 2 MiB at a time.
                spawn {
                    let back = try space.open(path, writable: false)
                    defer { try? back.close() }
                    var got = [UInt8]()
                    got.reserveCapacity(size)
                    while got.count < size {
                        let ready = written.load(ordering: .acquiring)
                        guard ready > got.count else { Thread.sleep(forTimeInterval: 0.001); continue }
                        let n = min(ready - got.count, 2 << 20)
                        got += try back.read(count: n, at: UInt64(got.count))
                    }
                    readBack.withLock { $0[w] = got }
                }
            }
            // Metadata calls in between, on contexts of their own.
            spawn {
                var i = 0
                while !stop.load(ordering: .relaxed) {
                    let folder = FilePath("/meta\(i % 3)")
                    try space.makeFolder(folder)
                    try target.publish(Array("note \(i)".utf8), at: folder.appending("n\(i).json"))
                    _ = try space.contents(of: folder)
                    _ = space.kind(of: "/w0.bin")
                    try space.remove(folder.appending("n\(i).json"))
                    i += 1
                }
            }
            // Stop the metadata thread once the data threads are done.
            let dataDone = DispatchGroup()
            dataDone.enter()
            Thread.detachNewThread {
                while readBack.withLock({ $0.count }) < writers && failures.withLock({ $0.isEmpty }) { Thread.sleep(forTimeInterval: 0.01) }
                stop.store(true, ordering: .relaxed)
                dataDone.leave()
            }
            dataDone.wait()
            group.wait()
            #expect(failures.withLock { $0 } == [])
            for w in 0..<writers {
                #expect(readBack.withLock { $0[w] } == expected[w], "writer \(w): the concurrent read-back differs")
                #expect(try target.read(FilePath("/w\(w).bin"), limit: size + 1) == expected[w], "writer \(w): a fresh read differs")
                let onDisk = try [UInt8](Data(contentsOf: URL(fileURLWithPath: server.shareFolder() + "/w\(w).bin")))
                #expect(onDisk == expected[w], "writer \(w): the server's file differs")
            }
        }
    }
}
