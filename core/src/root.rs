//! The background work of one VM (one worker's filter state in the native build): it keeps
//! the VM's view of the shared snapshot (meta and tables, see `sync`) fresh on a tick; the
//! one VM holding the lease also polls the key-service through the proxy's cluster and
//! writes what it answers into shared data, and asks for credit leases; every VM reports
//! its own usage records.
//!
//! `Root` is the policy; the proxy is a `RootHost`: the Wasm filter's root context drives
//! it from proxy-wasm's ticks and HTTP calls, the native module from Envoy's dynamic-module
//! scheduler and callouts. Answers come back through `Root::answered`.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use log::{info, warn};

use crate::config::Config;
use crate::kv::{HostError, SharedData};
use crate::limits::credit::{self, Book, Item};
use crate::limits::ledger;
use crate::stats::{Metrics, StatSink};
use crate::sync::leader::{self, Ask, Leader, SyncError};
use crate::sync::snapshot::{PageHead, SnapshotWire};
use crate::sync::view::{self, SharedView, View};
use crate::usage::report::{Answer, Charge, Record, SharedOutbox};

/// What the root needs of the proxy beside shared data: the clock, calls to the
/// key-service through a cluster, its own tick period, the requests it holds, and stats.
pub trait RootHost: SharedData {
    type Stats: StatSink;

    fn now_ms(&self) -> Result<u64, HostError>;
    /// Sends a request through `cluster`; its answer comes to `Root::answered` with the
    /// returned token.
    fn call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// The next tick comes after `period`, and then every `period`.
    fn set_tick_period(&mut self, period: Duration) -> Result<(), HostError>;
    /// Lets requests that wait for a credit lease wake this root (its leader calls
    /// `Root::credit_demand` then). `taken_over`: this root has just begun to lead.
    fn listen_for_credit_demand(&mut self, taken_over: bool);
    /// Whether requests wait for this VM's first snapshot or for a credit lease.
    fn holding(&self) -> bool;
    /// Decides the held requests that are due (`loaded`: the VM has a snapshot).
    fn release_held(&mut self, loaded: bool);
    /// The view was just refreshed from shared data.
    fn view_refreshed(&mut self) {}
    fn metrics(&self) -> &Metrics<Self::Stats>;
}

/// An answer to a call: its HTTP status (`None`: the call failed or timed out) and body.
pub struct Reply {
    pub status: Option<u16>,
    pub body: Vec<u8>,
}

/// Tick period while requests are held: how soon a held request is decided once its
/// snapshot or lease has come.
pub const HOLD_TICK: Duration = Duration::from_millis(5);

/// Tick period until the first snapshot is in, so a fresh Envoy serves soon.
const FIRST_LOAD_TICK: Duration = Duration::from_millis(200);

/// Tick period while a page of a full load waits to be written: the next tick writes it,
/// once Envoy has sent the request for the page after it.
const WRITE_SOON: Duration = Duration::from_millis(1);

const NOT_JSON: SyncError = SyncError::Protocol("snapshot body is not valid JSON");

/// How soon usage recorded by this VM goes to the key-service while traffic flows: what a
/// crash of Envoy can lose at most (the records of about this long).
const USAGE_FLUSH: Duration = Duration::from_millis(100);

/// A tick this close to when its regular work is due does that work.
const TICK_SLACK_MS: u64 = 5;

/// An ask for credit leases in flight.
struct CreditAsk {
    token: u32,
    items: Vec<Item>,
    sent_ms: u64,
}

