//! The key-service's configuration: command-line flags, each with an environment variable
//! of the same meaning (see CONTRACT.md), and the database URL taken apart.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::alerts::threshold::Thresholds;
use crate::alerts::AlertSettings;
use crate::expiry;
use crate::sso::{self, Mappings, SsoSettings};
use crate::tokens::Token;

// Where the data lives is the store's own type; the configuration only names it.
pub use crate::store::{Database, DatabaseUrlError};

/// `KEYGATE_TENANT_MAX_KEYS`'s default.
pub const TENANT_MAX_KEYS_DEFAULT: i64 = 1_000;

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

    /// How many keys an account's tenants (account tokens, SSO) may hold when the account
    /// has no `max_keys` of its own: a tenant cannot fill every Envoy's snapshot.
    #[arg(long, env = "KEYGATE_TENANT_MAX_KEYS", default_value_t = TENANT_MAX_KEYS_DEFAULT,
          value_parser = clap::value_parser!(i64).range(0..))]
    pub tenant_max_keys: i64,

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

    /// The console's address as people's browsers reach it (e.g.
    /// `https://keygate.example.com`): single sign-on's default redirect URL is this and
    /// `/auth/oidc/callback`, and its cookies are `Secure` when it is https. Default:
    /// `http://` and the address the service listens on.
    #[arg(long, env = "KEYGATE_CONSOLE_URL")]
    pub console_url: Option<String>,

    /// Single sign-on for the console (OpenID Connect): the provider's issuer URL, exactly
    /// as its ID tokens' `iss` says it. Off when not set.
    #[arg(long, env = "KEYGATE_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,

    /// The client id keygate has at the identity provider.
    #[arg(long, env = "KEYGATE_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,

    /// The client's secret, for a confidential client; without it keygate is a public
    /// client, which PKCE protects.
    #[arg(long, env = "KEYGATE_OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub oidc_client_secret: Option<Token>,

    /// Where the provider sends the browser back (register it at the provider). Default:
    /// the console's address and `/auth/oidc/callback`.
    #[arg(long, env = "KEYGATE_OIDC_REDIRECT_URL")]
    pub oidc_redirect_url: Option<String>,

    /// The scopes asked for, space-separated; `openid` among them. Add the one that puts
    /// groups in the ID token if the provider needs it (`groups` for Dex and Okta).
    #[arg(
        long,
        env = "KEYGATE_OIDC_SCOPES",
        default_value = "openid email profile"
    )]
    pub oidc_scopes: String,

    /// Rules giving a person signed in an account and a role, first match wins:
    /// `CLAIM:VALUE=ACCOUNT:ROLE`, comma-separated, e.g.
    /// `groups:acme-admins=acme:owner,email_domain:globex.com=globex:viewer`
    /// (docs/sso.md). No match: the sign-in is refused.
    #[arg(long, env = "KEYGATE_OIDC_MAPPINGS")]
    pub oidc_mappings: Option<String>,

    /// How long a console session opened through single sign-on lasts ("8h", "1d").
    #[arg(long, env = "KEYGATE_OIDC_SESSION_TTL", default_value = "8h")]
    pub oidc_session_ttl: String,

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

