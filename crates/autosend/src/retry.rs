//! How long the server asks us to wait, read from numbers it sends: never trusted as they come
//! (NaN, infinities, negative and absurd values become a bounded default).

use std::time::{Duration, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::wire::number_of;

/// A 429 whose wait cannot be read (missing, NaN, negative, absurd) waits this long.
pub(crate) const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);
/// A wait of zero would retry at once into the same window.
const MIN_RATE_LIMIT_WAIT: Duration = Duration::from_millis(250);
/// A bogus but plausible wait must not park the daemon for longer than this.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);
/// `X-RateLimit-Remaining: 0` pauses until the reset, at most this long (windows are a minute).
pub(crate) const MAX_RESET_WAIT: Duration = Duration::from_secs(61);
/// A wait further ahead than a day is not a rate limit but a wrong number (a timestamp in
/// milliseconds, 1e300): it gets the default wait rather than the hour's cap.
const MAX_PLAUSIBLE_WAIT_SECS: f64 = 86_400.0;
/// A header as a finite number; `NaN`, `inf` and text are `None`.
pub(crate) fn header_f64(headers: &HeaderMap, name: &str) -> Option<f64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite())
}

/// `Retry-After` may also be an HTTP date (RFC 9110); returned as an epoch timestamp.
pub(crate) fn http_date(headers: &HeaderMap, name: &str, now: f64) -> Option<f64> {
    let text = headers.get(name)?.to_str().ok()?;
    let at = httpdate::parse_http_date(text.trim()).ok()?;
    let secs = at.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Some(secs.max(now))
}

/// The wait a server's number asks for. A value above 1,000,000,000 can only be an epoch
/// timestamp; a small one only seconds. `None` for a value that is no wait at all: not
/// finite, negative, or further ahead than a day; the caller then uses its default, so no
/// server number reaches `Duration::from_secs_f64` unchecked (it panics on NaN and inf).
pub(crate) fn wait_from(value: f64, now: f64) -> Option<Duration> {
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let secs = if value > 1_000_000_000.0 {
        value - now
    } else {
        value
    };
    if !secs.is_finite() || secs > MAX_PLAUSIBLE_WAIT_SECS {
        return None;
    }
    // A timestamp in the past asks for no wait.
    Some(Duration::from_secs_f64(secs.max(0.0)))
}

/// How long a 429 asks us to wait: the first readable of `error.retryAfter`, `Retry-After`
/// (seconds or an HTTP date) and `X-RateLimit-Reset`; else 1 s. Between 250 ms and an hour.
pub(crate) fn retry_wait(error: &Value, headers: &HeaderMap, now: f64) -> Duration {
    let wait = |v: Option<f64>| v.and_then(|v| wait_from(v, now));
    wait(error.get("retryAfter").and_then(number_of))
        .or_else(|| wait(header_f64(headers, "retry-after")))
        .or_else(|| wait(http_date(headers, "retry-after", now)))
        .or_else(|| wait(header_f64(headers, "x-ratelimit-reset")))
        .unwrap_or(DEFAULT_RATE_LIMIT_WAIT)
        .clamp(MIN_RATE_LIMIT_WAIT, MAX_RATE_LIMIT_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_epoch_timestamp() {
        let h = HeaderMap::new();
        let now = 2_000_000_000.0;
        let secs = retry_wait(&serde_json::json!({"retryAfter": 7}), &h, now);
        assert_eq!(secs, Duration::from_secs(7));
        let epoch = retry_wait(
            &serde_json::json!({"retryAfter": 2_000_000_003u64}),
            &h,
            now,
        );
        assert_eq!(epoch, Duration::from_secs(3));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_wait(&Value::Null, &h, now), Duration::from_secs(2));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 18 May 2033 03:33:24 GMT"),
        );
        assert_eq!(retry_wait(&Value::Null, &h, now), Duration::from_secs(4));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("2000000005"));
        assert_eq!(retry_wait(&Value::Null, &h, now), Duration::from_secs(5));
    }

    #[test]
    fn waits_from_bad_numbers_fall_back_to_the_default() {
        let now = 2_000_000_000.0;
        for bad in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -5.0,
            1e300,
            1.9e12,
        ] {
            assert_eq!(wait_from(bad, now), None, "{bad}");
            let error = serde_json::json!({ "retryAfter": bad.to_string() });
            assert_eq!(
                retry_wait(&error, &HeaderMap::new(), now),
                DEFAULT_RATE_LIMIT_WAIT,
                "{bad}"
            );
        }
        // Plausible but long: capped, not defaulted.
        assert_eq!(
            retry_wait(
                &serde_json::json!({"retryAfter": 7200}),
                &HeaderMap::new(),
                now
            ),
            MAX_RATE_LIMIT_WAIT
        );
        // An unreadable body value gives way to a readable header.
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(
            retry_wait(&serde_json::json!({"retryAfter": "NaN"}), &h, now),
            Duration::from_secs(3)
        );
    }
}
