//! keygate's key-service: manages API keys and serves the snapshot the Envoy filter
//! checks requests against. [`app`] builds the HTTP routes around an [`AppState`];
//! [`run`] is the whole service as the binary starts it.

pub mod access;
pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod budget;
pub mod changes;
pub mod cli;
pub mod config;
pub mod console;
pub mod error;
pub mod expiry;
pub mod extract;
pub mod keys;
pub mod metrics;
pub mod openapi;
pub use keygate_core::usage::pricing;
pub mod random;
pub mod sso;
pub mod store;
pub mod tokens;
pub mod validate;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::middleware;
use axum::routing::{any, delete, get, patch, post, put, MethodRouter};
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
    /// The snapshot version filters wait on (`?wait=`), read again after each write.
    pub changes: Arc<changes::Changes>,
    /// What the console shows clients as the base URL.
    pub public_base_url: Arc<str>,
    /// Which forwarding headers `/filter/v1/check` believes (none by default).
    pub check_trust: api::check::ForwardingTrust,
    /// Single sign-on for the console, when configured.
    pub sso: Option<Arc<sso::Sso>>,
    /// How many keys a tenant may make in an account without a `max_keys` of its own.
    pub tenant_max_keys: i64,
}

impl AppState {
    pub fn new(store: Store, admin_token: &str, filter_token: &str) -> Self {
        AppState {
            store,
            admin: Guard::admin(admin_token),
            filter: Guard::filter(filter_token),
            check: Guard::check(filter_token),
            metrics: metrics::SharedMetrics::default(),
            changes: Arc::default(),
            public_base_url: Arc::from("http://localhost:10000/v1"),
            check_trust: api::check::ForwardingTrust::default(),
            sso: None,
            tenant_max_keys: config::TENANT_MAX_KEYS_DEFAULT,
        }
    }

    pub fn with_tenant_max_keys(mut self, max: i64) -> Self {
        self.tenant_max_keys = max;
        self
    }

    /// Admits a second filter token on the filter's routes, so Envoys can move to it one
    /// by one (`--filter-token-next`).
    pub fn with_next_filter_token(mut self, token: Option<&str>) -> Self {
        self.filter = self.filter.or(token);
        self.check = self.check.or(token);
        self
    }

    pub fn with_public_base_url(mut self, url: &str) -> Self {
        self.public_base_url = Arc::from(url);
        self
    }

    pub fn with_check_trust(mut self, trust: api::check::ForwardingTrust) -> Self {
        self.check_trust = trust;
        self
    }

    /// Turns single sign-on for the console on.
    pub fn with_sso(mut self, sso: sso::Sso) -> Self {
        self.sso = Some(Arc::new(sso));
        self
    }
}

/// Who may call a route: which bearer token its guard asks for, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Open,
    /// The management API: the admin token, or an account token (or an SSO session) as
    /// far as the permit lets tenants in.
    Api(auth::Permit),
    Filter,
    /// The filter token in `x-keygate-token` (`Authorization` carries the client's key).
    Check,
}

/// The method a route answers. Ours rather than axum's `MethodFilter`, so the table can
/// be read back (by the test that holds the OpenAPI document against it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    /// Whatever the client sent (`/filter/v1/check` decides for any request).
    Any,
}

impl Verb {
    /// The method's name in lower case, as OpenAPI spells its operations; `*` for any.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::Any => "*",
        }
    }
}

/// One route of the service: the one place its method and path are written, read both by
/// [`app`] and by the test that checks every route is in the OpenAPI document.
pub struct Route {
    pub verb: Verb,
    pub path: &'static str,
    /// Further paths served by the same handler (the check route's bare prefix).
    pub aliases: &'static [&'static str],
    pub access: Access,
    handler: MethodRouter<AppState>,
}

fn route<H, T>(verb: Verb, path: &'static str, access: Access, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let handler = match verb {
        Verb::Get => get(handler),
        Verb::Post => post(handler),
        Verb::Put => put(handler),
        Verb::Patch => patch(handler),
        Verb::Delete => delete(handler),
        Verb::Any => any(handler),
    };
    Route {
        verb,
        path,
        aliases: &[],
        access,
        handler,
    }
}