pub struct Root<H: RootHost> {
    host: H,
    config: Config,
    token: Option<String>,
    /// This VM's name in the lease: random, so VMs of one Envoy never share one.
    me: u64,
    view: SharedView,
    /// Whether this VM held the lease at its last tick.
    leading: bool,
    leader: Leader,
    /// Token of the snapshot call in flight, if any; one call at a time.
    in_flight: Option<u32>,
    /// When the call in flight was sent, if it waits at the key-service for a change.
    waiting_since_ms: Option<u64>,
    /// A page of a full load, received (with the time it came) and not read and written
    /// yet: the next page is asked for first, so that the key-service prepares it
    /// meanwhile.
    unwritten: Option<(Vec<u8>, u64)>,
    /// Whether the last sync failed: failures are logged when they start and end, not on
    /// every attempt.
    failing: bool,
    /// Whether the tick runs at the configured interval yet (after the first load).
    steady: bool,
    /// The tick period last set.
    period: Duration,
    /// When the regular work of a tick (lease, sync, usage reports, stats) is next due:
    /// ticks come every millisecond or so while a full load's pages are written.
    regular_due_ms: u64,
    outbox: SharedOutbox,
    /// Token of the usage report in flight, if any.
    report_in_flight: Option<u32>,
    /// Whether the last usage report failed (logged when that starts and ends).
    reports_failing: bool,
    /// The leader's credit leases: what it saw, and its ask in flight (one at a time).
    credit: Book,
    credit_ask: Option<CreditAsk>,
    /// Whether the last ask for leases failed (logged when that starts and ends).
    credit_failing: bool,
}

/// A random VM name, never 0 (the free lease's owner). The standard library seeds
/// `RandomState` from WASI's `random_get`, which Envoy provides.
fn random_vm_name() -> u64 {
    RandomState::new()
        .hash_one(0x006b_6579_6761_7465_u64)
        .max(1)
}

