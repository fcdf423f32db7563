//! The audit log: entries written through `audit::record` (as handlers write them) are
//! read back through `GET /api/v1/audit`, filtered and paged, a tenant's view held to its
//! own account, secrets never in it, old entries pruned, a failed write counted.

use std::net::IpAddr;

use key_service::access::{Actor, ActorKind, Caller, Role, Scope};
use key_service::audit::{self, Change};
use key_service::store::NewAuditEntry;
use key_service::{AppState, Store};
use reqwest::Method;
use serde_json::{json, Value};

use crate::{Reply, Service, ADMIN, FILTER};

const HOME: &str = "192.0.2.10";

fn admin() -> Caller {
    Caller::admin(Some(HOME.parse().unwrap()))
}

fn tenant(account: &str, token_id: &str, address: Option<IpAddr>) -> Caller {
    Caller {
        actor: Actor {
            kind: ActorKind::Token,
            id: token_id.into(),
        },
        scope: Scope::Account {
            name: account.into(),
            role: Role::Owner,
        },
        address,
    }
}

fn change<'a>(action: &'static str, target: &'a str, account: Option<&'a str>) -> Change<'a> {
    Change {
        action,
        target,
        account,
        before: None,
        after: Some(json!({"name": target})),
    }
}

async fn audit(service: &Service, query: &str, token: &str) -> Reply {
    service
        .send(service.request(Method::GET, &format!("/api/v1/audit{query}"), Some(token)))
        .await
}

/// The listing's entries, as (action, target) pairs, and its total.
async fn listed(service: &Service, query: &str, token: &str) -> (Vec<(String, String)>, u64) {
    let reply = audit(service, query, token).await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.body);
    let entries = reply.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (entries, reply.body["total"].as_u64().unwrap())
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, t)| ((*a).to_owned(), (*t).to_owned()))
        .collect()
}

async fn admin_post(service: &Service, path: &str, body: Value) -> Reply {
    service
        .send(service.request(Method::POST, path, Some(ADMIN)).json(&body))
        .await
}

