//! A key as the API and the command line show it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::ApiError;
use crate::expiry;
use crate::keys::caps::CapView;
use crate::store::{KeyRow, KeyStatus};

/// A key as the API shows it. `key` (the full secret) is there only in create responses.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub name: String,
    pub masked_key: String,
    pub account: String,
    pub group: String,
    pub status: KeyStatus,
    pub enabled: bool,
    pub expires_at: Option<String>,
    pub unlimited_quota: bool,
    /// Credits the key may spend per period (`quota_period`).
    pub quota: i64,
    /// Credits spent in the current period.
    pub used_quota: i64,
    pub remaining_quota: Option<i64>,
    /// How often the quota starts afresh: `total` (never), `day`, `week`, `month` or a
    /// span such as `72h`.
    pub quota_period: String,
    /// When the current period began and when the quota next starts afresh; `null` for
    /// `total`.
    pub period_start: Option<String>,
    pub resets_at: Option<String>,
    pub models: Vec<String>,
    pub ip_allowlist: Vec<String>,
    /// The key's own rate limits; `null` = none of its own (its group's may apply).
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_parallel: Option<i64>,
    /// When the secret should be rotated by; `null` = no date.
    pub rotate_by: Option<String>,
    /// Whether `rotate_by` has passed (at the time of the answer).
    pub rotation_due: bool,
    /// Limits per model, each with what its current period has used and when it resets.
    pub model_caps: BTreeMap<String, CapView>,
    pub created_at: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
}

impl KeyView {
    pub fn new(row: KeyRow, key: Option<String>) -> Result<Self, ApiError> {
        Self::at(row, key, expiry::now())
    }

    /// The view at `now` (which decides `rotation_due`).
    pub fn at(row: KeyRow, key: Option<String>, now: i64) -> Result<Self, ApiError> {
        let time = |unix: i64| {
            expiry::to_rfc3339(unix)
                .ok_or_else(|| ApiError::internal(format!("stored time {unix} is out of range")))
        };
        Ok(KeyView {
            expires_at: row.expires_at.map(time).transpose()?,
            created_at: time(row.created_at)?,
            updated_at: time(row.updated_at)?,
            last_used_at: row.last_used_at.map(time).transpose()?,
            quota_period: row.quota_period.to_string(),
            period_start: row.period.map(|w| time(w.start)).transpose()?,
            resets_at: row.period.map(|w| time(w.end)).transpose()?,
            rotate_by: row.rotate_by.map(time).transpose()?,
            rotation_due: row.rotate_by.is_some_and(|at| at <= now),
            model_caps: row
                .model_caps
                .iter()
                .map(|cap| (cap.model.clone(), cap.view(now)))
                .collect(),
            remaining_quota: (!row.unlimited_quota)
                .then(|| row.quota.saturating_sub(row.used_quota).max(0)),
            id: row.id,
            key,
            name: row.name,
            masked_key: row.masked_key,
            account: row.account,
            group: row.group,
            status: row.status,
            enabled: row.enabled,
            unlimited_quota: row.unlimited_quota,
            quota: row.quota,
            used_quota: row.used_quota,
            models: row.models,
            ip_allowlist: row.ip_allowlist,
            rpm: row.rpm,
            tpm: row.tpm,
            max_parallel: row.max_parallel,
        })
    }
}
