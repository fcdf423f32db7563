//! Bearer-token checks for the management (`/api/v1/*`) and filter (`/filter/v1/*`)
//! routes. Only SHA-256 digests of the tokens are kept, and they are compared in constant
//! time (the admin and filter tokens) or looked up by digest (account tokens, and the
//! console's single sign-on session cookie, taken when there is no bearer token).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::access::{Actor, ActorKind, Caller, Role, Scope};
use crate::error::ApiError;
use crate::store::Store;

/// The 401 message of the management API.
pub const API_TOKEN_MESSAGE: &str =
    "missing or invalid token (Authorization: Bearer <admin token or account token>)";

/// What an account token starts with, so that secret scanners and people can tell it
/// from a key (`sk-`) and the admin token.
pub const ACCOUNT_TOKEN_PREFIX: &str = "kgt_";

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

/// Which callers a management route admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// The operator only: to a tenant the route does not exist (404).
    Admin,
    /// The operator, and tenants of either role, each seeing their own account.
    Read,
    /// The operator, and owners; to a viewer the route does not exist (404).
    Write,
}

/// The guard of a management route: settles who calls ([`Caller`]) and whether the route
/// exists for them.
#[derive(Clone)]
pub struct ApiGuard {
    pub admin: Guard,
    pub store: Store,
    pub permit: Permit,
}

/// Middleware of every `/api/v1` route: 401 without a valid token; 404 when the route is
/// not one the caller's role may use (the same answer as a route that does not exist, so
/// a tenant learns nothing of the operator's routes); otherwise the handler runs with the
/// [`Caller`] in the request's extensions.
pub async fn admit(
    State(guard): State<ApiGuard>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::to_owned);
    let found = match token {
        Some(_) => caller(&guard, token.as_deref(), address).await?,
        // No bearer token: the console's single sign-on session, if any.
        None => session_caller(&guard, request.method(), request.headers(), address).await?,
    };
    let Some(caller) = found else {
        return Err(ApiError::Unauthorized {
            code: "invalid_admin_token",
            message: API_TOKEN_MESSAGE,
        });
    };
    let allowed = match (guard.permit, caller.role()) {
        (_, None) => true,
        (Permit::Admin, Some(_)) => false,
        (Permit::Read, Some(_)) => true,
        (Permit::Write, Some(role)) => role == Role::Owner,
    };
    if !allowed {
        return Err(crate::error::no_route(
            request.method(),
            request.uri().path(),
        ));
    }
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// Who presented which bearer token: the admin token, an account token, or none that is
/// valid (`None`). Without a bearer token, see [`session_caller`].
async fn caller(
    guard: &ApiGuard,
    token: Option<&str>,
    address: Option<std::net::IpAddr>,
) -> Result<Option<Caller>, ApiError> {
    let Some(token) = token else {
        return Ok(None);
    };
    if guard.admin.admits(token) {
        return Ok(Some(Caller::admin(address)));
    }
    if !token.starts_with(ACCOUNT_TOKEN_PREFIX) {
        return Ok(None);
    }
    let digest = keygate_core::keys::secret::hash_hex(&keygate_core::keys::secret::hash(token));
    let found = guard
        .store
        .account_token_by_hash(&digest, crate::expiry::now())
        .await?;
    Ok(found.map(|token| Caller {
        actor: Actor {
            kind: ActorKind::Token,
            id: token.id,
        },
        scope: Scope::Account {
            name: token.account,
            role: token.role,
        },
        address,
    }))
}

/// The caller of a request authenticated by the console's session cookie (single
/// sign-on): a tenant of the session's account, in its role. A write (any method but GET
/// and HEAD) must carry `x-keygate-csrf: 1`, else 403 (a cross-site form cannot set it).
async fn session_caller(
    guard: &ApiGuard,
    method: &axum::http::Method,
    headers: &axum::http::HeaderMap,
    address: Option<std::net::IpAddr>,
) -> Result<Option<Caller>, ApiError> {
    let Some(token) = crate::sso::cookie(headers, crate::sso::SESSION_COOKIE) else {
        return Ok(None);
    };
    if !crate::sso::csrf_ok(method, headers) {
        return Err(crate::sso::csrf_refusal());
    }
    let session = guard
        .store
        .sso_session_by_hash(&crate::sso::digest(token), crate::expiry::now())
        .await?;
    Ok(session.map(|session| Caller {
        actor: Actor {
            kind: ActorKind::Sso,
            id: session.subject,
        },
        scope: Scope::Account {
            name: session.account,
            role: session.role,
        },
        address,
    }))
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
