//! Server-side rate limiting per API key: fixed windows aligned to epoch time, or sliding
//! windows.
//!
//! AutoSend documents "2 requests per second" and "50 requests per minute" and the
//! `X-RateLimit-*` headers, but not the algorithm. By default the fake uses fixed windows
//! aligned to the epoch (the 1 s window is the current epoch second, the minute window the
//! current epoch minute): the simplest algorithm that still allows the bursts at window
//! boundaries a real limiter can allow, and it makes `X-RateLimit-Reset` an exact instant.
//!
//! [`RateWindow::Sliding`] is the strict other end: at most `max` requests in *any* window of
//! the limit's length ending now (a log of arrival times per key). A client that only fits
//! fixed windows (two bursts either side of a boundary) earns 429s here, so a client tested
//! against both modes fits whatever AutoSend really runs. `X-RateLimit-Reset` is then the
//! epoch second, rounded up, at which the oldest counted request leaves the window.

use std::collections::VecDeque;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One limit: at most `max` requests per `window`.
///
/// Windows are counted in whole seconds (a sub-second window is treated as one second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub max: u32,
    /// Window length; windows start at multiples of it since the Unix epoch.
    pub window: Duration,
}

impl RateLimit {
    /// `max` requests per epoch second.
    pub fn per_second(max: u32) -> Self {
        RateLimit {
            max,
            window: Duration::from_secs(1),
        }
    }

    /// `max` requests per epoch minute.
    pub fn per_minute(max: u32) -> Self {
        RateLimit {
            max,
            window: Duration::from_secs(60),
        }
    }

    /// `max` requests per epoch hour.
    pub fn per_hour(max: u32) -> Self {
        RateLimit {
            max,
            window: Duration::from_secs(3600),
        }
    }

    fn window_secs(&self) -> u64 {
        self.window.as_secs().max(1)
    }
}

impl FromStr for RateLimit {
    type Err = String;

    /// Parses `N/s`, `N/m` or `N/h` (also `sec`, `min`, `hour`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid rate limit `{s}`: expected N/s, N/m or N/h with N > 0");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let max: u32 = n.trim().parse().map_err(|_| bad())?;
        if max == 0 {
            return Err(bad());
        }
        let secs = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hour" | "hours" => 3600,
            _ => return Err(bad()),
        };
        Ok(RateLimit {
            max,
            window: Duration::from_secs(secs),
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.window_secs() {
            1 => write!(f, "{}/s", self.max),
            60 => write!(f, "{}/m", self.max),
            3600 => write!(f, "{}/h", self.max),
            n => write!(f, "{}/{}s", self.max, n),
        }
    }
}

/// Parses a comma-separated list such as `2/s,50/m`. An empty string, `none`, `off` or `0`
/// means no rate limiting at all.
pub fn parse_rate_limits(s: &str) -> Result<Vec<RateLimit>, String> {
    let t = s.trim();
    if t.is_empty() || ["none", "off", "0"].contains(&t.to_ascii_lowercase().as_str()) {
        return Ok(Vec::new());
    }
    t.split(',').map(str::parse).collect()
}

/// How requests are counted against a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RateWindow {
    /// Windows that start at multiples of their length since the Unix epoch.
    #[default]
    Fixed,
    /// Any window of the limit's length that ends now.
    Sliding,
}

impl FromStr for RateWindow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fixed" => Ok(RateWindow::Fixed),
            "sliding" => Ok(RateWindow::Sliding),
            other => Err(format!(
                "unknown rate window `{other}`: expected `fixed` or `sliding`"
            )),
        }
    }
}

/// What the `X-RateLimit-*` headers report: the most constraining window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowStatus {
    pub limit: u32,
    pub remaining: u32,
    /// Epoch seconds at which the window ends.
    pub reset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Rate limiting is off: no headers.
    Unlimited,
    Allowed(WindowStatus),
    /// Rejected; `retry_after_secs` counts whole seconds until the blocking window ends.
    Rejected {
        status: WindowStatus,
        retry_after_secs: u64,
    },
}

#[derive(Debug, Default)]
pub(crate) struct Limiter {
    limits: Vec<RateLimit>,
    window: RateWindow,
    /// Fixed windows. Per API key, per limit: (window index since the epoch, requests
    /// counted in it).
    counts: HashMap<String, Vec<(u64, u32)>>,
    /// Sliding windows. Per API key, per limit: arrival times (epoch ms) still in the window,
    /// oldest first; never more than the limit's `max`.
    arrivals: HashMap<String, Vec<VecDeque<u64>>>,
}

impl Limiter {
    pub fn new(limits: Vec<RateLimit>) -> Self {
        Limiter {
            limits,
            ..Limiter::default()
        }
    }

    pub fn set_limits(&mut self, limits: Vec<RateLimit>) {
        self.limits = limits;
        self.counts.clear();
        self.arrivals.clear();
    }

    pub fn set_window(&mut self, window: RateWindow) {
        self.window = window;
        self.counts.clear();
        self.arrivals.clear();
    }

