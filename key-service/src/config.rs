//! The key-service's configuration: command-line flags, each with an environment variable
//! of the same meaning (see CONTRACT.md), and the database URL taken apart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::tokens::Token;

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

    /// Without a command the service runs; with one, it acts on the database and exits.
    #[command(subcommand)]
    pub command: Option<crate::cli::Command>,
}

/// Where the data lives, from `--database-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite {
        path: PathBuf,
    },
    /// The URL as given, for sqlx to read.
    Postgres {
        url: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error("an in-memory SQLite database would lose every key at exit; use sqlite://PATH")]
    InMemory,
    #[error("query parameters in the database URL are not supported")]
    QueryParameters,
    #[error("the database URL has no file path; use sqlite://PATH")]
    NoPath,
    #[error("unsupported database URL scheme; use sqlite://PATH or postgres://...")]
    Scheme,
}

impl Database {
    /// Reads `sqlite://PATH` (relative to the working directory), `sqlite:///ABS/PATH`, or
    /// a PostgreSQL URL (`postgres://` or `postgresql://`, parameters allowed).
    pub fn parse(url: &str) -> Result<Self, DatabaseUrlError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres {
                url: url.to_owned(),
            });
        }
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or(DatabaseUrlError::Scheme)?;
        if rest.contains('?') {
            return Err(DatabaseUrlError::QueryParameters);
        }
        if rest == ":memory:" {
            return Err(DatabaseUrlError::InMemory);
        }
        if rest.is_empty() || rest.ends_with('/') {
            return Err(DatabaseUrlError::NoPath);
        }
        Ok(Database::Sqlite {
            path: PathBuf::from(rest),
        })
    }

    /// The directory holding an SQLite database, where generated tokens are kept too.
    /// `None` for PostgreSQL: replicas on several machines cannot share generated tokens.
    pub fn data_dir(&self) -> Option<&Path> {
        match self {
            Database::Sqlite { path } => Some(match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            }),
            Database::Postgres { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_a_file_and_its_directory() {
        let db = Database::parse("sqlite://data/keygate.db").unwrap();
        assert_eq!(
            db,
            Database::Sqlite {
                path: "data/keygate.db".into()
            }
        );
        assert_eq!(db.data_dir(), Some(Path::new("data")));

        let db = Database::parse("sqlite:///var/lib/keygate/k.db").unwrap();
        assert_eq!(db.data_dir(), Some(Path::new("/var/lib/keygate")));

        let db = Database::parse("sqlite:k.db").unwrap();
        assert_eq!(db.data_dir(), Some(Path::new(".")));
    }

    #[test]
    fn postgres_urls_are_kept_whole() {
        for url in [
            "postgres://keygate:pw@db.internal:5432/keygate",
            "postgresql://u@h/db?sslmode=require",
        ] {
            let db = Database::parse(url).unwrap();
            assert_eq!(db, Database::Postgres { url: url.into() });
            assert_eq!(db.data_dir(), None);
        }
    }

    #[test]
    fn other_urls_are_refused_with_a_reason() {
        let cases = [
            ("sqlite::memory:", DatabaseUrlError::InMemory),
            ("sqlite://k.db?mode=ro", DatabaseUrlError::QueryParameters),
            ("sqlite://", DatabaseUrlError::NoPath),
            ("sqlite://data/", DatabaseUrlError::NoPath),
            ("mysql://h/db", DatabaseUrlError::Scheme),
            ("data/keygate.db", DatabaseUrlError::Scheme),
        ];
        for (url, want) in cases {
            assert_eq!(Database::parse(url), Err(want), "{url}");
        }
    }

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
