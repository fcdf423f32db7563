//! Storage: the only module that speaks SQL. `Store` is the seam the rest of the service
//! goes through; behind it sits SQLite (embedded, the default) or PostgreSQL.
//!
//! Queries are checked at run time (`sqlx::query`), so building needs no database. They
//! keep to SQL both engines accept: `$1` placeholders, BIGINT unix seconds, BOOLEAN,
//! JSON lists in TEXT. Every clock value comes in as a parameter; SQL never reads the time.
//! Each method's body is written once and compiled once per engine (`with_pool!`); the
//! few statements the engines spell differently live in `Dialect`.

mod alerts;
mod audit;
mod catalog;
mod database;
mod keys;
mod leases;
mod periods;
mod snapshot;
mod sso;
mod tenants;
mod usage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Postgres, Row, SqlSafeStr, Sqlite, Transaction};

use crate::alerts::threshold::Thresholds;

pub(crate) use alerts::{balance_spent, budget_crossed, key_changed, KeyFacts, Outbox};
pub use alerts::{
    Claimed, DeliveryRow, Finish, NewWebhook, Spend, WebhookEdit, WebhookRow, DELIVERY_STATUSES,
};
pub use audit::{strip_secrets, AuditFilter, AuditRow, NewAuditEntry};
pub use catalog::{AccountEdit, AccountRow, GroupRow, ModelPrice, NewPrice, Removed};
pub use database::{Database, DatabaseUrlError};
pub use keys::{KeyEdit, KeyFilter, KeyRow, KeyStatus, NewKey};
pub(crate) use leases::cap_subject;
pub use leases::{LeaseAsk, LeaseGrant, LeaseRow};
pub use periods::ROLL_BATCH;
pub use snapshot::{SnapshotBody, SnapshotPage};
use snapshot::{POSTGRES, SQLITE};
pub use sso::{NewSession, SessionRow, SsoLogin};
pub use tenants::{AccountTokenRow, NewAccountToken};
pub use usage::{Ingested, UsageFilter, UsageRecord, UsageRow};

/// Migrations, compiled in so the binary needs no files beside it: version, description
/// (both follow the file names, a unit test checks no file is left out), SQLite's text and
/// PostgreSQL's.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "revoked_hashes",
        include_str!("../../migrations/sqlite/0002_revoked_hashes.sql"),
        include_str!("../../migrations/postgres/0002_revoked_hashes.sql"),
    ),
    (
        3,
        "model_prices",
        include_str!("../../migrations/sqlite/0003_model_prices.sql"),
        include_str!("../../migrations/postgres/0003_model_prices.sql"),
    ),
    (
        4,
        "usage_log",
        include_str!("../../migrations/sqlite/0004_usage_log.sql"),
        include_str!("../../migrations/postgres/0004_usage_log.sql"),
    ),
    (
        5,
        "grace_secrets",
        include_str!("../../migrations/sqlite/0005_grace_secrets.sql"),
        include_str!("../../migrations/postgres/0005_grace_secrets.sql"),
    ),
    (
        6,
        "usage_estimated",
        include_str!("../../migrations/sqlite/0006_usage_estimated.sql"),
        include_str!("../../migrations/postgres/0006_usage_estimated.sql"),
    ),
    (
        7,
        "key_rate_limits",
        include_str!("../../migrations/sqlite/0007_key_rate_limits.sql"),
        include_str!("../../migrations/postgres/0007_key_rate_limits.sql"),
    ),
    (
        8,
        "integer_columns",
        include_str!("../../migrations/sqlite/0008_integer_columns.sql"),
        include_str!("../../migrations/postgres/0008_integer_columns.sql"),
    ),
    (
        9,
        "per_request_prices",
        include_str!("../../migrations/sqlite/0009_per_request_prices.sql"),
        include_str!("../../migrations/postgres/0009_per_request_prices.sql"),
    ),
    (
        10,
        "cache_writes",
        include_str!("../../migrations/sqlite/0010_cache_writes.sql"),
        include_str!("../../migrations/postgres/0010_cache_writes.sql"),
    ),
    (
        11,
        "write_probe",
        include_str!("../../migrations/sqlite/0011_write_probe.sql"),
        include_str!("../../migrations/postgres/0011_write_probe.sql"),
    ),
    (
        12,
        "leases",
        include_str!("../../migrations/sqlite/0012_leases.sql"),
        include_str!("../../migrations/postgres/0012_leases.sql"),
    ),
    (
        13,
        "budget_periods",
        include_str!("../../migrations/sqlite/0013_budget_periods.sql"),
        include_str!("../../migrations/postgres/0013_budget_periods.sql"),
    ),
    (
        14,
        "alerts",
        include_str!("../../migrations/sqlite/0014_alerts.sql"),
        include_str!("../../migrations/postgres/0014_alerts.sql"),
    ),
    (
        15,
        "model_caps",
        include_str!("../../migrations/sqlite/0015_model_caps.sql"),
        include_str!("../../migrations/postgres/0015_model_caps.sql"),
    ),
    (
        16,
        "tenants",
        include_str!("../../migrations/sqlite/0016_tenants.sql"),
        include_str!("../../migrations/postgres/0016_tenants.sql"),
    ),
    (
        17,
        "audit",
        include_str!("../../migrations/sqlite/0017_audit.sql"),
        include_str!("../../migrations/postgres/0017_audit.sql"),
    ),
    (
        18,
        "sso",
        include_str!("../../migrations/sqlite/0018_sso.sql"),
        include_str!("../../migrations/postgres/0018_sso.sql"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] MigrateError),
    #[error("cannot create the database directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness for an id: {0}")]
    Random(getrandom::Error),
    /// Creating the keys would take the account past its `max_keys`.
    #[error("account {account} may hold at most {max} keys; it holds {holds}")]
    KeyLimit {
        account: String,
        max: i64,
        holds: i64,
    },
    #[error("stored {column} of key {id} is unreadable: {detail}")]
    Corrupt {
        id: String,
        column: &'static str,
        detail: String,
    },
}

