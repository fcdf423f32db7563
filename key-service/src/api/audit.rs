//! `GET /api/v1/audit`: the audit log ([`crate::audit`]), newest first. The operator sees
//! every entry; a tenant sees its own account's entries only, whatever it asks for.

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::Serialize;

use crate::access::{ActorKind, Caller};
use crate::error::ApiError;
use crate::expiry;
use crate::store::{AuditFilter, AuditRow};
use crate::validate::{number, time, PER_PAGE_DEFAULT, PER_PAGE_MAX};
use crate::AppState;

/// The query parameters the route knows; any other is refused.
const PARAMETERS: [&str; 9] = [
    "actor_kind",
    "actor_id",
    "action",
    "target",
    "account",
    "from",
    "to",
    "page",
    "per_page",
];

/// Who made a change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditActor {
    /// `admin`, `token` (an account token), `sso` (a console session) or `cli`.
    pub kind: String,
    /// `admin`, the account token's id, the SSO subject, or the OS user of a CLI run;
    /// never a credential.
    pub id: String,
    /// The account a tenant actor belongs to; `null` for the operator.
    pub account: Option<String>,
}

/// One change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// The order of writing: a larger id is a later entry.
    pub id: i64,
    /// When (RFC 3339, to the second).
    pub at: String,
    pub actor: AuditActor,
    /// The caller's IP address; `null` when unknown (and, to a tenant, on entries of the
    /// operator's).
    pub address: Option<String>,
    /// `<thing>.<verb>`, e.g. `key.create`, `webhook.rotate_secret`.
    pub action: String,
    /// The id or name of the thing changed.
    pub target: String,
    /// The account the thing belongs to; `null` for something global (a group, a price).
    pub account: Option<String>,
    /// The thing as it was (`null` for a creation); secrets are never included.
    pub before: Option<serde_json::Value>,
    /// The thing as it became (`null` for a deletion); secrets are never included.
    pub after: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub page: u32,
    pub per_page: u32,
    pub total: u64,
}

/// A filter and a page from the query string: unknown parameters and bad values are
/// refused (400) naming the parameter; empty values count as absent.
fn read_query(query: Option<&str>) -> Result<(AuditFilter, u32, u32), ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| ApiError::InvalidRequest {
            param: None,
            code: "invalid_query",
            message: format!("the query string could not be decoded: {e}"),
        })?;
    let (mut filter, mut page, mut per_page) = (AuditFilter::default(), 1, PER_PAGE_DEFAULT);
    for (name, value) in pairs {
        if !PARAMETERS.contains(&name.as_str()) {
            return Err(ApiError::InvalidRequest {
                param: Some(name.clone()),
                code: "unknown_parameter",
                message: format!("unknown query parameter {name:?}"),
            });
        }
        if value.is_empty() {
            continue;
        }
        match name.as_str() {
            "actor_kind" => filter.actor_kind = Some(actor_kind(&value)?.as_str().to_owned()),
            "actor_id" => filter.actor_id = Some(value),
            "action" => filter.action = Some(value),
            "target" => filter.target = Some(value),
            "account" => filter.account = Some(value),
            "from" => filter.from = Some(time("from", &value)?),
            "to" => filter.to = Some(time("to", &value)?),
            "page" => page = number("page", &value, 1, u32::MAX)?,
            _ => per_page = number("per_page", &value, 1, PER_PAGE_MAX)?,
        }
    }
    Ok((filter, page, per_page))
}

fn actor_kind(value: &str) -> Result<ActorKind, ApiError> {
    [
        ActorKind::Admin,
        ActorKind::Token,
        ActorKind::Sso,
        ActorKind::Cli,
    ]
    .into_iter()
    .find(|kind| kind.as_str() == value)
    .ok_or_else(|| ApiError::invalid("actor_kind", "actor_kind must be admin, token, sso or cli"))
}

