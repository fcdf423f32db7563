//! `/api/v1/webhooks`: the HTTP face of [`crate::alerts::webhooks`], and each webhook's
//! delivery log.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use crate::access::Caller;
use crate::alerts::webhooks::{self, CreateWebhook, DeliveryView, UpdateWebhook, WebhookView};
use crate::audit::{self, Change};
use crate::error::ApiError;
use crate::expiry;
use crate::extract::ApiJson;
use crate::validate::{number, PER_PAGE_DEFAULT, PER_PAGE_MAX};
use crate::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Webhooks {
    pub webhooks: Vec<WebhookView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestQueued {
    /// The `test` event's id, as its delivery will carry it.
    pub event_id: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryView>,
    pub page: u32,
    pub per_page: u32,
    pub total: u64,
}

/// Reads a query of known parameters only (a typo is refused, not taken for "no
/// filter"); empty values count as absent.
fn query_pairs(query: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| ApiError::InvalidRequest {
            param: None,
            code: "invalid_query",
            message: format!("the query string could not be decoded: {e}"),
        })?;
    for (name, _) in &pairs {
        if !known.contains(&name.as_str()) {
            return Err(ApiError::InvalidRequest {
                param: Some(name.clone()),
                code: "unknown_parameter",
                message: format!("unknown query parameter {name:?}"),
            });
        }
    }
    Ok(pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect())
}

/// `POST /api/v1/webhooks`: the answer carries the signing secret, shown this once.
#[utoipa::path(
    post,
    operation_id = "create_webhook",
    path = "/api/v1/webhooks",
    tag = "webhooks",
    security(("admin" = [])),
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "The webhook with its secret", body = WebhookView),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(mut request): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    // A tenant's webhooks hear of its own account only.
    caller.own_account(&mut request.account)?;
    let public_only = !caller.is_admin();
    let webhook = webhooks::create(&state.store, request, public_only, expiry::now()).await?;
    audit::record(
        &state,
        &caller,
        Change {
            action: "webhook.create",
            target: &webhook.id,
            account: webhook.account.as_deref(),
            before: None,
            after: without_secret(&webhook),
        },
    )
    .await;
    Ok((StatusCode::CREATED, Json(webhook)))
}

/// A webhook as the audit log keeps it: never its signing secret.
fn without_secret(webhook: &WebhookView) -> Option<serde_json::Value> {
    audit::snapshot(&WebhookView {
        secret: None,
        ..webhook.clone()
    })
}

/// The webhook `id` if the caller may see it: to a tenant, global webhooks and other
/// accounts' do not exist (the same 404 as an unknown id).
async fn webhook_of(state: &AppState, caller: &Caller, id: &str) -> Result<WebhookView, ApiError> {
    let webhook = webhooks::get(&state.store, id).await?;
    if caller.sees_owned(webhook.account.as_deref()) {
        Ok(webhook)
    } else {
        Err(webhooks::no_such_webhook(id))
    }
}

/// `GET /api/v1/webhooks`: every webhook, or an account's own (`?account=`).
#[utoipa::path(
    get,
    operation_id = "list_webhooks",
    path = "/api/v1/webhooks",
    tag = "webhooks",
    security(("admin" = [])),
    params(("account" = Option<String>, Query)),
    responses(
        (status = 200, body = Webhooks),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Webhooks>, ApiError> {
    let pairs = query_pairs(query.as_deref(), &["account"])?;
    let mut account = pairs.into_iter().next().map(|(_, v)| v);
    if !caller.narrow(&mut account) {
        return Ok(Json(Webhooks {
            webhooks: Vec::new(),
        }));
    }
    let webhooks = webhooks::list(&state.store, account.as_deref()).await?;
    Ok(Json(Webhooks { webhooks }))
}

/// `GET /api/v1/webhooks/{id}`
#[utoipa::path(
    get,
    operation_id = "get_webhook",
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    security(("admin" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = WebhookView),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(webhook_of(&state, &caller, &id).await?))
}