/// Every route of the service. The OpenAPI document (`openapi.rs`) lists the same
/// handlers; a test holds the two together.
pub fn routes() -> Vec<Route> {
    use auth::Permit::{Admin, Read, Write};
    use Access::{Api, Check, Filter, Open};
    use Verb::{Any, Delete, Get, Patch, Post, Put};
    vec![
        route(Get, "/healthz", Open, api::healthz),
        route(Get, "/readyz", Open, api::readyz),
        route(Get, "/metrics", Open, metrics::render),
        route(Get, "/api/v1/openapi.json", Open, openapi::serve),
        route(Get, "/", Open, console::index),
        route(Get, "/console/console.js", Open, console::script),
        route(Get, "/console/console.css", Open, console::style),
        route(Get, "/console/settings.json", Open, console::settings),
        route(Get, "/auth/oidc/login", Open, sso::login),
        route(Get, "/auth/oidc/callback", Open, sso::callback),
        route(Post, "/auth/logout", Open, sso::logout),
        route(Post, "/api/v1/keys", Api(Write), api::keys::create),
        route(Get, "/api/v1/keys", Api(Read), api::keys::list),
        route(Get, "/api/v1/keys/{id}", Api(Read), api::keys::get),
        route(Patch, "/api/v1/keys/{id}", Api(Write), api::keys::update),
        route(Delete, "/api/v1/keys/{id}", Api(Write), api::keys::delete),
        route(
            Post,
            "/api/v1/keys/{id}/rotate",
            Api(Write),
            api::keys::rotate,
        ),
        route(Get, "/api/v1/groups", Api(Read), api::catalog::list_groups),
        route(
            Get,
            "/api/v1/groups/{name}",
            Api(Read),
            api::catalog::get_group,
        ),
        route(
            Put,
            "/api/v1/groups/{name}",
            Api(Admin),
            api::catalog::put_group,
        ),
        route(
            Delete,
            "/api/v1/groups/{name}",
            Api(Admin),
            api::catalog::delete_group,
        ),
        route(Get, "/api/v1/models", Api(Read), api::catalog::list_models),
        route(
            Get,
            "/api/v1/models/{name}",
            Api(Read),
            api::catalog::get_model,
        ),
        route(
            Put,
            "/api/v1/models/{name}",
            Api(Admin),
            api::catalog::put_model,
        ),
        route(
            Get,
            "/api/v1/accounts",
            Api(Read),
            api::catalog::list_accounts,
        ),
        route(
            Post,
            "/api/v1/accounts",
            Api(Admin),
            api::catalog::create_account,
        ),
        route(
            Patch,
            "/api/v1/accounts/{name}",
            Api(Admin),
            api::catalog::update_account,
        ),
        route(
            Post,
            "/api/v1/accounts/{name}/tokens",
            Api(Admin),
            api::tenants::create,
        ),
        route(
            Get,
            "/api/v1/accounts/{name}/tokens",
            Api(Admin),
            api::tenants::list,
        ),
        route(
            Delete,
            "/api/v1/accounts/{name}/tokens/{id}",
            Api(Admin),
            api::tenants::revoke,
        ),
        route(
            Post,
            "/api/v1/accounts/{name}/tokens/{id}/rotate",
            Api(Admin),
            api::tenants::rotate,
        ),
        route(Get, "/api/v1/me", Api(Read), api::tenants::me),
        route(Get, "/api/v1/usage", Api(Read), api::usage::list),
        route(Get, "/api/v1/audit", Api(Read), api::audit::list),
        route(Get, "/api/v1/usage/summary", Api(Read), api::usage::summary),
        route(Post, "/api/v1/webhooks", Api(Write), api::webhooks::create),
        route(Get, "/api/v1/webhooks", Api(Read), api::webhooks::list),
        route(Get, "/api/v1/webhooks/{id}", Api(Read), api::webhooks::get),
        route(
            Patch,
            "/api/v1/webhooks/{id}",
            Api(Write),
            api::webhooks::update,
        ),
        route(
            Delete,
            "/api/v1/webhooks/{id}",
            Api(Write),
            api::webhooks::delete,
        ),
        route(
            Post,
            "/api/v1/webhooks/{id}/rotate-secret",
            Api(Write),
            api::webhooks::rotate_secret,
        ),
        route(
            Post,
            "/api/v1/webhooks/{id}/test",
            Api(Write),
            api::webhooks::test,
        ),
        route(
            Get,
            "/api/v1/webhooks/{id}/deliveries",
            Api(Read),
            api::webhooks::deliveries,
        ),
        route(Get, "/filter/v1/snapshot", Filter, api::filter::snapshot),
        route(Post, "/filter/v1/usage", Filter, api::usage::report),
        route(Post, "/filter/v1/leases", Filter, api::leases::grant),
        Route {
            aliases: api::check::ALIASES,
            ..route(Any, api::check::ROUTE, Check, api::check::check)
        },
    ]
}

