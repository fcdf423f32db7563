//! The authorization decision and the contract's table of refusals: each `Denial` knows
//! its HTTP status, its OpenAI-style `type` and `code`, and its message.

use std::net::IpAddr;

use crate::decide::error::ErrorBody;
use crate::keys::entry::Entry;
use crate::keys::secret::{self, KeyHash};
use crate::sync::snapshot::Tables;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    MissingApiKey,
    InvalidApiKey,
    KeyDisabled,
    KeyExpired,
    IpNotAllowed,
    ModelNotAllowed,
    InsufficientQuota,
    RateLimitExceeded,
    InvalidRequestBody,
    RequestTooLarge,
    KeyServiceUnavailable,
    ModelNotPriced,
    EndpointNotMetered,
    InvalidRequestHeader,
    Overloaded,
    ModelBudgetExceeded,
    /// A bug in the filter was caught on this request's way (the native build contains a
    /// panic in a hook; a Wasm VM that panics is gone with its requests).
    FilterFailed,
}

impl Denial {
    /// Every refusal, for tables and stats.
    pub const ALL: [Denial; 17] = [
        Denial::MissingApiKey,
        Denial::InvalidApiKey,
        Denial::KeyDisabled,
        Denial::KeyExpired,
        Denial::IpNotAllowed,
        Denial::ModelNotAllowed,
        Denial::InsufficientQuota,
        Denial::RateLimitExceeded,
        Denial::InvalidRequestBody,
        Denial::RequestTooLarge,
        Denial::KeyServiceUnavailable,
        Denial::ModelNotPriced,
        Denial::EndpointNotMetered,
        Denial::InvalidRequestHeader,
        Denial::Overloaded,
        Denial::ModelBudgetExceeded,
        Denial::FilterFailed,
    ];

    /// `(status, type, code, message)`: the contract's error table, in one place.
    const fn parts(self) -> (u32, &'static str, &'static str, &'static str) {
        use Denial::*;
        const INVALID: &str = "invalid_request_error";
        match self {
            MissingApiKey => (
                401,
                INVALID,
                "missing_api_key",
                "No API key provided. Pass it as 'Authorization: Bearer sk-...'.",
            ),
            InvalidApiKey => (
                401,
                INVALID,
                "invalid_api_key",
                "Incorrect API key provided.",
            ),
            KeyDisabled => (
                401,
                INVALID,
                "key_disabled",
                "This API key has been disabled.",
            ),
            KeyExpired => (401, INVALID, "key_expired", "This API key has expired."),
            IpNotAllowed => (
                403,
                "permission_error",
                "ip_not_allowed",
                "Requests from this address are not allowed for this API key.",
            ),
            ModelNotAllowed => (
                403,
                "permission_error",
                "model_not_allowed",
                "This API key is not allowed to use the requested model.",
            ),
            InsufficientQuota => (
                429,
                "insufficient_quota",
                "insufficient_quota",
                "You exceeded your current quota.",
            ),
            RateLimitExceeded => (
                429,
                "rate_limit_error",
                "rate_limit_exceeded",
                "Rate limit reached for this API key.",
            ),
            InvalidRequestBody => (
                400,
                INVALID,
                "invalid_request_body",
                "The request body is not valid JSON.",
            ),
            RequestTooLarge => (
                413,
                INVALID,
                "request_too_large",
                "The request body is too large.",
            ),
            KeyServiceUnavailable => (
                503,
                "server_error",
                "key_service_unavailable",
                "The key service has not been reached yet; try again shortly.",
            ),
            Overloaded => (
                503,
                "server_error",
                "overloaded",
                "The gateway holds too many request bodies now; try again shortly.",
            ),
            ModelNotPriced => (
                403,
                "permission_error",
                "model_not_priced",
                "The requested model has no price, so this key's limit cannot be kept.",
            ),
            EndpointNotMetered => (
                403,
                "permission_error",
                "endpoint_not_metered",
                "This endpoint's usage cannot be metered, so it is not open to keys with a limit.",
            ),
            InvalidRequestHeader => (
                400,
                INVALID,
                "invalid_request_header",
                "A request header is not valid UTF-8.",
            ),
            ModelBudgetExceeded => (
                429,
                "insufficient_quota",
                "model_budget_exceeded",
                "This API key's budget for the requested model is used up for its period.",
            ),
            FilterFailed => (
                500,
                "server_error",
                "internal_error",
                "The gateway failed on this request and has logged it; try again.",
            ),
        }
    }

