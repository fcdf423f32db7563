//! The OpenAPI document, derived from the handlers' `#[utoipa::path]` annotations and the
//! types they take and give, so that it cannot drift from the code the way a hand-written
//! file does. `GET /api/v1/openapi.json` serves it; `key-service/openapi.json` is a copy
//! for readers of the repository, which a test keeps equal to it.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ApiError;
use crate::{api, console, metrics};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate key-service",
        version = "1",
        description = "Keys, groups, model prices, accounts and usage for keygate, and the \
            feeds its Envoy filter syncs from. Management routes take `Authorization: Bearer \
            <admin token>`; filter routes the filter token. Errors are `{\"error\": {\"message\", \
            \"type\", \"code\", \"param\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "http://127.0.0.1:8081")),
    paths(
        api::healthz,
        api::readyz,
        metrics::render,
        serve,
        console::index,
        console::script,
        console::style,
        console::settings,
        crate::sso::login,
        crate::sso::callback,
        crate::sso::logout,
        api::keys::create,
        api::keys::list,
        api::keys::get,
        api::keys::update,
        api::keys::delete,
        api::keys::rotate,
        api::catalog::list_groups,
        api::catalog::get_group,
        api::catalog::put_group,
        api::catalog::delete_group,
        api::catalog::list_models,
        api::catalog::get_model,
        api::catalog::put_model,
        api::catalog::list_accounts,
        api::catalog::create_account,
        api::catalog::update_account,
        api::usage::list,
        api::usage::summary,
        api::audit::list,
        api::webhooks::create,
        api::webhooks::list,
        api::webhooks::get,
        api::webhooks::update,
        api::webhooks::delete,
        api::webhooks::rotate_secret,
        api::webhooks::test,
        api::webhooks::deliveries,
        api::tenants::create,
        api::tenants::list,
        api::tenants::revoke,
        api::tenants::rotate,
        api::tenants::me,
        api::filter::snapshot,
        api::usage::report,
        api::leases::grant,
        api::check::check,
    ),
    modifiers(&Tokens),
)]
pub struct ApiDoc;

/// The three bearer tokens' schemes, which the paths' `security(...)` name, and the
/// console's session cookie.
struct Tokens;

impl Modify for Tokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme("admin", bearer("admin token"));
        components.add_security_scheme("filter", bearer("filter token"));
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "keygate_session",
                "the console's single sign-on session (/auth/oidc/login); writes also need \
                 the header x-keygate-csrf: 1",
            ))),
        );
        components.add_security_scheme(
            "check",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-keygate-token",
                "filter token (Authorization carries the client's key)",
            ))),
        );
    }
}

/// The document as served and as checked in: pretty JSON and a final newline.
pub fn json() -> Result<String, serde_json::Error> {
    ApiDoc::openapi().to_pretty_json().map(|mut text| {
        text.push('\n');
        text
    })
}

/// `GET /api/v1/openapi.json`: the API's OpenAPI 3.1 description (no token needed),
/// generated from the handlers at each request (it is small).
#[utoipa::path(
    get,
    operation_id = "openapi",
    path = "/api/v1/openapi.json",
    tag = "service",
    responses(
        (status = 200, description = "This document", content_type = "application/json", body = Object),
    ),
)]
pub async fn serve() -> Result<impl axum::response::IntoResponse, ApiError> {
    let document = json().map_err(ApiError::internal)?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        document,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Set to regenerate `key-service/openapi.json` instead of failing on a difference.
    const UPDATE: &str = "KEYGATE_UPDATE_OPENAPI";

    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let generated = json().unwrap();
        if std::env::var_os(UPDATE).is_some() {
            std::fs::write(path, &generated).unwrap();
            return;
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "key-service/openapi.json is stale: regenerate it with \
             `{UPDATE}=1 cargo test -p key-service openapi` and commit it"
        );
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut served = Vec::new();
        for route in crate::routes() {
            // `{*rest}` (axum's catch-all) is `{rest}` in OpenAPI.
            let path = route.path.replace("{*", "{");
            let operations = paths
                .get(&path)
                .and_then(|item| item.as_object())
                .unwrap_or_else(|| panic!("{path} is served but not in the document"));
            let method = route.verb.as_str();
            if method == "*" {
                assert!(!operations.is_empty(), "{path} has no operation");
            } else {
                assert!(
                    operations.contains_key(method),
                    "{method} {path} is served but not in the document"
                );
            }
            served.push(path);
        }
        for path in paths.keys() {
            assert!(served.contains(path), "{path} is documented but not served");
        }
    }

    /// Each handler's operation id names it alone (the check route's one handler answers
    /// both of its methods, so one path may repeat its own id).
    #[test]
    fn operation_ids_are_unique() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| {
                let mut ids: Vec<&str> = item
                    .as_object()
                    .unwrap()
                    .values()
                    .filter_map(|operation| operation["operationId"].as_str())
                    .collect();
                ids.dedup();
                ids
            })
            .collect();
        let all = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all, "{ids:?}");
    }
}
