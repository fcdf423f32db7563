//! The request core driven through a fake host: every way a request can end, and what it
//! leaves in the ledgers, the rate windows and the outbox.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::*;
use crate::keys::secret;
use crate::kv::testing::MemShared;
use crate::limits::credit;
use crate::limits::ledger::{self, Ledger};
use crate::pairs;
use crate::sync::leader::Leader;
use crate::sync::snapshot::{
    AccountRecord, CapUnit, GroupRecord, KeyRecord, ModelCap, PriceRecord, SnapshotWire,
};
use crate::usage::report::Record;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const NOW_MS: u64 = 1_800_000_000_000;

/// A proxy with one request: what the filter was sent, and what it did.
#[derive(Default)]
struct Fake {
    shared: MemShared,
    request_headers: RefCell<Vec<(String, String)>>,
    request_body: RefCell<Vec<u8>>,
    /// The size of every read of the request body.
    body_reads: RefCell<Vec<usize>>,
    response_headers: RefCell<Vec<(String, String)>>,
    response_body: RefCell<Vec<u8>>,
    sent: RefCell<Option<Sent>>,
    events: RefCell<Vec<String>>,
    /// Every host call but shared data fails.
    broken: Cell<bool>,
    now_ms: Cell<u64>,
}

fn ok<T>(fake: &Fake, value: T) -> Result<T, HostError> {
    if fake.broken.get() {
        Err(HostError(10))
    } else {
        Ok(value)
    }
}

/// A host call that changes something: done only if the host works.
fn change(fake: &Fake, change: impl FnOnce()) -> Result<(), HostError> {
    ok(fake, ()).map(|()| change())
}

/// The filter's own answer: status, headers, body.
type Sent = (u32, Vec<(String, String)>, String);

fn set(map: &RefCell<Vec<(String, String)>>, name: &str, value: &str) {
    let mut map = map.borrow_mut();
    map.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    map.push((name.into(), value.into()));
}

fn get(map: &RefCell<Vec<(String, String)>>, name: &str) -> Option<String> {
    let map = map.borrow();
    let found = map.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
    found.map(|(_, v)| v.clone())
}

impl SharedData for Fake {
    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        self.shared.get(name)
    }

    fn set(&self, name: &str, value: &[u8], cas: Option<u32>) -> Result<bool, HostError> {
        self.shared.set(name, value, cas)
    }
}

impl Host for Fake {
    fn request_headers(&self) -> Result<Vec<u8>, HostError> {
        let headers = self.request_headers.borrow();
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        ok(self, pairs::encode(&pairs))
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        change(self, || set(&self.request_headers, name, value))
    }

    fn add_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        // Added beside any header of that name, as a proxy does.
        let mut headers = self.request_headers.borrow_mut();
        change(self, || headers.push((name.into(), value.into())))
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        let mut headers = self.request_headers.borrow_mut();
        change(self, || {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name))
        })
    }

    fn request_body(&self, start: usize, size: usize) -> Result<Vec<u8>, HostError> {
        let body = self.request_body.borrow();
        let start = start.min(body.len());
        let end = start.saturating_add(size).min(body.len());
        self.body_reads.borrow_mut().push(end - start);
        ok(self, body[start..end].to_vec())
    }

    fn set_request_body(&self, size: usize, data: &[u8]) -> Result<(), HostError> {
        let mut body = self.request_body.borrow_mut();
        let size = size.min(body.len());
        change(self, || drop(body.splice(..size, data.iter().copied())))
    }

    fn source_address(&self) -> Result<Option<Vec<u8>>, HostError> {
        ok(self, Some(b"10.0.0.7:5555".to_vec()))
    }

    fn response_header(&self, name: &str) -> Result<Option<String>, HostError> {
        ok(self, get(&self.response_headers, name))
    }

    fn set_response_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        change(self, || set(&self.response_headers, name, value))
    }

    fn remove_response_header(&self, name: &str) -> Result<(), HostError> {
        let mut headers = self.response_headers.borrow_mut();
        change(self, || {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name))
        })
    }

    fn response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        let body = self.response_body.borrow();
        ok(self, body[..size.min(body.len())].to_vec())
    }

    fn set_response_body(&self, _size: usize, data: &[u8]) -> Result<(), HostError> {
        change(self, || *self.response_body.borrow_mut() = data.to_vec())
    }

    fn send_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let body = String::from_utf8_lossy(body).into_owned();
        *self.sent.borrow_mut() = Some((status, headers, body));
        Ok(())
    }

    fn now_ms(&self) -> Result<u64, HostError> {
        ok(self, self.now_ms.get())
    }

    fn count(&self, event: Event<'_>) {
        let name = match event {
            Event::Denied(denial) => format!("denied:{}", denial.code()),
            Event::UsageRecorded(usage) => format!("recorded:{}+{}", usage.input, usage.output),
            other => format!("{other:?}"),
        };
        self.events.borrow_mut().push(name);
    }
}

/// The well-formed secret of the test key `name` (lower-case letters).
fn sk(name: &str) -> String {
    let random: String = name.chars().cycle().take(42).collect();
    secret::from_random(&random).unwrap()
}

fn key(name: &str) -> KeyRecord {
    KeyRecord {
        account: "acme".into(),
        ..KeyRecord::plain(&format!("id-{name}"), name, &sk(name))
    }
}

/// Keys: `open` (no limits), `quota` (1,000,000 credits left of 1,500,000), `gpt` (may use
/// gpt-4o only), `rpm` (one request a minute, with a quota), `gptrpm` (gpt-4o only, one
/// request a minute). gpt-4o costs 1 credit per
/// input token and 2 per output token.
fn snapshot() -> SnapshotWire {
    SnapshotWire {
        version: 7,
        keys: vec![
            key("open"),
            KeyRecord {
                remaining_quota: Some(1_000_000),
                quota: Some(1_500_000),
                ..key("quota")
            },
            KeyRecord {
                models: vec!["gpt-4o".into()],
                ..key("gpt")
            },
            KeyRecord {
                rpm: Some(1),
                remaining_quota: Some(1_000_000),
                ..key("rpm")
            },
            KeyRecord {
                rpm: Some(1),
                models: vec!["gpt-4o".into()],
                ..key("gptrpm")
            },
            KeyRecord {
                remaining_quota: Some(1_000_000),
                model_caps: vec![ModelCap {
                    model: "gpt-*".into(),
                    unit: CapUnit::Credits,
                    limit: 300,
                    used: 0,
                    period_end: None,
                }],
                ..key("capped")
            },
            KeyRecord {
                account: "funded".into(),
                ..key("funded")
            },
            KeyRecord {
                remaining_quota: Some(0),
                ..key("spent")
            },
            KeyRecord {
                model_caps: vec![ModelCap {
                    model: "gpt-4o".into(),
                    unit: CapUnit::Tokens,
                    limit: 150,
                    used: 0,
                    period_end: None,
                }],
                ..key("tokcap")
            },
        ]
        .into(),
        groups: vec![GroupRecord {
            name: "default".into(),
            models: vec!["*".into()],
            ratio: 1.0,
            rpm: None,
            tpm: None,
        }],
        accounts: vec![
            AccountRecord {
                name: "acme".into(),
                balance: None,
                period_end: None,
                period_balance: None,
            },
            AccountRecord {
                name: "funded".into(),
                balance: Some(1_000_000),
                period_end: None,
                period_balance: None,
            },
        ],
        prices: vec![PriceRecord {
            name: "gpt-4o".into(),
            input: 1_000_000.0,
            output: 2_000_000.0,
            cached_input: 500_000.0,
            cache_write: None,
            per_request: 0.0,
        }],
        ..Default::default()
    }
}

