//! The web console in a real headless Chromium, against the real key-service, with the
//! key it makes used through the real Envoy: sign in, create a key with restrictions, see
//! and copy its secret once, call Envoy with what was copied, disable, enable, rotate and
//! delete it from the console, find its creation in the audit log, and find no secret
//! left in the page.

use keygate_e2e::api::{admin, assert_error, chat, create_key, until_status, until_synced};
use keygate_e2e::browser::{click, fill, script, until_gone, until_shown, until_text, Browser};
use keygate_e2e::stack::Stack;
use reqwest::Method;
use serde_json::{json, Value};

/// Everything a page could be holding a secret in: its markup, its text, every field's
/// current value, its storage and its address.
const PAGE_CONTENTS: &str = "return [document.documentElement.outerHTML, document.body.innerText, \
     ...[...document.querySelectorAll('input, textarea')].map((e) => e.value), \
     JSON.stringify(sessionStorage), JSON.stringify(localStorage), location.href].join('\\n');";

fn assert_not_in_page(browser: &Browser, secret: &str, when: &str) {
    let page = browser.run(script(&browser.client, PAGE_CONTENTS));
    let page = page.as_str().expect("page contents");
    assert!(page.len() > 1000, "the page was read: {page:.200}");
    assert!(
        !page.contains(secret),
        "a secret is still in the page {when}"
    );
}

