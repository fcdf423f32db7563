//! The filter's configuration: the JSON given as the plugin's `configuration` in Envoy,
//! parsed and validated once when the plugin starts. Every field has a default, so an
//! empty configuration is valid.

use std::fmt;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Envoy cluster through which the key-service is reached.
    pub key_service_cluster: String,
    /// `:authority` sent with calls to the key-service.
    pub key_service_authority: String,
    /// Path of the key-service's snapshot feed (behind a path-rewriting proxy, say).
    pub snapshot_path: String,
    /// How often the key snapshot is refreshed, in milliseconds.
    pub sync_interval_ms: u64,
    /// Timeout of one call to the key-service, in milliseconds.
    pub key_service_timeout_ms: u64,
    /// How long the syncing VM's call waits at the key-service for a change (pushed
    /// changes: a change reaches Envoy as soon as it commits, and the poll every
    /// `sync_interval_ms` is only the fallback). 0: poll only. Cut to a third of
    /// `max_snapshot_age_ms`, so waiting never lets the snapshot age out.
    pub sync_wait_ms: u64,
    /// Environment variable of the Wasm VM that holds the filter's bearer token for the
    /// key-service (Envoy passes it in with `vm_config.environment_variables`).
    pub token_env: String,
    /// The filter token itself, for hosts where the VM environment cannot carry it. It
    /// then sits in the Envoy configuration: prefer `token_env` where possible.
    pub key_service_token: Option<String>,
    /// Largest request body read to find the model (only for keys or groups that restrict
    /// models); larger ones get 413 `request_too_large`. Keep it at or below Envoy's
    /// `per_connection_buffer_limit_bytes` (1 MiB by default).
    pub max_body_bytes: usize,
    /// How long the last snapshot may go unconfirmed by the key-service (it is down or
    /// answers garbage) before the filter fails closed with 503. Default 24 hours.
    pub max_snapshot_age_ms: u64,
    /// Keys per page of the full snapshot loaded at start (a million keys come in a
    /// hundred pages of the default size).
    pub snapshot_page_size: usize,
    /// Names of the headers that tell the upstream who is calling.
    pub identity_headers: IdentityHeaders,
    /// Path of the key-service's usage intake.
    pub usage_path: String,
    /// Usage records each VM holds while the key-service cannot take them; past this the
    /// oldest are dropped (and counted in `keygate.usage_dropped`).
    pub usage_queue_max: usize,
    /// Records per usage report (the key-service takes at most 1000).
    pub usage_batch_max: usize,
    /// Output tokens assumed for a request that sets no limit of its own (`max_tokens`
    /// and its kin), when estimating what it may cost a key with a quota or an account
    /// with a balance.
    pub default_output_tokens: u64,
    /// Only with credit leases off (`credit_lease_ttl_ms` 0): Envoy replicas sharing the
    /// traffic of the same keys, each RPM, TPM and parallel limit divided by it, since
    /// each Envoy counts only what it sees (approximate: exact only when a load balancer
    /// spreads each key's traffic evenly). With leases, each Envoy holds a share of each
    /// limit that the key-service grants.
    pub replicas: u64,
    /// Whether keys and accounts with a limit may call a model that has no price (it is
    /// then billed 0). Off by default: they get 403 `model_not_priced`.
    pub allow_unpriced_models: bool,
    /// How long a request may wait for the first snapshot of a new Envoy (or VM) before it
    /// is decided: a restart then refuses no one it could serve. 0: decide at once (503
    /// `key_service_unavailable` until the snapshot is in).
    pub first_snapshot_wait_ms: u64,
    /// Request body bytes one VM may hold at once while it decides (bodies read for their
    /// model or cost, and bodies of requests waiting for the first snapshot). A request
    /// that would hold more gets 503 `overloaded`: a flood of big bodies cannot make Envoy
    /// buffer without bound.
    pub max_held_body_bytes: usize,
    /// Credit leases (see `limits::credit`): how long a lease of credit from the
    /// key-service lasts unless renewed. Each Envoy spends a limited key's (or account's)
    /// quota only from its lease, so a fleet of Envoys never spends more than is left.
    /// 0 turns leases off: each Envoy then spends from the snapshot's figures alone,
    /// which several Envoys can overdraw (up to once each).
    pub credit_lease_ttl_ms: u64,
    /// How long a request waits for its key's first lease (or a larger one) before it is
    /// refused with 503 `key_service_unavailable`.
    pub credit_lease_wait_ms: u64,
    /// Path of the key-service's lease intake.
    pub credit_lease_path: String,
    /// `GET` on this path is answered by the filter with the calling key's own view
    /// (`decide::key_info`); empty: no such path (the request goes upstream).
    pub key_info_path: String,
    /// Whether `GET` on the one-api-style billing paths (`/v1/dashboard/billing/
    /// subscription` and `/usage`, with or without `/v1`) is answered by the filter with
    /// the calling key's figures in US dollars (`decide::billing`); off, they go upstream
    /// like any path.
    pub billing_paths: bool,
    /// Credits to a US dollar, for those answers: 1,000,000 by default, a credit being a
    /// millionth of a dollar (so prices in credits per 1M tokens are a provider's dollar
    /// prices per 1M tokens times a million).
    pub credits_per_usd: u64,
}

