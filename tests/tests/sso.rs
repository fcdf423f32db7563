//! Single sign-on for the console, end to end, on SQLite and on PostgreSQL: the real
//! key-service, a small OpenID provider of the tests' own on loopback (`oidc.rs`) and
//! headless Chromium. A person clicks "Sign in with SSO" and lands in the console as the
//! account and role the mapping rules give them; their session cookie works for the API,
//! writes only with `x-keygate-csrf: 1`; signing out ends it. The key-service refuses the
//! sign-in, with a page that says why and no session cookie, when the ID token is for
//! another audience, expired, badly signed or carries another nonce, when the provider
//! refuses, when no rule gives an account, and when the state is tampered with or used
//! again.
//!
//! One key-service, provider and browser per engine; the scenes run in turn.

use fantoccini::cookies::Cookie;
use keygate_e2e::browser::{click, script, until_shown, until_text, Browser};
use keygate_e2e::oidc::{Identity, Misbehaviour, Provider, Signer};
use keygate_e2e::stack::{postgres_database_url, random_token, KeyService};
use reqwest::blocking::{Client, Response};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::{json, Value};

const CLIENT_ID: &str = "keygate-console";
const CLIENT_SECRET: &str = "provider-issued-secret";
const MAPPINGS: &str = "groups:acme-admins=acme:owner,groups:acme-staff=acme:viewer,\
                        email_domain:globex.example=globex:viewer";

fn alice() -> Identity {
    Identity::new(
        "alice-0001",
        "alice@acme.example",
        &["staff", "acme-admins"],
    )
}

struct Sso {
    provider: Provider,
    service: KeyService,
    /// No redirects followed: each hop is looked at.
    http: Client,
}

impl Sso {
    fn start(database_url: &str, signer: Signer) -> Sso {
        let provider = Provider::start(CLIENT_ID, Some(CLIENT_SECRET), signer, alice());
        let service = KeyService::start_with(
            database_url,
            &[
                ("KEYGATE_OIDC_ISSUER", &provider.issuer),
                ("KEYGATE_OIDC_CLIENT_ID", CLIENT_ID),
                ("KEYGATE_OIDC_CLIENT_SECRET", CLIENT_SECRET),
                ("KEYGATE_OIDC_MAPPINGS", MAPPINGS),
                ("KEYGATE_OIDC_SESSION_TTL", "1h"),
            ],
        );
        // The console's address defaults to the one the service listens on.
        provider.allow_redirect(&format!("{}/auth/oidc/callback", service.url));
        let http = Client::builder()
            .redirect(Policy::none())
            .build()
            .expect("an HTTP client");
        let sso = Sso {
            provider,
            service,
            http,
        };
        for account in ["acme", "globex"] {
            let created = sso
                .http
                .post(sso.url("/api/v1/accounts"))
                .bearer_auth(&sso.service.admin_token)
                .json(&json!({"name": account}))
                .send()
                .expect("create an account");
            assert_eq!(created.status(), 201, "account {account}");
        }
        sso
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.service.url)
    }

    /// A call with the session cookie alone; a POST creates a key in acme.
    fn with_cookie(&self, method: reqwest::Method, path: &str, cookie: &str) -> Response {
        let post = method == reqwest::Method::POST;
        let mut request = self
            .http
            .request(method, self.url(path))
            .header(COOKIE, format!("keygate_session={cookie}"));
        if post {
            let name = format!("sso-{}", &random_token()[..6]);
            request = request.json(&json!({"name": name, "account": "acme"}));
        }
        request.send().expect("an API call")
    }
}

fn location(response: &Response) -> String {
    response.headers()[LOCATION]
        .to_str()
        .expect("a Location")
        .to_owned()
}

/// The value a response sets for cookie `name` (`Some("")` when it clears it).
fn set_cookie(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_owned())
}

fn session_cookie(browser: &Browser) -> Option<Cookie<'static>> {
    let cookies = browser
        .run(browser.client.get_all_cookies())
        .expect("the browser's cookies");
    cookies
        .into_iter()
        .find(|c| c.name() == "keygate_session" && !c.value().is_empty())
}

