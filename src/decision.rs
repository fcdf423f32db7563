//! The authorization decision and the contract's table of refusals: each `Denial` knows
//! its HTTP status, its OpenAI-style `type` and `code`, and its message.

use std::net::IpAddr;

use crate::secret;
use crate::snapshot::{KeyEntry, KeyIndex};

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
}

impl Denial {
    /// Every refusal, for tables and stats.
    pub const ALL: [Denial; 11] = [
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
        serde_json::json!({
            "error": { "message": message, "type": kind, "code": code, "param": null }
        })
        .to_string()
    }
}

/// Whether the key's or its group's model list restricts models, so that the request's
/// model must be known (and its body read, if the path does not name it).
pub fn restricts_models(index: &KeyIndex, key: &KeyEntry) -> bool {
    key.models.is_restricted() || index.group_models(&key.group).is_restricted()
}

/// Checks the requested model (`None` when the request names none) against the key's
/// and its group's lists; both must allow it.
pub fn check_model(index: &KeyIndex, key: &KeyEntry, model: Option<&str>) -> Result<(), Denial> {
    if !restricts_models(index, key) {
        return Ok(());
    }
    match model {
        Some(m) if key.models.allows(m) && index.group_models(&key.group).allows(m) => Ok(()),
        _ => Err(Denial::ModelNotAllowed),
    }
}

#[derive(Debug, PartialEq)]
pub enum Decision<'a> {
    Allow(&'a KeyEntry),
    Deny(Denial),
}

