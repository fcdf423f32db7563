//! Single sign-on: sign-ins under way (single use, short-lived) and the console sessions
//! they open. Both are found by the SHA-256 of what the browser holds; neither the state
//! nor the session token is stored.

use super::{with_pool, Get, Store, StoreError};
use crate::access::Role;

/// What a sign-in under way keeps for its return from the identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoLogin {
    pub nonce: String,
    pub code_verifier: String,
}

/// A session about to be stored: the digest (lower-case hex) of its token, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub token_hash: String,
    pub subject: String,
    pub email: Option<String>,
    pub account: String,
    pub role: Role,
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub subject: String,
    pub email: Option<String>,
    pub account: String,
    pub role: Role,
    pub expires_at: i64,
}

fn session_row(row: &impl Get) -> Result<SessionRow, StoreError> {
    let role = row.text("role")?;
    Ok(SessionRow {
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt {
            id: "an SSO session".into(),
            column: "role",
            detail: format!("{role:?} is not a role"),
        })?,
        subject: row.text("subject")?,
        email: row.opt_text("email")?,
        account: row.text("account")?,
        expires_at: row.int("expires_at")?,
    })
}

/// Sign-ins pending at once at most (each is a row until it is used or expires).
pub const PENDING_LOGINS_MAX: i64 = 10_000;

impl Store {
    /// Keeps a sign-in under way until `expires_at`.
    pub async fn insert_sso_login(
        &self,
        state_hash: &str,
        login: &SsoLogin,
        now: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        self.insert_sso_login_within(state_hash, login, now, expires_at, PENDING_LOGINS_MAX)
            .await
    }