impl Config {
    /// The single sign-on flags checked and read into settings (`None`: SSO is off); the
    /// error names the variable.
    pub fn sso_settings(&self) -> Result<Option<SsoSettings>, String> {
        let given = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let Some(issuer) = given(&self.oidc_issuer) else {
            for (name, value) in [
                ("KEYGATE_OIDC_CLIENT_ID", &self.oidc_client_id),
                ("KEYGATE_OIDC_REDIRECT_URL", &self.oidc_redirect_url),
                ("KEYGATE_OIDC_MAPPINGS", &self.oidc_mappings),
            ] {
                if given(value).is_some() {
                    return Err(format!(
                        "{name} is set but KEYGATE_OIDC_ISSUER is not: set the issuer to turn \
                         single sign-on on, or unset {name}"
                    ));
                }
            }
            return Ok(None);
        };
        let issuer_url = sso::web_url(&issuer).map_err(|e| format!("KEYGATE_OIDC_ISSUER: {e}"))?;
        if issuer_url.query().is_some() {
            return Err(format!("KEYGATE_OIDC_ISSUER: {issuer:?} has a ?query"));
        }
        let client_id = given(&self.oidc_client_id).ok_or(
            "KEYGATE_OIDC_CLIENT_ID: single sign-on needs the client id keygate has at the \
             identity provider",
        )?;
        let url = |name: &str, value: &Option<String>| {
            given(value)
                .map(|v| sso::web_url(&v).map_err(|e| format!("{name}: {e}")))
                .transpose()
        };
        let redirect_url = url("KEYGATE_OIDC_REDIRECT_URL", &self.oidc_redirect_url)?;
        let console_url = url("KEYGATE_CONSOLE_URL", &self.console_url)?;
        if console_url.is_none() && redirect_url.is_none() && self.listen.ip().is_unspecified() {
            return Err(format!(
                "KEYGATE_CONSOLE_URL: the console's address as browsers reach it is needed \
                 for single sign-on (listening on {} does not tell it)",
                self.listen
            ));
        }
        let scopes = self.oidc_scopes.split_whitespace().collect::<Vec<_>>();
        if !scopes.contains(&"openid") {
            return Err(format!(
                "KEYGATE_OIDC_SCOPES: {:?} lacks openid, without which there is no ID token",
                self.oidc_scopes
            ));
        }
        let mappings: Mappings = given(&self.oidc_mappings)
            .unwrap_or_default()
            .parse()
            .map_err(|e| format!("KEYGATE_OIDC_MAPPINGS: {e}"))?;
        if mappings.is_empty() {
            return Err(
                "KEYGATE_OIDC_MAPPINGS: no rule, so no one could sign in; give at \
                        least one such as groups:acme-admins=acme:owner"
                    .into(),
            );
        }
        let session_ttl = match expiry::parse_expires_in(self.oidc_session_ttl.trim()) {
            Ok(expiry::ExpiresIn::After(seconds)) => seconds,
            Ok(expiry::ExpiresIn::Never) => {
                return Err("KEYGATE_OIDC_SESSION_TTL: give a duration such as \"8h\"".into())
            }
            Err(e) => return Err(format!("KEYGATE_OIDC_SESSION_TTL: {e}")),
        };
        Ok(Some(SsoSettings {
            issuer,
            client_id,
            client_secret: self
                .oidc_client_secret
                .as_ref()
                .and_then(|t| Token::new(t.expose())),
            redirect_url,
            console_url,
            scopes: scopes.join(" "),
            mappings,
            session_ttl,
        }))
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

    /// The settings of these flags (pairs of flag and value), whatever `KEYGATE_OIDC_*` and
    /// `KEYGATE_CONSOLE_URL` variables the environment holds.
    fn sso(flags: &[&str]) -> Result<Option<SsoSettings>, String> {
        let mut config = Config::try_parse_from(["key-service"]).unwrap();
        config.console_url = None;
        config.oidc_issuer = None;
        config.oidc_client_id = None;
        config.oidc_client_secret = None;
        config.oidc_redirect_url = None;
        config.oidc_mappings = None;
        config.oidc_scopes = "openid email profile".into();
        config.oidc_session_ttl = "8h".into();
        config.listen = "127.0.0.1:8081".parse().unwrap();
        for (flag, value) in flags.chunks(2).map(|pair| (pair[0], pair[1].to_owned())) {
            match flag {
                "--console-url" => config.console_url = Some(value),
                "--oidc-issuer" => config.oidc_issuer = Some(value),
                "--oidc-client-id" => config.oidc_client_id = Some(value),
                "--oidc-client-secret" => config.oidc_client_secret = value.parse().ok(),
                "--oidc-redirect-url" => config.oidc_redirect_url = Some(value),
                "--oidc-mappings" => config.oidc_mappings = Some(value),
                "--oidc-scopes" => config.oidc_scopes = value,
                "--oidc-session-ttl" => config.oidc_session_ttl = value,
                "--listen" => config.listen = value.parse().unwrap(),
                other => panic!("{other}"),
            }
        }
        config.sso_settings()
    }

    const ON: [&str; 6] = [
        "--oidc-issuer",
        "https://idp.example.com/realms/acme",
        "--oidc-client-id",
        "keygate",
        "--oidc-mappings",
        "groups:acme-admins=acme:owner",
    ];

    #[test]
    fn single_sign_on_is_off_without_an_issuer_and_on_with_its_defaults() {
        assert!(sso(&[]).unwrap().is_none());
        let settings = sso(&ON).unwrap().unwrap();
        assert_eq!(settings.issuer, "https://idp.example.com/realms/acme");
        assert_eq!(settings.client_id, "keygate");
        assert!(settings.client_secret.is_none());
        assert_eq!(settings.scopes, "openid email profile");
        assert_eq!(settings.session_ttl, 8 * 3600);
        assert_eq!(settings.mappings.rules().len(), 1);
        assert!(settings.redirect_url.is_none() && settings.console_url.is_none());
        let mut more = ON.to_vec();
        more.extend([
            "--oidc-client-secret",
            "s3cret",
            "--oidc-session-ttl",
            "30min",
            "--oidc-scopes",
            "openid  groups",
            "--console-url",
            "https://keys.acme.com",
        ]);
        let settings = sso(&more).unwrap().unwrap();
        assert_eq!(
            settings.client_secret.as_ref().map(Token::expose),
            Some("s3cret")
        );
        assert_eq!(settings.session_ttl, 1800);
        assert_eq!(settings.scopes, "openid groups");
        assert!(!format!("{settings:?}").contains("s3cret"));
    }

    #[test]
    fn single_sign_on_mistakes_are_refused_naming_the_variable() {
        let with = |extra: &[&'static str]| {
            let mut flags = ON.to_vec();
            flags.extend_from_slice(extra);
            sso(&flags).unwrap_err()
        };
        for (extra, start) in [
            (
                &["--oidc-issuer", "idp.example.com"][..],
                "KEYGATE_OIDC_ISSUER",
            ),
            (
                &["--oidc-issuer", "ftp://idp.example.com"][..],
                "KEYGATE_OIDC_ISSUER",
            ),
            (&["--oidc-client-id", " "][..], "KEYGATE_OIDC_CLIENT_ID"),
            (
                &["--oidc-mappings", ""][..],
                "KEYGATE_OIDC_MAPPINGS: no rule",
            ),
            (
                &["--oidc-mappings", "groups:a=acme:admin"][..],
                "KEYGATE_OIDC_MAPPINGS: rule 1",
            ),
            (
                &["--oidc-scopes", "email profile"][..],
                "KEYGATE_OIDC_SCOPES",
            ),
            (
                &["--oidc-session-ttl", "never"][..],
                "KEYGATE_OIDC_SESSION_TTL",
            ),
            (&["--oidc-session-ttl", "8"][..], "KEYGATE_OIDC_SESSION_TTL"),
            (
                &["--oidc-redirect-url", "/callback"][..],
                "KEYGATE_OIDC_REDIRECT_URL",
            ),
            (
                &["--console-url", "keys.acme.com"][..],
                "KEYGATE_CONSOLE_URL",
            ),
            (&["--listen", "0.0.0.0:8081"][..], "KEYGATE_CONSOLE_URL"),
        ] {
            let err = with(extra);
            assert!(err.starts_with(start), "{extra:?}: {err}");
        }
        let err = sso(&["--oidc-client-id", "keygate"]).unwrap_err();
        assert!(
            err.starts_with("KEYGATE_OIDC_CLIENT_ID is set but KEYGATE_OIDC_ISSUER is not"),
            "{err}"
        );
    }
}