impl<H: RootHost> Root<H> {
    /// The root of a VM whose requests share `view` and `outbox`. `token` is the filter's
    /// token for the key-service, if it has one.
    pub fn new(
        host: H,
        config: Config,
        token: Option<String>,
        view: SharedView,
        outbox: SharedOutbox,
    ) -> Root<H> {
        let leader = Leader::new(config.snapshot_page_size);
        let mut root = Root {
            host,
            config,
            token,
            me: random_vm_name(),
            view,
            leading: false,
            leader,
            in_flight: None,
            waiting_since_ms: None,
            unwritten: None,
            failing: false,
            steady: false,
            period: Duration::ZERO,
            regular_due_ms: 0,
            outbox,
            report_in_flight: None,
            reports_failing: false,
            credit: Book::default(),
            credit_ask: None,
            credit_failing: false,
        };
        root.tick_every(FIRST_LOAD_TICK);
        root
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    /// How long a lease lasts without renewal: a leader that stops ticking (its VM died)
    /// is replaced after this.
    fn lease_ttl_ms(&self) -> u64 {
        3 * self.config.sync_interval_ms + self.config.key_service_timeout_ms
    }

    fn refresh_view(&mut self) {
        let held = self.view.borrow_mut().take();
        match View::refresh(&self.host, held) {
            Ok(view) => *self.view.borrow_mut() = view,
            Err(e) => warn!("shared data unreadable: {e:?}"),
        }
        if let Some(view) = self.view.borrow().as_ref() {
            let now = self.host.now_ms().unwrap_or(0);
            self.host.metrics().snapshot(&view.meta, now);
        }
        self.host.view_refreshed();
    }

    /// Asks the key-service for what the leader needs next.
    fn ask(&mut self) {
        match self.leader.next_ask(&self.host) {
            Ok(ask) => self.send(&ask),
            Err(e) => self.sync_failed(&describe(&e)),
        }
    }

    fn send(&mut self, ask: &Ask) {
        // An up-to-date leader waits at the key-service for the next change.
        let wait = match ask.if_none_match {
            Some(_) => self.config.sync_wait(),
            None => 0,
        };
        let path = match wait {
            0 => format!("{}?{}", self.config.snapshot_path, ask.query),
            _ => format!("{}?{}&wait={wait}", self.config.snapshot_path, ask.query),
        };
        let authorization = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.config.key_service_authority.as_str()),
        ];
        if let Some(auth) = authorization.as_deref() {
            headers.push(("authorization", auth));
        }
        if let Some(etag) = ask.if_none_match.as_deref() {
            headers.push(("if-none-match", etag));
        }
        match self.host.call(
            &self.config.key_service_cluster,
            &headers,
            None,
            Duration::from_millis(wait.saturating_add(self.config.key_service_timeout_ms)),
        ) {
            Ok(token) => {
                self.in_flight = Some(token);
                self.waiting_since_ms = (wait > 0).then(|| self.host.now_ms().unwrap_or(0));
            }
            Err(status) => self.sync_failed(&format!("request not sent: {status:?}")),
        }
    }

    /// After an answer (a change, the last page of a full load, or the end of a wait),
    /// waits for the next change at once, so it too reaches this Envoy as soon as it
    /// commits. Not after a failure (the tick polls again), nor after a 304 that came long
    /// before its wait was over: that key-service does not wait (an older one), and asking
    /// again at once would spin.
    fn wait_again(&mut self, sent_ms: Option<u64>, not_modified: bool, now_ms: u64) {
        let wait = self.config.sync_wait();
        if wait == 0
            || !self.leading
            || self.failing
            || self.in_flight.is_some()
            || self.leader.is_loading()
        {
            return;
        }
        let waited = sent_ms.map_or(0, |sent| now_ms.saturating_sub(sent));
        if not_modified && waited < wait / 2 {
            return;
        }
        self.ask();
    }

    fn sync_failed(&mut self, why: &str) {
        self.host.metrics().sync_failed();
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

    fn handle(&mut self, result: Result<bool, SyncError>) {
        match result {
            Ok(more) => {
                self.sync_succeeded();
                self.refresh_view();
                // (A full load may have asked for its next page already.)
                if more && self.in_flight.is_none() {
                    self.ask();
                }
            }
            Err(SyncError::LostRace) => {
                info!("another VM wrote the snapshot meta; this one stops syncing");
                self.leader.stop();
                self.leading = false;
                self.in_flight = None;
            }
            Err(e) => {
                // A load that failed half-way starts over, with a new epoch; the answer
                // to a page asked for early is ignored.
                self.leader.stop();
                self.in_flight = None;
                self.sync_failed(&describe(&e));
            }
        }
    }

    /// An answer to the snapshot call: a page of a full load is read and written at the
    /// next tick, after the page that follows it has been asked for (only its head is read
    /// now, for the cursor); anything else at once.
    fn received(&mut self, body: Vec<u8>, now_ms: u64) {
        let head = match serde_json::from_slice::<PageHead>(&body) {
            Ok(head) => head,
            Err(_) => return self.handle(Err(NOT_JSON)),
        };
        if let Some(ask) = self.leader.prefetch(&head) {
            self.send(&ask);
            self.unwritten = Some((body, now_ms));
            self.tick_every(WRITE_SOON);
            return;
        }
        let result = self.apply(&body, now_ms);
        self.handle(result);
    }

    /// Reads and writes the page received earlier, if any.
    fn write_unwritten(&mut self) {
        if let Some((body, now_ms)) = self.unwritten.take() {
            let result = self.apply(&body, now_ms);
            self.handle(result);
        }
    }

    /// The first load's tick period, then the configured interval.
    fn regular_period(&self) -> Duration {
        if self.steady {
            Duration::from_millis(self.config.sync_interval_ms)
        } else {
            FIRST_LOAD_TICK
        }
    }

    /// Decides the held requests that are due: those waiting for the first snapshot once
    /// this VM has one or their wait is over (they then get what a request without a
    /// snapshot gets: 503), those waiting for a credit lease once it is answered.
    fn release_held(&mut self) {
        if self.host.holding() {
            let loaded = self.view.borrow().is_some();
            self.host.release_held(loaded);
        }
    }

    /// Until the regular work is due, or sooner while usage records wait.
    fn next_period(&self, now_ms: u64) -> Duration {
        let mut period = Duration::from_millis(self.regular_due_ms.saturating_sub(now_ms).max(1));
        if !self.outbox.borrow().is_empty() {
            period = period.min(USAGE_FLUSH);
        }
        if self.host.holding() {
            period = period.min(HOLD_TICK);
        }
        period
    }

    fn tick_regularly(&mut self) {
        self.tick_every(self.regular_period());
    }

    fn tick_every(&mut self, period: Duration) {
        if self.period != period {
            match self.host.set_tick_period(period) {
                Ok(()) => self.period = period,
                // The old period goes on; the next tick tries again.
                Err(e) => warn!("cannot set the tick period: {e:?}"),
            }
        }
    }

    /// The leader lets requests waiting for a lease wake it (`taken_over`: it has just
    /// begun to lead).
    fn listen_for_credit_demand(&mut self, taken_over: bool) {
        if self.config.credit_lease_ttl_ms > 0 {
            self.host.listen_for_credit_demand(taken_over);
        }
    }

    /// The leader asks for the credit leases due (requests wait for them, or they run
    /// low or old), one ask at a time.
    fn ask_credit(&mut self, now_ms: u64) {
        let ttl = self.config.credit_lease_ttl_ms;
        if ttl == 0 || !self.leading || self.credit_ask.is_some() {
            return;
        }
        let items = match self.credit.due(&self.host, now_ms, ttl) {
            Ok(items) if items.is_empty() => return,
            Ok(items) => items,
            Err(e) => return warn!("credit ledgers unreadable: {e:?}"),
        };
        if credit::holder(&self.host).is_none() {
            info!("credit leases: this Envoy asks the key-service for leases of its limited keys");
        }
        let sent = credit::ensure_holder(&self.host, random_vm_name())
            .map_err(|e| format!("{e:?}"))
            .and_then(|holder| {
                let body = credit::ask_body(&holder, ttl, &items);
                let authorization = self.token.as_ref().map(|t| format!("Bearer {t}"));
                let mut headers = vec![
                    (":method", "POST"),
                    (":path", self.config.credit_lease_path.as_str()),
                    (":authority", self.config.key_service_authority.as_str()),
                    ("content-type", "application/json"),
                ];
                if let Some(auth) = authorization.as_deref() {
                    headers.push(("authorization", auth));
                }
                self.host
                    .call(
                        &self.config.key_service_cluster,
                        &headers,
                        Some(&body),
                        Duration::from_millis(self.config.key_service_timeout_ms),
                    )
                    .map_err(|status| format!("not sent: {status:?}"))
            });
        match sent {
            Ok(token) => {
                self.credit_ask = Some(CreditAsk {
                    token,
                    items,
                    sent_ms: now_ms,
                });
            }
            Err(why) => self.credit_answered(&items, None, now_ms, &why),
        }
    }

    fn credit_reply(&mut self, ask: CreditAsk, reply: &Reply) {
        let answer = match reply.status {
            Some(200) => serde_json::from_slice::<credit::AnswerWire>(&reply.body)
                .map_err(|_| "the answer is not a lease answer".to_string()),
            Some(404) => Err(
                "the key-service has no lease intake (404): upgrade it, or set \
                 credit_lease_ttl_ms to 0"
                    .to_string(),
            ),
            Some(other) => Err(format!("key-service answered {other}")),
            None => Err("request failed or timed out".to_string()),
        };
        match answer {
            Ok(answer) => self.credit_answered(&ask.items, Some(&answer), ask.sent_ms, ""),
            Err(why) => self.credit_answered(&ask.items, None, ask.sent_ms, &why),
        }
        // Requests that began to wait while this ask was out: ask for them now.
        if let Ok(now) = self.host.now_ms() {
            self.ask_credit(now);
        }
    }

    /// Writes an answer (or a failure: `None`, with why) into the ledgers asked for.
    fn credit_answered(
        &mut self,
        items: &[Item],
        answer: Option<&credit::AnswerWire>,
        sent_ms: u64,
        why: &str,
    ) {
        let ttl = self.config.credit_lease_ttl_ms;
        if let Err(e) = self
            .credit
            .answered(&self.host, items, answer, sent_ms, ttl)
        {
            warn!("credit ledgers unwritable: {e:?}");
        }
        self.host.metrics().credit_asked(answer.is_some());
        match (answer.is_some(), self.credit_failing) {
            (false, false) => {
                warn!("asking for credit leases failed; requests that need one get 503: {why}");
                self.credit_failing = true;
            }
            (true, true) => {
                info!("credit leases granted again");
                self.credit_failing = false;
            }
            _ => {}
        }
    }

    fn apply(&mut self, body: &[u8], now_ms: u64) -> Result<bool, SyncError> {
        let wire: SnapshotWire = serde_json::from_slice(body).map_err(|_| NOT_JSON)?;
        let loading = self.leader.is_loading();
        let applied = self.leader.apply(&self.host, wire, now_ms)?;
        if applied.skipped > 0 {
            self.host
                .metrics()
                .snapshot_records_skipped(applied.skipped as u64);
            warn!(
                "{} snapshot records could not be read or had a bad hash or size and were skipped",
                applied.skipped
            );
        }
        if loading && !self.leader.is_loading() {
            let (meta, _) = view::read_meta(&self.host)?;
            info!(
                "snapshot version {} loaded into shared data, {} keys",
                meta.version, meta.keys
            );
        }
        Ok(applied.more)
    }
}

