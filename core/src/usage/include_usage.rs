//! OpenAI streams whose client did not ask for usage: the filter asks for it anyway
//! (`stream_options.include_usage`), so the key can be billed, and takes back out what
//! that adds, so the client gets the stream it asked for. With the option OpenAI adds
//! `"usage":null` to every chunk and one last chunk with no choices and the usage.

/// Whether a request path is OpenAI's Chat Completions or Completions (Azure's too),
/// whose streams report usage only when asked.
pub fn applies_to(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    path.ends_with("/chat/completions") || path.ends_with("/completions")
}

/// The request body with `stream_options.include_usage` set, if it is a streaming Chat
/// Completions or Completions request that does not ask for usage; `None` otherwise (not
/// JSON, not streaming, or already asking). The filter makes this change without holding
/// the body (`body_scan::UsageEdit`); this whole-body form is what that is tested against.
#[cfg(test)]
pub fn add_to_request(body: &[u8]) -> Option<Vec<u8>> {
    use serde_json::Value;
    let mut request: Value = serde_json::from_slice(body).ok()?;
    let object = request.as_object_mut()?;
    if object.get("stream").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let options = object
        .entry("stream_options")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if options.is_null() {
        // `"stream_options": null` is the same as none (SDKs send it).
        *options = Value::Object(serde_json::Map::new());
    }
    // Any other shape is the client's error, which the provider answers.
    let options = options.as_object_mut()?;
    if options.get("include_usage").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&request).ok()
}

/// Rewrites the response stream: whole events go on as they complete, minus the
/// usage-only chunk and each chunk's `"usage":null`; a partial event waits for its end
/// (a client cannot use half an event anyway).
#[derive(Debug, Default)]
pub struct StreamEditor {
    carry: Vec<u8>,
}

const NULL_USAGE: &[u8] = b",\"usage\":null";

impl StreamEditor {
    /// What to send the client for this chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.carry.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.carry.len());
        let mut event_start = 0;
        let mut line_start = 0;
        let mut complete = 0;
        while let Some(nl) = self
            .carry
            .get(line_start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            let line_end = line_start + nl;
            let line = self.carry.get(line_start..line_end).unwrap_or_default();
            line_start = line_end + 1;
            if line.is_empty() || line == b"\r" {
                // A blank line ends the event (its bytes include the blank line).
                if let Some(event) = self.carry.get(event_start..line_start) {
                    edit_event(event, &mut out);
                }
                event_start = line_start;
                complete = line_start;
            }
        }
        self.carry.drain(..complete);
        out
    }

    /// What is left when the stream ends: an unfinished event goes on as it is.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        let mut out = Vec::with_capacity(rest.len());
        edit_event(&rest, &mut out);
        out
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Appends the event, edited, to `out`: nothing for the usage-only chunk.
fn edit_event(event: &[u8], out: &mut Vec<u8>) {
    if contains(event, b"\"choices\":[]") && contains(event, b"\"usage\":{") {
        return;
    }
    let mut rest = event;
    while let Some(at) = rest.windows(NULL_USAGE.len()).position(|w| w == NULL_USAGE) {
        out.extend_from_slice(rest.get(..at).unwrap_or_default());
        rest = rest.get(at + NULL_USAGE.len()..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn only_streams_that_do_not_ask_get_the_option() {
        let added = add_to_request(br#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        let v: Value = serde_json::from_slice(&added).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        let other_options =
            add_to_request(br#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#)
                .unwrap();
        let v: Value = serde_json::from_slice(&other_options).unwrap();
        assert_eq!(v["stream_options"]["include_obfuscation"], false);
        assert_eq!(v["stream_options"]["include_usage"], true);
        for odd in [
            &br#"{"stream":true,"stream_options":null}"#[..],
            br#"{"stream":true,"stream_options":{"include_usage":false}}"#,
            br#"{"stream":true,"stream_options":{"include_usage":null}}"#,
        ] {
            let v: Value = serde_json::from_slice(&add_to_request(odd).unwrap()).unwrap();
            assert_eq!(v["stream_options"]["include_usage"], true, "{v}");
        }
        for unchanged in [
            &br#"{"stream":false}"#[..],
            br#"{"messages":[]}"#,
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            b"not json",
            br#"[1,2]"#,
        ] {
            assert_eq!(add_to_request(unchanged), None);
        }
    }

    const ASKED: &str =
        "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"h\u{e9}\"}}]}\n\n\
                         data: {\"id\":\"c\",\"choices\":[{\"delta\":{}}]}\n\n\
                         data: [DONE]\n\n";
    const WITH_USAGE: &str = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"h\u{e9}\"}}],\"usage\":null}\n\n\
                              data: {\"id\":\"c\",\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n\
                              data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n\
                              data: [DONE]\n\n";

    fn edit(stream: &str, step: usize) -> Vec<u8> {
        let mut editor = StreamEditor::default();
        let mut out = Vec::new();
        for chunk in stream.as_bytes().chunks(step) {
            out.extend(editor.push(chunk));
        }
        out.extend(editor.finish());
        out
    }

    #[test]
    fn the_client_gets_the_stream_it_asked_for_however_it_is_cut() {
        for step in 1..=WITH_USAGE.len() {
            assert_eq!(
                String::from_utf8(edit(WITH_USAGE, step)).unwrap(),
                ASKED,
                "chunks of {step}"
            );
        }
        let crlf = WITH_USAGE.replace('\n', "\r\n");
        assert_eq!(
            String::from_utf8(edit(&crlf, 5)).unwrap(),
            ASKED.replace('\n', "\r\n")
        );
    }

    #[test]
    fn content_mentioning_usage_is_left_alone_and_whole_events_are_not_held() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":null and \\\"choices\\\":[]\"}}]}\n\n";
        assert_eq!(edit(stream, 7), stream.as_bytes());
        let mut editor = StreamEditor::default();
        let out = editor.push(b"data: {\"choices\":[{}]}\n\ndata: {\"choi");
        assert_eq!(out, b"data: {\"choices\":[{}]}\n\n");
        assert_eq!(
            editor.finish(),
            b"data: {\"choi",
            "a cut stream ends as it is"
        );
    }
}
