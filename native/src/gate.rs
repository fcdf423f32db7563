//! One filter configuration (`Gate`): what its streams on every worker share, and its
//! root, which syncs the snapshot, reports usage and asks for credit leases on Envoy's
//! main thread.
//!
//! How the root is driven, and why: the ABI's config-level HTTP callouts go through the
//! configured cluster (`key_service_cluster`, as in Wasm) but must be started on the main
//! thread, and the config scheduler is the way onto it. The ABI has no timer, so a small
//! thread of the module's own (`Timer`) only sleeps and commits a scheduler event when the
//! root's next tick is due; every call and every write happens on the main thread, in the
//! same `keygate_core::root::Root` the Wasm filter runs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keygate_core::config::Config;
use keygate_core::kv::{HostError, SharedData};
use keygate_core::root::{self, Reply, RootHost};
use keygate_core::stats::{MetricKind, Metrics, StatSink};
use keygate_core::sync::view::SharedView;
use keygate_core::usage::report::{Outbox, Record};

use crate::envoy::{ConfigHandle, ConfigScheduler, Metric, StreamScheduler};
use crate::store::Store;

/// Events of the config scheduler.
pub const TICK: u64 = 1;
/// A request waits for a credit lease.
pub const CREDIT_DEMAND: u64 = 2;

/// How soon usage records handed to the root go out while traffic flows (as in Wasm).
const USAGE_FLUSH: Duration = Duration::from_millis(100);

/// What a configuration's streams, on every worker, share with its root.
pub struct Gate {
    /// Unique in the process: workers keep their state per gate.
    pub id: u64,
    pub config: Config,
    pub envoy: ConfigHandle,
    /// Metric ids by name, defined while the configuration was made.
    pub metric_ids: HashMap<String, u32>,
    /// Usage records the workers handed over, for the root to report.
    inbox: Mutex<Vec<Record>>,
    /// Bumped each time the root refreshed its view: workers refresh theirs when it moved.
    pub generation: AtomicU64,
    /// Streams held (waiting for the first snapshot or a lease), by stream id: copies of
    /// their schedulers, committed to only under this lock (a stream deletes its
    /// scheduler under it).
    pub held: Mutex<HashMap<u64, StreamScheduler>>,
    /// Set once the configuration is gone: workers drop their state for it.
    pub stopped: AtomicBool,
    scheduler: Mutex<Option<ConfigScheduler>>,
    timer: Timer,
}

impl Gate {
    pub fn new(id: u64, config: Config, envoy: ConfigHandle) -> Gate {
        let mut metric_ids = HashMap::new();
        // Defines every metric now (the ABI allows it only while the configuration is
        // made), and remembers the ids for the workers' `Metrics`.
        let _ = Metrics::define(Defining {
            envoy,
            ids: RefCell::new(&mut metric_ids),
        });
        Gate {
            id,
            config,
            envoy,
            metric_ids,
            inbox: Mutex::default(),
            generation: AtomicU64::new(0),
            held: Mutex::default(),
            stopped: AtomicBool::new(false),
            scheduler: Mutex::new(Some(envoy.new_scheduler())),
            timer: Timer::default(),
        }
    }

    /// Commits an event to the root on the main thread.
    pub fn schedule(&self, event: u64) {
        if let Ok(scheduler) = self.scheduler.lock() {
            if let Some(scheduler) = scheduler.as_ref() {
                scheduler.commit(event);
            }
        }
    }

    /// A worker hands over the usage records of its finished requests; returns those
    /// that find no room. The root takes the inbox on each tick (every 100 ms while records
    /// wait), so it holds at most `usage_queue_max` records: a main thread that falls
    /// behind costs records, never unbounded memory.
    pub fn hand_over(&self, mut records: Vec<Record>) -> Vec<Record> {
        if records.is_empty() {
            return records;
        }
        let Ok(mut inbox) = self.inbox.lock() else {
            return records;
        };
        let was_empty = inbox.is_empty();
        let room = self.config.usage_queue_max.saturating_sub(inbox.len());
        let refused = records.split_off(records.len().min(room));
        inbox.extend(records);
        drop(inbox);
        if was_empty {
            self.timer.soon();
        }
        refused
    }

    fn take_inbox(&self) -> Vec<Record> {
        self.inbox
            .lock()
            .map(|mut i| std::mem::take(&mut *i))
            .unwrap_or_default()
    }

    /// A request is held: the root must tick soon.
    pub fn hold_tick(&self) {
        self.timer.set_period(root::HOLD_TICK);
    }

