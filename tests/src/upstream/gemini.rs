//! Gemini generateContent and streamGenerateContent. `promptTokenCount` includes cached
//! tokens; every stream event repeats a cumulative `usageMetadata`. Without `alt=sse` the
//! stream is one JSON array, sent in pieces.

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{streamed, Knobs, Usage};

fn usage_of(body: &Value, knobs: Knobs) -> Usage {
    Usage::of(
        body,
        &["contents", "systemInstruction"],
        &["generationConfig/maxOutputTokens"],
        knobs,
    )
}

/// One response object with `output` candidate tokens counted so far.
fn chunk(model: &str, usage: &Usage, text: &str, output: u64, done: bool) -> Value {
    let thoughts = if done { usage.reasoning } else { 0 };
    let mut metadata = json!({
        "promptTokenCount": usage.input,
        "candidatesTokenCount": output,
        "totalTokenCount": usage.input + output + thoughts,
    });
    if usage.cached > 0 {
        metadata["cachedContentTokenCount"] = json!(usage.cached);
    }
    if thoughts > 0 {
        metadata["thoughtsTokenCount"] = json!(thoughts);
    }
    let mut candidate = json!({"content": {"role": "model", "parts": [{"text": text}]},
        "index": 0});
    if done {
        candidate["finishReason"] = json!("STOP");
    }
    json!({"candidates": [candidate], "usageMetadata": metadata, "modelVersion": model})
}

pub fn generate(body: &Value, model: &str, knobs: Knobs) -> Response {
    let usage = usage_of(body, knobs);
    Json(chunk(model, &usage, &usage.text(), usage.output, true)).into_response()
}

pub fn stream(body: &Value, model: &str, knobs: Knobs, sse: bool) -> Response {
    let usage = usage_of(body, knobs);
    let words = usage.words();
    let mut events: Vec<Value> = words
        .iter()
        .enumerate()
        .map(|(i, word)| {
            let text = if i == 0 {
                word.clone()
            } else {
                format!(" {word}")
            };
            let last = i + 1 == words.len();
            // Cumulative counts; the last event carries the full usage.
            let output = if last { usage.output } else { i as u64 + 1 };
            chunk(model, &usage, &text, output, last)
        })
        .collect();
    if events.is_empty() {
        events.push(chunk(model, &usage, "", usage.output, true));
    }
    if sse {
        let pieces = events
            .iter()
            .map(|e| format!("data: {e}\r\n\r\n"))
            .collect();
        return streamed("text/event-stream", pieces, knobs.chunk_delay_ms);
    }
    let last = events.len() - 1;
    let pieces = events
        .iter()
        .enumerate()
        .map(|(i, e)| match (i == 0, i == last) {
            (true, true) => format!("[{e}]"),
            (true, false) => format!("[{e}"),
            (false, true) => format!(",\r\n{e}]"),
            (false, false) => format!(",\r\n{e}"),
        })
        .collect();
    streamed("application/json", pieces, knobs.chunk_delay_ms)
}
