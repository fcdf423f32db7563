//! Account tokens: bearer tokens that see one account, kept as SHA-256 digests.

use super::{with_pool, Get, Store, StoreError};
use crate::access::Role;
use serde::Serialize;

/// An account token as stored and shown: never the token, nor its digest.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AccountTokenRow {
    pub id: String,
    pub account: String,
    pub name: String,
    pub role: Role,
    /// `kgt_…` and the last four characters.
    pub masked: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// A token about to be stored: its digest (lower-case hex), never the token.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAccountToken {
    pub id: String,
    pub account: String,
    pub name: String,
    pub role: Role,
    pub token_hash: String,
    pub masked: String,
}

const COLUMNS: &str = "id, account, name, role, masked, created_at, last_used_at";

/// `last_used_at` is written at most once per this many seconds per token, so a busy
/// tenant's requests do not each write a row.
const LAST_USED_EVERY: i64 = 60;

fn token_row(row: &impl Get) -> Result<AccountTokenRow, StoreError> {
    let id = row.text("id")?;
    let role = row.text("role")?;
    Ok(AccountTokenRow {
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt {
            id: id.clone(),
            column: "role",
            detail: format!("{role:?} is not a role"),
        })?,
        id,
        account: row.text("account")?,
        name: row.text("name")?,
        masked: row.text("masked")?,
        created_at: row.int("created_at")?,
        last_used_at: row.opt_int("last_used_at")?,
    })
}

impl Store {
    /// Stores a token; a foreign-key violation means the account does not exist.
    pub async fn insert_account_token(
        &self,
        token: &NewAccountToken,
        now: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO account_tokens (id, account, name, role, token_hash, masked, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&token.id)
            .bind(&token.account)
            .bind(&token.name)
            .bind(token.role.as_str())
            .bind(&token.token_hash)
            .bind(&token.masked)
            .bind(now)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// An account's tokens, oldest first.
    pub async fn list_account_tokens(
        &self,
        account: &str,
    ) -> Result<Vec<AccountTokenRow>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM account_tokens WHERE account = $1 ORDER BY created_at, id"
            )))
            .bind(account)
            .fetch_all(pool)
            .await?;
            rows.iter().map(token_row).collect()
        })
    }

    pub async fn get_account_token(&self, id: &str) -> Result<Option<AccountTokenRow>, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM account_tokens WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(token_row)
            .transpose()
        })
    }

    /// Revokes a token for good; `false` when there was none.
    pub async fn delete_account_token(&self, id: &str) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM account_tokens WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Gives a token a new secret (the old one stops working at once); `false` when
    /// there was no such token.
    pub async fn rotate_account_token(
        &self,
        id: &str,
        token_hash: &str,
        masked: &str,
    ) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let done = sqlx::query(
                "UPDATE account_tokens SET token_hash = $2, masked = $3, last_used_at = NULL \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(token_hash)
            .bind(masked)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// The token whose digest is `token_hash`, noting that it was used at `now` (at most
    /// once a minute).
    pub async fn account_token_by_hash(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<AccountTokenRow>, StoreError> {
        let found = with_pool!(self, |pool| {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM account_tokens WHERE token_hash = $1"
            )))
            .bind(token_hash)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(token_row)
            .transpose()
        })?;
        if let Some(token) = &found {
            if token
                .last_used_at
                .is_none_or(|at| at <= now.saturating_sub(LAST_USED_EVERY))
            {
                with_pool!(self, |pool| {
                    sqlx::query("UPDATE account_tokens SET last_used_at = $2 WHERE id = $1")
                        .bind(&token.id)
                        .bind(now)
                        .execute(pool)
                        .await
                        .map(drop)
                })?;
            }
        }
        Ok(found)
    }

    /// How many keys `account` holds.
    pub async fn count_account_keys(&self, account: &str) -> Result<i64, StoreError> {
        with_pool!(self, |pool| {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keys WHERE account = $1")
                .bind(account)
                .fetch_one(pool)
                .await?;
            Ok(n)
        })
    }
}
