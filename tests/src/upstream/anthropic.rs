//! Anthropic Messages. As the real API does, `input_tokens` excludes cached tokens
//! (reported as `cache_read_input_tokens`), and a stream reports usage in `message_start`
//! and, cumulatively, in `message_delta`.

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{sse, streamed, wants_stream, Knobs, Usage};

pub fn messages(body: &Value, knobs: Knobs) -> Response {
    let usage = Usage::of(body, &["system", "messages"], &["max_tokens"], knobs);
    let model = body["model"].as_str().unwrap_or("mock-model");
    let usage_json = |output: u64| {
        json!({"input_tokens": usage.input - usage.cached, "output_tokens": output,
            "cache_read_input_tokens": usage.cached, "cache_creation_input_tokens": 0})
    };
    let message = |content: Value, stop: Value, output: u64| {
        json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null,
            "usage": usage_json(output)})
    };
    if !wants_stream(body) {
        let content = json!([{"type": "text", "text": usage.text()}]);
        return Json(message(content, json!("end_turn"), usage.output)).into_response();
    }
    let event = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        sse(Some(name), &data)
    };
    let mut pieces = vec![
        event(
            "message_start",
            json!({"message": message(json!([]), Value::Null, 1)}),
        ),
        event(
            "content_block_start",
            json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({})),
    ];
    for (i, word) in usage.words().iter().enumerate() {
        let text = if i == 0 {
            word.clone()
        } else {
            format!(" {word}")
        };
        pieces.push(event(
            "content_block_delta",
            json!({"index": 0, "delta": {"type": "text_delta", "text": text}}),
        ));
    }
    pieces.push(event("content_block_stop", json!({"index": 0})));
    pieces.push(event(
        "message_delta",
        json!({"delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": usage.output}}),
    ));
    pieces.push(event("message_stop", json!({})));
    streamed("text/event-stream", pieces, knobs.chunk_delay_ms)
}
