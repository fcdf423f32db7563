//! The key-service's configuration: command-line flags, each with an environment variable
//! of the same meaning (see CONTRACT.md), and the database URL taken apart.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::alerts::threshold::Thresholds;
use crate::alerts::AlertSettings;
use crate::expiry;
use crate::tokens::Token;

// Where the data lives is the store's own type; the configuration only names it.
pub use crate::store::{Database, DatabaseUrlError};

#[derive(Debug, Clone, Parser)]
#[command(name = "key-service", version, about = "keygate's key-service")]
pub struct Config {
    /// Address to serve on (port 0 picks a free port; the one chosen is printed).
    #[arg(long, env = "KEYGATE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// `sqlite://PATH` (the file and its directory are created on first start; generated
    /// tokens are kept in the same directory) or `postgres://USER:PASSWORD@HOST/DB`
    /// (several replicas may share it; both tokens must then be given).
    #[arg(
        long,
        env = "KEYGATE_DATABASE_URL",
        default_value = "sqlite://data/keygate.db"
    )]
    pub database_url: String,

    /// Bearer token for /api/v1/*. Generated and stored in `admin.token` when not given.
    #[arg(long, env = "KEYGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Token>,

    /// Bearer token for /filter/v1/*. Generated and stored in `filter.token` when not given.
    #[arg(long, env = "KEYGATE_FILTER_TOKEN", hide_env_values = true)]
    pub filter_token: Option<Token>,

    /// A second filter token admitted as well, to rotate the filter token without a
    /// failed sync: set it, move the Envoys to it one by one, then make it the filter
    /// token and drop this.
    #[arg(long, env = "KEYGATE_FILTER_TOKEN_NEXT", hide_env_values = true)]
    pub filter_token_next: Option<Token>,

    /// How long change-log rows are kept ("7d", "12h", "never"). A filter that has not
    /// synced for longer reloads the full snapshot instead of taking a delta.
    #[arg(long, env = "KEYGATE_CHANGE_LOG_RETENTION", default_value = "7d")]
    pub change_log_retention: String,

    /// How long audit log entries are kept ("400d", "90d", "never"); older ones are
    /// pruned at start and hourly.
    #[arg(long, env = "KEYGATE_AUDIT_RETENTION", default_value = "400d")]
    pub audit_retention: String,

    /// The gateway's address as clients use it: the console shows it, with a ready curl
    /// line, next to each new secret.
    #[arg(
        long,
        env = "KEYGATE_PUBLIC_BASE_URL",
        default_value = "http://localhost:10000/v1"
    )]
    pub public_base_url: String,

    /// How many proxies in front of `/filter/v1/check` append to `X-Forwarded-For`: the
    /// client's address is the entry that many from the right (1 = the last entry, which
    /// the one proxy in front appended). 0, the default, trusts no forwarding header: the
    /// address is unknown and keys with an IP allowlist are refused there, because a client
    /// that reaches the proxy directly could otherwise claim any address.
    #[arg(long, env = "KEYGATE_CHECK_TRUSTED_HOPS", default_value_t = 0)]
    pub check_trusted_hops: u32,

    /// Whether `/filter/v1/check` takes the client's address from Envoy's
    /// `x-envoy-external-address` (before `X-Forwarded-For`): only when every request
    /// reaches the check through an Envoy that sets it and strips a client's own.
    #[arg(
        long,
        env = "KEYGATE_CHECK_TRUST_ENVOY_EXTERNAL_ADDRESS",
        default_value_t = false
    )]
    pub check_trust_envoy_external_address: bool,

    /// The time zone (IANA name, e.g. "Europe/Berlin") in which budget periods of a day,
    /// week or month begin at midnight.
    #[arg(long, env = "KEYGATE_BUDGET_TIME_ZONE", default_value = "UTC")]
    pub budget_time_zone: String,
    /// Budget thresholds alerted at, in percent of a key's (or an account's) budget for
    /// its period, comma-separated; each fires once per period.
    #[arg(long, env = "KEYGATE_ALERT_THRESHOLDS", default_value = "50,80,100")]
    pub alert_thresholds: String,

    /// A key expiring within this long gets a `key.expiring` alert ("7d", "12h").
    #[arg(long, env = "KEYGATE_ALERT_EXPIRING_WITHIN", default_value = "7d")]
    pub alert_expiring_within: String,

    /// How often keys are looked at for expiry and rotation reminders ("5min", "1h").
    #[arg(long, env = "KEYGATE_ALERT_SCAN_INTERVAL", default_value = "5min")]
    pub alert_scan_interval: String,

    /// How often, in ms, due webhook deliveries are looked for.
    #[arg(long, env = "KEYGATE_WEBHOOK_POLL_MS", default_value_t = 1000)]
    pub webhook_poll_ms: u64,

    /// The wait, in ms, after a webhook delivery's first failed attempt; doubled after
    /// each further one, up to `--webhook-backoff-cap-ms`.
    #[arg(long, env = "KEYGATE_WEBHOOK_BACKOFF_BASE_MS", default_value_t = 1000)]
    pub webhook_backoff_base_ms: u64,

    /// The longest wait, in ms, between attempts at a webhook delivery.
    #[arg(
        long,
        env = "KEYGATE_WEBHOOK_BACKOFF_CAP_MS",
        default_value_t = 3_600_000
    )]
    pub webhook_backoff_cap_ms: u64,

    /// How long after its event a webhook delivery is still tried ("24h"); then it is
    /// marked failed.
    #[arg(long, env = "KEYGATE_WEBHOOK_RETRY_FOR", default_value = "24h")]
    pub webhook_retry_for: String,

    /// The most one webhook delivery attempt may take, in ms, connecting included.
    #[arg(long, env = "KEYGATE_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,

    /// Without a command the service runs; with one, it acts on the database and exits.
    #[command(subcommand)]
    pub command: Option<crate::cli::Command>,
}

