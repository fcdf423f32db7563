//! The audit log: who changed what, when, and from where (issue 21, part 3).
//!
//! Handlers call [`record`] after a change has been made, with the caller and the thing
//! changed as it was before and as it is after (the API's own views of it, which never
//! hold a secret; [`record`] strips secret-named fields once more all the same, see
//! [`crate::store::strip_secrets`]). Entries are read through `GET /api/v1/audit`
//! ([`crate::api::audit`]) and pruned after `--audit-retention`.

use serde::Serialize;

use crate::access::Caller;
use crate::expiry;
use crate::metrics::Metrics;
use crate::store::{NewAuditEntry, Store};
use crate::AppState;

/// One change, as a handler describes it.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// What was done, `<thing>.<verb>`: `key.create`, `key.update`, `key.rotate`,
    /// `key.delete`, `group.put`, `group.delete`, `model.put`, `account.create`,
    /// `account.update`, `token.create`, `token.rotate`, `token.revoke`,
    /// `webhook.create`, `webhook.update`, `webhook.delete`, `webhook.rotate_secret`.
    pub action: &'static str,
    /// The id or name of the thing changed.
    pub target: &'a str,
    /// The account the thing belongs to (`None`: global, such as a group or a price);
    /// tenants see the entries of their own account.
    pub account: Option<&'a str>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// A view as the audit log keeps it.
pub fn snapshot<T: Serialize>(view: &T) -> Option<serde_json::Value> {
    serde_json::to_value(view).ok()
}

/// Records `change` as done by `caller`. The change has been made already, so a failure
/// to record it is logged and counted (`keygate_audit_failures_total`), not answered to
/// the client as an error.
pub async fn record(state: &AppState, caller: &Caller, change: Change<'_>) {
    record_in(&state.store, &state.metrics, caller, change).await;
}

/// [`record`] with the store and the metrics given apart, for what has no [`AppState`]
/// (the command line).
pub async fn record_in(store: &Store, metrics: &Metrics, caller: &Caller, change: Change<'_>) {
    let entry = entry(caller, &change, expiry::now());
    if let Err(error) = store.insert_audit(&entry).await {
        metrics.audit_failed();
        // What was done and to what, never the before and after (nor the database's
        // words about them, which these are not part of).
        tracing::error!(
            action = change.action,
            target = change.target,
            actor_kind = caller.actor.kind.as_str(),
            actor_id = %caller.actor.id,
            %error,
            "the audit log entry of a change could not be written"
        );
    }
}

/// The row `change` by `caller` at `now` becomes (its secrets are stripped as it is
/// stored).
fn entry(caller: &Caller, change: &Change<'_>, now: i64) -> NewAuditEntry {
    NewAuditEntry {
        at: now,
        actor_kind: caller.actor.kind.as_str().to_owned(),
        actor_id: caller.actor.id.clone(),
        actor_account: caller.account().map(str::to_owned),
        address: caller
            .address
            .map(|address| address.to_canonical().to_string()),
        action: change.action.to_owned(),
        target: change.target.to_owned(),
        account: change.account.map(str::to_owned),
        before: change.before.clone(),
        after: change.after.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Actor, ActorKind, Role, Scope};
    use crate::store::AuditFilter;
    use serde_json::json;

    fn change(account: Option<&str>) -> Change<'_> {
        Change {
            action: "key.update",
            target: "k1",
            account,
            before: Some(json!({"name": "old", "key_hash": "abc"})),
            after: Some(json!({"name": "new"})),
        }
    }

    #[test]
    fn an_entry_names_the_actor_its_account_and_its_address() {
        let tenant = Caller {
            actor: Actor {
                kind: ActorKind::Token,
                id: "tok_1".into(),
            },
            scope: Scope::Account {
                name: "acme".into(),
                role: Role::Owner,
            },
            address: Some("::ffff:10.0.0.7".parse().unwrap()),
        };
        let row = entry(&tenant, &change(Some("acme")), 42);
        assert_eq!(
            (
                row.at,
                row.actor_kind.as_str(),
                row.actor_id.as_str(),
                row.actor_account.as_deref(),
                row.address.as_deref(),
                row.account.as_deref()
            ),
            (
                42,
                "token",
                "tok_1",
                Some("acme"),
                Some("10.0.0.7"),
                Some("acme")
            )
        );
        let admin = entry(&Caller::admin(None), &change(None), 42);
        assert_eq!(
            (
                admin.actor_kind.as_str(),
                admin.actor_account,
                admin.address
            ),
            ("admin", None, None)
        );
    }

    #[tokio::test]
    async fn a_change_is_recorded_without_its_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        let metrics = Metrics::default();
        record_in(&store, &metrics, &Caller::admin(None), change(Some("acme"))).await;
        let (rows, total) = store
            .list_audit(&AuditFilter::default(), 10, 0)
            .await
            .unwrap();
        assert_eq!(total, 1);
        assert_eq!(rows[0].before, Some(json!({"name": "old"})));
        assert_eq!(metrics.audit_failures(), 0);
    }

    #[tokio::test]
    async fn a_failed_record_is_counted_and_does_not_fail() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path()).await.unwrap();
        store.close().await;
        let metrics = Metrics::default();
        record_in(&store, &metrics, &Caller::admin(None), change(None)).await;
        record_in(&store, &metrics, &Caller::admin(None), change(None)).await;
        assert_eq!(metrics.audit_failures(), 2);
    }
}