struct Setup {
    fake: Fake,
    plugin: Rc<Plugin>,
}

fn setup() -> Setup {
    let s = setup_without_snapshot();
    s.load_snapshot();
    s
}

/// The configuration of most tests: one Envoy, spending from the snapshot's figures alone
/// (credit leases have their own tests).
fn config() -> Config {
    Config {
        credit_lease_ttl_ms: 0,
        ..Config::default()
    }
}

/// A VM of an Envoy whose first snapshot has not come yet.
fn setup_without_snapshot() -> Setup {
    setup_with(config())
}

fn setup_with(config: Config) -> Setup {
    let fake = Fake::default();
    fake.now_ms.set(NOW_MS);
    let plugin = Rc::new(Plugin {
        config,
        ids: Some(RequestIds::new([1; 16])),
        ..Plugin::default()
    });
    Setup { fake, plugin }
}

impl Setup {
    /// The leader writes the snapshot into shared data.
    fn load_snapshot(&self) {
        let mut leader = Leader::new(100);
        leader.next_ask(&self.fake.shared).unwrap();
        leader.apply(&self.fake.shared, snapshot(), NOW_MS).unwrap();
    }

    /// A new request to `path` with the key `name`.
    fn request(&self, method: &str, path: &str, name: &str) -> Request {
        let headers = vec![
            (":method".into(), method.into()),
            (":path".into(), path.into()),
            ("authorization".into(), format!("Bearer {}", sk(name))),
            ("content-type".into(), "application/json".into()),
        ];
        *self.fake.request_headers.borrow_mut() = headers;
        self.fake.request_body.borrow_mut().clear();
        *self.fake.sent.borrow_mut() = None;
        self.fake.response_headers.borrow_mut().clear();
        Request::new(Rc::clone(&self.plugin))
    }

    /// The body arrives in one piece.
    fn body(&self, request: &mut Request, body: &str, end_of_stream: bool) -> Action {
        *self.fake.request_body.borrow_mut() = body.as_bytes().to_vec();
        request.on_request_body(&self.fake, body.len(), end_of_stream)
    }

    /// The upstream answers `status` with this JSON body, in one chunk.
    fn respond(&self, request: &mut Request, status: u16, body: &str) {
        set(&self.fake.response_headers, ":status", &status.to_string());
        set(
            &self.fake.response_headers,
            "content-type",
            "application/json",
        );
        assert_eq!(request.on_response_headers(&self.fake), Action::Continue);
        *self.fake.response_body.borrow_mut() = body.as_bytes().to_vec();
        let action = request.on_response_body(&self.fake, body.len(), true);
        assert_eq!(action, Action::Continue);
    }

    fn status_sent(&self) -> Option<u32> {
        self.fake
            .sent
            .borrow()
            .as_ref()
            .map(|(status, _, _)| *status)
    }

    fn ledger(&self, key_id: &str) -> Ledger {
        self.ledger_named(&ledger::key_entry(key_id))
    }

    fn ledger_named(&self, name: &str) -> Ledger {
        let entry = self.fake.shared.get(name).unwrap();
        entry.map_or_else(Ledger::default, |(bytes, _)| Ledger::decode(&bytes))
    }

    /// The records the request core queued for the key-service.
    fn records(&self) -> Vec<Record> {
        let mut outbox = self.plugin.outbox.borrow_mut();
        outbox.next_report(0);
        outbox.delivered()
    }

    fn events(&self) -> Vec<String> {
        self.fake.events.borrow().clone()
    }
}

const CHAT: &str = "/v1/chat/completions";
const USAGE: &str = r#"{"model":"gpt-4o","usage":{"prompt_tokens":10,"completion_tokens":5}}"#;

#[test]
fn an_unlimited_key_is_admitted_on_its_headers_and_its_usage_recorded() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "open");
    // Read for whether to ask for usage (a stream's).
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    // The credential is gone; the upstream is told who calls.
    assert_eq!(get(&s.fake.request_headers, "authorization"), None);
    let key_id = get(&s.fake.request_headers, "x-keygate-key-id");
    assert_eq!(key_id.as_deref(), Some("id-open"));
    assert_eq!(
        s.body(&mut request, r#"{"model":"gpt-4o"}"#, true),
        Action::Continue
    );
    s.respond(&mut request, 200, USAGE);
    request.on_log(&s.fake);
    let records = s.records();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(
        (record.usage.key_id.as_str(), record.usage.model.as_deref()),
        ("id-open", Some("gpt-4o"))
    );
    assert_eq!(
        (
            record.usage.input_tokens,
            record.usage.output_tokens,
            record.usage.status
        ),
        (10, 5, Some(200))
    );
    assert!(!record.usage.estimated);
    // Nothing reserved or charged: the key has no limit.
    assert_eq!(record.charge, None);
    let scanned = format!("Scanned({})", USAGE.len());
    assert_eq!(s.events(), ["Allowed", &scanned, "recorded:10+5"]);
}

#[test]
fn an_unknown_key_is_refused_and_nothing_else_happens() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "nobody");
    assert_eq!(request.on_request_headers(&s.fake, true), Action::Pause);
    let sent = s.fake.sent.borrow().clone().unwrap();
    assert_eq!(sent.0, 401);
    assert!(sent.2.contains("invalid_api_key"), "{}", sent.2);
    assert!(
        !sent.2.contains(&sk("nobody")),
        "the key is echoed: {}",
        sent.2
    );
    // The filter's own answer passes back through the filter untouched.
    s.respond(&mut request, 401, &sent.2);
    request.on_log(&s.fake);
    assert!(s.records().is_empty());
    assert_eq!(s.events(), ["denied:invalid_api_key"]);
}

#[test]
fn a_limited_key_waits_for_the_body_reserves_and_settles_what_it_used() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "quota");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    let body = r#"{"model":"gpt-4o","max_tokens":100,"messages":[]}"#;
    assert_eq!(s.body(&mut request, &body[..10], false), Action::Pause);
    assert_eq!(s.body(&mut request, body, true), Action::Continue);
    // Reserved: the prompt's bytes / 4 input tokens and 100 output tokens, as priced.
    let input = (body.len() as u64).div_ceil(4);
    assert_eq!(s.ledger("id-quota").reserved, input + 200);
    s.respond(&mut request, 200, USAGE);
    request.on_log(&s.fake);
    let ledger = s.ledger("id-quota");
    assert_eq!(ledger.reserved, 0);
    // 10 input tokens at 1 and 5 output tokens at 2 count until the snapshot shows them.
    assert_eq!(ledger.unreported, 20);
    let records = s.records();
    assert_eq!(records[0].charge.as_ref().map(|c| c.cost), Some(20));
}

