//! The usage outbox of one VM: records wait here until the key-service has them.
//!
//! Records leave in batches, one batch in flight at a time; a batch that fails goes back
//! to the front and is retried after a backoff that doubles up to a limit. The outbox is
//! bounded: past its capacity the oldest records are dropped and counted (a key-service
//! outage longer than the capacity covers loses the oldest usage, never blocks requests).
//! The key-service ignores a `request_id` it has seen, so a batch that was stored but whose
//! answer was lost is simply sent again.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

/// Longest `request_id` and `key_id` a usage record may carry.
pub const ID_MAX: usize = 128;
/// Longest model name a usage record carries; a longer one is cut (at a character
/// boundary).
pub const MODEL_MAX: usize = 256;

/// One request's usage on the wire of `POST /filter/v1/usage`: the filter writes it, the
/// key-service reads it. The filter always sends `model`, `status` and `ts`; a reporter
/// that leaves them out gets `unknown`, 200 and the key-service's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct UsageWire {
    pub request_id: String,
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub input_tokens: u64,
    #[serde(default)]
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache (part of `input_tokens`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    /// The HTTP status the client got (499: none, it went away first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u64>,
    /// Unix seconds of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// The tokens are the filter's estimate: the response ended without its usage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

/// A record in the outbox: what goes on the wire, and what stays in the filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    #[serde(flatten)]
    pub usage: UsageWire,
    /// What it cost the quota ledgers it was admitted against.
    #[serde(skip)]
    pub charge: Option<Charge>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A request's cost, as the filter priced it, and the ledgers (`ledger`) that count it
/// until the key-service's snapshot does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub cost: u64,
    pub key_ledger: Option<String>,
    pub account_ledger: Option<String>,
    /// The ledger of the key's cap on the request's model, and what it counts there
    /// (credits or tokens, as the cap counts).
    pub cap: Option<(String, u64)>,
}

impl Charge {
    /// Each ledger the charge counts in, with what it counts there.
    pub fn ledgers(&self) -> impl Iterator<Item = (&str, u64)> {
        let credits = self.key_ledger.iter().chain(&self.account_ledger);
        credits.map(|name| (name.as_str(), self.cost)).chain(
            self.cap
                .iter()
                .map(|(name, amount)| (name.as_str(), *amount)),
        )
    }
}

#[derive(Serialize)]
struct Report<'a> {
    /// The Envoy's name at the key-service (`limits::credit`): the records' costs come
    /// out of its credit leases.
    #[serde(skip_serializing_if = "Option::is_none")]
    holder: Option<&'a str>,
    records: &'a [Record],
}

/// The key-service's answer to a report that it took (200).
#[derive(Debug, Default, Deserialize)]
pub struct Answer {
    /// The snapshot version that carries the batch's costs (absent from key-services older
    /// than this filter).
    #[serde(default)]
    pub version: Option<u64>,
    /// What became of each record, in the order sent (absent from older key-services,
    /// which refused a whole report instead).
    #[serde(default)]
    results: Vec<RecordResult>,
}

#[derive(Debug, Deserialize)]
struct RecordResult {
    result: String,
}

impl Answer {
    /// The answer in `body`; one that cannot be read says nothing (every record taken).
    pub fn parse(body: &[u8]) -> Answer {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// The delivered records the key-service took (accepted, or billed before), and those
    /// it refused. Results that do not match the records one for one are not trusted to
    /// refuse anything.
    pub fn sort(&self, records: Vec<Record>) -> (Vec<Record>, Vec<Record>) {
        if self.results.len() != records.len() {
            return (records, Vec::new());
        }
        let (mut taken, mut refused) = (Vec::new(), Vec::new());
        for (record, result) in records.into_iter().zip(&self.results) {
            if result.result == "refused" {
                refused.push(record);
            } else {
                taken.push(record);
            }
        }
        (taken, refused)
    }
}

/// A VM's usage records on their way to the key-service, shared by its root context
/// (which sends them) and its HTTP contexts (which queue them).
pub type SharedOutbox = Rc<RefCell<Outbox>>;

const FIRST_BACKOFF_MS: u64 = 500;
const MAX_BACKOFF_MS: u64 = 30_000;

#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Record>,
    capacity: usize,
    batch: usize,
    in_flight: Option<Vec<Record>>,
    backoff_ms: u64,
    next_try_ms: u64,
    /// Records dropped for want of room since the last `take_dropped`.
    dropped: u64,
    /// The charges of those records: their usage will never be billed.
    lost: Vec<Charge>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new(100_000, 1_000)
    }
}