impl StoreError {
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(e)) if e.is_unique_violation())
    }

    pub fn is_foreign_key_violation(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(e)) if e.is_foreign_key_violation())
    }
}

/// A handle on the database; cheap to clone (it wraps a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    /// The last write probe (see `writable`).
    probe: Arc<tokio::sync::Mutex<Option<Probe>>>,
    /// Where calendar budget periods (day, week, month) begin and end.
    time_zone: jiff::tz::TimeZone,
    /// The budget thresholds billing alerts at (`KEYGATE_ALERT_THRESHOLDS`).
    thresholds: Arc<Thresholds>,
}

/// When a write probe ran, and how it went.
type Probe = (Instant, Result<(), String>);

/// How long a write probe's answer stands: `/readyz` may be asked often, and each probe
/// is a committed write.
const PROBE_FOR: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the store's pool and `$sql` to its engine's
/// `Dialect`; the body is compiled once for each engine, so it may use the pool's own
/// types (its transactions, rows, query builders) without naming them.
macro_rules! with_pool {
    ($store:expr, |$pool:ident, $sql:ident| $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $sql = &$crate::store::SQLITE;
                $body
            }
            $crate::store::Db::Postgres($pool) => {
                #[allow(unused_variables)]
                let $sql = &$crate::store::POSTGRES;
                $body
            }
        }
    };
    ($store:expr, |$pool:ident| $body:expr) => {
        with_pool!($store, |$pool, _sql| $body)
    };
}
use with_pool;

/// The statements the engines spell differently.
pub(crate) struct Dialect {
    /// One page of the full snapshot: `$1` = cursor (text), `$2` = limit. One row: `n`
    /// (keys in the page), `cursor` (text, what the next page starts after; NULL for an
    /// empty page) and `records` (their JSON objects joined by commas; NULL if none).
    snapshot_page: &'static str,
    /// The cursor before the first row.
    first_cursor: &'static str,
    /// Keys changed after `$1`, as `record`.
    snapshot_changed: &'static str,
    /// Old secrets in their grace period at `$1`, as `record`.
    grace_records: &'static str,
    /// ... of the keys changed after `$2`.
    grace_changed: &'static str,
    /// The key or grace secret with hash `$2` at `$1`, as `record`.
    record_by_hash: &'static str,
    /// `{sum_open}column{sum_close}`: a column's sum that saturates at `i64::MAX` instead
    /// of failing (SQLite's SUM raises on overflow; PostgreSQL's casting back does).
    /// Exact while the sum is below 2^53 on SQLite (it adds in floating point).
    pub(crate) sum_open: &'static str,
    pub(crate) sum_close: &'static str,
}

/// A transaction that will write: writers are serialised, so change-log sequence numbers
/// commit in the order they were taken and a filter polling `since=N` can never miss a
/// change numbered below N that committed after it read N.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
}