#[test]
fn a_spent_model_cap_refuses_its_models_and_gives_the_keys_reservation_back() {
    let s = setup();
    let cap = ledger::cap_entry("id-capped", CapUnit::Credits, "gpt-*");
    let body = r#"{"model":"gpt-4o","max_tokens":100,"messages":[]}"#;
    let estimate = (body.len() as u64).div_ceil(4) + 200;
    let mut first = s.request("POST", CHAT, "capped");
    assert_eq!(first.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.body(&mut first, body, true), Action::Continue);
    assert_eq!(s.ledger_named(&cap).reserved, estimate);
    // A second one in flight does not fit in what the cap has left (300).
    let mut second = s.request("POST", CHAT, "capped");
    assert_eq!(second.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.body(&mut second, body, true), Action::Pause);
    let (status, _, sent) = s.fake.sent.borrow().clone().unwrap();
    assert_eq!(status, 429);
    let sent: serde_json::Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(sent["error"]["code"], "model_budget_exceeded");
    assert!(sent["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gpt-4o"));
    assert_eq!(
        s.ledger("id-capped").reserved,
        estimate,
        "the key's went back"
    );
    assert_eq!(s.ledger_named(&cap).reserved, estimate);
    // The first settles at what it cost (20); the cap counts it until the snapshot does.
    s.respond(&mut first, 200, USAGE);
    first.on_log(&s.fake);
    second.on_log(&s.fake);
    let held = s.ledger_named(&cap);
    assert_eq!((held.reserved, held.unreported), (0, 20));
    let charge = s.records()[0].charge.clone().unwrap();
    assert_eq!(charge.cap, Some((cap.clone(), 20)));
    let mut third = s.request("POST", CHAT, "capped");
    assert_eq!(third.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.body(&mut third, body, true), Action::Continue);
    assert!(s
        .events()
        .contains(&"denied:model_budget_exceeded".to_string()));
}

#[test]
fn what_a_key_without_a_quota_spends_stops_counting_in_its_accounts_ledger_once_reported() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "funded");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(
        s.body(&mut request, r#"{"model":"gpt-4o"}"#, true),
        Action::Continue
    );
    s.respond(&mut request, 200, USAGE);
    request.on_log(&s.fake);
    let account = ledger::account_entry("funded");
    assert_eq!(s.ledger_named(&account).unreported, 20);
    // The record carries the account's ledger, so that its cost stops counting there once
    // the key-service has it (before, a key without a quota of its own carried none, and
    // its spending counted against the account until Envoy restarted).
    let charge = s.records()[0].charge.clone().expect("a charge");
    assert_eq!(
        (charge.key_ledger, charge.account_ledger),
        (None, Some(account))
    );
    assert_eq!(charge.cost, 20);
}

#[test]
fn a_key_sees_its_own_view_answered_here_even_when_out_of_quota() {
    let s = setup();
    let view = |name: &str, path: &str| {
        let mut request = s.request("GET", path, name);
        let action = request.on_request_headers(&s.fake, true);
        request.on_log(&s.fake);
        let sent = s.fake.sent.borrow().clone();
        (action, sent)
    };
    let (action, sent) = view("quota", "/v1/keygate/key?x=1");
    assert_eq!(action, Action::Pause);
    let (status, headers, body) = sent.expect("answered by the filter");
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(n, v)| n == "cache-control" && v == "no-store"));
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["name"], "quota");
    assert_eq!(body["status"], "active");
    assert_eq!(body["remaining_quota"], 1_000_000);
    assert!(!body.to_string().contains(&sk("quota")));
    assert!(s.records().is_empty(), "nothing recorded");
    // Out of quota: it still sees itself.
    let (_, sent) = view("spent", "/v1/keygate/key");
    let (status, _, body) = sent.unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("exhausted")),
        "{body}"
    );
    // A key refused for anything else gets that refusal; another path goes upstream.
    let (_, sent) = view("nobody", "/v1/keygate/key");
    assert_eq!(sent.unwrap().0, 401);
    let (action, sent) = view("open", "/v1/keygate/keys");
    assert_eq!((action, sent), (Action::Continue, None));
}

#[test]
fn one_api_billing_paths_are_answered_here_in_dollars_even_when_out_of_quota() {
    let answered = |s: &Setup, method: &str, path: &str, name: &str| {
        let mut request = s.request(method, path, name);
        let action = request.on_request_headers(&s.fake, true);
        request.on_log(&s.fake);
        let sent = s.fake.sent.borrow().clone();
        (action, sent)
    };
    let json = |sent: Option<Sent>| {
        let (status, headers, body) = sent.expect("answered by the filter");
        assert!(headers
            .iter()
            .any(|(n, v)| n == "cache-control" && v == "no-store"));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        (status, body)
    };
    let s = setup();
    // 1,500,000 credits of quota, 1,000,000 left: $1.50, 50 cents used.
    let (action, sent) = answered(&s, "GET", "/v1/dashboard/billing/subscription", "quota");
    assert_eq!(action, Action::Pause);
    let (status, body) = json(sent);
    assert_eq!(status, 200);
    assert_eq!(body["object"], "billing_subscription");
    assert_eq!(
        (
            body["hard_limit_usd"].as_f64(),
            body["soft_limit_usd"].as_f64()
        ),
        (Some(1.5), Some(1.5))
    );
    assert_eq!(body["access_until"], 0);
    let usage_path = "/dashboard/billing/usage?start_date=2026-01-01&end_date=2026-02-01";
    let (_, sent) = answered(&s, "GET", usage_path, "quota");
    let (status, body) = json(sent);
    assert_eq!((status, body["object"].as_str()), (200, Some("list")));
    assert_eq!(body["total_usage"].as_f64(), Some(50.0), "{body}");
    // An unlimited key: one-api's mark of no limit.
    let (_, sent) = answered(&s, "GET", "/dashboard/billing/subscription", "open");
    assert_eq!(json(sent).1["hard_limit_usd"].as_f64(), Some(100_000_000.0));
    // Out of quota: still answered.
    let (_, sent) = answered(&s, "GET", "/v1/dashboard/billing/usage", "spent");
    assert_eq!(json(sent).0, 200);
    assert!(s.records().is_empty(), "nothing recorded");
    assert_eq!(s.ledger("id-quota").reserved, 0, "nothing reserved");
    // An unknown key gets its refusal; another method or path goes on as any request.
    let (_, sent) = answered(&s, "GET", "/v1/dashboard/billing/usage", "nobody");
    assert_eq!(sent.unwrap().0, 401);
    let (action, sent) = answered(&s, "POST", "/v1/dashboard/billing/usage", "open");
    assert_eq!((action, sent), (Action::Continue, None));
    let (action, sent) = answered(&s, "GET", "/v1/dashboard/billing/usage/x", "open");
    assert_eq!((action, sent), (Action::Continue, None));

    // Turned off, the paths go upstream like any other.
    let off = setup_with(Config {
        billing_paths: false,
        ..config()
    });
    off.load_snapshot();
    let (action, sent) = answered(&off, "GET", "/v1/dashboard/billing/subscription", "open");
    assert_eq!((action, sent), (Action::Continue, None));
    // And the rate is the operator's: at 100 credits a dollar, $15,000.
    let cents = setup_with(Config {
        credits_per_usd: 100,
        ..config()
    });
    cents.load_snapshot();
    let (_, sent) = answered(&cents, "GET", "/v1/dashboard/billing/subscription", "quota");
    assert_eq!(json(sent).1["hard_limit_usd"].as_f64(), Some(15_000.0));
}

