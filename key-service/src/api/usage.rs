//! `POST /filter/v1/usage` (the filter reports what each request used) and
//! `GET /api/v1/usage` (the request log for people).

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::api::keys::{number, PER_PAGE_DEFAULT, PER_PAGE_MAX};
use crate::error::ApiError;
use crate::expiry;
use crate::extract::ApiJson;
use crate::pricing::Tokens;
use crate::store::{Ingested, UsageFilter, UsageRecord};
use crate::AppState;

/// Records per report at most; the filter sends smaller batches.
pub const BATCH_MAX: usize = 1000;

/// Body of `POST /filter/v1/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    pub records: Vec<ReportedUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedUsage {
    pub request_id: String,
    pub key_id: String,
    pub model: String,
    pub input_tokens: u64,
    #[serde(default)]
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    /// HTTP status the client got (200 when absent).
    #[serde(default)]
    pub status: Option<u16>,
    /// Unix seconds of the request (the intake's clock when absent).
    #[serde(default)]
    pub ts: Option<i64>,
    /// The filter estimated the tokens (the response ended without its usage).
    #[serde(default)]
    pub estimated: bool,
}

impl UsageReport {
    /// Checks every record; the 400 names the first bad one (`records[3].request_id`).
    pub fn validate(self, now: i64) -> Result<Vec<UsageRecord>, ApiError> {
        if self.records.len() > BATCH_MAX {
            return Err(ApiError::invalid(
                "records",
                format!("at most {BATCH_MAX} records per report"),
            ));
        }
        self.records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let field = |name: &str| format!("records[{i}].{name}");
                for (name, value, max) in [
                    ("request_id", &r.request_id, 128),
                    ("key_id", &r.key_id, 128),
                    ("model", &r.model, 256),
                ] {
                    if value.is_empty() || value.len() > max || value.chars().any(char::is_control)
                    {
                        return Err(ApiError::invalid(
                            &field(name),
                            format!("{name} must be 1-{max} printable characters"),
                        ));
                    }
                }
                if r.cached_input_tokens > r.input_tokens {
                    return Err(ApiError::invalid(
                        &field("cached_input_tokens"),
                        "cached_input_tokens cannot exceed input_tokens",
                    ));
                }
                let status = r.status.unwrap_or(200);
                if !(100..=599).contains(&status) {
                    return Err(ApiError::invalid(&field("status"), "not an HTTP status"));
                }
                let reported = Tokens {
                    input: r.input_tokens,
                    cached_input: r.cached_input_tokens,
                    output: r.output_tokens,
                };
                // Counts past the maximum are a fault or a lie: billed as the maximum,
                // and flagged as not what was reported.
                let tokens = reported.bounded();
                Ok(UsageRecord {
                    request_id: r.request_id,
                    key_id: r.key_id,
                    model: r.model,
                    tokens,
                    status,
                    ts: r.ts.unwrap_or(now),
                    estimated: r.estimated || tokens != reported,
                })
            })
            .collect()
    }
}

/// `POST /filter/v1/usage`: idempotent by `request_id`, so a retried report never bills
/// twice.
pub async fn report(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<UsageReport>,
) -> Result<Json<Ingested>, ApiError> {
    let now = expiry::now();
    let records = body.validate(now)?;
    let done = state.store.ingest_usage(&records, now).await?;
    crate::metrics::add(&state.metrics.usage_accepted, done.accepted);
    crate::metrics::add(&state.metrics.usage_duplicates, done.duplicates);
    tracing::debug!(
        accepted = done.accepted,
        duplicates = done.duplicates,
        "usage ingested"
    );
    Ok(Json(done))
}

#[derive(Debug, Serialize)]
pub struct UsagePage {
    pub usage: Vec<serde_json::Value>,
    pub page: u32,
    pub per_page: u32,
    pub total: u64,
}

fn time_param(name: &str, value: &str) -> Result<i64, ApiError> {
    expiry::parse_rfc3339(value)
        .map_err(|e| ApiError::invalid(name, format!("{name} must be RFC 3339: {e}")))
}

/// `row` as JSON, with its `ts` (Unix seconds) in RFC 3339.
fn json_with_time(row: &impl Serialize, ts: i64) -> Result<serde_json::Value, ApiError> {
    let mut value = serde_json::to_value(row).map_err(ApiError::internal)?;
    value["ts"] = serde_json::json!(expiry::to_rfc3339(ts));
    Ok(value)
}

