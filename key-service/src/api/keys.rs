//! `/api/v1/keys`: the HTTP face of [`crate::keys`]. Each handler reads the request,
//! calls the domain with the clock, and shapes the answer.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use crate::access::Caller;
use crate::audit::{self, Change};
use crate::error::ApiError;
use crate::expiry;
use crate::extract::ApiJson;
use crate::keys::{self, CreateKey, KeyView, RotateKey, UpdateKey};
use crate::store::KeyFilter;
use crate::validate::{number, PER_PAGE_DEFAULT, PER_PAGE_MAX};
use crate::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Created {
    pub keys: Vec<KeyView>,
}

/// `POST /api/v1/keys`
#[utoipa::path(
    post,
    operation_id = "create_keys",
    path = "/api/v1/keys",
    tag = "keys",
    security(("admin" = [])),
    request_body = CreateKey,
    responses(
        (status = 201, description = "The keys, each with its secret", body = Created),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(mut request): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    caller.own_account(&mut request.account)?;
    // A tenant's account is bounded even without a `max_keys` of its own.
    let default_max = (!caller.is_admin()).then_some(state.tenant_max_keys);
    let keys = keys::create_within(&state.store, request, default_max, expiry::now()).await?;
    for key in &keys {
        audit::record(
            &state,
            &caller,
            Change {
                action: "key.create",
                target: &key.id,
                account: Some(&key.account),
                before: None,
                after: without_secret(key),
            },
        )
        .await;
    }
    Ok((StatusCode::CREATED, Json(Created { keys })))
}

/// A key as the audit log keeps it: never its secret, not even the one just made.
fn without_secret(key: &KeyView) -> Option<serde_json::Value> {
    audit::snapshot(&KeyView {
        key: None,
        ..key.clone()
    })
}

/// The key `id` if the caller may see it; to a tenant another account's key does not
/// exist (the same 404 as an unknown id).
async fn key_of(state: &AppState, caller: &Caller, id: &str) -> Result<KeyView, ApiError> {
    let key = keys::get(&state.store, id, expiry::now()).await?;
    if caller.sees(&key.account) {
        Ok(key)
    } else {
        Err(keys::no_such_key(id))
    }
}

/// Query of `GET /api/v1/keys`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListParams {
    pub filter: KeyFilter,
    pub page: u32,
    pub per_page: u32,
}

impl ListParams {
    /// Reads `status`, `group`, `account`, `q`, `rotation_due`, `page` and `per_page`; an empty value
    /// means "not given", anything else unknown is refused so that a typo is not mistaken
    /// for "no filter".
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|e| ApiError::InvalidRequest {
                param: None,
                code: "invalid_query",
                message: format!("the query string could not be decoded: {e}"),
            })?;
        let mut params = ListParams {
            filter: KeyFilter::default(),
            page: 1,
            per_page: PER_PAGE_DEFAULT,
        };
        for (name, value) in pairs {
            if value.is_empty() {
                continue;
            }
            match name.as_str() {
                "status" => {
                    params.filter.status = Some(value.parse().map_err(|()| {
                        ApiError::invalid(
                            "status",
                            "status must be one of active, disabled, expired, exhausted",
                        )
                    })?)
                }
                "group" => params.filter.group = Some(value),
                "account" => params.filter.account = Some(value),
                "q" => params.filter.name_contains = Some(value),
                "rotation_due" => {
                    params.filter.rotation_due = Some(match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(ApiError::invalid(
                                "rotation_due",
                                "rotation_due must be true or false",
                            ))
                        }
                    })
                }
                "page" => params.page = number("page", &value, 1, u32::MAX)?,
                "per_page" => params.per_page = number("per_page", &value, 1, PER_PAGE_MAX)?,
                _ => {
                    return Err(ApiError::InvalidRequest {
                        param: Some(name.clone()),
                        code: "unknown_parameter",
                        message: format!("unknown query parameter {name:?}"),
                    })
                }
            }
        }
        Ok(params)
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyPage {
    pub keys: Vec<KeyView>,
    pub page: u32,
    pub per_page: u32,
    pub total: u64,
}