impl<H: RootHost> Root<H> {
    /// Sends the next usage report if one is due (this VM's own records; every VM reports
    /// what its requests used).
    fn report_usage(&mut self, now_ms: u64) {
        let dropped = self.outbox.borrow_mut().take_dropped();
        if dropped > 0 {
            self.host.metrics().usage_dropped(dropped);
            warn!("{dropped} usage records dropped: the outbox is full (usage_queue_max)");
            let lost = self.outbox.borrow_mut().take_lost();
            lose(&self.host, lost.iter());
        }
        if self.report_in_flight.is_some() {
            return;
        }
        let holder = credit::holder(&self.host);
        let next = self
            .outbox
            .borrow_mut()
            .next_report_from(now_ms, holder.as_deref());
        let Some(body) = next else {
            return;
        };
        let authorization = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            (":method", "POST"),
            (":path", self.config.usage_path.as_str()),
            (":authority", self.config.key_service_authority.as_str()),
            ("content-type", "application/json"),
        ];
        if let Some(auth) = authorization.as_deref() {
            headers.push(("authorization", auth));
        }
        match self.host.call(
            &self.config.key_service_cluster,
            &headers,
            Some(&body),
            Duration::from_millis(self.config.key_service_timeout_ms),
        ) {
            Ok(token) => self.report_in_flight = Some(token),
            Err(status) => self.report_failed(now_ms, &format!("not sent: {status:?}")),
        }
    }

    fn usage_reported(&mut self, reply: &Reply) {
        self.report_in_flight = None;
        let now_ms = self.host.now_ms().unwrap_or(0);
        match reply.status {
            Some(200) => {
                let records = self.outbox.borrow_mut().delivered();
                let answer = Answer::parse(&reply.body);
                // Each record is taken or refused alone: only the refused ones go.
                let (taken, refused) = answer.sort(records);
                self.host.metrics().usage_delivered(taken.len() as u64);
                if !refused.is_empty() {
                    self.host.metrics().usage_refused(refused.len() as u64);
                    lose(&self.host, refused.iter().filter_map(|r| r.charge.as_ref()));
                    warn!("the key-service refused {} usage records", refused.len());
                }
                self.landed(&taken, answer.version);
                if self.reports_failing {
                    info!("usage reports delivered again");
                    self.reports_failing = false;
                }
                // More waiting: send the next batch now rather than on the next tick.
                self.report_usage(now_ms);
            }
            // The key-service refused the records themselves: sending them again cannot
            // help, and they would block every later record.
            Some(400) => {
                let records = self.outbox.borrow_mut().delivered();
                let n = records.len();
                self.host.metrics().usage_dropped(n as u64);
                lose(&self.host, records.iter().filter_map(|r| r.charge.as_ref()));
                warn!("the key-service refused a usage report of {n} records as invalid");
                self.report_usage(now_ms);
            }
            Some(other) => self.report_failed(now_ms, &format!("key-service answered {other}")),
            None => self.report_failed(now_ms, "request failed or timed out"),
        }
    }

    /// The key-service took these records: their costs stop counting as unreported and
    /// count until the snapshot reaches the version it answered with.
    fn landed(&self, records: &[Record], version: Option<u64>) {
        if records.iter().all(|r| r.charge.is_none()) {
            return;
        }
        let snapshot_version = self.view.borrow().as_ref().map_or(0, |v| v.meta.version);
        // Without a version (a key-service older than this filter), the costs count until
        // the snapshot moves on once.
        let at_version = version.unwrap_or(snapshot_version + 1);
        for charge in records.iter().filter_map(|r| r.charge.as_ref()) {
            for (name, amount) in charge.ledgers() {
                let _ = ledger::landed(&self.host, name, amount, at_version, snapshot_version);
            }
        }
    }

    fn report_failed(&mut self, now_ms: u64, why: &str) {
        self.outbox.borrow_mut().failed(now_ms);
        self.host.metrics().usage_report_failed();
        if !self.reports_failing {
            warn!(
                "usage report failed, {} records held for retry: {why}",
                self.outbox.borrow().len()
            );
            self.reports_failing = true;
        }
    }
}

