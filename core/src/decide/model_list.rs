//! Model lists that speak for the key: `GET /v1/models` (OpenAI, Anthropic, Gemini's
//! OpenAI-compatible path) and `GET /v1beta/models` (Gemini) with a model-restricted key
//! answer 200 with only the models the key may use. SDKs and chat UIs call these at
//! start-up; a 403 there breaks them.
//!
//! The upstream's own list is filtered (OpenAI and Anthropic `{"data": [{"id": ...}]}`,
//! Gemini `{"models": [{"name": "models/..."}]}`); where the upstream has none (an error
//! answer), the key's and its group's named models are listed in OpenAI's shape.

use serde_json::{json, Value};

use crate::decide::model::ModelList;

/// What a restricted key may use: both lists must allow a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    pub key: ModelList,
    pub group: ModelList,
}

impl Allowed {
    pub fn allows(&self, model: &str) -> bool {
        // Gemini names its models `models/{id}`.
        let id = model.strip_prefix("models/").unwrap_or(model);
        self.key.allows(id) && self.group.allows(id)
    }

    /// The models the lists name (patterns left out: they name no one model) that both
    /// allow, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = [&self.key, &self.group]
            .into_iter()
            .filter_map(|list| match list {
                ModelList::Only(models) => Some(models.iter()),
                ModelList::Any => None,
            })
            .flatten()
            .filter(|m| !m.ends_with('*') && self.allows(m))
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The upstream's list with only the allowed models; `None` if `body` is not a list this
/// module knows (then [`own_list`] answers instead).
pub fn filter(body: &[u8], allowed: &Allowed) -> Option<Vec<u8>> {
    let mut list: Value = serde_json::from_slice(body).ok()?;
    let (field, id) = if list.get("data").is_some_and(Value::is_array) {
        ("data", "id")
    } else if list.get("models").is_some_and(Value::is_array) {
        ("models", "name")
    } else {
        return None;
    };
    let entries = list.get_mut(field)?.as_array_mut()?;
    entries.retain(|entry| {
        entry
            .get(id)
            .and_then(Value::as_str)
            .is_some_and(|name| allowed.allows(name))
    });
    // Anthropic's pages name their first and last ids: they now say what is shown.
    let first = entries.first().and_then(|e| e.get(id)).cloned();
    let last = entries.last().and_then(|e| e.get(id)).cloned();
    if let Some(object) = list.as_object_mut() {
        for (name, value) in [("first_id", first), ("last_id", last)] {
            if object.contains_key(name) {
                object.insert(name.into(), value.unwrap_or(Value::Null));
            }
        }
    }
    serde_json::to_vec(&list).ok()
}

/// The allowed models in OpenAI's list shape, for when the upstream has no list.
pub fn own_list(allowed: &Allowed) -> Vec<u8> {
    let data: Vec<Value> = allowed
        .names()
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "keygate"}))
        .collect();
    json!({"object": "list", "data": data})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn allowed(key: &[&str], group: &[&str]) -> Allowed {
        let list = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Allowed {
            key: ModelList::for_key(&list(key)),
            group: ModelList::for_group(&list(group)),
        }
    }

    #[test]
    fn an_upstream_list_keeps_only_the_keys_models() {
        let key = allowed(&["gpt-4o-mini", "claude-*", "gemini-2.0-flash"], &["*"]);
        let openai = br#"{"object":"list","data":[{"id":"gpt-4o","object":"model"},
            {"id":"gpt-4o-mini","object":"model"},{"id":"o3"}]}"#;
        let out: Value = serde_json::from_slice(&filter(openai, &key).unwrap()).unwrap();
        assert_eq!(
            out["data"],
            json!([{"id": "gpt-4o-mini", "object": "model"}])
        );
        assert_eq!(out["object"], "list");
        let anthropic = br#"{"data":[{"id":"claude-haiku-4-5","type":"model"},
            {"id":"other"}],"has_more":false,"first_id":"claude-haiku-4-5","last_id":"other"}"#;
        let out: Value = serde_json::from_slice(&filter(anthropic, &key).unwrap()).unwrap();
        assert_eq!(out["data"].as_array().unwrap().len(), 1);
        assert_eq!(out["last_id"], "claude-haiku-4-5");
        let gemini =
            br#"{"models":[{"name":"models/gemini-2.0-flash"},{"name":"models/gemini-pro"}]}"#;
        let out: Value = serde_json::from_slice(&filter(gemini, &key).unwrap()).unwrap();
        assert_eq!(out["models"], json!([{"name": "models/gemini-2.0-flash"}]));
        assert_eq!(filter(b"<html>", &key), None);
        assert_eq!(filter(br#"{"error":{}}"#, &key), None);
    }

    #[test]
    fn without_an_upstream_list_the_named_models_both_lists_allow() {
        let key = allowed(&["gpt-4o-mini", "gpt-4o", "gpt-*"], &["gpt-4o-mini", "o3"]);
        let out: Value = serde_json::from_slice(&own_list(&key)).unwrap();
        let ids: Vec<&str> = out["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["gpt-4o-mini"]);
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever an upstream answers, no panic, and a filtered list holds only
        /// allowed models.
        #[test]
        fn any_answer_is_filtered_without_a_panic(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            ids in proptest::collection::vec("[a-z0-9.-]{1,12}", 0..8),
        ) {
            let allowed = Allowed {
                key: ModelList::Only(vec!["a*".into()]),
                group: ModelList::Any,
            };
            let _ = filter(&body, &allowed);
            let data: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
            let list = json!({"data": data}).to_string();
            let out: Value = serde_json::from_slice(&filter(list.as_bytes(), &allowed).unwrap()).unwrap();
            for entry in out["data"].as_array().unwrap() {
                prop_assert!(entry["id"].as_str().unwrap().starts_with('a'));
            }
        }
    }
}
