//! Account tokens (`/api/v1/accounts/{name}/tokens`, the operator's) and `/api/v1/me`
//! (anyone's: who the service takes the caller for).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::access::{Caller, Role};
use crate::audit::{self, Change};
use crate::auth::ACCOUNT_TOKEN_PREFIX;
use crate::error::ApiError;
use crate::expiry;
use crate::extract::ApiJson;
use crate::random;
use crate::store::{AccountTokenRow, NewAccountToken, StoreError};
use crate::AppState;

/// Random characters after the prefix: base62, about 238 bits.
const TOKEN_LEN: usize = 40;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is for (1-64 characters).
    pub name: String,
    pub role: Role,
}

/// A token as created or rotated: the only time its secret is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedToken {
    #[serde(flatten)]
    pub token: AccountTokenRow,
    /// `kgt_...`: shown this once; only its SHA-256 is kept.
    pub secret: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Tokens {
    pub tokens: Vec<AccountTokenRow>,
}

/// Who the service takes the caller for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// `admin`, `token` or `sso`.
    pub kind: crate::access::ActorKind,
    /// The admin: `admin`; an account token: its id; SSO: the provider's subject.
    pub id: String,
    /// The one account a tenant sees; `null` for the operator.
    pub account: Option<String>,
    pub role: Option<Role>,
}

/// A fresh secret and what is kept of it: its digest (hex) and its masked form.
fn new_secret() -> Result<(String, String, String), ApiError> {
    let random = random::base62(TOKEN_LEN).map_err(|e| ApiError::from(StoreError::Random(e)))?;
    let secret = format!("{ACCOUNT_TOKEN_PREFIX}{random}");
    let digest = keygate_core::keys::secret::hash_hex(&keygate_core::keys::secret::hash(&secret));
    let masked = format!("{ACCOUNT_TOKEN_PREFIX}...{}", &random[TOKEN_LEN - 4..]);
    Ok((secret, digest, masked))
}

/// The account's token `id`, or 404 (also when it belongs to another account).
async fn token_of(state: &AppState, account: &str, id: &str) -> Result<AccountTokenRow, ApiError> {
    match state.store.get_account_token(id).await? {
        Some(token) if token.account == account => Ok(token),
        _ => Err(ApiError::NotFound(format!(
            "no token {id} in account {account}"
        ))),
    }
}

/// `POST /api/v1/accounts/{name}/tokens`: the answer carries the token, shown this once.
#[utoipa::path(
    post,
    operation_id = "create_account_token",
    path = "/api/v1/accounts/{name}/tokens",
    tag = "accounts",
    security(("admin" = [])),
    params(("name" = String, Path, description = "the account")),
    request_body = CreateToken,
    responses(
        (status = 201, body = IssuedToken),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
    ApiJson(request): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "name must be 1-64 characters, none of them control characters",
        ));
    }
    if state
        .store
        .get_account(&account, expiry::now())
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no account {account}")));
    }
    let (secret, token_hash, masked) = new_secret()?;
    let id = format!(
        "tok_{}",
        random::base62(16).map_err(|e| ApiError::from(StoreError::Random(e)))?
    );
    let now = expiry::now();
    let new = NewAccountToken {
        id: id.clone(),
        account: account.clone(),
        name: name.to_owned(),
        role: request.role,
        token_hash,
        masked,
    };
    match state.store.insert_account_token(&new, now).await {
        Err(e) if e.is_foreign_key_violation() => {
            return Err(ApiError::NotFound(format!("no account {account}")))
        }
        other => other?,
    }
    let token = token_of(&state, &account, &id).await?;
    audit::record(
        &state,
        &caller,
        Change {
            action: "token.create",
            target: &id,
            account: Some(&account),
            before: None,
            after: audit::snapshot(&token),
        },
    )
    .await;
    Ok((StatusCode::CREATED, Json(IssuedToken { token, secret })))
}

/// `GET /api/v1/accounts/{name}/tokens`: never the secrets.
#[utoipa::path(
    get,
    operation_id = "list_account_tokens",
    path = "/api/v1/accounts/{name}/tokens",
    tag = "accounts",
    security(("admin" = [])),
    params(("name" = String, Path, description = "the account")),
    responses(
        (status = 200, body = Tokens),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Path(account): Path<String>,
) -> Result<Json<Tokens>, ApiError> {
    if state
        .store
        .get_account(&account, expiry::now())
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no account {account}")));
    }
    let tokens = state.store.list_account_tokens(&account).await?;
    Ok(Json(Tokens { tokens }))
}

/// `DELETE /api/v1/accounts/{name}/tokens/{id}`: revokes it at once.
#[utoipa::path(
    delete,
    operation_id = "revoke_account_token",
    path = "/api/v1/accounts/{name}/tokens/{id}",
    tag = "accounts",
    security(("admin" = [])),
    params(("name" = String, Path), ("id" = String, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let before = token_of(&state, &account, &id).await?;
    if !state.store.delete_account_token(&id).await? {
        return Err(ApiError::NotFound(format!(
            "no token {id} in account {account}"
        )));
    }
    audit::record(
        &state,
        &caller,
        Change {
            action: "token.revoke",
            target: &id,
            account: Some(&account),
            before: audit::snapshot(&before),
            after: None,
        },
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/accounts/{name}/tokens/{id}/rotate`: a new secret, shown this once; the
/// old one stops working at once.
#[utoipa::path(
    post,
    operation_id = "rotate_account_token",
    path = "/api/v1/accounts/{name}/tokens/{id}/rotate",
    tag = "accounts",
    security(("admin" = [])),
    params(("name" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, body = IssuedToken),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
) -> Result<Json<IssuedToken>, ApiError> {
    let before = token_of(&state, &account, &id).await?;
    let (secret, token_hash, masked) = new_secret()?;
    if !state
        .store
        .rotate_account_token(&id, &token_hash, &masked)
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "no token {id} in account {account}"
        )));
    }
    let token = token_of(&state, &account, &id).await?;
    audit::record(
        &state,
        &caller,
        Change {
            action: "token.rotate",
            target: &id,
            account: Some(&account),
            before: audit::snapshot(&before),
            after: audit::snapshot(&token),
        },
    )
    .await;
    Ok(Json(IssuedToken { token, secret }))
}

/// `GET /api/v1/me`: who the service takes the caller for; the console asks it after
/// sign-in to know which pages to show.
#[utoipa::path(
    get,
    operation_id = "me",
    path = "/api/v1/me",
    tag = "accounts",
    security(("admin" = [])),
    responses(
        (status = 200, body = Me),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn me(caller: Caller) -> Json<Me> {
    Json(Me {
        kind: caller.actor.kind,
        id: caller.actor.id.clone(),
        account: caller.account().map(str::to_owned),
        role: caller.role(),
    })
}
