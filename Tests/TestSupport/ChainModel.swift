/// An in-memory model of a differencing chain for randomized tests: each level is the list of writes
/// made to it (base first), and a level reads as the base's zeros overlaid with every level's writes
/// from the base up to it.
public struct ChainModel: Sendable {
    public struct Write: Sendable {
        public var offset: Int
        public var bytes: [UInt8]
    }
    public let size: Int
    /// Writes per level, base (index 0) first.
    public private(set) var levels: [[Write]]

    public init(size: Int) {
        self.size = size
        levels = [[]]
    }

    public mutating func addLevel() { levels.append([]) }

    /// Folds levels `above...` (indices, base first) into level `ancestor`, as a merge does.
    public mutating func merge(from top: Int, into ancestor: Int) {
        for l in (ancestor + 1)...top { levels[ancestor] += levels[l] }
        levels.removeSubrange((ancestor + 1)...top)
    }

    public mutating func write(level: Int, offset: Int, bytes: [UInt8]) {
        levels[level].append(Write(offset: offset, bytes: bytes))
    }

    /// What `level` reads (base first indexing).
    public func view(_ level: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: size)
        for l in 0...level {
            for w in levels[l] { out.replaceSubrange(w.offset..<w.offset + w.bytes.count, with: w.bytes) }
        }
        return out
    }

    /// Random writes for one level: random offsets and lengths (some crossing block boundaries), some
    /// all zeros, some whole aligned runs. Returns them (already recorded in the model).
    @discardableResult
    public mutating func randomWrites(level: Int, count: Int, maxLength: Int = 300 << 10, rng: inout SeededRandom) -> [Write] {
        var out: [Write] = []
        for _ in 0..<count {
            let length = Int.random(in: 1...maxLength, using: &rng)
            var offset = Int.random(in: 0..<(size - length), using: &rng)
            if Bool.random(using: &rng) { offset &= ~4095 }
            let zero = Int.random(in: 0..<5, using: &rng) == 0
            let bytes = zero ? [UInt8](repeating: 0, count: length) : rng.bytes(length)
            write(level: level, offset: offset, bytes: bytes)
            out.append(Write(offset: offset, bytes: bytes))
        }
        return out
    }
}
