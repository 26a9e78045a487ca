/// Parsing and printing of byte counts with binary suffixes (K, M, G, T = 2^10 ... 2^40).
public enum ByteCount {
    /// Parses `"64G"`, `"512m"`, `"2MiB"`, `"1048576"`. Suffixes are binary and case-insensitive.
    public static func parse(_ text: String) throws -> UInt64 {
        var digits = Substring(text.trimmingWhitespace())
        var unit: UInt64 = 1
        for suffix in ["IB", "B"] where digits.uppercased().hasSuffix(suffix) && digits.count > suffix.count {
            digits = digits.dropLast(suffix.count)
            break
        }
        if let last = digits.last, !last.isNumber {
            switch last.uppercased() {
            case "K": unit = 1 << 10
            case "M": unit = 1 << 20
            case "G": unit = 1 << 30
            case "T": unit = 1 << 40
            case "P": unit = 1 << 50
            default: throw StorageError.invalidArgument("invalid size '\(text)': unknown suffix '\(last)' (use K, M, G or T)")
            }
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, let value = UInt64(digits) else {
            throw StorageError.invalidArgument("invalid size '\(text)': expected a whole number with an optional K, M, G or T suffix")
        }
        let (product, overflow) = value.multipliedReportingOverflow(by: unit)
        guard !overflow else { throw StorageError.invalidArgument("invalid size '\(text)': too large") }
        return product
    }

    /// Formats a byte count for people: `"2.0 GiB"`, `"512 B"`.
    public static func format(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes)
        var index = 0
        while value >= 1024, index < units.count - 1 {
            value /= 1024
            index += 1
        }
        if index == 0 { return "\(bytes) B" }
        let tenths = (value * 10).rounded() / 10
        return "\(tenths) \(units[index])"
    }
}

extension String {
    public func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