/// The request headers the filter sets for the upstream; `null` leaves one out (each
/// costs a host call per request). Whatever the names, a client-sent header of one of
/// them, or starting with `x-keygate-`, is removed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeaders {
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    pub group: Option<String>,
    pub account: Option<String>,
    pub model: Option<String>,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        let name = |n: &str| Some(format!("x-keygate-{n}"));
        IdentityHeaders {
            key_id: name("key-id"),
            key_name: name("key-name"),
            group: name("group"),
            account: name("account"),
            model: name("model"),
        }
    }
}

impl IdentityHeaders {
    /// Every name in use.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        [
            &self.key_id,
            &self.key_name,
            &self.group,
            &self.account,
            &self.model,
        ]
        .into_iter()
        .filter_map(|n| n.as_deref())
    }

    /// Whether a client-sent header of this name must be removed (ASCII case ignored).
    pub fn is_own(&self, header: &str) -> bool {
        self.names().any(|n| n.eq_ignore_ascii_case(header))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut seen: Vec<&str> = Vec::new();
        for name in self.names() {
            let token = !name.is_empty()
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !token || crate::decide::credential::HEADERS.contains(&name) || seen.contains(&name)
            {
                return Err(ConfigError(format!(
                    "identity_headers: {name:?} must be a distinct lower-case header name \
                     (letters, digits, '-', '_') that is not a credential header"
                )));
            }
            seen.push(name);
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            key_service_cluster: "key_service".into(),
            key_service_authority: "key-service".into(),
            snapshot_path: "/filter/v1/snapshot".into(),
            sync_interval_ms: 1_000,
            key_service_timeout_ms: 5_000,
            sync_wait_ms: 25_000,
            token_env: "KEYGATE_FILTER_TOKEN".into(),
            key_service_token: None,
            max_body_bytes: 1 << 20,
            max_snapshot_age_ms: 24 * 3_600_000,
            snapshot_page_size: 10_000,
            identity_headers: IdentityHeaders::default(),
            usage_path: "/filter/v1/usage".into(),
            usage_queue_max: 100_000,
            usage_batch_max: 1_000,
            default_output_tokens: 4_096,
            replicas: 1,
            allow_unpriced_models: false,
            first_snapshot_wait_ms: 2_000,
            max_held_body_bytes: 64 << 20,
            credit_lease_ttl_ms: 30_000,
            credit_lease_wait_ms: 2_000,
            credit_lease_path: "/filter/v1/leases".into(),
            key_info_path: "/v1/keygate/key".into(),
            billing_paths: true,
            credits_per_usd: 1_000_000,
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid keygate configuration: {}", self.0)
    }
}

impl Config {
    /// How long a sync call waits at the key-service for a change (0: it does not).
    pub fn sync_wait(&self) -> u64 {
        self.sync_wait_ms.min(self.max_snapshot_age_ms / 3)
    }

