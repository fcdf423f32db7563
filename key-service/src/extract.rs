//! Request extractors whose rejections are `ApiError`s: a JSON body that names the field
//! it could not read in `param`, instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body (`content-type: application/json`, at most
/// [`BODY_LIMIT`](crate::error::BODY_LIMIT) bytes).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || mime.to_ascii_lowercase().ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::Status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        ApiError::Status(StatusCode::PAYLOAD_TOO_LARGE)
                    }
                    _ => ApiError::InvalidRequest {
                        param: None,
                        code: "invalid_body",
                        message: "the request body could not be read".into(),
                    },
                })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Deserialises `bytes`, turning serde's error into a 400 that names the top-level field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(rejection)?;
    de.end().map_err(|e| ApiError::InvalidRequest {
        param: None,
        code: "invalid_json",
        message: format!("the body is not valid JSON: {e}"),
    })?;
    Ok(value)
}

fn rejection(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    use serde_json::error::Category;
    let field = match error.path().iter().next() {
        Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
        _ => None,
    };
    let inner = error.into_inner();
    let message = inner.to_string();
    if matches!(
        inner.classify(),
        Category::Syntax | Category::Eof | Category::Io
    ) {
        return ApiError::InvalidRequest {
            param: None,
            code: "invalid_json",
            message: format!("the body is not valid JSON: {message}"),
        };
    }
    // serde reports these at the level of the enclosing object, naming the field only in
    // the message; lift it out so `param` says which.
    let (code, named) = if let Some(name) = backticked_after(&message, "unknown field `") {
        ("unknown_field", Some(name))
    } else if let Some(name) = backticked_after(&message, "missing field `") {
        ("missing_field", Some(name))
    } else {
        ("invalid_value", None)
    };
    ApiError::InvalidRequest {
        param: field.or(named),
        code,
        message,
    }
}

/// The text between `prefix` and the next backtick, if `message` starts with `prefix`.
fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(name, _)| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Probe {
        name: String,
        #[serde(default)]
        models: Vec<String>,
        #[serde(default)]
        quantity: Option<i64>,
    }

    fn param_and_code(body: &str) -> (Option<String>, &'static str) {
        match parse::<Probe>(body.as_bytes()) {
            Err(ApiError::InvalidRequest { param, code, .. }) => (param, code),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn each_kind_of_bad_body_names_its_field() {
        let cases = [
            (
                r#"{"name":"a","colour":1}"#,
                Some("colour"),
                "unknown_field",
            ),
            (r#"{"models":[]}"#, Some("name"), "missing_field"),
            (r#"{"name":7}"#, Some("name"), "invalid_value"),
            (
                r#"{"name":"a","models":["x",3]}"#,
                Some("models"),
                "invalid_value",
            ),
            (
                r#"{"name":"a","quantity":1.5}"#,
                Some("quantity"),
                "invalid_value",
            ),
            (r#"{"name":"a","#, None, "invalid_json"),
            ("", None, "invalid_json"),
            (r#"{"name":"a"} x"#, None, "invalid_json"),
            ("[1]", None, "invalid_value"),
        ];
        for (body, param, code) in cases {
            assert_eq!(
                param_and_code(body),
                (param.map(str::to_owned), code),
                "{body}"
            );
        }
    }
}
