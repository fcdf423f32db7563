//! The OpenAI-style error envelope, `{"error": {"message", "type", "code", "param"}}`: the
//! one shape of every refusal of the filter (`decision::Denial::body`) and every error of
//! the key-service's API, so clients' SDKs read both alike.

use std::borrow::Cow;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(as = Error))]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(as = ErrorDetail))]
pub struct ErrorDetail<'a> {
    pub message: Cow<'a, str>,
    /// `invalid_request_error`, `authentication_error`, `permission_error`, ...
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The machine-readable cause (the contract's error codes).
    pub code: &'a str,
    /// The request field at fault, if one is.
    pub param: Option<&'a str>,
}

impl<'a> ErrorBody<'a> {
    pub fn new(kind: &'a str, code: &'a str, message: impl Into<Cow<'a, str>>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message: message.into(),
                kind,
                code,
                param: None,
            },
        }
    }

    pub fn with_param(mut self, param: Option<&'a str>) -> Self {
        self.error.param = param;
        self
    }

    /// The body as JSON.
    pub fn to_json(&self) -> String {
        // Strings and an option serialize without fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_envelope_has_the_four_fields_and_escapes_the_message() {
        let body = ErrorBody::new(
            "invalid_request_error",
            "invalid_value",
            "a \"quoted\" name",
        )
        .with_param(Some("name"));
        let json: serde_json::Value = serde_json::from_str(&body.to_json()).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"error": {
                "message": "a \"quoted\" name",
                "type": "invalid_request_error",
                "code": "invalid_value",
                "param": "name",
            }})
        );
    }
}
