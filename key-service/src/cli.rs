//! `key-service keys ...`: the operator's command line, on the same database as the
//! service (`--database-url`), through the same checks as the API. Each key is printed
//! as one line of JSON (the API's KEY); a secret is printed only by `create` and `rotate`.

use clap::{Args, Subcommand};

use crate::error::ApiError;
use crate::expiry;
use crate::keys::{self, CreateKey, KeyView, RotateKey, UpdateKey};
use crate::store::{KeyFilter, Store};

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Manage API keys without the HTTP API.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Create keys; prints each with its secret (shown this once).
    Create(CreateArgs),
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
    let Command::Keys(command) = command;
    let now = expiry::now();
    let json = |v: &KeyView| serde_json::to_string(v).map_err(ApiError::internal);
    match command {
        KeysCommand::Create(a) => {
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
                rotate_by: a.rotate_by,
            };
            let created = keys::create(store, request, now).await?;
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
        KeysCommand::Disable { id } => Ok(vec![json(
            &keys::set_enabled(store, &id, false, now).await?,
        )?]),
        KeysCommand::Enable { id } => Ok(vec![json(
            &keys::set_enabled(store, &id, true, now).await?,
        )?]),
        KeysCommand::Edit(a) => {
            let request = UpdateKey {
                rotate_by: a.rotate_by.map(|at| Some(at).filter(|at| at != "none")),
                ..UpdateKey::default()
            };
            Ok(vec![json(
                &keys::update(store, &a.id, request, now).await?,
            )?])
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
            let rotated = keys::rotate(store, &id, &request, now).await?;
            Ok(vec![json(&rotated)?])
        }
        KeysCommand::Delete { id } => {
            keys::delete(store, &id, now).await?;
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
