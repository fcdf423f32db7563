//! Budget periods. A key's quota (and an account's spending limit) counts over its whole
//! life (`total`), or afresh each calendar `day`, `week` (from Monday) or `month` in the
//! configured time zone, or each fixed span (`"72h"`, for trials) from when the period was
//! set. Pure computation: the store keeps each key's current window and rolls it over with
//! `Window::holding`.

use std::fmt;
use std::str::FromStr;

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, ZonedDateTime};

use crate::expiry::MAX_TIMESTAMP;

/// The shortest fixed span: a budget that resets faster is a rate limit (use `tpm`).
pub const SPAN_MIN_SECS: i64 = 10;
/// The longest fixed span: ten years.
pub const SPAN_MAX_SECS: i64 = 3_650 * 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Never resets.
    Total,
    Day,
    Week,
    Month,
    /// Every this many seconds from the period's anchor.
    Span(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error(
        "expected \"total\", \"day\", \"week\", \"month\" or a span such as \"72h\" or \"30d\", \
         got {0:?}"
    )]
    Malformed(String),
    #[error("a span must be between 10 s and 3650 days")]
    OutOfRange,
}

/// Units a span may use; the same as `expires_in`'s, without months and years (use
/// `month`, which follows the calendar).
const UNITS: &[(&str, i64)] = &[("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)];

impl FromStr for Period {
    type Err = PeriodError;

    fn from_str(text: &str) -> Result<Period, PeriodError> {
        match text {
            "total" => return Ok(Period::Total),
            "day" => return Ok(Period::Day),
            "week" => return Ok(Period::Week),
            "month" => return Ok(Period::Month),
            _ => {}
        }
        let malformed = || PeriodError::Malformed(text.to_owned());
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = text.split_at(digits);
        let &(_, per_unit) = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .ok_or_else(malformed)?;
        if number.is_empty() {
            return Err(malformed());
        }
        number
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(per_unit))
            .filter(|secs| (SPAN_MIN_SECS..=SPAN_MAX_SECS).contains(secs))
            .map(Period::Span)
            .ok_or(PeriodError::OutOfRange)
    }
}

impl fmt::Display for Period {
    /// The form `from_str` reads back; a span in its largest whole unit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Total => f.write_str("total"),
            Period::Day => f.write_str("day"),
            Period::Week => f.write_str("week"),
            Period::Month => f.write_str("month"),
            Period::Span(secs) => {
                let (unit, per_unit) = UNITS
                    .iter()
                    .find(|(_, per_unit)| secs % per_unit == 0)
                    .copied()
                    .unwrap_or(("s", 1));
                write!(f, "{}{unit}", secs / per_unit)
            }
        }
    }
}

/// One period: `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// The window of `period` that holds `now`, in the time zone `tz` for calendar
    /// periods; a span's windows start at `anchor` and follow each other. `None` for
    /// `total`, and for times outside what the calendar can represent (then the quota
    /// simply does not reset).
    pub fn holding(period: Period, tz: &TimeZone, anchor: i64, now: i64) -> Option<Window> {
        let now = now.clamp(0, MAX_TIMESTAMP);
        match period {
            Period::Total => None,
            Period::Span(secs) if secs > 0 => {
                // Whole spans from the anchor to now, in i128: no input can overflow.
                let spans = (i128::from(now) - i128::from(anchor)).div_euclid(i128::from(secs));
                let start = i128::from(anchor) + spans * i128::from(secs);
                let end = start + i128::from(secs);
                Some(Window {
                    start: i64::try_from(start).ok()?,
                    end: i64::try_from(end).ok()?,
                })
            }
            Period::Span(_) => None,
            Period::Day | Period::Week | Period::Month => {
                let here = Timestamp::from_second(now)
                    .ok()?
                    .to_zoned_datetime(tz.clone());
                calendar(period, &here)
            }
        }
    }
}

/// The calendar day, week or month holding `here`, from its first local midnight (or
/// the first instant after it, where a clock change skips midnight) to the next one.
fn calendar(period: Period, here: &ZonedDateTime) -> Option<Window> {
    let (first, length) = match period {
        Period::Day => (here.date(), 1.day()),
        Period::Week => {
            let back = Weekday::Monday.until(here.weekday());
            (
                here.date().checked_sub(i64::from(back).days()).ok()?,
                1.week(),
            )
        }
        _ => (here.date().first_of_month(), 1.month()),
    };
    let tz = here.time_zone().clone();
    let start = first.to_zoned_datetime(tz.clone()).ok()?;
    let end = first.checked_add(length).ok()?.to_zoned_datetime(tz).ok()?;
    Some(Window {
        start: start.timestamp().as_second(),
        end: end.timestamp().as_second(),
    })
}

