//! HTTP handlers, one module per resource; the routes themselves are assembled in
//! [`crate::app`].

pub mod audit;
pub mod catalog;
pub mod check;
pub mod filter;
pub mod keys;
pub mod leases;
pub mod tenants;
pub mod usage;
pub mod webhooks;

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use tokio::time::timeout;

use crate::error::ApiError;
use crate::expiry;
use crate::AppState;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    status: &'static str,
}

/// `GET /healthz`: 200 while the process serves (liveness), no token needed.
#[utoipa::path(get, path = "/healthz", tag = "service", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// How long `/readyz` waits for each of the database's answers.
const READY_WITHIN: Duration = Duration::from_secs(2);

/// `GET /readyz`: 200 while the database answers and takes writes, 503 (saying which
/// fails) while it does not; no token needed. A key-service whose writes fail (a full
/// disk) still serves snapshots, but cannot bill or change keys: it is not ready.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "The contract's error", body = crate::error::Body),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let unavailable = |reason, cause: String| ApiError::Unavailable { reason, cause };
    let silent = |_| unavailable("the database does not answer", "no answer in time".into());
    // A probe must answer in time even when the database does not (a pool waits longer
    // for a connection than probes wait for an answer).
    timeout(READY_WITHIN, state.store.ping())
        .await
        .map_err(silent)?
        .map_err(|e| unavailable("the database does not answer", e.to_string()))?;
    timeout(READY_WITHIN, state.store.writable(expiry::now()))
        .await
        .map_err(silent)?
        .map_err(|e| unavailable("the database does not take writes", e))?;
    Ok(Json(Health { status: "ok" }))
}