/// The service: [`routes`], each behind its token's guard. Errors of any kind, even for
/// routes that do not exist, come back in the contract's JSON error shape.
/// Middleware: after a successful write (any method but GET, HEAD and OPTIONS), the
/// snapshot version is read again, so filters waiting on it hear of the change at once.
async fn poke_after_writes(
    axum::extract::State(changes): axum::extract::State<Arc<changes::Changes>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    let write = ![Method::GET, Method::HEAD, Method::OPTIONS].contains(request.method());
    let response = next.run(request).await;
    if write && response.status().is_success() {
        changes.poke();
    }
    response
}

pub fn app(state: AppState) -> Router {
    let mut app = Router::new();
    for Route {
        path,
        aliases,
        access,
        handler,
        ..
    } in routes()
    {
        let handler = match access {
            Access::Open => handler,
            Access::Api(permit) => handler.route_layer(middleware::from_fn_with_state(
                auth::ApiGuard {
                    admin: state.admin.clone(),
                    store: state.store.clone(),
                    permit,
                },
                auth::admit,
            )),
            Access::Filter => handler.route_layer(middleware::from_fn_with_state(
                state.filter.clone(),
                auth::require,
            )),
            // `layer`, not `route_layer`: the check answers any method through the method
            // router's fallback, which `route_layer` does not wrap (axum panics rather
            // than leave it unguarded).
            Access::Check => handler.layer(middleware::from_fn_with_state(
                state.check.clone(),
                auth::require,
            )),
        };
        for path in std::iter::once(path).chain(aliases.iter().copied()) {
            app = app.route(path, handler.clone());
        }
    }
    app.fallback(error::unknown_route)
        .layer(DefaultBodyLimit::max(error::BODY_LIMIT))
        .layer(middleware::map_response(error::json_errors))
        .layer(middleware::from_fn_with_state(
            state.changes.clone(),
            poke_after_writes,
        ))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::count,
        ))
        // Paths only, never query strings: the single sign-on callback's carries the
        // provider's code and the sign-in's state.
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &axum::extract::Request| {
                tracing::debug_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    version = ?request.version(),
                )
            }),
        )
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
    #[error("{0}")]
    AuditRetention(String),
    #[error("--budget-time-zone: {0}")]
    TimeZone(String),
    #[error("{0}")]
    Alerts(String),
    #[error("single sign-on: {0}")]
    Sso(String),
}