/// The time zone named by `name` (IANA, e.g. `"Europe/Berlin"`, or `"UTC"`), from the
/// time zone database bundled into the binary.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expiry::parse_rfc3339;

    fn at(text: &str) -> i64 {
        parse_rfc3339(text).unwrap()
    }

    fn window(period: &str, tz: &str, now: &str) -> (i64, i64) {
        let w =
            Window::holding(period.parse().unwrap(), &time_zone(tz).unwrap(), 0, at(now)).unwrap();
        (w.start, w.end)
    }

    #[test]
    fn periods_read_and_print_back() {
        for text in [
            "total", "day", "week", "month", "36h", "30d", "90s", "15min",
        ] {
            assert_eq!(text.parse::<Period>().unwrap().to_string(), text);
        }
        assert_eq!("3600s".parse::<Period>().unwrap().to_string(), "1h");
        assert_eq!("72h".parse::<Period>().unwrap().to_string(), "3d");
        for bad in ["", "h", "1", "1mo", "1y", "-1h", "1.5h", "monthly", "1 h"] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
        for out in [
            "9s",
            "0h",
            "3651d",
            "99999999999999999999d",
            "9223372036854775807d",
        ] {
            assert_eq!(out.parse::<Period>(), Err(PeriodError::OutOfRange), "{out}");
        }
    }

    #[test]
    fn calendar_periods_follow_the_time_zone() {
        assert_eq!(
            window("day", "UTC", "2026-12-03T23:59:59Z"),
            (at("2026-12-03T00:00:00Z"), at("2026-12-04T00:00:00Z"))
        );
        // 2026-12-03 is a Thursday: its week began on Monday the 30th of November.
        assert_eq!(
            window("week", "UTC", "2026-12-03T10:00:00Z"),
            (at("2026-11-30T00:00:00Z"), at("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            window("month", "UTC", "2026-02-28T23:00:00Z"),
            (at("2026-02-01T00:00:00Z"), at("2026-03-01T00:00:00Z"))
        );
        assert_eq!(
            window("month", "UTC", "2026-12-31T12:00:00Z"),
            (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        // 23:30 UTC on the 31st of March is already April in Berlin (UTC+2 in summer).
        assert_eq!(
            window("month", "Europe/Berlin", "2026-03-31T23:30:00Z"),
            (at("2026-03-31T22:00:00Z"), at("2026-04-30T22:00:00Z"))
        );
        // The day clocks go forward is 23 hours long.
        assert_eq!(
            window("day", "Europe/Berlin", "2026-03-29T12:00:00Z"),
            (at("2026-03-28T23:00:00Z"), at("2026-03-29T22:00:00Z"))
        );
    }

    #[test]
    fn spans_follow_each_other_from_their_anchor() {
        let utc = TimeZone::UTC;
        let w = |anchor, now| Window::holding(Period::Span(100), &utc, anchor, now).unwrap();
        assert_eq!(
            w(1_000, 1_000),
            Window {
                start: 1_000,
                end: 1_100
            }
        );
        assert_eq!(
            w(1_000, 1_099),
            Window {
                start: 1_000,
                end: 1_100
            }
        );
        assert_eq!(
            w(1_000, 1_100),
            Window {
                start: 1_100,
                end: 1_200
            }
        );
        assert_eq!(
            w(1_000, 1_250),
            Window {
                start: 1_200,
                end: 1_300
            }
        );
        // A clock before the anchor still gets the window that holds it.
        assert_eq!(
            w(1_000, 950),
            Window {
                start: 900,
                end: 1_000
            }
        );
        assert_eq!(Window::holding(Period::Total, &utc, 0, 5), None);
    }

    #[test]
    fn extreme_times_neither_panic_nor_overflow() {
        let utc = TimeZone::UTC;
        for period in [
            Period::Day,
            Period::Week,
            Period::Month,
            Period::Span(SPAN_MAX_SECS),
        ] {
            for (anchor, now) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (0, i64::MAX)] {
                if let Some(w) = Window::holding(period, &utc, anchor, now) {
                    assert!(w.start < w.end, "{period} {w:?}");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        // (`now` leaves room for the longest period before the last time the service
        // takes, where `holding` clamps `now`: a span of 465 days that began 40 days
        // before that end ended past it, and the window holding its end began earlier.)
        fn a_window_holds_its_time_and_the_next_begins_where_it_ends(
            now in 0i64..MAX_TIMESTAMP - SPAN_MAX_SECS.max(40 * 86_400),
            anchor in 0i64..MAX_TIMESTAMP,
            kind in 0usize..4,
            span in SPAN_MIN_SECS..SPAN_MAX_SECS,
        ) {
            let period = [Period::Day, Period::Week, Period::Month, Period::Span(span)][kind];
            let tz = time_zone("America/New_York").unwrap();
            let w = Window::holding(period, &tz, anchor, now).unwrap();
            proptest::prop_assert!(w.start <= now && now < w.end);
            let next = Window::holding(period, &tz, anchor, w.end).unwrap();
            proptest::prop_assert_eq!(next.start, w.end);
        }
    }
}