/// `PATCH /api/v1/webhooks/{id}`: `url`, `events`, `enabled`.
#[utoipa::path(
    patch,
    operation_id = "update_webhook",
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    security(("admin" = [])),
    params(("id" = String, Path)),
    request_body = UpdateWebhook,
    responses(
        (status = 200, body = WebhookView),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateWebhook>,
) -> Result<Json<WebhookView>, ApiError> {
    let before = webhook_of(&state, &caller, &id).await?;
    let after = webhooks::update(&state.store, &id, request).await?;
    audit::record(
        &state,
        &caller,
        Change {
            action: "webhook.update",
            target: &id,
            account: before.account.as_deref(),
            before: without_secret(&before),
            after: without_secret(&after),
        },
    )
    .await;
    Ok(Json(after))
}

/// `DELETE /api/v1/webhooks/{id}`: the webhook and its delivery log.
#[utoipa::path(
    delete,
    operation_id = "delete_webhook",
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
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
    let before = webhook_of(&state, &caller, &id).await?;
    webhooks::delete(&state.store, &id).await?;
    audit::record(
        &state,
        &caller,
        Change {
            action: "webhook.delete",
            target: &id,
            account: before.account.as_deref(),
            before: without_secret(&before),
            after: None,
        },
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/webhooks/{id}/rotate-secret`: a new signing secret, shown this once.
#[utoipa::path(
    post,
    operation_id = "rotate_webhook_secret",
    path = "/api/v1/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    security(("admin" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The webhook with its new secret", body = WebhookView),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let before = webhook_of(&state, &caller, &id).await?;
    let after = webhooks::rotate_secret(&state.store, &id).await?;
    audit::record(
        &state,
        &caller,
        Change {
            action: "webhook.rotate_secret",
            target: &id,
            account: before.account.as_deref(),
            before: without_secret(&before),
            after: without_secret(&after),
        },
    )
    .await;
    Ok(Json(after))
}

/// `POST /api/v1/webhooks/{id}/test`: queues a `test` event for this webhook alone,
/// delivered (signed, retried) like any other.
#[utoipa::path(
    post,
    operation_id = "test_webhook",
    path = "/api/v1/webhooks/{id}/test",
    tag = "webhooks",
    security(("admin" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 202, description = "Queued", body = TestQueued),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
        (status = 409, description = "The webhook is disabled", body = crate::error::Body),
    ),
)]
pub async fn test(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TestQueued>), ApiError> {
    webhook_of(&state, &caller, &id).await?;
    let event_id = webhooks::test(&state.store, &id, expiry::now()).await?;
    Ok((StatusCode::ACCEPTED, Json(TestQueued { event_id })))
}

/// `GET /api/v1/webhooks/{id}/deliveries`: the delivery log, newest first.
#[utoipa::path(
    get,
    operation_id = "list_deliveries",
    path = "/api/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    security(("admin" = [])),
    params(
        ("id" = String, Path),
        ("status" = Option<String>, Query, description = "pending, delivered or failed"),
        ("page" = Option<u32>, Query, minimum = 1),
        ("per_page" = Option<u32>, Query, minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, body = DeliveryPage),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeliveryPage>, ApiError> {
    webhook_of(&state, &caller, &id).await?;
    let (mut status, mut page, mut per_page) = (None, 1, PER_PAGE_DEFAULT);
    for (name, value) in query_pairs(query.as_deref(), &["status", "page", "per_page"])? {
        match name.as_str() {
            "status" => status = Some(webhooks::check_status(&value)?),
            "page" => page = number("page", &value, 1, u32::MAX)?,
            _ => per_page = number("per_page", &value, 1, PER_PAGE_MAX)?,
        }
    }
    let offset = u64::from(page - 1) * u64::from(per_page);
    let (deliveries, total) =
        webhooks::deliveries(&state.store, &id, status, per_page, offset).await?;
    Ok(Json(DeliveryPage {
        deliveries,
        page,
        per_page,
        total,
    }))
}
