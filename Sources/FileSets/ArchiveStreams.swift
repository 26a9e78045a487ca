import CArchive
import Storage
import SystemPackage
import Targets
#if canImport(Glibc)
import Glibc
#endif

/// libarchive writing into a store of any space (a local folder, an SMB share) in order, hashing
/// what it writes: the archive's SHA-256 is known when it is closed, without reading it back.
final class ArchiveSink {
    let store: any ByteStore
    let path: String
    var offset: UInt64 = 0
    var hasher = Digest.Stream()
    var failure: (any Error)?

    init(store: any ByteStore, path: String) {
        self.store = store
        self.path = path
    }

    /// Opens `archive` (a writer with its format and filters set) onto this sink.
    func open(_ archive: OpaquePointer) -> Int32 {
        let context = Unmanaged.passUnretained(self).toOpaque()
        return archive_write_open2(archive, context, nil, { _, context, buffer, length in
            let sink = Unmanaged<ArchiveSink>.fromOpaque(context!).takeUnretainedValue()
            let bytes = UnsafeRawBufferPointer(start: buffer, count: length)
            do {
                try sink.store.write(bytes, at: sink.offset)
                sink.hasher.update(bytes)
                sink.offset += UInt64(length)
                return length
            } catch {
                sink.failure = error
                return -1
            }
        }, nil, nil)
    }
}

/// libarchive reading from a store of any space, in 1 MiB pieces, hashing what it reads so a
/// restore that reads the whole archive also checks it against the manifest.
final class ArchiveSource {
    let store: any ByteStore
    let size: UInt64
    var offset: UInt64 = 0
    var hasher = Digest.Stream()
    var failure: (any Error)?
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)

    init(store: any ByteStore) throws {
        self.store = store
        size = try store.size()
    }

    deinit { buffer.deallocate() }

    func open(_ archive: OpaquePointer) -> Int32 {
        let context = Unmanaged.passUnretained(self).toOpaque()
        return archive_read_open2(archive, context, nil, { _, context, out in
            let source = Unmanaged<ArchiveSource>.fromOpaque(context!).takeUnretainedValue()
            let n = Int(min(UInt64(source.buffer.count), source.size - source.offset))
            guard n > 0 else { return 0 }
            do {
                let slice = UnsafeMutableRawBufferPointer(rebasing: source.buffer[..<n])
                try source.store.read(into: slice, at: source.offset)
                source.hasher.update(UnsafeRawBufferPointer(slice))
                source.offset += UInt64(n)
                out?.pointee = UnsafeRawPointer(source.buffer.baseAddress)
                return n
            } catch {
                source.failure = error
                return -1
            }
        }, nil, nil)
    }

    /// Reads what libarchive left unread (the archive's padding), so the hash covers the whole file.
    func drain() throws {
        while offset < size {
            let n = Int(min(UInt64(buffer.count), size - offset))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<n])
            try store.read(into: slice, at: offset)
            hasher.update(UnsafeRawBufferPointer(slice))
            offset += UInt64(n)
        }
    }
}

/// libarchive's message for `archive`.
func archiveMessage(_ archive: OpaquePointer) -> String {
    archive_error_string(archive).map { String(cString: $0) } ?? "unknown libarchive error"
}
