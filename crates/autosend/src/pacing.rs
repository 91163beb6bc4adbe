//! Client-side pacing: every request of the process waits its turn here, so that a run
//! against AutoSend's limits (2 requests/s and 50/min per key by default) sees no 429.
//!
//! Each limit is a GCRA limiter from `governor` with a burst of one: requests are spaced
//! evenly, which keeps any window (fixed or sliding) at or under its limit. A small margin
//! absorbs clock and network jitter between us and the server. On top of that, the server
//! can ask for a pause (`X-RateLimit-Remaining: 0`, or a 429): then every request of the
//! process waits until the time it named.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// Spacing margin over the exact limit: 2% costs 2% of throughput and covers a few
/// milliseconds of jitter at 50 requests/s.
const MARGIN: f64 = 1.02;

/// One limit: at most `max` requests in any `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub window: Duration,
}

/// A set of limits that all apply, like AutoSend's "2 per second and 50 per minute".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits(pub Vec<RateLimit>);

impl Default for RateLimits {
    /// AutoSend's documented defaults.
    fn default() -> Self {
        RateLimits(vec![
            RateLimit {
                max: 2,
                window: Duration::from_secs(1),
            },
            RateLimit {
                max: 50,
                window: Duration::from_secs(60),
            },
        ])
    }
}

impl std::str::FromStr for RateLimits {
    type Err = String;

    /// Parses `2/s,50/m` (units: `s`, `m`, `h`; `unlimited` for none).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "unlimited" {
            return Ok(RateLimits(Vec::new()));
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (n, unit) = part
                .split_once('/')
                .ok_or_else(|| format!("{part:?} is not a rate; write it like 2/s or 50/m"))?;
            let max: u32 = n
                .trim()
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{n:?} in {part:?} is not a positive whole number"))?;
            let window = match unit.trim() {
                "s" | "sec" | "second" => Duration::from_secs(1),
                "m" | "min" | "minute" => Duration::from_secs(60),
                "h" | "hour" => Duration::from_secs(3600),
                // `2/s;50/m` or `2/s 50/m`: two limits joined by something other than a comma.
                other if other.contains('/') => {
                    return Err(format!(
                        "unknown unit {other:?} in {part:?}; limits are separated by commas: \
                         write it like 2/s,50/m"
                    ));
                }
                other => {
                    return Err(format!("unknown unit {other:?} in {part:?}; use s, m or h"));
                }
            };
            out.push(RateLimit { max, window });
        }
        if out.is_empty() {
            return Err("no rate given; write it like 2/s,50/m".into());
        }
        Ok(RateLimits(out))
    }
}

impl fmt::Display for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("unlimited");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|l| {
                let unit = match l.window.as_secs() {
                    1 => "s",
                    60 => "m",
                    3600 => "h",
                    _ => "?",
                };
                format!("{}/{unit}", l.max)
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl RateLimits {
    /// The steady spacing between requests that all limits allow.
    pub fn interval(&self) -> Duration {
        self.0
            .iter()
            .map(|l| l.window / l.max)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The least time `requests` requests take at these limits: the first goes at once,
    /// each next one an interval later.
    pub fn least_time(&self, requests: usize) -> Duration {
        if requests <= 1 {
            return Duration::ZERO;
        }
        self.interval() * (requests as u32 - 1)
    }
}

/// The process-wide pacer. Cheap to share behind an `Arc`.
pub struct Pacer {
    limiters: Vec<DefaultDirectRateLimiter>,
    paused_until: Mutex<Option<Instant>>,
    waited_nanos: AtomicU64,
}

impl fmt::Debug for Pacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pacer")
            .field("limiters", &self.limiters.len())
            .finish()
    }
}

impl Pacer {
    pub fn new(limits: &RateLimits) -> Pacer {
        let limiters = limits
            .0
            .iter()
            .map(|l| {
                let period = (l.window / l.max).mul_f64(MARGIN);
                let quota = Quota::with_period(period)
                    .expect("a positive period")
                    .allow_burst(NonZeroU32::MIN);
                RateLimiter::direct(quota)
            })
            .collect();
        Pacer {
            limiters,
            paused_until: Mutex::new(None),
            waited_nanos: AtomicU64::new(0),
        }
    }

    /// Waits until a request may be sent.
    pub async fn acquire(&self) {
        let start = Instant::now();
        loop {
            let pause = *self.paused_until.lock().expect("pacer lock");
            if let Some(until) = pause
                && until > Instant::now()
            {
                tokio::time::sleep_until(until).await;
                continue;
            }
            for limiter in &self.limiters {
                limiter.until_ready().await;
            }
            // A pause may have been asked for while we waited for a slot.
            let pause = *self.paused_until.lock().expect("pacer lock");
            match pause {
                Some(until) if until > Instant::now() => continue,
                _ => break,
            }
        }
        let waited = start.elapsed().as_nanos() as u64;
        self.waited_nanos.fetch_add(waited, Ordering::Relaxed);
    }

    /// Holds every request of the process until `until` (the later pause wins).
    pub fn pause_until(&self, until: Instant) {
        let mut guard = self.paused_until.lock().expect("pacer lock");
        if guard.is_none_or(|t| t < until) {
            *guard = Some(until);
        }
    }

    /// Total time requests spent waiting for their turn (for metrics).
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_and_print_back() {
        let l: RateLimits = "10/s, 300/m".parse().unwrap();
        assert_eq!(l.to_string(), "10/s,300/m");
        assert_eq!(l.interval(), Duration::from_millis(200));
        assert!("10".parse::<RateLimits>().is_err());
        assert!("0/s".parse::<RateLimits>().is_err());
        assert!("3/d".parse::<RateLimits>().is_err());
    }

    #[test]
    fn limits_joined_by_something_else_than_a_comma_get_a_hint() {
        for text in ["2/s;50/m", "2/s 50/m", "2/s|50/m"] {
            let err = text.parse::<RateLimits>().unwrap_err();
            assert!(
                err.contains("separated by commas") && err.contains("2/s,50/m"),
                "{text}: {err}"
            );
        }
        let err = "3/d".parse::<RateLimits>().unwrap_err();
        assert!(err.contains("use s, m or h"), "{err}");
    }

    #[test]
    fn documented_defaults_take_forty_minutes_for_two_thousand_requests() {
        let t = RateLimits::default().least_time(2000);
        assert_eq!(t, Duration::from_millis(1200) * 1999);
    }

    #[tokio::test]
    async fn pacer_spaces_requests_by_the_tightest_limit() {
        let pacer = Pacer::new(&"10/s".parse().unwrap());
        let start = std::time::Instant::now();
        for _ in 0..5 {
            pacer.acquire().await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    }
}
