//! `GET /metrics`, through `prometheus-client`: requests by route and status, their
//! latency, snapshot requests by kind, usage records ingested, subjects of lease asks,
//! webhook delivery attempts by result, audit log entries that could not be written, and
//! keys by status (counted at a scrape, at most once per `KEY_COUNT_TTL`). The text is
//! OpenMetrics, which Prometheus reads; a counter's samples keep their `_total` names.
//!
//! Every label is bounded: a route is its template (never the raw path, which holds ids
//! and which a client chooses), a method one of the standard ones or `other`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::ApiError;
use crate::store::{Store, StoreError};
use crate::{expiry, AppState};

/// How long a count of keys by status serves scrapes. Counting reads every key (a
/// million of them at scale), so a Prometheus scraping every few seconds must not repeat
/// it each time; `keygate_keys` may lag changes by this much.
pub const KEY_COUNT_TTL: Duration = Duration::from_secs(30);

/// Upper bounds of the latency histogram's buckets, in seconds: a key-service answer
/// takes a millisecond or so; a full snapshot page of many keys, or a slow database, up
/// to seconds.
const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Keys by status: (status, keys).
type KeyCounts = Vec<(String, i64)>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route: String,
    method: &'static str,
    /// `2xx`, `4xx`...: the class keeps the series few; the counter has the exact code.
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabel {
    answer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// How the snapshot route answered a filter.
#[derive(Clone, Copy, Debug)]
pub enum SnapshotAnswer {
    Full,
    Delta,
    NotModified,
}

impl SnapshotAnswer {
    const ALL: [SnapshotAnswer; 3] = [Self::Full, Self::Delta, Self::NotModified];

    fn label(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Delta => "delta",
            Self::NotModified => "not_modified",
        }
    }
}

/// What became of a reported usage record.
#[derive(Clone, Copy, Debug)]
pub enum UsageResult {
    Accepted,
    Duplicate,
    Refused,
}

impl UsageResult {
    const ALL: [UsageResult; 3] = [Self::Accepted, Self::Duplicate, Self::Refused];

    fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Refused => "refused",
        }
    }
}

/// What became of one attempt at a webhook delivery.
#[derive(Clone, Copy, Debug)]
pub enum DeliveryResult {
    Delivered,
    /// Failed, and tried again later.
    Retried,
    /// Failed, and given up (the retry window is over).
    Failed,
}

impl DeliveryResult {
    const ALL: [DeliveryResult; 3] = [Self::Delivered, Self::Retried, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retried => "retried",
            Self::Failed => "failed",
        }
    }
}

/// The answers a lease ask gets per subject.
const LEASE_ANSWERS: [&str; 2] = ["limited", "unlimited"];

/// Metrics kept in memory since the process started.
pub struct Metrics {
    /// Everything counted as it happens; the gauges read at a scrape are registered per
    /// scrape (see `render`).
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    snapshots: Family<AnswerLabel, Counter>,
    usage_records: Family<ResultLabel, Counter>,
    leases: Family<AnswerLabel, Counter>,
    webhook_deliveries: Family<ResultLabel, Counter>,
    audit_failures: Counter,
    /// The last count of keys by status and when it was taken. An async lock, held while
    /// counting, so scrapes that arrive meanwhile wait for that count instead of each
    /// starting their own.
    key_counts: tokio::sync::Mutex<Option<(Instant, KeyCounts)>>,
    /// How many times the keys were counted.
    pub key_counts_taken: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        let snapshots = Family::<AnswerLabel, Counter>::default();
        let usage_records = Family::<ResultLabel, Counter>::default();
        let leases = Family::<AnswerLabel, Counter>::default();
        // Every answer and result is shown from the start, at 0, so a rate over them
        // needs no first event.
        for answer in SnapshotAnswer::ALL {
            snapshots
                .get_or_create(&AnswerLabel {
                    answer: answer.label(),
                })
                .inc_by(0);
        }
        for result in UsageResult::ALL {
            usage_records
                .get_or_create(&ResultLabel {
                    result: result.label(),
                })
                .inc_by(0);
        }
        for answer in LEASE_ANSWERS {
            leases.get_or_create(&AnswerLabel { answer }).inc_by(0);
        }
        let webhook_deliveries = Family::<ResultLabel, Counter>::default();
        for result in DeliveryResult::ALL {
            webhook_deliveries
                .get_or_create(&ResultLabel {
                    result: result.label(),
                })
                .inc_by(0);
        }
        let audit_failures = Counter::default();
        let mut registry = Registry::default();
        registry.register(
            "keygate_http_requests",
            "Requests served, by route, method and status",
            requests.clone(),
        );
        registry.register(
            "keygate_http_request_duration_seconds",
            "Time to answer a request (until its headers), by route, method and status class",
            latency.clone(),
        );
        registry.register(
            "keygate_snapshot_requests",
            "Snapshot requests of the filters, by answer",
            snapshots.clone(),
        );
        registry.register(
            "keygate_usage_records",
            "Usage records reported by filters",
            usage_records.clone(),
        );
        registry.register(
            "keygate_lease_subjects",
            "Subjects filters asked leases on, by answer (limited or unlimited)",
            leases.clone(),
        );
        registry.register(
            "keygate_webhook_deliveries",
            "Attempts at webhook deliveries, by result (delivered, retried, failed)",
            webhook_deliveries.clone(),
        );
        registry.register(
            "keygate_audit_failures",
            "Changes made whose audit log entry could not be written (each is in the log)",
            audit_failures.clone(),
        );
        Metrics {
            registry,
            webhook_deliveries,
            audit_failures,
            requests,
            latency,
            snapshots,
            usage_records,
            leases,
            key_counts: tokio::sync::Mutex::default(),
            key_counts_taken: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one answer of the snapshot route.
    pub fn snapshot_answered(&self, answer: SnapshotAnswer) {
        self.snapshots
            .get_or_create(&AnswerLabel {
                answer: answer.label(),
            })
            .inc();
    }

    /// Counts `n` usage records that ended as `result`.
    pub fn usage_records(&self, result: UsageResult, n: u64) {
        self.usage_records
            .get_or_create(&ResultLabel {
                result: result.label(),
            })
            .inc_by(n);
    }

    /// Counts the subjects of a lease ask: `limited` of them were granted a lease, the
    /// rest had no limit.
    pub fn leases_answered(&self, limited: u64, unlimited: u64) {
        for (answer, n) in LEASE_ANSWERS.into_iter().zip([limited, unlimited]) {
            self.leases.get_or_create(&AnswerLabel { answer }).inc_by(n);
        }
    }

    /// Counts one attempt at a webhook delivery.
    pub fn webhook_delivery(&self, result: DeliveryResult) {
        self.webhook_deliveries
            .get_or_create(&ResultLabel {
                result: result.label(),
            })
            .inc();
    }

    /// Counts a change whose audit log entry could not be written.
    pub fn audit_failed(&self) {
        self.audit_failures.inc();
    }

    /// How many audit log entries could not be written since the process started.
    pub fn audit_failures(&self) -> u64 {
        self.audit_failures.get()
    }

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
        self.key_counts_taken.fetch_add(1, Ordering::Relaxed);
        *cached = Some((now, counts.clone()));
        Ok(counts)
    }
}

