import Foundation

/// A transfer rate in bytes per second, or no limit: `10MiB/s`, `500KiB/s`, `1.5GiB/s`, `20MB/s`,
/// `100Mbit/s`, `unlimited`.
///
/// Units: binary `KiB MiB GiB TiB` (2^10 ... 2^40; the `i` forms in any case), decimal `B KB MB GB TB`
/// (10^3 ... 10^12; `kB` too), and bits `kbit Mbit Gbit` (10^3 ... 10^9 bits, as network links are
/// rated). `Mb`, `mb` and `Mbps` are refused rather than guessed: in bandwidth settings a lowercase `b`
/// often means bits, and a guess off by a factor of eight is the worst kind of silent mistake.
///
/// The rate is kept in whole bytes per second (a fraction of a byte is not worth a second thought at
/// these rates), at least 1.
public struct ByteRate: Sendable, Hashable, Comparable, CustomStringConvertible, Codable {
    /// Bytes per second; nil means unlimited.
    public let bytesPerSecond: UInt64?

    /// No limit: a throttle at this rate never waits.
    public static let unlimited = ByteRate(storage: nil)

    private init(storage: UInt64?) { bytesPerSecond = storage }

    /// A limit of `bytesPerSecond` (at least 1; 0 is raised to 1, as 0 would stop a transfer forever).
    public init(bytesPerSecond: UInt64) { self.bytesPerSecond = max(1, bytesPerSecond) }

    public static func bytes(_ n: UInt64) -> ByteRate { ByteRate(bytesPerSecond: n) }
    public static func kibibytes(_ n: Double) -> ByteRate { ByteRate(bytesPerSecond: UInt64((n * 1024).rounded())) }
    public static func mebibytes(_ n: Double) -> ByteRate { ByteRate(bytesPerSecond: UInt64((n * 1_048_576).rounded())) }
    public static func gibibytes(_ n: Double) -> ByteRate { ByteRate(bytesPerSecond: UInt64((n * 1_073_741_824).rounded())) }

    public var isUnlimited: Bool { bytesPerSecond == nil }

    /// Unlimited sorts above every limit.
    public static func < (a: ByteRate, b: ByteRate) -> Bool {
        switch (a.bytesPerSecond, b.bytesPerSecond) {
        case let (x?, y?): x < y
        case (_?, nil): true
        default: false
        }
    }

    /// One example of each form, for error messages.
    public static let examples = "write a rate such as 10MiB/s, 500KiB/s, 1.5GiB/s, 20MB/s, 100Mbit/s or unlimited"

