//! Which model a request asks for, and whether a key's or group's model list allows it.
//!
//! The model comes from the path where the provider puts it there (Gemini
//! `/v1beta/models/{model}:{action}`, Azure `/openai/deployments/{deployment}/...`), and
//! otherwise from the JSON body's `model` field, which is read only when a rule needs it.

use serde::Deserialize;

/// A list of allowed models. `Any` for an empty key list (no restriction of its own) and
/// for a group list containing `"*"`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelList {
    Any,
    Only(Vec<String>),
}

impl ModelList {
    /// A key's own list: empty means "whatever the group allows".
    pub fn for_key(models: &[String]) -> ModelList {
        if models.is_empty() {
            ModelList::Any
        } else {
            Self::for_group(models)
        }
    }

    /// A group's list: `["*"]` allows every model, an empty list none.
    pub fn for_group(models: &[String]) -> ModelList {
        if models.iter().any(|m| m == "*") {
            ModelList::Any
        } else {
            ModelList::Only(models.to_vec())
        }
    }

    pub fn is_restricted(&self) -> bool {
        matches!(self, ModelList::Only(_))
    }

    pub fn allows(&self, model: &str) -> bool {
        match self {
            ModelList::Any => true,
            ModelList::Only(models) => models.iter().any(|m| m == model),
        }
    }
}

/// The model named by the request path, if the provider puts it there.
pub fn from_path(path: &str) -> Option<&str> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if let Some(rest) = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))
    {
        // Gemini: `{model}:{action}`.
        let model = rest.split_once(':').map(|(m, _)| m)?;
        return (!model.is_empty() && !model.contains('/')).then_some(model);
    }
    let rest = path.strip_prefix("/openai/deployments/")?;
    let (deployment, _) = rest.split_once('/')?;
    (!deployment.is_empty()).then_some(deployment)
}

/// Whether a model name can be sent on as the `x-keygate-model` header: printable ASCII,
/// at most 256 characters (a client's body could hold anything).
pub fn is_header_safe(model: &str) -> bool {
    !model.is_empty() && model.len() <= 256 && model.bytes().all(|b| b.is_ascii_graphic())
}

#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The body is not a JSON object.
    NotJson,
}

/// What a request body tells: its model, and the output limit it sets (OpenAI
/// `max_tokens`, `max_completion_tokens` or `max_output_tokens`, Anthropic `max_tokens`,
/// Gemini `generationConfig.maxOutputTokens`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub model: Option<String>,
    pub max_output_tokens: Option<u64>,
}

/// The body's facts; fields of the wrong type read as absent.
pub fn facts(body: &[u8]) -> Result<Facts, BodyError> {
    #[derive(Deserialize)]
    struct Request {
        #[serde(default)]
        model: Option<serde_json::Value>,
        #[serde(default)]
        max_tokens: Option<serde_json::Value>,
        #[serde(default)]
        max_completion_tokens: Option<serde_json::Value>,
        #[serde(default)]
        max_output_tokens: Option<serde_json::Value>,
        #[serde(default, rename = "generationConfig")]
        generation_config: Option<GenerationConfig>,
    }
    #[derive(Deserialize)]
    struct GenerationConfig {
        #[serde(default, rename = "maxOutputTokens")]
        max_output_tokens: Option<serde_json::Value>,
    }
    // serde would also read a struct from a JSON array; a request body is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(BodyError::NotJson);
    }
    let request: Request = serde_json::from_slice(body).map_err(|_| BodyError::NotJson)?;
    let limit = [
        request.max_completion_tokens,
        request.max_tokens,
        request.max_output_tokens,
        request.generation_config.and_then(|g| g.max_output_tokens),
    ]
    .into_iter()
    .flatten()
    .find_map(|v| v.as_u64());
    Ok(Facts {
        model: match request.model {
            Some(serde_json::Value::String(model)) => Some(model),
            _ => None,
        },
        max_output_tokens: limit,
    })
}

