//! HTTP handlers, one module per resource; the routes themselves are assembled in
//! [`crate::app`].

pub mod catalog;
pub mod check;
pub mod filter;
pub mod keys;
pub mod usage;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ApiError;
use crate::AppState;

/// A rate limit (a group's or a key's RPM, TPM, parallel requests): at least 1, or
/// `None` for no limit.
pub(crate) fn limit(param: &str, value: Option<i64>) -> Result<Option<i64>, ApiError> {
    match value {
        Some(v) if v < 1 => Err(ApiError::invalid(
            param,
            format!("{param} must be at least 1, or null for no limit"),
        )),
        other => Ok(other),
    }
}

/// `null` and absent told apart: `Some(None)` for an explicit `null`.
pub(crate) fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

#[derive(Serialize)]
pub struct Health {
    status: &'static str,
}

/// `GET /healthz`: 200 while the process serves (liveness), no token needed.
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /readyz`: 200 once the database answers, 503 while it does not; no token needed.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(Health { status: "ok" }))
}

/// `GET /api/v1/openapi.json`: the API's OpenAPI 3.1 description (no token needed).
pub async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        include_str!("../../openapi.json"),
    )
}