    /// Starts the timer thread (after the configuration is registered).
    pub fn start(self: &Arc<Gate>) {
        let gate = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("keygate-timer".into())
            .spawn(move || gate.timer.run(|| gate.schedule(TICK)));
        match handle {
            Ok(handle) => self.timer.set_handle(handle),
            Err(e) => log::error!("cannot start the timer thread: {e}; the snapshot will not sync"),
        }
    }

    /// Stops the timer and deletes the scheduler: nothing commits to it afterwards.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.timer.stop();
        if let Ok(mut scheduler) = self.scheduler.lock() {
            if let Some(scheduler) = scheduler.take() {
                scheduler.delete();
            }
        }
    }
}

/// Defines each metric through the ABI while the configuration is made.
struct Defining<'a> {
    envoy: ConfigHandle,
    ids: RefCell<&'a mut HashMap<String, u32>>,
}

impl StatSink for Defining<'_> {
    fn define(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => Metric::Counter,
            MetricKind::Gauge => Metric::Gauge,
        };
        let id = self.envoy.define(kind, name).ok_or(HostError(0))?;
        self.ids.borrow_mut().insert(name.to_string(), id);
        Ok(id)
    }
    fn add(&self, _id: u32, _n: u64) {}
    fn set(&self, _id: u32, _value: u64) {}
}

/// The stats of a configuration, by the ids its metrics got: updated through the
/// configuration (thread-safe counters in Envoy).
pub struct NativeStats {
    gate: Arc<Gate>,
}

impl NativeStats {
    pub fn new(gate: Arc<Gate>) -> NativeStats {
        NativeStats { gate }
    }
}

impl StatSink for NativeStats {
    fn define(&self, _kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.gate.metric_ids.get(name).copied().ok_or(HostError(0))
    }

    fn add(&self, id: u32, n: u64) {
        self.gate.envoy.increment_counter(id, n);
    }

    fn set(&self, id: u32, value: u64) {
        self.gate.envoy.set_gauge(id, value);
    }
}

/// The wall clock in Unix milliseconds.
pub fn now_ms() -> Result<u64, HostError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|_| HostError(0))
}

/// The root's host: the main thread of Envoy, through the configuration's callouts.
pub struct Native {
    gate: Arc<Gate>,
    metrics: Metrics<NativeStats>,
    /// Callout ids by the token the root knows them by.
    calls: HashMap<u64, u32>,
    next_token: u32,
}

impl SharedData for Native {
    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Store::global().get(name)
    }

    fn set(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<bool, HostError> {
        Store::global().set(name, value, cas)
    }
}

impl RootHost for Native {
    type Stats = NativeStats;

    fn now_ms(&self) -> Result<u64, HostError> {
        now_ms()
    }

    fn call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        // The ABI wants `host` where proxy-wasm takes `:authority`.
        let mut with_host: Vec<(&str, &str)> = headers.to_vec();
        if let Some((_, authority)) = headers.iter().find(|(n, _)| *n == ":authority") {
            with_host.push(("host", authority));
        }
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let id = self
            .gate
            .envoy
            .callout(cluster, &with_host, body, timeout_ms)
            .map_err(HostError)?;
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.calls.insert(id, self.next_token);
        Ok(self.next_token)
    }

    fn set_tick_period(&mut self, period: Duration) -> Result<(), HostError> {
        self.gate.timer.set_period(period);
        Ok(())
    }

    /// Requests wake the root through the config scheduler directly (`CREDIT_DEMAND`).
    fn listen_for_credit_demand(&mut self, _taken_over: bool) {}

    fn holding(&self) -> bool {
        self.gate.held.lock().is_ok_and(|held| !held.is_empty())
    }

    fn release_held(&mut self, loaded: bool) {
        // Each held stream decides itself on its worker, and holds itself again if it must
        // wait on. Committed under the lock: a stream deletes its scheduler under it.
        if let Ok(mut held) = self.gate.held.lock() {
            let event = crate::stream::RELEASE + u64::from(loaded);
            for (_, scheduler) in held.drain() {
                scheduler.commit(event);
            }
        }
    }

    fn view_refreshed(&mut self) {
        self.gate.generation.fetch_add(1, Ordering::Release);
    }

    fn metrics(&self) -> &Metrics<NativeStats> {
        &self.metrics
    }
}

/// The roots of the process's configurations, on the main thread, by gate id.
pub struct Roots {
    roots: HashMap<u64, Held>,
}

/// A configuration's root, and the records its requests hand over.
struct Held {
    root: root::Root<Native>,
    outbox: Rc<RefCell<Outbox>>,
}

thread_local! {
    /// Only the main thread has roots (configurations are made, scheduled and answered
    /// there).
    pub static ROOTS: RefCell<Roots> = RefCell::new(Roots { roots: HashMap::new() });
}