/// `GET /api/v1/keys`
#[utoipa::path(
    get,
    operation_id = "list_keys",
    path = "/api/v1/keys",
    tag = "keys",
    security(("admin" = [])),
    params(
        ("status" = Option<crate::store::KeyStatus>, Query),
        ("group" = Option<String>, Query),
        ("account" = Option<String>, Query),
        ("q" = Option<String>, Query, description = "part of the name"),
        ("rotation_due" = Option<bool>, Query, description = "true: only keys whose rotate_by has passed"),
        ("page" = Option<u32>, Query, minimum = 1),
        ("per_page" = Option<u32>, Query, minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, body = KeyPage),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<KeyPage>, ApiError> {
    let mut params = ListParams::parse(query.as_deref().unwrap_or(""))?;
    if !caller.narrow(&mut params.filter.account) {
        return Ok(Json(KeyPage {
            keys: Vec::new(),
            page: params.page,
            per_page: params.per_page,
            total: 0,
        }));
    }
    let offset = u64::from(params.page - 1) * u64::from(params.per_page);
    let (keys, total) = keys::list(
        &state.store,
        &params.filter,
        params.per_page,
        offset,
        expiry::now(),
    )
    .await?;
    Ok(Json(KeyPage {
        keys,
        page: params.page,
        per_page: params.per_page,
        total,
    }))
}

/// `PATCH /api/v1/keys/{id}`
#[utoipa::path(
    patch,
    operation_id = "update_key",
    path = "/api/v1/keys/{id}",
    tag = "keys",
    security(("admin" = [])),
    params(("id" = String, Path)),
    request_body = UpdateKey,
    responses(
        (status = 200, body = KeyView),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateKey>,
) -> Result<Json<KeyView>, ApiError> {
    let before = key_of(&state, &caller, &id).await?;
    let after = keys::update(&state.store, &id, &before.account, request, expiry::now()).await?;
    audit::record(
        &state,
        &caller,
        Change {
            action: "key.update",
            target: &id,
            account: Some(&before.account),
            before: audit::snapshot(&before),
            after: without_secret(&after),
        },
    )
    .await;
    Ok(Json(after))
}

/// `POST /api/v1/keys/{id}/rotate`: a new secret for the same key (id, settings and
/// history kept); the old secret stops with the filter's next sync, or at the end of an
/// optional `grace_period`. The body may be empty.
#[utoipa::path(
    post,
    operation_id = "rotate_key",
    path = "/api/v1/keys/{id}/rotate",
    tag = "keys",
    security(("admin" = [])),
    params(("id" = String, Path)),
    request_body(content = Option<RotateKey>, description = "optional"),
    responses(
        (status = 200, description = "The key with its new secret", body = KeyView),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<KeyView>, ApiError> {
    let request: RotateKey = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKey::default()
    } else {
        crate::extract::parse(&body)?
    };
    let before = key_of(&state, &caller, &id).await?;
    let after = keys::rotate(&state.store, &id, &request, expiry::now()).await?;
    audit::record(
        &state,
        &caller,
        Change {
            action: "key.rotate",
            target: &id,
            account: Some(&before.account),
            before: audit::snapshot(&before),
            after: without_secret(&after),
        },
    )
    .await;
    Ok(Json(after))
}

/// `DELETE /api/v1/keys/{id}`
#[utoipa::path(
    delete,
    operation_id = "delete_key",
    path = "/api/v1/keys/{id}",
    tag = "keys",
    security(("admin" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let before = key_of(&state, &caller, &id).await?;
    keys::delete(&state.store, &id, expiry::now()).await?;
    audit::record(
        &state,
        &caller,
        Change {
            action: "key.delete",
            target: &id,
            account: Some(&before.account),
            before: audit::snapshot(&before),
            after: None,
        },
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/keys/{id}`
#[utoipa::path(
    get,
    operation_id = "get_key",
    path = "/api/v1/keys/{id}",
    tag = "keys",
    security(("admin" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = KeyView),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    Ok(Json(key_of(&state, &caller, &id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyStatus;

    #[test]
    fn list_query_parses_filters_and_paging() {
        let p =
            ListParams::parse("status=expired&group=g&account=a&q=ci&page=3&per_page=50").unwrap();
        assert_eq!(p.filter.status, Some(KeyStatus::Expired));
        assert_eq!(p.filter.group.as_deref(), Some("g"));
        assert_eq!(p.filter.account.as_deref(), Some("a"));
        assert_eq!(p.filter.name_contains.as_deref(), Some("ci"));
        assert_eq!((p.page, p.per_page), (3, 50));
        let p = ListParams::parse("rotation_due=true").unwrap();
        assert_eq!(p.filter.rotation_due, Some(true));

        let p = ListParams::parse("q=&status=").unwrap();
        assert_eq!(
            (p.filter, p.page, p.per_page),
            (KeyFilter::default(), 1, 20)
        );

        for (query, param) in [
            ("status=gone", "status"),
            ("page=0", "page"),
            ("page=-1", "page"),
            ("page=x", "page"),
            ("per_page=101", "per_page"),
            ("per_page=0", "per_page"),
            ("rotation_due=yes", "rotation_due"),
            ("perpage=5", "perpage"),
        ] {
            match ListParams::parse(query) {
                Err(ApiError::InvalidRequest { param: Some(p), .. }) => {
                    assert_eq!(p, param, "{query}")
                }
                other => panic!("{query}: {other:?}"),
            }
        }
    }
}
