//! `key-service keys ...` and `key-service webhooks ...`: the operator's command line, on
//! the same database as the service (`--database-url`), through the same checks as the
//! API. Each key or webhook is printed as one line of JSON (as the API shows it); a
//! secret is printed only by `create` and `rotate` (`rotate-secret`).

use std::collections::BTreeMap;

use clap::{Args, Subcommand};

use crate::access::{Actor, ActorKind, Caller, Scope};
use crate::alerts::webhooks::{self, CreateWebhook};
use crate::audit::{self, Change};
use crate::error::ApiError;
use crate::expiry;
use crate::keys::caps::CapRequest;
use crate::keys::{self, CreateKey, KeyView, RotateKey, UpdateKey};
use crate::store::{KeyFilter, Store};

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Manage API keys without the HTTP API.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage alert webhooks and read their delivery logs.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum WebhooksCommand {
    /// Create a webhook; prints it with its signing secret (shown this once).
    Create {
        /// Where events are POSTed (http:// or https://).
        #[arg(long)]
        url: String,
        /// Only this account's events; without it, every event (a global webhook).
        #[arg(long)]
        account: Option<String>,
        /// Event types, comma-separated; without it, all.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
    },
    /// List webhooks (never their secrets).
    List {
        #[arg(long)]
        account: Option<String>,
    },
    /// Delete a webhook and its delivery log.
    Delete { id: String },
    /// Queue a `test` event for one webhook (the running service delivers it).
    Test { id: String },
    /// A webhook's deliveries, newest first.
    Deliveries {
        id: String,
        /// pending, delivered or failed.
        #[arg(long)]
        status: Option<String>,
        /// How many to print.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Create keys; prints each with its secret (shown this once).
    Create(Box<CreateArgs>),
    /// List keys (masked).
    List(ListArgs),
    /// Change a key's rotation date (more fields: the HTTP API's PATCH).
    Edit(EditArgs),
    /// Refuse a key from now on.
    Disable { id: String },
    /// Accept a disabled key again.
    Enable { id: String },
    /// Give a key a new secret; prints it (shown this once).
    Rotate {
        id: String,
        /// Keep the old secret working this long (e.g. "1h").
        #[arg(long)]
        grace_period: Option<String>,
        /// The next rotation date (RFC 3339); without it the met one is cleared.
        #[arg(long)]
        rotate_by: Option<String>,
    },
    /// Delete a key.
    Delete { id: String },
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub account: Option<String>,
    #[arg(long)]
    pub group: Option<String>,
    /// "1h", "1d", "1mo", "never"...
    #[arg(long)]
    pub expires_in: Option<String>,
    /// RFC 3339.
    #[arg(long)]
    pub expires_at: Option<String>,
    #[arg(long)]
    pub quantity: Option<i64>,
    /// Credits; makes the key's quota limited.
    #[arg(long)]
    pub quota: Option<i64>,
    /// Models the key may use, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Addresses and CIDRs requests may come from, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub ip_allowlist: Vec<String>,
    /// Requests per minute the key may make (its group's limit may be stricter).
    #[arg(long)]
    pub rpm: Option<i64>,
    /// Tokens per minute the key may use (likewise).
    #[arg(long)]
    pub tpm: Option<i64>,
    /// Requests the key may have in flight at once.
    #[arg(long)]
    pub max_parallel: Option<i64>,
    /// How often the quota starts afresh: total (never), day, week, month, or a span
    /// such as 72h.
    #[arg(long)]
    pub quota_period: Option<String>,
    /// A limit per model, repeatable: PATTERN=AMOUNT[/PERIOD], in credits, or in tokens
    /// with a "tokens" suffix (claude-opus-*=5000/day, gpt-4o=100000tokens/month).
    #[arg(long)]
    pub model_cap: Vec<String>,
    /// When the secret should be rotated by (RFC 3339); reminded as `key.rotation_due`.
    #[arg(long)]
    pub rotate_by: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct EditArgs {
    pub id: String,
    /// A new rotation date (RFC 3339), or "none" to clear it.
    #[arg(long)]
    pub rotate_by: Option<String>,
    /// A new budget period: total, day, week, month, or a span such as 72h.
    #[arg(long)]
    pub quota_period: Option<String>,
    /// The key's limits per model, replacing all it has (see create); "none" takes them
    /// away.
    #[arg(long)]
    pub model_cap: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// active, disabled, expired or exhausted.
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long)]
    pub account: Option<String>,
    /// Part of the name.
    #[arg(long)]
    pub q: Option<String>,
    /// Only keys whose rotation date has passed.
    #[arg(long)]
    pub rotation_due: bool,
}

