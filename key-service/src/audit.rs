//! The audit log: who changed what, when, and from where (issue 21, part 3).
//!
//! Handlers call [`record`] after a change has been made, with the caller and the thing
//! changed as it was before and as it is after (the API's own views of it, which never
//! hold a secret; [`record`] strips secret-named fields once more all the same).

use serde::Serialize;

use crate::access::Caller;
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
/// to record it is logged and counted, not answered to the client as an error.
pub async fn record(state: &AppState, caller: &Caller, change: Change<'_>) {
    // Filled in by the audit log's store (issue 21, part 3).
    let _ = (state, caller, change);
}
