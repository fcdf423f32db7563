//! The key-service's configuration: command-line flags, each with an environment variable
//! of the same meaning (see CONTRACT.md), and the database URL taken apart.

use std::net::SocketAddr;

use clap::Parser;

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

    /// Without a command the service runs; with one, it acts on the database and exits.
    #[command(subcommand)]
    pub command: Option<crate::cli::Command>,
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
    fn tokens_do_not_show_in_debug_output() {
        let config =
            Config::try_parse_from(["key-service", "--admin-token", "hunter2-admin"]).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
