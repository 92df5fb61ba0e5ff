//! `parse_retry_after` on arbitrary values and wall-clock readings.
//!
//! Input: the first 8 bytes (little-endian, signed) pick the wall clock, as
//! seconds from the Unix epoch (before it too); the rest, when UTF-8, is the
//! header value. Checks:
//! - it never panics;
//! - whether a value parses does not depend on the clock;
//! - a later clock never asks for a longer wait, and the wait shrinks by no
//!   more than the clock moved;
//! - delta-seconds do not depend on the clock at all;
//! - `retry_after_from_headers` agrees with `parse_retry_after` (ASCII values).
#![no_main]

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use libfuzzer_sys::fuzz_target;
use token_keeper::retry_after::{parse_retry_after, retry_after_from_headers};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (clock, rest) = data.split_at(8);
    let secs = i64::from_le_bytes(clock.try_into().unwrap());
    let now = if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    let Some(now) = now else { return };
    let Ok(value) = std::str::from_utf8(rest) else {
        return;
    };

    let delay = parse_retry_after(value, now);

    // One minute and one (leap-free) year later.
    for step in [Duration::from_secs(60), Duration::from_secs(365 * 86_400)] {
        let Some(later) = now.checked_add(step) else {
            continue;
        };
        let after = parse_retry_after(value, later);
        assert_eq!(
            delay.is_some(),
            after.is_some(),
            "whether {value:?} parses depends on the clock"
        );
        if let (Some(d), Some(a)) = (delay, after) {
            assert!(a <= d, "{value:?}: a later clock asks for a longer wait");
            assert!(
                d - a <= step,
                "{value:?}: the wait shrank by more than the clock moved"
            );
        }
    }

    let trimmed = value.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let expected = trimmed.parse::<u64>().unwrap_or(u64::MAX);
        assert_eq!(delay, Some(Duration::from_secs(expected)), "{value:?}");
    }

    // `to_str` refuses non-ASCII header values, so only ASCII can agree.
    if value.is_ascii() {
        if let Ok(header) = HeaderValue::from_str(value) {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, header);
            assert_eq!(
                retry_after_from_headers(&headers, now),
                delay,
                "{value:?}: the header path disagrees"
            );
        }
    }
});