impl Config {
    /// How many seconds of the audit log are kept; `None`: all of it ("never").
    pub fn audit_retention(&self) -> Result<Option<i64>, String> {
        match expiry::parse_expires_in(&self.audit_retention) {
            Ok(expiry::ExpiresIn::Never) => Ok(None),
            Ok(expiry::ExpiresIn::After(seconds)) => Ok(Some(seconds)),
            Err(e) => Err(format!("--audit-retention: {e}")),
        }
    }

    /// The alert flags checked and read into settings; the error names the flag.
    pub fn alert_settings(&self) -> Result<AlertSettings, String> {
        let seconds = |flag: &str, text: &str| match expiry::parse_expires_in(text) {
            Ok(expiry::ExpiresIn::After(s)) => Ok(s),
            Ok(expiry::ExpiresIn::Never) => Err(format!("{flag}: give a duration such as \"7d\"")),
            Err(e) => Err(format!("{flag}: {e}")),
        };
        let duration = |flag: &str, text: &str| {
            seconds(flag, text).map(|s| Duration::from_secs(s.unsigned_abs()))
        };
        let positive = |flag: &str, ms: u64| match ms {
            0 => Err(format!("{flag} must be at least 1")),
            ms => Ok(Duration::from_millis(ms)),
        };
        Ok(AlertSettings {
            thresholds: self
                .alert_thresholds
                .parse::<Thresholds>()
                .map_err(|e| format!("--alert-thresholds: {e}"))?,
            expiring_within: seconds("--alert-expiring-within", &self.alert_expiring_within)?,
            scan_every: duration("--alert-scan-interval", &self.alert_scan_interval)?,
            poll_every: positive("--webhook-poll-ms", self.webhook_poll_ms)?,
            backoff_base: positive("--webhook-backoff-base-ms", self.webhook_backoff_base_ms)?,
            backoff_cap: positive("--webhook-backoff-cap-ms", self.webhook_backoff_cap_ms)?,
            retry_for: duration("--webhook-retry-for", &self.webhook_retry_for)?,
            timeout: positive("--webhook-timeout-ms", self.webhook_timeout_ms)?,
            ..AlertSettings::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_the_contract_defaults() {
        if std::env::var_os("KEYGATE_LISTEN").is_some()
            || std::env::var_os("KEYGATE_DATABASE_URL").is_some()
        {
            return; // The environment overrides the defaults under test.
        }
        let config = Config::try_parse_from(["key-service"]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(config.database_url, "sqlite://data/keygate.db");
    }

    #[test]
    fn the_check_trusts_no_forwarding_header_unless_told() {
        if std::env::var_os("KEYGATE_CHECK_TRUSTED_HOPS").is_some()
            || std::env::var_os("KEYGATE_CHECK_TRUST_ENVOY_EXTERNAL_ADDRESS").is_some()
        {
            return; // The environment overrides the defaults under test.
        }
        let config = Config::try_parse_from(["key-service"]).unwrap();
        assert_eq!(config.check_trusted_hops, 0);
        assert!(!config.check_trust_envoy_external_address);
        let config = Config::try_parse_from([
            "key-service",
            "--check-trusted-hops",
            "2",
            "--check-trust-envoy-external-address",
        ])
        .unwrap();
        assert_eq!(config.check_trusted_hops, 2);
        assert!(config.check_trust_envoy_external_address);
    }

    #[test]
    fn alert_flags_are_read_into_settings_and_refused_with_their_name() {
        let config = Config::try_parse_from([
            "key-service",
            "--alert-thresholds",
            "90,25",
            "--alert-expiring-within",
            "2d",
            "--webhook-backoff-base-ms",
            "50",
            "--webhook-retry-for",
            "1h",
        ])
        .unwrap();
        let settings = config.alert_settings().unwrap();
        assert_eq!(settings.thresholds.as_slice(), [25, 90]);
        assert_eq!(settings.expiring_within, 2 * 86_400);
        assert_eq!(settings.backoff_base, Duration::from_millis(50));
        assert_eq!(settings.retry_for, Duration::from_secs(3_600));
        for (flag, value) in [
            ("--alert-thresholds", "0"),
            ("--alert-expiring-within", "never"),
            ("--webhook-timeout-ms", "0"),
            ("--webhook-retry-for", "soon"),
        ] {
            let config = Config::try_parse_from(["key-service", flag, value]).unwrap();
            let err = config.alert_settings().unwrap_err();
            assert!(err.starts_with(flag), "{err}");
        }
    }

    #[test]
    fn the_audit_log_is_kept_400_days_unless_told() {
        if std::env::var_os("KEYGATE_AUDIT_RETENTION").is_none() {
            let config = Config::try_parse_from(["key-service"]).unwrap();
            assert_eq!(config.audit_retention(), Ok(Some(400 * 86_400)));
        }
        let parse = |value: &str| {
            Config::try_parse_from(["key-service", "--audit-retention", value])
                .unwrap()
                .audit_retention()
        };
        assert_eq!(parse("90d"), Ok(Some(90 * 86_400)));
        assert_eq!(parse("never"), Ok(None));
        let err = parse("forever").unwrap_err();
        assert!(err.starts_with("--audit-retention"), "{err}");
    }

    #[test]
    fn tokens_do_not_show_in_debug_output() {
        let config =
            Config::try_parse_from(["key-service", "--admin-token", "hunter2-admin"]).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
