//! Finding the client's credential in a request, in every client style of the contract:
//! `Authorization: Bearer`, `x-api-key` (Anthropic), `api-key` (Azure), `x-goog-api-key`
//! and `?key=` (Gemini); and knowing what to strip before the request goes upstream.

/// Request headers that may carry a client credential, in the order they are consulted.
/// All of them are removed before a request goes upstream, whichever one was used.
pub const HEADERS: [&str; 4] = ["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// Prefix of the headers the filter sets; any a client sends are removed.
pub const OWN_HEADER_PREFIX: &str = "x-keygate-";

/// Finds the client's credential among the request headers (pseudo-headers included, so
/// `:path` is searched for a `key` query parameter last).
pub fn find<'a>(headers: &[(&'a str, &'a str)]) -> Option<&'a str> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    if let Some(token) = header("authorization").and_then(bearer) {
        return Some(token);
    }
    for name in &HEADERS[1..] {
        if let Some(value) = header(name).map(str::trim).filter(|v| !v.is_empty()) {
            return Some(value);
        }
    }
    header(":path").and_then(query_key)
}

/// The token of an `Authorization: Bearer <token>` value (scheme matched case-insensitively).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of the first non-empty `key` parameter of a path's query string.
fn query_key(path: &str) -> Option<&str> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("key="))
        .find(|v| !v.is_empty())
}

/// The path with every `key` query parameter removed, or `None` when it has none.
pub fn strip_query_key(path: &str) -> Option<String> {
    let (base, query) = path.split_once('?')?;
    let is_key = |pair: &&str| *pair == "key" || pair.starts_with("key=");
    if !query.split('&').any(|pair| is_key(&pair)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !is_key(pair)).collect();
    Some(if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

/// Names of the request headers to remove before the request goes upstream: every
/// credential header, every client-sent `x-keygate-*` header, and any other the filter
/// sets itself (`own`), that is present.
pub fn headers_to_strip<'h, 'a>(
    headers: &'h [(&'a str, &'a str)],
    own: impl Fn(&str) -> bool + 'h,
) -> impl Iterator<Item = &'a str> + 'h {
    headers.iter().map(|(n, _)| *n).filter(move |name| {
        HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h))
            || own(name)
            || name
                .get(..OWN_HEADER_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(OWN_HEADER_PREFIX))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn headers<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        pairs.to_vec()
    }

    #[test]
    fn each_client_style_is_found() {
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: &[Case] = &[
            (&[("authorization", "Bearer sk-a")], Some("sk-a")),
            (&[("authorization", "bearer   sk-a  ")], Some("sk-a")),
            (&[("x-api-key", "sk-b")], Some("sk-b")),
            (&[("api-key", "sk-c")], Some("sk-c")),
            (&[("x-goog-api-key", "sk-d")], Some("sk-d")),
            (
                &[(":path", "/v1beta/models/g:generateContent?alt=sse&key=sk-e")],
                Some("sk-e"),
            ),
            (&[(":path", "/v1/chat/completions")], None),
            (&[("authorization", "Basic dXNlcjpwYXNz")], None),
            (&[("authorization", "Bearer ")], None),
            (&[("x-api-key", "  ")], None),
            (&[(":path", "/x?key=")], None),
            (&[], None),
        ];
        for (pairs, expected) in cases {
            assert_eq!(find(&headers(pairs)), *expected, "{pairs:?}");
        }
    }

    #[test]
    fn authorization_wins_over_other_styles() {
        let h = headers(&[
            (":path", "/v1/messages?key=sk-q"),
            ("x-api-key", "sk-x"),
            ("authorization", "Bearer sk-auth"),
        ]);
        assert_eq!(find(&h), Some("sk-auth"));
        let h = headers(&[(":path", "/x?key=sk-q"), ("x-goog-api-key", "sk-g")]);
        assert_eq!(find(&h), Some("sk-g"));
    }

    #[test]
    fn query_key_is_stripped_and_other_parameters_kept() {
        assert_eq!(strip_query_key("/a?key=sk-1"), Some("/a".into()));
        assert_eq!(
            strip_query_key("/a?alt=sse&key=sk-1&x=2"),
            Some("/a?alt=sse&x=2".into())
        );
        assert_eq!(strip_query_key("/a?key&key=1"), Some("/a".into()));
        assert_eq!(strip_query_key("/a?alt=sse"), None);
        assert_eq!(strip_query_key("/a?monkey=1"), None);
        assert_eq!(strip_query_key("/a"), None);
    }

    #[test]
    fn credential_and_own_headers_are_stripped() {
        let h = headers(&[
            (":path", "/v1/chat/completions"),
            ("Authorization", "Bearer sk-a"),
            ("x-api-key", "sk-b"),
            ("X-Keygate-Key-Id", "forged"),
            ("x-keygate-account", "forged"),
            ("x-request-id", "r1"),
            ("x-tenant", "forged"),
            ("content-type", "application/json"),
        ]);
        let stripped: Vec<&str> = headers_to_strip(&h, |n| n == "x-tenant").collect();
        assert_eq!(
            stripped,
            [
                "Authorization",
                "x-api-key",
                "X-Keygate-Key-Id",
                "x-keygate-account",
                "x-tenant"
            ]
        );
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever headers a client sends, finding the credential and stripping it never
        /// panics; what is found is a value of one of the credential headers or `key=`.
        #[test]
        fn any_headers_are_read_without_a_panic(
            names in proptest::collection::vec(prop_oneof![
                Just("authorization".to_string()), Just("x-api-key".to_string()),
                Just("api-key".to_string()), Just("x-goog-api-key".to_string()),
                Just(":path".to_string()), "[a-z:-]{1,12}"], 0..6),
            values in proptest::collection::vec(".{0,40}", 6),
        ) {
            let headers: Vec<(&str, &str)> = names
                .iter()
                .zip(&values)
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            if let Some(found) = find(&headers) {
                prop_assert!(values.iter().any(|v| v.contains(found)));
            }
            let _ = headers_to_strip(&headers, |_| false);
            for (_, v) in &headers {
                if let Some(stripped) = strip_query_key(v) {
                    prop_assert!(!stripped.contains("key="), "{stripped}");
                }
            }
        }
    }
}
