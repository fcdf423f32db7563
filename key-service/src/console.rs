//! The web console: three static files compiled into the binary (no build step, no CDN)
//! and the settings they need. The console signs in with the admin token, or through
//! single sign-on (a session cookie, `crate::sso`), and uses the
//! management API like any other client; nothing here needs a token.

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::HeaderName;
use axum::response::IntoResponse;
use axum::Json;

use crate::AppState;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// Scripts, styles and requests from this origin only; never framed (no clickjacking of
/// the delete button); no referrer leaves the page.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// `GET /`: the console's page.
#[utoipa::path(get, operation_id = "console", path = "/", tag = "console",
    responses((status = 200, description = "The console (HTML)", content_type = "text/html")))]
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /console/console.js`
#[utoipa::path(get, path = "/console/console.js", tag = "console",
    responses((status = 200, description = "The console's script", content_type = "text/javascript")))]
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /console/console.css`
#[utoipa::path(get, path = "/console/console.css", tag = "console",
    responses((status = 200, description = "The console's styles", content_type = "text/css")))]
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            // A new binary's console is seen at the next load.
            (CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("content-security-policy"), CSP),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
        ],
        body,
    )
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Settings {
    base_url: String,
    /// Single sign-on is configured: the sign-in screen offers "Sign in with SSO"
    /// (`/auth/oidc/login`).
    sso: bool,
}

/// `GET /console/settings.json`: what the console shows next to a new secret, and whether
/// it offers single sign-on.
#[utoipa::path(get, path = "/console/settings.json", tag = "console",
    responses((status = 200, body = Settings)))]
pub async fn settings(State(state): State<AppState>) -> Json<Settings> {
    Json(Settings {
        base_url: state.public_base_url.to_string(),
        sso: state.sso.is_some(),
    })
}
