//! Who is calling the management API (`/api/v1`), and which account's data they may see.
//!
//! Three kinds of caller: the operator with the admin token, who sees everything; an
//! account token's holder; and a person signed in to the console through single sign-on
//! (an SSO session). The last two are tenants: they see one account, as its `owner`
//! (manage its keys and webhooks) or its `viewer` (read only). Whatever lies outside a
//! tenant's account answers 404, exactly as if it did not exist.

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// What a tenant may do within its account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manage the account's keys and webhooks; read its usage.
    Owner,
    /// Read only.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "owner" => Some(Role::Owner),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// Which kind of credential a caller presented: recorded in the audit log as "who".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    /// The admin token.
    Admin,
    /// An account token (its id, never the token).
    Token,
    /// A console session opened through single sign-on (the identity provider's subject).
    Sso,
    /// The key-service's command line, run on the database directly.
    Cli,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Admin => "admin",
            ActorKind::Token => "token",
            ActorKind::Sso => "sso",
            ActorKind::Cli => "cli",
        }
    }
}

/// Who did something: the credential's kind and an id that names it without revealing it
/// (`admin`, an account token's id, an SSO subject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

/// How far a caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The operator: every account.
    All,
    /// A tenant: one account, with a role.
    Account { name: String, role: Role },
}

/// The caller of an `/api/v1` route, settled by the guard before the handler runs (see
/// [`crate::auth::admit`]) and read by handlers as an extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub actor: Actor,
    pub scope: Scope,
    /// The peer's address, when the server was started with connection info.
    pub address: Option<IpAddr>,
}

impl Caller {
    pub fn admin(address: Option<IpAddr>) -> Caller {
        Caller {
            actor: Actor {
                kind: ActorKind::Admin,
                id: "admin".into(),
            },
            scope: Scope::All,
            address,
        }
    }

    /// The one account a tenant sees; `None` for the operator.
    pub fn account(&self) -> Option<&str> {
        match &self.scope {
            Scope::All => None,
            Scope::Account { name, .. } => Some(name),
        }
    }

    pub fn role(&self) -> Option<Role> {
        match &self.scope {
            Scope::All => None,
            Scope::Account { role, .. } => Some(*role),
        }
    }

    /// Whether data of `account` is visible to this caller.
    pub fn sees(&self, account: &str) -> bool {
        self.account().is_none_or(|own| own == account)
    }

    /// Whether something that may belong to an account (`None`: to nobody, that is global,
    /// like a global webhook) is visible to this caller. Only the operator sees global
    /// things.
    pub fn sees_owned(&self, account: Option<&str>) -> bool {
        match (self.account(), account) {
            (None, _) => true,
            (Some(own), Some(account)) => own == account,
            (Some(_), None) => false,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.scope == Scope::All
    }

    /// Narrows a listing's account filter to what the caller sees: a tenant's is set to
    /// its own account; `false` when it asked for another account (whose records it sees
    /// none of, so the listing is empty).
    pub fn narrow(&self, asked: &mut Option<String>) -> bool {
        let Some(own) = self.account() else {
            return true;
        };
        if asked.as_deref().is_some_and(|asked| asked != own) {
            return false;
        }
        *asked = Some(own.to_owned());
        true
    }

    /// The account a tenant's new key or webhook belongs to: always its own. Naming
    /// another is refused in the words used for an account that does not exist.
    pub fn own_account(&self, given: &mut Option<String>) -> Result<(), ApiError> {
        if !self.narrow(given) {
            return Err(ApiError::invalid(
                "account",
                format!(
                    "there is no account named {:?}",
                    given.as_deref().unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    /// Set by the guard of every `/api/v1` route; its absence is a wiring mistake, answered
    /// as if no token had been given rather than as the operator.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized {
                code: "invalid_admin_token",
                message: crate::auth::API_TOKEN_MESSAGE,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(account: &str, role: Role) -> Caller {
        Caller {
            actor: Actor {
                kind: ActorKind::Token,
                id: "t1".into(),
            },
            scope: Scope::Account {
                name: account.into(),
                role,
            },
            address: None,
        }
    }

    #[test]
    fn a_tenant_sees_its_own_account_only_and_nothing_global() {
        let acme = tenant("acme", Role::Viewer);
        assert!(acme.sees("acme") && !acme.sees("globex") && !acme.sees(""));
        assert!(acme.sees_owned(Some("acme")));
        assert!(!acme.sees_owned(Some("globex")) && !acme.sees_owned(None));
        let admin = Caller::admin(None);
        assert!(admin.sees("acme") && admin.sees_owned(None) && admin.is_admin());
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in [Role::Owner, Role::Viewer] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("Owner"), None);
        assert_eq!(Role::parse("admin"), None);
    }
}
