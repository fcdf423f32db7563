//! What an alert says: its type, whom it is about, and the JSON payload every delivery
//! of it sends, byte for byte. A payload names a key by id, name and account, never by
//! its secret or hash.

use serde_json::{json, Map, Value};

use crate::expiry;
use crate::random;

/// The types of event a webhook can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A key's spend crossed a threshold of its budget (once per period).
    KeyThreshold,
    /// An account's spend crossed a threshold of its period limit.
    AccountThreshold,
    /// A key used its whole budget up.
    KeyExhausted,
    /// An account's balance reached 0, or its period limit was used up.
    AccountExhausted,
    /// A key expires within the configured window.
    KeyExpiring,
    KeyDisabled,
    KeyRotated,
    /// A key's `rotate_by` date has passed.
    KeyRotationDue,
    /// A key's spend on some models crossed a threshold of its cap on them (once per
    /// period).
    CapThreshold,
    /// A key used its whole cap on some models up.
    CapExhausted,
    /// Sent by `POST /api/v1/webhooks/{id}/test` to that webhook alone.
    Test,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::KeyThreshold,
        Kind::AccountThreshold,
        Kind::KeyExhausted,
        Kind::AccountExhausted,
        Kind::KeyExpiring,
        Kind::KeyDisabled,
        Kind::KeyRotated,
        Kind::KeyRotationDue,
        Kind::CapThreshold,
        Kind::CapExhausted,
        Kind::Test,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::KeyThreshold => "key.threshold",
            Kind::AccountThreshold => "account.threshold",
            Kind::KeyExhausted => "key.exhausted",
            Kind::AccountExhausted => "account.exhausted",
            Kind::KeyExpiring => "key.expiring",
            Kind::KeyDisabled => "key.disabled",
            Kind::KeyRotated => "key.rotated",
            Kind::KeyRotationDue => "key.rotation_due",
            Kind::CapThreshold => "model_cap.threshold",
            Kind::CapExhausted => "model_cap.exhausted",
            Kind::Test => "test",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// Whom an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Key {
        id: String,
        name: String,
        account: String,
    },
    Account {
        name: String,
    },
    /// A key's cap on the models `model` (a name or pattern, as stored), counting
    /// `unit` (`credits` or `tokens`).
    Cap {
        id: String,
        name: String,
        account: String,
        model: String,
        unit: &'static str,
    },
    /// A webhook's own test.
    Webhook {
        id: String,
    },
}

impl Subject {
    /// How marks and events name it: `k:<key id>`, `a:<account>`, `m:<key id>:<model>`,
    /// `w:<webhook id>`.
    pub fn mark(&self) -> String {
        match self {
            Subject::Key { id, .. } => format!("k:{id}"),
            Subject::Cap { id, model, .. } => format!("m:{id}:{model}"),
            Subject::Account { name } => format!("a:{name}"),
            Subject::Webhook { id } => format!("w:{id}"),
        }
    }

    /// The account whose webhooks hear of it (global webhooks hear of everything).
    pub fn account(&self) -> Option<&str> {
        match self {
            Subject::Key { account, .. } | Subject::Cap { account, .. } => Some(account),
            Subject::Account { name } => Some(name),
            Subject::Webhook { .. } => None,
        }
    }

    fn describe(&self) -> (&'static str, Value) {
        match self {
            Subject::Key { id, name, account }
            | Subject::Cap {
                id, name, account, ..
            } => ("key", json!({"id": id, "name": name, "account": account})),
            Subject::Account { name } => ("account", json!({"name": name})),
            Subject::Webhook { id } => ("webhook", json!({"id": id})),
        }
    }
}

/// An event ready for the outbox: `payload` is what each delivery sends.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: String,
    pub kind: Kind,
    pub subject: String,
    pub account: Option<String>,
    pub payload: String,
    pub created_at: i64,
}

impl NewEvent {
    /// `{"id", "type", "created_at", "data": {<subject>, ...details}}`, with a fresh id.
    pub fn new(
        kind: Kind,
        subject: &Subject,
        details: Map<String, Value>,
        now: i64,
    ) -> Result<NewEvent, getrandom::Error> {
        let id = format!("evt_{}", random::base62(24)?);
        let (name, about) = subject.describe();
        let mut data = Map::new();
        data.insert(name.to_owned(), about);
        data.extend(details);
        let payload = json!({
            "id": id,
            "type": kind.as_str(),
            "created_at": expiry::to_rfc3339(now),
            "data": data,
        });
        Ok(NewEvent {
            id,
            kind,
            subject: subject.mark(),
            account: subject.account().map(str::to_owned),
            payload: payload.to_string(),
            created_at: now,
        })
    }
}

/// A unix time as the payloads show it (RFC 3339), `null` when out of range.
pub fn time(unix: i64) -> Value {
    expiry::to_rfc3339(unix).map_or(Value::Null, Value::String)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_their_names() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("key.*"), None);
    }

    #[test]
    fn a_payload_names_the_key_and_carries_no_secret() {
        let key = Subject::Key {
            id: "key_1".into(),
            name: "ci".into(),
            account: "acme".into(),
        };
        let mut details = Map::new();
        details.insert("threshold".into(), json!(80));
        let event = NewEvent::new(Kind::KeyThreshold, &key, details, 1_700_000_000).unwrap();
        let body: Value = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(body["id"], event.id.as_str());
        assert!(event.id.starts_with("evt_") && event.id.len() == 28);
        assert_eq!(body["type"], "key.threshold");
        assert_eq!(body["created_at"], "2023-11-14T22:13:20Z");
        assert_eq!(
            body["data"],
            json!({"key": {"id": "key_1", "name": "ci", "account": "acme"}, "threshold": 80})
        );
        assert_eq!(
            (event.subject.as_str(), event.account.as_deref()),
            ("k:key_1", Some("acme"))
        );
        let other = NewEvent::new(Kind::KeyThreshold, &key, Map::new(), 0).unwrap();
        assert_ne!(other.id, event.id);
    }
}
