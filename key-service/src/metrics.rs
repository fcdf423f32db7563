//! `GET /metrics` in Prometheus' text format: requests by route and status, snapshot
//! requests by kind, usage records ingested, and keys by status (counted at a scrape, at
//! most once per `KEY_COUNT_TTL`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::store::{Store, StoreError};
use crate::{expiry, AppState};

/// How long a count of keys by status serves scrapes. Counting reads every key (a
/// million of them at scale), so a Prometheus scraping every few seconds must not repeat
/// it each time; `keygate_keys` may lag changes by this much.
pub const KEY_COUNT_TTL: Duration = Duration::from_secs(30);

/// Keys by status: (status, keys).
type KeyCounts = Vec<(String, i64)>;

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
    /// The last count of keys by status and when it was taken. An async lock, held while
    /// counting, so scrapes that arrive meanwhile wait for that count instead of each
    /// starting their own.
    key_counts: tokio::sync::Mutex<Option<(Instant, KeyCounts)>>,
    /// How many times the keys were counted.
    pub key_counts_taken: AtomicU64,
}

impl Metrics {
    /// Keys by status as of at most `KEY_COUNT_TTL` before `now`: counted from the
    /// store only when the last count is older (or there is none).
    pub async fn keys_by_status(
        &self,
        store: &Store,
        now: Instant,
    ) -> Result<KeyCounts, StoreError> {
        let mut cached = self.key_counts.lock().await;
        if let Some((at, counts)) = cached.as_ref() {
            if now.saturating_duration_since(*at) < KEY_COUNT_TTL {
                return Ok(counts.clone());
            }
        }
        let counts = store.count_keys_by_status(expiry::now()).await?;
        add(&self.key_counts_taken, 1);
        *cached = Some((now, counts.clone()));
        Ok(counts)
    }
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
        "# HELP keygate_keys Keys by status, counted at most every {} s (so up to that stale).\n\
         # TYPE keygate_keys gauge",
        KEY_COUNT_TTL.as_secs()
    );
    for (status, n) in m.keys_by_status(&state.store, Instant::now()).await? {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewKey;

    #[tokio::test]
    async fn scrapes_within_the_window_count_the_keys_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        let key = |id: &str| NewKey {
            id: id.into(),
            name: id.into(),
            key_hash: format!("{id:0>64}"),
            masked_key: "sk-...".into(),
            account: "default".into(),
            group: "default".into(),
            expires_at: None,
            unlimited_quota: true,
            quota: 0,
            models: vec![],
            ip_allowlist: vec![],
            rpm: None,
            tpm: None,
            max_parallel: None,
        };
        store.insert_keys(&[key("a")], 0).await.unwrap();
        let metrics = Metrics::default();
        let start = Instant::now();
        let first = metrics.keys_by_status(&store, start).await.unwrap();
        assert_eq!(first, [("active".to_string(), 1)]);

        // A key created within the window is not counted yet: the scrape cost nothing.
        store.insert_keys(&[key("b")], 0).await.unwrap();
        let within = start + KEY_COUNT_TTL - Duration::from_millis(1);
        assert_eq!(metrics.keys_by_status(&store, within).await.unwrap(), first);
        assert_eq!(metrics.key_counts_taken.load(Ordering::Relaxed), 1);

        let after = start + KEY_COUNT_TTL;
        let second = metrics.keys_by_status(&store, after).await.unwrap();
        assert_eq!(second, [("active".to_string(), 2)]);
        assert_eq!(metrics.key_counts_taken.load(Ordering::Relaxed), 2);
    }
}
