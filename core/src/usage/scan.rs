//! Token usage read from response bodies as they stream by, for every provider format of
//! the contract, keeping only a small, bounded state (never the whole body).
//!
//! - Server-sent events (`text/event-stream`) are framed on bytes, so an event, a line
//!   ending (LF or CRLF) or a multi-byte character split across chunks at any byte is
//!   reassembled before it is decoded; comments and keep-alives are skipped; only events
//!   that mention usage are parsed.
//! - Any other body (a JSON object, or Gemini's stream without `alt=sse`, a JSON array) is
//!   scanned from its last bytes: the usage object comes after the content in every format,
//!   and a key written `"usage"` with bare quotes cannot occur inside a JSON string (its
//!   quotes would be escaped), so the last one in the tail is the response's.
//!
//! Provider rules (from their docs and peers' bug trackers): OpenAI `prompt_tokens` and
//! Gemini `promptTokenCount` include cached tokens; Anthropic's `input_tokens` does not
//! (cache reads and writes come apart) and its `message_delta` usage is cumulative, so it
//! replaces rather than adds; Gemini repeats a cumulative `usageMetadata` in every stream
//! event (the last wins) and its output is candidates + thoughts; the Responses API reports
//! usage in `response.completed`, `response.incomplete` and `response.failed`.

use serde_json::Value;