    /// (name, bytes per unit), matched exactly; the binary forms are also matched case-insensitively.
    static let units: [(name: String, bytes: Double)] = [
        ("B", 1),
        ("KiB", 1024), ("MiB", 1_048_576), ("GiB", 1_073_741_824), ("TiB", 1_099_511_627_776),
        ("KB", 1e3), ("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12),
        ("kbit", 1e3 / 8), ("Kbit", 1e3 / 8), ("Mbit", 1e6 / 8), ("Gbit", 1e9 / 8), ("bit", 1.0 / 8),
    ]

    /// Parses a rate; throws `ThrottleSyntaxError` saying what is wrong, with an example.
    public init(parsing text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else {
            throw ThrottleSyntaxError(message: "empty rate", fix: Self.examples)
        }
        if trimmed.lowercased() == "unlimited" {
            self = .unlimited
            return
        }
        if trimmed.lowercased().hasSuffix("ps") {
            throw ThrottleSyntaxError(message: "'\(trimmed)' is not a rate: write the unit per second as '/s'",
                                      fix: "write 10MB/s for megabytes or 100Mbit/s for megabits per second")
        }
        guard trimmed.hasSuffix("/s") else {
            throw ThrottleSyntaxError(message: "'\(trimmed)' has no '/s': a rate is an amount per second",
                                      fix: trimmed.first?.isNumber == true ? "write \(trimmed)/s" : Self.examples)
        }
        let body = trimmed.dropLast(2).trimmingCharacters(in: .whitespaces)
        let numberEnd = body.firstIndex { !($0.isASCII && ($0.isNumber || $0 == ".")) } ?? body.endIndex
        let numberText = String(body[..<numberEnd])
        let unitText = body[numberEnd...].trimmingCharacters(in: .whitespaces)
        guard !numberText.isEmpty else {
            if body.hasPrefix("-") {
                throw ThrottleSyntaxError(message: "rate '\(trimmed)' is negative", fix: Self.examples)
            }
            throw ThrottleSyntaxError(message: "'\(trimmed)' does not start with a number", fix: Self.examples)
        }
        guard numberText.filter({ $0 == "." }).count <= 1, numberText != ".", let value = Double(numberText), value.isFinite else {
            throw ThrottleSyntaxError(message: "'\(numberText)' in '\(trimmed)' is not a number", fix: Self.examples)
        }
        guard !unitText.isEmpty else {
            throw ThrottleSyntaxError(message: "'\(trimmed)' has no unit",
                                      fix: "write the unit before '/s': \(numberText)MiB/s, \(numberText)MB/s or \(numberText)B/s")
        }
        guard let unit = Self.unit(named: unitText) else {
            if unitText.hasSuffix("b") {
                let prefix = unitText.dropLast()
                let bitPrefix = prefix.lowercased() == "k" ? "k" : prefix.uppercased()
                throw ThrottleSyntaxError(message: "unit '\(unitText)' in '\(trimmed)' is ambiguous (bits or bytes?)",
                                          fix: "write \(numberText)\(prefix.uppercased())B/s for bytes or \(numberText)\(bitPrefix)bit/s for bits")
            }
            throw ThrottleSyntaxError(message: "unknown unit '\(unitText)' in '\(trimmed)'",
                                      fix: "use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, kbit, Mbit or Gbit before '/s': \(Self.examples)")
        }
        let bytes = (value * unit).rounded()
        guard bytes >= 1 else {
            throw ThrottleSyntaxError(message: "rate '\(trimmed)' is \(value == 0 ? "zero" : "less than one byte per second"): it would never finish",
                                      fix: "write a rate of at least 1B/s, or unlimited")
        }
        guard bytes < 9.0e18 else {
            throw ThrottleSyntaxError(message: "rate '\(trimmed)' is too large", fix: "write unlimited")
        }
        bytesPerSecond = UInt64(bytes)
    }

    static func unit(named name: String) -> Double? {
        if let exact = units.first(where: { $0.name == name }) { return exact.bytes }
        // The binary forms cannot be mistaken for bits: accept them in any case (mib, MIB).
        return units.first { $0.name.count == 3 && $0.name.dropFirst() == "iB" && $0.name.lowercased() == name.lowercased() }?.bytes
    }

    /// The rate in the unit that writes it exactly with the fewest significant digits (the larger
    /// unit on a tie): `10MiB/s`, `1.5GiB/s`, `500KiB/s`, `20MB/s`, `12.5MB/s`, `unlimited`.
    /// `ByteRate(parsing: rate.description) == rate`.
    public var description: String {
        guard let bytes = bytesPerSecond else { return "unlimited" }
        let candidates: [(String, Double)] = [
            ("TiB", 1_099_511_627_776), ("TB", 1e12), ("GiB", 1_073_741_824), ("GB", 1e9),
            ("MiB", 1_048_576), ("MB", 1e6), ("KiB", 1024), ("KB", 1e3), ("B", 1),
        ]
        var best: (text: String, digits: Int)?
        for (name, size) in candidates {
            let value = Double(bytes) / size
            let thousandths = value * 1000
            // Exact within three decimals, and the printed number reads back to the same bytes.
            guard value >= 1, thousandths == thousandths.rounded(), UInt64((thousandths.rounded() / 1000 * size).rounded()) == bytes else { continue }
            let number = Self.format(value)
            var digits = Substring(number.filter { $0 != "." })
            while digits.first == "0" { digits = digits.dropFirst() }
            while digits.last == "0" { digits = digits.dropLast() }
            if best == nil || digits.count < best!.digits { best = (number + name + "/s", digits.count) }
        }
        return best?.text ?? "\(bytes)B/s"
    }

    static func format(_ value: Double) -> String {
        if value == value.rounded() { return String(UInt64(value)) }
        var text = String(format: "%.3f", value)
        while text.hasSuffix("0") { text.removeLast() }
        if text.hasSuffix(".") { text.removeLast() }
        return text
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        try self.init(parsing: text)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Why a rate, a time of day, a set of weekdays or a bandwidth window could not be parsed, and how to
/// write it instead. `key` names the window's key at fault (`days`, `from`, `to`, `rate`) when the
/// text came from one, so the policy parser can point at the right YAML node.
public struct ThrottleSyntaxError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var fix: String?
    public var key: String?

    public init(message: String, fix: String? = nil, key: String? = nil) {
        self.message = message
        self.fix = fix
        self.key = key
    }

    public var description: String {
        (key.map { "'\($0)': " } ?? "") + message + (fix.map { " (fix: \($0))" } ?? "")
    }
}