#[test]
fn a_token_cap_limits_a_key_without_a_quota_and_counts_tokens() {
    let s = setup();
    let cap = ledger::cap_entry("id-tokcap", CapUnit::Tokens, "gpt-4o");
    let body = r#"{"model":"gpt-4o","max_tokens":100}"#;
    let mut request = s.request("POST", CHAT, "tokcap");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.body(&mut request, body, true), Action::Continue);
    assert_eq!(
        s.ledger_named(&cap).reserved,
        (body.len() as u64).div_ceil(4) + 100
    );
    s.respond(&mut request, 200, USAGE);
    request.on_log(&s.fake);
    // 10 input and 5 output tokens; the key has no ledger of its own.
    assert_eq!(s.ledger_named(&cap).unreported, 15);
    let charge = s.records()[0].charge.clone().unwrap();
    assert_eq!((charge.key_ledger, charge.cap), (None, Some((cap, 15))));
    // More tokens than are left: refused.
    let mut big = s.request("POST", CHAT, "tokcap");
    assert_eq!(big.on_request_headers(&s.fake, false), Action::Pause);
    let big_body = r#"{"model":"gpt-4o","max_tokens":1000}"#;
    assert_eq!(s.body(&mut big, big_body, true), Action::Pause);
    assert_eq!(s.status_sent(), Some(429));
}

#[test]
fn a_body_ended_by_trailers_is_decided_then() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "quota");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(
        s.body(&mut request, r#"{"model":"gpt-4o"}"#, false),
        Action::Pause
    );
    assert_eq!(request.on_request_trailers(&s.fake), Action::Continue);
    assert!(s.ledger("id-quota").reserved > 0);
    assert_eq!(s.events(), ["Allowed"]);
    // Trailers after a decided body change nothing.
    assert_eq!(request.on_request_trailers(&s.fake), Action::Continue);
    assert_eq!(s.events(), ["Allowed"]);
}

#[test]
fn a_refused_model_on_the_body_reserves_nothing() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "gpt");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(
        s.body(&mut request, r#"{"model":"o3"}"#, true),
        Action::Pause
    );
    assert_eq!(s.status_sent(), Some(403));
    request.on_log(&s.fake);
    assert!(s.records().is_empty());
    // A body that is not JSON cannot show its model.
    let mut request = s.request("POST", CHAT, "gpt");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.body(&mut request, "model=o3", true), Action::Pause);
    assert_eq!(s.status_sent(), Some(400));
}

#[test]
fn a_reservation_is_given_back_when_a_later_check_refuses() {
    let s = setup();
    let body = r#"{"model":"gpt-4o","max_tokens":10}"#;
    let mut first = s.request("POST", CHAT, "rpm");
    assert_eq!(first.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.body(&mut first, body, true), Action::Continue);
    let held = s.ledger("id-rpm").reserved;
    assert!(held > 0);
    // The second request of the minute reserves, then the rate window refuses it.
    let mut second = s.request("POST", CHAT, "rpm");
    assert_eq!(second.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.body(&mut second, body, true), Action::Pause);
    let sent = s.fake.sent.borrow().clone().unwrap();
    assert_eq!(sent.0, 429);
    assert!(
        sent.1.iter().any(|(n, _)| n == "retry-after"),
        "{:?}",
        sent.1
    );
    assert_eq!(s.ledger("id-rpm").reserved, held);
    second.on_log(&s.fake);
    first.on_log(&s.fake);
    // The first never got an answer: the client left, and is billed what it sent.
    let ledger = s.ledger("id-rpm");
    assert_eq!(ledger.reserved, 0);
    let records = s.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].usage.status, Some(499));
    assert_eq!(
        records[0].usage.input_tokens,
        (body.len() as u64).div_ceil(4)
    );
    assert_eq!(records[0].usage.output_tokens, 0);
}

#[test]
fn a_request_the_host_gave_up_on_is_refused_before_it_is_passed_on_and_billed_after() {
    let s = setup();
    let body = r#"{"model":"gpt-4o","max_tokens":10}"#;
    // Waiting for its body: refused with internal_error, nothing recorded.
    let mut waiting = s.request("POST", CHAT, "quota");
    assert_eq!(waiting.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(waiting.on_failure(&s.fake), Action::Pause);
    let sent = s.fake.sent.borrow().clone().unwrap();
    assert_eq!(sent.0, 500);
    let error: serde_json::Value = serde_json::from_str(&sent.2).unwrap();
    assert_eq!(error["error"]["code"], "internal_error");
    assert!(s.events().contains(&"denied:internal_error".to_string()));
    waiting.on_log(&s.fake);
    assert!(s.records().is_empty());
    // Passed on with a reservation: it goes on, and is billed when it ends.
    *s.fake.sent.borrow_mut() = None;
    let mut passed = s.request("POST", CHAT, "quota");
    assert_eq!(passed.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.body(&mut passed, body, true), Action::Continue);
    assert!(s.ledger("id-quota").reserved > 0);
    assert_eq!(passed.on_failure(&s.fake), Action::Continue);
    assert!(s.fake.sent.borrow().is_none());
    s.respond(&mut passed, 200, r#"{"choices":[]}"#);
    passed.on_log(&s.fake);
    assert_eq!(s.records().len(), 1);
    assert_eq!(s.ledger("id-quota").reserved, 0);
}

#[test]
fn a_client_that_leaves_mid_upload_is_billed_the_bytes_that_arrived() {
    let s = setup();
    // Not limited and not restricted: the body streams on chunk by chunk.
    let mut request = s.request("POST", "/v1/messages", "open");
    assert_eq!(
        request.on_request_headers(&s.fake, false),
        Action::Continue,
        "{:?}",
        s.fake.sent.borrow()
    );
    set(&s.fake.request_headers, "content-length", "999999999");
    for _ in 0..3 {
        assert_eq!(
            request.on_request_body(&s.fake, 400, false),
            Action::Continue
        );
    }
    request.on_log(&s.fake);
    let records = s.records();
    assert_eq!(
        (records[0].usage.status, records[0].usage.input_tokens),
        (Some(499), 300)
    );
}

#[test]
fn a_success_without_usage_is_billed_its_estimate() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "quota");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    let body = r#"{"model":"gpt-4o","max_tokens":7}"#;
    assert_eq!(s.body(&mut request, body, true), Action::Continue);
    s.respond(&mut request, 200, r#"{"choices":[]}"#);
    request.on_log(&s.fake);
    let record = s.records().remove(0);
    assert!(record.usage.estimated);
    let input = (body.len() as u64).div_ceil(4);
    assert_eq!(
        (record.usage.input_tokens, record.usage.output_tokens),
        (input, 7)
    );
    assert_eq!(record.charge.map(|c| c.cost), Some(input + 14));
    assert!(s.events().contains(&"UsageEstimated".to_string()));
    assert_eq!(s.ledger("id-quota").reserved, 0);
}

#[test]
fn a_provider_error_without_usage_bills_nothing_for_output() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "quota");
    request.on_request_headers(&s.fake, false);
    s.body(&mut request, r#"{"model":"gpt-4o"}"#, true);
    s.respond(&mut request, 500, r#"{"error":{"message":"down"}}"#);
    request.on_log(&s.fake);
    let record = s.records().remove(0);
    assert_eq!(
        (record.usage.status, record.usage.output_tokens),
        (Some(500), 0)
    );
    assert_eq!(s.ledger("id-quota").reserved, 0);
}

#[test]
fn a_body_larger_than_the_limit_is_refused_before_and_after_it_arrives() {
    let s = setup();
    let max = s.plugin.config.max_body_bytes;
    // Said in advance.
    let mut request = s.request("POST", CHAT, "quota");
    set(
        &s.fake.request_headers,
        "content-length",
        &(max + 1).to_string(),
    );
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.status_sent(), Some(413));
    // Found out (the length lied or was absent).
    let mut request = s.request("POST", CHAT, "quota");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(
        request.on_request_body(&s.fake, max + 1, false),
        Action::Pause
    );
    assert_eq!(s.status_sent(), Some(413));
    request.on_log(&s.fake);
    assert!(s.records().is_empty());
    assert_eq!(s.ledger("id-quota").reserved, 0);
}