/// Tokens of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All input tokens, cached ones included.
    pub input: u64,
    pub cached_input: u64,
    /// All output tokens, reasoning included.
    pub output: u64,
    pub reasoning: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`): part of `input`, priced at their own rate.
    pub cache_write: u64,
}

/// Which API a request went to (`route::classify` tells it from the path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI Chat Completions, Completions, Embeddings (and Azure's deployments).
    OpenAi,
    /// OpenAI Responses.
    Responses,
    Anthropic,
    Gemini,
    /// OpenAI image generation and edits: `gpt-image-*` models report `usage` (with the
    /// Responses API's field names); `dall-e-*` report none.
    Images,
    /// OpenAI audio transcriptions and translations: `gpt-4o-*-transcribe` report token
    /// `usage`; `whisper-1` reports seconds (`"type": "duration"`), which are not tokens.
    Audio,
    /// A route the operator priced per call (`route:{path}`): no tokens are read.
    PerCall,
}

fn count(value: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_u64()
}

/// The usage an object reports, by the API's field names; `None` if it has none.
fn from_usage_object(api: Api, usage: &Value) -> Option<Usage> {
    let c = |path: &[&str]| count(usage, path).unwrap_or(0);
    match api {
        Api::PerCall => None,
        Api::OpenAi => {
            let input = count(usage, &["prompt_tokens"])?;
            Some(Usage {
                input,
                cached_input: c(&["prompt_tokens_details", "cached_tokens"]),
                output: c(&["completion_tokens"]),
                reasoning: c(&["completion_tokens_details", "reasoning_tokens"]),
                cache_write: 0,
            })
        }
        Api::Responses | Api::Images | Api::Audio => Some(Usage {
            input: count(usage, &["input_tokens"])?,
            cached_input: c(&["input_tokens_details", "cached_tokens"]),
            output: c(&["output_tokens"]),
            reasoning: c(&["output_tokens_details", "reasoning_tokens"]),
            cache_write: 0,
        }),
        Api::Anthropic => {
            let (read, write) = (
                c(&["cache_read_input_tokens"]),
                c(&["cache_creation_input_tokens"]),
            );
            Some(Usage {
                // An upstream's numbers may be anything: never a wrapped sum.
                input: count(usage, &["input_tokens"])?
                    .saturating_add(read)
                    .saturating_add(write),
                cached_input: read,
                output: c(&["output_tokens"]),
                reasoning: 0,
                cache_write: write,
            })
        }
        Api::Gemini => {
            let thoughts = c(&["thoughtsTokenCount"]);
            Some(Usage {
                input: count(usage, &["promptTokenCount"])?,
                cached_input: c(&["cachedContentTokenCount"]),
                output: c(&["candidatesTokenCount"]).saturating_add(thoughts),
                reasoning: thoughts,
                cache_write: 0,
            })
        }
    }
}

/// Bytes kept from the end of a non-SSE body: far more than any usage object.
const TAIL: usize = 16 * 1024;
/// Bytes kept from the start of a non-SSE body, where the model is named.
const HEAD: usize = 2 * 1024;
/// Longest SSE line kept while it is incomplete; a longer one is dropped (its event is
/// content, never usage, which is small).
const MAX_LINE: usize = 256 * 1024;

/// Reads one response body, chunk by chunk.
#[derive(Debug)]
pub struct Scanner {
    api: Api,
    sse: bool,
    /// SSE: the incomplete last line. Other bodies: the last `TAIL` bytes.
    buf: Vec<u8>,
    /// SSE: data lines of the event being read.
    data: Vec<u8>,
    /// Skipping the rest of an over-long SSE line.
    skipping: bool,
    /// Anthropic streams: usage so far (input from `message_start`, output replaced by
    /// each cumulative `message_delta`).
    usage: Option<Usage>,
    /// Non-SSE bodies: the first `HEAD` bytes.
    head: Vec<u8>,
    /// The model the response names, once seen.
    model: Option<String>,
    /// SSE: events with data seen (`[DONE]` aside).
    events: u64,
    /// SSE: the provider's final account of the usage was seen (OpenAI's usage chunk,
    /// the Responses API's terminal event, Anthropic's `message_delta`, Gemini's event
    /// with a `finishReason`); before it, what was seen is only a part.
    complete: bool,
}

/// What a body reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    pub usage: Option<Usage>,
    /// The model the response names (OpenAI and Anthropic `model`, Gemini
    /// `modelVersion`), for when the request's was not read.
    pub model: Option<String>,
    /// Stream events that carried data: a floor on the output tokens delivered (each
    /// content event carries at least one), for a stream cut before its usage.
    pub events: u64,
    /// `usage` is the provider's final account (always, for a body that is not a stream;
    /// for a stream, once its last usage event went by).
    pub complete: bool,
}

/// What a response is billed: its tokens, and whether they are the filter's estimate.
/// `status` is the response's (0: none came), `prompt` the estimate of the request's own
/// tokens. `None`: a success that named no usage (nothing to bill, counted as missing).
///
/// - The provider's final usage is billed as it is.
/// - A stream cut before it (the client or the provider went away) is billed what the
///   provider had counted so far (Anthropic's `message_start` gives the real input and a
///   placeholder output), with at least one output token per event that went by (each
///   carries at least one), and the prompt estimate where no input was counted.
/// - No answer at all: the prompt, which the provider received.
/// - A provider error with no usage: nothing.
pub fn bill(scanned: &Scanned, status: u16, prompt: Usage) -> Option<(Usage, bool)> {
    match scanned.usage {
        Some(usage) if scanned.complete => Some((usage, false)),
        Some(partial) => Some((
            Usage {
                output: partial.output.max(scanned.events),
                ..partial
            },
            true,
        )),
        None if status == 0 => Some((prompt, true)),
        None if status >= 400 => Some((Usage::default(), false)),
        None if scanned.events > 0 => Some((
            Usage {
                output: scanned.events,
                ..prompt
            },
            true,
        )),
        None => None,
    }
}

/// The string value of the first `"key": "..."` in `bytes`.
fn string_field(bytes: &[u8], key: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(key.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(key);
    quoted.push(b'"');
    let at = bytes
        .windows(quoted.len())
        .position(|w| w == quoted.as_slice())?;
    let rest = bytes.get(at + quoted.len()..)?;
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest.get(colon) != Some(&b':') {
        return None;
    }
    let rest = rest.get(colon + 1..)?;
    let open = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = rest.get(open..)?;
    let mut escaped = false;
    let end = rest.iter().enumerate().skip(1).find_map(|(i, &b)| {
        let closes = b == b'"' && !escaped;
        escaped = b == b'\\' && !escaped;
        closes.then_some(i)
    })?;
    serde_json::from_slice::<String>(rest.get(..=end)?)
        .ok()
        .filter(|m| !m.is_empty())
}

impl Scanner {
    /// `event_stream`: the response's content type is `text/event-stream`.
    pub fn new(api: Api, event_stream: bool) -> Scanner {
        Scanner {
            api,
            sse: event_stream,
            buf: Vec::new(),
            data: Vec::new(),
            skipping: false,
            usage: None,
            head: Vec::new(),
            model: None,
            events: 0,
            complete: false,
        }
    }

    fn model_key(&self) -> &'static [u8] {
        if self.api == Api::Gemini {
            b"modelVersion"
        } else {
            b"model"
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        if !self.sse {
            if self.head.len() < HEAD {
                let take = chunk.len().min(HEAD - self.head.len());
                self.head
                    .extend_from_slice(chunk.get(..take).unwrap_or_default());
            }
            self.buf.extend_from_slice(chunk);
            if self.buf.len() > TAIL {
                let cut = self.buf.len() - TAIL;
                self.buf.drain(..cut);
            }
            return;
        }
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(end);
            if self.skipping {
                self.skipping = false;
            } else if self.buf.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.buf);
                whole.extend_from_slice(line);
                self.line(&whole);
            }
            rest = after.get(1..).unwrap_or_default();
        }
        if self.skipping {
            return;
        }
        self.buf.extend_from_slice(rest);
        if self.buf.len() > MAX_LINE {
            self.buf.clear();
            self.skipping = true;
        }
    }

    /// One SSE line, without its LF.
    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            let data = std::mem::take(&mut self.data);
            self.event(&data);
            return;
        }
        if line.starts_with(b":") {
            return; // comment or keep-alive
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            if !self.data.is_empty() {
                self.data.push(b'\n');
            }
            self.data
                .extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
        }
    }

    fn event(&mut self, data: &[u8]) {
        if data.is_empty() || data == b"[DONE]" {
            return;
        }
        self.events += 1;
        if self.model.is_none() {
            self.model = string_field(data, self.model_key());
        }
        if self.api == Api::Gemini && contains(data, b"\"finishReason\"") {
            // Gemini's last event: its cumulative usage is the total.
            self.complete = true;
        }
        // Most events are content: parse only those that can carry usage.
        let key: &[u8] = if self.api == Api::Gemini {
            b"usageMetadata"
        } else {
            b"usage"
        };
        if !contains(data, key) {
            return;
        }
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match self.api {
            Api::OpenAi | Api::Images | Api::Audio => {
                if let Some(u) = event
                    .get("usage")
                    .and_then(|u| from_usage_object(self.api, u))
                {
                    // Sent once, after the content.
                    self.usage = Some(u);
                    self.complete = true;
                }
            }
            Api::Responses => {
                // Only the terminal events carry usage.
                let usage = event.get("response").and_then(|r| r.get("usage"));
                if let Some(u) = usage.and_then(|u| from_usage_object(self.api, u)) {
                    self.usage = Some(u);
                    self.complete = true;
                }
            }
            Api::Gemini => {
                if let Some(u) = event
                    .get("usageMetadata")
                    .and_then(|u| from_usage_object(self.api, u))
                {
                    self.usage = Some(u);
                }
            }
            Api::Anthropic => self.anthropic(&event),
            Api::PerCall => {}
        }
    }

    fn anthropic(&mut self, event: &Value) {
        let kind = event.get("type").and_then(Value::as_str);
        match kind {
            Some("message_start") => {
                let usage = event.get("message").and_then(|m| m.get("usage"));
                if let Some(u) = usage.and_then(|u| from_usage_object(Api::Anthropic, u)) {
                    self.usage = Some(u);
                }
            }
            Some("message_delta") => {
                let Some(delta) = event.get("usage") else {
                    return;
                };
                let mut usage = self.usage.unwrap_or_default();
                if let Some(output) = count(delta, &["output_tokens"]) {
                    usage.output = output;
                }
                // Newer deltas repeat the input counts, cumulative as well.
                if let Some(full) = from_usage_object(Api::Anthropic, delta) {
                    usage.input = full.input;
                    usage.cached_input = full.cached_input;
                    usage.cache_write = full.cache_write;
                }
                self.usage = Some(usage);
                // message_start's output count is a placeholder; the delta's is the total.
                self.complete = true;
            }
            _ => {}
        }
    }

    /// What the body reported, once it has ended: no usage for an error, a body that is
    /// not JSON, or a stream cut before its usage.
    pub fn finish(mut self) -> Scanned {
        if self.sse {
            // A last event without its blank line.
            if !self.buf.is_empty() && !self.skipping {
                let line = std::mem::take(&mut self.buf);
                self.line(&line);
            }
            let data = std::mem::take(&mut self.data);
            self.event(&data);
            return Scanned {
                usage: self.usage,
                model: self.model,
                events: self.events,
                complete: self.complete,
            };
        }
        let model = string_field(&self.head, self.model_key())
            .or_else(|| string_field(&self.buf, self.model_key()));
        Scanned {
            usage: self.tail_usage(),
            model,
            events: 0,
            complete: true,
        }
    }

    fn tail_usage(&self) -> Option<Usage> {
        let key: &[u8] = if self.api == Api::Gemini {
            b"\"usageMetadata\""
        } else {
            b"\"usage\""
        };
        let at = self.buf.windows(key.len()).rposition(|w| w == key)?;
        let object = json_object_at(self.buf.get(at + key.len()..)?)?;
        let value: Value = serde_json::from_slice(object).ok()?;
        from_usage_object(self.api, &value)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The JSON object after `: ` at the start of `bytes`, up to its matching brace.
fn json_object_at(bytes: &[u8]) -> Option<&[u8]> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    if bytes.get(start) != Some(&b':') {
        return None;
    }
    let open = start
        + 1
        + bytes
            .get(start + 1..)?
            .iter()
            .position(|b| !b.is_ascii_whitespace())?;
    if bytes.get(open) != Some(&b'{') {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return bytes.get(open..=i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn usage(input: u64, cached_input: u64, output: u64, reasoning: u64) -> Option<Usage> {
        Some(Usage {
            input,
            cached_input,
            output,
            reasoning,
            cache_write: 0,
        })
    }

    /// Scans `body` fed in chunks cut at every `step` bytes.
    fn scan(api: Api, sse: bool, body: &str, step: usize) -> Option<Usage> {
        scanned(api, sse, body, step).usage
    }

    fn scanned(api: Api, sse: bool, body: &str, step: usize) -> Scanned {
        let mut s = Scanner::new(api, sse);
        for chunk in body.as_bytes().chunks(step) {
            s.push(chunk);
        }
        s.finish()
    }

    /// The same answer whatever the chunking, down to one byte at a time.
    fn scan_every_split(api: Api, sse: bool, body: &str) -> Option<Usage> {
        let whole = scan(api, sse, body, body.len().max(1));
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(scan(api, sse, body, step), whole, "chunks of {step}");
        }
        // And every single cut point in two.
        for cut in 0..=body.len() {
            let mut s = Scanner::new(api, sse);
            s.push(&body.as_bytes()[..cut]);
            s.push(&body.as_bytes()[cut..]);
            assert_eq!(s.finish().usage, whole, "cut at {cut}");
        }
        whole
    }

    const OPENAI_CHAT: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"the \"usage\": {\"prompt_tokens\": 999} is quoted"},"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":8},"completion_tokens_details":{"reasoning_tokens":3}},"system_fingerprint":"fp"}"#;

    #[test]
    fn openai_bodies_and_a_quoted_decoy_in_the_content() {
        assert_eq!(
            scan_every_split(Api::OpenAi, false, OPENAI_CHAT),
            usage(19, 8, 10, 3)
        );
        let embeddings = r#"{"object":"list","data":[{"embedding":[0.1,0.2]}],"model":"e","usage":{"prompt_tokens":5,"total_tokens":5}}"#;
        assert_eq!(
            scan_every_split(Api::OpenAi, false, embeddings),
            usage(5, 0, 0, 0)
        );
    }

    #[test]
    fn openai_streams_report_usage_in_their_last_chunk() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"h\u{e9}llo\"}}],\"usage\":null}\r\n\r\n\
                      : keep-alive\r\n\r\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":4}}\r\n\r\n\
                      data: [DONE]\r\n\r\n";
        assert_eq!(
            scan_every_split(Api::OpenAi, true, stream),
            usage(11, 0, 4, 0)
        );
        let lf = stream.replace("\r\n", "\n");
        assert_eq!(scan_every_split(Api::OpenAi, true, &lf), usage(11, 0, 4, 0));
    }

    #[test]
    fn responses_streams_report_usage_when_the_response_ends() {
        for end in [
            "response.completed",
            "response.incomplete",
            "response.failed",
        ] {
            let stream = format!(
                "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}}\n\n\
                 event: {end}\ndata: {{\"type\":\"{end}\",\"response\":{{\"usage\":{{\"input_tokens\":30,\
                 \"input_tokens_details\":{{\"cached_tokens\":10}},\"output_tokens\":12,\
                 \"output_tokens_details\":{{\"reasoning_tokens\":5}}}}}}}}\n\n"
            );
            assert_eq!(
                scan_every_split(Api::Responses, true, &stream),
                usage(30, 10, 12, 5)
            );
        }
        let body = r#"{"id":"resp_1","output":[{"type":"message"}],"usage":{"input_tokens":7,"output_tokens":2}}"#;
        assert_eq!(
            scan_every_split(Api::Responses, false, body),
            usage(7, 0, 2, 0)
        );
    }

    #[test]
    fn anthropic_streams_take_input_from_the_start_and_cumulative_output_from_deltas() {
        let stream = "event: message_start\n\
            data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":7,\"output_tokens\":1}}}\n\n\
            event: content_block_delta\n\
            data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"usage\"}}\n\n\
            event: message_delta\n\
            data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n\
            event: message_delta\n\
            data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n\
            event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        // 25 + 100 read + 7 written; output replaced, not added: 42.
        assert_eq!(
            scan_every_split(Api::Anthropic, true, stream),
            Some(Usage {
                cache_write: 7,
                ..plain(132, 100, 42, 0)
            })
        );
        let body = r#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":9,"cache_read_input_tokens":1,"output_tokens":3}}"#;
        assert_eq!(
            scan_every_split(Api::Anthropic, false, body),
            usage(10, 1, 3, 0)
        );
    }

    #[test]
    fn gemini_repeats_cumulative_usage_and_the_last_wins() {
        let event = |p: u64, c: u64, t: u64| {
            format!("data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"x\"}}]}}}}],\"usageMetadata\":{{\"promptTokenCount\":{p},\"cachedContentTokenCount\":2,\"candidatesTokenCount\":{c},\"thoughtsTokenCount\":{t}}}}}\r\n\r\n")
        };
        let sse = format!("{}{}", event(10, 3, 0), event(10, 9, 4));
        assert_eq!(
            scan_every_split(Api::Gemini, true, &sse),
            usage(10, 2, 13, 4)
        );
        // Without alt=sse the stream is one JSON array.
        let array = r#"[{"candidates":[],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":3}}
,{"candidates":[],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":8}}]"#;
        assert_eq!(
            scan_every_split(Api::Gemini, false, array),
            usage(10, 0, 8, 0)
        );
    }

    #[test]
    fn bodies_without_usage_report_none() {
        for (api, sse, body) in [
            (Api::OpenAi, false, "not json at all"),
            (
                Api::OpenAi,
                false,
                r#"{"error":{"message":"rate limited"}}"#,
            ),
            (Api::OpenAi, false, r#"{"usage":{"prompt_tokens":3"#),
            (Api::OpenAi, true, "data: {\"choices\":[]}\n\n"),
            (Api::OpenAi, true, "data: {\"usage\": broken json\n\n"),
            (Api::Anthropic, true, ": only a comment\n\n"),
            (Api::Gemini, false, ""),
        ] {
            assert_eq!(scan_every_split(api, sse, body), None, "{body}");
        }
    }

    #[test]
    fn a_stream_cut_before_its_blank_line_still_counts_its_last_event() {
        let stream = "data: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}";
        assert_eq!(scan(Api::OpenAi, true, stream, 5), usage(2, 0, 1, 0));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut s = Scanner::new(Api::OpenAi, false);
        for _ in 0..1000 {
            s.push(&[b'x'; 1000]);
        }
        assert!(s.buf.len() <= TAIL);
        let mut s = Scanner::new(Api::OpenAi, true);
        s.push(b"data: ");
        for _ in 0..1000 {
            s.push(&[b'x'; 1000]);
        }
        assert!(s.buf.len() <= MAX_LINE);
        s.push(b"\n\ndata: {\"usage\":{\"prompt_tokens\":1}}\n\n");
        assert_eq!(
            s.finish().usage,
            usage(1, 0, 0, 0),
            "the stream recovers after the long line"
        );
    }

    #[test]
    fn the_model_the_response_names_is_kept() {
        let model = |api, sse, body: &str| scanned(api, sse, body, 3).model;
        assert_eq!(
            model(Api::OpenAi, false, OPENAI_CHAT).as_deref(),
            Some("gpt-4o")
        );
        let stream = "data: {\"id\":\"c\",\"model\":\"gpt-4o-mini-2024\",\"choices\":[]}\n\n";
        assert_eq!(
            model(Api::OpenAi, true, stream).as_deref(),
            Some("gpt-4o-mini-2024")
        );
        let anthropic = "data: {\"type\":\"message_start\",\"message\":{\"model\": \"claude-x\",\"usage\":{\"input_tokens\":1}}}\n\n";
        assert_eq!(
            model(Api::Anthropic, true, anthropic).as_deref(),
            Some("claude-x")
        );
        let gemini = r#"{"candidates":[],"usageMetadata":{"promptTokenCount":1},"modelVersion":"gemini-2.0-flash"}"#;
        assert_eq!(
            model(Api::Gemini, false, gemini).as_deref(),
            Some("gemini-2.0-flash")
        );
        assert_eq!(model(Api::OpenAi, false, r#"{"model":""}"#), None);
        assert_eq!(
            model(Api::OpenAi, false, r#"{"model":"a\"b"}"#).as_deref(),
            Some("a\"b")
        );
    }

    #[test]
    fn a_stream_cut_before_its_usage_tells_how_many_events_went_by() {
        let mut scanner = Scanner::new(Api::OpenAi, true);
        scanner.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
        scanner.push(b": keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n");
        scanner.push(b"data: {\"choices\":[{\"delta\":");
        let cut = scanner.finish();
        assert_eq!((cut.usage, cut.events), (None, 3));
        let mut done = Scanner::new(Api::OpenAi, true);
        done.push(b"data: {\"x\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(done.finish().events, 1, "[DONE] is not an event");
    }

    fn plain(input: u64, cached_input: u64, output: u64, reasoning: u64) -> Usage {
        Usage {
            input,
            cached_input,
            output,
            reasoning,
            cache_write: 0,
        }
    }

    /// Issue 16: an Anthropic stream read for 200 content events and dropped was billed 1
    /// output token, `message_start`'s placeholder taken as final.
    #[test]
    fn a_cut_anthropic_stream_is_billed_its_prompt_and_an_output_token_per_event() {
        let mut scanner = Scanner::new(Api::Anthropic, true);
        scanner.push(b"event: message_start
data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n");
        for _ in 0..200 {
            scanner.push(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"w\"}}\n\n");
        }
        let cut = scanner.finish();
        assert!(!cut.complete);
        let (billed, estimated) = bill(&cut, 200, plain(99, 0, 0, 0)).unwrap();
        assert_eq!((billed.input, billed.output, estimated), (25, 201, true));

        // The same stream ended properly bills what the provider said.
        let mut whole = Scanner::new(Api::Anthropic, true);
        whole.push(b"data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n");
        whole.push(b"data: {\"type\":\"content_block_delta\"}\n\n");
        whole.push(b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n");
        let done = whole.finish();
        assert_eq!(
            bill(&done, 200, Usage::default()),
            Some((plain(25, 0, 7, 0), false))
        );
    }

    #[test]
    fn a_cut_gemini_stream_is_not_final_until_its_finish_reason() {
        let event = |n: u64, finish: &str| {
            format!("data: {{\"candidates\":[{{\"content\":{{}}{finish}}}],\"usageMetadata\":{{\"promptTokenCount\":9,\"candidatesTokenCount\":{n}}}}}\n\n")
        };
        let mut cut = Scanner::new(Api::Gemini, true);
        for n in 1..=5 {
            cut.push(event(n, "").as_bytes());
        }
        let cut = cut.finish();
        assert!(!cut.complete);
        let mut done = Scanner::new(Api::Gemini, true);
        done.push(event(1, "").as_bytes());
        done.push(event(12, ",\"finishReason\":\"STOP\"").as_bytes());
        let done = done.finish();
        assert!(done.complete);
        assert_eq!(bill(&done, 200, Usage::default()).unwrap().0.output, 12);
    }

    #[test]
    fn what_is_billed_without_the_providers_plain() {
        let prompt = plain(10, 0, 0, 0);
        let nothing = Scanned::default();
        assert_eq!(
            bill(&nothing, 0, prompt),
            Some((prompt, true)),
            "client left"
        );
        assert_eq!(
            bill(&nothing, 502, prompt),
            Some((Usage::default(), false)),
            "provider error"
        );
        assert_eq!(bill(&nothing, 200, prompt), None, "missing");
        let events = Scanned {
            events: 4,
            ..Scanned::default()
        };
        assert_eq!(bill(&events, 200, prompt), Some((plain(10, 0, 4, 0), true)));
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn scan(api: Api, sse: bool, body: &[u8], cuts: &[usize]) -> Scanned {
        let mut scanner = Scanner::new(api, sse);
        let mut at = 0;
        for &cut in cuts {
            let cut = cut.min(body.len()).max(at);
            scanner.push(&body[at..cut]);
            at = cut;
        }
        scanner.push(&body[at..]);
        scanner.finish()
    }

    fn api() -> impl Strategy<Value = Api> {
        prop_oneof![
            Just(Api::OpenAi),
            Just(Api::Responses),
            Just(Api::Anthropic),
            Just(Api::Gemini),
            Just(Api::Images),
            Just(Api::Audio)
        ]
    }

    /// A stream in the API's format reporting these counts, with content events between.
    fn stream(api: Api, input: u64, output: u64, content: usize) -> String {
        let content_event = "data: {\"choices\":[{\"delta\":{\"content\":\"x\u{e9}\"}}]}\r\n\r\n";
        let mut body = String::new();
        if api == Api::Anthropic {
            body += &format!("event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":{input},\"output_tokens\":1}}}}}}\n\n");
        }
        for _ in 0..content {
            body += content_event;
            body += ": keep-alive\n\n";
        }
        body += &match api {
            Api::OpenAi => format!("data: {{\"usage\":{{\"prompt_tokens\":{input},\"completion_tokens\":{output}}}}}\n\ndata: [DONE]\n\n"),
            Api::Images | Api::Audio => format!("data: {{\"type\":\"done\",\"usage\":{{\"input_tokens\":{input},\"output_tokens\":{output}}}}}\n\n"),
            Api::Responses => format!("data: {{\"type\":\"response.completed\",\"response\":{{\"usage\":{{\"input_tokens\":{input},\"output_tokens\":{output}}}}}}}\n\n"),
            Api::Anthropic => format!("data: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":{output}}}}}\n\n"),
            // Not generated (see `api()`): it reads no tokens.
            Api::PerCall => String::new(),
            Api::Gemini => format!("data: {{\"candidates\":[{{\"finishReason\":\"STOP\"}}],\"usageMetadata\":{{\"promptTokenCount\":{input},\"candidatesTokenCount\":{output}}}}}\n\n"),
        };
        body
    }

    proptest! {
        /// Every provider's stream gives its counts whatever the chunking, u64 extremes
        /// included, and is complete.
        #[test]
        fn streams_read_the_same_however_they_are_cut(
            api in api(),
            input in any::<u64>(),
            output in any::<u64>(),
            content in 0usize..5,
            cuts in proptest::collection::vec(0usize..2000, 0..12),
        ) {
            let body = stream(api, input, output, content);
            let mut cuts = cuts;
            cuts.sort_unstable();
            let got = scan(api, true, body.as_bytes(), &cuts);
            prop_assert!(got.complete);
            let usage = got.usage.unwrap();
            prop_assert_eq!((usage.input, usage.output), (input, output));
            let whole = scan(api, true, body.as_bytes(), &[]);
            prop_assert_eq!(got, whole);
        }

        /// Whatever bytes an upstream sends, in any chunks, the scanner neither panics nor
        /// bills a cut stream less than one token per event.
        #[test]
        fn any_bytes_are_scanned_without_a_panic(
            api in api(),
            sse in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(0usize..4096, 0..8),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let got = scan(api, sse, &body, &cuts);
            if let Some((billed, _)) = bill(&got, 200, Usage::default()) {
                if !got.complete {
                    prop_assert!(billed.output >= got.events);
                }
            }
        }

        /// Usage objects with counts at the u64 extremes never wrap.
        #[test]
        fn usage_objects_at_the_extremes_saturate(
            input in any::<u64>(), read in any::<u64>(), write in any::<u64>(),
            candidates in any::<u64>(), thoughts in any::<u64>(),
        ) {
            let anthropic = serde_json::json!({"input_tokens": input,
                "cache_read_input_tokens": read, "cache_creation_input_tokens": write});
            let got = from_usage_object(Api::Anthropic, &anthropic).unwrap();
            prop_assert_eq!(got.input, input.saturating_add(read).saturating_add(write));
            let gemini = serde_json::json!({"promptTokenCount": 1,
                "candidatesTokenCount": candidates, "thoughtsTokenCount": thoughts});
            let got = from_usage_object(Api::Gemini, &gemini).unwrap();
            prop_assert_eq!(got.output, candidates.saturating_add(thoughts));
        }
    }
}
