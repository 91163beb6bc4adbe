//! The wall clock, in one place: everything that records a time reads it here, and nothing
//! that decides (the plan, the forget threshold) reads it at all: they are given `now`.

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