    pub const fn status(self) -> u32 {
        self.parts().0
    }

    pub const fn code(self) -> &'static str {
        self.parts().2
    }

    /// The OpenAI-style JSON error body.
    pub fn body(self) -> String {
        let (_, kind, code, message) = self.parts();
        ErrorBody::new(kind, code, message).to_json()
    }

    /// As `body`, naming the requested model where the refusal is about it (the name is
    /// the client's: cut to 64 printable characters, and escaped as JSON).
    pub fn body_naming(self, model: Option<&str>) -> String {
        let (_, kind, code, _) = self.parts();
        match (self, model) {
            (Denial::ModelBudgetExceeded, Some(model)) => {
                let model = crate::decide::model::printable(model, 64);
                let message = format!(
                    "This API key's budget for the model {model} is used up for its period."
                );
                ErrorBody::new(kind, code, message).to_json()
            }
            _ => self.body(),
        }
    }
}

/// Whether the key's or its group's model list restricts models, so that the request's
/// model must be known (and its body read, if the path does not name it).
pub fn restricts_models(tables: &Tables, key: &Entry) -> bool {
    key.restricts_models() || tables.group_models(key.group()).is_restricted()
}

/// Checks the requested model (`None` when the request names none) against the key's
/// and its group's lists; both must allow it.
pub fn check_model(tables: &Tables, key: &Entry, model: Option<&str>) -> Result<(), Denial> {
    if !restricts_models(tables, key) {
        return Ok(());
    }
    match model {
        Some(m) if key.allows_model(m) && tables.group_models(key.group()).allows(m) => Ok(()),
        _ => Err(Denial::ModelNotAllowed),
    }
}

