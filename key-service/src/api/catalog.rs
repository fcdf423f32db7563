//! `/api/v1/groups`, `/api/v1/models` and `/api/v1/accounts`: the groups keys belong to
//! (model list, price ratio, RPM, TPM), the model prices usage is billed at, and the
//! accounts whose balances keys spend.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::access::Caller;
use crate::audit::{self, Change};
use crate::budget::Period;
use crate::error::ApiError;
use crate::expiry;
use crate::extract::ApiJson;
use crate::store::{AccountEdit, AccountRow, GroupRow, ModelPrice, NewPrice, Removed};
use crate::validate::{check_models, limit, nullable};
use crate::AppState;

const NAME_MAX: usize = 64;

/// A group, model or account name: 1-64 of `A-Z a-z 0-9 . _ -` (it travels in headers
/// and paths).
fn check_name(param: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            param,
            format!("{param} must be 1-{NAME_MAX} characters of A-Z, a-z, 0-9, '.', '_', '-'"),
        ))
    }
}

/// A model name as prices use it: what clients put in `model` (printable, no `/` so it
/// fits the path), or a route priced per call, `route:/v1/audio/speech` (its slashes
/// escaped in the URL: `route:%2Fv1%2Faudio%2Fspeech`). A trailing `*` makes it a
/// pattern (`gpt-4o-*`).
fn check_model_name(name: &str) -> Result<(), ApiError> {
    let route = name.starts_with("route:/");
    if name.is_empty()
        || name.len() > 256
        || name.chars().any(|c| c.is_control() || (c == '/' && !route))
    {
        return Err(ApiError::invalid(
            "name",
            "a model name must be 1-256 printable characters without '/' \
             (or a route priced per call: route:/path)",
        ));
    }
    Ok(())
}

fn non_negative(param: &str, value: f64) -> Result<f64, ApiError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(ApiError::invalid(
            param,
            format!("{param} must be a number >= 0"),
        ))
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Groups {
    groups: Vec<GroupRow>,
}

/// Body of `PUT /api/v1/groups/{name}`: the whole group; absent fields take the defaults.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutGroup {
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub ratio: Option<f64>,
    #[serde(default)]
    pub rpm: Option<i64>,
    #[serde(default)]
    pub tpm: Option<i64>,
    /// The account that owns the group (its keys alone may use it, its tenants alone see
    /// it); absent or `null` = shared by every account.
    #[serde(default)]
    pub account: Option<String>,
}

impl PutGroup {
    pub fn validate(self, name: &str) -> Result<GroupRow, ApiError> {
        check_name("name", name)?;
        let models = match self.models {
            Some(models) => check_models(models)?,
            None => vec!["*".into()],
        };
        Ok(GroupRow {
            name: name.to_owned(),
            models,
            ratio: non_negative("ratio", self.ratio.unwrap_or(1.0))?,
            rpm: limit("rpm", self.rpm)?,
            tpm: limit("tpm", self.tpm)?,
            account: self
                .account
                .map(|a| check_name("account", &a).map(|()| a))
                .transpose()?,
        })
    }
}

fn no_such(what: &str, name: &str) -> ApiError {
    ApiError::NotFound(format!("there is no {what} named {name:?}"))
}

