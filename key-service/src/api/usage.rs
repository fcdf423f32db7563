//! `POST /filter/v1/usage` (the filter reports what each request used) and
//! `GET /api/v1/usage` (the request log for people).

use axum::extract::{RawQuery, State};

use crate::access::Caller;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::api::leases::check_holder;
use crate::error::ApiError;
use crate::expiry;
use crate::extract::ApiJson;
use crate::metrics::UsageResult;
use crate::pricing::Tokens;
use crate::store::{UsageFilter, UsageRecord};
use crate::validate::{number, PER_PAGE_DEFAULT, PER_PAGE_MAX};
use crate::AppState;
use keygate_core::usage::report::UsageWire;

/// Records per report at most; the filter sends smaller batches.
pub const BATCH_MAX: usize = 1000;

pub use keygate_core::usage::report::{ID_MAX, MODEL_MAX};

/// Body of `POST /filter/v1/usage`. Each record is read on its own: one that cannot be
/// read is refused alone, and the others are billed.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    /// Each a `UsageWire`, read alone.
    #[schema(value_type = Vec<UsageWire>)]
    pub records: Vec<serde_json::Value>,
    /// The reporting filter's holder name, when it spends from leases
    /// (`POST /filter/v1/leases`): the records' costs are billed to its leases too.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub holder: Option<String>,
}

/// What became of one record of a report, in the order they came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RecordResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `accepted`, `duplicate` (its `request_id` was billed before) or `refused`.
    pub result: &'static str,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to a usage report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReportAnswer {
    pub accepted: u64,
    pub duplicates: u64,
    pub refused: u64,
    /// See [`Ingested::version`](crate::store::Ingested::version).
    pub version: u64,
    pub results: Vec<RecordResult>,
}

/// One reported record as it will be billed, or why it cannot be. Only what would make
/// billing unsafe refuses a record (no id to bill it once by, no key); anything else odd
/// is normalised and the record flagged `estimated` where its numbers changed: an empty
/// or unprintable model is `unknown`, a long one is cut to [`MODEL_MAX`] bytes, counts
/// are bounded by [`MAX_RECORD_TOKENS`](crate::pricing::MAX_RECORD_TOKENS) with cached
/// input at most input, and a status that is not an HTTP status is stored as 502.
pub fn normalise(record: serde_json::Value, now: i64) -> Result<UsageRecord, RecordResult> {
    let request_id = record
        .get("request_id")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let refuse = |reason: String| RecordResult {
        request_id: request_id.clone(),
        result: "refused",
        reason: Some(reason),
    };
    // The reason names the field, never its value (which could be anything).
    let r: UsageWire = serde_path_to_error::deserialize(record).map_err(|e| {
        refuse(match e.path().to_string() {
            path if path == "." => "not a usage record".to_owned(),
            path => format!("{path} cannot be read"),
        })
    })?;
    for (name, value) in [("request_id", &r.request_id), ("key_id", &r.key_id)] {
        if value.is_empty() || value.len() > ID_MAX || value.chars().any(char::is_control) {
            return Err(refuse(format!(
                "{name} must be 1-{ID_MAX} printable characters"
            )));
        }
    }
    let model = keygate_core::decide::model::printable(r.model.as_deref().unwrap_or(""), MODEL_MAX);
    let model = if model.trim().is_empty() {
        "unknown".to_owned()
    } else {
        model
    };
    let status = r
        .status
        .map_or(200, |s| if (100..=599).contains(&s) { s } else { 502 });
    let reported = Tokens {
        input: r.input_tokens,
        cached_input: r.cached_input_tokens,
        output: r.output_tokens,
        cache_write: r.cache_write_tokens,
    };
    let tokens = reported.bounded();
    Ok(UsageRecord {
        request_id: r.request_id,
        key_id: r.key_id,
        model,
        tokens,
        status: u16::try_from(status).unwrap_or(502),
        ts: r.ts.unwrap_or(now),
        estimated: r.estimated || tokens != reported,
    })
}