#[tokio::test]
async fn entries_are_listed_newest_first_with_their_filters_and_pages() {
    let service = Service::start().await;
    let state = &service.state;
    let started = key_service::expiry::now();
    audit::record(state, &admin(), change("key.create", "k1", Some("acme"))).await;
    audit::record(
        state,
        &admin(),
        Change {
            before: Some(json!({"name": "k1", "enabled": true})),
            after: Some(json!({"name": "k1", "enabled": false})),
            ..change("key.update", "k1", Some("acme"))
        },
    )
    .await;
    audit::record(state, &admin(), change("group.put", "team", None)).await;
    let owner = tenant("acme", "tok_owner", None);
    audit::record(
        state,
        &owner,
        change("webhook.rotate_secret", "wh_1", Some("acme")),
    )
    .await;
    audit::record(state, &admin(), change("key.delete", "k2", Some("globex"))).await;

    let reply = audit(&service, "", ADMIN).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        (
            &reply.body["page"],
            &reply.body["per_page"],
            &reply.body["total"]
        ),
        (&json!(1), &json!(20), &json!(5))
    );
    let entries = reply.body["entries"].as_array().unwrap();
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let update = &entries[3];
    let at = key_service::expiry::parse_rfc3339(update["at"].as_str().unwrap()).unwrap();
    assert!(
        at >= started && at <= key_service::expiry::now(),
        "{update}"
    );
    assert_eq!(
        update,
        &json!({
            "id": ids[3],
            "at": update["at"],
            "actor": {"kind": "admin", "id": "admin", "account": null},
            "address": HOME,
            "action": "key.update",
            "target": "k1",
            "account": "acme",
            "before": {"name": "k1", "enabled": true},
            "after": {"name": "k1", "enabled": false},
        })
    );
    assert_eq!(
        entries[1]["actor"],
        json!({"kind": "token", "id": "tok_owner", "account": "acme"})
    );
    assert_eq!(entries[1]["address"], Value::Null);
    assert_eq!(entries[2]["account"], Value::Null, "a group is global");

    // Filters, alone and together.
    let cases: [(&str, &[(&str, &str)]); 10] = [
        (
            "?action=key.",
            &[
                ("key.delete", "k2"),
                ("key.update", "k1"),
                ("key.create", "k1"),
            ],
        ),
        ("?action=key.create", &[("key.create", "k1")]),
        (
            "?action=webhook.rotate*",
            &[("webhook.rotate_secret", "wh_1")],
        ),
        ("?action=key", &[]),
        ("?actor_kind=token", &[("webhook.rotate_secret", "wh_1")]),
        (
            "?actor_kind=admin&actor_id=admin&account=acme",
            &[("key.update", "k1"), ("key.create", "k1")],
        ),
        ("?target=k1&action=key.update", &[("key.update", "k1")]),
        ("?account=globex", &[("key.delete", "k2")]),
        ("?actor_id=nobody", &[]),
        (
            "?account=acme&action=key.&per_page=1&page=2",
            &[("key.create", "k1")],
        ),
    ];
    for (query, expected) in cases {
        let (entries, total) = listed(&service, query, ADMIN).await;
        assert_eq!(entries, pairs(expected), "{query}");
        if !query.contains("per_page") {
            assert_eq!(total, expected.len() as u64, "{query}");
        }
    }

    // Time windows, in unix seconds or RFC 3339; `to` is exclusive.
    let later = started + 3_600;
    let earlier = key_service::expiry::to_rfc3339(started - 3_600).unwrap();
    assert_eq!(
        listed(&service, &format!("?from={later}"), ADMIN).await.1,
        0
    );
    assert_eq!(
        listed(&service, &format!("?to={earlier}"), ADMIN).await.1,
        0
    );
    let window = format!("?from={earlier}&to={later}");
    assert_eq!(listed(&service, &window, ADMIN).await.1, 5);
    assert_eq!(
        listed(&service, &format!("?to={started}"), ADMIN).await.1,
        0
    );

    // Pages: two of two, then one, then none; the total stays.
    let page = |n: u32| format!("?per_page=2&page={n}");
    let (first, total) = listed(&service, &page(1), ADMIN).await;
    assert_eq!(
        (first, total),
        (
            pairs(&[("key.delete", "k2"), ("webhook.rotate_secret", "wh_1")]),
            5
        )
    );
    assert_eq!(listed(&service, &page(3), ADMIN).await.0.len(), 1);
    assert_eq!(listed(&service, &page(4), ADMIN).await, (vec![], 5));

    // A typo or a bad value is refused, naming the parameter; no token, no log.
    for (query, code, param) in [
        ("?acount=acme", "unknown_parameter", "acount"),
        ("?actor_kind=root", "invalid_value", "actor_kind"),
        ("?from=yesterday", "invalid_value", "from"),
        ("?to=2023-13-01T00:00:00Z", "invalid_value", "to"),
        ("?per_page=101", "invalid_value", "per_page"),
        ("?page=0", "invalid_value", "page"),
    ] {
        let error = audit(&service, query, ADMIN).await.error();
        assert_eq!(
            error,
            (400, code.to_owned(), Some(param.to_owned())),
            "{query}"
        );
    }
    let anonymous = service
        .send(service.request(Method::GET, "/api/v1/audit", None))
        .await;
    assert_eq!(anonymous.error().0, 401);
    assert_eq!(audit(&service, "", FILTER).await.error().0, 401);
}

#[tokio::test]
async fn a_tenant_sees_its_own_accounts_entries_only() {
    let service = Service::start().await;
    for name in ["acme", "globex"] {
        let made = admin_post(&service, "/api/v1/accounts", json!({"name": name})).await;
        assert_eq!(made.status, 201, "{}", made.body);
    }
    let issued = admin_post(
        &service,
        "/api/v1/accounts/acme/tokens",
        json!({"name": "auditor", "role": "viewer"}),
    )
    .await;
    assert_eq!(issued.status, 201, "{}", issued.body);
    let token = issued.body["secret"].as_str().unwrap().to_owned();
    let token_id = issued.body["id"].as_str().unwrap().to_owned();

    let state = &service.state;
    let own_address: IpAddr = "198.51.100.7".parse().unwrap();
    audit::record(state, &admin(), change("key.create", "a1", Some("acme"))).await;
    audit::record(state, &admin(), change("key.create", "g1", Some("globex"))).await;
    audit::record(state, &admin(), change("model.put", "gpt-4o", None)).await;
    audit::record(
        state,
        &tenant("acme", &token_id, Some(own_address)),
        change("key.update", "a1", Some("acme")),
    )
    .await;
    audit::record(
        state,
        &tenant("globex", "tok_other", None),
        change("key.delete", "g1", Some("globex")),
    )
    .await;

    let own = pairs(&[("key.update", "a1"), ("key.create", "a1")]);
    // Making the account and its token were recorded too (by the handlers).
    let everything = listed(&service, "", &token).await;
    assert_eq!(everything.1, 4, "{everything:?}");
    for query in [
        "?action=key.",
        "?account=acme&action=key.",
        "?account=&action=key.",
    ] {
        assert_eq!(
            listed(&service, query, &token).await,
            (own.clone(), 2),
            "{query}"
        );
    }
    // Another account's entries, or the global ones, are not there to ask for.
    for query in ["?account=globex", "?target=g1", "?action=model."] {
        assert_eq!(
            listed(&service, query, &token).await,
            (vec![], 0),
            "{query}"
        );
    }
    // The tenant sees who did what in its account, but not the operator's address.
    let reply = audit(&service, "", &token).await;
    let entries = reply.body["entries"].as_array().unwrap();
    assert_eq!(entries[0]["address"], json!(own_address.to_string()));
    assert_eq!(entries[0]["actor"]["id"], json!(token_id));
    assert_eq!(entries[1]["actor"]["kind"], "admin");
    assert_eq!(entries[1]["address"], Value::Null);

    // The operator sees everything, addresses included.
    // (Five recorded here, and the two accounts and the token made through the API.)
    let (all, total) = listed(&service, "", ADMIN).await;
    assert_eq!((all.len(), total), (8, 8));
    let reply = audit(&service, "?account=acme&actor_kind=admin", ADMIN).await;
    assert_eq!(reply.body["entries"][0]["address"], HOME);
}

