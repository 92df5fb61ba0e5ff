//! `Retry-After` (RFC 9110 §10.2.3): how long a server asks us to wait.
//!
//! The value is either delta-seconds (`120`) or an HTTP-date
//! (`Wed, 21 Oct 2026 07:28:00 GMT`, and the two obsolete date forms). A date
//! is turned into a delay against the wall-clock reading the adapter passed
//! in; a date in the past means "no wait". Unparseable values are ignored,
//! never trusted.

use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::HeaderMap;

/// The delay asked for by the first `Retry-After` header, if it parses.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use token_keeper::retry_after::parse_retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
/// assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
/// assert_eq!(
///     parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
///     Some(Duration::from_secs(60)),
/// );
/// assert_eq!(parse_retry_after("soon", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Delta-seconds; a number too large for u64 means "very long" (callers cap it).
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The delay asked for by a response's `Retry-After` header, if any.
pub fn retry_after_from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn delta_seconds() {
        assert_eq!(parse_retry_after("0", at(0)), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 5 ", at(0)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999999", at(0)),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(parse_retry_after("-5", at(0)), None);
        assert_eq!(parse_retry_after("1.5", at(0)), None);
        assert_eq!(parse_retry_after("", at(0)), None);
        assert_eq!(parse_retry_after("+5", at(0)), None);
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        // 1994-11-06T08:49:37Z, the RFC 9110 example.
        let now = at(784_111_777 - 30);
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_retry_after(form, now),
                Some(Duration::from_secs(30)),
                "{form}"
            );
        }
    }

    #[test]
    fn past_dates_mean_no_wait_and_garbage_is_ignored() {
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at(2_000_000_000)),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Sun, 32 Nov 1994 08:49:37 GMT", at(0)),
            None
        );
        assert_eq!(parse_retry_after("tomorrow", at(0)), None);
    }

    #[test]
    fn from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after_from_headers(&headers, at(0)), None);
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            retry_after_from_headers(&headers, at(0)),
            Some(Duration::from_secs(7))
        );
        headers.insert(RETRY_AFTER, http::HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(retry_after_from_headers(&headers, at(0)), None);
    }
}