/// Usage that will never be billed stops counting in its ledgers.
fn lose<'a>(shared: &impl SharedData, charges: impl Iterator<Item = &'a Charge>) {
    for charge in charges {
        for (name, amount) in charge.ledgers() {
            let _ = ledger::lost(shared, name, amount);
        }
    }
}

fn describe(e: &SyncError) -> String {
    match e {
        SyncError::Host(status) => format!("shared data refused a call: {status:?}"),
        SyncError::Protocol(why) => (*why).to_string(),
        SyncError::LostRace => "another VM took over".to_string(),
    }
}

impl<H: RootHost> Root<H> {
    /// This root made again from its host, configuration and shares, as if new but under
    /// the same name, so it keeps the sync lease it held: for a host that caught a panic
    /// in its work (the root may be half-changed, waiting for an answer forever). Answers
    /// to its calls so far are ignored by the new one (its host forgets them).
    pub fn start_over(self) -> Root<H> {
        let me = self.me;
        let mut root = Root::new(self.host, self.config, self.token, self.view, self.outbox);
        root.me = me;
        root
    }

    /// The answer to the call that `call` returned `token` for.
    pub fn answered(&mut self, token: u32, reply: Reply) {
        if self.report_in_flight == Some(token) {
            return self.usage_reported(&reply);
        }
        if let Some(ask) = self.credit_ask.take_if(|ask| ask.token == token) {
            return self.credit_reply(ask, &reply);
        }
        if self.in_flight != Some(token) {
            return;
        }
        // The page before this one is written first (if the tick has not come yet).
        self.write_unwritten();
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        let waited = self.waiting_since_ms.take();
        if !self.leading {
            return;
        }
        let now_ms = match self.host.now_ms() {
            Ok(now) => now,
            Err(e) => return self.sync_failed(&format!("no clock: {e:?}")),
        };
        let result = match reply.status {
            Some(200) => {
                self.received(reply.body, now_ms);
                return self.wait_again(waited, false, now_ms);
            }
            Some(304) => self.leader.confirmed(&self.host, now_ms).map(|()| false),
            Some(other) => return self.sync_failed(&format!("key-service answered {other}")),
            None => return self.sync_failed("request failed or timed out"),
        };
        self.handle(result);
        self.wait_again(waited, true, now_ms);
    }