#[test]
fn a_key_made_in_the_console_works_through_envoy_until_the_console_disables_rotates_and_deletes_it()
{
    let stack = Stack::start();
    // Neighbours for the list to show every status.
    create_key(
        &stack,
        json!({"name": "ci-nightly", "expires_at": "2001-01-01T00:00:00Z"}),
    );
    create_key(
        &stack,
        json!({"name": "trial", "unlimited_quota": false, "quota": 0}),
    );
    create_key(
        &stack,
        json!({"name": "nextchat-prod", "unlimited_quota": false, "quota": 50_000,
               "models": ["gpt-4o-mini"], "ip_allowlist": ["10.0.0.0/8"],
               "rpm": 600, "tpm": 100_000}),
    );
    let paused = create_key(&stack, json!({"name": "batch-job", "expires_in": "1d"}));
    admin(
        &stack,
        Method::PATCH,
        &format!("/api/v1/keys/{}", paused.id),
        Some(json!({"enabled": false})),
    );
    for (model, input, output) in [
        ("gpt-4o-mini", 150_000, 600_000),
        ("claude-sonnet-4", 3_000_000, 15_000_000),
    ] {
        let price = json!({"input": input, "output": output});
        let (status, _) = admin(
            &stack,
            Method::PUT,
            &format!("/api/v1/models/{model}"),
            Some(price),
        );
        assert_eq!(status, 201);
    }

    let browser = Browser::start();
    let c = &browser.client;
    let console = format!("{}/", stack.key_service_url);
    browser.run(c.goto(&console)).expect("open the console");
    browser.allow_clipboard();

    // Sign in with the keyboard alone; a wrong token is refused in words.
    browser.run(async {
        fill(c, "#signin-token", "not-the-token\u{E007}").await;
        until_text(c, "#signin-error", "not accepted").await;
        fill(
            c,
            "#signin-token",
            &format!("{}\u{E007}", stack.admin_token),
        )
        .await;
        until_text(c, "#key-list tbody", "batch-job").await;
    });
    let list = browser.run(async { until_text(c, "#key-list tbody", "trial").await.text().await });
    let statuses = list.expect("the key list's text");
    for status in ["active", "disabled", "expired", "exhausted"] {
        assert!(
            statuses.contains(status),
            "{status} badge missing from:\n{statuses}"
        );
    }
    // Wide enough for every column of the list, for its picture.
    browser
        .run(c.set_window_size(1440, 900))
        .expect("window size");
    browser.screenshot("keys");

    // The create dialog: the seeds' defaults, inline allowlist checks, an API error next
    // to the field it names.
    browser.run(async {
        click(c, "#create-key").await;
        until_shown(c, "#key-dialog").await;
        let name = c.find(fantoccini::Locator::Css("#kf-name")).await.unwrap();
        assert_eq!(
            name.prop("value").await.unwrap().as_deref(),
            Some("dev-local")
        );
        let expiry = script(
            c,
            "return document.querySelector('input[name=expiry]:checked').value",
        )
        .await;
        assert_eq!(expiry, "1mo");
        fill(c, "#kf-name", "console-e2e").await;
        click(c, "#kf-unlimited").await;
        fill(c, "#kf-quota", "100000").await;
        click(c, r#"#kf-models-known input[value="gpt-4o-mini"]"#).await;
        fill(c, "#kf-ips", "10.0.0.300").await;
        until_text(
            c,
            "#kf-ips-error",
            "Line 1: 10.0.0.300 is not an IPv4 or IPv6 address",
        )
        .await;
        fill(c, "#kf-ips", "127.0.0.1\n::1/128").await;
        until_gone(c, "#kf-ips-error li").await;
        fill(c, "#kf-quantity", "101").await;
        click(c, "#kf-submit").await;
        until_text(c, "#kf-quantity-error", "quantity").await;

        // Cancelled and opened again, the dialog starts clean: the key it then makes is
        // the one the rest of this test uses, and its picture is docs/console-create-dialog.png.
        click(c, "#key-dialog [data-close]").await;
        until_gone(c, "#key-dialog").await;
        click(c, "#create-key").await;
        until_shown(c, "#key-dialog").await;
        let stale = script(
            c,
            "return [...document.querySelectorAll('#key-dialog .field-error')]\
               .map((e) => e.textContent).join('')",
        )
        .await;
        assert_eq!(stale, "", "no error left from before");
        let quantity = script(c, "return document.querySelector('#kf-quantity').value").await;
        assert_eq!(quantity, "1");
        fill(c, "#kf-name", "console-e2e").await;
        click(c, "#kf-unlimited").await;
        fill(c, "#kf-quota", "100000").await;
        click(c, r#"#kf-models-known input[value="gpt-4o-mini"]"#).await;
        fill(c, "#kf-ips", "127.0.0.1\n::1/128").await;
        fill(c, "#kf-max-parallel", "8").await;
        // A monthly quota and a daily cap on one family of models.
        script(
            c,
            "const p = document.querySelector('#kf-period'); p.value = 'month'; \
             p.dispatchEvent(new Event('change', { bubbles: true }));",
        )
        .await;
        fill(c, "#kf-caps", "claude-sonnet-* 5000 day").await;
        c.set_window_size(1280, 1600)
            .await
            .expect("a window tall enough for the dialog");
        script(c, "document.querySelector('#key-dialog').scrollTop = 0").await;
        // Nothing focused, so no field is pictured mid-edit.
        script(c, "document.activeElement.blur()").await;
    });
    browser.screenshot("create-dialog");
    browser
        .run(c.set_window_size(1280, 900))
        .expect("window size");

    // The secret, once, with a copy button that really copies.
    let secret = browser.run(async {
        click(c, "#kf-submit").await;
        until_text(
            c,
            "#secret-dialog .warning",
            "You will not see this secret again",
        )
        .await;
        click(c, "#secret-list button").await;
        until_text(c, "#secret-copied", "Copied").await;
        let copied = c
            .execute_async(
                "const done = arguments[arguments.length - 1]; \
                 navigator.clipboard.readText().then(done, (e) => done('clipboard: ' + e));",
                vec![],
            )
            .await
            .expect("read the clipboard");
        let curl = script(c, "return document.querySelector('#secret-curl').value").await;
        (copied, curl)
    });
    let (copied, curl) = secret;
    let (_, page) = admin(&stack, Method::GET, "/api/v1/keys?q=console-e2e", None);
    let made = &page["keys"][0];
    let made_id = made["id"].as_str().expect("the key's id").to_owned();
    assert_eq!(made["quota_period"], "month", "{made}");
    assert!(made["resets_at"].is_string(), "{made}");
    assert_eq!(
        made["model_caps"],
        json!({"claude-sonnet-*": {"budget": 5000, "period": "day", "used": 0,
            "resets_at": made["model_caps"]["claude-sonnet-*"]["resets_at"]}}),
        "{made}"
    );
    let secret = copied.as_str().expect("clipboard text").to_owned();
    assert!(
        secret.starts_with("sk-") && secret.len() == 51,
        "copied {secret:?}"
    );
    let curl = curl.as_str().unwrap();
    assert!(
        curl.contains("/chat/completions") && curl.contains(&secret),
        "{curl}"
    );
    browser.run(async {
        click(c, "#secret-done").await;
        until_gone(c, "#secret-dialog").await;
    });
    assert_not_in_page(&browser, &secret, "after the creation dialog closed");
    let row = browser.run(async {
        until_text(c, "#key-list tbody tr", "console-e2e")
            .await
            .text()
            .await
    });
    let row = row.unwrap();
    assert!(
        row.contains("127.0.0.1") && row.contains("gpt-4o-mini") && row.contains("active"),
        "{row}"
    );
    assert!(
        row.contains(&secret[..5]) && !row.contains(&secret[5..20]),
        "the list shows it masked: {row}"
    );

    // What the console made works through Envoy, and the console's switches reach it.
    assert_eq!(until_synced(|| chat(&stack, Some(&secret))).status(), 200);
    browser.run(async {
        click(c, r#"button[aria-label="Disable console-e2e"]"#).await;
        until_text(c, "#notice", "console-e2e is disabled").await;
    });
    assert_error(
        until_status(401, || chat(&stack, Some(&secret))),
        401,
        "key_disabled",
    );
    browser.run(async {
        click(c, r#"button[aria-label="Enable console-e2e"]"#).await;
        until_text(c, "#notice", "console-e2e is enabled").await;
    });
    assert_eq!(
        until_status(200, || chat(&stack, Some(&secret))).status(),
        200
    );

    // Rotate: a confirmation that says what breaks, then the new secret once.
    let rotated = browser.run(async {
        click(c, r#"button[aria-label="Rotate console-e2e"]"#).await;
        until_text(c, "#confirm-message", "401 invalid_api_key").await;
        click(c, "#confirm-ok").await;
        until_text(
            c,
            "#secret-dialog .warning",
            "You will not see this secret again",
        )
        .await;
        let value = script(c, "return document.querySelector('#secret-0').value").await;
        click(c, "#secret-done").await;
        until_gone(c, "#secret-dialog").await;
        value
    });
    let rotated = rotated.as_str().expect("new secret").to_owned();
    assert_ne!(rotated, secret);
    assert_not_in_page(&browser, &rotated, "after the rotation dialog closed");
    assert_error(
        until_status(401, || chat(&stack, Some(&secret))),
        401,
        "invalid_api_key",
    );
    assert_eq!(
        until_status(200, || chat(&stack, Some(&rotated))).status(),
        200
    );

    // The usage page shows the calls: in the log and in the charts.
    browser.run(async {
        click(c, r#"nav a[data-page="usage"]"#).await;
        until_shown(c, "#usage-body").await;
        // The log and the charts come from two queries run side by side: a flush that lands
        // between them shows the call in the log while the charts still add up to 0. Both
        // are read from one render, and the page is applied again until both show it.
        let mut seen = Value::Null;
        for _ in 0..100 {
            seen = script(
                c,
                "const body = document.querySelector('#usage-body');
                 const tokens = document.querySelector('.chart figcaption');
                 return [body ? body.innerText : '', tokens ? tokens.textContent : ''];",
            )
            .await;
            let (log, tokens) = (
                seen[0].as_str().unwrap_or(""),
                seen[1].as_str().unwrap_or(""),
            );
            if log.contains("console-e2e")
                && tokens.starts_with("Tokens")
                && !tokens.ends_with(": 0 in all")
            {
                break;
            }
            // Usage reaches the service with the filter's next flush.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            click(c, "form.filters button[type=submit]").await;
        }
        until_text(c, "#usage-body table", "console-e2e").await;
        let tokens = until_text(c, ".chart figcaption", "Tokens")
            .await
            .text()
            .await
            .unwrap();
        assert!(
            !tokens.ends_with(": 0 in all"),
            "{tokens} (last seen: {seen})"
        );
    });
    browser.screenshot("usage");

    // Edit: the dialog comes filled with the key's settings; the list shows the change.
    browser.run(async {
        click(c, r#"nav a[data-page="keys"]"#).await;
        click(c, r#"button[aria-label="Edit console-e2e"]"#).await;
        until_text(c, "#key-dialog-title", "Edit console-e2e").await;
        let ips = script(c, "return document.querySelector('#kf-ips').value").await;
        assert_eq!(
            ips, "127.0.0.1/32\n::1/128",
            "as the service normalised them"
        );
        fill(c, "#kf-quota", "250000").await;
        // A limit the API refuses is named next to its field.
        fill(c, "#kf-rpm", "0").await;
        click(c, "#kf-submit").await;
        until_text(c, "#kf-rpm-error", "rpm must be at least 1").await;
        fill(c, "#kf-rpm", "600").await;
        fill(c, "#kf-max-parallel", "4").await;
        click(c, "#kf-submit").await;
        until_text(c, "#notice", "console-e2e is saved").await;
        until_text(c, "#key-list", "600 RPM · 4 parallel").await;
    });
    let (_, page) = admin(&stack, Method::GET, "/api/v1/keys?q=console-e2e", None);
    assert_eq!(page["keys"][0]["quota"], 250_000, "{page}");
    let limits = &page["keys"][0];
    assert_eq!(
        (&limits["rpm"], &limits["tpm"], &limits["max_parallel"]),
        (&json!(600), &Value::Null, &json!(4)),
        "{page}"
    );
    // The notice comes once the list is redrawn. It shows used / remaining, which add up
    // to the new quota whatever usage has arrived since (the calls above are still being
    // billed), and under them the period and when it resets.
    let cell = browser.run(script(
        c,
        "const row = [...document.querySelectorAll('#key-list tbody tr')]\
           .find((r) => r.textContent.includes('console-e2e'));\
         return row.querySelectorAll('td')[3].firstChild.textContent;",
    ));
    let numbers: Vec<u64> = cell
        .as_str()
        .unwrap()
        .split(" / ")
        .map(|n| n.replace(',', "").trim().parse().unwrap())
        .collect();
    assert_eq!(
        numbers.iter().sum::<u64>(),
        250_000,
        "used / remaining: {cell}"
    );
    let period = browser.run(script(
        c,
        "const row = [...document.querySelectorAll('#key-list tbody tr')]\
           .find((r) => r.textContent.includes('console-e2e'));\
         return row.querySelectorAll('td')[3].textContent;",
    ));
    assert!(
        period.as_str().unwrap().contains("per month, resets"),
        "{period}"
    );

    // Groups and accounts: made through their forms, refused in words when they must be.
    browser.run(async {
        click(c, r#"nav a[data-page="groups"]"#).await;
        fill(c, "#group-form-name", "team-a").await;
        fill(c, "#group-form-models", "gpt-4o-mini, claude-sonnet-4").await;
        fill(c, "#group-form-ratio", "1.5").await;
        click(c, "#group-form button[type=submit]").await;
        until_text(c, "table tbody tr", "team-a").await;
        until_text(c, "table tbody tr", "×1.5").await;
        click(c, r#"button[aria-label="Delete default"]"#).await;
        click(c, "#confirm-ok").await;
        until_text(c, "#notice", "the default group cannot be deleted").await;
        click(c, r#"nav a[data-page="accounts"]"#).await;
        fill(c, "#account-form-name", "research").await;
        fill(c, "#account-form-balance", "5000").await;
        click(c, "#account-form button[type=submit]").await;
        until_text(c, "table tbody tr", "5,000").await;
    });
    let (status, groups) = admin(&stack, Method::GET, "/api/v1/groups", None);
    assert_eq!(status, 200);
    assert!(
        groups.to_string().contains("\"default\""),
        "the default group stays: {groups}"
    );

    // Prices: an API error lands next to the field it names.
    browser.run(async {
        click(c, r#"nav a[data-page="models"]"#).await;
        fill(c, "#price-form-name", "gpt-4o-mini").await;
        fill(c, "#price-form-input", "-1").await;
        fill(c, "#price-form-output", "2").await;
        click(c, "#price-form button[type=submit]").await;
        until_text(c, r#"#price-form [data-error="input"]"#, "input").await;
        fill(c, "#price-form-input", "1").await;
        click(c, "#price-form button[type=submit]").await;
        until_text(c, "table tbody", "gpt-4o-mini").await;
    });

    // Delete: the confirmation names the key; afterwards the secret is refused.
    browser.run(async {
        click(c, r#"nav a[data-page="keys"]"#).await;
        click(c, r#"button[aria-label="Delete console-e2e"]"#).await;
        let message = until_text(c, "#confirm-message", "console-e2e")
            .await
            .text()
            .await
            .unwrap();
        assert!(
            message.contains("401 invalid_api_key") && message.contains("cannot be undone"),
            "{message}"
        );
        click(c, "#confirm-ok").await;
        until_text(c, "#notice", "console-e2e is deleted").await;
        let list = c.find(fantoccini::Locator::Css("#key-list")).await.unwrap();
        assert!(!list.text().await.unwrap().contains("console-e2e"));
    });
    assert_error(
        until_status(401, || chat(&stack, Some(&rotated))),
        401,
        "invalid_api_key",
    );

    // The audit log has the key's creation: by the admin, from this machine, with what was
    // made (its settings, never its secret) folded under the row.
    browser.run(async {
        click(c, r#"nav a[data-page="audit"]"#).await;
        until_shown(c, "#audit-list").await;
        fill(c, "#audit-action", "key.create").await;
        click(c, "form.filters button[type=submit]").await;
        // The first row once the filter applies (before, it is the key's deletion).
        let row = until_text(c, "#audit-list tbody tr", "key.create").await;
        let text = row.text().await.unwrap();
        for part in [made_id.as_str(), "admin", "127.0.0.1", "default"] {
            assert!(text.contains(part), "{part} missing from the entry: {text}");
        }
        row.find(fantoccini::Locator::Css("summary"))
            .await
            .expect("the entry's change")
            .click()
            .await
            .expect("unfold the change");
        until_text(c, "#audit-list details[open] .diff", "console-e2e").await;
    });
    browser.screenshot("audit");
    assert_not_in_page(
        &browser,
        &secret,
        "with its creation unfolded in the audit log",
    );
    assert_not_in_page(&browser, &rotated, "on the audit page");

    // A phone-width screen: nothing sticks out sideways but the table, which scrolls.
    browser.run(async {
        c.set_window_size(390, 844)
            .await
            .expect("phone-sized window");
        let overflow = script(
            c,
            "return document.documentElement.scrollWidth - window.innerWidth",
        )
        .await;
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "the page is {overflow} px too wide"
        );
    });
    browser.screenshot("keys-phone");

    // Signing out forgets the token: nothing left in the tab's storage.
    browser.run(async {
        click(c, "#signout").await;
        until_shown(c, "#signin-token").await;
        let stored: Value = script(c, "return sessionStorage.length + localStorage.length").await;
        assert_eq!(stored, 0);
    });
    assert_not_in_page(&browser, &stack.admin_token, "after signing out");
}