#[test]
fn a_host_that_fails_gets_503_and_never_the_credential_passed_on() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "open");
    s.fake.broken.set(true);
    assert_eq!(request.on_request_headers(&s.fake, true), Action::Pause);
    assert_eq!(s.status_sent(), Some(503));
    assert!(get(&s.fake.request_headers, "authorization").is_some());
    assert_eq!(s.events(), ["denied:key_service_unavailable"]);
}

#[test]
fn a_restricted_keys_model_list_shows_its_models_and_a_refusal_stays_one() {
    let s = setup();
    let mut request = s.request("GET", "/v1/models", "gpt");
    assert_eq!(request.on_request_headers(&s.fake, true), Action::Continue);
    let list = r#"{"object":"list","data":[{"id":"gpt-4o"},{"id":"o3"}]}"#;
    set(&s.fake.response_headers, ":status", "200");
    request.on_response_headers(&s.fake);
    *s.fake.response_body.borrow_mut() = list.as_bytes().to_vec();
    assert_eq!(request.on_response_body(&s.fake, 20, false), Action::Pause);
    assert_eq!(
        request.on_response_body(&s.fake, list.len(), true),
        Action::Continue
    );
    let shown = String::from_utf8(s.fake.response_body.borrow().clone()).unwrap();
    assert!(shown.contains("gpt-4o") && !shown.contains("o3"), "{shown}");

    // A key that may not list models gets its refusal, not a list in its place.
    let mut request = s.request("GET", "/v1/models", "none");
    request.on_request_headers(&s.fake, true);
    set(&s.fake.response_headers, ":status", "401");
    request.on_response_headers(&s.fake);
    assert_eq!(
        get(&s.fake.response_headers, ":status").as_deref(),
        Some("401")
    );
}

#[test]
fn an_openai_stream_gets_usage_asked_for_and_taken_out_again() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "open");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    let body = r#"{"model":"gpt-4o","stream":true}"#;
    assert_eq!(s.body(&mut request, body, true), Action::Continue);
    let sent = String::from_utf8(s.fake.request_body.borrow().clone()).unwrap();
    assert!(sent.contains("include_usage"), "{sent}");
    let length = get(&s.fake.request_headers, "content-length");
    assert_eq!(length, Some(sent.len().to_string()));
    set(&s.fake.response_headers, ":status", "200");
    set(
        &s.fake.response_headers,
        "content-type",
        "text/event-stream",
    );
    request.on_response_headers(&s.fake);
    let stream = concat!(
        "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
        "data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
        "data: [DONE]\n\n",
    );
    *s.fake.response_body.borrow_mut() = stream.as_bytes().to_vec();
    request.on_response_body(&s.fake, stream.len(), true);
    let shown = String::from_utf8(s.fake.response_body.borrow().clone()).unwrap();
    assert!(!shown.contains("prompt_tokens"), "{shown}");
    request.on_log(&s.fake);
    let record = s.records().remove(0);
    assert_eq!(
        (record.usage.input_tokens, record.usage.output_tokens),
        (3, 1)
    );
}

#[test]
fn a_client_that_leaves_while_its_body_is_awaited_is_billed_what_arrived() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "quota");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(
        s.body(&mut request, r#"{"model":"gpt-4o","#, false),
        Action::Pause
    );
    // Nothing was reserved yet: the body decides how much.
    assert_eq!(s.ledger("id-quota").reserved, 0);
    request.on_log(&s.fake);
    let record = s.records().remove(0);
    assert_eq!(
        (record.usage.status, record.usage.input_tokens),
        (Some(499), 5)
    );
    assert_eq!(s.ledger("id-quota"), Ledger::default());
}

#[test]
fn a_request_before_the_first_snapshot_waits_for_it() {
    let s = setup_without_snapshot();
    let mut request = s.request("POST", CHAT, "quota");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Hold);
    let wait = s.plugin.config.first_snapshot_wait_ms;
    assert_eq!(request.held_until(), Some(NOW_MS + wait));
    // Its body comes meanwhile, and is kept.
    let body = r#"{"model":"gpt-4o","max_tokens":10}"#;
    assert_eq!(s.body(&mut request, body, true), Action::Pause);
    assert_eq!(s.fake.sent.borrow().clone(), None);
    // The snapshot comes: decided on its headers and its body at once.
    s.load_snapshot();
    assert_eq!(request.release(&s.fake, true, false), Action::Continue);
    assert_eq!(request.held_until(), None);
    let input = (body.len() as u64).div_ceil(4);
    assert_eq!(s.ledger("id-quota").reserved, input + 20);
    assert_eq!(s.events(), ["Allowed"]);
}

#[test]
fn a_held_request_is_refused_when_no_snapshot_comes_in_time() {
    let s = setup_without_snapshot();
    let mut request = s.request("GET", "/v1/models", "open");
    assert_eq!(request.on_request_headers(&s.fake, true), Action::Hold);
    assert_eq!(request.release(&s.fake, true, false), Action::Pause);
    assert_eq!(s.status_sent(), Some(503));
    // Released twice (a late tick), nothing more happens.
    assert_eq!(request.release(&s.fake, true, false), Action::Pause);
    assert_eq!(s.events(), ["denied:key_service_unavailable"]);
}

#[test]
fn only_a_well_formed_key_waits_and_waiting_can_be_turned_off() {
    let s = setup_without_snapshot();
    let mut request = s.request("GET", "/v1/models", "open");
    set(&s.fake.request_headers, "authorization", "Bearer sk-short");
    assert_eq!(request.on_request_headers(&s.fake, true), Action::Pause);
    assert_eq!(s.status_sent(), Some(401));

    let plugin = Rc::new(Plugin {
        config: Config {
            first_snapshot_wait_ms: 0,
            ..config()
        },
        ..Plugin::default()
    });
    // (The headers of a new request; the request itself runs with the other plugin.)
    let _ = s.request("GET", "/v1/models", "open");
    let mut request = Request::new(plugin);
    assert_eq!(request.on_request_headers(&s.fake, true), Action::Pause);
    assert_eq!(s.status_sent(), Some(503));
}

