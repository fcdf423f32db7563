//! Limits per model on one key (issue 20): `{"claude-opus-*": {"budget": 5000, "period":
//! "day"}}` caps what the key may spend on the models a name or pattern covers (credits,
//! or `tokens`), per period. A request's model counts against the most specific entry
//! that names it, as prices are found. Pure: the store keeps each key's caps, with what
//! each has used in its current period, as one JSON list that travels to the filter as
//! it is (`StoredCap`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::budget::{Period, Window};
use crate::error::ApiError;
use crate::expiry;
use crate::validate::check_models;

/// Caps one key may have: each is checked on every request of the key.
pub const CAPS_MAX: usize = 32;

/// One cap as the API takes it: exactly one of `budget` (credits) and `tokens` (input
/// and output tokens), and how often it starts afresh (`total`, the default, or as a
/// key's `quota_period`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapRequest {
    #[serde(default)]
    pub budget: Option<i64>,
    #[serde(default)]
    pub tokens: Option<i64>,
    #[serde(default)]
    pub period: Option<String>,
}

/// One cap as the API shows it: as asked, with what its current period has used and
/// when it starts afresh.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CapView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<i64>,
    pub period: String,
    pub used: i64,
    pub resets_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    #[default]
    Credits,
    Tokens,
}

impl Unit {
    /// As the API and alerts name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Credits => "credits",
            Unit::Tokens => "tokens",
        }
    }
}

/// One cap as stored, and as the filter reads it from the snapshot (it reads `model`,
/// `unit`, `limit`, `used` and `period_end`, and counts the whole `limit` from
/// `period_end` on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCap {
    pub model: String,
    pub unit: Unit,
    pub limit: i64,
    pub used: i64,
    pub period: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<i64>,
}

/// Checks caps as given; each with its period. The map's keys are model names or
/// patterns (`claude-opus-*`), as in prices.
pub fn check(
    caps: BTreeMap<String, CapRequest>,
) -> Result<Vec<(String, Unit, i64, Period)>, ApiError> {
    if caps.len() > CAPS_MAX {
        return Err(ApiError::invalid(
            "model_caps",
            format!(
                "a key may have at most {CAPS_MAX} model caps, got {}",
                caps.len()
            ),
        ));
    }
    let names = check_models(caps.keys().cloned().collect())
        .map_err(|e| ApiError::invalid("model_caps", e.to_string()))?;
    let mut out = Vec::with_capacity(caps.len());
    for (name, cap) in names.into_iter().zip(caps.into_values()) {
        let bad =
            |why: &str| ApiError::invalid("model_caps", format!("model_caps[{name:?}]: {why}"));
        let (unit, limit) = match (cap.budget, cap.tokens) {
            (Some(budget), None) => (Unit::Credits, budget),
            (None, Some(tokens)) => (Unit::Tokens, tokens),
            _ => return Err(bad("give exactly one of budget (credits) and tokens")),
        };
        if limit < 0 {
            return Err(bad("a cap must be 0 or more"));
        }
        let period = match cap.period {
            Some(text) => text.parse::<Period>().map_err(|e| bad(&e.to_string()))?,
            None => Period::Total,
        };
        out.push((name, unit, limit, period));
    }
    Ok(out)
}

/// The caps to store for `asked`, keeping what `old` caps of the same model, unit and
/// period have used in their current period; a new or changed cap starts a period now
/// (`window` gives a period's window from an anchor at `now`).
pub fn replace(
    old: &[StoredCap],
    asked: Vec<(String, Unit, i64, Period)>,
    window: impl Fn(Period) -> Option<Window>,
) -> Vec<StoredCap> {
    asked
        .into_iter()
        .map(|(model, unit, limit, period)| {
            let period_text = period.to_string();
            let kept = old
                .iter()
                .find(|c| c.model == model && c.unit == unit && c.period == period_text);
            match kept {
                Some(c) => StoredCap { limit, ..c.clone() },
                None => {
                    let w = window(period);
                    StoredCap {
                        model,
                        unit,
                        limit,
                        used: 0,
                        period: period_text,
                        period_start: w.map(|w| w.start),
                        period_end: w.map(|w| w.end),
                    }
                }
            }
        })
        .collect()
}

