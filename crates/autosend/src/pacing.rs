//! Client-side pacing: every request of the process waits its turn here, so that a run
//! against AutoSend's limits (2 requests/s and 50/min per key by default) sees no 429.
//!
//! Each limit is a sliding log of the instants at which the last `max` requests were sent: a
//! request goes when, for every limit, the oldest of those is at least one window (plus a 1%
//! margin) old. That is exactly "at most `max` requests in any window", the strictest thing a
//! server can enforce (a sliding window; a fixed window accepts all of it too). Requests are
//! also spaced by the fastest limit's rate (20 ms at 50/s; 500 ms at AutoSend's 2/s,50/m, whose
//! minute then allows 50 in 25 s rather than one every 1.2 s). Without the spacing a window's
//! requests leave at once, queue at the server, and are counted late, while the next window's
//! find it idle and are counted early: measured, 4 × 429 in 1,000 requests against a sliding
//! window. The margin absorbs what jitter remains (10 ms on a 1 s window), and the budget is
//! spent to 1/1.01 of it. A 429 all the same says the path jitters more than that: each one
//! doubles the margin, up to 8%.
//!
//! `governor`'s GCRA, used before, cannot express this: with a burst of `b` it admits `b` plus
//! the rate in any window, so it had to run with no burst and a 2% margin on the spacing. The
//! sliding-window crates on crates.io are young single-author ones; the log is a few lines.
//!
//! On top of that, the server can ask for a pause: a 429 holds every request of the process
//! until the time it named, and so does `X-RateLimit-Remaining: 0` unless our own log
//! explains it (we sent `max` in that window ourselves and already wait for a slot): when it
//! does not, another client spends the same key, and the server's count wins.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Each window is held this much longer than the server's: 1% of throughput for 10 ms of
/// jitter per second of window.
const MARGIN: f64 = 1.01;

/// The widest margin a run of 429s can widen it to (see [`Pacer::rate_limited`]).
const MAX_MARGIN: f64 = 1.08;

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
    /// The least time `requests` requests take at these limits, paced as [`Pacer`] paces
    /// them: the first goes at once, each next one as soon as every limit's log allows.
    pub fn least_time(&self, requests: usize) -> Duration {
        let mut logs: Vec<Log> = self.0.iter().map(Log::new).collect();
        let spacing = self.spacing();
        let mut t = Duration::ZERO;
        for k in 0..requests {
            let spaced = if k == 0 { t } else { t + spacing };
            t = logs
                .iter()
                .map(|l| l.next_slot())
                .fold(spaced, Duration::max);
            for log in &mut logs {
                log.record(t);
            }
        }
        t
    }

    /// The least time between two requests: the fastest limit's rate (its window over its
    /// `max`), so that no window's requests leave in one burst.
    fn spacing(&self) -> Duration {
        self.0
            .iter()
            .map(|l| l.window / l.max)
            .min()
            .unwrap_or(Duration::ZERO)
    }
}

/// The send times of a limit's last `max` requests, as offsets from any fixed origin.
#[derive(Debug)]
struct Log {
    max: usize,
    window: Duration,
    sent: VecDeque<Duration>,
}

impl Log {
    fn new(limit: &RateLimit) -> Log {
        Log {
            max: limit.max as usize,
            window: limit.window.mul_f64(MARGIN),
            sent: VecDeque::with_capacity(limit.max as usize),
        }
    }

    /// The earliest time the next request may go: at once until `max` were sent, then a
    /// window after the oldest of the last `max`.
    fn next_slot(&self) -> Duration {
        match self.sent.front() {
            Some(&oldest) if self.sent.len() >= self.max => oldest + self.window,
            _ => Duration::ZERO,
        }
    }

    /// Holds the window `margin` times the server's from now on.
    fn widen(&mut self, limit: &RateLimit, margin: f64) {
        self.window = limit.window.mul_f64(margin);
    }

    fn record(&mut self, at: Duration) {
        if self.sent.len() >= self.max {
            self.sent.pop_front();
        }
        self.sent.push_back(at);
    }

    /// Whether our own requests fill this limit's window at `now`: `max` of them sent
    /// within about a window (twice its length, for requests still on their way).
    fn full_at(&self, now: Duration) -> bool {
        self.sent.len() >= self.max
            && self
                .sent
                .front()
                .is_some_and(|&oldest| now.saturating_sub(oldest) < self.window * 2)
    }
}