#[test]
fn a_held_upload_larger_than_the_limit_is_decided_on_its_head() {
    let s = setup_without_snapshot();
    let mut request = s.request("POST", "/v1/audio/transcriptions", "gpt");
    let form = "multipart/form-data; boundary=XX";
    set(&s.fake.request_headers, "content-type", form);
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Hold);
    let file = "a".repeat(s.plugin.config.max_body_bytes + 1);
    let body = format!(
        "--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o\r\n\
         --XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n\
         {file}\r\n--XX--\r\n"
    );
    // All of it came while it was held.
    assert_eq!(s.body(&mut request, &body, true), Action::Pause);
    s.load_snapshot();
    assert_eq!(request.release(&s.fake, true, false), Action::Continue);
    assert_eq!(s.fake.sent.borrow().clone(), None);
}

#[test]
fn bodies_held_at_once_are_bounded_per_vm_and_given_back_however_a_request_ends() {
    let mut s = setup();
    s.plugin = Rc::new(Plugin {
        config: Config {
            max_body_bytes: 100,
            max_held_body_bytes: 100,
            ..config()
        },
        ids: Some(RequestIds::new([1; 16])),
        ..Plugin::default()
    });
    let open = |s: &Setup| {
        let mut request = s.request("POST", CHAT, "quota");
        assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
        request
    };
    let part = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"a long one"}"#;
    let mut first = open(&s);
    assert_eq!(s.body(&mut first, part, false), Action::Pause);
    assert_eq!(s.plugin.held_body_bytes(), part.len());
    // A second body would pass the VM's budget: refused, holding nothing.
    let mut second = open(&s);
    assert_eq!(s.body(&mut second, part, false), Action::Pause);
    assert_eq!(s.status_sent(), Some(503));
    let sent = s.fake.sent.borrow().clone().unwrap();
    assert!(sent.2.contains("\"overloaded\""), "{}", sent.2);
    assert_eq!(s.plugin.held_body_bytes(), part.len());
    // Decided, the first gives its bytes back; so does one whose client leaves.
    assert_eq!(
        s.body(&mut first, &format!("{part}]}}"), true),
        Action::Continue
    );
    assert_eq!(s.plugin.held_body_bytes(), 0);
    let mut third = open(&s);
    assert_eq!(s.body(&mut third, part, false), Action::Pause);
    assert_eq!(s.plugin.held_body_bytes(), part.len());
    drop(third);
    assert_eq!(s.plugin.held_body_bytes(), 0);
}

#[test]
fn a_held_body_is_counted_once_when_its_request_is_released() {
    let mut s = setup_without_snapshot();
    s.plugin = Rc::new(Plugin {
        config: Config {
            max_body_bytes: 100,
            max_held_body_bytes: 100,
            ..config()
        },
        ids: Some(RequestIds::new([1; 16])),
        ..Plugin::default()
    });
    let mut request = s.request("POST", CHAT, "quota");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Hold);
    // 70 of the budget's 100 bytes came while it was held; the rest is on its way.
    let part = format!("{{\"model\":\"gpt-4o\",\"input\":\"{}", "x".repeat(43));
    assert_eq!(s.body(&mut request, &part, false), Action::Pause);
    assert_eq!(s.plugin.held_body_bytes(), part.len());
    s.load_snapshot();
    // Released, it goes on waiting for its body, holding the same bytes (not twice).
    assert_eq!(request.release(&s.fake, true, false), Action::Pause);
    assert_eq!(s.fake.sent.borrow().clone(), None);
    assert_eq!(s.plugin.held_body_bytes(), part.len());
}

/// A body of about `size` bytes whose model comes last, as SDKs write it.
fn big_body(size: usize, model: &str, stream: bool) -> String {
    let text = "x".repeat(size);
    format!(
        r#"{{"messages":[{{"role":"user","content":"{text}"}}],"stream":{stream},"model":"{model}"}}"#
    )
}

/// The body arrives in `chunk`-byte pieces; Envoy buffers them and tells the size so far.
fn arrive_in_pieces(s: &Setup, request: &mut Request, body: &str, chunk: usize) -> Action {
    let mut action = Action::Pause;
    let mut size = 0;
    while size < body.len() {
        size = (size + chunk).min(body.len());
        *s.fake.request_body.borrow_mut() = body.as_bytes()[..size].to_vec();
        action = request.on_request_body(&s.fake, size, size == body.len());
        if action != Action::Pause || s.status_sent().is_some() {
            break;
        }
    }
    action
}

#[test]
fn a_big_body_is_read_in_windows_as_it_arrives_never_whole() {
    let s = setup();
    for (model, expected) in [("gpt-4o", None), ("gpt-4o-mini", Some(403))] {
        let mut request = s.request("POST", CHAT, "gpt");
        assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
        s.fake.body_reads.borrow_mut().clear();
        let body = big_body(900_000, model, false);
        let action = arrive_in_pieces(&s, &mut request, &body, 100_000);
        assert_eq!(s.status_sent(), expected, "{model}");
        let want = if expected.is_some() {
            Action::Pause
        } else {
            Action::Continue
        };
        assert_eq!(action, want, "{model}");
        let reads = s.fake.body_reads.borrow();
        assert!(reads.iter().all(|&n| n <= 64 * 1024), "{reads:?}");
        // Each byte is read once.
        assert_eq!(reads.iter().sum::<usize>(), body.len());
    }
}

#[test]
fn a_body_that_cannot_be_json_is_refused_before_it_all_came() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "gpt");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    let body = format!("{{\"model\" 1, {}}}", "x".repeat(500_000));
    arrive_in_pieces(&s, &mut request, &body, 1000);
    assert_eq!(s.status_sent(), Some(400));
    assert_eq!(s.fake.body_reads.borrow().len(), 1);
}

#[test]
fn a_big_stream_asks_for_usage_without_being_read_whole() {
    let s = setup();
    let mut request = s.request("POST", CHAT, "open");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    let body = big_body(500_000, "gpt-4o", true);
    assert_eq!(
        arrive_in_pieces(&s, &mut request, &body, 65_536),
        Action::Continue
    );
    assert!(s.fake.body_reads.borrow().iter().all(|&n| n <= 64 * 1024));
    let sent = s.fake.request_body.borrow().clone();
    let sent: serde_json::Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(
        sent["stream_options"]["include_usage"],
        serde_json::Value::Bool(true)
    );
    assert_eq!(sent["model"], "gpt-4o");
    let length = get(&s.fake.request_headers, "content-length").unwrap();
    assert_eq!(length, s.fake.request_body.borrow().len().to_string());
}

