import Storage

extension BlockingPool {
    /// Where a job's long blocking work runs: a whole disk's capture, a verify, a prune, a restore
    /// (minutes each). Kept apart from `BlockingPool.disk`, whose short calls (a snapshot provider's
    /// prepare and copy, under deadlines) must never wait behind other policies' backups.
    public static let jobs = BlockingPool(name: "bulwark.jobs", limit: 4)
}
