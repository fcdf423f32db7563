//! keygate's key-service: manages API keys and serves the snapshot the Envoy filter
//! checks requests against. [`app`] builds the HTTP routes around an [`AppState`];
//! [`run`] is the whole service as the binary starts it.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod error;
pub mod expiry;
pub mod extract;
pub mod keys;
pub mod metrics;
pub use keygate::pricing;
pub mod random;
pub mod store;
pub mod tokens;
pub mod validate;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{any, get, patch, post};
use axum::Router;
use tower_http::trace::TraceLayer;

pub use config::Config;
pub use store::Store;

use auth::Guard;
use config::{Database, DatabaseUrlError};
use store::StoreError;
use tokens::{Origin, TokenError};

/// What every handler shares: the store, and the digests of the two bearer tokens.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    admin: Guard,
    filter: Guard,
    check: Guard,
    pub metrics: metrics::SharedMetrics,
    /// What the console shows clients as the base URL.
    pub public_base_url: Arc<str>,
    /// Which forwarding headers `/filter/v1/check` believes (none by default).
    pub check_trust: api::check::ForwardingTrust,
}

impl AppState {
    pub fn new(store: Store, admin_token: &str, filter_token: &str) -> Self {
        AppState {
            store,
            admin: Guard::admin(admin_token),
            filter: Guard::filter(filter_token),
            check: Guard::check(filter_token),
            metrics: metrics::SharedMetrics::default(),
            public_base_url: Arc::from("http://localhost:10000/v1"),
            check_trust: api::check::ForwardingTrust::default(),
        }
    }

    pub fn with_public_base_url(mut self, url: &str) -> Self {
        self.public_base_url = Arc::from(url);
        self
    }

    pub fn with_check_trust(mut self, trust: api::check::ForwardingTrust) -> Self {
        self.check_trust = trust;
        self
    }
}

