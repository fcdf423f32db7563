//! When a key expires: parsing `expires_in` (`"1h"`, `"30d"`, `"1mo"`, `"never"`) and
//! `expires_at` (RFC 3339), and the RFC 3339 form of stored unix-second timestamps.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// A parsed `expires_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiresIn {
    Never,
    /// This many seconds after creation.
    After(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpiryError {
    #[error("expected a duration such as \"12h\", \"30d\", \"1mo\" or \"never\", got {0:?}")]
    Malformed(String),
    #[error("\"m\" is ambiguous: write \"min\" for minutes or \"mo\" for months")]
    AmbiguousMinutes,
    #[error("a duration must be at least 1")]
    Zero,
    #[error("the expiry lies beyond the year 9999")]
    TooFar,
    #[error("expected an RFC 3339 timestamp such as \"2030-01-31T12:00:00Z\": {0}")]
    BadTimestamp(String),
}

const MINUTE: i64 = 60;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Units an `expires_in` may use. A month is 30 days and a year 365, so that a duration
/// means the same number of seconds whenever it is given.
const UNITS: &[(&str, i64)] = &[
    ("s", 1),
    ("min", MINUTE),
    ("h", HOUR),
    ("d", DAY),
    ("w", 7 * DAY),
    ("mo", 30 * DAY),
    ("y", 365 * DAY),
];

/// Parses `"never"` or a positive whole number followed by a unit (`s`, `min`, `h`, `d`,
/// `w`, `mo`, `y`), e.g. `"12h"`, `"30d"`, `"1mo"`.
pub fn parse_expires_in(text: &str) -> Result<ExpiresIn, ExpiryError> {
    if text == "never" {
        return Ok(ExpiresIn::Never);
    }
    let malformed = || ExpiryError::Malformed(text.to_owned());
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(malformed());
    }
    if unit == "m" {
        return Err(ExpiryError::AmbiguousMinutes);
    }
    let &(_, seconds_per_unit) = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .ok_or_else(malformed)?;
    // More digits than i64 holds can only be "too far"; the number itself is well formed.
    let count: i64 = number.parse().map_err(|_| ExpiryError::TooFar)?;
    if count == 0 {
        return Err(ExpiryError::Zero);
    }
    count
        .checked_mul(seconds_per_unit)
        .filter(|&secs| secs <= MAX_TIMESTAMP)
        .map(ExpiresIn::After)
        .ok_or(ExpiryError::TooFar)
}

impl ExpiresIn {
    /// The unix second at which a key created at `now` expires, if ever.
    pub fn expires_at(self, now: i64) -> Result<Option<i64>, ExpiryError> {
        match self {
            ExpiresIn::Never => Ok(None),
            ExpiresIn::After(secs) => now
                .checked_add(secs)
                .filter(|&at| at <= MAX_TIMESTAMP)
                .map(Some)
                .ok_or(ExpiryError::TooFar),
        }
    }
}

/// Parses an RFC 3339 timestamp to unix seconds (fractions of a second are dropped).
pub fn parse_rfc3339(text: &str) -> Result<i64, ExpiryError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|e| ExpiryError::BadTimestamp(e.to_string()))
}

/// The RFC 3339 form, in UTC, of a unix-second timestamp; `None` outside years 0-9999.
pub fn to_rfc3339(unix: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// The current time in unix seconds. Handlers read the clock once per request and pass it
/// down, so everything below them is plain computation.
pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// The current time in unix milliseconds, which leases count in (a lease lasts seconds).
pub fn now_ms() -> i64 {
    let ms = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_accepts_a_count_and_a_unit() {
        let cases = [
            ("never", ExpiresIn::Never),
            ("1h", ExpiresIn::After(3_600)),
            ("12h", ExpiresIn::After(12 * 3_600)),
            ("1d", ExpiresIn::After(86_400)),
            ("30d", ExpiresIn::After(30 * 86_400)),
            ("1mo", ExpiresIn::After(30 * 86_400)),
            ("3mo", ExpiresIn::After(90 * 86_400)),
            ("2w", ExpiresIn::After(14 * 86_400)),
            ("1y", ExpiresIn::After(365 * 86_400)),
            ("90s", ExpiresIn::After(90)),
            ("15min", ExpiresIn::After(900)),
            ("007d", ExpiresIn::After(7 * 86_400)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_expires_in(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn expires_in_refuses_what_it_cannot_read() {
        for text in [
            "", "h", "1", "1 h", " 1h", "1h ", "1H", "1hour", "-1h", "+1h", "1.5h", "1d2h",
            "Never", "forever", "1mo1",
        ] {
            assert!(
                matches!(parse_expires_in(text), Err(ExpiryError::Malformed(_))),
                "{text:?} accepted"
            );
        }
        assert_eq!(parse_expires_in("5m"), Err(ExpiryError::AmbiguousMinutes));
        assert_eq!(parse_expires_in("0d"), Err(ExpiryError::Zero));
        assert_eq!(parse_expires_in("10000y"), Err(ExpiryError::TooFar));
        assert_eq!(
            parse_expires_in("99999999999999999999999d"),
            Err(ExpiryError::TooFar)
        );
    }

    #[test]
    fn expiry_is_counted_from_creation_and_bounded() {
        assert_eq!(ExpiresIn::Never.expires_at(1_000), Ok(None));
        assert_eq!(ExpiresIn::After(60).expires_at(1_000), Ok(Some(1_060)));
        assert_eq!(
            ExpiresIn::After(MAX_TIMESTAMP).expires_at(1),
            Err(ExpiryError::TooFar)
        );
    }

    #[test]
    fn rfc3339_round_trips_in_utc() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339("2030-01-01T02:00:00.9+02:00"),
            Ok(1_893_456_000)
        );
        assert_eq!(
            to_rfc3339(1_893_456_000).as_deref(),
            Some("2030-01-01T00:00:00Z")
        );
        assert_eq!(
            to_rfc3339(MAX_TIMESTAMP).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(to_rfc3339(MAX_TIMESTAMP + 1), None);
        for bad in [
            "",
            "2030-01-01",
            "2030-01-01 00:00:00",
            "tomorrow",
            "2030-13-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} accepted");
        }
    }
}
