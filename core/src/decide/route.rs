//! What a request's path asks for, as the upstream will route it: the path is normalised
//! the way lenient upstreams and Envoy's `normalize_path` / `merge_slashes` read it
//! (percent-escapes decoded, `//` merged, `.` and `..` resolved, a trailing `/` dropped,
//! case folded), so `/v1/chat/complet%69ons` and `/V1//chat/completions/` are the chat
//! API like `/v1/chat/completions`, and cannot pass as something cheaper.
//!
//! Every path is one of:
//! - `Metered(api)`: an LLM API whose usage keygate reads from the response;
//! - `Free`: what providers do not charge for (model lists, token counting, moderation);
//! - `Unmetered`: anything else (batches, files, speech, fine-tuning, realtime, vector
//!   stores, unknown paths). Keys and accounts with a limit are refused these
//!   (`endpoint_not_metered`): keygate cannot tell what they cost.

use std::borrow::Cow;

use crate::usage::scan::Api;

/// What a path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metered(Api),
    Free,
    Unmetered,
}

/// Why a path cannot be normalised: it hides a separator (`/`, `\`, `?`, `#`) or a
/// control character in an escape, or its escapes are malformed. Such a path is refused rather than guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPath;

/// The path part of `path` (no query, no fragment), normalised: percent-escapes decoded,
/// repeated slashes merged, `.` and `..` segments resolved, no trailing slash (case is
/// kept: model names in paths are case-sensitive; `classify` folds it). An escaped `/` or `\` (`%2F`, `%5C`) or control character, or a bad
/// escape, is a `BadPath` (Envoy's configs here reject escaped slashes too).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, BadPath> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    // Most paths are already normal: no copy for them (this runs on every request).
    let plain = path.starts_with('/')
        && !path.contains(['%', '\\'])
        && !path.contains("//")
        && !path.ends_with('/')
        && !path.split('/').any(|s| s == "." || s == "..");
    if plain || path == "/" {
        return Ok(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(BadPath)?;
            let value = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(BadPath)?;
            // An escaped separator (`/`, `\`, `?`, `#`) would read one way here and
            // another upstream.
            if matches!(value, b'/' | b'\\' | b'?' | b'#') || value.is_ascii_control() {
                return Err(BadPath);
            }
            decoded.push(value);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| BadPath)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for segment in segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// What a normalised path (see [`normalize`]) asks for, by `method` (upper case); case
/// is folded, as lenient upstreams fold it.
pub fn classify(method: &str, path: &str) -> Route {
    // Folded only when needed: no copy for the usual lower-case path.
    let path = if path.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(path.to_ascii_lowercase())
    } else {
        Cow::Borrowed(path)
    };
    if let Some(api) = metered(&path) {
        return Route::Metered(api);
    }
    if is_free(method, &path) {
        return Route::Free;
    }
    Route::Unmetered
}

/// The metered APIs, by the end of their path (with any version prefix, Azure's
/// `/openai/deployments/{name}/...` included).
fn metered(path: &str) -> Option<Api> {
    // Gemini: `/{version}/models/{model}:generateContent` or `:streamGenerateContent`.
    let last = path.rsplit('/').next().unwrap_or_default();
    if let Some((_, action)) = last.rsplit_once(':') {
        return match action {
            "generatecontent" | "streamgeneratecontent" if path.contains("/models/") => {
                Some(Api::Gemini)
            }
            _ => None,
        };
    }
    let ends = |suffix: &str| path.ends_with(suffix);
    if ends("/chat/completions") || ends("/completions") || ends("/embeddings") {
        Some(Api::OpenAi)
    } else if ends("/responses") {
        Some(Api::Responses)
    } else if ends("/messages") {
        Some(Api::Anthropic)
    } else if ends("/images/generations") || ends("/images/edits") {
        Some(Api::Images)
    } else if ends("/audio/transcriptions") || ends("/audio/translations") {
        Some(Api::Audio)
    } else {
        None
    }
}