/// Signs in by hand, one hop at a time: the login's redirect to the provider, the
/// provider's back to the callback. Returns the callback URL and the login's cookie.
fn start_by_hand(sso: &Sso) -> (String, String) {
    let login = sso
        .http
        .get(sso.url("/auth/oidc/login"))
        .send()
        .expect("login");
    assert_eq!(login.status(), 303);
    assert_eq!(login.headers()["cache-control"], "no-store");
    let state = set_cookie(&login, "keygate_oidc_state").expect("the login's cookie");
    let to_provider = location(&login);
    assert!(to_provider.starts_with(&format!("{}/authorize?", sso.provider.issuer)));
    assert!(
        to_provider.contains("code_challenge_method=S256"),
        "{to_provider}"
    );
    assert!(!to_provider.contains("code_verifier"), "{to_provider}");
    let back = sso.http.get(&to_provider).send().expect("authorize");
    assert_eq!(back.status(), 303, "{:?}", sso.provider.refusals());
    (location(&back), state)
}

fn finish_by_hand(sso: &Sso, callback: &str, login_cookie: Option<&str>) -> Response {
    let mut request = sso.http.get(callback);
    if let Some(state) = login_cookie {
        request = request.header(COOKIE, format!("keygate_oidc_state={state}"));
    }
    request.send().expect("callback")
}

/// The person clicks "Sign in with SSO" on the console's sign-in screen.
fn click_sign_in(sso: &Sso, browser: &Browser) {
    let c = &browser.client;
    browser
        .run(c.goto(&sso.url("/")))
        .expect("open the console");
    browser.run(click(c, "#signin-sso"));
}

/// After a refused sign-in: the page says why and the browser holds no session.
fn assert_refused(browser: &Browser, headline: &str, why: &str) {
    let c = &browser.client;
    browser.run(async {
        until_text(c, "#sso-error h1", headline).await;
        until_text(c, "#sso-error", why).await;
    });
    assert!(
        session_cookie(browser).is_none(),
        "a session cookie after a refused sign-in ({why})"
    );
    let page = browser.run(c.source()).expect("the page");
    assert!(!page.contains("code="), "the page shows the code");
}

fn signs_in_through_the_console_and_the_session_works_for_the_api(sso: &Sso, browser: &Browser) {
    let c = &browser.client;
    browser
        .run(c.goto(&sso.url("/")))
        .expect("open the console");
    // Signed out, the sign-in screen offers both ways in.
    browser.run(async {
        until_shown(c, "#signin-token").await;
        until_text(c, "#signin-sso", "Sign in with SSO").await;
    });
    browser.screenshot("sso-signin");
    browser.run(click(c, "#signin-sso"));
    browser.run(async {
        until_text(c, "#whoami", "acme (owner)").await;
        until_shown(c, "#create-key").await;
    });
    browser.screenshot("sso-signed-in");
    let me = browser.run(script(
        c,
        "return fetch('/api/v1/me', {cache: 'no-store'}).then((r) => r.json())",
    ));
    assert_eq!(
        me,
        json!({"kind": "sso", "id": "alice-0001", "account": "acme", "role": "owner"})
    );

    // The cookie: HttpOnly (no script reads it), SameSite=Lax, the whole site; the
    // sign-in's own cookie is gone, and nothing is left in the page's storage.
    let cookie = session_cookie(browser).expect("a session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Lax)");
    assert_eq!(cookie.path(), Some("/"));
    let cookies = browser
        .run(c.get_all_cookies())
        .expect("the browser's cookies");
    assert!(
        cookies.iter().all(|c| c.name() != "keygate_oidc_state"),
        "{cookies:?}"
    );
    let seen = browser.run(script(
        c,
        "return document.cookie + JSON.stringify(sessionStorage) + JSON.stringify(localStorage) + location.href",
    ));
    let seen = seen.as_str().expect("text");
    assert!(
        !seen.contains(cookie.value()),
        "the session is visible to scripts: {seen}"
    );
    assert!(!seen.contains("code="), "{seen}");

    // The same cookie at the API: reads as it is, writes with the CSRF header only.
    let session = cookie.value().to_owned();
    let me = sso.with_cookie(reqwest::Method::GET, "/api/v1/me", &session);
    assert_eq!(me.status(), 200);
    let refused = sso.with_cookie(reqwest::Method::POST, "/api/v1/keys", &session);
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().expect("JSON");
    assert_eq!(body["error"]["code"], "csrf_header_required", "{body}");
    let made = sso
        .http
        .post(sso.url("/api/v1/keys"))
        .header(COOKIE, format!("keygate_session={session}"))
        .header("x-keygate-csrf", "1")
        .json(&json!({"name": "made-by-sso", "account": "acme"}))
        .send()
        .expect("create a key");
    assert_eq!(made.status(), 201);

    // The console's sign-out ends the session at the service, not only in the tab.
    browser.run(async {
        click(c, "#signout").await;
        until_text(c, "#signin-error", "Signed out.").await;
        until_shown(c, "#signin-sso").await;
    });
    assert!(session_cookie(browser).is_none());
    let after = sso.with_cookie(reqwest::Method::GET, "/api/v1/me", &session);
    assert_eq!(after.status(), 401);
    // Reloaded, the console asks to sign in again.
    browser.run(c.goto(&sso.url("/"))).expect("reload");
    browser.run(until_shown(c, "#signin-sso"));

    // The provider's answer, used again, signs no one in.
    let used = sso.provider.last_redirect().expect("a redirect back");
    browser.run(c.goto(&used)).expect("the used callback");
    assert_refused(browser, "Sign-in expired", "was used already");
}