#[test]
fn an_upload_is_read_in_windows_for_its_model_wherever_the_field_is() {
    let s = setup();
    let file = "a".repeat(600_000);
    let model = "--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nMODEL\r\n";
    let audio = format!("--XX\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n{file}\r\n");
    for (model_first, name, refused) in [
        (false, "gpt-4o", None),
        (false, "gpt-4o-mini", Some(403)),
        (true, "gpt-4o", None),
    ] {
        let model = model.replace("MODEL", name);
        let body = match model_first {
            true => format!("{model}{audio}--XX--\r\n"),
            false => format!("{audio}{model}--XX--\r\n"),
        };
        let mut request = s.request("POST", "/v1/audio/transcriptions", "gpt");
        set(
            &s.fake.request_headers,
            "content-type",
            "multipart/form-data; boundary=XX",
        );
        assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
        s.fake.body_reads.borrow_mut().clear();
        let action = arrive_in_pieces(&s, &mut request, &body, 100_000);
        assert_eq!(s.status_sent(), refused, "{name}");
        if refused.is_none() {
            assert_eq!(action, Action::Continue);
        }
        let reads = s.fake.body_reads.borrow().clone();
        assert!(reads.iter().all(|&n| n <= 64 * 1024), "{reads:?}");
        // With the model first, it is decided on the first piece: the file is not read.
        let read: usize = reads.iter().sum();
        assert!(!model_first || read <= 100_000, "{read}");
    }
}

#[test]
fn an_upload_that_is_no_form_is_refused_before_it_all_came() {
    let s = setup();
    let mut request = s.request("POST", "/v1/audio/transcriptions", "gpt");
    set(
        &s.fake.request_headers,
        "content-type",
        "multipart/form-data; boundary=XX",
    );
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    let body = format!("--XX junk {}", "a".repeat(500_000));
    arrive_in_pieces(&s, &mut request, &body, 1000);
    assert_eq!(s.status_sent(), Some(400));
    // Refused on the first piece, not after the last.
    assert_eq!(s.fake.request_body.borrow().len(), 1000);
}

/// With credit leases: the leader's ask for every ledger due, answered by `grant`
/// (`None`: the key-service could not be reached), as the root does it.
fn answer_leases(s: &Setup, book: &mut credit::Book, grant: Option<u64>) -> Vec<credit::Item> {
    let now = s.fake.now_ms.get();
    let ttl = s.plugin.config.credit_lease_ttl_ms;
    let items = book.due(&s.fake.shared, now, ttl).unwrap();
    let answer = grant.map(|granted| credit::AnswerWire {
        leases: items
            .iter()
            .map(|item| credit::GrantWire {
                subject: credit::subject(&item.ledger).unwrap().into(),
                limited: true,
                granted,
            })
            .collect(),
    });
    book.answered(&s.fake.shared, &items, answer.as_ref(), now, ttl)
        .unwrap();
    items
}

fn setup_with_leases() -> Setup {
    let s = setup_with(Config::default());
    s.load_snapshot();
    s
}

#[test]
fn a_limited_key_without_a_lease_waits_for_one_and_goes_on() {
    let s = setup_with_leases();
    let mut book = credit::Book::default();
    let mut request = s.request("POST", CHAT, "quota");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    let body = r#"{"model":"gpt-4o","max_tokens":100,"stream":true}"#;
    assert_eq!(s.body(&mut request, body, true), Action::Hold);
    let estimate = (body.len() as u64).div_ceil(4) + 200;
    assert_eq!(s.ledger("id-quota").need, estimate);
    // No answer yet: it waits on.
    assert_eq!(request.release(&s.fake, true, false), Action::Hold);
    let items = answer_leases(&s, &mut book, Some(10 * estimate));
    assert_eq!((items[0].need, items[0].want), (estimate, 2 * estimate));
    // Answered: reserved in the lease, and the stream made to ask for usage as before.
    assert_eq!(request.release(&s.fake, true, false), Action::Continue);
    let ledger = s.ledger("id-quota");
    assert_eq!((ledger.reserved, ledger.granted), (estimate, 10 * estimate));
    assert!(String::from_utf8_lossy(&s.fake.request_body.borrow()).contains("include_usage"));
    assert_eq!(s.events(), ["Allowed"]);
    // It ends: what it cost is spent from the lease, its estimate no longer held.
    s.respond(&mut request, 200, USAGE);
    request.on_log(&s.fake);
    let ledger = s.ledger("id-quota");
    assert_eq!((ledger.reserved, ledger.spent), (0, 20));
    // The next request fits the lease: no wait.
    let mut next = s.request("POST", CHAT, "quota");
    assert_eq!(next.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.body(&mut next, body, true), Action::Continue);
}

#[test]
fn a_lease_too_small_refuses_and_an_ask_that_fails_or_never_comes_is_503() {
    let s = setup_with_leases();
    let mut book = credit::Book::default();
    let body = r#"{"model":"gpt-4o","max_tokens":100}"#;
    let wait = |s: &Setup| {
        let mut request = s.request("POST", CHAT, "quota");
        assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
        assert_eq!(s.body(&mut request, body, true), Action::Hold);
        request
    };
    // The key-service grants less than the request may cost: 429, as without leases.
    let mut request = wait(&s);
    answer_leases(&s, &mut book, Some(1));
    assert_eq!(request.release(&s.fake, true, false), Action::Pause);
    assert_eq!(s.status_sent(), Some(429));
    // The ask fails: 503.
    let mut request = wait(&s);
    answer_leases(&s, &mut book, None);
    assert_eq!(request.release(&s.fake, true, false), Action::Pause);
    assert_eq!(s.status_sent(), Some(503));
    // No answer within credit_lease_wait_ms: 503.
    let mut request = wait(&s);
    let waited = s.plugin.config.credit_lease_wait_ms;
    s.fake.now_ms.set(NOW_MS + waited);
    assert_eq!(request.release(&s.fake, true, false), Action::Pause);
    assert_eq!(s.status_sent(), Some(503));
    // Too many held: refused at once.
    let mut request = wait(&s);
    assert_eq!(request.release(&s.fake, true, true), Action::Pause);
    assert_eq!(s.status_sent(), Some(503));
    assert_eq!(
        s.events(),
        [
            "denied:insufficient_quota",
            "denied:key_service_unavailable",
            "denied:key_service_unavailable",
            "denied:overloaded"
        ]
    );
    // None of them holds anything.
    assert_eq!(s.ledger("id-quota").reserved, 0);
}

#[test]
fn a_bodyless_request_waits_for_a_lease_too() {
    let s = setup_with_leases();
    let mut book = credit::Book::default();
    // The path names the model; the estimate is the default output limit.
    let path = "/openai/deployments/gpt-4o/chat/completions";
    let mut request = s.request("POST", path, "quota");
    assert_eq!(request.on_request_headers(&s.fake, true), Action::Hold);
    answer_leases(&s, &mut book, Some(1_000_000));
    assert_eq!(request.release(&s.fake, true, false), Action::Continue);
    assert_eq!(s.events(), ["Allowed"]);
}

#[test]
fn a_price_set_a_moment_ago_is_used_before_the_vms_tick_reads_it() {
    let s = setup();
    let body = r#"{"model":"o3","max_tokens":10}"#;
    let call = |s: &Setup| {
        let mut request = s.request("POST", CHAT, "quota");
        assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
        s.body(&mut request, body, true)
    };
    // o3 has no price: a limited key may not call it.
    assert_eq!(call(&s), Action::Pause);
    assert_eq!(s.status_sent(), Some(403));
    // The leader writes a snapshot that prices it; this VM's view is older.
    let mut priced = snapshot();
    priced.version = 8;
    priced.prices.push(PriceRecord {
        name: "o3".into(),
        ..priced.prices[0].clone()
    });
    let mut leader = Leader::new(100);
    leader.next_ask(&s.fake.shared).unwrap();
    leader.apply(&s.fake.shared, priced, NOW_MS).unwrap();
    assert_eq!(s.plugin.view.borrow().as_ref().unwrap().meta.version, 7);
    let mut request = s.request("POST", CHAT, "quota");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.body(&mut request, body, true), Action::Continue);
    // Settled at the price it was admitted on, though this VM's tables still lack it:
    // 10 input tokens at 1, 5 output tokens at 2.
    s.respond(&mut request, 200, USAGE);
    request.on_log(&s.fake);
    assert_eq!(s.ledger("id-quota").unreported, 20);
    assert_eq!(s.records()[0].charge.as_ref().map(|c| c.cost), Some(20));
}

