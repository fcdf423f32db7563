//! The root context of one Wasm VM: reads the configuration, keeps the key snapshot fresh
//! by polling the key-service through its Envoy cluster, and hands each request's HTTP
//! context a view of the current index.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::config::Config;
use crate::http::Http;
use crate::metrics::Metrics;
use crate::snapshot::{KeyIndex, SnapshotWire};

/// The snapshot this VM answers from, and when the key-service last confirmed it.
pub struct Synced {
    pub index: KeyIndex,
    /// Unix milliseconds of the last good answer (a new snapshot or a 304).
    pub confirmed_at_ms: u64,
}

/// Shared by the root and the HTTP contexts of one VM; `None` until a snapshot has loaded.
pub type SharedIndex = Rc<RefCell<Option<Synced>>>;

pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Tick period until the first snapshot has loaded, so a fresh Envoy serves soon.
const FIRST_LOAD_RETRY: Duration = Duration::from_millis(200);
const SNAPSHOT_PATH: &str = "/filter/v1/snapshot";

#[derive(Default)]
pub struct Root {
    config: Config,
    token: Option<String>,
    index: SharedIndex,
    /// Token of the snapshot call in flight, if any; one call at a time.
    in_flight: Option<u32>,
    /// Whether the last sync failed: failures are logged when they start and end, not on
    /// every attempt.
    failing: bool,
    /// Defined in `on_configure`; shared with every HTTP context of this VM.
    metrics: Rc<Metrics>,
}

impl Root {
    fn request_snapshot(&mut self) {
        let version = self
            .index
            .borrow()
            .as_ref()
            .map(|s| s.index.version.to_string());
        let authorization = self.token.as_ref().map(|t| format!("Bearer {t}"));
        // Once a snapshot is held, ask only for what changed since its version.
        let path = match &version {
            Some(v) => format!("{SNAPSHOT_PATH}?since={v}"),
            None => SNAPSHOT_PATH.to_string(),
        };
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.config.key_service_authority.as_str()),
        ];
        if let Some(auth) = authorization.as_deref() {
            headers.push(("authorization", auth));
        }
        let etag = version.map(|v| format!("\"{v}\""));
        if let Some(etag) = etag.as_deref() {
            headers.push(("if-none-match", etag));
        }
        match self.dispatch_http_call(
            &self.config.key_service_cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(self.config.key_service_timeout_ms),
        ) {
            Ok(token) => self.in_flight = Some(token),
            Err(status) => self.sync_failed(&format!("request not sent: {status:?}")),
        }
    }

    /// Sets the snapshot gauges: after each load and confirmation, and on every tick for
    /// the age.
    fn report_snapshot(&self) {
        if let Some(s) = self.index.borrow().as_ref() {
            let age_ms = unix_ms(self.get_current_time()).saturating_sub(s.confirmed_at_ms);
            self.metrics
                .snapshot(s.index.version, s.index.len(), age_ms / 1000);
        }
    }

    fn sync_failed(&mut self, why: &str) {
        self.metrics.sync_failed();
        if !self.failing {
            warn!("snapshot sync failing, serving the last good snapshot: {why}");
            self.failing = true;
        }
    }

    fn sync_succeeded(&mut self) {
        if self.failing {
            info!("snapshot sync recovered");
            self.failing = false;
        }
    }

    /// The key-service confirmed that the snapshot held is current (304).
    fn confirm(&mut self) {
        let now = unix_ms(self.get_current_time());
        if let Some(synced) = self.index.borrow_mut().as_mut() {
            synced.confirmed_at_ms = now;
        }
        self.report_snapshot();
        self.sync_succeeded();
    }

    fn load(&mut self, body: &[u8]) {
        let wire: SnapshotWire = match serde_json::from_slice(body) {
            Ok(wire) => wire,
            Err(e) => return self.sync_failed(&format!("snapshot body is not valid: {e}")),
        };
        let now = unix_ms(self.get_current_time());
        let first = self.index.borrow().is_none();
        let (skipped, version, keys) = {
            let mut held = self.index.borrow_mut();
            match (wire.delta, held.as_mut()) {
                // A delta applies to the snapshot held.
                (true, Some(synced)) => {
                    let skipped = synced.index.apply(wire);
                    synced.confirmed_at_ms = now;
                    (skipped, synced.index.version, synced.index.len())
                }
                (true, None) => {
                    drop(held);
                    return self.sync_failed("key-service sent a delta before any snapshot");
                }
                // A full snapshot replaces it.
                (false, _) => {
                    let loaded = KeyIndex::from_wire(wire);
                    let (version, keys) = (loaded.index.version, loaded.index.len());
                    *held = Some(Synced {
                        index: loaded.index,
                        confirmed_at_ms: now,
                    });
                    (loaded.skipped, version, keys)
                }
            }
        };
        if skipped > 0 {
            warn!("{skipped} snapshot records had a bad hash and were skipped");
        }
        info!("snapshot version {version} loaded, {keys} keys");
        self.report_snapshot();
        self.sync_succeeded();
        if first {
            self.set_tick_period(Duration::from_millis(self.config.sync_interval_ms));
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        let status = self.get_http_call_response_header(":status");
        match status.as_deref() {
            Some("200") => match self.get_http_call_response_body(0, body_size) {
                Some(body) => self.load(&body),
                None => self.sync_failed("snapshot response had no body"),
            },
            Some("304") => self.confirm(),
            Some(other) => self.sync_failed(&format!("key-service answered {other}")),
            None => self.sync_failed("request failed or timed out"),
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = self.get_plugin_configuration();
        match Config::parse(raw.as_deref()) {
            Ok(config) => self.config = config,
            Err(e) => {
                error!("{e}");
                return false;
            }
        }
        self.token = self.config.token(|name| std::env::var(name).ok());
        if self.token.is_none() {
            warn!(
                "no filter token: neither key_service_token nor the environment variable {} \
                 is set; the key-service will refuse the snapshot",
                self.config.token_env
            );
        }
        self.metrics = Rc::new(Metrics::define());
        self.set_tick_period(FIRST_LOAD_RETRY);
        true
    }

    fn on_tick(&mut self) {
        if self.in_flight.is_none() {
            self.request_snapshot();
        }
        if let Some(s) = self.index.borrow().as_ref() {
            let age_ms = unix_ms(self.get_current_time()).saturating_sub(s.confirmed_at_ms);
            self.metrics
                .snapshot(s.index.version, s.index.len(), age_ms / 1000);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let metrics = Rc::clone(&self.metrics);
        Some(Box::new(Http::new(
            Rc::clone(&self.index),
            &self.config,
            metrics,
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