fn a_staff_member_and_a_partner_get_their_own_accounts_and_others_none(
    sso: &Sso,
    browser: &Browser,
) {
    let c = &browser.client;
    let logout = || {
        browser.run(async {
            click(c, "#signout").await;
            until_shown(c, "#signin-sso").await;
        });
    };
    sso.provider.sign_in_as(Identity::new(
        "bob-0002",
        "bob@acme.example",
        &["acme-staff"],
    ));
    click_sign_in(sso, browser);
    browser.run(until_text(c, "#whoami", "acme (viewer)"));
    let session = session_cookie(browser)
        .expect("a session")
        .value()
        .to_owned();
    let write = sso
        .http
        .post(sso.url("/api/v1/keys"))
        .header(COOKIE, format!("keygate_session={session}"))
        .header("x-keygate-csrf", "1")
        .json(&json!({"name": "viewer-write", "account": "acme"}))
        .send()
        .expect("a viewer's write");
    assert_eq!(write.status(), 404, "a viewer has no write routes");
    logout();

    sso.provider
        .sign_in_as(Identity::new("carol-0003", "Carol@Globex.example", &[]));
    click_sign_in(sso, browser);
    browser.run(until_text(c, "#whoami", "globex (viewer)"));
    logout();

    sso.provider.sign_in_as(Identity::new(
        "mallory-0004",
        "mallory@elsewhere.example",
        &["acme-admins-old"],
    ));
    click_sign_in(sso, browser);
    assert_refused(
        browser,
        "No access",
        "no rule of this keygate gives you an account",
    );
    browser.screenshot("sso-no-access");
    sso.provider.sign_in_as(alice());
}

fn untrustworthy_answers_sign_no_one_in(sso: &Sso, browser: &Browser) {
    for (how, headline, why) in [
        (
            Misbehaviour::WrongAudience,
            "Sign-in refused",
            "meant for another client",
        ),
        (
            Misbehaviour::Expired,
            "Sign-in refused",
            "the ID token has expired",
        ),
        (
            Misbehaviour::BadSignature,
            "Sign-in refused",
            "signature is not valid",
        ),
        (
            Misbehaviour::WrongNonce,
            "Sign-in refused",
            "nonce is not the one this sign-in sent",
        ),
        (Misbehaviour::Deny, "Sign-in refused", "access_denied"),
        (
            Misbehaviour::TamperState,
            "Sign-in expired",
            "not started in this browser",
        ),
    ] {
        sso.provider.misbehave(how);
        let issued = sso.provider.issued();
        click_sign_in(sso, browser);
        assert_refused(browser, headline, why);
        let exchanged = sso.provider.issued() - issued;
        let expected = match how {
            // Refused before any code was traded.
            Misbehaviour::Deny | Misbehaviour::TamperState => 0,
            _ => 1,
        };
        assert_eq!(exchanged, expected, "{how:?}");
    }

    // The statuses, by hand: 401 for a token that fails a check.
    sso.provider.misbehave(Misbehaviour::Expired);
    let (callback, state) = start_by_hand(sso);
    let refused = finish_by_hand(sso, &callback, Some(&state));
    assert_eq!(refused.status(), 401);
    assert_eq!(set_cookie(&refused, "keygate_session"), None);
    assert!(refused.text().expect("a page").contains("has expired"));
    sso.provider.misbehave(Misbehaviour::None);
}