#[test]
fn with_leases_a_rate_limited_key_waits_for_its_share_of_the_limit() {
    let s = setup_with_leases();
    let mut book = credit::Book::default();
    // `rpm`: one request a minute; this Envoy holds no share of it yet.
    let mut request = s.request("GET", "/v1/models", "rpm");
    assert_eq!(request.on_request_headers(&s.fake, true), Action::Hold);
    let share = credit::share_entry('r', "id-rpm");
    let items = answer_leases(&s, &mut book, Some(1));
    assert_eq!(items.len(), 1);
    // Asked for one more request beyond the none its window counts.
    assert_eq!(
        (items[0].ledger.as_str(), items[0].spent, items[0].need),
        (share.as_str(), 0, 1)
    );
    assert_eq!(request.release(&s.fake, true, false), Action::Continue);
    // The key's own limit is full now: refused at once, no ask.
    let mut next = s.request("GET", "/v1/models", "rpm");
    assert_eq!(next.on_request_headers(&s.fake, true), Action::Pause);
    assert_eq!(s.status_sent(), Some(429));
    assert_eq!(s.events(), ["Allowed", "denied:rate_limit_exceeded"]);
}

#[test]
fn with_leases_a_share_that_cannot_grow_refuses_429_and_a_failed_ask_503() {
    let s = setup_with_leases();
    let mut book = credit::Book::default();
    let mut request = s.request("GET", "/v1/models", "rpm");
    assert_eq!(request.on_request_headers(&s.fake, true), Action::Hold);
    // Other Envoys hold the whole limit: nothing granted.
    answer_leases(&s, &mut book, Some(0));
    assert_eq!(request.release(&s.fake, true, false), Action::Pause);
    assert_eq!(s.status_sent(), Some(429));
    let mut request = s.request("GET", "/v1/models", "rpm");
    assert_eq!(request.on_request_headers(&s.fake, true), Action::Hold);
    answer_leases(&s, &mut book, None);
    assert_eq!(request.release(&s.fake, true, false), Action::Pause);
    assert_eq!(s.status_sent(), Some(503));
}

/// With leases a key's cap on a model is spent from a lease of its own (a fleet cannot
/// overspend it): a request waits for the key's lease and the cap's, asked for in one
/// ask, and one the cap's answer does not cover is refused `model_budget_exceeded`,
/// giving back what it reserved in the key's.
#[test]
fn with_leases_a_model_cap_is_spent_from_a_lease_of_its_own() {
    let s = setup_with_leases();
    let mut book = credit::Book::default();
    let cap = ledger::cap_entry("id-capped", CapUnit::Credits, "gpt-*");
    let body = r#"{"model":"gpt-4o","max_tokens":100,"messages":[]}"#;
    let estimate = (body.len() as u64).div_ceil(4) + 200;
    let wait = |s: &Setup| {
        let mut request = s.request("POST", CHAT, "capped");
        assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
        assert_eq!(s.body(&mut request, body, true), Action::Hold);
        request
    };
    // The key-service grants the key ten estimates, the cap one.
    let answer = |s: &Setup, book: &mut credit::Book| {
        let now = s.fake.now_ms.get();
        let ttl = s.plugin.config.credit_lease_ttl_ms;
        let items = book.due(&s.fake.shared, now, ttl).unwrap();
        let leases = items.iter().map(|item| {
            let subject = credit::subject(&item.ledger).unwrap();
            let granted = if subject.starts_with("m:") {
                estimate
            } else {
                10 * estimate
            };
            credit::GrantWire {
                subject: subject.into(),
                limited: true,
                granted,
            }
        });
        let answer = credit::AnswerWire {
            leases: leases.collect(),
        };
        book.answered(&s.fake.shared, &items, Some(&answer), now, ttl)
            .unwrap();
        items
    };
    let mut request = wait(&s);
    // Nothing held while it waits; both needs in one ask.
    assert_eq!(s.ledger("id-capped").reserved, 0);
    assert_eq!(s.ledger_named(&cap).need, estimate);
    let items = answer(&s, &mut book);
    let subjects: Vec<_> = items
        .iter()
        .filter_map(|item| credit::subject(&item.ledger))
        .collect();
    assert_eq!(subjects, ["k:id-capped", "m:id-capped:credits:gpt-*"]);
    assert_eq!(request.release(&s.fake, true, false), Action::Continue);
    assert_eq!(s.ledger("id-capped").reserved, estimate);
    assert_eq!(s.ledger_named(&cap).reserved, estimate);
    s.respond(&mut request, 200, USAGE);
    request.on_log(&s.fake);
    let held = s.ledger_named(&cap);
    assert_eq!((held.reserved, held.spent), (0, 20));
    // The cap's lease has estimate - 20 left: the next must ask, and an answer that
    // grants nothing more refuses it with the cap's code; the key's reservation goes.
    let mut next = s.request("POST", CHAT, "capped");
    assert_eq!(next.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.body(&mut next, body, true), Action::Hold);
    let items = answer(&s, &mut book);
    assert_eq!(items.len(), 1, "the key's lease covers it: {items:?}");
    assert_eq!(next.release(&s.fake, true, false), Action::Pause);
    let (status, _, sent) = s.fake.sent.borrow().clone().unwrap();
    assert_eq!(status, 429);
    assert!(sent.contains("model_budget_exceeded"), "{sent}");
    assert_eq!(s.ledger("id-capped").reserved, 0);
    assert_eq!(s.ledger_named(&cap).reserved, 0);
}

/// A model name with a control character in it is the name without it to the
/// key-service, which bills (and caps) it so: the filter counts it against the same cap.
#[test]
fn an_unprintable_model_counts_against_the_cap_the_key_service_bills() {
    let s = setup();
    let cap = ledger::cap_entry("id-tokcap", CapUnit::Tokens, "gpt-4o");
    let body = r#"{"model":"gpt-4o\u0001","max_tokens":100}"#;
    let mut request = s.request("POST", CHAT, "tokcap");
    assert_eq!(request.on_request_headers(&s.fake, false), Action::Pause);
    assert_eq!(s.body(&mut request, body, true), Action::Continue);
    assert_eq!(
        s.ledger_named(&cap).reserved,
        (body.len() as u64).div_ceil(4) + 100
    );
    s.respond(&mut request, 200, USAGE);
    request.on_log(&s.fake);
    let record = &s.records()[0];
    assert_eq!(record.usage.model.as_deref(), Some("gpt-4o"));
    assert_eq!(record.charge.clone().unwrap().cap, Some((cap, 15)));
}
