//! Bearer-token checks for the admin (`/api/v1/*`) and filter (`/filter/v1/*`) routes.
//! Only SHA-256 digests of the tokens are kept, and they are compared in constant time.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Admits requests that carry one particular bearer token (or, for the filter's routes
/// during a rotation, either of two).
#[derive(Clone)]
pub struct Guard {
    digest: [u8; 32],
    /// A second token admitted as well: the next filter token while Envoys move to it.
    next: Option<[u8; 32]>,
    code: &'static str,
    message: &'static str,
    /// Header holding the bare token; `None`: `Authorization: Bearer`.
    header: Option<&'static str>,
}

impl Guard {
    pub fn admin(token: &str) -> Self {
        Guard {
            digest: keygate_core::keys::secret::hash(token),
            next: None,
            code: "invalid_admin_token",
            message: "missing or invalid admin token (Authorization: Bearer <admin token>)",
            header: None,
        }
    }

    pub fn filter(token: &str) -> Self {
        Guard {
            digest: keygate_core::keys::secret::hash(token),
            next: None,
            code: "invalid_filter_token",
            message: "missing or invalid filter token (Authorization: Bearer <filter token>)",
            header: None,
        }
    }

    /// Admits `token` as well (an empty one changes nothing).
    pub fn or(mut self, token: Option<&str>) -> Self {
        self.next = token
            .filter(|t| !t.is_empty())
            .map(keygate_core::keys::secret::hash);
        self
    }

    /// Digests have a fixed length, so neither the comparison's time nor its length check
    /// tells anything about the token; both digests are always compared.
    pub fn admits(&self, presented: &str) -> bool {
        let presented = keygate_core::keys::secret::hash(presented);
        let current = self.digest.ct_eq(&presented);
        let next = self.next.map_or(0.into(), |next| next.ct_eq(&presented));
        (current | next).into()
    }

    fn admits_request(&self, request: &Request) -> bool {
        let headers = request.headers();
        match self.header {
            Some(name) => headers.get(name).and_then(|v| v.to_str().ok()),
            None => headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer),
        }
        .is_some_and(|token| self.admits(token))
    }

    /// The filter token, presented in `x-keygate-token` instead of `Authorization`, which
    /// carries the client's key on `/filter/v1/check`.
    pub fn check(token: &str) -> Self {
        Guard {
            digest: keygate_core::keys::secret::hash(token),
            next: None,
            code: "invalid_filter_token",
            message: "missing or invalid filter token (x-keygate-token: <filter token>)",
            header: Some("x-keygate-token"),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware: passes the request on if the guard admits it, else answers 401.
pub async fn require(
    State(guard): State<Guard>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if guard.admits_request(&request) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized {
            code: guard.code,
            message: guard.message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_is_admitted() {
        let guard = Guard::admin("s3cret-token");
        assert!(guard.admits("s3cret-token"));
        for other in [
            "",
            "s3cret-toke",
            "s3cret-token ",
            "S3cret-token",
            "s3cret-token2",
        ] {
            assert!(!guard.admits(other), "{other:?}");
        }
    }

    #[test]
    fn during_a_rotation_both_filter_tokens_are_admitted_and_nothing_else() {
        let guard = Guard::filter("current-token").or(Some("next-token"));
        assert!(guard.admits("current-token") && guard.admits("next-token"));
        for other in ["", "next-toke", "current-token2", "admin"] {
            assert!(!guard.admits(other), "{other:?}");
        }
        let unchanged = Guard::filter("current-token").or(Some(""));
        assert!(unchanged.admits("current-token") && !unchanged.admits(""));
    }

    #[test]
    fn the_bearer_scheme_is_required() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}