#[tokio::test]
async fn secrets_never_reach_the_log() {
    let service = Service::start().await;
    let api_key = format!("sk-{}", "Ab3".repeat(16));
    let token = format!("kgt_{}", "x7".repeat(20));
    audit::record(
        &service.state,
        &admin(),
        Change {
            action: "key.rotate",
            target: "k1",
            account: Some("default"),
            before: Some(json!({"name": "k1", "masked_key": "sk-abcd...wxyz",
                "key_hash": "0123abcd", "grace": {"secret": "old"}})),
            after: Some(
                json!({"name": "k1", "key": api_key, "masked_key": "sk-Ab3A...b3Ab",
                "tokens": [{"token": token, "token_hash": "ff"}],
                "webhook": {"signing_secret": "whsec_abc", "url": "http://x"},
                "note": token}),
            ),
        },
    )
    .await;
    let reply = audit(&service, "", ADMIN).await;
    let entry = &reply.body["entries"][0];
    assert_eq!(
        entry["before"],
        json!({"name": "k1", "masked_key": "sk-abcd...wxyz", "grace": {}})
    );
    assert_eq!(
        entry["after"],
        json!({"name": "k1", "masked_key": "sk-Ab3A...b3Ab", "tokens": [{}],
            "webhook": {"url": "http://x"}, "note": "[redacted]"})
    );
    for secret in [api_key.as_str(), &token, "0123abcd", "whsec_abc", "\"old\""] {
        assert!(!reply.text.contains(secret), "{secret} in {}", reply.text);
    }
}

#[tokio::test]
async fn entries_older_than_the_retention_are_pruned() {
    let service = Service::start().await;
    let now = key_service::expiry::now();
    let day = 86_400;
    for (age, target) in [(500 * day, "ancient"), (401 * day, "old"), (day, "recent")] {
        service
            .store
            .insert_audit(&NewAuditEntry {
                at: now - age,
                actor_kind: "admin".into(),
                actor_id: "admin".into(),
                actor_account: None,
                address: None,
                action: "key.create".into(),
                target: target.into(),
                account: None,
                before: None,
                after: None,
            })
            .await
            .unwrap();
    }
    audit::record(
        &service.state,
        &admin(),
        change("key.update", "today", None),
    )
    .await;
    // What the hourly prune does with the default retention of 400 days.
    let pruned = service.store.prune_audit(now - 400 * day).await.unwrap();
    assert_eq!(pruned, 2);
    let (left, _) = listed(&service, "", ADMIN).await;
    assert_eq!(
        left,
        pairs(&[("key.update", "today"), ("key.create", "recent")])
    );
}

#[tokio::test]
async fn a_record_that_cannot_be_written_is_counted_and_fails_nothing() {
    let service = Service::start().await;
    let metrics = service.admin_get("/metrics").await;
    assert!(
        metrics.text.contains("keygate_audit_failures_total 0"),
        "{}",
        metrics.text
    );
    // The same metrics, and a database that is gone.
    let dir = tempfile::tempdir().unwrap();
    let gone = Store::open_for_test(dir.path()).await.unwrap();
    gone.close().await;
    let mut broken = AppState::new(gone, ADMIN, FILTER);
    broken.metrics = service.state.metrics.clone();
    audit::record(&broken, &admin(), change("key.create", "k1", None)).await;

    let metrics = service.admin_get("/metrics").await;
    assert!(
        metrics.text.contains("keygate_audit_failures_total 1"),
        "{}",
        metrics.text
    );
    assert_eq!(listed(&service, "", ADMIN).await.1, 0);
}
