import ArgumentParser

/// A byte count typed by a user: `512`, `64M`, `1.5G`, `2T` (binary units, case-insensitive, an
/// optional `B`/`iB` after the unit). Parsed here rather than through `ExpressibleByArgument` so a bad
/// value gets a message that shows the accepted forms, and with integer arithmetic only, so no input
/// can trap: a decimal must come to a whole number of bytes, anything past 2^64 - 1 is refused.
struct Size: Sendable, Equatable {
    var bytes: UInt64

    /// The accepted forms, quoted in every refusal and in `--help`.
    static let forms = "a size like 512, 64M, 1.5G, 2T (binary units K, M, G, T)"

    /// The reason `text` is not a size.
    struct Invalid: Error, CustomStringConvertible {
        var reason: String
        var description: String { "\(reason); expected \(Size.forms)" }
    }

    init(bytes: UInt64) { self.bytes = bytes }

    /// Parses `text`; the transform every size option uses.
    static func parse(_ text: String) throws -> Size {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var rest = Substring(text.uppercased())
        if rest.hasPrefix("-") { throw Invalid(reason: "a size cannot be negative") }
        if rest.hasSuffix("IB"), rest.count > 2 { rest = rest.dropLast(2) } else if rest.hasSuffix("B"), rest.count > 1 { rest = rest.dropLast() }
        var unit: UInt64 = 1
        if let last = rest.last, let u = units[last] {
            unit = u
            rest = rest.dropLast()
        }
        let parts = rest.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let whole = parts[0], fraction = parts.count > 1 ? parts[1] : ""
        guard !whole.isEmpty, whole.allSatisfy(\.isASCIIDigit), fraction.allSatisfy(\.isASCIIDigit),
              parts.count == 1 || !fraction.isEmpty else {
            throw Invalid(reason: "'\(text)' is not a size")
        }
        guard let w = UInt64(whole) else { throw Invalid(reason: "'\(text)' is too large") }
        var (total, overflow) = w.multipliedReportingOverflow(by: unit)
        guard !overflow else { throw Invalid(reason: "'\(text)' is too large (the largest is 16 EiB - 1 byte)") }
        let digits = fraction.reversed().drop { $0 == "0" }.reversed()
        if !digits.isEmpty {
            // fraction × unit ÷ 10^n, in 128 bits: it must come out whole.
            guard digits.count <= 19, let f = UInt64(String(digits)) else { throw Invalid(reason: "'\(text)' has too many decimals") }
            var scale: UInt64 = 1
            for _ in digits { scale *= 10 }
            let product = f.multipliedFullWidth(by: unit)
            let (quotient, remainder) = scale.dividingFullWidth(product)
            guard remainder == 0 else {
                throw Invalid(reason: "'\(text)' is not a whole number of bytes")
            }
            (total, overflow) = total.addingReportingOverflow(quotient)
            guard !overflow else { throw Invalid(reason: "'\(text)' is too large (the largest is 16 EiB - 1 byte)") }
        }
        return Size(bytes: total)
    }

    /// The value as an `Int` for the engine's block sizes; call `checkBlockSize` in `validate()` first.
    var int: Int { Int(exactly: bytes) ?? Int.max }

    /// Refuses a block size no format takes (they stop at 256 MiB; each format checks its own range),
    /// so the value fits the engine's `Int` and the refusal comes with the command's usage.
    static func checkBlockSize(_ size: Size?) throws {
        if let size, size.bytes > 1 << 30 {
            throw ValidationError("--block-size \(size.bytes) is too large: block sizes are powers of two up to 256M (VHD from 512, VHDX from 1M)")
        }
    }
}

private extension Character {
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
