import VirtualDisk

/// One image level as `disk info --json` and `disk create --json` print it: `DiskDescription` with its
/// format-specific properties typed (numbers as JSON numbers, yes/no as booleans) under camelCase keys,
/// so scripts read `properties.hasParent` instead of comparing the string "yes".
struct LevelJSON: Encodable {
    var path: String
    var format: DiskFormat
    var type: DiskType
    var virtualSize: UInt64
    var fileSize: UInt64
    var allocatedSize: UInt64
    var logicalSectorSize: Int
    var physicalSectorSize: Int
    var blockSize: Int
    var identity: String
    var parentID: String?
    var parentLocators: [ParentLocator]?
    var properties: [String: Value]

    /// A typed JSON value.
    enum Value: Encodable, Equatable {
        case text(String), number(UInt64), flag(Bool), none
        func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            switch self {
            case let .text(s): try c.encode(s)
            case let .number(n): try c.encode(n)
            case let .flag(b): try c.encode(b)
            case .none: try c.encodeNil()
            }
        }
    }

    /// The properties whose values are yes/no and numbers; every other property is text. A number
    /// property that holds no number (a fixed VHD's "data offset": none) is null, never a string.
    static let flags: Set<String> = ["saved state", "leave blocks allocated", "has parent"]
    static let numbers: Set<String> = ["current size", "original size", "max table entries", "table offset", "allocated blocks",
                                       "chunk ratio", "log size", "header sequence", "data offset"]

    init(_ d: DiskDescription) {
        path = d.path; format = d.format; type = d.type; virtualSize = d.virtualSize; fileSize = d.fileSize
        allocatedSize = d.allocatedSize; logicalSectorSize = d.logicalSectorSize; physicalSectorSize = d.physicalSectorSize
        blockSize = d.blockSize; identity = d.identity; parentID = d.parentID; parentLocators = d.parentLocators
        properties = [:]
        for (key, value) in d.properties {
            let typed: Value
            if Self.flags.contains(key) {
                typed = value == "yes" ? .flag(true) : value == "no" ? .flag(false) : .text(value)
            } else if Self.numbers.contains(key) {
                typed = UInt64(value).map(Value.number) ?? .none
            } else {
                typed = .text(value)
            }
            properties[Self.camelCase(key)] = typed
        }
    }

    /// Every key, always: a level without a parent has `"parentID": null`, so the keys stay the same
    /// for every image.
    enum CodingKeys: String, CodingKey {
        case path, format, type, virtualSize, fileSize, allocatedSize, logicalSectorSize, physicalSectorSize, blockSize
        case identity, parentID, parentLocators, properties
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(path, forKey: .path)
        try c.encode(format, forKey: .format)
        try c.encode(type, forKey: .type)
        try c.encode(virtualSize, forKey: .virtualSize)
        try c.encode(fileSize, forKey: .fileSize)
        try c.encode(allocatedSize, forKey: .allocatedSize)
        try c.encode(logicalSectorSize, forKey: .logicalSectorSize)
        try c.encode(physicalSectorSize, forKey: .physicalSectorSize)
        try c.encode(blockSize, forKey: .blockSize)
        try c.encode(identity, forKey: .identity)
        try c.encode(parentID, forKey: .parentID)
        try c.encode(parentLocators, forKey: .parentLocators)
        try c.encode(properties, forKey: .properties)
    }

    /// "geometry (C/H/S)" → "geometryCHS", "parent locator relative_path" → "parentLocatorRelativePath".
    static func camelCase(_ key: String) -> String {
        let words = key.split { !$0.isLetter && !$0.isNumber }.map(String.init)
        guard let first = words.first else { return key }
        return first.lowercased() + words.dropFirst().map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
    }
}

/// `disk info --json`, with or without `--chain`: always the levels, leaf first, so one parser reads both.
struct InfoJSON: Encodable {
    var levels: [LevelJSON]
}
