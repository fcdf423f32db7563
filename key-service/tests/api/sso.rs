//! Single sign-on at the API: the console's session cookie admits its holder as a tenant
//! of the session's account, writes need `x-keygate-csrf: 1`, sign-out ends the session,
//! and the sign-in routes answer people with pages (the whole sign-in against a provider
//! is tests/tests/sso.rs, end to end).

use key_service::access::Role;
use key_service::sso::{Sso, SsoSettings};
use key_service::store::NewSession;
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::Method;
use serde_json::json;

use crate::{Service, ADMIN};

/// A session of `role` in `account` straight in the store (as a sign-in leaves it); its
/// cookie header.
async fn session(service: &Service, token: &str, account: &str, role: Role, ttl: i64) -> String {
    let now = key_service::expiry::now();
    let new = NewSession {
        token_hash: key_service::sso::digest(token),
        subject: format!("sub-{token}"),
        email: Some("ann@acme.example".into()),
        account: account.into(),
        role,
    };
    service
        .store
        .insert_sso_session(&new, now - 10, now + ttl)
        .await
        .unwrap();
    format!("theme=dark; keygate_session={token}")
}

async fn acme(service: &Service) {
    let reply = service
        .send(
            service
                .request(Method::POST, "/api/v1/accounts", Some(ADMIN))
                .json(&json!({"name": "acme"})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
}

#[tokio::test]
async fn a_session_cookie_is_a_tenant_of_its_account_and_writes_need_the_csrf_header() {
    let service = Service::start().await;
    acme(&service).await;
    let owner = session(&service, "owner-token", "acme", Role::Owner, 3600).await;
    let me = service
        .send(
            service
                .request(Method::GET, "/api/v1/me", None)
                .header(COOKIE, &owner),
        )
        .await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(
        me.body,
        json!({"kind": "sso", "id": "sub-owner-token", "account": "acme", "role": "owner"})
    );

    let create = |cookie: &str| {
        service
            .request(Method::POST, "/api/v1/keys", None)
            .header(COOKIE, cookie)
            .json(&json!({"name": "by-sso", "account": "acme"}))
    };
    let refused = service.send(create(&owner)).await;
    assert_eq!(refused.error(), (403, "csrf_header_required".into(), None));
    assert_eq!(refused.body["error"]["type"], "permission_error");
    let wrong = service
        .send(create(&owner).header("x-keygate-csrf", "yes"))
        .await;
    assert_eq!(wrong.status, 403);
    let made = service
        .send(create(&owner).header("x-keygate-csrf", "1"))
        .await;
    assert_eq!(made.status, 201, "{}", made.body);

    // A viewer's write is a route that does not exist for it, header or not.
    let viewer = session(&service, "viewer-token", "acme", Role::Viewer, 3600).await;
    let (status, code, _) = service
        .send(create(&viewer).header("x-keygate-csrf", "1"))
        .await
        .error();
    assert_eq!((status, code.as_str()), (404, "not_found"));
    let list = service
        .send(
            service
                .request(Method::GET, "/api/v1/keys", None)
                .header(COOKIE, &viewer),
        )
        .await;
    assert_eq!(list.status, 200);
}

#[tokio::test]
async fn expired_unknown_and_ended_sessions_are_refused_and_a_bearer_token_goes_first() {
    let service = Service::start().await;
    acme(&service).await;
    let expired = session(&service, "old-token", "acme", Role::Owner, -1).await;
    let live = session(&service, "live-token", "acme", Role::Owner, 3600).await;
    let me = |cookie: &str| {
        service
            .request(Method::GET, "/api/v1/me", None)
            .header(COOKIE, cookie.to_owned())
    };
    for cookie in [
        expired.as_str(),
        "keygate_session=made-up",
        "keygate_session=",
    ] {
        let (status, code, _) = service.send(me(cookie)).await.error();
        assert_eq!(
            (status, code.as_str()),
            (401, "invalid_admin_token"),
            "{cookie}"
        );
    }
    // A bearer token is the credential when there is one, even a wrong one.
    let bearer = me(&live).header("authorization", "Bearer wrong");
    assert_eq!(service.send(bearer).await.status, 401);
    let admin = service
        .send(me(&live).header("authorization", format!("Bearer {ADMIN}")))
        .await;
    assert_eq!(admin.body["kind"], "admin");

    // Sign-out: the header, then the session is gone and the cookie cleared.
    let logout = || {
        service
            .request(Method::POST, "/auth/logout", None)
            .header(COOKIE, &live)
    };
    assert_eq!(
        service.send(logout()).await.error(),
        (403, "csrf_header_required".into(), None)
    );
    assert_eq!(service.send(me(&live)).await.status, 200);
    let out = service.send(logout().header("x-keygate-csrf", "1")).await;
    assert_eq!(out.status, 204);
    let cleared = out.headers[SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("keygate_session=; Path=/; Max-Age=0; HttpOnly"),
        "{cleared}"
    );
    assert_eq!(service.send(me(&live)).await.status, 401);
}

#[tokio::test]
async fn without_single_sign_on_its_routes_are_not_there_and_the_console_offers_none() {
    let service = Service::start().await;
    let settings = service
        .send(service.request(Method::GET, "/console/settings.json", None))
        .await;
    assert_eq!(settings.body["sso"], false);
    for path in ["/auth/oidc/login", "/auth/oidc/callback?code=a&state=b"] {
        let reply = service.send(service.request(Method::GET, path, None)).await;
        assert_eq!(reply.error().0, 404, "{path}");
        assert!(reply.text.contains("KEYGATE_OIDC_ISSUER"), "{}", reply.text);
    }
}

#[tokio::test]
async fn sign_in_problems_are_pages_that_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let database = key_service::store::test_database(dir.path()).await.unwrap();
    let settings = SsoSettings {
        // Nothing listens there: discovery fails.
        issuer: "http://127.0.0.1:9".into(),
        client_id: "keygate".into(),
        client_secret: None,
        redirect_url: None,
        console_url: Some(key_service::sso::web_url("https://keys.acme.example").unwrap()),
        scopes: "openid".into(),
        mappings: "groups:a=acme:owner".parse().unwrap(),
        session_ttl: 3600,
    };
    let sso = Sso::new(settings, "127.0.0.1:0".parse().unwrap()).unwrap();
    let service = Service::configured(&database, dir, |state| state.with_sso(sso)).await;
    let settings = service
        .send(service.request(Method::GET, "/console/settings.json", None))
        .await;
    assert_eq!(settings.body["sso"], true);

    let get = |path: &str| service.request(Method::GET, path, None);
    let down = service.send(get("/auth/oidc/login")).await;
    assert_eq!(down.status, 503);
    assert_eq!(down.headers["content-type"], "text/html; charset=utf-8");
    assert!(
        down.text.contains("cannot reach the identity provider"),
        "{}",
        down.text
    );

    let unknown = service
        .send(
            get("/auth/oidc/callback?code=c0de&state=made-up")
                .header(COOKIE, "keygate_oidc_state=made-up"),
        )
        .await;
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.text.contains("has expired, was used already"),
        "{}",
        unknown.text
    );
    assert!(!unknown.text.contains("c0de"));
    let forget = unknown.headers[SET_COOKIE].to_str().unwrap();
    assert!(
        forget
            .starts_with("keygate_oidc_state=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure"),
        "{forget}"
    );

    let denied = service
        .send(get("/auth/oidc/callback?error=access_denied&error_description=%3Cb%3Enot%20you%3C%2Fb%3E&state=s"))
        .await;
    assert_eq!(denied.status, 400);
    assert!(
        denied
            .text
            .contains("access_denied: &lt;b&gt;not you&lt;/b&gt;"),
        "{}",
        denied.text
    );
    assert_eq!(denied.headers["cache-control"], "no-store");
    assert!(denied.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));

    let bare = service.send(get("/auth/oidc/callback")).await;
    assert_eq!(bare.status, 400);
    assert!(bare.text.contains("lacks its code or state"));
}