    /// Current (window end in epoch seconds, count) per limit, for `key` at `now_ms`.
    fn current(&self, key: &str, now_ms: u64) -> Vec<(u64, u32)> {
        if self.window == RateWindow::Sliding {
            return self.current_sliding(key, now_ms);
        }
        let now_s = now_ms / 1000;
        self.limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let w = l.window_secs();
                let idx = now_s / w;
                let count = self
                    .counts
                    .get(key)
                    .and_then(|v| v.get(i))
                    .filter(|(stored, _)| *stored == idx)
                    .map_or(0, |(_, c)| *c);
                ((idx + 1) * w, count)
            })
            .collect()
    }

    /// Sliding: per limit, the arrivals of the last window; the window "ends" (a slot frees)
    /// when the oldest of them leaves it, rounded up to the epoch second so that a client
    /// resuming at `X-RateLimit-Reset` is never early.
    fn current_sliding(&self, key: &str, now_ms: u64) -> Vec<(u64, u32)> {
        let log = self.arrivals.get(key);
        self.limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let w = l.window_secs() * 1000;
                let live: Vec<u64> = log
                    .and_then(|v| v.get(i))
                    .map(|q| q.iter().copied().filter(|&t| t + w > now_ms).collect())
                    .unwrap_or_default();
                let oldest = live.first().copied().unwrap_or(now_ms);
                ((oldest + w).div_ceil(1000), live.len() as u32)
            })
            .collect()
    }

    /// Counts an accepted arrival in every sliding window of `key`.
    fn record_arrival(&mut self, key: &str, now_ms: u64) {
        let limits = &self.limits;
        let log = self
            .arrivals
            .entry(key.to_string())
            .or_insert_with(|| vec![VecDeque::new(); limits.len()]);
        for (q, l) in log.iter_mut().zip(limits) {
            let w = l.window_secs() * 1000;
            while q.front().is_some_and(|&t| t + w <= now_ms) {
                q.pop_front();
            }
            q.push_back(now_ms);
        }
    }

    /// Least remaining wins; on a tie the later reset, so a client never resumes too early.
    fn most_constraining(&self, current: &[(u64, u32)]) -> Option<WindowStatus> {
        self.limits
            .iter()
            .zip(current)
            .map(|(l, &(reset, count))| WindowStatus {
                limit: l.max,
                remaining: l.max.saturating_sub(count),
                reset,
            })
            .min_by(|a, b| a.remaining.cmp(&b.remaining).then(b.reset.cmp(&a.reset)))
    }

    /// Headers for a request that is not counted (e.g. a 401), without consuming quota.
    pub fn peek(&self, key: &str, now_ms: u64) -> Option<WindowStatus> {
        self.most_constraining(&self.current(key, now_ms))
    }

    /// Counts one request against every window, unless one of them is full: a rejected request
    /// consumes nothing, so a client that waits `retryAfter` is sure to get through.
    pub fn check(&mut self, key: &str, now_ms: u64) -> Decision {
        if self.limits.is_empty() {
            return Decision::Unlimited;
        }
        let current = self.current(key, now_ms);
        let blocking = self
            .limits
            .iter()
            .zip(&current)
            .filter(|(l, (_, count))| *count >= l.max)
            .map(|(l, &(reset, _))| (l.max, reset))
            .max_by_key(|&(_, reset)| reset);
        if let Some((limit, reset)) = blocking {
            let wait_ms = (reset * 1000).saturating_sub(now_ms);
            return Decision::Rejected {
                status: WindowStatus {
                    limit,
                    remaining: 0,
                    reset,
                },
                retry_after_secs: wait_ms.div_ceil(1000).max(1),
            };
        }
        let status = self
            .most_constraining(
                &current
                    .iter()
                    .map(|&(reset, count)| (reset, count + 1))
                    .collect::<Vec<_>>(),
            )
            .expect("limits are not empty");
        if self.window == RateWindow::Sliding {
            self.record_arrival(key, now_ms);
            return Decision::Allowed(status);
        }
        let now_s = now_ms / 1000;
        let counted: Vec<(u64, u32)> = self
            .limits
            .iter()
            .zip(&current)
            .map(|(l, &(_, count))| (now_s / l.window_secs(), count + 1))
            .collect();
        self.counts.insert(key.to_string(), counted);
        Decision::Allowed(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_limit_lists() {
        assert_eq!(
            parse_rate_limits("2/s,50/m").unwrap(),
            vec![RateLimit::per_second(2), RateLimit::per_minute(50)]
        );
        assert_eq!(
            parse_rate_limits(" 10/sec , 100/hour ").unwrap(),
            vec![RateLimit::per_second(10), RateLimit::per_hour(100)]
        );
        assert!(parse_rate_limits("").unwrap().is_empty());
        assert!(parse_rate_limits("off").unwrap().is_empty());
        assert!(parse_rate_limits("2/d").is_err());
        assert!(parse_rate_limits("0/s").is_err());
        assert!(parse_rate_limits("x/s").is_err());
        assert_eq!(RateLimit::per_minute(50).to_string(), "50/m");
    }

    #[test]
    fn fixed_windows_are_aligned_to_epoch_seconds() {
        let mut l = Limiter::new(vec![RateLimit::per_second(2)]);
        let t = 1_700_000_000_000; // exactly on a second boundary
        assert!(
            matches!(l.check("k", t + 100), Decision::Allowed(s) if s.remaining == 1 && s.reset == 1_700_000_001)
        );
        assert!(matches!(l.check("k", t + 200), Decision::Allowed(s) if s.remaining == 0));
        match l.check("k", t + 300) {
            Decision::Rejected {
                status,
                retry_after_secs,
            } => {
                assert_eq!(status.reset, 1_700_000_001);
                assert_eq!(retry_after_secs, 1);
            }
            other => panic!("expected rejection, got {other:?}"),
        }
        // The next epoch second is a fresh window, even 1 ms later.
        assert!(matches!(l.check("k", t + 1000), Decision::Allowed(s) if s.remaining == 1));
        // Keys are limited independently.
        assert!(matches!(l.check("other", t + 1001), Decision::Allowed(s) if s.remaining == 1));
    }

    #[test]
    fn rejected_requests_do_not_consume_quota_and_minute_window_reports_longest_wait() {
        let mut l = Limiter::new(vec![RateLimit::per_second(5), RateLimit::per_minute(3)]);
        let t = 1_700_000_040_000; // 40 s into an epoch minute (1_700_000_040 = 60 * 28_333_334)
        for i in 0..3 {
            let d = l.check("k", t + i * 1500);
            assert!(matches!(d, Decision::Allowed(_)), "{d:?}");
        }
        for _ in 0..5 {
            match l.check("k", t + 4_500) {
                Decision::Rejected {
                    status,
                    retry_after_secs,
                } => {
                    assert_eq!(status.limit, 3);
                    assert_eq!(status.reset, 1_700_000_100);
                    assert_eq!(retry_after_secs, 56); // 55.5 s rounded up
                }
                other => panic!("expected rejection, got {other:?}"),
            }
        }
        // Headers follow the window with the least remaining.
        assert_eq!(
            l.peek("k", t + 4_500),
            Some(WindowStatus {
                limit: 3,
                remaining: 0,
                reset: 1_700_000_100
            })
        );
        assert!(
            matches!(l.check("k", 1_700_000_100_000), Decision::Allowed(s) if s.limit == 3 && s.remaining == 2)
        );
    }

    #[test]
    fn a_sliding_window_refuses_the_burst_a_fixed_window_allows_across_its_boundary() {
        let t = 1_700_000_000_000;
        let burst = |l: &mut Limiter| {
            // Two requests late in one epoch second, two early in the next.
            [t + 900, t + 950, t + 1_010, t + 1_050].map(|at| l.check("k", at))
        };
        let mut fixed = Limiter::new(vec![RateLimit::per_second(2)]);
        assert!(
            burst(&mut fixed)
                .iter()
                .all(|d| matches!(d, Decision::Allowed(_)))
        );

        let mut sliding = Limiter::new(vec![RateLimit::per_second(2)]);
        sliding.set_window(RateWindow::Sliding);
        let [a, b, c, d] = burst(&mut sliding);
        assert!(matches!(a, Decision::Allowed(s) if s.remaining == 1));
        // The window is full until the first arrival (t + 900) is a second old.
        assert!(matches!(b, Decision::Allowed(s) if s.remaining == 0 && s.reset == 1_700_000_002));
        for refused in [c, d] {
            assert!(
                matches!(
                    refused,
                    Decision::Rejected {
                        retry_after_secs: 1,
                        ..
                    }
                ),
                "{refused:?}"
            );
        }
        // A slot frees exactly when the oldest arrival leaves the window.
        assert!(matches!(
            sliding.check("k", t + 1_899),
            Decision::Rejected { .. }
        ));
        assert!(matches!(sliding.check("k", t + 1_900), Decision::Allowed(s) if s.remaining == 0));
        assert!(matches!(
            sliding.check("k", t + 1_949),
            Decision::Rejected { .. }
        ));
    }

    #[test]
    fn a_sliding_window_accepts_requests_spaced_by_exactly_its_rate() {
        let mut l = Limiter::new(vec![RateLimit::per_second(50)]);
        l.set_window(RateWindow::Sliding);
        let t = 1_700_000_000_123;
        for i in 0..500 {
            let d = l.check("k", t + i * 20);
            assert!(matches!(d, Decision::Allowed(_)), "request {i}: {d:?}");
        }
        assert!(matches!(
            l.check("k", t + 499 * 20 + 1),
            Decision::Rejected { .. }
        ));
        assert_eq!("Sliding".parse::<RateWindow>(), Ok(RateWindow::Sliding));
        assert!("leaky".parse::<RateWindow>().is_err());
    }

    #[test]
    fn no_limits_means_unlimited() {
        let mut l = Limiter::new(Vec::new());
        for _ in 0..1000 {
            assert_eq!(l.check("k", 5), Decision::Unlimited);
        }
        assert_eq!(l.peek("k", 5), None);
    }
}
