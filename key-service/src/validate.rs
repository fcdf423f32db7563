//! Checks that more than one resource's input shares: rate limits, model lists, paging.
//! Each refusal is a 400 naming the offending field, as the contract asks.

use std::collections::HashSet;

use serde::{Deserialize, Deserializer};

use crate::error::ApiError;

pub(crate) const MODEL_NAME_MAX: usize = 256;
pub const PER_PAGE_DEFAULT: u32 = 20;
pub const PER_PAGE_MAX: u32 = 100;

/// A rate limit (a group's or a key's RPM, TPM, parallel requests): at least 1, or
/// `None` for no limit.
pub(crate) fn limit(param: &str, value: Option<i64>) -> Result<Option<i64>, ApiError> {
    match value {
        Some(v) if v < 1 => Err(ApiError::invalid(
            param,
            format!("{param} must be at least 1, or null for no limit"),
        )),
        other => Ok(other),
    }
}

/// `null` and absent told apart: `Some(None)` for an explicit `null`.
pub(crate) fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

/// As `nullable`, for text.
pub(crate) fn nullable_text<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Model names, non-empty and printable, duplicates dropped (first kept).
pub(crate) fn check_models(models: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(models.len());
    for (i, model) in models.into_iter().enumerate() {
        if model.trim().is_empty() {
            return Err(ApiError::invalid("models", format!("models[{i}] is empty")));
        }
        // Bytes, not characters: as a price's name, and as usage records carry a model
        // (a longer name would reach the intake cut short and miss its cap).
        if model.len() > MODEL_NAME_MAX || model.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "models",
                format!("models[{i}] must be printable and at most {MODEL_NAME_MAX} bytes long"),
            ));
        }
        if seen.insert(model.clone()) {
            out.push(model);
        }
    }
    Ok(out)
}

/// A page number or size from a query string, within `min..=max`.
pub(crate) fn number(param: &str, value: &str, min: u32, max: u32) -> Result<u32, ApiError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            ApiError::invalid(
                param,
                format!("{param} must be a whole number from {min} to {max}, got {value:?}"),
            )
        })
}

/// A point in time from a query string (`from`, `to`): unix seconds, or RFC 3339 as
/// `GET /api/v1/usage` takes it (fractions of a second dropped).
pub(crate) fn time(param: &str, value: &str) -> Result<i64, ApiError> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse::<i64>()
            .ok()
            .filter(|&t| t <= crate::expiry::MAX_TIMESTAMP)
            .ok_or_else(|| {
                ApiError::invalid(
                    param,
                    format!("{param} is beyond the year 9999 (unix seconds)"),
                )
            });
    }
    crate::expiry::parse_rfc3339(value).map_err(|e| {
        ApiError::invalid(
            param,
            format!("{param} must be unix seconds or RFC 3339: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_printable_and_at_most_256_bytes() {
        let ascii = "m".repeat(MODEL_NAME_MAX);
        let wide = "é".repeat(MODEL_NAME_MAX / 2);
        let names = vec![ascii.clone(), wide.clone(), ascii.clone()];
        assert_eq!(
            check_models(names).unwrap(),
            [ascii, wide],
            "a duplicate dropped"
        );
        // 129 two-byte characters are 258 bytes: a usage record would cut it short.
        for bad in [
            "é".repeat(MODEL_NAME_MAX / 2 + 1),
            "a\tb".into(),
            " ".into(),
        ] {
            let err = check_models(vec!["ok".into(), bad.clone()]).unwrap_err();
            assert!(err.to_string().contains("models[1]"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn times_are_unix_seconds_or_rfc_3339() {
        assert_eq!(time("from", "0").unwrap(), 0);
        assert_eq!(time("from", "1700000000").unwrap(), 1_700_000_000);
        assert_eq!(time("to", "2023-11-14T22:13:20Z").unwrap(), 1_700_000_000);
        assert_eq!(
            time("to", "2023-11-14T23:13:20.9+01:00").unwrap(),
            1_700_000_000
        );
        for bad in [
            "-5",
            "1e9",
            "99999999999999999999",
            "yesterday",
            "2023-11-14",
        ] {
            let err = time("from", bad).unwrap_err();
            assert!(
                matches!(&err, ApiError::InvalidRequest { param: Some(p), .. } if p == "from"),
                "{bad}: {err:?}"
            );
        }
    }
}
