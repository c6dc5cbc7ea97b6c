//! The server clock, below every module that reads the time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch by the server clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `requested`, or the server clock when it is 0.
pub fn at(requested: i64) -> i64 {
    if requested == 0 {
        now_ms()
    } else {
        requested
    }
}
