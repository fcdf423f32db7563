//! The key-service's HTTP API, served on 127.0.0.1:0 with a fresh database per test (SQLite,
//! or PostgreSQL when `KEYGATE_TEST_POSTGRES` names a server)
//! and called over real HTTP.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit;
mod auth;
mod catalog;
mod check;
mod console;
mod create;
mod edit;
mod errors;
mod leases;
mod list;
mod replicas;
mod snapshot;
mod sso;
mod tenants;
mod usage;
mod validation;
mod webhooks;

use key_service::{AppState, Store};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;
use tempfile::TempDir;

pub const ADMIN: &str = "test-admin-token";
pub const FILTER: &str = "test-filter-token";

pub struct Service {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Store,
    /// What the handlers share (for what tests write as a handler would).
    pub state: AppState,
    _dir: TempDir,
}

/// A response's status and JSON body (`Value::Null` when the body is empty).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    /// The body as text (for the plain-text `/metrics`).
    pub text: String,
}

impl Reply {
    /// Asserts the contract's error shape and returns `(status, code, param)`.
    pub fn error(&self) -> (u16, String, Option<String>) {
        let json = self
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        assert!(json, "error without JSON content-type: {:?}", self.headers);
        let error = &self.body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        assert!(error["type"].is_string(), "{}", self.body);
        assert!(error.get("param").is_some(), "param missing: {}", self.body);
        (
            self.status,
            error["code"].as_str().unwrap().to_owned(),
            error["param"].as_str().map(str::to_owned),
        )
    }
}

impl Service {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = key_service::store::test_database(dir.path()).await.unwrap();
        Service::on(&database, dir).await
    }

    /// A service on an existing database: several of them on one database are replicas.
    pub async fn on(database: &key_service::config::Database, dir: TempDir) -> Self {
        Service::configured(database, dir, |state| state).await
    }

    /// A service whose state `configure` sets up beyond the defaults.
    pub async fn configured(
        database: &key_service::config::Database,
        dir: TempDir,
        configure: impl FnOnce(AppState) -> AppState,
    ) -> Self {
        let store = Store::open(database).await.unwrap();
        let state = configure(AppState::new(store.clone(), ADMIN, FILTER));
        let app = key_service::app(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Service {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            store,
            state,
            _dir: dir,
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let json = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = if bytes.is_empty() || !json {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        Reply {
            status,
            headers,
            body,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path, Some(ADMIN)))
            .await
    }

    pub async fn create(&self, body: Value) -> Reply {
        self.send(
            self.request(reqwest::Method::POST, "/api/v1/keys", Some(ADMIN))
                .json(&body),
        )
        .await
    }

    /// Creates keys, asserting 201, and returns them.
    pub async fn create_ok(&self, body: Value) -> Vec<Value> {
        let reply = self.create(body).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body["keys"].as_array().unwrap().clone()
    }

    pub async fn snapshot(&self) -> Reply {
        self.send(self.request(reqwest::Method::GET, "/filter/v1/snapshot", Some(FILTER)))
            .await
    }
}