/// The cap that counts a request for `model`: the most specific one that names it.
pub fn cap_for<'a>(caps: &'a mut [StoredCap], model: &str) -> Option<&'a mut StoredCap> {
    let name =
        keygate_core::decide::model::most_specific(caps.iter().map(|c| c.model.as_str()), model)?
            .to_owned();
    caps.iter_mut().find(|c| c.model == name)
}

impl StoredCap {
    /// Moves the cap to the period holding `now` if its own has ended (`next` gives the
    /// window of a period from the old start); true if it did.
    pub fn roll(&mut self, now: i64, next: impl Fn(Period, i64) -> Option<Window>) -> bool {
        let (Some(start), Some(end)) = (self.period_start, self.period_end) else {
            return false;
        };
        if end > now {
            return false;
        }
        let Some(w) = self.period.parse().ok().and_then(|p| next(p, start)) else {
            return false;
        };
        self.used = 0;
        self.period_start = Some(w.start);
        self.period_end = Some(w.end);
        true
    }

    /// Counts a request made at `ts` that cost `cost` credits and used `tokens`; one from
    /// before the cap's period began counts in no period.
    pub fn count(&mut self, ts: i64, cost: i64, tokens: u64) {
        if self.period_start.is_some_and(|start| ts < start) {
            return;
        }
        self.used = self.used.saturating_add(self.amount(cost, tokens));
    }

    /// What a request that cost `cost` credits and used `tokens` counts in the cap's
    /// unit; never below 0.
    pub fn amount(&self, cost: i64, tokens: u64) -> i64 {
        let amount = match self.unit {
            Unit::Credits => cost,
            Unit::Tokens => i64::try_from(tokens).unwrap_or(i64::MAX),
        };
        amount.max(0)
    }

    /// What is left at `now`: the whole limit once the period has ended (it rolls over
    /// with the next record), as the filter counts it from the snapshot.
    pub fn left_at(&self, now: i64) -> i64 {
        match self.period_end {
            Some(end) if end <= now => self.limit,
            _ => self.limit.saturating_sub(self.used),
        }
    }

    pub fn view(&self, now: i64) -> CapView {
        let ended = self.period_end.is_some_and(|end| end <= now);
        let (budget, tokens) = match self.unit {
            Unit::Credits => (Some(self.limit), None),
            Unit::Tokens => (None, Some(self.limit)),
        };
        CapView {
            budget,
            tokens,
            period: self.period.clone(),
            used: if ended { 0 } else { self.used },
            resets_at: self.period_end.and_then(expiry::to_rfc3339),
        }
    }
}

/// Reads a key's stored caps; bad JSON reads as none (it is only ever written here).
pub fn parse(text: &str) -> Vec<StoredCap> {
    serde_json::from_str(text).unwrap_or_default()
}