    /// The filter's token: from the configuration if given there, else from the VM
    /// environment variable `token_env` (`env` looks it up).
    pub fn token(&self, env: impl FnOnce(&str) -> Option<String>) -> Option<String> {
        self.key_service_token
            .clone()
            .or_else(|| env(&self.token_env))
            .filter(|t| !t.is_empty())
    }

    /// Parses the plugin configuration; `None` or an empty buffer means all defaults.
    pub fn parse(raw: Option<&[u8]>) -> Result<Config, ConfigError> {
        let config: Config = match raw {
            Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => {
                serde_json::from_slice(bytes).map_err(|e| ConfigError(e.to_string()))?
            }
            _ => Config::default(),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.key_service_cluster.is_empty() {
            return Err(ConfigError("key_service_cluster must not be empty".into()));
        }
        if !(100..=3_600_000).contains(&self.sync_interval_ms) {
            return Err(ConfigError(
                "sync_interval_ms must be between 100 and 3600000".into(),
            ));
        }
        if !(1..=60_000).contains(&self.key_service_timeout_ms) {
            return Err(ConfigError(
                "key_service_timeout_ms must be between 1 and 60000".into(),
            ));
        }
        if self.max_snapshot_age_ms < self.sync_interval_ms {
            return Err(ConfigError(
                "max_snapshot_age_ms must be at least sync_interval_ms".into(),
            ));
        }
        for (field, path) in [
            ("snapshot_path", &self.snapshot_path),
            ("usage_path", &self.usage_path),
        ] {
            if !path.starts_with('/') || path.contains(['?', '#']) {
                return Err(ConfigError(format!(
                    "{field} must be a path starting with '/', without a query"
                )));
            }
        }
        if !(1..=10_000_000).contains(&self.usage_queue_max) {
            return Err(ConfigError(
                "usage_queue_max must be between 1 and 10000000".into(),
            ));
        }
        if !(1..=1_000).contains(&self.usage_batch_max) {
            return Err(ConfigError(
                "usage_batch_max must be between 1 and 1000".into(),
            ));
        }
        self.identity_headers.validate()?;
        if !(1..=100_000).contains(&self.snapshot_page_size) {
            return Err(ConfigError(
                "snapshot_page_size must be between 1 and 100000".into(),
            ));
        }
        if !(1..=10_000_000).contains(&self.default_output_tokens) {
            return Err(ConfigError(
                "default_output_tokens must be between 1 and 10000000".into(),
            ));
        }
        if !(1..=10_000).contains(&self.replicas) {
            return Err(ConfigError("replicas must be between 1 and 10000".into()));
        }
        if !(1..=(64 << 20)).contains(&self.max_body_bytes) {
            return Err(ConfigError(
                "max_body_bytes must be between 1 and 67108864".into(),
            ));
        }
        if self.sync_wait_ms > 60_000 {
            return Err(ConfigError("sync_wait_ms must be at most 60000".into()));
        }
        if self.first_snapshot_wait_ms > 60_000 {
            return Err(ConfigError(
                "first_snapshot_wait_ms must be at most 60000".into(),
            ));
        }
        if self.credit_lease_ttl_ms != 0 && !(1_000..=600_000).contains(&self.credit_lease_ttl_ms) {
            return Err(ConfigError(
                "credit_lease_ttl_ms must be 0 (off) or between 1000 and 600000".into(),
            ));
        }
        if self.credit_lease_wait_ms > 60_000 {
            return Err(ConfigError(
                "credit_lease_wait_ms must be at most 60000".into(),
            ));
        }
        if self.credits_per_usd == 0 {
            return Err(ConfigError("credits_per_usd must be at least 1".into()));
        }
        if self.max_held_body_bytes < self.max_body_bytes {
            return Err(ConfigError(
                "max_held_body_bytes must be at least max_body_bytes".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn no_configuration_means_defaults() {
        assert_eq!(Config::parse(None), Ok(Config::default()));
        assert_eq!(Config::parse(Some(b"  \n")), Ok(Config::default()));
        assert_eq!(Config::parse(Some(b"{}")), Ok(Config::default()));
    }

    #[test]
    fn given_fields_override_defaults() {
        let c = Config::parse(Some(
            br#"{"key_service_cluster":"ks","sync_interval_ms":250,"replicas":3}"#,
        ))
        .unwrap();
        assert_eq!(c.key_service_cluster, "ks");
        assert_eq!((c.replicas, Config::default().replicas), (3, 1));
        assert_eq!(c.sync_interval_ms, 250);
        assert_eq!(c.token_env, "KEYGATE_FILTER_TOKEN");
    }

    #[test]
    fn identity_headers_can_be_renamed_or_left_out() {
        let c = Config::parse(Some(
            br#"{"identity_headers":{"key_name":null,"account":"x-tenant"}}"#,
        ))
        .unwrap();
        let h = &c.identity_headers;
        assert_eq!(h.key_id.as_deref(), Some("x-keygate-key-id"));
        assert_eq!(h.key_name, None);
        assert_eq!(h.account.as_deref(), Some("x-tenant"));
        assert!(h.is_own("X-Tenant") && h.is_own("x-keygate-model"));
        assert!(!h.is_own("x-keygate-key-name") && !h.is_own("content-type"));
        assert_eq!(h.names().count(), 4);
    }

    #[test]
    fn the_token_comes_from_the_configuration_or_the_environment() {
        let env = |name: &str| (name == "KEYGATE_FILTER_TOKEN").then(|| "from-env".to_string());
        assert_eq!(Config::default().token(env).as_deref(), Some("from-env"));
        let configured = Config::parse(Some(br#"{"key_service_token":"from-config"}"#)).unwrap();
        assert_eq!(configured.token(env).as_deref(), Some("from-config"));
        let renamed = Config::parse(Some(br#"{"token_env":"OTHER"}"#)).unwrap();
        assert_eq!(renamed.token(env), None);
        assert_eq!(Config::default().token(|_| Some(String::new())), None);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        for bad in [
            &br#"{"sync_interval":1}"#[..],
            br#"{"sync_interval_ms":0}"#,
            br#"{"key_service_timeout_ms":0}"#,
            br#"{"key_service_cluster":""}"#,
            br#"{"max_body_bytes":0}"#,
            br#"{"max_body_bytes":1000,"max_held_body_bytes":999}"#,
            br#"{"first_snapshot_wait_ms":60001}"#,
            br#"{"sync_wait_ms":60001}"#,
            br#"{"snapshot_page_size":0}"#,
            br#"{"snapshot_path":"filter/v1/snapshot"}"#,
            br#"{"snapshot_path":"/x?y=1"}"#,
            br#"{"usage_path":"usage"}"#,
            br#"{"usage_batch_max":1001}"#,
            br#"{"default_output_tokens":0}"#,
            br#"{"usage_queue_max":0}"#,
            br#"{"replicas":0}"#,
            br#"{"credits_per_usd":0}"#,
            br#"{"credits_per_usd":-1}"#,
            br#"{"credits_per_usd":1.5}"#,
            br#"{"billing_paths":"yes"}"#,
            br#"{"identity_headers":{"key_id":"Bad Name"}}"#,
            br#"{"identity_headers":{"key_id":"authorization"}}"#,
            br#"{"identity_headers":{"group":"x-a","account":"x-a"}}"#,
            br#"{"identity_headers":{"tenant":"x-t"}}"#,
            br#"{"sync_interval_ms":5000,"max_snapshot_age_ms":4000}"#,
            br#"not json"#,
        ] {
            let err = Config::parse(Some(bad)).unwrap_err();
            assert!(err.to_string().starts_with("invalid keygate configuration"));
        }
    }

    #[test]
    fn a_sync_wait_never_outlasts_a_third_of_the_snapshot_age() {
        let c = Config::parse(Some(br#"{"max_snapshot_age_ms":3000}"#)).unwrap();
        assert_eq!(c.sync_wait(), 1000);
        assert_eq!(Config::default().sync_wait(), 25_000);
        let off = Config::parse(Some(br#"{"sync_wait_ms":0}"#)).unwrap();
        assert_eq!(off.sync_wait(), 0);
    }
}