/// Opens the database (creating and migrating it), settles the tokens, serves until
/// SIGINT or SIGTERM, then drains requests in flight and closes the database.
///
/// Prints one line to stdout once listening: `key-service listening on <addr>`, with the
/// port actually bound, so a script that asked for port 0 learns which it got.
pub async fn run(config: Config) -> Result<(), StartError> {
    let database = Database::parse(&config.database_url)?;
    let time_zone = budget::time_zone(&config.budget_time_zone).map_err(StartError::TimeZone)?;
    if let Some(command) = config.command {
        let store = Store::open(&database).await?.with_time_zone(time_zone);
        let result = cli::run(&store, command).await;
        store.close().await;
        for line in result.map_err(|e| StartError::Command(cli::describe(&e)))? {
            println!("{line}");
        }
        return Ok(());
    }
    let alerts = Arc::new(config.alert_settings().map_err(StartError::Alerts)?);
    let audit_retention = config
        .audit_retention()
        .map_err(StartError::AuditRetention)?;
    let sso_settings = config.sso_settings().map_err(StartError::Sso)?;
    let store = Store::open(&database)
        .await?
        .with_alert_thresholds(alerts.thresholds.clone())
        .with_time_zone(time_zone);
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
    let next_filter = tokens::given(config.filter_token_next);
    if admin == filter || next_filter.as_ref() == Some(&admin) {
        return Err(StartError::SameTokens);
    }
    log_token("admin", &admin_origin);
    log_token("filter", &filter_origin);
    if next_filter.is_some() {
        tracing::info!("a next filter token is admitted too (--filter-token-next)");
    }

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
    if let Some(seconds) = audit_retention {
        tokio::spawn(prune_audit_periodically(store.clone(), seconds));
    }
    tokio::spawn(roll_periodically(store.clone()));

    let sso = match sso_settings {
        Some(settings) => Some(start_sso(&store, settings, addr).await?),
        None => {
            // Sessions opened while it was on end when it is turned off.
            match store.delete_all_sso_sessions().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "single sign-on is off: its sessions ended"),
                Err(e) => tracing::warn!(error = %e, "ending single sign-on sessions failed"),
            }
            None
        }
    };

    let mut state = AppState::new(store.clone(), admin.expose(), filter.expose())
        .with_next_filter_token(next_filter.as_ref().map(tokens::Token::expose))
        .with_public_base_url(&config.public_base_url)
        .with_check_trust(api::check::ForwardingTrust {
            xff_hops: config.check_trusted_hops,
            envoy_external_address: config.check_trust_envoy_external_address,
        })
        .with_tenant_max_keys(config.tenant_max_keys);
    if let Some(sso) = sso {
        state = state.with_sso(sso);
    }
    if let Some(sso) = state.sso.clone() {
        // Early word in the log of a provider that cannot be used; failures are logged.
        tokio::spawn(async move {
            if sso.idp.endpoints().await.is_ok() {
                let _ = sso.idp.keys(false).await;
            }
        });
    }
    alerts::spawn(store.clone(), alerts, state.metrics.clone())
        .map_err(|e| StartError::Alerts(format!("the webhook client cannot start: {e}")))?;
    let changes = state.changes.clone();
    let shutdown = async move {
        shutdown_signal().await;
        // Filters waiting for changes are answered now, not at the end of their wait.
        changes.close();
    };
    let served = axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    store.close().await;
    tracing::info!("stopped");
    served.map_err(StartError::Serve)
}

/// Single sign-on as configured: the redirect URL settled, expired sessions pruned from
/// now on, and the provider discovered in the background (a provider down at start
/// delays nothing; each sign-in tries again until discovery succeeds).
async fn start_sso(
    store: &Store,
    settings: sso::SsoSettings,
    addr: SocketAddr,
) -> Result<sso::Sso, StartError> {
    let sso = sso::Sso::new(settings, addr).map_err(StartError::Sso)?;
    tracing::info!(
        issuer = %sso.settings.issuer,
        redirect_url = %sso.redirect_url,
        rules = sso.settings.mappings.rules().len(),
        "single sign-on is on"
    );
    for rule in sso.settings.mappings.rules() {
        if !store.account_exists(&rule.account).await? {
            tracing::warn!(account = %rule.account, %rule, "a KEYGATE_OIDC_MAPPINGS rule names an account that does not exist (yet): its sign-ins are refused until it does");
        }
    }
    tokio::spawn(sso::prune_periodically(store.clone()));
    Ok(sso)
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

/// Prunes the audit log at start and then hourly, keeping `retention` seconds of it.
async fn prune_audit_periodically(store: Store, retention: i64) {
    let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
    hourly.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        hourly.tick().await;
        match store
            .prune_audit(expiry::now().saturating_sub(retention))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "audit log pruned"),
            Err(e) => tracing::warn!(error = %e, "audit log pruning failed"),
        }
    }
}

/// Rolls budget periods over every second, so that snapshots and listings show a new
/// period without waiting for traffic (billing rolls what it bills by itself). A batch
/// that was full is followed by the next one at once.
async fn roll_periodically(store: Store) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        loop {
            match store.roll_periods(expiry::now()).await {
                Ok(0) => break,
                Ok(n) => {
                    tracing::info!(rolled = n, "budget periods rolled over");
                    if n < u64::try_from(store::ROLL_BATCH).unwrap_or(u64::MAX) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rolling budget periods over failed");
                    break;
                }
            }
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