/// `GET /api/v1/groups`
#[utoipa::path(
    get,
    path = "/api/v1/groups",
    tag = "groups",
    security(("admin" = [])),
    responses(
        (status = 200, body = Groups),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn list_groups(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Groups>, ApiError> {
    let mut groups = state.store.list_groups().await?;
    groups.retain(|g| visible_group(&caller, g));
    Ok(Json(Groups { groups }))
}

/// Shared groups are everyone's to see; an account's own group, its tenants' only.
fn visible_group(caller: &Caller, group: &GroupRow) -> bool {
    group.account.is_none() || caller.sees_owned(group.account.as_deref())
}

/// `GET /api/v1/groups/{name}`
#[utoipa::path(
    get,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    security(("admin" = [])),
    params(("name" = String, Path)),
    responses(
        (status = 200, body = GroupRow),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn get_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<GroupRow>, ApiError> {
    let group = state.store.get_group(&name).await?;
    group
        .filter(|g| visible_group(&caller, g))
        .map(Json)
        .ok_or_else(|| no_such("group", &name))
}

/// `PUT /api/v1/groups/{name}`: 201 when created, 200 when replaced.
#[utoipa::path(
    put,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    security(("admin" = [])),
    params(("name" = String, Path)),
    request_body = PutGroup,
    responses(
        (status = 200, description = "Replaced", body = GroupRow),
        (status = 201, description = "Created", body = GroupRow),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn put_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutGroup>,
) -> Result<(StatusCode, Json<GroupRow>), ApiError> {
    let group = body.validate(&name)?;
    if let Some(account) = &group.account {
        if !state.store.account_exists(account).await? {
            return Err(ApiError::invalid(
                "account",
                format!("there is no account named {account:?}"),
            ));
        }
    }
    let before = state.store.get_group(&name).await?;
    let Some(created) = state.store.put_group(&group, expiry::now()).await? else {
        return Err(ApiError::Conflict(format!(
            "keys of other accounts are in group {name:?}; move them before giving it to one account"
        )));
    };
    audit::record(
        &state,
        &caller,
        Change {
            action: "group.put",
            target: &name,
            account: group.account.as_deref(),
            before: before.as_ref().and_then(audit::snapshot),
            after: audit::snapshot(&group),
        },
    )
    .await;
    tracing::info!(group = %name, created, "group saved");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(group)))
}

/// `DELETE /api/v1/groups/{name}`: only a group no key uses, and never `default`.
#[utoipa::path(
    delete,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    security(("admin" = [])),
    params(("name" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
        (status = 409, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn delete_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if name == "default" {
        return Err(ApiError::Conflict(
            "the default group cannot be deleted".into(),
        ));
    }
    let before = state.store.get_group(&name).await?;
    match state.store.delete_group(&name, expiry::now()).await? {
        Removed::Deleted => {
            tracing::info!(group = %name, "group deleted");
            audit::record(
                &state,
                &caller,
                Change {
                    action: "group.delete",
                    target: &name,
                    account: before.as_ref().and_then(|g| g.account.as_deref()),
                    before: before.as_ref().and_then(audit::snapshot),
                    after: None,
                },
            )
            .await;
            Ok(StatusCode::NO_CONTENT)
        }
        Removed::NotFound => Err(no_such("group", &name)),
        Removed::InUse => Err(ApiError::Conflict(format!(
            "group {name:?} still has keys; move or delete them first"
        ))),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Models {
    models: Vec<ModelPrice>,
}

/// Body of `PUT /api/v1/models/{name}`: credits per 1,000,000 tokens.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPrice {
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Credits per call, beside the token prices (default 0).
    #[serde(default)]
    pub per_request: Option<f64>,
    /// For prompt-cache writes (default: the input price).
    #[serde(default)]
    pub cache_write: Option<f64>,
}

/// `GET /api/v1/models`
#[utoipa::path(
    get,
    path = "/api/v1/models",
    tag = "models",
    security(("admin" = [])),
    responses(
        (status = 200, body = Models),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn list_models(State(state): State<AppState>) -> Result<Json<Models>, ApiError> {
    Ok(Json(Models {
        models: state.store.list_prices().await?,
    }))
}

/// `GET /api/v1/models/{name}`
#[utoipa::path(
    get,
    path = "/api/v1/models/{name}",
    tag = "models",
    security(("admin" = [])),
    params(("name" = String, Path)),
    responses(
        (status = 200, body = ModelPrice),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn get_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelPrice>, ApiError> {
    let price = state.store.get_price(&name).await?;
    price.map(Json).ok_or_else(|| no_such("model price", &name))
}

/// `PUT /api/v1/models/{name}`: 201 when the model had no price, 200 otherwise.
#[utoipa::path(
    put,
    path = "/api/v1/models/{name}",
    tag = "models",
    security(("admin" = [])),
    params(("name" = String, Path)),
    request_body = PutPrice,
    responses(
        (status = 200, description = "Replaced", body = ModelPrice),
        (status = 201, description = "Created", body = ModelPrice),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn put_model(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutPrice>,
) -> Result<(StatusCode, Json<ModelPrice>), ApiError> {
    let before = state.store.get_price(&name).await?;
    check_model_name(&name)?;
    let input = non_negative("input", body.input)?;
    let output = non_negative("output", body.output)?;
    let cached = body
        .cached_input
        .map(|c| non_negative("cached_input", c))
        .transpose()?;
    let per_request = non_negative("per_request", body.per_request.unwrap_or(0.0))?;
    let cache_write = body
        .cache_write
        .map(|c| non_negative("cache_write", c))
        .transpose()?;
    let new = NewPrice {
        input,
        output,
        cached_input: cached,
        cache_write,
        per_request,
    };
    let created = state
        .store
        .put_price(&name, &new, crate::expiry::now())
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let price = ModelPrice {
        name,
        input,
        output,
        cached_input: cached.unwrap_or(input),
        cache_write: cache_write.unwrap_or(input),
        per_request,
    };
    audit::record(
        &state,
        &caller,
        Change {
            action: "model.put",
            target: &price.name,
            account: None,
            before: before.as_ref().and_then(audit::snapshot),
            after: audit::snapshot(&price),
        },
    )
    .await;
    Ok((status, Json(price)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Accounts {
    accounts: Vec<AccountRow>,
}

/// Body of `POST /api/v1/accounts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    pub name: String,
    /// Credits; absent or `null` = unlimited.
    #[serde(default)]
    pub balance: Option<i64>,
    /// Credits the account's keys may spend per period; absent or `null` = no such limit.
    #[serde(default)]
    pub spend_limit: Option<i64>,
    /// `total` (the default), `day`, `week`, `month` or a span such as `72h`.
    #[serde(default)]
    pub quota_period: Option<String>,
    /// How many keys the account may hold; absent or `null` = no limit.
    #[serde(default)]
    pub max_keys: Option<i64>,
}

/// Body of `PATCH /api/v1/accounts/{name}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    /// The new balance; `null` = unlimited.
    #[serde(default, deserialize_with = "nullable")]
    pub balance: Option<Option<i64>>,
    /// The new spending limit per period; `null` = none.
    #[serde(default, deserialize_with = "nullable")]
    pub spend_limit: Option<Option<i64>>,
    /// A new period; a different one than the account has starts one now, with nothing
    /// spent.
    #[serde(default)]
    pub quota_period: Option<String>,
    /// How many keys the account may hold; `null` = no limit.
    #[serde(default, deserialize_with = "nullable")]
    pub max_keys: Option<Option<i64>>,
}

impl UpdateAccount {
    fn validate(self) -> Result<AccountEdit, ApiError> {
        let edit = AccountEdit {
            balance: self.balance,
            spend_limit: self.spend_limit.map(check_spend_limit).transpose()?,
            quota_period: check_period(self.quota_period)?,
            max_keys: self.max_keys.map(check_max_keys).transpose()?,
        };
        if edit == AccountEdit::default() {
            return Err(ApiError::invalid(
                "balance",
                "give balance, spend_limit, quota_period or max_keys (null balance = unlimited)",
            ));
        }
        Ok(edit)
    }
}

/// `GET /api/v1/accounts`
#[utoipa::path(
    get,
    path = "/api/v1/accounts",
    tag = "accounts",
    security(("admin" = [])),
    responses(
        (status = 200, body = Accounts),
        (status = 401, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn list_accounts(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Accounts>, ApiError> {
    let mut accounts = state.store.list_accounts(expiry::now()).await?;
    accounts.retain(|a| caller.sees(&a.name));
    Ok(Json(Accounts { accounts }))
}

/// `POST /api/v1/accounts`: 201, or 409 when the name is taken.
#[utoipa::path(
    post,
    path = "/api/v1/accounts",
    tag = "accounts",
    security(("admin" = [])),
    request_body = CreateAccount,
    responses(
        (status = 201, body = AccountRow),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 409, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn create_account(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateAccount>,
) -> Result<(StatusCode, Json<AccountRow>), ApiError> {
    check_name("name", &body.name)?;
    let now = expiry::now();
    // Checked before anything is stored; a new account has no keys yet, so its budget
    // can follow in a second write.
    let budget = AccountEdit {
        balance: None,
        spend_limit: check_spend_limit(body.spend_limit)?.map(Some),
        quota_period: check_period(body.quota_period)?,
        max_keys: body.max_keys.map(|m| check_max_keys(Some(m))).transpose()?,
    };
    match state
        .store
        .create_account(&body.name, body.balance, now)
        .await
    {
        Ok(()) => {}
        Err(e) if e.is_unique_violation() => {
            return Err(ApiError::Conflict(format!(
                "an account named {:?} already exists",
                body.name
            )))
        }
        Err(e) => return Err(e.into()),
    }
    if budget != AccountEdit::default() {
        state.store.update_account(&body.name, &budget, now).await?;
    }
    tracing::info!(account = %body.name, "account created");
    let account = read_account(&state, &body.name, now).await?;
    audit::record(
        &state,
        &caller,
        Change {
            action: "account.create",
            target: &account.name,
            account: Some(&account.name),
            before: None,
            after: audit::snapshot(&account),
        },
    )
    .await;
    Ok((StatusCode::CREATED, Json(account)))
}

fn check_max_keys(max: Option<i64>) -> Result<Option<i64>, ApiError> {
    match max {
        Some(max) if max < 0 => Err(ApiError::invalid(
            "max_keys",
            format!("max_keys must be 0 or more, got {max}"),
        )),
        _ => Ok(max),
    }
}

async fn read_account(state: &AppState, name: &str, now: i64) -> Result<AccountRow, ApiError> {
    state
        .store
        .get_account(name, now)
        .await?
        .ok_or_else(|| no_such("account", name))
}

fn check_spend_limit(limit: Option<i64>) -> Result<Option<i64>, ApiError> {
    match limit {
        Some(limit) if limit < 0 => Err(ApiError::invalid(
            "spend_limit",
            format!("spend_limit must be 0 or more, got {limit}"),
        )),
        _ => Ok(limit),
    }
}

fn check_period(period: Option<String>) -> Result<Option<Period>, ApiError> {
    period
        .map(|p| p.parse::<Period>())
        .transpose()
        .map_err(|e| ApiError::invalid("quota_period", e.to_string()))
}

/// `PATCH /api/v1/accounts/{name}`: sets the balance, the spending limit per period or
/// the period.
#[utoipa::path(
    patch,
    path = "/api/v1/accounts/{name}",
    tag = "accounts",
    security(("admin" = [])),
    params(("name" = String, Path)),
    request_body = UpdateAccount,
    responses(
        (status = 200, body = AccountRow),
        (status = 400, description = "The contract's error", body = crate::error::Body),
        (status = 401, description = "The contract's error", body = crate::error::Body),
        (status = 404, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn update_account(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateAccount>,
) -> Result<Json<AccountRow>, ApiError> {
    let edit = body.validate()?;
    let now = expiry::now();
    let before = read_account(&state, &name, now).await?;
    if !state.store.update_account(&name, &edit, now).await? {
        return Err(no_such("account", &name));
    }
    tracing::info!(account = %name, "account changed");
    let after = read_account(&state, &name, now).await?;
    audit::record(
        &state,
        &caller,
        Change {
            action: "account.update",
            target: &name,
            account: Some(&name),
            before: audit::snapshot(&before),
            after: audit::snapshot(&after),
        },
    )
    .await;
    Ok(Json(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of<T: std::fmt::Debug>(result: Result<T, ApiError>) -> String {
        match result {
            Err(ApiError::InvalidRequest { param: Some(p), .. }) => p,
            other => panic!("expected a 400 with a param, got {other:?}"),
        }
    }

    #[test]
    fn a_group_put_takes_defaults_and_checks_every_field() {
        let g = PutGroup::default().validate("cheap").unwrap();
        assert_eq!(
            (g.models, g.ratio, g.rpm, g.tpm),
            (vec!["*".into()], 1.0, None, None)
        );
        let bad = [
            ("", PutGroup::default(), "name"),
            ("a b", PutGroup::default(), "name"),
            (
                "g",
                PutGroup {
                    ratio: Some(-1.0),
                    ..PutGroup::default()
                },
                "ratio",
            ),
            (
                "g",
                PutGroup {
                    rpm: Some(0),
                    ..PutGroup::default()
                },
                "rpm",
            ),
            (
                "g",
                PutGroup {
                    tpm: Some(-5),
                    ..PutGroup::default()
                },
                "tpm",
            ),
            (
                "g",
                PutGroup {
                    models: Some(vec![" ".into()]),
                    ..PutGroup::default()
                },
                "models",
            ),
        ];
        for (name, body, param) in bad {
            assert_eq!(param_of(body.validate(name)), param);
        }
    }

    #[test]
    fn names_and_prices_are_checked() {
        assert!(check_name("name", &"a".repeat(64)).is_ok());
        assert_eq!(param_of(check_name("name", &"a".repeat(65))), "name");
        assert!(check_model_name("gemini-2.0-flash:latest").is_ok());
        assert_eq!(param_of(check_model_name("a/b")), "name");
        assert_eq!(param_of(non_negative("input", f64::NAN)), "input");
        assert_eq!(param_of(non_negative("input", -0.1)), "input");
    }
}