/// `POST /filter/v1/usage`: idempotent by `request_id`, so a retried report never bills
/// twice; answers for each record whether it was accepted, a duplicate or refused (and
/// why), so the filter drops only what was refused.
#[utoipa::path(
    post,
    operation_id = "report_usage",
    path = "/filter/v1/usage",
    tag = "filter",
    security(("filter" = [])),
    request_body = UsageReport,
    responses(
        (status = 200, body = ReportAnswer),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn report(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<UsageReport>,
) -> Result<Json<ReportAnswer>, ApiError> {
    if body.records.len() > BATCH_MAX {
        return Err(ApiError::invalid(
            "records",
            format!("at most {BATCH_MAX} records per report"),
        ));
    }
    if let Some(holder) = &body.holder {
        check_holder(holder)?;
    }
    let now = expiry::now();
    let mut results: Vec<Option<RecordResult>> = Vec::with_capacity(body.records.len());
    let mut records = Vec::with_capacity(body.records.len());
    for record in body.records {
        match normalise(record, now) {
            Ok(record) => {
                records.push(record);
                results.push(None);
            }
            Err(refused) => results.push(Some(refused)),
        }
    }
    let done = state
        .store
        .ingest_usage(&records, body.holder.as_deref(), now)
        .await?;
    let mut fresh = records.iter().zip(&done.inserted);
    let results: Vec<RecordResult> = results
        .into_iter()
        .map(|result| match result {
            Some(refused) => refused,
            None => {
                let (record, inserted) = fresh.next().map_or((None, false), |(r, i)| (Some(r), *i));
                RecordResult {
                    request_id: record.map(|r| r.request_id.clone()),
                    result: if inserted { "accepted" } else { "duplicate" },
                    reason: None,
                }
            }
        })
        .collect();
    let refused = results.iter().filter(|r| r.result == "refused").count() as u64;
    for (result, n) in [
        (UsageResult::Accepted, done.accepted),
        (UsageResult::Duplicate, done.duplicates),
        (UsageResult::Refused, refused),
    ] {
        state.metrics.usage_records(result, n);
    }
    if refused > 0 {
        let reasons: Vec<&str> = results.iter().filter_map(|r| r.reason.as_deref()).collect();
        tracing::warn!(refused, ?reasons, "usage records refused");
    }
    tracing::debug!(
        accepted = done.accepted,
        duplicates = done.duplicates,
        "usage ingested"
    );
    Ok(Json(ReportAnswer {
        accepted: done.accepted,
        duplicates: done.duplicates,
        refused,
        version: done.version,
        results,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
#[utoipa::path(
    get,
    operation_id = "list_usage",
    path = "/api/v1/usage",
    tag = "usage",
    security(("admin" = [])),
    params(
        ("key_id" = Option<String>, Query),
        ("account" = Option<String>, Query),
        ("model" = Option<String>, Query),
        ("from" = Option<String>, Query, description = "RFC 3339"),
        ("to" = Option<String>, Query, description = "RFC 3339"),
        ("page" = Option<u32>, Query, minimum = 1),
        ("per_page" = Option<u32>, Query, minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, body = UsagePage),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<UsagePage>, ApiError> {
    let (mut page, mut per_page) = (1, PER_PAGE_DEFAULT);
    let mut filter = usage_query(query.as_deref(), |name, value| {
        match name {
            "page" => page = number("page", value, 1, u32::MAX)?,
            "per_page" => per_page = number("per_page", value, 1, PER_PAGE_MAX)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if !caller.narrow(&mut filter.account) {
        return Ok(Json(UsagePage {
            usage: Vec::new(),
            page,
            per_page,
            total: 0,
        }));
    }
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageSummary {
    pub bucket: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
    pub buckets: Vec<serde_json::Value>,
}

/// `GET /api/v1/usage/summary`: the log's filters (see [`usage_query`]) and `bucket`
/// (`hour`, the default, or `day`); tokens, requests and credits per bucket and model,
/// oldest first. Without `from` and `to`, the last 24 hours (hour) or 30 days (day).
#[utoipa::path(
    get,
    operation_id = "usage_summary",
    path = "/api/v1/usage/summary",
    tag = "usage",
    security(("admin" = [])),
    params(
        ("bucket" = Option<String>, Query, description = "hour (default) or day"),
        ("key_id" = Option<String>, Query),
        ("account" = Option<String>, Query),
        ("model" = Option<String>, Query),
        ("from" = Option<String>, Query, description = "RFC 3339"),
        ("to" = Option<String>, Query, description = "RFC 3339"),
    ),
    responses(
        (status = 200, body = UsageSummary),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn summary(
    State(state): State<AppState>,
    caller: Caller,
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
    let rows = if caller.narrow(&mut filter.account) {
        state.store.summarize_usage(&filter, seconds).await?
    } else {
        Vec::new()
    };
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
    use proptest::prelude::*;
    use serde_json::json;

    fn record(fields: serde_json::Value) -> Result<UsageRecord, RecordResult> {
        let mut base = json!({"request_id": "r", "key_id": "k", "model": "m",
            "input_tokens": 3, "output_tokens": 4});
        for (name, value) in fields.as_object().unwrap() {
            base[name] = value.clone();
        }
        normalise(base, 7)
    }

    fn refused(result: Result<UsageRecord, RecordResult>) -> String {
        match result {
            Err(RecordResult {
                result: "refused",
                reason: Some(reason),
                ..
            }) => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn records_take_defaults() {
        let ok = record(json!({})).unwrap();
        assert_eq!(
            (ok.status, ok.ts, ok.tokens.cached_input, ok.estimated),
            (200, 7, 0, false)
        );
    }

    #[test]
    fn only_what_makes_billing_unsafe_refuses_a_record() {
        assert!(refused(record(json!({"request_id": ""}))).contains("request_id"));
        assert!(refused(record(json!({"key_id": "a\nb"}))).contains("key_id"));
        assert!(refused(record(json!({"key_id": "k".repeat(129)}))).contains("key_id"));
        // The reason names the field, never its value.
        let reason = refused(record(json!({"input_tokens": "sk-secret"})));
        assert!(reason.contains("input_tokens"), "{reason}");
        assert!(!reason.contains("sk-secret"), "{reason}");
        assert_eq!(refused(normalise(json!(42), 7)), "not a usage record");
        // The id is still named when it can be read.
        let result = record(json!({"output_tokens": -1})).unwrap_err();
        assert_eq!(result.request_id.as_deref(), Some("r"));
    }

    #[test]
    fn odd_values_are_normalised_not_refused() {
        for model in [json!(""), json!("  "), json!(null), json!("\u{7}")] {
            assert_eq!(record(json!({"model": model})).unwrap().model, "unknown");
        }
        let long = record(json!({"model": "é".repeat(200)})).unwrap().model;
        assert_eq!(long.len(), MODEL_MAX, "cut at a character boundary");
        assert_eq!(record(json!({"status": 999})).unwrap().status, 502);
        assert_eq!(record(json!({"status": 0})).unwrap().status, 502);
        let cached = record(json!({"input_tokens": 3, "cached_input_tokens": 9})).unwrap();
        assert_eq!(
            (cached.tokens.cached_input, cached.estimated),
            (3, true),
            "cached input is part of input"
        );
        let huge = record(json!({"input_tokens": u64::MAX})).unwrap();
        assert_eq!(huge.tokens.input, crate::pricing::MAX_RECORD_TOKENS);
        assert!(huge.estimated);
        // Fields a newer filter may send are ignored.
        assert!(record(json!({"reasoning_tokens": 5})).is_ok());
    }

    proptest! {
        /// Whatever a record holds, it is normalised or refused, never a panic, and what
        /// is accepted is within every bound.
        #[test]
        fn any_record_is_bounded_or_refused(
            request_id in ".{0,140}",
            model in proptest::option::of(".{0,300}"),
            input in any::<u64>(),
            cached in any::<u64>(),
            output in any::<u64>(),
            status in proptest::option::of(any::<u64>()),
        ) {
            let value = json!({"request_id": request_id, "key_id": "k", "model": model,
                "input_tokens": input, "cached_input_tokens": cached, "output_tokens": output,
                "status": status});
            if let Ok(r) = normalise(value, 0) {
                prop_assert!(!r.model.is_empty() && r.model.len() <= MODEL_MAX);
                prop_assert!(!r.model.chars().any(char::is_control));
                prop_assert!((100..=599).contains(&r.status));
                prop_assert!(r.tokens.cached_input <= r.tokens.input);
                prop_assert!(r.tokens.input <= crate::pricing::MAX_RECORD_TOKENS);
                prop_assert!(r.tokens.output <= crate::pricing::MAX_RECORD_TOKENS);
            }
        }
    }
}
