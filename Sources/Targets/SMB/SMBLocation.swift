import SystemPackage

/// An SMB location: `smb://[domain;]user@host[:port]/share[/path]`, percent-decoded.
///
/// A password in the URL is refused: a URL travels through argv, policies, logs and manifests, and a
/// secret must appear in none of them. The password comes from `SMBCredentials` instead. The
/// description is the URL again (percent-encoded where needed), so it is safe to print anywhere.
public struct SMBLocation: Sendable, Equatable, CustomStringConvertible {
    /// The Windows domain or workgroup, when the URL names one (`DOMAIN;user@...`).
    public var domain: String?
    /// The user name, when the URL names one.
    public var user: String?
    /// Host name or IP address (IPv6 without brackets).
    public var host: String
    /// The TCP port; nil for the default (445).
    public var port: UInt16?
    /// The share name.
    public var share: String
    /// The folder inside the share, absolute and `/`-separated (`/` for the share's top).
    public var path: FilePath

    public init(domain: String? = nil, user: String?, host: String, port: UInt16? = nil, share: String, path: FilePath = "/") {
        self.domain = domain
        self.user = user
        self.host = host
        self.port = port
        self.share = share
        self.path = path.isAbsolute ? path.lexicallyNormalized() : FilePath("/").pushing(path).lexicallyNormalized()
    }

    /// Whether `location` is an `smb://` URL (any letter case of the scheme).
    public static func isSMB(_ location: String) -> Bool { location.lowercased().hasPrefix("smb://") }

    /// Parses an `smb://` URL. Errors are `TargetError.invalidLocation` and never repeat a password.
    public init(parsing url: String) throws {
        guard Self.isSMB(url) else {
            throw TargetError.invalidLocation(url, reason: "not an smb:// URL (expected smb://[domain;]user@host[:port]/share[/path])")
        }
        let rest = Substring(url.dropFirst("smb://".count))
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let shown = Self.redacted(url)
        func fail(_ reason: String) -> TargetError { .invalidLocation(shown, reason: reason) }

        var hostPart = authority
        if let at = authority.lastIndex(of: "@") {
            let userInfo = authority[..<at]
            hostPart = authority[authority.index(after: at)...]
            if userInfo.contains(":") {
                throw fail("the URL contains a password; passwords in URLs end up in process lists and logs. Remove it and give --credentials FILE (mount.cifs format, mode 600) or set BULWARK_SMB_PASSWORD")
            }
            var userText = userInfo
            if let semicolon = userInfo.firstIndex(of: ";") {
                let d = try Self.decode(userInfo[..<semicolon], shown)
                guard !d.isEmpty else { throw fail("empty domain before ';'") }
                domain = d
                userText = userInfo[userInfo.index(after: semicolon)...]
            } else {
                domain = nil
            }
            let u = try Self.decode(userText, shown)
            guard !u.isEmpty else { throw fail("empty user name before '@'") }
            user = u
        } else {
            domain = nil
            user = nil
        }

        // host, [v6]:port or host:port
        var portText: Substring?
        if hostPart.hasPrefix("[") {
            guard let close = hostPart.firstIndex(of: "]") else { throw fail("unclosed '[' in the host") }
            host = String(hostPart[hostPart.index(after: hostPart.startIndex)..<close])
            let after = hostPart[hostPart.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { throw fail("unexpected text after the host: \(after)") }
        } else if let colon = hostPart.lastIndex(of: ":") {
            host = try Self.decode(hostPart[..<colon], shown)
            portText = hostPart[hostPart.index(after: colon)...]
        } else {
            host = try Self.decode(hostPart, shown)
        }
        guard !host.isEmpty else { throw fail("no host (expected smb://[domain;]user@host[:port]/share[/path])") }
        if let portText {
            guard let p = UInt16(portText), p > 0 else { throw fail("the port '\(portText)' is not a number from 1 to 65535") }
            port = p
        } else {
            port = nil
        }

        let components = rest[slash...].split(separator: "/", omittingEmptySubsequences: true)
        guard let first = components.first else { throw fail("no share name (expected smb://[domain;]user@host[:port]/share[/path])") }
        share = try Self.decode(first, shown)
        guard !share.isEmpty else { throw fail("empty share name") }
        var folder = FilePath("/")
        for c in components.dropFirst() {
            let name = try Self.decode(c, shown)
            guard name != ".", name != ".." else { throw fail("'.' and '..' are not allowed in the path") }
            guard !name.isEmpty, !name.contains("/"), !name.contains("\\"), !name.contains("\0") else {
                throw fail("the path component '\(c)' is not a usable name")
            }
            folder.append(name)
        }
        path = folder
    }

    /// The URL without secrets (there are none in it), percent-encoded where needed.
    public var description: String { display(path) }

    /// The URL of the share's top, without a path.
    public var shareURL: String { display("/") }

    /// The URL naming `path` (a path inside the share), for messages.
    public func display(_ path: FilePath) -> String {
        var s = "smb://"
        if let user {
            if let domain { s += Self.encode(domain) + ";" }
            s += Self.encode(user) + "@"
        }
        s += serverName
        s += "/" + Self.encode(share)
        for c in path.components { s += "/" + Self.encode(c.string) }
        return s
    }

    /// `host[:port]` as a URL writes it.
    public var serverName: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port.map { "\(h):\($0)" } ?? h
    }

    /// The URL libsmbclient is given for `path`: no user (the authentication callback supplies it)
    /// and no port (the context's `smbc_setPort` does), every name percent-encoded because
    /// libsmbclient decodes the URL it is given.
    func libraryURL(_ path: FilePath) -> String {
        var s = "smb://" + (host.contains(":") ? "[\(host)]" : host) + "/" + Self.encode(share)
        for c in path.components { s += "/" + Self.encode(c.string) }
        if path.components.isEmpty { s += "/" }
        return s
    }

    // MARK: percent coding

    static func encode(_ text: String) -> String {
        var out = ""
        for b in text.utf8 {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            default:
                let hex = Array("0123456789ABCDEF".utf8)
                out += "%" + String(decoding: [hex[Int(b >> 4)], hex[Int(b & 15)]], as: UTF8.self)
            }
        }
        return out
    }

    static func decode(_ text: Substring, _ shown: String) throws -> String {
        var bytes: [UInt8] = []
        var u = Array(text.utf8)[...]
        while let b = u.popFirst() {
            guard b == UInt8(ascii: "%") else { bytes.append(b); continue }
            guard u.count >= 2, let hi = hexValue(u[u.startIndex]), let lo = hexValue(u[u.startIndex + 1]) else {
                throw TargetError.invalidLocation(shown, reason: "bad percent escape in '\(text)' (a '%' must be followed by two hex digits; write a literal % as %25)")
            }
            bytes.append(hi << 4 | lo)
            u = u.dropFirst(2)
        }
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw TargetError.invalidLocation(shown, reason: "'\(text)' does not decode to UTF-8")
        }
        return s
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - 48
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - 87
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - 55
        default: return nil
        }
    }

    /// `url` with any password in its user part replaced by `***`, for error messages.
    static func redacted(_ url: String) -> String {
        guard isSMB(url) else { return url }
        let rest = url.dropFirst("smb://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        guard let at = authority.lastIndex(of: "@") else { return url }
        let userInfo = authority[..<at]
        guard let colon = userInfo.firstIndex(of: ":") else { return url }
        return "smb://" + userInfo[..<colon] + ":***" + authority[at...] + rest[slash...]
    }
}
