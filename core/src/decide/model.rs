//! Which model a request asks for, and whether a key's or group's model list allows it.
//!
//! The model comes from the path where the provider puts it there (Gemini
//! `/v1beta/models/{model}:{action}`, Azure `/openai/deployments/{deployment}/...`), and
//! otherwise from the JSON body's `model` field, which is read only when a rule needs it.

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
            ModelList::Only(models) => models.iter().any(|m| specificity(m, model).is_some()),
        }
    }
}

/// How well a model-list or price entry names `model`: `None` if it does not; an exact
/// name beats every pattern; a pattern is a name ending in `*` (`gpt-4o-*`, `claude-*`,
/// `*` alone for any model) and names every model that starts with what precedes the `*`,
/// the longer that is the better. Names are compared exactly (case included), as
/// providers do.
pub fn specificity(entry: &str, model: &str) -> Option<usize> {
    if entry == model {
        return Some(usize::MAX);
    }
    let prefix = entry.strip_suffix('*')?;
    model.starts_with(prefix).then_some(prefix.len())
}

/// The value `map` holds for `model`: under its own name, else under the most specific
/// pattern that names it (see [`specificity`]).
pub fn lookup<T: Copy>(map: &std::collections::HashMap<String, T>, model: &str) -> Option<T> {
    if let Some(value) = map.get(model) {
        return Some(*value);
    }
    let patterns = map.keys().filter(|name| name.ends_with('*'));
    map.get(most_specific(patterns.map(String::as_str), model)?)
        .copied()
}

/// The entry of `entries` that names `model` best (see [`specificity`]).
pub fn most_specific<'a>(
    entries: impl IntoIterator<Item = &'a str>,
    model: &str,
) -> Option<&'a str> {
    entries
        .into_iter()
        .filter_map(|e| specificity(e, model).map(|s| (s, e)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, e)| e)
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

/// At most `max` bytes of `text` (cut at a character boundary), without control
/// characters: what a usage record may carry (the filter sends, the key-service stores).
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
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
    /// OpenAI Responses `"background": true`: the answer is fetched later, elsewhere.
    pub background: bool,
}

/// The facts of a whole JSON body (see `body_scan`, which reads one as it arrives).
pub fn facts(body: &[u8]) -> Result<Facts, BodyError> {
    let mut scan = super::body_scan::BodyScan::new();
    scan.feed(body);
    scan.facts()
}

/// The boundary of a `multipart/form-data` content type (`None` for any other type).
pub fn form_boundary(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        // RFC 2046: 1 to 70 characters.
        (1..=70).contains(&value.len()).then_some(value)
    })
}

/// The facts of a `multipart/form-data` body (uploads such as audio transcriptions): its
/// `model` form field. A body whose parts cannot be found is `NotJson` (not a form, as
/// not JSON for a JSON body); a form without a `model` field has no model.
/// The filter reads an upload as it arrives (`form_scan`); this whole-body form is what
/// that is tested against.
#[cfg(test)]
pub fn form_facts(body: &[u8], boundary: &str) -> Result<Facts, BodyError> {
    let delimiter = [b"--", boundary.as_bytes()].concat();
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    // The first delimiter may follow a preamble; later ones follow a CRLF.
    let mut at = find(body, &delimiter).ok_or(BodyError::NotJson)? + delimiter.len();
    let mut next_delimiter = Vec::with_capacity(delimiter.len() + 2);
    next_delimiter.extend_from_slice(b"\r\n");
    next_delimiter.extend_from_slice(&delimiter);
    loop {
        let rest = body.get(at..).ok_or(BodyError::NotJson)?;
        if rest.starts_with(b"--") {
            // The closing delimiter: no model field.
            return Ok(Facts::default());
        }
        let rest = rest.strip_prefix(b"\r\n").ok_or(BodyError::NotJson)?;
        let head_end = find(rest, b"\r\n\r\n").ok_or(BodyError::NotJson)?;
        let content = rest.get(head_end + 4..).ok_or(BodyError::NotJson)?;
        let end = find(content, &next_delimiter).ok_or(BodyError::NotJson)?;
        let head = String::from_utf8_lossy(rest.get(..head_end).unwrap_or_default());
        if is_model_field(&head) {
            let value = std::str::from_utf8(content.get(..end).unwrap_or_default())
                .map_err(|_| BodyError::NotJson)?
                .trim();
            return Ok(Facts {
                model: (!value.is_empty()).then(|| value.to_string()),
                ..Facts::default()
            });
        }
        // Past this part's content and the CRLF and delimiter after it.
        at = body.len() - content.len() + end + next_delimiter.len();
    }
}