    /// The tick: writes a page waiting, sends usage, asks for leases; when due, renews or
    /// takes the lease, syncs, refreshes the view and flushes the stats; decides held
    /// requests; sets the next tick.
    pub fn tick(&mut self) {
        self.write_unwritten();
        let Ok(now) = self.host.now_ms() else {
            return self.tick_regularly();
        };
        // Usage goes out on every tick, and ticks come every `USAGE_FLUSH` while records
        // wait, so a crash loses little of it.
        self.report_usage(now);
        self.ask_credit(now);
        // A tick that came early (to write a page, for usage or leases) does the rest only
        // when it is due, so the lease is renewed during a long load too.
        if now.saturating_add(TICK_SLACK_MS) < self.regular_due_ms {
            self.release_held();
            return self.tick_every(self.next_period(now));
        }
        let period = u64::try_from(self.regular_period().as_millis()).unwrap_or(u64::MAX);
        self.regular_due_ms = now.saturating_add(period);
        self.host.metrics().flush();
        match leader::try_lead(&self.host, self.me, now, self.lease_ttl_ms()) {
            Ok(true) => {
                let taken_over = !self.leading;
                if taken_over {
                    info!("this VM now syncs the key snapshot for this Envoy");
                    self.leading = true;
                }
                self.listen_for_credit_demand(taken_over);
                if self.in_flight.is_none() {
                    self.ask();
                }
            }
            Ok(false) => {
                if self.leading {
                    info!("another VM now syncs the key snapshot");
                    self.leader.stop();
                    self.leading = false;
                }
            }
            Err(e) => self.sync_failed(&format!("lease unreadable: {e:?}")),
        }
        self.refresh_view();
        self.steady |= self.view.borrow().is_some();
        self.release_held();
        self.tick_every(self.next_period(now));
    }

