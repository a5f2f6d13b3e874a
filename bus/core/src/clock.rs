//! The wall clock, in the unit the store and the route tables use.

/// Current time, unix milliseconds (0 before 1970, `i64::MAX` past year 292 million).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
