//! `ApiError`: every error the HTTP API answers with, in the contract's OpenAI-style shape
//! `{"error": {"message", "type", "code", "param"}}`, plus the layer that puts responses
//! made outside our handlers (unknown routes, wrong methods) into the same shape.

use axum::extract::Request;
use axum::http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::StoreError;

/// Request bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the client sent something we cannot accept; `param` names the field.
    #[error("{message}")]
    InvalidRequest {
        param: Option<String>,
        code: &'static str,
        message: String,
    },
    /// 401: no token, or not the right one.
    #[error("{message}")]
    Unauthorized {
        code: &'static str,
        message: &'static str,
    },
    /// 403: the credential is valid but the request may not go on (a cookie-authenticated
    /// write without the CSRF header).
    #[error("{message}")]
    Forbidden {
        code: &'static str,
        message: &'static str,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// 503: the database cannot be reached or written (readiness probe). The body says
    /// `reason`; `cause` (the database's own words) goes to the log only.
    #[error("the service is not ready: {reason}: {cause}")]
    Unavailable { reason: &'static str, cause: String },
    /// A bare status from the HTTP layer: 405, 413, 415 and the like.
    #[error("{0}")]
    Status(StatusCode),
    /// 500. The cause is logged; the client sees a fixed message.
    #[error("internal error: {0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

/// The contract's error body: the filter's own envelope, so both answer alike.
pub use keygate_core::decide::error::ErrorBody as Body;

impl ApiError {
    /// 400 `invalid_value` for the field `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            param: Some(param.to_owned()),
            code: "invalid_value",
            message: message.into(),
        }
    }

    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Internal(error.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Status(status) => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> Body<'_> {
        let (kind, code, param, message) = match self {
            ApiError::InvalidRequest {
                param,
                code,
                message,
            } => (
                "invalid_request_error",
                *code,
                param.as_deref(),
                message.clone(),
            ),
            ApiError::Unauthorized { code, message } => {
                ("authentication_error", *code, None, (*message).to_owned())
            }
            ApiError::Forbidden { code, message } => {
                ("permission_error", *code, None, (*message).to_owned())
            }
            ApiError::NotFound(message) => {
                ("invalid_request_error", "not_found", None, message.clone())
            }
            ApiError::Conflict(message) => {
                ("invalid_request_error", "conflict", None, message.clone())
            }
            ApiError::Unavailable { reason, .. } => (
                "server_error",
                "service_unavailable",
                None,
                format!("the service is not ready: {reason}"),
            ),
            ApiError::Status(status) => status_detail(*status),
            ApiError::Internal(_) => (
                "server_error",
                "internal_error",
                None,
                "internal server error".to_owned(),
            ),
        };
        Body::new(kind, code, message).with_param(param)
    }
}

fn status_detail(status: StatusCode) -> (&'static str, &'static str, Option<&'static str>, String) {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "not found".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "method not allowed on this route".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "request_too_large",
            format!("the request body is larger than {BODY_LIMIT} bytes"),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "expected a body with content-type: application/json".to_owned(),
        ),
        _ if status.is_server_error() => ("internal_error", "internal server error".to_owned()),
        _ => (
            "invalid_request",
            status
                .canonical_reason()
                .unwrap_or("invalid request")
                .to_ascii_lowercase(),
        ),
    };
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    (kind, code, None, message)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => tracing::error!(error = %cause, "request failed"),
            ApiError::Unavailable { reason, cause } => {
                tracing::warn!(error = %cause, "not ready: {reason}")
            }
            _ => {}
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if let ApiError::Unauthorized { .. } = self {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if let StoreError::KeyLimit { .. } = error {
            ApiError::InvalidRequest {
                param: Some("quantity".into()),
                code: "key_limit_reached",
                message: error.to_string(),
            }
        } else if error.is_unique_violation() {
            ApiError::Conflict("a record with the same identity already exists".into())
        } else if error.is_foreign_key_violation() {
            ApiError::Conflict("the account or group was removed meanwhile".into())
        } else {
            ApiError::internal(error)
        }
    }
}

impl From<getrandom::Error> for ApiError {
    fn from(error: getrandom::Error) -> Self {
        ApiError::internal(format!("random number generator failed: {error}"))
    }
}

/// Fallback for routes that do not exist.
pub async fn unknown_route(request: Request) -> ApiError {
    no_route(request.method(), request.uri().path())
}

/// What a route that does not exist answers, and what a tenant gets from a route that is
/// not for its role: the same words, so the two cannot be told apart.
pub fn no_route(method: &axum::http::Method, path: &str) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {path}"))
}

/// Rewrites error responses that are not JSON (axum's 405, a 404 of a router without a
/// fallback, a layer's plain-text 5xx) into the contract's shape, keeping the headers a
/// client acts on. HTML pages, which only the single sign-on routes answer with (for the
/// person in the browser), are left as they are.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    let is_ours = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !is_error || is_ours {
        return response;
    }
    let mut fresh = ApiError::Status(status).into_response();
    for name in [ALLOW, WWW_AUTHENTICATE, RETRY_AFTER] {
        if let Some(value) = response.headers().get(&name) {
            fresh.headers_mut().insert(name, value.clone());
        }
    }
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_bad_field_names_itself_in_param() {
        let (status, body) = body_of(ApiError::invalid("quota", "must be >= 0")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "message": "must be >= 0",
                "type": "invalid_request_error",
                "code": "invalid_value",
                "param": "quota",
            }})
        );
    }

    #[tokio::test]
    async fn internal_details_stay_out_of_the_body() {
        let (status, body) = body_of(ApiError::internal("disk /secret/path is full")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["message"], "internal server error");
        assert_eq!(body["error"]["type"], "server_error");
        assert!(!body.to_string().contains("secret"));
    }
}
