//! `GET /metrics` in Prometheus' text format: requests by route and status, snapshot
//! requests by kind, usage records ingested, and (counted at scrape time) keys by status.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::{expiry, AppState};

/// Counters kept in memory since the process started.
#[derive(Default)]
pub struct Metrics {
    /// (route, method, status) -> requests.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    pub snapshot_full: AtomicU64,
    pub snapshot_delta: AtomicU64,
    pub snapshot_not_modified: AtomicU64,
    pub usage_accepted: AtomicU64,
    pub usage_duplicates: AtomicU64,
    pub usage_refused: AtomicU64,
}

pub type SharedMetrics = Arc<Metrics>;

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Middleware: counts each request by its route pattern (never the raw path, which
/// would hold ids), method and status.
pub async fn count(State(metrics): State<SharedMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    if let Ok(mut requests) = metrics.requests.lock() {
        *requests.entry((route, method, status)).or_default() += 1;
    }
    response
}

/// `GET /metrics`
pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let m = &state.metrics;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP keygate_http_requests_total Requests served, by route, method and status.\n\
         # TYPE keygate_http_requests_total counter"
    );
    if let Ok(requests) = m.requests.lock() {
        for ((route, method, status), n) in requests.iter() {
            let _ = writeln!(
                out,
                "keygate_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP keygate_snapshot_requests_total Snapshot requests of the filters, by answer.\n\
         # TYPE keygate_snapshot_requests_total counter"
    );
    for (kind, counter) in [
        ("full", &m.snapshot_full),
        ("delta", &m.snapshot_delta),
        ("not_modified", &m.snapshot_not_modified),
    ] {
        let _ = writeln!(
            out,
            "keygate_snapshot_requests_total{{answer=\"{kind}\"}} {}",
            counter.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP keygate_usage_records_total Usage records reported by filters.\n\
         # TYPE keygate_usage_records_total counter\n\
         keygate_usage_records_total{{result=\"accepted\"}} {}\n\
         keygate_usage_records_total{{result=\"duplicate\"}} {}\n\
         keygate_usage_records_total{{result=\"refused\"}} {}",
        m.usage_accepted.load(Ordering::Relaxed),
        m.usage_duplicates.load(Ordering::Relaxed),
        m.usage_refused.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP keygate_keys Keys by status.\n# TYPE keygate_keys gauge"
    );
    for (status, n) in state.store.count_keys_by_status(expiry::now()).await? {
        let _ = writeln!(out, "keygate_keys{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP keygate_snapshot_version Version of the key data.\n\
         # TYPE keygate_snapshot_version gauge\nkeygate_snapshot_version {}",
        state.store.snapshot_version().await?
    );
    Ok((
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        out,
    )
        .into_response())
}