/// Runs one command; returns the lines to print.
pub async fn run(store: &Store, command: Command) -> Result<Vec<String>, ApiError> {
    match command {
        Command::Keys(command) => keys(store, command).await,
        Command::Webhooks(command) => webhooks_command(store, command).await,
    }
}

/// Records a change made on the command line in the audit log: by `cli`, named by the
/// operating system's user (`$USER`, else `cli`), from no address.
async fn record(
    store: &Store,
    action: &'static str,
    target: &str,
    account: Option<&str>,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty() && u.len() <= 64 && u.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "cli".to_owned());
    let caller = Caller {
        actor: Actor {
            kind: ActorKind::Cli,
            id: user,
        },
        scope: Scope::All,
        address: None,
    };
    let change = Change {
        action,
        target,
        account,
        before,
        after,
    };
    audit::record_in(store, &crate::metrics::Metrics::default(), &caller, change).await;
}

/// A key as the audit log keeps it: never its secret.
fn key_entry(key: &KeyView) -> Option<serde_json::Value> {
    audit::snapshot(&KeyView {
        key: None,
        ..key.clone()
    })
}

async fn webhooks_command(
    store: &Store,
    command: WebhooksCommand,
) -> Result<Vec<String>, ApiError> {
    fn json<T: serde::Serialize>(v: &T) -> Result<String, ApiError> {
        serde_json::to_string(v).map_err(ApiError::internal)
    }
    let now = expiry::now();
    match command {
        WebhooksCommand::Create {
            url,
            account,
            events,
        } => {
            let request = CreateWebhook {
                url,
                account,
                events: Some(events),
                enabled: None,
            };
            let made = webhooks::create(store, request, false, now).await?;
            let entry = audit::snapshot(&webhooks::WebhookView {
                secret: None,
                ..made.clone()
            });
            record(
                store,
                "webhook.create",
                &made.id,
                made.account.as_deref(),
                None,
                entry,
            )
            .await;
            Ok(vec![json(&made)?])
        }
        WebhooksCommand::List { account } => webhooks::list(store, account.as_deref())
            .await?
            .iter()
            .map(json)
            .collect(),
        WebhooksCommand::Delete { id } => {
            let before = webhooks::get(store, &id).await?;
            webhooks::delete(store, &id).await?;
            let entry = audit::snapshot(&before);
            record(
                store,
                "webhook.delete",
                &id,
                before.account.as_deref(),
                entry,
                None,
            )
            .await;
            Ok(vec![format!("{{\"deleted\":{}}}", serde_json::json!(id))])
        }
        WebhooksCommand::Test { id } => {
            let event_id = webhooks::test(store, &id, now).await?;
            Ok(vec![format!(
                "{{\"event_id\":{}}}",
                serde_json::json!(event_id)
            )])
        }
        WebhooksCommand::Deliveries { id, status, limit } => {
            let status = status.as_deref().map(webhooks::check_status).transpose()?;
            let (views, _) = webhooks::deliveries(store, &id, status, limit, 0).await?;
            views.iter().map(json).collect()
        }
    }
}

/// `--model-cap` values: `PATTERN=AMOUNT[/PERIOD]`, the amount in credits, or in tokens
/// with a `tokens` suffix: `claude-opus-*=5000/day`, `gpt-4o=100000tokens/month`.
fn model_caps(given: &[String]) -> Result<BTreeMap<String, CapRequest>, ApiError> {
    let bad = |text: &str| {
        ApiError::invalid(
            "model_caps",
            format!("expected PATTERN=AMOUNT[tokens][/PERIOD], such as claude-opus-*=5000/day, got {text:?}"),
        )
    };
    let mut caps = BTreeMap::new();
    for text in given {
        let (model, rest) = text.rsplit_once('=').ok_or_else(|| bad(text))?;
        let (amount, period) = match rest.split_once('/') {
            Some((amount, period)) => (amount, Some(period.to_owned())),
            None => (rest, None),
        };
        let (number, tokens) = match amount.strip_suffix("tokens") {
            Some(number) => (number, true),
            None => (amount, false),
        };
        let number: i64 = number.parse().map_err(|_| bad(text))?;
        let cap = CapRequest {
            budget: (!tokens).then_some(number),
            tokens: tokens.then_some(number),
            period,
        };
        caps.insert(model.to_owned(), cap);
    }
    Ok(caps)
}