/// Every route of the service. Errors of any kind, even for routes that do not exist,
/// come back in the contract's JSON error shape.
pub fn app(state: AppState) -> Router {
    let admin = Router::new()
        .route("/api/v1/keys", post(api::keys::create).get(api::keys::list))
        .route(
            "/api/v1/keys/{id}",
            get(api::keys::get)
                .patch(api::keys::update)
                .delete(api::keys::delete),
        )
        .route("/api/v1/keys/{id}/rotate", post(api::keys::rotate))
        .route("/api/v1/groups", get(api::catalog::list_groups))
        .route(
            "/api/v1/groups/{name}",
            get(api::catalog::get_group)
                .put(api::catalog::put_group)
                .delete(api::catalog::delete_group),
        )
        .route("/api/v1/models", get(api::catalog::list_models))
        .route(
            "/api/v1/models/{name}",
            get(api::catalog::get_model).put(api::catalog::put_model),
        )
        .route(
            "/api/v1/accounts",
            get(api::catalog::list_accounts).post(api::catalog::create_account),
        )
        .route(
            "/api/v1/accounts/{name}",
            patch(api::catalog::update_account),
        )
        .route("/api/v1/usage", get(api::usage::list))
        .route("/api/v1/usage/summary", get(api::usage::summary))
        .route_layer(middleware::from_fn_with_state(
            state.admin.clone(),
            auth::require,
        ));
    let check = Router::new()
        .route(api::check::PREFIX, any(api::check::check))
        .route(&format!("{}/", api::check::PREFIX), any(api::check::check))
        .route(
            &format!("{}/{{*path}}", api::check::PREFIX),
            any(api::check::check),
        )
        .route_layer(middleware::from_fn_with_state(
            state.check.clone(),
            auth::require,
        ));
    let filter = Router::new()
        .route("/filter/v1/snapshot", get(api::filter::snapshot))
        .route("/filter/v1/usage", post(api::usage::report))
        .route_layer(middleware::from_fn_with_state(
            state.filter.clone(),
            auth::require,
        ));
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(metrics::render))
        .route("/api/v1/openapi.json", get(api::openapi))
        .merge(console::routes())
        .merge(admin)
        .merge(filter)
        .merge(check)
        .fallback(error::unknown_route)
        .layer(DefaultBodyLimit::max(error::BODY_LIMIT))
        .layer(middleware::map_response(error::json_errors))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::count,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--database-url: {0}")]
    DatabaseUrl(#[from] DatabaseUrlError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the admin and filter tokens must differ, or the filter's token could manage keys")]
    SameTokens,
    #[error("with PostgreSQL, {0} must be set (replicas share their tokens; none is generated)")]
    TokenRequired(&'static str),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("server failed: {0}")]
    Serve(io::Error),
    #[error("{0}")]
    Command(String),
    #[error("--change-log-retention: {0}")]
    Retention(String),
}

/// Opens the database (creating and migrating it), settles the tokens, serves until
/// SIGINT or SIGTERM, then drains requests in flight and closes the database.
///
/// Prints one line to stdout once listening: `key-service listening on <addr>`, with the
/// port actually bound, so a script that asked for port 0 learns which it got.
pub async fn run(config: Config) -> Result<(), StartError> {
    let database = Database::parse(&config.database_url)?;
    if let Some(command) = config.command {
        let store = Store::open(&database).await?;
        let result = cli::run(&store, command).await;
        store.close().await;
        for line in result.map_err(|e| StartError::Command(cli::describe(&e)))? {
            println!("{line}");
        }
        return Ok(());
    }
    let store = Store::open(&database).await?;
    match &database {
        Database::Sqlite { path } => tracing::info!(path = %absolute(path), "database ready"),
        Database::Postgres { .. } => tracing::info!(engine = "postgres", "database ready"),
    }

    let token = |configured: Option<tokens::Token>, file, flag| match database.data_dir() {
        Some(dir) => Ok(tokens::resolve(configured, dir, file)?),
        None => tokens::given(configured)
            .map(|t| (t, tokens::Origin::Configured))
            .ok_or(StartError::TokenRequired(flag)),
    };
    let (admin, admin_origin) = token(
        config.admin_token,
        tokens::ADMIN_TOKEN_FILE,
        "KEYGATE_ADMIN_TOKEN",
    )?;
    let (filter, filter_origin) = token(
        config.filter_token,
        tokens::FILTER_TOKEN_FILE,
        "KEYGATE_FILTER_TOKEN",
    )?;
    if admin == filter {
        return Err(StartError::SameTokens);
    }
    log_token("admin", &admin_origin);
    log_token("filter", &filter_origin);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(StartError::Serve)?;
    announce(addr);

    let retention = match expiry::parse_expires_in(&config.change_log_retention) {
        Ok(expiry::ExpiresIn::Never) => None,
        Ok(expiry::ExpiresIn::After(seconds)) => Some(seconds),
        Err(e) => return Err(StartError::Retention(e.to_string())),
    };
    if let Some(seconds) = retention {
        tokio::spawn(prune_periodically(store.clone(), seconds));
    }

    let state = AppState::new(store.clone(), admin.expose(), filter.expose())
        .with_public_base_url(&config.public_base_url)
        .with_check_trust(api::check::ForwardingTrust {
            xff_hops: config.check_trusted_hops,
            envoy_external_address: config.check_trust_envoy_external_address,
        });
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    store.close().await;
    tracing::info!("stopped");
    served.map_err(StartError::Serve)
}

/// Prunes the change log at start and then hourly, keeping `retention` seconds of it.
async fn prune_periodically(store: Store, retention: i64) {
    let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        hourly.tick().await;
        match store
            .prune_changes(expiry::now().saturating_sub(retention))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "change log pruned"),
            Err(e) => tracing::warn!(error = %e, "change log pruning failed"),
        }
    }
}

/// The one line on stdout.
fn announce(addr: SocketAddr) {
    let mut out = io::stdout().lock();
    if let Err(e) = writeln!(out, "key-service listening on {addr}").and_then(|()| out.flush()) {
        tracing::warn!(error = %e, "cannot write to stdout");
    }
    tracing::info!(%addr, "listening");
}

/// Logs where a token came from: a path at most, never the value.
fn log_token(which: &str, origin: &Origin) {
    match origin {
        Origin::Configured => tracing::info!("{which} token taken from the configuration"),
        Origin::Stored(path) => {
            tracing::info!(path = %absolute(path), "{which} token read from file")
        }
        Origin::Generated(path) => tracing::info!(
            path = %absolute(path),
            "{which} token generated and stored, readable by this user only"
        ),
    }
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what `docker stop` and Kubernetes send).
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