/// The query of the usage routes: the log's filters `key_id`, `account`, `model`, `from`,
/// `to` (RFC 3339, `to` exclusive) go into the filter; `other` takes the route's own
/// parameters and answers false for a name it does not know either.
fn usage_query(
    query: Option<&str>,
    mut other: impl FnMut(&str, &str) -> Result<bool, ApiError>,
) -> Result<UsageFilter, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| ApiError::InvalidRequest {
            param: None,
            code: "invalid_query",
            message: format!("the query string could not be decoded: {e}"),
        })?;
    let mut filter = UsageFilter::default();
    for (name, value) in pairs {
        if value.is_empty() {
            continue;
        }
        match name.as_str() {
            "key_id" => filter.key_id = Some(value),
            "account" => filter.account = Some(value),
            "model" => filter.model = Some(value),
            "from" => filter.from = Some(time_param("from", &value)?),
            "to" => filter.to = Some(time_param("to", &value)?),
            _ if other(&name, &value)? => {}
            _ => {
                return Err(ApiError::InvalidRequest {
                    param: Some(name.clone()),
                    code: "unknown_parameter",
                    message: format!("unknown query parameter {name:?}"),
                })
            }
        }
    }
    Ok(filter)
}

/// `GET /api/v1/usage`: the log's filters (see [`usage_query`]); `page`, `per_page`;
/// newest first.
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<UsagePage>, ApiError> {
    let (mut page, mut per_page) = (1, PER_PAGE_DEFAULT);
    let filter = usage_query(query.as_deref(), |name, value| {
        match name {
            "page" => page = number("page", value, 1, u32::MAX)?,
            "per_page" => per_page = number("per_page", value, 1, PER_PAGE_MAX)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let offset = u64::from(page - 1) * u64::from(per_page);
    let (rows, total) = state.store.list_usage(&filter, per_page, offset).await?;
    let usage = rows
        .into_iter()
        .map(|row| json_with_time(&row, row.ts))
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(UsagePage {
        usage,
        page,
        per_page,
        total,
    }))
}

/// Buckets one summary may hold at most (a month of hours is 744).
pub const SUMMARY_BUCKETS_MAX: i64 = 1_000;

#[derive(Debug, Serialize)]
pub struct UsageSummary {
    pub bucket: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
    pub buckets: Vec<serde_json::Value>,
}

/// `GET /api/v1/usage/summary`: the log's filters (see [`usage_query`]) and `bucket`
/// (`hour`, the default, or `day`); tokens, requests and credits per bucket and model,
/// oldest first. Without `from` and `to`, the last 24 hours (hour) or 30 days (day).
pub async fn summary(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<UsageSummary>, ApiError> {
    let mut bucket = ("hour", 3_600);
    let mut filter = usage_query(query.as_deref(), |name, value| {
        if name != "bucket" {
            return Ok(false);
        }
        bucket = match value {
            "hour" => ("hour", 3_600),
            "day" => ("day", 86_400),
            _ => return Err(ApiError::invalid("bucket", "bucket must be hour or day")),
        };
        Ok(true)
    })?;
    let (name, seconds) = bucket;
    let to = filter.to.unwrap_or_else(|| expiry::now() + 1);
    let from = filter
        .from
        .unwrap_or(to - seconds * if seconds == 3_600 { 24 } else { 30 });
    if from >= to {
        return Err(ApiError::invalid("from", "from must be before to"));
    }
    if (to - from) / seconds >= SUMMARY_BUCKETS_MAX {
        return Err(ApiError::invalid(
            "from",
            format!("from..to spans more than {SUMMARY_BUCKETS_MAX} buckets of a {name}"),
        ));
    }
    (filter.from, filter.to) = (Some(from), Some(to));
    let rows = state.store.summarize_usage(&filter, seconds).await?;
    let buckets = rows
        .into_iter()
        .map(|row| json_with_time(&row, row.ts))
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(UsageSummary {
        bucket: name,
        from: expiry::to_rfc3339(from),
        to: expiry::to_rfc3339(to),
        buckets,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(records: serde_json::Value) -> Result<Vec<UsageRecord>, ApiError> {
        let report: UsageReport =
            serde_json::from_value(serde_json::json!({ "records": records })).unwrap();
        report.validate(7)
    }

    #[test]
    fn records_take_defaults_and_bad_ones_are_named() {
        let ok = report(
            serde_json::json!([{"request_id": "r", "key_id": "k", "model": "m",
            "input_tokens": 3, "output_tokens": 4}]),
        )
        .unwrap();
        assert_eq!(
            (ok[0].status, ok[0].ts, ok[0].tokens.cached_input),
            (200, 7, 0)
        );
        let bad = report(serde_json::json!([
            {"request_id": "r", "key_id": "k", "model": "m", "input_tokens": 3, "output_tokens": 4},
            {"request_id": "", "key_id": "k", "model": "m", "input_tokens": 3, "output_tokens": 4}
        ]));
        match bad {
            Err(ApiError::InvalidRequest { param: Some(p), .. }) => {
                assert_eq!(p, "records[1].request_id")
            }
            other => panic!("{other:?}"),
        }
        let cached = report(
            serde_json::json!([{"request_id": "r", "key_id": "k", "model": "m",
            "input_tokens": 3, "cached_input_tokens": 4, "output_tokens": 4}]),
        );
        assert!(cached.is_err());
    }
}
