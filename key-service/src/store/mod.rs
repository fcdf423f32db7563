//! Storage: the only module that speaks SQL. `Store` is the seam the rest of the service
//! goes through, so that PostgreSQL can be added next to SQLite without touching handlers.
//!
//! Queries are checked at run time (`sqlx::query`), so building needs no database. They
//! keep to SQL both engines accept: `$1` placeholders, BIGINT unix seconds, BOOLEAN,
//! JSON lists in TEXT. Every clock value comes in as a parameter; SQL never reads the time.

mod catalog;
mod keys;
mod usage;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqlSafeStr, SqlitePool};

pub use catalog::{AccountRow, GroupRow, ModelPrice, Removed};
pub use keys::{KeyEdit, KeyFilter, KeyRow, KeyStatus, NewKey, SnapshotPage};
pub use usage::{Ingested, UsageFilter, UsageRecord, UsageRow};

/// SQLite migrations, compiled in so the binary needs no files beside it. Versions and
/// descriptions follow the file names; a unit test checks no file is left out.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "revoked_hashes",
        include_str!("../../migrations/sqlite/0002_revoked_hashes.sql"),
    ),
    (
        3,
        "model_prices",
        include_str!("../../migrations/sqlite/0003_model_prices.sql"),
    ),
    (
        4,
        "usage_log",
        include_str!("../../migrations/sqlite/0004_usage_log.sql"),
    ),
    (
        5,
        "grace_secrets",
        include_str!("../../migrations/sqlite/0005_grace_secrets.sql"),
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
    pool: SqlitePool,
}

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
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlite_migrator().run(&pool).await?;
        Ok(Store { pool })
    }

    /// Closes every connection; call before exit so the WAL is checkpointed.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Succeeds when the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn account_exists(&self, name: &str) -> Result<bool, StoreError> {
        let found = sqlx::query("SELECT 1 FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    pub async fn group_exists(&self, name: &str) -> Result<bool, StoreError> {
        let found = sqlx::query("SELECT 1 FROM groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }
}

fn sqlite_migrator() -> Migrator {
    Migrator::with_migrations(
        SQLITE_MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_compiled_in() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = SQLITE_MIGRATIONS
            .iter()
            .map(|(version, description, _)| format!("{version:04}_{description}.sql"))
            .collect();
        assert_eq!(files, listed);
    }

    #[tokio::test]
    async fn opening_twice_keeps_the_data_and_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/keygate.db");
        let store = Store::open_sqlite(&path).await.unwrap();
        store.create_account("acme", Some(10), 0).await.unwrap();
        store.close().await;

        let store = Store::open_sqlite(&path).await.unwrap();
        assert!(store.account_exists("acme").await.unwrap());
        assert!(store.account_exists("default").await.unwrap());
        assert!(store.group_exists("default").await.unwrap());
        assert!(!store.group_exists("acme").await.unwrap());
        // The account's creation is the one change so far.
        assert_eq!(store.snapshot_version().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_duplicate_account_is_a_unique_violation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("k.db")).await.unwrap();
        let err = store.create_account("default", None, 0).await.unwrap_err();
        assert!(err.is_unique_violation(), "{err}");
    }
}
