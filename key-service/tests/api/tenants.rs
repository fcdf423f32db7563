//! Tenants: account tokens see their own account and nothing else. The table below holds
//! every route of the service; a route added without an entry fails the test, so no route
//! can be forgotten.

use key_service::auth::Permit;
use key_service::{Access, Verb};
use reqwest::Method;
use serde_json::{json, Value};

use crate::{Reply, Service, ADMIN, FILTER};

/// Two accounts, each with a key, an own group, a webhook, a usage record and an owner's
/// token; acme also has a viewer's token.
struct Tenants {
    service: Service,
    acme_owner: String,
    acme_viewer: String,
    globex_owner: String,
    acme_key: String,
    globex_key: String,
    globex_key_name: String,
    acme_webhook: String,
    globex_webhook: String,
    global_webhook: String,
    globex_token_id: String,
}

impl Service {
    async fn as_tenant(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Reply {
        let request = self.request(method, path, Some(token));
        self.send(match body {
            Some(body) => request.json(body),
            None => request,
        })
        .await
    }

    async fn admin(&self, method: Method, path: &str, body: Value) -> Value {
        let reply = self.as_tenant(method, path, ADMIN, Some(&body)).await;
        assert!(
            (200..300).contains(&reply.status),
            "{path}: {} {}",
            reply.status,
            reply.body
        );
        reply.body
    }

    async fn token(&self, account: &str, role: &str) -> (String, String) {
        let body = self
            .admin(
                Method::POST,
                &format!("/api/v1/accounts/{account}/tokens"),
                json!({"name": format!("{account} {role}"), "role": role}),
            )
            .await;
        let secret = body["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("kgt_"), "{body}");
        (secret, body["id"].as_str().unwrap().to_owned())
    }
}

async fn tenants() -> Tenants {
    let service = Service::start().await;
    service
        .admin(
            Method::PUT,
            "/api/v1/models/gpt-4o",
            json!({"input": 1, "output": 1}),
        )
        .await;
    let mut keys = Vec::new();
    let mut webhooks = Vec::new();
    for account in ["acme", "globex"] {
        service
            .admin(Method::POST, "/api/v1/accounts", json!({"name": account}))
            .await;
        service
            .admin(
                Method::PUT,
                &format!("/api/v1/groups/{account}-only"),
                json!({"account": account}),
            )
            .await;
        let key = service
            .admin(
                Method::POST,
                "/api/v1/keys",
                json!({"name": format!("{account}-app"), "account": account,
                    "group": format!("{account}-only")}),
            )
            .await;
        keys.push((
            key["keys"][0]["id"].as_str().unwrap().to_owned(),
            key["keys"][0]["name"].as_str().unwrap().to_owned(),
        ));
        let hook = service
            .admin(
                Method::POST,
                "/api/v1/webhooks",
                json!({"url": format!("http://127.0.0.1:9/{account}"), "account": account}),
            )
            .await;
        webhooks.push(hook["id"].as_str().unwrap().to_owned());
    }
    let global = service
        .admin(
            Method::POST,
            "/api/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/all"}),
        )
        .await;
    let records: Vec<Value> = keys
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            json!({"request_id": format!("r{i}"), "key_id": id, "model": "gpt-4o",
                "input_tokens": 10, "cached_input_tokens": 0, "output_tokens": 10,
                "status": 200, "ts": key_service::expiry::now()})
        })
        .collect();
    let reported = service
        .as_tenant(
            Method::POST,
            "/filter/v1/usage",
            FILTER,
            Some(&json!({ "records": records })),
        )
        .await;
    assert_eq!(reported.status, 200, "{}", reported.body);
    let (acme_owner, _) = service.token("acme", "owner").await;
    let (acme_viewer, _) = service.token("acme", "viewer").await;
    let (globex_owner, globex_token_id) = service.token("globex", "owner").await;
    Tenants {
        acme_owner,
        acme_viewer,
        globex_owner,
        acme_key: keys[0].0.clone(),
        globex_key: keys[1].0.clone(),
        globex_key_name: keys[1].1.clone(),
        acme_webhook: webhooks[0].clone(),
        globex_webhook: webhooks[1].clone(),
        global_webhook: global["id"].as_str().unwrap().to_owned(),
        globex_token_id,
        service,
    }
}