pub type SharedMetrics = Arc<Metrics>;

/// A method as a label: the standard ones by name, anything else (a client may send any
/// token) as `other`, so no request adds a series of its own.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Middleware: counts and times each request by its route pattern (never the raw path,
/// which would hold ids), method and status.
pub async fn count(State(metrics): State<SharedMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    metrics
        .latency
        .get_or_create(&LatencyLabels {
            route: route.clone(),
            method,
            status: status_class(status),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status,
        })
        .inc();
    response
}

/// `GET /metrics`
#[utoipa::path(
    get,
    operation_id = "metrics",
    path = "/metrics",
    tag = "service",
    responses(
        (status = 200, description = "Metrics in the OpenMetrics text format", content_type = "application/openmetrics-text"),
    ),
)]
pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let m = &state.metrics;
    // What is read at a scrape goes in a registry of its own, filled afresh each time,
    // so a status no key has any more is not shown with its old count.
    let mut scrape = Registry::default();
    let keys = Family::<StatusLabel, Gauge>::default();
    for (status, n) in m.keys_by_status(&state.store, Instant::now()).await? {
        keys.get_or_create(&StatusLabel { status }).set(n);
    }
    scrape.register(
        "keygate_keys",
        format!(
            "Keys by status, counted at most every {} s (so up to that stale)",
            KEY_COUNT_TTL.as_secs()
        ),
        keys,
    );
    let version = Gauge::<i64>::default();
    version.set(i64::try_from(state.store.snapshot_version().await?).unwrap_or(i64::MAX));
    scrape.register(
        "keygate_snapshot_version",
        "Version of the key data",
        version,
    );

    let mut out = String::new();
    encode_registry(&mut out, &m.registry)
        .and_then(|()| encode_registry(&mut out, &scrape))
        .and_then(|()| encode_eof(&mut out))
        .map_err(|e| ApiError::internal(format!("metrics could not be encoded: {e}")))?;
    Ok((
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        out,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewKey;

    #[test]
    fn labels_stay_few_and_names_keep_their_form() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let odd = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&odd), "other");
        assert_eq!((status_class(204), status_class(503)), ("2xx", "5xx"));

        let metrics = Metrics::default();
        metrics.snapshot_answered(SnapshotAnswer::Delta);
        metrics.usage_records(UsageResult::Refused, 3);
        metrics.leases_answered(2, 0);
        metrics.webhook_delivery(DeliveryResult::Retried);
        metrics.audit_failed();
        metrics
            .latency
            .get_or_create(&LatencyLabels {
                route: "/healthz".into(),
                method: "GET",
                status: "2xx",
            })
            .observe(0.002);
        let mut text = String::new();
        encode_registry(&mut text, &metrics.registry).unwrap();
        for line in [
            "# TYPE keygate_snapshot_requests counter",
            "keygate_snapshot_requests_total{answer=\"delta\"} 1",
            "keygate_snapshot_requests_total{answer=\"full\"} 0",
            "keygate_usage_records_total{result=\"refused\"} 3",
            "keygate_usage_records_total{result=\"accepted\"} 0",
            "keygate_lease_subjects_total{answer=\"limited\"} 2",
            "keygate_lease_subjects_total{answer=\"unlimited\"} 0",
            "keygate_webhook_deliveries_total{result=\"retried\"} 1",
            "keygate_webhook_deliveries_total{result=\"failed\"} 0",
            "# TYPE keygate_audit_failures counter",
            "keygate_audit_failures_total 1",
            "# TYPE keygate_http_request_duration_seconds histogram",
            "keygate_http_request_duration_seconds_bucket{le=\"0.0025\",route=\"/healthz\",method=\"GET\",status=\"2xx\"} 1",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

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
            quota_period: crate::budget::Period::Total,
            model_caps: vec![],
            rotate_by: None,
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
