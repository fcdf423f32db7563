//! Tenants in the console, in a real headless Chromium against the real key-service, on
//! SQLite and on PostgreSQL: an account's owner signs in with its account token, sees its
//! own keys only, makes a key that works through the real Envoy; its viewer sees the same
//! keys and no way to change them.

use keygate_e2e::api::{admin, chat, create_key, until_synced};
use keygate_e2e::browser::{click, fill, script, until_shown, until_text, Browser};
use keygate_e2e::stack::Stack;
use reqwest::Method;
use serde_json::{json, Value};

/// An account token for `account` with `role`, issued by the operator.
fn account_token(stack: &Stack, account: &str, role: &str) -> String {
    let (status, body) = admin(
        stack,
        Method::POST,
        &format!("/api/v1/accounts/{account}/tokens"),
        Some(json!({"name": format!("{account} {role}"), "role": role})),
    );
    assert_eq!(status, 201, "{body}");
    body["secret"].as_str().expect("token secret").to_owned()
}

/// The text of every visible navigation link.
const NAV: &str = "return [...document.querySelectorAll('nav a')].filter((a) => !a.hidden)\
     .map((a) => a.textContent).join(',')";

fn a_tenant_sees_and_manages_its_own_account_only(stack: &Stack) {
    for account in ["acme", "globex"] {
        let (status, body) = admin(
            stack,
            Method::POST,
            "/api/v1/accounts",
            Some(json!({"name": account})),
        );
        assert_eq!(status, 201, "{body}");
        create_key(
            stack,
            json!({"name": format!("{account}-prod"), "account": account}),
        );
    }
    let owner = account_token(stack, "acme", "owner");
    let viewer = account_token(stack, "acme", "viewer");

    let browser = Browser::start();
    let c = &browser.client;
    browser
        .run(c.goto(&format!("{}/", stack.key_service_url)))
        .expect("open the console");

    // The owner: its keys, not globex's; none of the operator's pages.
    browser.run(async {
        fill(c, "#signin-token", &format!("{owner}\u{E007}")).await;
        until_text(c, "#key-list tbody", "acme-prod").await;
        until_text(c, "#whoami", "acme (owner)").await;
    });
    let listed = browser.run(async { until_shown(c, "#key-list tbody").await.text().await });
    let listed = listed.expect("the key list's text");
    assert!(!listed.contains("globex"), "globex's key shown:\n{listed}");
    let nav = browser.run(script(c, NAV));
    assert_eq!(nav, json!("Keys,Usage,Webhooks,Audit"), "{nav}");
    // An operator's page asked for by address falls back to the keys.
    browser.run(async {
        c.goto(&format!("{}/#/accounts", stack.key_service_url))
            .await
            .expect("go to accounts");
        until_text(c, "h1", "API keys").await;
    });

    // A key made in the console is acme's, and works through Envoy.
    browser.run(async {
        click(c, "#create-key").await;
        until_shown(c, "#key-dialog").await;
        fill(c, "#kf-name", "acme-ci").await;
        click(c, "#kf-submit").await;
        until_shown(c, "#secret-dialog").await;
    });
    let secret = browser.run(script(
        c,
        "return [...document.querySelectorAll('#secret-dialog input')].map((i) => i.value)\
         .find((v) => v.startsWith('sk-'))",
    ));
    let secret = secret.as_str().expect("the new key's secret").to_owned();
    let (_, keys) = admin(stack, Method::GET, "/api/v1/keys?q=acme-ci", None);
    assert_eq!(keys["total"], 1, "{keys}");
    assert_eq!(keys["keys"][0]["account"], "acme", "{keys}");
    let answered = until_synced(|| chat(stack, Some(&secret)));
    assert_eq!(answered.status(), 200);
    browser.run(async { click(c, "#secret-done").await });

    // The audit page shows the owner's own change, made with its token; nothing of the
    // operator's making globex.
    let made_id = keys["keys"][0]["id"].as_str().expect("key id").to_owned();
    browser.run(async {
        click(c, r#"nav a[data-page="audit"]"#).await;
        until_shown(c, "#audit-list").await;
        fill(c, "#audit-action", "key.create").await;
        click(c, "form.filters button[type=submit]").await;
        let row = until_text(c, "#audit-list tbody tr", &made_id).await;
        let text = row.text().await.expect("the entry's text");
        assert!(text.contains("token") && text.contains("acme"), "{text}");
        let all = until_shown(c, "#audit-list")
            .await
            .text()
            .await
            .expect("the log");
        assert!(
            !all.contains("globex"),
            "globex in acme's audit log:\n{all}"
        );
    });

    // The viewer: the same keys, and nothing to change them with.
    browser.run(async {
        click(c, "#signout").await;
        fill(c, "#signin-token", &format!("{viewer}\u{E007}")).await;
        until_text(c, "#whoami", "acme (viewer)").await;
        click(c, r#"nav a[data-page="keys"]"#).await;
        until_text(c, "#key-list tbody", "acme-ci").await;
        until_text(c, "#whoami", "acme (viewer)").await;
        until_text(c, "#key-list tbody", "read only").await;
    });
    let buttons: Value = browser.run(script(
        c,
        "return [...document.querySelectorAll('#main button')].map((b) => b.textContent)",
    ));
    for write in ["Create API key", "Edit", "Delete", "Rotate", "Disable"] {
        assert!(
            !buttons
                .as_array()
                .expect("buttons")
                .iter()
                .any(|b| b == write),
            "a viewer is offered {write}: {buttons}"
        );
    }
    browser.run(async { click(c, "#signout").await });
}

#[test]
fn tenants_in_the_console_on_sqlite() {
    let stack = Stack::start();
    a_tenant_sees_and_manages_its_own_account_only(&stack);
}

#[test]
fn tenants_in_the_console_on_postgres() {
    let stack = Stack::builder().postgres().start();
    a_tenant_sees_and_manages_its_own_account_only(&stack);
}