impl Roots {
    /// Makes the root of a new configuration.
    pub fn add(&mut self, gate: &Arc<Gate>, token: Option<String>) {
        let config = &gate.config;
        let outbox = Rc::new(RefCell::new(Outbox::new(
            config.usage_queue_max,
            config.usage_batch_max,
        )));
        let host = Native {
            gate: Arc::clone(gate),
            metrics: Metrics::define(NativeStats::new(Arc::clone(gate))),
            calls: HashMap::new(),
            next_token: 0,
        };
        let root = root::Root::new(
            host,
            config.clone(),
            token,
            SharedView::default(),
            Rc::clone(&outbox),
        );
        self.roots.insert(gate.id, Held { root, outbox });
    }

    /// A panic in a root's work (a bug, contained) may have left it half-changed, waiting
    /// forever for an answer it lost: it starts over (`Root::start_over`), as a reloaded
    /// Wasm VM would, keeping the usage records that wait and the sync lease.
    pub fn restart(&mut self, gate: &Gate) {
        if let Some(mut held) = self.roots.remove(&gate.id) {
            log::error!("the root starts over");
            held.root.host_mut().calls.clear();
            held.root = held.root.start_over();
            self.roots.insert(gate.id, held);
        }
    }

    pub fn remove(&mut self, id: u64) {
        self.roots.remove(&id);
    }

    /// An event of the config scheduler.
    pub fn scheduled(&mut self, gate: &Gate, event: u64) {
        let Some(Held { root, outbox, .. }) = self.roots.get_mut(&gate.id) else {
            return;
        };
        match event {
            TICK => {
                let records = gate.take_inbox();
                let mut outbox = outbox.borrow_mut();
                for record in records {
                    outbox.push(record);
                }
                drop(outbox);
                root.tick();
            }
            CREDIT_DEMAND => root.credit_demand(),
            _ => {}
        }
    }

    /// The answer to a callout.
    pub fn answered(&mut self, gate: &Gate, id: u64, reply: Reply) {
        let Some(Held { root, .. }) = self.roots.get_mut(&gate.id) else {
            return;
        };
        if let Some(token) = root.host_mut().calls.remove(&id) {
            #[cfg(feature = "panic-probe")]
            probe_answer();
            root.answered(token, reply);
        }
    }
}

/// `panic-probe` builds only (the end-to-end tests): with `KEYGATE_PANIC_PROBE=answered`
/// in Envoy's environment, the root's first answer panics after the root has taken it as
/// sent and before it reads it (its sync would wait for it forever).
#[cfg(feature = "panic-probe")]
#[allow(clippy::panic)]
fn probe_answer() {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var("KEYGATE_PANIC_PROBE").as_deref() == Ok("answered")
        && !DONE.swap(true, Ordering::Relaxed)
    {
        panic!("panic-probe: answered");
    }
}

/// The timer thread's state: when the root's next tick is due.
#[derive(Default)]
struct Timer {
    state: Mutex<TimerState>,
    wake: Condvar,
    handle: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct TimerState {
    period: Duration,
    /// Records wait: tick within `USAGE_FLUSH`.
    soon: bool,
    /// The wait must be worked out again (a shorter period, records came).
    changed: bool,
    stop: bool,
}

impl Timer {
    fn set_period(&self, period: Duration) {
        if let Ok(mut state) = self.state.lock() {
            if state.period != period {
                state.period = period;
                state.changed = true;
                self.wake.notify_one();
            }
        }
    }

    fn soon(&self) {
        if let Ok(mut state) = self.state.lock() {
            if !state.soon {
                state.soon = true;
                state.changed = true;
                self.wake.notify_one();
            }
        }
    }

    fn set_handle(&self, handle: JoinHandle<()>) {
        if let Ok(mut slot) = self.handle.lock() {
            *slot = Some(handle);
        }
    }

    fn stop(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.stop = true;
            self.wake.notify_one();
        }
        let handle = self.handle.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Sleeps until a tick is due, then calls `tick`; until stopped.
    fn run(&self, tick: impl Fn()) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        loop {
            if state.stop {
                return;
            }
            let mut wait = state.period.max(Duration::from_millis(1));
            if state.soon {
                wait = wait.min(USAGE_FLUSH);
            }
            state.changed = false;
            let Ok((next, timeout)) = self
                .wake
                .wait_timeout_while(state, wait, |s| !s.stop && !s.changed)
            else {
                return;
            };
            state = next;
            if timeout.timed_out() {
                state.soon = false;
                tick();
            }
        }
    }
}