/// Decides a request from the presented secret (if any), the key index (if one has
/// loaded), the filter's clock in Unix seconds, and the client's address, which is only
/// looked up for a key with an IP allowlist.
pub fn decide<'a>(
    index: Option<&'a KeyIndex>,
    secret: Option<&str>,
    now: i64,
    client_ip: impl FnOnce() -> Option<IpAddr>,
) -> Decision<'a> {
    let Some(secret) = secret else {
        return Decision::Deny(Denial::MissingApiKey);
    };
    // A malformed secret is refused before any lookup, snapshot or not.
    if !secret::is_well_formed(secret) {
        return Decision::Deny(Denial::InvalidApiKey);
    }
    let Some(index) = index else {
        return Decision::Deny(Denial::KeyServiceUnavailable);
    };
    let Some(entry) = index.get(&secret::hash(secret)) else {
        return Decision::Deny(Denial::InvalidApiKey);
    };
    if !entry.enabled {
        return Decision::Deny(Denial::KeyDisabled);
    }
    if entry.expires_at.is_some_and(|at| at <= now) {
        return Decision::Deny(Denial::KeyExpired);
    }
    if entry.ip_allowlist.is_restricted() && !entry.ip_allowlist.admits(client_ip()) {
        return Decision::Deny(Denial::IpNotAllowed);
    }
    if !index.has_credit(entry) {
        return Decision::Deny(Denial::InsufficientQuota);
    }
    Decision::Allow(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{GroupRecord, KeyRecord, SnapshotWire};
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
        }
    }

    fn index_of(keys: Vec<KeyRecord>) -> KeyIndex {
        let wire = SnapshotWire {
            version: 1,
            keys,
            groups: vec![],
            accounts: vec![],
            ..Default::default()
        };
        KeyIndex::from_wire(wire).index
    }

    fn index(keys: &[(&str, bool, Option<i64>)]) -> KeyIndex {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(i, (id, enabled, expires_at))| record(i, id, *enabled, *expires_at))
            .collect();
        index_of(keys)
    }

    fn no_ip() -> Option<IpAddr> {
        None
    }

    fn denial(d: Decision) -> Option<Denial> {
        match d {
            Decision::Deny(d) => Some(d),
            Decision::Allow(_) => None,
        }
    }

    #[test]
    fn each_key_state_gets_its_answer() {
        let idx = index(&[
            ("live", true, None),
            ("off", false, None),
            ("old", true, Some(NOW)),
            ("later", true, Some(NOW + 1)),
        ]);
        let check = |s: Option<&str>| denial(decide(Some(&idx), s, NOW, no_ip));
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
        let idx = index(&[("a", true, None), ("b", true, None)]);
        match decide(Some(&idx), Some(&secret(1)), NOW, no_ip) {
            Decision::Allow(entry) => assert_eq!(entry.id, "b"),
            other => panic!("expected allow, got {other:?}"),
        }
    }

    #[test]
    fn expired_key_is_denied_by_the_clock_without_a_new_snapshot() {
        let idx = index(&[("soon", true, Some(NOW + 60))]);
        assert_eq!(
            denial(decide(Some(&idx), Some(&secret(0)), NOW + 59, no_ip)),
            None
        );
        assert_eq!(
            denial(decide(Some(&idx), Some(&secret(0)), NOW + 60, no_ip)),
            Some(Denial::KeyExpired)
        );
    }

    #[test]
    fn without_a_snapshot_only_well_formed_keys_get_503() {
        assert_eq!(
            denial(decide(None, None, NOW, no_ip)),
            Some(Denial::MissingApiKey)
        );
        assert_eq!(
            denial(decide(None, Some("sk-x"), NOW, no_ip)),
            Some(Denial::InvalidApiKey)
        );
        assert_eq!(
            denial(decide(None, Some(&secret(0)), NOW, no_ip)),
            Some(Denial::KeyServiceUnavailable)
        );
    }

    #[test]
    fn a_key_with_an_allowlist_admits_only_listed_sources() {
        let mut lan = record(0, "lan", true, None);
        lan.ip_allowlist = vec!["10.0.0.0/8".into()];
        let idx = index_of(vec![lan, record(1, "open", true, None)]);
        let from = |addr: &str| {
            let ip: IpAddr = addr.parse().unwrap();
            move || Some(ip)
        };
        assert_eq!(
            denial(decide(Some(&idx), Some(&secret(0)), NOW, from("10.1.2.3"))),
            None
        );
        assert_eq!(
            denial(decide(Some(&idx), Some(&secret(0)), NOW, from("192.0.2.1"))),
            Some(Denial::IpNotAllowed)
        );
        assert_eq!(
            denial(decide(Some(&idx), Some(&secret(0)), NOW, no_ip)),
            Some(Denial::IpNotAllowed)
        );
        // A key without an allowlist never asks for the address.
        let never = || -> Option<IpAddr> { panic!("address looked up for an open key") };
        assert_eq!(
            denial(decide(Some(&idx), Some(&secret(1)), NOW, never)),
            None
        );
    }

    #[test]
    fn a_key_without_credit_is_refused_after_the_access_checks() {
        let mut spent = record(0, "spent", false, None);
        spent.remaining_quota = Some(0);
        let mut left = record(1, "left", true, None);
        left.remaining_quota = Some(10);
        let mut spent_live = record(2, "spent-live", true, None);
        spent_live.remaining_quota = Some(0);
        let idx = index_of(vec![spent, left, spent_live]);
        let check = |i: u8| denial(decide(Some(&idx), Some(&secret(i)), NOW, no_ip));
        assert_eq!(
            check(0),
            Some(Denial::KeyDisabled),
            "disabled says so first"
        );
        assert_eq!(check(1), None);
        assert_eq!(check(2), Some(Denial::InsufficientQuota));
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
        let groups = vec![
            GroupRecord {
                name: "default".into(),
                models: strings(&["*"]),
            },
            GroupRecord {
                name: "cheap".into(),
                models: strings(&["gpt-4o-mini", "claude-haiku"]),
            },
        ];
        let keys = vec![open, narrow, free];
        let idx = KeyIndex::from_wire(SnapshotWire {
            version: 1,
            keys,
            groups,
            accounts: vec![],
            ..Default::default()
        })
        .index;
        let entry = |i: u8| idx.get(&secret::hash(&secret(i))).unwrap();
        let (open, narrow, free) = (entry(0), entry(1), entry(2));

        assert!(restricts_models(&idx, open));
        assert!(restricts_models(&idx, narrow));
        assert!(!restricts_models(&idx, free));
        let denied = Err(Denial::ModelNotAllowed);
        assert_eq!(check_model(&idx, open, Some("claude-haiku")), Ok(()));
        assert_eq!(check_model(&idx, open, Some("gpt-4o")), denied);
        assert_eq!(check_model(&idx, narrow, Some("gpt-4o-mini")), Ok(()));
        assert_eq!(check_model(&idx, narrow, Some("claude-haiku")), denied);
        assert_eq!(check_model(&idx, narrow, None), denied);
        assert_eq!(check_model(&idx, free, None), Ok(()));
        assert_eq!(check_model(&idx, free, Some("anything")), Ok(()));
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