/// Decides a request from the presented secret (if any), the snapshot's tables (if one
/// has loaded), a lookup of keys by hash, the filter's clock in Unix seconds, and the
/// client's address, which is only looked up for a key with an IP allowlist. The lookup
/// may fail (the host refused): that is the key-service's 503, not the client's fault.
pub fn decide(
    tables: Option<&Tables>,
    secret: Option<&str>,
    now: i64,
    lookup: impl FnOnce(&KeyHash) -> Result<Option<Entry>, Denial>,
    client_ip: impl FnOnce() -> Option<IpAddr>,
) -> Result<Entry, Denial> {
    let secret = secret.ok_or(Denial::MissingApiKey)?;
    // A malformed secret is refused before any lookup, snapshot or not.
    if !secret::is_well_formed(secret) {
        return Err(Denial::InvalidApiKey);
    }
    let tables = tables.ok_or(Denial::KeyServiceUnavailable)?;
    let key = lookup(&secret::hash(secret))?.ok_or(Denial::InvalidApiKey)?;
    if !key.enabled() {
        return Err(Denial::KeyDisabled);
    }
    if key.expires_at.is_some_and(|at| at <= now) {
        return Err(Denial::KeyExpired);
    }
    if key.restricts_ips() && !key.admits(client_ip()) {
        return Err(Denial::IpNotAllowed);
    }
    let quota_left = key.remaining_at(now).is_none_or(|left| left > 0);
    if !quota_left || !tables.account_has_credit(key.account(), now) {
        return Err(Denial::InsufficientQuota);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::keys::entry;
    use crate::sync::snapshot::{AccountRecord, GroupRecord, KeyRecord, TablesWire};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW: i64 = 1_800_000_000;

    fn secret(n: u8) -> String {
        let random: String = (0..42).map(|i| (b'a' + (i + n) % 26) as char).collect();
        secret::from_random(&random).unwrap()
    }

    /// The snapshot record of test key number `i` (whose secret is `secret(i)`).
    fn record(i: usize, id: &str, enabled: bool, expires_at: Option<i64>) -> KeyRecord {
        KeyRecord {
            id: id.to_string(),
            name: id.to_string(),
            hash: secret::hash_hex(&secret::hash(&secret(i as u8))),
            account: "default".into(),
            group: "default".into(),
            enabled,
            expires_at,
            ip_allowlist: vec![],
            models: vec![],
            remaining_quota: None,
            period_end: None,
            period_quota: None,
            quota: None,
            model_caps: vec![],
            rpm: None,
            tpm: None,
            max_parallel: None,
        }
    }

    /// Keys as the filter finds them in shared data.
    struct Keys(HashMap<KeyHash, Entry>);

    impl Keys {
        fn of(records: Vec<KeyRecord>) -> Keys {
            Keys(
                records
                    .iter()
                    .map(|r| {
                        let hash = secret::parse_hash_hex(&r.hash).unwrap();
                        (hash, entry::decode(entry::encode(r, 1).unwrap().1).unwrap())
                    })
                    .collect(),
            )
        }

        fn lookup(&self) -> impl FnOnce(&KeyHash) -> Result<Option<Entry>, Denial> + '_ {
            |hash| Ok(self.0.get(hash).cloned())
        }

        fn get(&self, i: u8) -> &Entry {
            &self.0[&secret::hash(&secret(i))]
        }
    }

    fn keys(list: &[(&str, bool, Option<i64>)]) -> Keys {
        Keys::of(
            list.iter()
                .enumerate()
                .map(|(i, (id, enabled, expires_at))| record(i, id, *enabled, *expires_at))
                .collect(),
        )
    }

    fn no_ip() -> Option<IpAddr> {
        None
    }

    fn denial(d: Result<Entry, Denial>) -> Option<Denial> {
        d.err()
    }

    fn open() -> Tables {
        Tables::default()
    }

    #[test]
    fn each_key_state_gets_its_answer() {
        let k = keys(&[
            ("live", true, None),
            ("off", false, None),
            ("old", true, Some(NOW)),
            ("later", true, Some(NOW + 1)),
        ]);
        let t = open();
        let check = |s: Option<&str>| denial(decide(Some(&t), s, NOW, k.lookup(), no_ip));
        assert_eq!(check(Some(&secret(0))), None);
        assert_eq!(check(Some(&secret(1))), Some(Denial::KeyDisabled));
        assert_eq!(check(Some(&secret(2))), Some(Denial::KeyExpired));
        assert_eq!(check(Some(&secret(3))), None);
        assert_eq!(check(Some(&secret(9))), Some(Denial::InvalidApiKey));
        assert_eq!(
            check(Some("sk-not-a-real-key")),
            Some(Denial::InvalidApiKey)
        );
        assert_eq!(check(None), Some(Denial::MissingApiKey));
    }

    #[test]
    fn the_allowed_entry_is_the_presented_key() {
        let k = keys(&[("a", true, None), ("b", true, None)]);
        let entry = decide(Some(&open()), Some(&secret(1)), NOW, k.lookup(), no_ip).unwrap();
        assert_eq!(entry.id(), "b");
    }

    #[test]
    fn expired_key_is_denied_by_the_clock_without_a_new_snapshot() {
        let k = keys(&[("soon", true, Some(NOW + 60))]);
        let at = |now| {
            denial(decide(
                Some(&open()),
                Some(&secret(0)),
                now,
                k.lookup(),
                no_ip,
            ))
        };
        assert_eq!(at(NOW + 59), None);
        assert_eq!(at(NOW + 60), Some(Denial::KeyExpired));
    }

    #[test]
    fn without_a_snapshot_only_well_formed_keys_get_503() {
        let never = |_: &KeyHash| -> Result<Option<Entry>, Denial> { panic!("looked up") };
        assert_eq!(
            denial(decide(None, None, NOW, never, no_ip)),
            Some(Denial::MissingApiKey)
        );
        assert_eq!(
            denial(decide(None, Some("sk-x"), NOW, never, no_ip)),
            Some(Denial::InvalidApiKey)
        );
        assert_eq!(
            denial(decide(None, Some(&secret(0)), NOW, never, no_ip)),
            Some(Denial::KeyServiceUnavailable)
        );
        // A lookup the host refused is the service's failure, not an unknown key.
        let failing = |_: &KeyHash| Err(Denial::KeyServiceUnavailable);
        assert_eq!(
            denial(decide(Some(&open()), Some(&secret(0)), NOW, failing, no_ip)),
            Some(Denial::KeyServiceUnavailable)
        );
    }

    #[test]
    fn a_key_with_an_allowlist_admits_only_listed_sources() {
        let mut lan = record(0, "lan", true, None);
        lan.ip_allowlist = vec!["10.0.0.0/8".into()];
        let k = Keys::of(vec![lan, record(1, "open", true, None)]);
        let t = open();
        let from = |addr: &str| {
            let ip: IpAddr = addr.parse().unwrap();
            move || Some(ip)
        };
        let lan = || Some(secret(0));
        let check = |ip| denial(decide(Some(&t), lan().as_deref(), NOW, k.lookup(), ip));
        assert_eq!(check(from("10.1.2.3")), None);
        assert_eq!(check(from("192.0.2.1")), Some(Denial::IpNotAllowed));
        assert_eq!(
            denial(decide(Some(&t), Some(&secret(0)), NOW, k.lookup(), no_ip)),
            Some(Denial::IpNotAllowed)
        );
        // A key without an allowlist never asks for the address.
        let never = || -> Option<IpAddr> { panic!("address looked up for an open key") };
        assert_eq!(
            denial(decide(Some(&t), Some(&secret(1)), NOW, k.lookup(), never)),
            None
        );
    }

    #[test]
    fn a_model_budget_refusal_names_the_model_and_no_more() {
        let body = |model| -> serde_json::Value {
            serde_json::from_str(&Denial::ModelBudgetExceeded.body_naming(model)).unwrap()
        };
        let named = body(Some("claude-opus-4"));
        assert_eq!(named["error"]["code"], "model_budget_exceeded");
        assert!(named["error"]["message"]
            .as_str()
            .unwrap()
            .contains("claude-opus-4"));
        // A hostile name is cut short, without control characters, and stays JSON.
        let hostile = format!("\"}}\n\u{0}{}", "x".repeat(10_000));
        let message = body(Some(&hostile))["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.len() < 200 && !message.contains('\n'), "{message}");
        assert_eq!(
            body(None),
            serde_json::from_str::<serde_json::Value>(&Denial::ModelBudgetExceeded.body()).unwrap()
        );
        // Other refusals are as always.
        assert_eq!(
            Denial::InsufficientQuota.body_naming(Some("m")),
            Denial::InsufficientQuota.body()
        );
    }

    #[test]
    fn credit_needs_both_key_quota_and_account_balance() {
        let mut spent = record(0, "spent", false, None);
        spent.remaining_quota = Some(0);
        let mut left = record(1, "left", true, None);
        left.remaining_quota = Some(10);
        let mut spent_live = record(2, "spent-live", true, None);
        spent_live.remaining_quota = Some(0);
        let mut broke = record(3, "broke", true, None);
        broke.account = "broke".into();
        let mut owing = record(4, "owing", true, Some(NOW + 9));
        owing.account = "owing".into();
        owing.remaining_quota = Some(-3);
        let k = Keys::of(vec![spent, left, spent_live, broke, owing]);
        let t = Tables::new(TablesWire {
            groups: vec![],
            accounts: vec![
                AccountRecord {
                    name: "default".into(),
                    balance: None,
                    period_end: None,
                    period_balance: None,
                },
                AccountRecord {
                    name: "broke".into(),
                    balance: Some(0),
                    period_end: None,
                    period_balance: None,
                },
            ],
            prices: vec![],
        });
        let check = |i: u8| denial(decide(Some(&t), Some(&secret(i)), NOW, k.lookup(), no_ip));
        assert_eq!(
            check(0),
            Some(Denial::KeyDisabled),
            "disabled says so first"
        );
        assert_eq!(check(1), None);
        assert_eq!(check(2), Some(Denial::InsufficientQuota));
        assert_eq!(check(3), Some(Denial::InsufficientQuota));
        assert_eq!(check(4), Some(Denial::InsufficientQuota));
    }

    #[test]
    fn a_spent_budget_starts_afresh_when_its_period_ends() {
        // A key that spent its period's quota, and an account that spent its period's
        // limit, both until NOW + 10; the snapshot has not caught up with the next period.
        let mut spent = record(0, "spent", true, None);
        spent.remaining_quota = Some(0);
        spent.period_end = Some(NOW + 10);
        spent.period_quota = Some(500);
        let mut team = record(1, "team", true, None);
        team.account = "team".into();
        let k = Keys::of(vec![spent, team]);
        let t = Tables::new(TablesWire {
            groups: vec![],
            accounts: vec![
                AccountRecord {
                    name: "default".into(),
                    balance: None,
                    period_end: None,
                    period_balance: None,
                },
                AccountRecord {
                    name: "team".into(),
                    balance: Some(0),
                    period_end: Some(NOW + 10),
                    period_balance: Some(70),
                },
            ],
            prices: vec![],
        });
        let check = |i: u8, now| denial(decide(Some(&t), Some(&secret(i)), now, k.lookup(), no_ip));
        for i in [0, 1] {
            assert_eq!(
                check(i, NOW + 9),
                Some(Denial::InsufficientQuota),
                "key {i}"
            );
            assert_eq!(check(i, NOW + 10), None, "key {i} at the period's end");
            assert_eq!(check(i, i64::MAX), None, "key {i} long after");
        }
        assert_eq!(t.balance("team", NOW + 9), Some(0));
        assert_eq!(t.balance("team", NOW + 10), Some(70));
    }

    #[test]
    fn a_model_must_be_allowed_by_both_the_key_and_its_group() {
        let strings = |l: &[&str]| l.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        let mut open = record(0, "open", true, None);
        open.group = "cheap".into();
        let mut narrow = record(1, "narrow", true, None);
        narrow.group = "default".into();
        narrow.models = strings(&["gpt-4o-mini"]);
        let mut free = record(2, "free", true, None);
        free.group = "default".into();
        let t = Tables::new(TablesWire {
            groups: vec![
                GroupRecord {
                    name: "default".into(),
                    models: strings(&["*"]),
                    ratio: 1.0,
                    rpm: None,
                    tpm: None,
                },
                GroupRecord {
                    name: "cheap".into(),
                    models: strings(&["gpt-4o-mini", "claude-haiku"]),
                    ratio: 1.0,
                    rpm: None,
                    tpm: None,
                },
            ],
            accounts: vec![],
            prices: vec![],
        });
        let k = Keys::of(vec![open, narrow, free]);
        let (open, narrow, free) = (k.get(0), k.get(1), k.get(2));

        assert!(restricts_models(&t, open));
        assert!(restricts_models(&t, narrow));
        assert!(!restricts_models(&t, free));
        let denied = Err(Denial::ModelNotAllowed);
        assert_eq!(check_model(&t, open, Some("claude-haiku")), Ok(()));
        assert_eq!(check_model(&t, open, Some("gpt-4o")), denied);
        assert_eq!(check_model(&t, narrow, Some("gpt-4o-mini")), Ok(()));
        assert_eq!(check_model(&t, narrow, Some("claude-haiku")), denied);
        assert_eq!(check_model(&t, narrow, None), denied);
        assert_eq!(check_model(&t, free, None), Ok(()));
        assert_eq!(check_model(&t, free, Some("anything")), Ok(()));
    }

    #[test]
    fn error_bodies_follow_the_openai_shape() {
        let table = [
            (Denial::MissingApiKey, 401, "missing_api_key"),
            (Denial::InvalidApiKey, 401, "invalid_api_key"),
            (Denial::KeyDisabled, 401, "key_disabled"),
            (Denial::KeyExpired, 401, "key_expired"),
            (Denial::IpNotAllowed, 403, "ip_not_allowed"),
            (Denial::ModelNotAllowed, 403, "model_not_allowed"),
            (Denial::InsufficientQuota, 429, "insufficient_quota"),
            (Denial::RateLimitExceeded, 429, "rate_limit_exceeded"),
            (Denial::InvalidRequestBody, 400, "invalid_request_body"),
            (Denial::RequestTooLarge, 413, "request_too_large"),
            (
                Denial::KeyServiceUnavailable,
                503,
                "key_service_unavailable",
            ),
            (Denial::ModelNotPriced, 403, "model_not_priced"),
            (Denial::EndpointNotMetered, 403, "endpoint_not_metered"),
            (Denial::InvalidRequestHeader, 400, "invalid_request_header"),
            (Denial::Overloaded, 503, "overloaded"),
            (Denial::ModelBudgetExceeded, 429, "model_budget_exceeded"),
            (Denial::FilterFailed, 500, "internal_error"),
        ];
        assert_eq!(table.len(), Denial::ALL.len());
        for (denial, status, code) in table {
            assert_eq!(denial.status(), status);
            assert_eq!(denial.code(), code);
            let body: serde_json::Value = serde_json::from_str(&denial.body()).unwrap();
            assert_eq!(body["error"]["code"], code);
            assert!(body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            assert!(body["error"]["type"].is_string());
            assert!(body["error"]["param"].is_null());
        }
    }
}