/// The body's `model` field; `Ok(None)` when a JSON object has none (or not a string).
pub fn from_body(body: &[u8]) -> Result<Option<String>, BodyError> {
    facts(body).map(|f| f.model)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn list(models: &[&str]) -> Vec<String> {
        models.iter().map(|m| m.to_string()).collect()
    }

    #[test]
    fn key_lists_restrict_only_when_not_empty() {
        assert_eq!(ModelList::for_key(&[]), ModelList::Any);
        let key = ModelList::for_key(&list(&["gpt-4o", "gpt-4o-mini"]));
        assert!(key.is_restricted());
        assert!(key.allows("gpt-4o-mini"));
        assert!(!key.allows("gpt-4"));
        assert!(!key.allows("GPT-4O"));
    }

    #[test]
    fn group_lists_allow_all_with_a_star_and_nothing_when_empty() {
        assert_eq!(ModelList::for_group(&list(&["*"])), ModelList::Any);
        assert_eq!(ModelList::for_group(&list(&["a", "*"])), ModelList::Any);
        assert!(!ModelList::for_group(&[]).allows("anything"));
    }

    #[test]
    fn models_are_found_in_gemini_and_azure_paths() {
        let cases = [
            (
                "/v1beta/models/gemini-2.0-flash:generateContent",
                Some("gemini-2.0-flash"),
            ),
            (
                "/v1beta/models/gemini-pro:streamGenerateContent?alt=sse&key=x",
                Some("gemini-pro"),
            ),
            ("/v1/models/gemini-pro:countTokens", Some("gemini-pro")),
            (
                "/openai/deployments/my-gpt/chat/completions?api-version=1",
                Some("my-gpt"),
            ),
            ("/v1beta/models/:generateContent", None),
            ("/v1beta/models/list", None),
            ("/openai/deployments/", None),
            ("/v1/chat/completions", None),
            ("/v1/models", None),
        ];
        for (path, model) in cases {
            assert_eq!(from_path(path), model, "{path}");
        }
    }

    #[test]
    fn only_printable_model_names_become_headers() {
        assert!(is_header_safe("gpt-4o-mini"));
        assert!(is_header_safe("models/gemini-1.5:latest"));
        assert!(!is_header_safe(""));
        assert!(!is_header_safe("a b"));
        assert!(!is_header_safe("x\r\ny: z"));
        assert!(!is_header_safe("modèle"));
        assert!(!is_header_safe(&"m".repeat(257)));
    }

    #[test]
    fn output_limits_are_read_in_each_providers_spelling() {
        let limit = |body: &str| facts(body.as_bytes()).unwrap().max_output_tokens;
        assert_eq!(limit(r#"{"model":"m","max_tokens":64}"#), Some(64));
        assert_eq!(
            limit(r#"{"max_completion_tokens":32,"max_tokens":64}"#),
            Some(32)
        );
        assert_eq!(limit(r#"{"max_output_tokens":16}"#), Some(16));
        assert_eq!(
            limit(r#"{"contents":[],"generationConfig":{"maxOutputTokens":8}}"#),
            Some(8)
        );
        assert_eq!(limit(r#"{"max_tokens":"lots"}"#), None);
        assert_eq!(limit(r#"{"max_tokens":-1}"#), None);
        assert_eq!(limit(r#"{"messages":[]}"#), None);
    }

    #[test]
    fn the_body_model_is_read_from_json_objects_only() {
        assert_eq!(
            from_body(br#"{"model":"gpt-4o","messages":[]}"#),
            Ok(Some("gpt-4o".into()))
        );
        assert_eq!(from_body(br#"{"messages":[{"content":"x"}]}"#), Ok(None));
        assert_eq!(from_body(br#"{"model":42}"#), Ok(None));
        assert_eq!(from_body(b"not json"), Err(BodyError::NotJson));
        assert_eq!(from_body(b""), Err(BodyError::NotJson));
        assert_eq!(from_body(br#"["model"]"#), Err(BodyError::NotJson));
        assert_eq!(
            from_body(br#"{"model":"a"} trailing"#),
            Err(BodyError::NotJson)
        );
    }
}