fn a_state_serves_once_and_only_in_the_browser_that_started_it(sso: &Sso) {
    // Tampered: another state than the login's. Refused without a token exchange, and the
    // real one still works afterwards.
    let issued = sso.provider.issued();
    let (callback, state) = start_by_hand(sso);
    let tampered = callback.replace(&format!("state={state}"), &format!("state={state}A"));
    assert_ne!(tampered, callback);
    let refused = finish_by_hand(sso, &tampered, Some(&state));
    assert_eq!(refused.status(), 400);
    assert_eq!(set_cookie(&refused, "keygate_session"), None);
    assert_eq!(
        set_cookie(&refused, "keygate_oidc_state").as_deref(),
        Some("")
    );
    let text = refused.text().expect("a page");
    assert!(text.contains("has expired, was used already"), "{text}");
    assert!(!text.contains(&state), "the page echoes the state");

    let signed_in = finish_by_hand(sso, &callback, Some(&state));
    assert_eq!(signed_in.status(), 303);
    assert_eq!(location(&signed_in), "/");
    let session = set_cookie(&signed_in, "keygate_session").expect("a session");
    assert!(session.len() >= 40);
    let me = sso.with_cookie(reqwest::Method::GET, "/api/v1/me", &session);
    assert_eq!(me.status(), 200);
    assert_eq!(sso.provider.issued(), issued + 1);

    // Used again, with the same cookie: refused, no second exchange.
    let again = finish_by_hand(sso, &callback, Some(&state));
    assert_eq!(again.status(), 400);
    assert_eq!(set_cookie(&again, "keygate_session"), None);
    assert_eq!(sso.provider.issued(), issued + 1);

    // A fresh answer in another browser (no login cookie): refused, and spent.
    let (callback, state) = start_by_hand(sso);
    let elsewhere = finish_by_hand(sso, &callback, None);
    assert_eq!(elsewhere.status(), 400);
    assert_eq!(finish_by_hand(sso, &callback, Some(&state)).status(), 400);
    assert_eq!(sso.provider.issued(), issued + 1);

    // Nothing the sign-ins carried reached the log.
    let log = sso.service.log();
    for secret in [state.as_str(), session.as_str(), CLIENT_SECRET] {
        assert!(!log.contains(secret), "the log holds a secret");
    }
    assert!(log.contains("signed in through single sign-on"), "{log}");
}

fn single_sign_on(database_url: &str, signer: Signer) {
    let sso = Sso::start(database_url, signer);
    a_state_serves_once_and_only_in_the_browser_that_started_it(&sso);
    let browser = Browser::start();
    signs_in_through_the_console_and_the_session_works_for_the_api(&sso, &browser);
    a_staff_member_and_a_partner_get_their_own_accounts_and_others_none(&sso, &browser);
    untrustworthy_answers_sign_no_one_in(&sso, &browser);
}

#[test]
fn single_sign_on_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("keygate-sso-{}", random_token()));
    std::fs::create_dir_all(&dir).expect("a data directory");
    single_sign_on(
        &format!("sqlite://{}/keygate.db", dir.display()),
        Signer::rsa("rsa-1"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn single_sign_on_on_postgres() {
    single_sign_on(&postgres_database_url(), Signer::ec("ec-1"));
}