/// An entry as `caller` may see it: a tenant does not learn the operator's address.
fn view(row: AuditRow, caller: &Caller) -> AuditEntry {
    let own = caller.account();
    let address = match own {
        Some(own) if row.actor_account.as_deref() != Some(own) => None,
        _ => row.address,
    };
    AuditEntry {
        id: row.id,
        at: expiry::to_rfc3339(row.at).unwrap_or_default(),
        actor: AuditActor {
            kind: row.actor_kind,
            id: row.actor_id,
            account: row.actor_account,
        },
        address,
        action: row.action,
        target: row.target,
        account: row.account,
        before: row.before,
        after: row.after,
    }
}

/// `GET /api/v1/audit`: changes made through the management API, newest first. Filters:
/// `actor_kind`, `actor_id`, `action` (exact, or a prefix ending in `.` such as `key.`,
/// or in `*`), `target`, `account`, `from` and `to` (unix seconds or RFC 3339, `to`
/// exclusive); `page`, `per_page`. A tenant sees the entries of its own account only:
/// its `account` filter is set to it (another account gives an empty page).
#[utoipa::path(
    get,
    operation_id = "list_audit",
    path = "/api/v1/audit",
    tag = "audit",
    security(("admin" = [])),
    params(
        ("actor_kind" = Option<String>, Query, description = "admin, token, sso or cli"),
        ("actor_id" = Option<String>, Query),
        ("action" = Option<String>, Query, description = "exact, or a prefix ending in . or *"),
        ("target" = Option<String>, Query),
        ("account" = Option<String>, Query),
        ("from" = Option<String>, Query, description = "unix seconds or RFC 3339, inclusive"),
        ("to" = Option<String>, Query, description = "unix seconds or RFC 3339, exclusive"),
        ("page" = Option<u32>, Query, minimum = 1),
        ("per_page" = Option<u32>, Query, minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditPage>, ApiError> {
    let (mut filter, page, per_page) = read_query(query.as_deref())?;
    if !caller.narrow(&mut filter.account) {
        return Ok(Json(AuditPage {
            entries: Vec::new(),
            page,
            per_page,
            total: 0,
        }));
    }
    let offset = u64::from(page.saturating_sub(1)).saturating_mul(u64::from(per_page));
    let (rows, total) = state.store.list_audit(&filter, per_page, offset).await?;
    Ok(Json(AuditPage {
        entries: rows.into_iter().map(|row| view(row, &caller)).collect(),
        page,
        per_page,
        total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(query: &str) -> Option<String> {
        match read_query(Some(query)) {
            Err(ApiError::InvalidRequest { param, .. }) => param,
            other => panic!("{query}: {other:?}"),
        }
    }

    #[test]
    fn the_query_is_read_whole_or_refused_naming_the_parameter() {
        let (filter, page, per_page) = read_query(Some(
            "actor_kind=token&actor_id=tok_1&action=key.&target=k1&account=acme\
             &from=100&to=2023-11-14T22:13:20Z&page=3&per_page=5&actor_id=",
        ))
        .unwrap();
        assert_eq!(
            filter,
            AuditFilter {
                actor_kind: Some("token".into()),
                actor_id: Some("tok_1".into()),
                action: Some("key.".into()),
                target: Some("k1".into()),
                account: Some("acme".into()),
                from: Some(100),
                to: Some(1_700_000_000),
            }
        );
        assert_eq!((page, per_page), (3, 5));
        assert_eq!(read_query(None).unwrap().2, PER_PAGE_DEFAULT);
        assert_eq!(refused("acount=acme").as_deref(), Some("acount"));
        assert_eq!(refused("actor_kind=root").as_deref(), Some("actor_kind"));
        assert_eq!(refused("from=yesterday").as_deref(), Some("from"));
        assert_eq!(refused("per_page=101").as_deref(), Some("per_page"));
        assert_eq!(refused("page=0").as_deref(), Some("page"));
    }
}