pub fn to_json(caps: &[StoredCap]) -> String {
    serde_json::to_string(caps).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(json: serde_json::Value) -> Result<Vec<(String, Unit, i64, Period)>, ApiError> {
        check(serde_json::from_value(json).unwrap())
    }

    fn span(start: i64) -> impl Fn(Period) -> Option<Window> {
        move |p| match p {
            Period::Span(s) => Some(Window {
                start,
                end: start + s,
            }),
            _ => None,
        }
    }

    #[test]
    fn caps_are_checked() {
        let ok = asked(serde_json::json!({
            "claude-opus-*": {"budget": 5000, "period": "day"},
            "gpt-4o": {"tokens": 0}
        }))
        .unwrap();
        assert_eq!(
            ok,
            [
                ("claude-opus-*".into(), Unit::Credits, 5000, Period::Day),
                ("gpt-4o".into(), Unit::Tokens, 0, Period::Total)
            ]
        );
        for bad in [
            serde_json::json!({"m": {}}),
            serde_json::json!({"m": {"budget": 1, "tokens": 1}}),
            serde_json::json!({"m": {"budget": -1}}),
            serde_json::json!({"m": {"budget": 1, "period": "fortnight"}}),
            serde_json::json!({"": {"budget": 1}}),
            serde_json::json!({"a\nb": {"budget": 1}}),
        ] {
            let e = asked(bad.clone()).unwrap_err();
            assert!(format!("{e:?}").contains("model_caps"), "{bad}: {e:?}");
        }
        let many: serde_json::Map<_, _> = (0..=CAPS_MAX)
            .map(|i| (format!("m{i}"), serde_json::json!({"budget": 1})))
            .collect();
        assert!(asked(serde_json::Value::Object(many)).is_err());
    }

    #[test]
    fn replacing_keeps_what_an_unchanged_cap_used() {
        let first = replace(
            &[],
            vec![("a*".into(), Unit::Credits, 10, Period::Span(100))],
            span(1_000),
        );
        let mut used = first.clone();
        used[0].used = 7;
        let again = replace(
            &used,
            vec![
                ("a*".into(), Unit::Credits, 20, Period::Span(100)),
                ("b".into(), Unit::Tokens, 5, Period::Span(100)),
            ],
            span(1_050),
        );
        assert_eq!(
            (again[0].used, again[0].limit, again[0].period_start),
            (7, 20, Some(1_000))
        );
        assert_eq!((again[1].used, again[1].period_start), (0, Some(1_050)));
        // Another unit or period is another cap.
        let other = replace(
            &used,
            vec![("a*".into(), Unit::Tokens, 10, Period::Span(100))],
            span(1_060),
        );
        assert_eq!(other[0].used, 0);
    }

    #[test]
    fn a_request_counts_against_the_most_specific_cap_in_its_period() {
        let mut caps = replace(
            &[],
            vec![
                ("claude-*".into(), Unit::Credits, 100, Period::Span(100)),
                ("claude-opus-*".into(), Unit::Tokens, 50, Period::Span(100)),
            ],
            span(1_000),
        );
        cap_for(&mut caps, "claude-opus-4")
            .unwrap()
            .count(1_010, 9, 30);
        cap_for(&mut caps, "claude-haiku")
            .unwrap()
            .count(1_010, 9, 30);
        assert!(cap_for(&mut caps, "gpt-4o").is_none());
        assert_eq!((caps[0].used, caps[1].used), (9, 30));
        // The period ends: nothing used; a late record of the old one counts in none.
        let next =
            |p: Period, start: i64| Window::holding(p, &jiff::tz::TimeZone::UTC, start, 1_120);
        assert!(caps[1].roll(1_120, next));
        assert!(!caps[1].roll(1_120, next), "once");
        caps[1].count(1_099, 0, 40);
        assert_eq!((caps[1].used, caps[1].period_start), (0, Some(1_100)));
        assert_eq!(
            caps[1].view(1_120).resets_at.as_deref(),
            Some("1970-01-01T00:20:00Z")
        );
        // Extremes saturate.
        caps[1].count(1_150, 0, u64::MAX);
        caps[1].count(1_150, 0, u64::MAX);
        assert_eq!(caps[1].used, i64::MAX);
        caps[0].count(1_150, i64::MIN, 0);
        assert_eq!(caps[0].used, 9);
    }

    #[test]
    fn stored_caps_round_trip_and_bad_json_reads_as_none() {
        let caps = replace(
            &[],
            vec![("m".into(), Unit::Tokens, 3, Period::Total)],
            span(0),
        );
        assert_eq!(parse(&to_json(&caps)), caps);
        assert_eq!(
            to_json(&caps),
            r#"[{"model":"m","unit":"tokens","limit":3,"used":0,"period":"total"}]"#
        );
        assert!(parse("{").is_empty());
    }
}