impl BeginWrite for SqlitePool {
    type Db = Sqlite;
    /// SQLite has one writer at a time; IMMEDIATE takes the lock up front, so a
    /// transaction that reads first cannot fail on upgrading it.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

/// Any constant both sides agree on: the lock that orders keygate's writers.
const PG_WRITE_LOCK: i64 = 0x006b_6579_6761_7465; // "keygate" in ASCII

impl BeginWrite for PgPool {
    type Db = Postgres;
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PG_WRITE_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// Typed column reads shared by both engines' rows, so row decoders are written once.
pub(crate) trait Get {
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    fn real(&self, column: &str) -> Result<f64, sqlx::Error>;
    fn opt_real(&self, column: &str) -> Result<Option<f64>, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
}

macro_rules! impl_get {
    ($row:ty) => {
        impl Get for $row {
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                self.try_get(column)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(column)
            }
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                self.try_get(column)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(column)
            }
            fn real(&self, column: &str) -> Result<f64, sqlx::Error> {
                self.try_get(column)
            }
            fn opt_real(&self, column: &str) -> Result<Option<f64>, sqlx::Error> {
                self.try_get(column)
            }
            fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
                self.try_get(column)
            }
        }
    };
}
impl_get!(SqliteRow);
impl_get!(PgRow);

/// A pool that never hands out or takes back a connection still inside a transaction.
///
/// On an I/O error (a full disk, a file made read-only) the database may roll a
/// transaction back by itself; sqlx's own ROLLBACK then fails, and the connection still
/// counts as inside a transaction, so every write on it would fail until the pool retired
/// it (half an hour). Such a connection is closed instead, and the next write gets a new
/// one: writes recover as soon as the fault ends.
fn healing<DB: sqlx::Database>(options: PoolOptions<DB>) -> PoolOptions<DB> {
    options
        .after_release(|conn, _| {
            Box::pin(async move {
                // Runs the rollback a dropped transaction queued, then looks.
                conn.ping().await?;
                Ok(!conn.is_in_transaction())
            })
        })
        .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
}

/// How long a connection attempt to PostgreSQL may take before start-up fails.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Store {
    /// Opens (creating it and its directory if needed) the SQLite database at `path` and
    /// brings its schema up to date.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                path: dir.to_owned(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // WAL lets readers (snapshot polls) run while a key is being written.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = healing(SqlitePoolOptions::new().max_connections(8))
            .connect_with(options)
            .await?;
        migrator(Engine::Sqlite).run(&pool).await?;
        Ok(Store::new(Db::Sqlite(pool)))
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user:pass@host/db`) and
    /// brings its schema up to date. Several replicas may share one database; migrations
    /// run under sqlx's own lock.
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = healing(PgPoolOptions::new())
            .max_connections(16)
            .acquire_timeout(PG_CONNECT_TIMEOUT)
            .connect_with(options)
            .await?;
        migrator(Engine::Postgres).run(&pool).await?;
        Ok(Store::new(Db::Postgres(pool)))
    }

    /// Which engine this store runs on, for logs.
    pub fn engine(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Closes every connection; call before exit so SQLite's WAL is checkpointed.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }

    fn new(db: Db) -> Store {
        Store {
            db,
            probe: Arc::default(),
            time_zone: jiff::tz::TimeZone::UTC,
            thresholds: Arc::default(),
        }
    }

    /// The store, billing alerting at `thresholds` of each budget.
    pub fn with_alert_thresholds(mut self, thresholds: Thresholds) -> Store {
        self.thresholds = Arc::new(thresholds);
        self
    }

    /// The store with calendar budget periods in `time_zone` (UTC by default).
    pub fn with_time_zone(mut self, time_zone: jiff::tz::TimeZone) -> Store {
        self.time_zone = time_zone;
        self
    }

    /// The window of `period` holding `now` (a span's windows follow on from `anchor`).
    pub(crate) fn window(
        &self,
        period: crate::budget::Period,
        anchor: i64,
        now: i64,
    ) -> Option<crate::budget::Window> {
        crate::budget::Window::holding(period, &self.time_zone, anchor, now)
    }

    /// Succeeds when the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Succeeds when the database takes a write: one row rewritten and committed, at most
    /// once a second (a later call within the second gets the same answer). `Err` holds
    /// the database's words, for the log.
    pub async fn writable(&self, now: i64) -> Result<(), String> {
        // One probe at a time: callers that come meanwhile (`/readyz` needs no token) wait
        // for its answer instead of each writing, however slow the database is.
        let mut last = self.probe.lock().await;
        if let Some((_, result)) = last.as_ref().filter(|(at, _)| at.elapsed() < PROBE_FOR) {
            return result.clone();
        }
        let result = async {
            with_pool!(self, |pool| {
                sqlx::query(
                    "INSERT INTO write_probe (id, checked_at) VALUES (1, $1) \
                     ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                )
                .bind(now)
                .execute(pool)
                .await?;
            });
            Ok::<(), StoreError>(())
        }
        .await
        .map_err(|e| e.to_string());
        *last = Some((Instant::now(), result.clone()));
        result
    }

    pub async fn account_exists(&self, name: &str) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let found = sqlx::query("SELECT 1 FROM accounts WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?;
            Ok(found.is_some())
        })
    }

    /// Whether keys of `account` may be in group `name`: it exists and is shared, or
    /// owned by that account. To anyone else an account's own group does not exist.
    pub async fn group_usable(&self, name: &str, account: &str) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let found = sqlx::query(
                "SELECT 1 FROM groups WHERE name = $1 AND (account IS NULL OR account = $2)",
            )
            .bind(name)
            .bind(account)
            .fetch_optional(pool)
            .await?;
            Ok(found.is_some())
        })
    }
}

#[derive(Clone, Copy)]
enum Engine {
    Sqlite,
    Postgres,
}

fn migrator(engine: Engine) -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sqlite, postgres)| {
                let sql = match engine {
                    Engine::Sqlite => sqlite,
                    Engine::Postgres => postgres,
                };
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

impl Store {
    /// Opens the configured database, creating or migrating its schema.
    pub async fn open(database: &Database) -> Result<Self, StoreError> {
        match database {
            Database::Sqlite { path } => Store::open_sqlite(path).await,
            Database::Postgres { url } => Store::open_postgres(url).await,
        }
    }

    /// A fresh, empty store for a test: SQLite in `dir`, or, when `KEYGATE_TEST_POSTGRES`
    /// names a server (`postgres://user@host:port`), a new database of its own there, so
    /// the same tests run against both engines.
    #[doc(hidden)]
    pub async fn open_for_test(dir: &Path) -> Result<Self, StoreError> {
        Store::open(&test_database(dir).await?).await
    }
}