/// Whether a part's headers name it the form field `model`.
pub(crate) fn is_model_field(head: &str) -> bool {
    head.split("\r\n").any(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        name.trim().eq_ignore_ascii_case("content-disposition")
            && value.split(';').skip(1).any(|param| {
                param.split_once('=').is_some_and(|(n, v)| {
                    n.trim().eq_ignore_ascii_case("name") && v.trim().trim_matches('"') == "model"
                })
            })
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
    fn patterns_name_dated_aliases_and_the_most_specific_wins() {
        let key = ModelList::for_key(&list(&["gpt-4o-*", "claude-3-5-haiku"]));
        assert!(key.allows("gpt-4o-2024-11-20"));
        assert!(key.allows("gpt-4o-mini"));
        assert!(!key.allows("gpt-4o"), "the pattern needs its dash");
        assert!(
            !key.allows("claude-3-5-haiku-latest"),
            "no star, no pattern"
        );
        let prices = ["*", "gpt-4o-*", "gpt-4o-mini*", "gpt-4o-mini", "gpt-*-mini"];
        let best = |model| most_specific(prices.iter().copied(), model);
        assert_eq!(best("gpt-4o-mini"), Some("gpt-4o-mini"));
        assert_eq!(best("gpt-4o-mini-2024-07-18"), Some("gpt-4o-mini*"));
        assert_eq!(best("gpt-4o-2024-11-20"), Some("gpt-4o-*"));
        assert_eq!(best("o3"), Some("*"));
        assert_eq!(best("gpt-5-mini"), Some("*"), "a star inside is no pattern");
        assert_eq!(most_specific(["gpt-4o"], "gpt-4o-2024-11-20"), None);
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

    fn form(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut body = b"preamble\r\n".to_vec();
        for (head, content) in parts {
            body.extend_from_slice(format!("--XyZ\r\n{head}\r\n\r\n{content}\r\n").as_bytes());
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    }

    #[test]
    fn the_model_of_an_upload_is_its_form_field() {
        assert_eq!(
            form_boundary("multipart/form-data; boundary=XyZ"),
            Some("XyZ")
        );
        assert_eq!(
            form_boundary("Multipart/Form-Data; charset=x; Boundary=\"a b\""),
            Some("a b")
        );
        assert_eq!(form_boundary("application/json"), None);
        assert_eq!(form_boundary("multipart/form-data"), None);
        let upload = form(&[
            (
                "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav",
                "RIFF\u{0}\u{1}--Xy model",
            ),
            ("content-disposition: form-data; name=model", "whisper-1"),
        ]);
        assert_eq!(
            form_facts(&upload, "XyZ").unwrap().model.as_deref(),
            Some("whisper-1")
        );
        let first = form(&[(
            "Content-Disposition: form-data; name=\"model\"",
            " gpt-4o-transcribe ",
        )]);
        assert_eq!(
            form_facts(&first, "XyZ").unwrap().model.as_deref(),
            Some("gpt-4o-transcribe")
        );
        let none = form(&[("Content-Disposition: form-data; name=\"models\"", "x")]);
        assert_eq!(form_facts(&none, "XyZ").unwrap().model, None);
        assert_eq!(form_facts(b"not a form", "XyZ"), Err(BodyError::NotJson));
        // A part cut before its end is not a form.
        assert_eq!(
            form_facts(
                b"--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\nwhis",
                "XyZ"
            ),
            Err(BodyError::NotJson)
        );
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes, any boundary: no panic.
        #[test]
        fn any_form_is_read_without_a_panic(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            boundary in "[a-zA-Z0-9'()+_,./:=? -]{1,70}",
        ) {
            let _ = form_facts(&body, &boundary);
        }

        /// The model field is found whatever comes before it.
        #[test]
        fn the_model_field_is_found_after_any_file(
            file in proptest::collection::vec(any::<u8>(), 0..256),
            model in "[a-z0-9.-]{1,30}",
        ) {
            let mut body = b"--B0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n".to_vec();
            body.extend_from_slice(&file);
            body.extend_from_slice(b"\r\n--B0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n");
            body.extend_from_slice(model.as_bytes());
            body.extend_from_slice(b"\r\n--B0undary--\r\n");
            // A file that itself holds the delimiter would end its part early: skip it.
            prop_assume!(!file.windows(10).any(|w| w == b"--B0undary"));
            prop_assert_eq!(form_facts(&body, "B0undary").unwrap().model, Some(model));
        }
    }

    proptest! {
        /// JSON bodies: any bytes, no panic; any model string is read back.
        #[test]
        fn any_json_body_is_read_without_a_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = facts(&body);
        }

        #[test]
        fn the_json_model_is_read_back(model in ".{0,40}", max in any::<u64>()) {
            let body = serde_json::json!({"model": model, "max_tokens": max}).to_string();
            let got = facts(body.as_bytes()).unwrap();
            prop_assert_eq!(got.model, Some(model));
            prop_assert_eq!(got.max_output_tokens, Some(max));
        }

        /// Paths: no panic, and a model is never empty or holds a slash.
        #[test]
        fn any_path_gives_a_clean_model_or_none(path in "[/a-zA-Z0-9:.%?-]{0,60}") {
            if let Some(model) = from_path(&path) {
                prop_assert!(!model.is_empty() && !model.contains('/'));
            }
        }
    }
}