/// What a probe must get.
enum Expect {
    /// 404, as for an id or route that does not exist.
    NotFound,
    /// 400 naming this field (another account's name, said as for one that does not exist).
    Refused(&'static str),
    /// 200 whose body holds none of the foreign ids and names.
    NothingForeign,
    /// 401: not a token for this route at all.
    Unauthorized,
}

struct Probe {
    method: Method,
    path: String,
    body: Option<Value>,
    expect: Expect,
}

fn probe(method: Method, path: impl Into<String>, body: Option<Value>, expect: Expect) -> Probe {
    Probe {
        method,
        path: path.into(),
        body,
        expect,
    }
}

/// Every request acme's owner tries against globex through one route. Panics for a
/// route the table does not know: a new route must be added here.
fn probes(t: &Tenants, verb: Verb, path: &str) -> Vec<Probe> {
    use Expect::{NotFound, NothingForeign, Refused, Unauthorized};
    use Method as M;
    let key = &t.globex_key;
    let hook = &t.globex_webhook;
    let global = &t.global_webhook;
    let empty = Some(json!({}));
    match (verb, path) {
        (Verb::Post, "/api/v1/keys") => vec![
            probe(
                M::POST,
                path,
                Some(json!({"name": "x", "account": "globex"})),
                Refused("account"),
            ),
            probe(
                M::POST,
                path,
                Some(json!({"name": "x", "group": "globex-only"})),
                Refused("group"),
            ),
        ],
        (Verb::Get, "/api/v1/keys") => vec![
            probe(M::GET, path, None, NothingForeign),
            probe(M::GET, "/api/v1/keys?account=globex", None, NothingForeign),
            probe(M::GET, "/api/v1/keys?group=globex-only", None, NothingForeign),
            probe(
                M::GET,
                format!("/api/v1/keys?q={}", t.globex_key_name),
                None,
                NothingForeign,
            ),
        ],
        (Verb::Get, "/api/v1/keys/{id}") => {
            vec![probe(M::GET, format!("/api/v1/keys/{key}"), None, NotFound)]
        }
        (Verb::Patch, "/api/v1/keys/{id}") => vec![probe(
            M::PATCH,
            format!("/api/v1/keys/{key}"),
            Some(json!({"enabled": false})),
            NotFound,
        )],
        (Verb::Delete, "/api/v1/keys/{id}") => {
            vec![probe(M::DELETE, format!("/api/v1/keys/{key}"), None, NotFound)]
        }
        (Verb::Post, "/api/v1/keys/{id}/rotate") => vec![probe(
            M::POST,
            format!("/api/v1/keys/{key}/rotate"),
            None,
            NotFound,
        )],
        (Verb::Get, "/api/v1/groups") => vec![probe(M::GET, path, None, NothingForeign)],
        (Verb::Get, "/api/v1/groups/{name}") => {
            vec![probe(M::GET, "/api/v1/groups/globex-only", None, NotFound)]
        }
        (Verb::Put, "/api/v1/groups/{name}") => vec![
            probe(M::PUT, "/api/v1/groups/globex-only", empty.clone(), NotFound),
            probe(M::PUT, "/api/v1/groups/acme-only", empty.clone(), NotFound),
        ],
        (Verb::Delete, "/api/v1/groups/{name}") => {
            vec![probe(M::DELETE, "/api/v1/groups/globex-only", None, NotFound)]
        }
        (Verb::Get, "/api/v1/models") => vec![probe(M::GET, path, None, NothingForeign)],
        (Verb::Get, "/api/v1/models/{name}") => {
            vec![probe(M::GET, "/api/v1/models/gpt-4o", None, NothingForeign)]
        }
        (Verb::Put, "/api/v1/models/{name}") => vec![probe(
            M::PUT,
            "/api/v1/models/gpt-4o",
            Some(json!({"input": 0, "output": 0})),
            NotFound,
        )],
        (Verb::Get, "/api/v1/accounts") => vec![probe(M::GET, path, None, NothingForeign)],
        (Verb::Post, "/api/v1/accounts") => vec![probe(
            M::POST,
            path,
            Some(json!({"name": "acme2"})),
            NotFound,
        )],
        (Verb::Patch, "/api/v1/accounts/{name}") => vec![
            probe(
                M::PATCH,
                "/api/v1/accounts/globex",
                Some(json!({"balance": 0})),
                NotFound,
            ),
            // Not even one's own: the operator sets balances.
            probe(
                M::PATCH,
                "/api/v1/accounts/acme",
                Some(json!({"balance": 1_000_000})),
                NotFound,
            ),
        ],
        (Verb::Post, "/api/v1/accounts/{name}/tokens") => vec![
            probe(
                M::POST,
                "/api/v1/accounts/globex/tokens",
                Some(json!({"name": "x", "role": "owner"})),
                NotFound,
            ),
            probe(
                M::POST,
                "/api/v1/accounts/acme/tokens",
                Some(json!({"name": "x", "role": "owner"})),
                NotFound,
            ),
        ],
        (Verb::Get, "/api/v1/accounts/{name}/tokens") => vec![
            probe(M::GET, "/api/v1/accounts/globex/tokens", None, NotFound),
            probe(M::GET, "/api/v1/accounts/acme/tokens", None, NotFound),
        ],
        (Verb::Delete, "/api/v1/accounts/{name}/tokens/{id}") => vec![probe(
            M::DELETE,
            format!("/api/v1/accounts/globex/tokens/{}", t.globex_token_id),
            None,
            NotFound,
        )],
        (Verb::Post, "/api/v1/accounts/{name}/tokens/{id}/rotate") => vec![probe(
            M::POST,
            format!("/api/v1/accounts/globex/tokens/{}/rotate", t.globex_token_id),
            None,
            NotFound,
        )],
        (Verb::Get, "/api/v1/me") => vec![probe(M::GET, path, None, NothingForeign)],
        (Verb::Get, "/api/v1/usage") => vec![
            probe(M::GET, path, None, NothingForeign),
            probe(M::GET, "/api/v1/usage?account=globex", None, NothingForeign),
            probe(
                M::GET,
                format!("/api/v1/usage?key_id={key}"),
                None,
                NothingForeign,
            ),
        ],
        (Verb::Get, "/api/v1/usage/summary") => vec![
            probe(M::GET, path, None, NothingForeign),
            probe(
                M::GET,
                "/api/v1/usage/summary?account=globex",
                None,
                NothingForeign,
            ),
            probe(
                M::GET,
                format!("/api/v1/usage/summary?key_id={key}"),
                None,
                NothingForeign,
            ),
        ],
        (Verb::Get, "/api/v1/audit") => vec![
            probe(M::GET, path, None, NothingForeign),
            probe(M::GET, "/api/v1/audit?account=globex", None, NothingForeign),
            probe(
                M::GET,
                format!("/api/v1/audit?target={key}"),
                None,
                NothingForeign,
            ),
        ],
        (Verb::Post, "/api/v1/webhooks") => vec![probe(
            M::POST,
            path,
            Some(json!({"url": "http://127.0.0.1:9/x", "account": "globex"})),
            Refused("account"),
        )],
        (Verb::Get, "/api/v1/webhooks") => vec![
            probe(M::GET, path, None, NothingForeign),
            probe(M::GET, "/api/v1/webhooks?account=globex", None, NothingForeign),
        ],
        (Verb::Get, "/api/v1/webhooks/{id}") => vec![
            probe(M::GET, format!("/api/v1/webhooks/{hook}"), None, NotFound),
            probe(M::GET, format!("/api/v1/webhooks/{global}"), None, NotFound),
        ],
        (Verb::Patch, "/api/v1/webhooks/{id}") => vec![
            probe(
                M::PATCH,
                format!("/api/v1/webhooks/{hook}"),
                Some(json!({"url": "http://127.0.0.1:9/stolen"})),
                NotFound,
            ),
            probe(
                M::PATCH,
                format!("/api/v1/webhooks/{global}"),
                Some(json!({"url": "http://127.0.0.1:9/stolen"})),
                NotFound,
            ),
        ],
        (Verb::Delete, "/api/v1/webhooks/{id}") => vec![
            probe(M::DELETE, format!("/api/v1/webhooks/{hook}"), None, NotFound),
            probe(M::DELETE, format!("/api/v1/webhooks/{global}"), None, NotFound),
        ],
        (Verb::Post, "/api/v1/webhooks/{id}/rotate-secret") => vec![
            probe(
                M::POST,
                format!("/api/v1/webhooks/{hook}/rotate-secret"),
                None,
                NotFound,
            ),
            probe(
                M::POST,
                format!("/api/v1/webhooks/{global}/rotate-secret"),
                None,
                NotFound,
            ),
        ],
        (Verb::Post, "/api/v1/webhooks/{id}/test") => vec![probe(
            M::POST,
            format!("/api/v1/webhooks/{hook}/test"),
            None,
            NotFound,
        )],
        (Verb::Get, "/api/v1/webhooks/{id}/deliveries") => vec![probe(
            M::GET,
            format!("/api/v1/webhooks/{hook}/deliveries"),
            None,
            NotFound,
        )],
        (Verb::Get, "/filter/v1/snapshot") => vec![probe(M::GET, path, None, Unauthorized)],
        (Verb::Post, "/filter/v1/usage") => vec![probe(
            M::POST,
            path,
            Some(json!({"records": []})),
            Unauthorized,
        )],
        (Verb::Post, "/filter/v1/leases") => vec![probe(
            M::POST,
            path,
            Some(json!({"holder": "x", "asks": []})),
            Unauthorized,
        )],
        (Verb::Any, "/filter/v1/check/{*path}") => vec![probe(
            M::GET,
            "/filter/v1/check/v1/models",
            None,
            Unauthorized,
        )],
        other => panic!(
            "{other:?} is not in the cross-tenant table: add what a tenant may and may not do with it"
        ),
    }
}

/// Whether `text` mentions anything of globex's.
fn foreign_in(t: &Tenants, text: &str) -> Option<String> {
    [
        t.globex_key.as_str(),
        t.globex_key_name.as_str(),
        "globex",
        t.globex_webhook.as_str(),
        t.global_webhook.as_str(),
        t.globex_token_id.as_str(),
    ]
    .into_iter()
    .find(|needle| text.contains(needle))
    .map(str::to_owned)
}

async fn check(t: &Tenants, token: &str, probe: &Probe) {
    let what = format!("{} {}", probe.method, probe.path);
    let reply = t
        .service
        .as_tenant(
            probe.method.clone(),
            &probe.path,
            token,
            probe.body.as_ref(),
        )
        .await;
    match probe.expect {
        Expect::NotFound => {
            assert_eq!(reply.error().0, 404, "{what}: {}", reply.body);
        }
        Expect::Refused(param) => {
            let (status, _, got) = reply.error();
            assert_eq!((status, got.as_deref()), (400, Some(param)), "{what}");
        }
        Expect::Unauthorized => assert_eq!(reply.error().0, 401, "{what}: {}", reply.body),
        Expect::NothingForeign => {
            assert_eq!(reply.status, 200, "{what}: {}", reply.body);
            if let Some(found) = foreign_in(t, &reply.text) {
                panic!("{what} shows {found:?}: {}", reply.body);
            }
        }
    }
    // Whatever the route, the answer never names globex's things (a 404 says "no such
    // id", with the id acme sent, which is fine: acme knew it already).
    if !matches!(probe.expect, Expect::NothingForeign) {
        let known = [probe.path.as_str()];
        let mentions = foreign_in(t, &reply.text);
        if let Some(found) = mentions {
            assert!(
                known.iter().any(|k| k.contains(&found))
                    || probe
                        .body
                        .as_ref()
                        .is_some_and(|b| b.to_string().contains(&found)),
                "{what} leaks {found:?}: {}",
                reply.body
            );
        }
    }
}

/// Globex's things as the operator sees them, to compare before and after the probes.
async fn globex_state(t: &Tenants) -> Value {
    let s = &t.service;
    json!({
        "key": s.admin_get(&format!("/api/v1/keys/{}", t.globex_key)).await.body,
        "group": s.admin_get("/api/v1/groups/globex-only").await.body,
        "account": s.admin_get("/api/v1/accounts").await.body,
        "webhook": s.admin_get(&format!("/api/v1/webhooks/{}", t.globex_webhook)).await.body,
        "global": s.admin_get(&format!("/api/v1/webhooks/{}", t.global_webhook)).await.body,
        "tokens": s.admin_get("/api/v1/accounts/globex/tokens").await.body,
        "usage": s.admin_get("/api/v1/usage?account=globex").await.body,
        "price": s.admin_get("/api/v1/models/gpt-4o").await.body,
    })
}

#[tokio::test]
async fn no_route_filter_or_id_lets_one_account_reach_anothers() {
    let t = tenants().await;
    let before = globex_state(&t).await;
    let mut probed = 0;
    for route in key_service::routes() {
        if route.access == Access::Open {
            continue;
        }
        for probe in probes(&t, route.verb, route.path) {
            check(&t, &t.acme_owner, &probe).await;
            // A viewer gets no further than the owner.
            if !matches!(probe.expect, Expect::NothingForeign) || probe.method == Method::GET {
                let as_viewer = Probe {
                    expect: match probe.expect {
                        Expect::Refused(_) => Expect::NotFound,
                        Expect::NotFound => Expect::NotFound,
                        Expect::Unauthorized => Expect::Unauthorized,
                        Expect::NothingForeign => Expect::NothingForeign,
                    },
                    method: probe.method.clone(),
                    path: probe.path.clone(),
                    body: probe.body.clone(),
                };
                check(&t, &t.acme_viewer, &as_viewer).await;
            }
            probed += 1;
        }
    }
    assert!(probed >= 40, "only {probed} probes");
    assert_eq!(globex_state(&t).await, before, "globex's things changed");
    // Globex's token still works, and sees its own things.
    let own = t
        .service
        .as_tenant(
            Method::GET,
            &format!("/api/v1/keys/{}", t.globex_key),
            &t.globex_owner,
            None,
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.body);
}

#[tokio::test]
async fn a_tenant_manages_its_own_keys_within_its_account() {
    let t = tenants().await;
    let s = &t.service;
    let owner = t.acme_owner.as_str();
    // Its own things are all there.
    let listed = s.as_tenant(Method::GET, "/api/v1/keys", owner, None).await;
    assert_eq!(listed.body["total"], 1, "{}", listed.body);
    assert_eq!(listed.body["keys"][0]["id"], t.acme_key.as_str());
    let groups = s
        .as_tenant(Method::GET, "/api/v1/groups", owner, None)
        .await;
    let names: Vec<&str> = groups.body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme-only", "default"], "{}", groups.body);
    let usage = s.as_tenant(Method::GET, "/api/v1/usage", owner, None).await;
    assert_eq!(usage.body["total"], 1, "{}", usage.body);
    let hooks = s
        .as_tenant(Method::GET, "/api/v1/webhooks", owner, None)
        .await;
    assert_eq!(hooks.body["webhooks"][0]["id"], t.acme_webhook.as_str());
    assert_eq!(hooks.body["webhooks"].as_array().unwrap().len(), 1);
    let me = s.as_tenant(Method::GET, "/api/v1/me", owner, None).await;
    assert_eq!(
        (
            me.body["kind"].as_str(),
            me.body["account"].as_str(),
            me.body["role"].as_str()
        ),
        (Some("token"), Some("acme"), Some("owner"))
    );

    // It creates a key in its account, whatever it leaves out, and manages it.
    let made = s
        .as_tenant(
            Method::POST,
            "/api/v1/keys",
            owner,
            Some(&json!({"name": "ci", "group": "acme-only"})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let id = made.body["keys"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(made.body["keys"][0]["account"], "acme");
    let edited = s
        .as_tenant(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            owner,
            Some(&json!({"name": "ci-2"})),
        )
        .await;
    assert_eq!(edited.status, 200, "{}", edited.body);
    let moved = s
        .as_tenant(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            owner,
            Some(&json!({"group": "globex-only"})),
        )
        .await;
    assert_eq!(
        moved.error(),
        (400, "invalid_value".into(), Some("group".into()))
    );
    let rotated = s
        .as_tenant(
            Method::POST,
            &format!("/api/v1/keys/{id}/rotate"),
            owner,
            None,
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert!(rotated.body["key"].as_str().unwrap().starts_with("sk-"));

    // The viewer reads but changes nothing, and learns nothing from trying.
    let viewer = t.acme_viewer.as_str();
    let read = s
        .as_tenant(Method::GET, &format!("/api/v1/keys/{id}"), viewer, None)
        .await;
    assert_eq!(read.status, 200);
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/keys".to_owned(),
            Some(json!({"name": "v"})),
        ),
        (
            Method::PATCH,
            format!("/api/v1/keys/{id}"),
            Some(json!({"name": "v"})),
        ),
        (Method::DELETE, format!("/api/v1/keys/{id}"), None),
    ] {
        let reply = s.as_tenant(method, &path, viewer, body.as_ref()).await;
        assert_eq!(reply.error().0, 404, "{path}");
    }

    let deleted = s
        .as_tenant(Method::DELETE, &format!("/api/v1/keys/{id}"), owner, None)
        .await;
    assert_eq!(deleted.status, 204);

    // Its webhooks must be on the public internet: the key-service does not POST to its
    // own network for a tenant.
    for url in [
        "http://127.0.0.1:8081/api/v1/keys",
        "http://localhost:9/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/",
    ] {
        let refused = s
            .as_tenant(
                Method::POST,
                "/api/v1/webhooks",
                owner,
                Some(&json!({"url": url})),
            )
            .await;
        assert_eq!(
            refused.error(),
            (400, "invalid_value".into(), Some("url".into())),
            "{url}"
        );
    }
    let hook = s
        .as_tenant(
            Method::POST,
            "/api/v1/webhooks",
            owner,
            Some(&json!({"url": "https://hooks.example.com/acme"})),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    assert_eq!(
        (
            hook.body["account"].as_str(),
            hook.body["public_only"].as_bool()
        ),
        (Some("acme"), Some(true))
    );
    let moved = s
        .as_tenant(
            Method::PATCH,
            &format!("/api/v1/webhooks/{}", hook.body["id"].as_str().unwrap()),
            owner,
            Some(&json!({"url": "http://127.0.0.1:9/"})),
        )
        .await;
    assert_eq!(moved.error().2.as_deref(), Some("url"));
    // The operator's webhooks for an account may be anywhere.
    let own = s
        .admin_get(&format!("/api/v1/webhooks/{}", t.acme_webhook))
        .await;
    assert_eq!(own.body["public_only"], false);

    // Each change is in the audit log, by this token, without a secret.
    let trail = s
        .as_tenant(
            Method::GET,
            &format!("/api/v1/audit?target={id}"),
            owner,
            None,
        )
        .await;
    let actions: Vec<&str> = trail.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["key.delete", "key.rotate", "key.update", "key.create"],
        "{}",
        trail.body
    );
    for entry in trail.body["entries"].as_array().unwrap() {
        assert_eq!(entry["actor"]["kind"], "token", "{entry}");
        assert_eq!(entry["actor"]["account"], "acme", "{entry}");
    }
    let secret = rotated.body["key"].as_str().unwrap();
    let first = made.body["keys"][0]["key"].as_str().unwrap();
    assert!(
        !trail.text.contains(secret) && !trail.text.contains(first),
        "a secret in the audit log: {}",
        trail.body
    );
    assert_eq!(trail.body["entries"][2]["before"]["name"], "ci");
    assert_eq!(trail.body["entries"][2]["after"]["name"], "ci-2");
}

#[tokio::test]
async fn an_accounts_key_limit_holds_even_when_creates_race() {
    let t = tenants().await;
    let s = &t.service;
    s.admin(
        Method::PATCH,
        "/api/v1/accounts/acme",
        json!({"max_keys": 3}),
    )
    .await;
    // acme holds one key: a batch of three would make four.
    let batch = s
        .as_tenant(
            Method::POST,
            "/api/v1/keys",
            &t.acme_owner,
            Some(&json!({"name": "batch", "quantity": 3})),
        )
        .await;
    assert_eq!(
        batch.error(),
        (400, "key_limit_reached".into(), Some("quantity".into()))
    );
    // Ten creates at once: exactly two get through.
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..10 {
        let request = s
            .request(Method::POST, "/api/v1/keys", Some(&t.acme_owner))
            .json(&json!({"name": format!("race-{i}")}));
        creates.spawn(async move { request.send().await.unwrap().status().as_u16() });
    }
    let statuses: Vec<u16> = creates.join_all().await;
    let made = statuses.iter().filter(|&&status| status == 201).count();
    assert_eq!(made, 2, "{statuses:?}");
    let listed = s.admin_get("/api/v1/keys?account=acme").await;
    assert_eq!(listed.body["total"], 3);
}

#[tokio::test]
async fn a_revoked_or_rotated_token_stops_at_once() {
    let t = tenants().await;
    let s = &t.service;
    let (secret, id) = s.token("acme", "owner").await;
    assert_eq!(
        s.as_tenant(Method::GET, "/api/v1/keys", &secret, None)
            .await
            .status,
        200
    );
    let rotated = s
        .admin(
            Method::POST,
            &format!("/api/v1/accounts/acme/tokens/{id}/rotate"),
            json!({}),
        )
        .await;
    let new = rotated["secret"].as_str().unwrap();
    assert_eq!(
        s.as_tenant(Method::GET, "/api/v1/keys", &secret, None)
            .await
            .status,
        401
    );
    assert_eq!(
        s.as_tenant(Method::GET, "/api/v1/keys", new, None)
            .await
            .status,
        200
    );
    // The list shows the token without its secret or digest.
    let listed = s.admin_get("/api/v1/accounts/acme/tokens").await;
    assert!(
        !listed.text.contains(new) && !listed.text.contains("hash"),
        "{}",
        listed.body
    );
    let revoked = s
        .as_tenant(
            Method::DELETE,
            &format!("/api/v1/accounts/acme/tokens/{id}"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(revoked.status, 204);
    assert_eq!(
        s.as_tenant(Method::GET, "/api/v1/keys", new, None)
            .await
            .status,
        401
    );
    // A token of the right shape that was never issued gets the same 401.
    let forged = format!("kgt_{}", "A".repeat(40));
    assert_eq!(
        s.as_tenant(Method::GET, "/api/v1/keys", &forged, None)
            .await
            .error()
            .0,
        401
    );
    // Unknown accounts and roles are refused.
    let bad_role = s
        .as_tenant(
            Method::POST,
            "/api/v1/accounts/acme/tokens",
            ADMIN,
            Some(&json!({"name": "x", "role": "admin"})),
        )
        .await;
    assert_eq!(bad_role.error().0, 400);
    let nobody = s
        .as_tenant(
            Method::POST,
            "/api/v1/accounts/nobody/tokens",
            ADMIN,
            Some(&json!({"name": "x", "role": "owner"})),
        )
        .await;
    assert_eq!(nobody.error().0, 404);
}

/// The routes' permits as the table declares them, for the record: every `/api/v1` route
/// is behind the management guard, and nothing else is.
#[test]
fn every_management_route_has_a_permit() {
    for route in key_service::routes() {
        let api = route.path.starts_with("/api/v1/") && route.path != "/api/v1/openapi.json";
        assert_eq!(
            matches!(route.access, Access::Api(_)),
            api,
            "{} {}",
            route.verb.as_str(),
            route.path
        );
        if route.path.contains("/tokens") {
            assert_eq!(route.access, Access::Api(Permit::Admin), "{}", route.path);
        }
    }
}

/// Without a `max_keys` of its own, an account's tenants are still bounded (by
/// `KEYGATE_TENANT_MAX_KEYS`): a tenant cannot fill every Envoy's snapshot with keys.
/// The operator is not bound by that default.
#[tokio::test]
async fn a_tenant_is_bounded_by_the_default_when_its_account_sets_no_limit() {
    let dir = tempfile::tempdir().unwrap();
    let database = key_service::store::test_database(dir.path()).await.unwrap();
    let s = Service::configured(&database, dir, |state| state.with_tenant_max_keys(2)).await;
    s.admin(Method::POST, "/api/v1/accounts", json!({"name": "acme"}))
        .await;
    s.admin(
        Method::POST,
        "/api/v1/keys",
        json!({"name": "ops", "account": "acme"}),
    )
    .await;
    let (owner, _) = s.token("acme", "owner").await;
    let make = |name: &str| {
        let body = json!({ "name": name });
        let request = s
            .request(Method::POST, "/api/v1/keys", Some(&owner))
            .json(&body);
        s.send(request)
    };
    assert_eq!(make("one").await.status, 201);
    assert_eq!(
        make("two").await.error(),
        (400, "key_limit_reached".into(), Some("quantity".into()))
    );
    // The operator's own creates are not held to the tenants' default.
    s.admin(
        Method::POST,
        "/api/v1/keys",
        json!({"name": "ops-2", "account": "acme"}),
    )
    .await;
    // An account's own limit, once set, is the one that counts, for tenants too.
    s.admin(
        Method::PATCH,
        "/api/v1/accounts/acme",
        json!({"max_keys": 5}),
    )
    .await;
    assert_eq!(make("three").await.status, 201);
}