/// Disables or enables a key, and records it.
async fn set_enabled(
    store: &Store,
    id: &str,
    enabled: bool,
    now: i64,
) -> Result<KeyView, ApiError> {
    let before = keys::get(store, id, now).await?;
    let after = keys::set_enabled(store, id, enabled, now).await?;
    let (b, a) = (key_entry(&before), key_entry(&after));
    record(store, "key.update", id, Some(&after.account), b, a).await;
    Ok(after)
}

async fn keys(store: &Store, command: KeysCommand) -> Result<Vec<String>, ApiError> {
    let now = expiry::now();
    let json = |v: &KeyView| serde_json::to_string(v).map_err(ApiError::internal);
    match command {
        KeysCommand::Create(args) => {
            let a = *args;
            let request = CreateKey {
                name: a.name,
                account: a.account,
                group: a.group,
                expires_at: a.expires_at,
                expires_in: a.expires_in,
                quantity: a.quantity,
                unlimited_quota: a.quota.map(|_| false),
                quota: a.quota,
                models: Some(a.models),
                ip_allowlist: Some(a.ip_allowlist),
                rpm: a.rpm,
                tpm: a.tpm,
                max_parallel: a.max_parallel,
                quota_period: a.quota_period,
                rotate_by: a.rotate_by,
                model_caps: Some(model_caps(&a.model_cap)?),
            };
            let created = keys::create(store, request, now).await?;
            for key in &created {
                record(
                    store,
                    "key.create",
                    &key.id,
                    Some(&key.account),
                    None,
                    key_entry(key),
                )
                .await;
            }
            created.iter().map(json).collect()
        }
        KeysCommand::List(a) => {
            let status = a
                .status
                .map(|s| {
                    s.parse().map_err(|()| {
                        ApiError::invalid("status", "one of active, disabled, expired, exhausted")
                    })
                })
                .transpose()?;
            let filter = KeyFilter {
                status,
                group: a.group,
                account: a.account,
                name_contains: a.q,
                rotation_due: a.rotation_due.then_some(true),
            };
            let mut lines = Vec::new();
            let mut offset = 0;
            loop {
                let (views, total) = keys::list(store, &filter, 500, offset, now).await?;
                let n = views.len() as u64;
                for view in &views {
                    lines.push(json(view)?);
                }
                offset += n;
                if n == 0 || offset >= total {
                    return Ok(lines);
                }
            }
        }
        KeysCommand::Disable { id } => Ok(vec![json(&set_enabled(store, &id, false, now).await?)?]),
        KeysCommand::Enable { id } => Ok(vec![json(&set_enabled(store, &id, true, now).await?)?]),
        KeysCommand::Edit(a) => {
            let caps = match a.model_cap.as_slice() {
                [] => None,
                [none] if none == "none" => Some(BTreeMap::new()),
                given => Some(model_caps(given)?),
            };
            let request = UpdateKey {
                rotate_by: a.rotate_by.map(|at| Some(at).filter(|at| at != "none")),
                quota_period: a.quota_period,
                model_caps: caps,
                ..UpdateKey::default()
            };
            let before = keys::get(store, &a.id, now).await?;
            let after = keys::update(store, &a.id, &before.account, request, now).await?;
            let (b, n) = (key_entry(&before), key_entry(&after));
            record(store, "key.update", &a.id, Some(&after.account), b, n).await;
            Ok(vec![json(&after)?])
        }
        KeysCommand::Rotate {
            id,
            grace_period,
            rotate_by,
        } => {
            let request = RotateKey {
                grace_period,
                rotate_by,
            };
            let before = keys::get(store, &id, now).await?;
            let rotated = keys::rotate(store, &id, &request, now).await?;
            let (b, a) = (key_entry(&before), key_entry(&rotated));
            record(store, "key.rotate", &id, Some(&rotated.account), b, a).await;
            Ok(vec![json(&rotated)?])
        }
        KeysCommand::Delete { id } => {
            let before = keys::get(store, &id, now).await?;
            keys::delete(store, &id, now).await?;
            let b = key_entry(&before);
            record(store, "key.delete", &id, Some(&before.account), b, None).await;
            Ok(vec![format!("{{\"deleted\":{}}}", serde_json::json!(id))])
        }
    }
}

/// An error as the operator reads it: the field first, as the API's `param`.
pub fn describe(error: &ApiError) -> String {
    match error {
        ApiError::InvalidRequest {
            param: Some(param),
            message,
            ..
        } => format!("{param}: {message}"),
        other => other.to_string(),
    }
}