/// The process-wide pacer. Cheap to share behind an `Arc`.
pub struct Pacer {
    /// Offsets in the logs count from here.
    origin: Instant,
    state: Mutex<PacerState>,
    waited_nanos: AtomicU64,
}

#[derive(Debug)]
struct PacerState {
    logs: Vec<(RateLimit, Log)>,
    spacing: Duration,
    margin: f64,
    /// The slot the last request was given: the next is spaced from it, not from when its
    /// sender woke (the timer wakes a millisecond or so late, which would add up to 5% at
    /// 50/s).
    last_slot: Option<Instant>,
    paused_until: Option<Instant>,
}

impl fmt::Debug for Pacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pacer")
            .field("limits", &self.lock().logs.len())
            .finish()
    }
}

impl Pacer {
    pub fn new(limits: &RateLimits) -> Pacer {
        Pacer {
            origin: Instant::now(),
            state: Mutex::new(PacerState {
                logs: limits.0.iter().map(|l| (*l, Log::new(l))).collect(),
                spacing: limits.spacing(),
                margin: MARGIN,
                last_slot: None,
                paused_until: None,
            }),
            waited_nanos: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PacerState> {
        // The state is a few queues updated in one step; a panic elsewhere cannot leave it
        // half-written, so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a request may be sent, and counts it as sent.
    pub async fn acquire(&self) {
        let start = Instant::now();
        loop {
            let wake = {
                let mut state = self.lock();
                let now = Instant::now();
                let offset = now - self.origin;
                let slot = state
                    .logs
                    .iter()
                    .map(|(_, log)| self.origin + log.next_slot())
                    .chain(state.paused_until)
                    .chain(state.last_slot.map(|t| t + state.spacing))
                    .max()
                    .unwrap_or(now);
                if slot <= now {
                    // The logs hold when requests really left: the windows stay exact.
                    for (_, log) in &mut state.logs {
                        log.record(offset);
                    }
                    // A slot long past (the pacer was idle) restarts the spacing from now.
                    let late = now - slot;
                    state.last_slot = Some(if late <= state.spacing / 4 { slot } else { now });
                    break;
                }
                slot
            };
            // Whoever wakes first takes the slot; the others find the log moved and wait
            // again.
            tokio::time::sleep_until(wake).await;
        }
        let waited = start.elapsed().as_nanos() as u64;
        self.waited_nanos.fetch_add(waited, Ordering::Relaxed);
    }

    /// Holds every request of the process until `until` (the later pause wins).
    pub fn pause_until(&self, until: Instant) {
        let mut state = self.lock();
        if state.paused_until.is_none_or(|t| t < until) {
            state.paused_until = Some(until);
        }
    }

    /// The server answered 429 although the pacer kept every window: the jitter between our
    /// clock and its counting is wider than the margin. Each such answer doubles the margin
    /// (1%, 2%, 4%, at most 8%) for the rest of the process: a few percent of throughput
    /// rather than a pause of every request at each window.
    pub fn rate_limited(&self) {
        let mut state = self.lock();
        let margin = (1.0 + (state.margin - 1.0) * 2.0).min(MAX_MARGIN);
        state.margin = margin;
        for (limit, log) in &mut state.logs {
            log.widen(limit, margin);
        }
    }

    /// The server says the window of its limit `limit` is used up until `until`
    /// (`X-RateLimit-Remaining: 0`). When our own log of that limit is full, we already wait
    /// for the slot the server means; otherwise someone else spends this key, so every
    /// request waits for the server's reset. Returns whether it paused.
    pub fn server_window_used_up(&self, limit: Option<u32>, until: Instant) -> bool {
        let now = Instant::now() - self.origin;
        let explained = self
            .lock()
            .logs
            .iter()
            .any(|(l, log)| limit.is_none_or(|max| max == l.max) && log.full_at(now));
        if !explained {
            self.pause_until(until);
        }
        !explained
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
        // 50 a minute: 39 full minutes (each held 1% longer), then the last 50 at 2/s: pairs
        // 500 ms apart, a pair a second (held 1% longer) after the one before.
        let t = RateLimits::default().least_time(2000);
        let expected = Duration::from_secs(60).mul_f64(MARGIN) * 39
            + Duration::from_secs(1).mul_f64(MARGIN) * 24
            + Duration::from_millis(500);
        assert!(t.abs_diff(expected) < Duration::from_millis(1), "{t:?}");
        assert_eq!(RateLimits::default().least_time(1), Duration::ZERO);
        assert_eq!(
            RateLimits::default().least_time(2),
            Duration::from_millis(500)
        );
        assert_eq!(RateLimits(Vec::new()).least_time(10_000), Duration::ZERO);
    }

    /// Send offsets of `n` requests acquired by `tasks` concurrent tasks on paused time.
    async fn send_times(limits: &str, n: usize, tasks: usize) -> Vec<Duration> {
        let pacer = std::sync::Arc::new(Pacer::new(&limits.parse().unwrap()));
        let start = Instant::now();
        let times = std::sync::Arc::new(Mutex::new(Vec::new()));
        let per_task = n / tasks;
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (pacer, times) = (pacer.clone(), times.clone());
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        pacer.acquire().await;
                        times.lock().unwrap().push(start.elapsed());
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        let mut times = times.lock().unwrap().clone();
        times.sort();
        times
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_s_requests_are_spaced_and_the_next_window_waits_for_its_first() {
        let times = send_times("10/s", 25, 1).await;
        let window = Duration::from_secs(1).mul_f64(MARGIN);
        let spacing = Duration::from_millis(100);
        for (k, t) in times.iter().enumerate() {
            let expected = window * (k as u32 / 10) + spacing * (k as u32 % 10);
            assert_eq!(*t, expected, "request {k}: {times:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slower_long_window_lets_its_requests_go_at_the_short_window_s_pace() {
        // AutoSend's defaults: the minute's 50 go at 2/s, in 25 s, not one every 1.2 s.
        let times = send_times("2/s,50/m", 51, 1).await;
        let second = Duration::from_secs(1).mul_f64(MARGIN);
        assert_eq!(times[1], Duration::from_millis(500));
        assert_eq!(times[49], second * 24 + Duration::from_millis(500));
        assert_eq!(times[50], Duration::from_secs(60).mul_f64(MARGIN));
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_of_any_limit_ever_holds_more_than_its_max() {
        for (limits, n, tasks) in [("10/s", 200, 4), ("2/s,50/m", 150, 3), ("50/s", 1000, 4)] {
            let parsed: RateLimits = limits.parse().unwrap();
            let times = send_times(limits, n, tasks).await;
            assert_eq!(times.len(), n);
            for l in &parsed.0 {
                for (i, &t) in times.iter().enumerate() {
                    // Requests in the server's window [t, t + window) that starts at this one.
                    let within = times[i..].iter().take_while(|&&u| u < t + l.window).count();
                    assert!(
                        within <= l.max as usize,
                        "{limits}: {within} in {l:?} from {t:?}"
                    );
                }
            }
            // And the pacer spends the budget: the run takes what `least_time` says.
            assert_eq!(*times.last().unwrap(), parsed.least_time(n), "{limits}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_429_widens_the_margin_up_to_a_bound() {
        let pacer = Pacer::new(&"10/s".parse().unwrap());
        let window_after = |pacer: &Pacer| pacer.lock().logs[0].1.window;
        assert_eq!(window_after(&pacer), Duration::from_secs(1).mul_f64(1.01));
        pacer.rate_limited();
        assert_eq!(window_after(&pacer), Duration::from_secs(1).mul_f64(1.02));
        for _ in 0..10 {
            pacer.rate_limited();
        }
        assert_eq!(
            window_after(&pacer),
            Duration::from_secs(1).mul_f64(MAX_MARGIN)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_window_we_did_not_fill_ourselves_pauses_everything() {
        let pacer = Pacer::new(&"5/s".parse().unwrap());
        let reset = Instant::now() + Duration::from_secs(3);
        // Nothing sent yet: the server's count is someone else's, so wait for its reset.
        assert!(pacer.server_window_used_up(Some(5), reset));
        let start = Instant::now();
        pacer.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));

        // Our own five fill the window: the log already waits for the slot, no extra pause.
        let pacer = Pacer::new(&"5/s".parse().unwrap());
        for _ in 0..5 {
            pacer.acquire().await;
        }
        let far = Instant::now() + Duration::from_secs(30);
        assert!(!pacer.server_window_used_up(Some(5), far));
        // A limit we do not know (the server's is tighter than ours) is not explained.
        assert!(pacer.server_window_used_up(Some(3), far));
    }
}