impl Outbox {
    pub fn new(capacity: usize, batch: usize) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            batch: batch.max(1),
            in_flight: None,
            backoff_ms: 0,
            next_try_ms: 0,
            dropped: 0,
            lost: Vec::new(),
        }
    }

    pub fn push(&mut self, record: Record) {
        let held = self.queue.len() + self.in_flight.as_ref().map_or(0, Vec::len);
        if held >= self.capacity {
            // The oldest waiting goes; if everything held is in flight, the new one.
            let (dropped, kept) = match self.queue.pop_front() {
                Some(oldest) => (oldest, Some(record)),
                None => (record, None),
            };
            self.drop_record(dropped);
            let Some(record) = kept else {
                return;
            };
            self.queue.push_back(record);
            return;
        }
        self.queue.push_back(record);
    }

    fn drop_record(&mut self, record: Record) {
        self.dropped += 1;
        self.lost.extend(record.charge);
    }

    /// The charges of records dropped since the last call.
    pub fn take_lost(&mut self) -> Vec<Charge> {
        std::mem::take(&mut self.lost)
    }

    /// Records waiting, in flight included.
    pub fn len(&self) -> usize {
        self.queue.len() + self.in_flight.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Every record waiting (not those in flight), to be sent by another outbox: a native
    /// worker hands its records to the one root that reports them.
    pub fn take_waiting(&mut self) -> Vec<Record> {
        self.queue.drain(..).collect()
    }

    /// The body of the next report to send, if one is due: nothing in flight, records
    /// waiting, and no backoff running.
    pub fn next_report(&mut self, now_ms: u64) -> Option<Vec<u8>> {
        self.next_report_from(now_ms, None)
    }

    /// As `next_report`, from the credit lease holder `holder`.
    pub fn next_report_from(&mut self, now_ms: u64, holder: Option<&str>) -> Option<Vec<u8>> {
        if self.in_flight.is_some() || self.queue.is_empty() || now_ms < self.next_try_ms {
            return None;
        }
        let n = self.batch.min(self.queue.len());
        let batch: Vec<Record> = self.queue.drain(..n).collect();
        let body = serde_json::to_vec(&Report {
            holder,
            records: &batch,
        })
        .ok()?;
        self.in_flight = Some(batch);
        Some(body)
    }

    /// The report in flight was answered (stored, or refused for good); returns its
    /// records.
    pub fn delivered(&mut self) -> Vec<Record> {
        self.backoff_ms = 0;
        self.next_try_ms = 0;
        self.in_flight.take().unwrap_or_default()
    }

    /// The report in flight failed: its records go back to the front, and the next try
    /// waits.
    pub fn failed(&mut self, now_ms: u64) {
        if let Some(batch) = self.in_flight.take() {
            for record in batch.into_iter().rev() {
                self.queue.push_front(record);
            }
        }
        self.backoff_ms = (self.backoff_ms * 2).clamp(FIRST_BACKOFF_MS, MAX_BACKOFF_MS);
        self.next_try_ms = now_ms + self.backoff_ms;
        while self.queue.len() > self.capacity {
            if let Some(oldest) = self.queue.pop_front() {
                self.drop_record(oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn record(n: u64) -> Record {
        Record {
            usage: UsageWire {
                request_id: format!("r{n}"),
                key_id: "k".into(),
                model: Some("m".into()),
                input_tokens: n,
                cached_input_tokens: 0,
                output_tokens: 1,
                cache_write_tokens: 0,
                status: Some(200),
                ts: Some(1),
                estimated: false,
            },
            charge: Some(Charge {
                cost: n,
                key_ledger: Some("kg:q:k:k".into()),
                account_ledger: None,
                cap: None,
            }),
        }
    }

    #[test]
    fn only_the_records_the_answer_refuses_are_refused() {
        let records: Vec<Record> = (0..3).map(record).collect();
        let answer = Answer::parse(
            br#"{"accepted":1,"duplicates":1,"refused":1,"version":9,"results":[
                {"request_id":"r0","result":"accepted"},
                {"request_id":"r1","result":"refused","reason":"key_id"},
                {"request_id":"r2","result":"duplicate"}]}"#,
        );
        assert_eq!(answer.version, Some(9));
        let (taken, refused) = answer.sort(records.clone());
        assert_eq!(taken, vec![records[0].clone(), records[2].clone()]);
        assert_eq!(refused, vec![records[1].clone()]);
        // An older key-service's answer, a mismatched one, or none: all taken.
        for body in [
            &br#"{"accepted":3,"duplicates":0,"version":4}"#[..],
            br#"{"results":[{"result":"refused"}]}"#,
            b"not json",
        ] {
            let (taken, refused) = Answer::parse(body).sort(records.clone());
            assert_eq!((taken.len(), refused.len()), (3, 0));
        }
    }

    fn ids(body: &[u8]) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request_id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn records_leave_in_batches_one_at_a_time() {
        let mut o = Outbox::new(100, 2);
        assert_eq!(o.next_report(0), None);
        for n in 0..5 {
            o.push(record(n));
        }
        let first = o.next_report(0).unwrap();
        assert_eq!(ids(&first), ["r0", "r1"]);
        assert_eq!(o.next_report(0), None, "one batch in flight at a time");
        let body: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert!(body.get("holder").is_none());
        assert_eq!(o.delivered().len(), 2);
        let second = o.next_report_from(0, Some("h1")).unwrap();
        assert_eq!(ids(&second), ["r2", "r3"]);
        let body: serde_json::Value = serde_json::from_slice(&second).unwrap();
        assert_eq!(body["holder"], "h1");
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn a_failed_batch_is_retried_first_after_a_growing_backoff() {
        let mut o = Outbox::new(100, 2);
        for n in 0..3 {
            o.push(record(n));
        }
        o.next_report(1_000).unwrap();
        o.failed(1_000);
        assert_eq!(o.next_report(1_499), None);
        let again = o.next_report(1_500).unwrap();
        assert_eq!(ids(&again), ["r0", "r1"], "same records, same order");
        o.failed(1_500);
        assert_eq!(o.next_report(2_499), None, "the backoff doubled");
        assert!(o.next_report(2_500).is_some());
        o.delivered();
        assert_eq!(
            ids(&o.next_report(2_500).unwrap()),
            ["r2"],
            "no wait after success"
        );
        for _ in 0..20 {
            o.failed(0);
        }
        assert_eq!(o.backoff_ms, MAX_BACKOFF_MS);
    }

    #[test]
    fn past_its_capacity_the_oldest_records_are_dropped_and_counted() {
        let mut o = Outbox::new(3, 2);
        for n in 0..5 {
            o.push(record(n));
        }
        assert_eq!(o.len(), 3);
        assert_eq!(o.take_dropped(), 2);
        assert_eq!(o.take_dropped(), 0);
        // Their charges are handed back, to stop counting in the ledgers.
        let lost: Vec<u64> = o.take_lost().iter().map(|c| c.cost).collect();
        assert_eq!(lost, [0, 1]);
        assert_eq!(ids(&o.next_report(0).unwrap()), ["r2", "r3"]);
        // While a batch is out, the room it takes counts too.
        o.push(record(9));
        assert_eq!(o.len(), 3);
        assert_eq!(o.take_dropped(), 1);
        assert_eq!(o.take_lost()[0].cost, 4);
        o.failed(0);
        assert_eq!(o.len(), 3);
    }
}