/// Whether a request reads a whole model list (`GET /v1/models`, Gemini's
/// `GET /v1beta/models`): for a model-restricted key it is answered with the key's models.
pub fn is_model_list(method: &str, path: &str) -> bool {
    (method == "GET" || method == "HEAD")
        && ["/v1/models", "/v1beta/models"]
            .iter()
            .any(|list| path.eq_ignore_ascii_case(list))
}

/// The model a request reads from a model list (`GET /v1/models/{id}`), if it does.
pub fn listed_model<'a>(method: &str, path: &'a str) -> Option<&'a str> {
    if method != "GET" && method != "HEAD" {
        return None;
    }
    let id = ["/v1/models/", "/v1beta/models/"]
        .iter()
        .find_map(|prefix| {
            let head = path.get(..prefix.len())?;
            head.eq_ignore_ascii_case(prefix)
                .then(|| path.get(prefix.len()..))
                .flatten()
        })?;
    (!id.is_empty() && !id.contains('/') && !id.contains(':')).then_some(id)
}

/// Free calls: reading model lists, counting tokens, moderation, keygate's own key view.
fn is_free(method: &str, path: &str) -> bool {
    let read = method == "GET" || method == "HEAD";
    // The list, or one model of it (`/v1/models/{id}`).
    let under_models = |prefix: &str| {
        path.strip_prefix(prefix).is_some_and(|rest| {
            rest.is_empty() || rest.strip_prefix('/').is_some_and(|id| !id.contains('/'))
        })
    };
    (read && (under_models("/v1/models") || under_models("/v1beta/models")))
        || path.ends_with(":counttokens")
        || path.ends_with("/messages/count_tokens")
        || path.ends_with("/moderations")
        || path == "/v1/keygate/key"
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn paths_are_read_as_a_lenient_upstream_reads_them() {
        for (path, normal) in [
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/v1/chat/completions/", "/v1/chat/completions"),
            ("/v1/chat/complet%69ons", "/v1/chat/completions"),
            ("/V1//Chat/Completions?x=1#f", "/V1/Chat/Completions"),
            ("/v1/models/../chat/./completions", "/v1/chat/completions"),
            ("/../../v1/embeddings", "/v1/embeddings"),
            ("/v1\\chat\\completions", "/v1/chat/completions"),
            ("", "/"),
            ("/", "/"),
        ] {
            assert_eq!(normalize(path).as_deref(), Ok(normal), "{path}");
        }
        for bad in [
            "/v1/chat%2Fcompletions",
            "/v1/chat%2fcompletions",
            "/v1/chat%5Ccompletions",
            "/v1/chat/completions%3Fx=1",
            "/v1/chat/completions%23",
            "/v1/chat/completions%00",
            "/v1/chat/completions%",
            "/v1/chat/completions%zz",
            "/v1/%ff",
        ] {
            assert_eq!(normalize(bad), Err(BadPath), "{bad}");
        }
    }

    #[test]
    fn model_lists_and_their_models_are_told_apart() {
        assert!(is_model_list("GET", "/v1/models"));
        assert!(is_model_list("GET", "/v1beta/models"));
        assert!(!is_model_list("POST", "/v1/models"));
        assert!(!is_model_list("GET", "/v1/models/gpt-4o"));
        assert_eq!(listed_model("GET", "/v1/models/gpt-4o"), Some("gpt-4o"));
        assert_eq!(
            listed_model("GET", "/v1beta/models/gemini-pro"),
            Some("gemini-pro")
        );
        assert_eq!(listed_model("DELETE", "/v1/models/gpt-4o"), None);
        assert_eq!(listed_model("GET", "/v1/models/g:generateContent"), None);
        assert_eq!(listed_model("GET", "/v1/models/"), None);
        assert_eq!(listed_model("GET", "/v1/models/a/b"), None);
    }

    #[test]
    fn every_path_is_metered_free_or_unmetered() {
        let route = |method: &str, path: &str| classify(method, &normalize(path).unwrap());
        for (path, api) in [
            ("/v1/chat/completions", Api::OpenAi),
            ("/v1/chat/complet%69ons", Api::OpenAi),
            ("/v1/chat/completions/", Api::OpenAi),
            ("/V1/CHAT/COMPLETIONS", Api::OpenAi),
            ("/v1/completions", Api::OpenAi),
            ("/v1/embeddings", Api::OpenAi),
            (
                "/openai/deployments/d/chat/completions?api-version=1",
                Api::OpenAi,
            ),
            ("/v1/responses", Api::Responses),
            ("/v1/messages", Api::Anthropic),
            ("/v1beta/models/gemini-pro:generateContent", Api::Gemini),
            (
                "/v1/models/gemini-pro:streamGenerateContent?alt=sse",
                Api::Gemini,
            ),
            ("/v1/images/generations", Api::Images),
            ("/v1/images/edits", Api::Images),
            ("/v1/audio/transcriptions", Api::Audio),
            ("/v1/audio/translations", Api::Audio),
        ] {
            assert_eq!(route("POST", path), Route::Metered(api), "{path}");
        }
        for (method, path) in [
            ("GET", "/v1/models"),
            ("GET", "/v1/models/gpt-4o"),
            ("GET", "/v1beta/models"),
            ("GET", "/v1beta/models/gemini-pro"),
            ("POST", "/v1beta/models/gemini-pro:countTokens"),
            ("POST", "/v1/messages/count_tokens"),
            ("POST", "/v1/moderations"),
            ("GET", "/v1/keygate/key"),
        ] {
            assert_eq!(route(method, path), Route::Free, "{method} {path}");
        }
        for (method, path) in [
            ("POST", "/v1/batches"),
            ("POST", "/v1/messages/batches"),
            ("POST", "/v1/files"),
            ("POST", "/v1/audio/speech"),
            ("POST", "/v1/images/variations"),
            ("POST", "/v1/fine_tuning/jobs"),
            ("POST", "/v1/models"),
            ("DELETE", "/v1/models/ft:gpt-4o:me"),
            ("GET", "/v1/models/x/y"),
            ("GET", "/v1/modelsx"),
            ("POST", "/v1beta/models/gemini-pro:embedContent"),
            ("POST", "/v1/realtime"),
            ("GET", "/"),
        ] {
            assert_eq!(route(method, path), Route::Unmetered, "{method} {path}");
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any path normalises without a panic to one that starts with `/`, has no empty,
        /// `.` or `..` segment, no upper case, and is its own normal form.
        #[test]
        fn normal_forms_are_stable(path in "[/a-zA-Z0-9%.:\\\\_-]{0,40}") {
            if let Ok(normal) = normalize(&path) {
                prop_assert!(normal.starts_with('/'));
                prop_assert!(normal == "/" || !normal.ends_with('/'));
                prop_assert!(!normal.contains("//"));
                prop_assert!(!normal.split('/').any(|s| s == "." || s == ".."));
                // Decoding twice would read `%2569` as `i`: the normal form is not
                // decoded again, and a second pass changes nothing without escapes.
                if !normal.contains('%') {
                    prop_assert_eq!(normalize(&normal), Ok(normal.clone()));
                }

            }
        }

        /// The copy-free way for plain paths agrees with the full one (a trailing slash
        /// forces the full one, and is dropped by both).
        #[test]
        fn the_fast_way_agrees_with_the_full_one(path in "[/a-zA-Z0-9%.?-]{0,40}") {
            let slashed = format!("{path}/");
            let (fast, full) = (normalize(&path), normalize(&slashed));
            prop_assert_eq!(fast.map(Cow::into_owned), full.map(Cow::into_owned));
        }

        /// Escapes of unreserved characters do not change what a path asks for.
        #[test]
        fn escaping_a_letter_changes_nothing(index in 0usize..19) {
            let path = "/v1/chat/completions";
            let byte = path.as_bytes()[index];
            prop_assume!(byte != b'/');
            let escaped = format!("{}%{:02X}{}", &path[..index], byte, &path[index + 1..]);
            prop_assert_eq!(
                classify("POST", &normalize(&escaped).unwrap()),
                Route::Metered(Api::OpenAi)
            );
        }
    }
}