    /// Stores a sign-in unless `max` are already pending (unexpired at `now`): anyone may
    /// start a sign-in, so their number is bounded; `false` when it was refused.
    pub async fn insert_sso_login_within(
        &self,
        state_hash: &str,
        login: &SsoLogin,
        now: i64,
        expires_at: i64,
        max: i64,
    ) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let done = sqlx::query(
                "INSERT INTO sso_logins (state_hash, nonce, code_verifier, created_at, \
                 expires_at) SELECT $1, $2, $3, $4, $5 \
                 WHERE (SELECT COUNT(*) FROM sso_logins WHERE expires_at > $4) < $6",
            )
            .bind(state_hash)
            .bind(&login.nonce)
            .bind(&login.code_verifier)
            .bind(now)
            .bind(expires_at)
            .bind(max)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Takes the sign-in whose state has digest `state_hash`: it is gone afterwards
    /// whatever the answer, so a state serves once. `None` when there was none, or it had
    /// expired by `now`. Of two callers racing with the same state, one gets it.
    pub async fn take_sso_login(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<SsoLogin>, StoreError> {
        with_pool!(self, |pool| {
            let row = sqlx::query(
                "DELETE FROM sso_logins WHERE state_hash = $1 \
                 RETURNING nonce, code_verifier, expires_at",
            )
            .bind(state_hash)
            .fetch_optional(pool)
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            if row.int("expires_at")? <= now {
                return Ok(None);
            }
            Ok(Some(SsoLogin {
                nonce: row.text("nonce")?,
                code_verifier: row.text("code_verifier")?,
            }))
        })
    }

    /// Opens a session until `expires_at`; a foreign-key violation means the account does
    /// not exist.
    pub async fn insert_sso_session(
        &self,
        session: &NewSession,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO sso_sessions (token_hash, subject, email, account, role, \
                 created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&session.token_hash)
            .bind(&session.subject)
            .bind(&session.email)
            .bind(&session.account)
            .bind(session.role.as_str())
            .bind(now)
            .bind(expires_at)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The session whose token has digest `token_hash`, if it is still open at `now`.
    pub async fn sso_session_by_hash(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "SELECT subject, email, account, role, expires_at FROM sso_sessions \
                 WHERE token_hash = $1 AND expires_at > $2",
            )
            .bind(token_hash)
            .bind(now)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(session_row)
            .transpose()
        })
    }

    /// Ends a session; `false` when there was none.
    pub async fn delete_sso_session(&self, token_hash: &str) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM sso_sessions WHERE token_hash = $1")
                .bind(token_hash)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Ends every session (single sign-on was turned off); how many there were.
    pub async fn delete_all_sso_sessions(&self) -> Result<u64, StoreError> {
        with_pool!(self, |pool| {
            let sessions = sqlx::query("DELETE FROM sso_sessions")
                .execute(pool)
                .await?;
            sqlx::query("DELETE FROM sso_logins").execute(pool).await?;
            Ok(sessions.rows_affected())
        })
    }

    /// Removes sessions and sign-ins that expired by `now`; how many rows went.
    pub async fn prune_sso(&self, now: i64) -> Result<u64, StoreError> {
        with_pool!(self, |pool| {
            let sessions = sqlx::query("DELETE FROM sso_sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await?;
            let logins = sqlx::query("DELETE FROM sso_logins WHERE expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await?;
            Ok(sessions.rows_affected() + logins.rows_affected())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(token_hash: &str, account: &str) -> NewSession {
        NewSession {
            token_hash: token_hash.into(),
            subject: "sub-1".into(),
            email: Some("ann@acme.example".into()),
            account: account.into(),
            role: Role::Viewer,
        }
    }

    #[tokio::test]
    async fn a_login_state_serves_once_and_not_after_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        let login = SsoLogin {
            nonce: "n".into(),
            code_verifier: "v".into(),
        };
        assert!(store
            .insert_sso_login("s1", &login, 100, 700)
            .await
            .unwrap());
        assert!(store
            .insert_sso_login("s2", &login, 100, 700)
            .await
            .unwrap());
        // A bounded number pending: a third is refused while two are, taken once one
        // is used, and the expired ones do not count.
        assert!(!store
            .insert_sso_login_within("s3", &login, 100, 700, 2)
            .await
            .unwrap());
        assert_eq!(
            store.take_sso_login("s1", 200).await.unwrap(),
            Some(login.clone())
        );
        assert!(store
            .insert_sso_login_within("s3", &login, 200, 800, 2)
            .await
            .unwrap());
        assert!(store
            .insert_sso_login_within("s4", &login, 700, 900, 2)
            .await
            .unwrap());
        assert_eq!(store.take_sso_login("s1", 200).await.unwrap(), None);
        assert_eq!(store.take_sso_login("nope", 200).await.unwrap(), None);
        // Expired: refused, and gone all the same.
        assert_eq!(store.take_sso_login("s2", 700).await.unwrap(), None);
        assert_eq!(
            store.prune_sso(10_000).await.unwrap(),
            2,
            "s3 and s4, expired"
        );
    }

    #[tokio::test]
    async fn sessions_are_found_by_digest_until_they_expire_or_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        store
            .insert_sso_session(&session("h1", "default"), 100, 200)
            .await
            .unwrap();
        store
            .insert_sso_session(&session("h2", "default"), 100, 900)
            .await
            .unwrap();
        let found = store.sso_session_by_hash("h1", 150).await.unwrap().unwrap();
        assert_eq!(
            (found.subject.as_str(), found.account.as_str(), found.role),
            ("sub-1", "default", Role::Viewer)
        );
        assert_eq!(found.email.as_deref(), Some("ann@acme.example"));
        assert_eq!(store.sso_session_by_hash("h1", 200).await.unwrap(), None);
        assert_eq!(store.prune_sso(300).await.unwrap(), 1);
        assert!(store.delete_sso_session("h2").await.unwrap());
        assert!(!store.delete_sso_session("h2").await.unwrap());
        assert_eq!(store.sso_session_by_hash("h2", 150).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_session_needs_its_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        let err = store
            .insert_sso_session(&session("h1", "ghost"), 100, 200)
            .await
            .unwrap_err();
        assert!(err.is_foreign_key_violation(), "{err}");
        store
            .insert_sso_session(&session("h2", "default"), 100, 200)
            .await
            .unwrap();
        assert_eq!(store.delete_all_sso_sessions().await.unwrap(), 1);
    }
}