/// Where `open_for_test` puts a test's data (see there); nothing is opened yet.
#[doc(hidden)]
pub async fn test_database(dir: &Path) -> Result<Database, StoreError> {
    Ok(match std::env::var("KEYGATE_TEST_POSTGRES") {
        Ok(server) => Database::Postgres {
            url: create_test_database(&server).await?,
        },
        Err(_) => Database::Sqlite {
            path: dir.join("keygate.db"),
        },
    })
}

/// Creates an empty database with a unique name on the server; returns its URL.
async fn create_test_database(server: &str) -> Result<String, StoreError> {
    let admin = PgPool::connect(&format!("{server}/postgres")).await?;
    let suffix = crate::random::base62(16)
        .map_err(|e| sqlx::Error::Protocol(format!("no randomness: {e}")))?;
    let name = format!("keygate_test_{}", suffix.to_lowercase());
    let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await;
    admin.close().await;
    created?;
    Ok(format!("{server}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_compiled_in() {
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|(version, description, _, _)| format!("{version:04}_{description}.sql"))
            .collect();
        for engine in ["sqlite", "postgres"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(engine);
            let mut files: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|name| name.ends_with(".sql"))
                .collect();
            files.sort();
            assert_eq!(files, listed, "{engine}");
        }
    }

    /// A write that fails half-way with an I/O error (a full disk, a file made read-only)
    /// is rolled back by SQLite itself, so sqlx's own ROLLBACK then fails and its
    /// connection still counts as inside a transaction. Such a connection must never go
    /// back to the pool: it once failed every later write with "begin_with at non-zero
    /// transaction depth" until the pool retired it half an hour later.
    #[tokio::test]
    async fn writes_recover_by_themselves_once_a_storage_fault_ends() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("keygate.db"))
            .create_if_missing(true);
        // One connection, so a faulty one would be the one every write gets again.
        let pool = healing(SqlitePoolOptions::new().max_connections(1))
            .connect_with(options)
            .await
            .unwrap();
        migrator(Engine::Sqlite).run(&pool).await.unwrap();
        let store = Store::new(Db::Sqlite(pool.clone()));
        let mut tx = pool.begin_write().await.unwrap();
        // What SQLite does on SQLITE_IOERR or SQLITE_FULL in the middle of a transaction.
        sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
        drop(tx);
        store.create_account("after", Some(1), 0).await.unwrap();
        assert!(store.account_exists("after").await.unwrap());
    }

    #[tokio::test]
    async fn migration_8_repairs_non_integers_sqlite_already_holds() {
        // A database written before the triggers: a REAL used_quota (the overflow that
        // once wedged key sync), text and negative counts. Opening it repairs them.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.db");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        let before_8 = Migrator::with_migrations(
            migrator(Engine::Sqlite)
                .iter()
                .filter(|m| m.version < 8)
                .cloned()
                .collect(),
        );
        before_8.run(&pool).await.unwrap();
        for sql in [
            "INSERT INTO keys (id, name, key_hash, masked_key, account, group_name, \
             unlimited_quota, quota, used_quota, created_at, updated_at) VALUES \
             ('a', 'a', 'ha', 'm', 'default', 'default', FALSE, 100, 1.5e19, 0, 0), \
             ('b', 'b', 'hb', 'm', 'default', 'default', FALSE, 'lots', -3, 0, 0)",
            "INSERT INTO accounts (name, balance) VALUES ('owing', -2.5e30)",
            "INSERT INTO usage_log (request_id, key_id, model, input_tokens, \
             cached_input_tokens, output_tokens, cost, priced, status, ts) \
             VALUES ('r', 'a', 'm', 1.5, -1, 1e300, 7, TRUE, 200, 0)",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        pool.close().await;

        let store = Store::open_sqlite(&path).await.unwrap();
        let a = store.get_key("a", 0).await.unwrap().unwrap();
        assert_eq!((a.quota, a.used_quota), (100, i64::MAX));
        let b = store.get_key("b", 0).await.unwrap().unwrap();
        assert_eq!((b.quota, b.used_quota), (0, 0));
        let owing = store.get_account("owing", 0).await.unwrap().unwrap();
        assert_eq!(owing.balance, Some(i64::MIN));
        let (rows, _) = store
            .list_usage(&UsageFilter::default(), 10, 0)
            .await
            .unwrap();
        let r = &rows[0];
        assert_eq!(
            (
                r.input_tokens,
                r.cached_input_tokens,
                r.output_tokens,
                r.cost
            ),
            (1, 0, i64::MAX, 7)
        );
        // Every key reads into a snapshot the filter takes whole.
        let page = SnapshotPage {
            after: None,
            limit: 10,
        };
        let body = store.snapshot(None, &page, 0).await.unwrap();
        let wire: keygate_core::sync::snapshot::SnapshotWire =
            serde_json::from_str(&body.to_json()).unwrap();
        assert_eq!((wire.keys.len(), wire.keys.unreadable()), (2, 0));
    }

    #[tokio::test]
    async fn a_database_made_in_a_new_directory_can_be_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/keygate.db");
        let store = Store::open_sqlite(&path).await.unwrap();
        store.close().await;
        let store = Store::open_sqlite(&path).await.unwrap();
        assert!(store.group_usable("default", "default").await.unwrap());
    }

    #[tokio::test]
    async fn opening_twice_keeps_the_data_and_the_schema() {
        // As a restarted service, or a second replica on the same PostgreSQL, does.
        let dir = tempfile::tempdir().unwrap();
        let database = test_database(dir.path()).await.unwrap();
        let store = Store::open(&database).await.unwrap();
        store.create_account("acme", Some(10), 0).await.unwrap();
        let replica = Store::open(&database).await.unwrap();
        assert!(replica.account_exists("acme").await.unwrap());
        store.close().await;

        let store = Store::open(&database).await.unwrap();
        assert!(store.account_exists("acme").await.unwrap());
        assert!(store.account_exists("default").await.unwrap());
        assert!(store.group_usable("default", "default").await.unwrap());
        assert!(!store.group_usable("acme", "default").await.unwrap());
        // The account's creation is the one change so far.
        assert_eq!(store.snapshot_version().await.unwrap(), 1);
        assert_eq!(replica.snapshot_version().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_writer_waits_for_the_one_before_it_to_commit() {
        // Without this, a change could commit after a later-numbered one that a filter
        // already polled past, and that filter would never see it.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        let other = store.clone();
        with_pool!(store, |pool| {
            let mut tx = pool.begin_write().await.unwrap();
            sqlx::query("INSERT INTO key_changes (key_id, kind, at) VALUES ('', 'test', 0)")
                .execute(&mut *tx)
                .await
                .unwrap();
            let second = tokio::spawn(async move { other.create_account("late", None, 1).await });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !second.is_finished(),
                "a second writer went ahead of an uncommitted first"
            );
            tx.commit().await.unwrap();
            second.await.unwrap().unwrap();
        });
        assert_eq!(store.snapshot_version().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_duplicate_account_is_a_unique_violation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        let err = store.create_account("default", None, 0).await.unwrap_err();
        assert!(err.is_unique_violation(), "{err}");
    }
}
