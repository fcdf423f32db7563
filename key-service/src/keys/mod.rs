//! The key domain: what creating, editing, rotating and deleting a key means, apart from
//! how it is asked for. The HTTP handlers (`api::keys`) and the command line (`cli`) both
//! call these, so a key made either way passes the same checks and is shown the same way.
//!
//! Checking a request is pure ([`request`]); the functions here add the store, the CSPRNG
//! and the clock, which comes in as `now` so one operation reads one time.

pub mod caps;
mod request;
mod view;

use keygate_core::keys::secret;

use crate::error::ApiError;
use crate::random;
use crate::store::{KeyFilter, NewKey, Store};

pub use request::{parse_net, CreateKey, KeySpec, RotateKey, UpdateKey, NAME_MAX, QUANTITY_MAX};
pub use view::KeyView;

use request::SUFFIX_LEN;

/// Checks a create request and stores its keys. Each view carries its secret, the only
/// time it is shown.
pub async fn create(store: &Store, request: CreateKey, now: i64) -> Result<Vec<KeyView>, ApiError> {
    create_within(store, request, None, now).await
}

/// [`create`], bounded by `default_max` keys in the account when it has no `max_keys`
/// of its own (what a tenant may make).
pub async fn create_within(
    store: &Store,
    request: CreateKey,
    default_max: Option<i64>,
    now: i64,
) -> Result<Vec<KeyView>, ApiError> {
    let spec = request.validate(now)?;
    if !store.account_exists(&spec.account).await? {
        return Err(ApiError::invalid(
            "account",
            format!("there is no account named {:?}", spec.account),
        ));
    }
    if !store.group_usable(&spec.group, &spec.account).await? {
        return Err(ApiError::invalid(
            "group",
            format!("there is no group named {:?}", spec.group),
        ));
    }

    let mut minted = Vec::with_capacity(spec.quantity);
    let mut secrets = Vec::with_capacity(spec.quantity);
    for _ in 0..spec.quantity {
        let secret = mint_secret()?;
        let name = if spec.quantity > 1 {
            format!("{}-{}", spec.name, random::base62(SUFFIX_LEN)?)
        } else {
            spec.name.clone()
        };
        minted.push(NewKey {
            id: format!("key_{}", random::base62(16)?),
            name,
            key_hash: secret::hash_hex(&secret::hash(&secret)),
            masked_key: secret::mask(&secret),
            account: spec.account.clone(),
            group: spec.group.clone(),
            expires_at: spec.expires_at,
            unlimited_quota: spec.unlimited_quota,
            quota: spec.quota,
            models: spec.models.clone(),
            ip_allowlist: spec.ip_allowlist.clone(),
            rpm: spec.rpm,
            tpm: spec.tpm,
            max_parallel: spec.max_parallel,
            quota_period: spec.quota_period,
            rotate_by: spec.rotate_by,
            model_caps: caps::replace(&[], spec.model_caps.clone(), |p| store.window(p, now, now)),
        });
        secrets.push(secret);
    }
    store.insert_keys_within(&minted, now, default_max).await?;

    // Read back, so the status comes from the one place that computes it.
    let mut keys = Vec::with_capacity(minted.len());
    for (key, secret) in minted.iter().zip(secrets) {
        let row = store
            .get_key(&key.id, now)
            .await?
            .ok_or_else(|| ApiError::internal(format!("key {} vanished after insert", key.id)))?;
        keys.push(KeyView::at(row, Some(secret), now)?);
    }
    tracing::info!(count = keys.len(), account = %spec.account, group = %spec.group, "keys created");
    Ok(keys)
}

/// A secret: `sk-`, 42 CSPRNG base62 characters and their checksum.
fn mint_secret() -> Result<String, ApiError> {
    let random = random::base62(secret::RANDOM_LEN)?;
    secret::from_random(&random).ok_or_else(|| ApiError::internal("minted secret is malformed"))
}

/// The 404 for a key id that is not there.
pub fn no_such_key(id: &str) -> ApiError {
    ApiError::NotFound(format!("there is no key with id {id:?}"))
}

/// The key as stored at `now` (never with its secret).
pub async fn get(store: &Store, id: &str, now: i64) -> Result<KeyView, ApiError> {
    view(store, id, None, now).await
}

/// The key as stored at `now`, with its secret when it was just made.
async fn view(
    store: &Store,
    id: &str,
    secret: Option<String>,
    now: i64,
) -> Result<KeyView, ApiError> {
    let row = store
        .get_key(id, now)
        .await?
        .ok_or_else(|| no_such_key(id))?;
    KeyView::at(row, secret, now)
}

/// Up to `limit` keys that `filter` lets through, newest first, after skipping `offset`;
/// with how many there are in all.
pub async fn list(
    store: &Store,
    filter: &KeyFilter,
    limit: u32,
    offset: u64,
    now: i64,
) -> Result<(Vec<KeyView>, u64), ApiError> {
    let (rows, total) = store.list_keys(filter, limit, offset, now).await?;
    let keys = rows
        .into_iter()
        .map(|row| KeyView::at(row, None, now))
        .collect::<Result<_, _>>()?;
    Ok((keys, total))
}

/// Checks an edit, as create checks its fields, and applies it; the key as it is after.
/// `account` is the key's, as the caller found it: a new group must be one its keys may
/// use.
pub async fn update(
    store: &Store,
    id: &str,
    account: &str,
    request: UpdateKey,
    now: i64,
) -> Result<KeyView, ApiError> {
    let edit = request.validate(now)?;
    if let Some(group) = &edit.group {
        if !store.group_usable(group, account).await? {
            return Err(ApiError::invalid(
                "group",
                format!("there is no group named {group:?}"),
            ));
        }
    }
    if !store.update_key(id, &edit, now).await? {
        return Err(no_such_key(id));
    }
    tracing::info!(%id, "key updated");
    view(store, id, None, now).await
}

/// Refuses the key from now on (`false`), or accepts it again (`true`).
pub async fn set_enabled(
    store: &Store,
    id: &str,
    enabled: bool,
    now: i64,
) -> Result<KeyView, ApiError> {
    if !store.set_enabled(id, enabled, now).await? {
        return Err(no_such_key(id));
    }
    view(store, id, None, now).await
}

/// Gives the key a new secret (same id, settings and history); the old one stops with
/// the filter's next sync, or when the grace period asked for ends. The view carries the
/// new secret.
pub async fn rotate(
    store: &Store,
    id: &str,
    request: &RotateKey,
    now: i64,
) -> Result<KeyView, ApiError> {
    let grace_until = request.grace_until(now)?;
    let rotate_by = request.next_rotate_by()?;
    let secret = mint_secret()?;
    let hash = secret::hash_hex(&secret::hash(&secret));
    let rotated = store
        .rotate_key_due(
            id,
            &hash,
            &secret::mask(&secret),
            now,
            grace_until,
            rotate_by,
        )
        .await?;
    if !rotated {
        return Err(no_such_key(id));
    }
    tracing::info!(%id, "key rotated");
    view(store, id, Some(secret), now).await
}

/// Deletes the key; its secrets, and any in a grace period, stop with the next sync.
pub async fn delete(store: &Store, id: &str, now: i64) -> Result<(), ApiError> {
    if !store.delete_key(id, now).await? {
        return Err(no_such_key(id));
    }
    tracing::info!(%id, "key deleted");
    Ok(())
}
