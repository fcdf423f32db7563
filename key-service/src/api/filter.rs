//! `/filter/v1/*`: what the Envoy filter syncs from. `GET /filter/v1/snapshot` answers with
//! the keys (as `keygate_core::sync::snapshot::SnapshotWire` JSON) and an `ETag` of its version, so a
//! poll with `If-None-Match` costs one indexed query and a 304 when nothing changed;
//! `?since=VERSION` answers with only what changed after that version. Full snapshots come
//! in pages (`?after=CURSOR&limit=N`), so a million keys never travel as one body.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use serde::Deserialize;

use std::sync::Arc;
use std::time::Duration;

use crate::changes;
use crate::error::ApiError;
use crate::metrics;
use crate::store::SnapshotPage;
use crate::AppState;

/// Query of `GET /filter/v1/snapshot`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    /// A version the filter holds: answer with what changed since (a delta).
    pub since: Option<u64>,
    /// For a full snapshot: the `next` cursor of the previous page.
    pub after: Option<String>,
    /// For a full snapshot: keys per page (default and maximum below).
    pub limit: Option<usize>,
    /// With `since` and an `If-None-Match` both naming the current version (and no page
    /// asked for): wait up to this many milliseconds (at most 60,000) for a change before
    /// answering 304, and answer the change as soon as it commits (pushed changes).
    pub wait: Option<u64>,
}

/// Keys per page of a full snapshot unless the filter asks otherwise: about 2.5 MB of
/// JSON, a few milliseconds of work on either side.
pub const DEFAULT_PAGE: usize = 10_000;
pub const MAX_PAGE: usize = 100_000;

#[utoipa::path(
    get,
    path = "/filter/v1/snapshot",
    tag = "filter",
    security(("filter" = [])),
    params(SnapshotQuery),
    responses(
        (status = 200, description = "The keys (all, a page of them, or what changed since `since`), groups, accounts and prices; `keygate_core::sync::snapshot::SnapshotWire` as JSON", content_type = "application/json", body = Object),
        (status = 304, description = "Not modified since the version in If-None-Match"),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn snapshot(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<SnapshotQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    // What a filter that is up to date asks: a delta since the version it holds, no page.
    let plain_delta = query.after.is_none() && query.limit.is_none();
    let page = SnapshotPage {
        after: query.after,
        limit,
    };
    let current = state.store.snapshot_version().await?;
    let unchanged = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| if_none_match_hits(v, current));
    let wait = query.wait.unwrap_or(0).min(changes::MAX_WAIT_MS);
    let body = match (unchanged, query.since) {
        (true, Some(since)) if wait > 0 && since == current && plain_delta => {
            let now = state
                .changes
                .wait_past(&state.store, current, Duration::from_millis(wait))
                .await;
            if now <= current {
                return not_modified(&state, current);
            }
            // Every filter woken by this change asks for the same delta: one read.
            let read = state
                .store
                .snapshot(Some(since), &page, crate::expiry::now());
            state.changes.shared_delta(since, now, read).await?
        }
        (true, _) => return not_modified(&state, current),
        (false, _) => Arc::new(
            state
                .store
                .snapshot(query.since, &page, crate::expiry::now())
                .await?,
        ),
    };
    state.metrics.snapshot_answered(if body.delta {
        metrics::SnapshotAnswer::Delta
    } else {
        metrics::SnapshotAnswer::Full
    });
    let headers = [
        (ETAG, etag(body.version)?),
        (CONTENT_TYPE, HeaderValue::from_static("application/json")),
    ];
    Ok((headers, body.to_json()).into_response())
}

fn not_modified(state: &AppState, version: u64) -> Result<Response, ApiError> {
    state
        .metrics
        .snapshot_answered(metrics::SnapshotAnswer::NotModified);
    Ok((StatusCode::NOT_MODIFIED, [(ETAG, etag(version)?)]).into_response())
}

/// `"<version>"`, the strong entity tag of a snapshot version.
fn etag(version: u64) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!("\"{version}\"")).map_err(ApiError::internal)
}

/// Whether an `If-None-Match` value names `version` (weak tags compare equal, `*` matches
/// anything), per RFC 9110 §13.1.2.
pub fn if_none_match_hits(header: &str, version: u64) -> bool {
    let wanted = format!("\"{version}\"");
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_entity_tags() {
        let cases = [
            ("\"7\"", true),
            ("W/\"7\"", true),
            ("\"3\", \"7\"", true),
            ("*", true),
            ("\"8\"", false),
            ("7", false),
            ("\"77\"", false),
            ("", false),
        ];
        for (header, hit) in cases {
            assert_eq!(if_none_match_hits(header, 7), hit, "{header:?}");
        }
    }
}