    /// A request waits for a credit lease: ask now rather than on the next tick.
    pub fn credit_demand(&mut self) {
        if let Ok(now) = self.host.now_ms() {
            self.ask_credit(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use super::*;
    use crate::kv::testing::MemShared;
    use crate::sync::snapshot::KeyRecord;
    use crate::usage::report::{Outbox, UsageWire};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// Counts what it is told, by name.
    #[derive(Default)]
    struct Tally(RefCell<Vec<(String, u64)>>);

    impl StatSink for Rc<Tally> {
        fn define(&self, _kind: crate::stats::MetricKind, name: &str) -> Result<u32, HostError> {
            let mut names = self.0.borrow_mut();
            names.push((name.to_string(), 0));
            Ok(names.len() as u32 - 1)
        }
        fn add(&self, id: u32, n: u64) {
            self.0.borrow_mut()[id as usize].1 += n;
        }
        fn set(&self, id: u32, value: u64) {
            self.0.borrow_mut()[id as usize].1 = value;
        }
    }

    impl Tally {
        fn get(&self, name: &str) -> u64 {
            let names = self.0.borrow();
            names.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
        }
    }

    /// Calls made: token, path, body.
    type Calls = Rc<RefCell<Vec<(u32, String, Option<Vec<u8>>)>>>;

    /// A proxy in memory: its calls are kept for the test to answer.
    struct Fake {
        shared: MemShared,
        now: Rc<Cell<u64>>,
        calls: Calls,
        period: Rc<Cell<Duration>>,
        metrics: Metrics<Rc<Tally>>,
    }

    impl SharedData for Fake {
        fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
            self.shared.get(name)
        }
        fn set(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<bool, HostError> {
            self.shared.set(name, value, cas)
        }
    }

    impl RootHost for Fake {
        type Stats = Rc<Tally>;
        fn now_ms(&self) -> Result<u64, HostError> {
            Ok(self.now.get())
        }
        fn call(
            &mut self,
            _cluster: &str,
            headers: &[(&str, &str)],
            body: Option<&[u8]>,
            _timeout: Duration,
        ) -> Result<u32, HostError> {
            let path = headers.iter().find(|(n, _)| *n == ":path").map(|(_, v)| v);
            let mut calls = self.calls.borrow_mut();
            let token = calls.len() as u32 + 1;
            calls.push((
                token,
                path.unwrap_or(&"").to_string(),
                body.map(<[u8]>::to_vec),
            ));
            Ok(token)
        }
        fn set_tick_period(&mut self, period: Duration) -> Result<(), HostError> {
            self.period.set(period);
            Ok(())
        }
        fn listen_for_credit_demand(&mut self, _taken_over: bool) {}
        fn holding(&self) -> bool {
            false
        }
        fn release_held(&mut self, _loaded: bool) {}
        fn metrics(&self) -> &Metrics<Rc<Tally>> {
            &self.metrics
        }
    }

    struct Setup {
        root: Root<Fake>,
        now: Rc<Cell<u64>>,
        calls: Calls,
        period: Rc<Cell<Duration>>,
        stats: Rc<Tally>,
        view: SharedView,
        outbox: SharedOutbox,
    }

    fn setup() -> Setup {
        let (now, calls, period) = (Rc::default(), Rc::default(), Rc::default());
        let stats = Rc::new(Tally::default());
        let fake = Fake {
            shared: MemShared::default(),
            now: Rc::clone(&now),
            calls: Rc::clone(&calls),
            period: Rc::clone(&period),
            metrics: Metrics::define(Rc::clone(&stats)),
        };
        let view = SharedView::default();
        let outbox: SharedOutbox = Rc::new(RefCell::new(Outbox::new(10, 10)));
        let config = Config::default();
        let root = Root::new(
            fake,
            config,
            Some("t".into()),
            Rc::clone(&view),
            Rc::clone(&outbox),
        );
        Setup {
            root,
            now,
            calls,
            period,
            stats,
            view,
            outbox,
        }
    }

    fn last_call(s: &Setup) -> (u32, String, Option<Vec<u8>>) {
        s.calls.borrow().last().cloned().expect("a call")
    }

    fn usage(id: &str) -> crate::usage::report::Record {
        crate::usage::report::Record {
            usage: UsageWire {
                request_id: id.into(),
                key_id: "k".into(),
                model: None,
                input_tokens: 1,
                cached_input_tokens: 0,
                output_tokens: 2,
                cache_write_tokens: 0,
                status: Some(200),
                ts: Some(1),
                estimated: false,
            },
            charge: None,
        }
    }

    #[test]
    fn a_root_loads_the_snapshot_reports_usage_and_survives_a_failed_call() {
        let mut s = setup();
        assert_eq!(s.period.get(), FIRST_LOAD_TICK);
        // The first tick makes a free lease; the next takes it and asks for a full load.
        s.now.set(1_000);
        s.root.tick();
        s.now.set(1_300);
        s.root.tick();
        let (token, path, _) = last_call(&s);
        assert!(path.starts_with("/filter/v1/snapshot?"), "{path}");
        assert!(s.view.borrow().is_none());

        // A call that fails is counted, and the next tick asks again.
        s.root.answered(
            token,
            Reply {
                status: None,
                body: Vec::new(),
            },
        );
        assert_eq!(s.stats.get("keygate.sync_failures"), 1);
        s.now.set(1_600);
        s.root.tick();
        let (token, path, _) = last_call(&s);
        assert!(path.starts_with("/filter/v1/snapshot?"), "{path}");

        // One page with one key: the view has it, and the tick slows to the interval.
        let page = SnapshotWire {
            version: 7,
            keys: vec![KeyRecord::plain("id-a", "a", "sk-a")].into(),
            ..Default::default()
        };
        let body = serde_json::to_vec(&page).unwrap();
        s.root.answered(
            token,
            Reply {
                status: Some(200),
                body,
            },
        );
        let loaded = s
            .view
            .borrow()
            .as_ref()
            .map(|v| (v.meta.version, v.meta.keys));
        assert_eq!(loaded, Some((7, 1)));
        s.now.set(1_900);
        s.root.tick();
        assert_eq!(s.stats.get("keygate.snapshot_version"), 7);

        // A usage record goes out on the next tick; once taken, it leaves the outbox.
        s.outbox.borrow_mut().push(usage("r-1"));
        s.now.set(2_000);
        s.root.tick();
        let (token, path, body) = s
            .calls
            .borrow()
            .iter()
            .rev()
            .find(|(_, p, _)| p == "/filter/v1/usage")
            .cloned()
            .expect("a usage report");
        assert_eq!(path, "/filter/v1/usage");
        assert!(String::from_utf8(body.unwrap())
            .unwrap()
            .contains("\"r-1\""));
        let answer = br#"{"accepted":1}"#.to_vec();
        s.root.answered(
            token,
            Reply {
                status: Some(200),
                body: answer,
            },
        );
        assert!(s.outbox.borrow().is_empty());
        s.root.host().metrics().flush();
        assert_eq!(s.stats.get("keygate.usage_delivered"), 1);
    }

    #[test]
    fn a_root_that_lost_an_answer_waits_forever_until_it_starts_over_with_its_lease() {
        let mut s = setup();
        s.now.set(1_000);
        s.root.tick();
        s.now.set(1_300);
        s.root.tick();
        let asked = s.calls.borrow().len();
        // The answer never reaches the root (its host caught a panic on the way): the
        // root waits for it, however many ticks pass.
        for n in 1..=5 {
            s.now.set(1_300 + n * 2_000);
            s.root.tick();
        }
        let snapshot_calls = |s: &Setup| {
            s.calls
                .borrow()
                .iter()
                .filter(|(_, p, _)| p.starts_with("/filter/v1/snapshot?"))
                .count()
        };
        assert_eq!(snapshot_calls(&s), 1);
        assert_eq!(s.calls.borrow().len(), asked);
        // Started over, it asks again on its next tick: its lease is still its own (held
        // until 1_300 plus its time to live, long after now).
        s.root = s.root.start_over();
        s.root.outbox.borrow_mut().push(usage("r-1"));
        s.now.set(11_400);
        s.root.tick();
        assert_eq!(snapshot_calls(&s), 2);
        assert!(Rc::ptr_eq(&s.root.outbox, &s.outbox));
    }
}
