//! When a failed delivery is tried again: exponential backoff from a base, capped, for a
//! window after the event, then given up. Pure arithmetic on milliseconds, saturating, so
//! no attempt count or setting can overflow into a delay of zero.

/// What happens to a delivery after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Tried again at this unix millisecond.
    RetryAt(i64),
    /// The window is over: the delivery is marked failed.
    GiveUp,
}

/// How long to wait after the `attempts`-th failed attempt (1 for the first):
/// `base_ms * 2^(attempts - 1)`, at most `cap_ms`.
pub fn delay_ms(attempts: u64, base_ms: u64, cap_ms: u64) -> u64 {
    let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
    let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
    base_ms.saturating_mul(factor).min(cap_ms)
}

/// The next step for a delivery whose event was made at `created_ms`, after its
/// `attempts`-th attempt failed at `now_ms`: retry after the backoff, unless the retry
/// would fall past `retry_for_ms` after the event.
pub fn after_failure(
    attempts: u64,
    created_ms: i64,
    now_ms: i64,
    base_ms: u64,
    cap_ms: u64,
    retry_for_ms: u64,
) -> Next {
    let delay = i64::try_from(delay_ms(attempts, base_ms, cap_ms)).unwrap_or(i64::MAX);
    let at = now_ms.saturating_add(delay);
    let until = created_ms.saturating_add(i64::try_from(retry_for_ms).unwrap_or(i64::MAX));
    if at > until {
        Next::GiveUp
    } else {
        Next::RetryAt(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_from_the_base_up_to_the_cap() {
        let delays: Vec<u64> = (1..=7).map(|n| delay_ms(n, 1_000, 30_000)).collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
        // Attempt 0 (none failed yet) waits the base, not half of it.
        assert_eq!(delay_ms(0, 1_000, 30_000), 1_000);
    }

    #[test]
    fn extremes_saturate_at_the_cap_and_never_wrap_to_zero() {
        for attempts in [64, 65, 1_000, u64::from(u32::MAX) + 5, u64::MAX] {
            assert_eq!(
                delay_ms(attempts, 1_000, 3_600_000),
                3_600_000,
                "{attempts}"
            );
            assert_eq!(delay_ms(attempts, u64::MAX, u64::MAX), u64::MAX);
        }
        assert_eq!(delay_ms(64, 1, u64::MAX), 1 << 63);
        assert_eq!(delay_ms(64, 2, u64::MAX), u64::MAX);
        assert_eq!(delay_ms(u64::MAX, 0, 10), 0, "a zero base stays zero");
        assert_eq!(delay_ms(5, 1_000, 0), 0, "the cap wins");
    }

    #[test]
    fn retries_stop_once_the_window_is_over() {
        let day: i64 = 86_400_000;
        let window = day as u64;
        assert_eq!(
            after_failure(1, 0, 10, 1_000, 60_000, window),
            Next::RetryAt(1_010)
        );
        assert_eq!(
            after_failure(30, 0, day - 60_000, 1_000, 60_000, window),
            Next::RetryAt(day)
        );
        assert_eq!(
            after_failure(30, 0, day - 59_999, 1_000, 60_000, window),
            Next::GiveUp
        );
        assert_eq!(
            after_failure(u64::MAX, i64::MAX, i64::MAX, u64::MAX, u64::MAX, u64::MAX),
            Next::RetryAt(i64::MAX)
        );
        assert_eq!(after_failure(1, i64::MIN, 0, 1_000, 1_000, 0), Next::GiveUp);
    }
}
