//! Is an event recent enough to act on? Judged from its signed `createdAt`, since the
//! `X-Webhook-Timestamp` header is not covered by the signature and anyone replaying a
//! captured delivery can set it.
//!
//! The window bounds how long the duplicate memory must keep a delivery: a replay older than
//! the window is refused here, so it needs no memory at all. AutoSend retries for about
//! 35 s (5, 10, 20 s), so an hour leaves room for a listener that was down a while. The skew
//! allows for clocks that disagree; beyond it a "future" event is a forgery or a broken clock,
//! and accepting it would stretch how long a replay stays fresh.

use std::time::{Duration, SystemTime};

use super::Refused;

/// Oldest event acted on.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60 * 60);
/// How far ahead of our clock an event may be dated.
pub const DEFAULT_SKEW: Duration = Duration::from_secs(5 * 60);

/// Refuses an event created more than `window` before `now`, or more than `skew` after it.
pub fn check_fresh(
    created_at: SystemTime,
    now: SystemTime,
    window: Duration,
    skew: Duration,
) -> Result<(), Refused> {
    match now.duration_since(created_at) {
        Ok(age) if age > window => Err(Refused::Stale { age, window }),
        Ok(_) => Ok(()),
        Err(ahead) => {
            let ahead = ahead.duration();
            if ahead > skew {
                Err(Refused::Future { ahead, skew })
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_762_942_800)
    }

    fn check(created_at: SystemTime) -> Result<(), Refused> {
        check_fresh(created_at, now(), DEFAULT_WINDOW, DEFAULT_SKEW)
    }

    #[test]
    fn an_event_inside_the_window_or_slightly_ahead_is_fresh() {
        assert_eq!(check(now()), Ok(()));
        assert_eq!(check(now() - 59 * MIN), Ok(()));
        assert_eq!(check(now() - DEFAULT_WINDOW), Ok(()));
        assert_eq!(check(now() + 4 * MIN), Ok(()));
        assert_eq!(check(now() + DEFAULT_SKEW), Ok(()));
    }

    #[test]
    fn an_event_older_than_the_window_is_stale() {
        let refused = check(now() - 61 * MIN).unwrap_err();
        assert_eq!(
            refused,
            Refused::Stale {
                age: 61 * MIN,
                window: DEFAULT_WINDOW
            }
        );
        assert_eq!(
            refused.to_string(),
            "event is 1h 1m old, over the 1h window"
        );
    }

    #[test]
    fn an_event_dated_beyond_the_skew_in_the_future_is_refused() {
        let refused = check(now() + 6 * MIN).unwrap_err();
        assert_eq!(
            refused,
            Refused::Future {
                ahead: 6 * MIN,
                skew: DEFAULT_SKEW
            }
        );
        assert_eq!(
            refused.to_string(),
            "event is 6m in the future, over the 5m allowed skew"
        );
    }

    #[test]
    fn the_window_and_skew_are_the_callers() {
        assert!(check_fresh(now() - 2 * MIN, now(), MIN, MIN).is_err());
        assert!(check_fresh(now() + 2 * MIN, now(), MIN, MIN).is_err());
        assert!(check_fresh(now() - 2 * MIN, now(), 3 * MIN, Duration::ZERO).is_ok());
    }
}
