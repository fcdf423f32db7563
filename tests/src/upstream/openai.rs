//! OpenAI shapes: Chat Completions, Completions, Responses and Embeddings. Streams carry
//! usage where OpenAI puts it: Chat and Completions only with
//! `stream_options.include_usage`, in a last chunk with no choices; Responses always, in
//! `response.completed`.

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{sse, streamed, wants_stream, Knobs, Usage};

const CREATED: u64 = 1_700_000_000;

fn model_of<'a>(body: &'a Value, deployment: Option<&'a str>) -> &'a str {
    deployment
        .or(body["model"].as_str())
        .unwrap_or("mock-model")
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cached},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    })
}

/// Chat Completions and Completions differ only in object names and where text goes.
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

pub fn chat(body: &Value, deployment: Option<&str>, knobs: Knobs) -> Response {
    let usage = chat_usage(body, knobs);
    generate(Kind::Chat, body, model_of(body, deployment), usage, knobs)
}

/// The usage a chat call reports.
pub fn chat_usage(body: &Value, knobs: Knobs) -> Usage {
    Usage::of(
        body,
        &["messages"],
        &["max_completion_tokens", "max_tokens"],
        knobs,
    )
}

pub fn completions(body: &Value, deployment: Option<&str>, knobs: Knobs) -> Response {
    let usage = Usage::of(body, &["prompt"], &["max_tokens"], knobs);
    generate(
        Kind::Completion,
        body,
        model_of(body, deployment),
        usage,
        knobs,
    )
}

fn generate(kind: Kind, body: &Value, model: &str, usage: Usage, knobs: Knobs) -> Response {
    let (object, id) = match kind {
        Kind::Chat => ("chat.completion", "chatcmpl-mock"),
        Kind::Completion => ("text_completion", "cmpl-mock"),
    };
    if !wants_stream(body) {
        let mut text = usage.text();
        if knobs.pad_bytes > 0 {
            text.push(' ');
            text.extend(std::iter::repeat_n('x', knobs.pad_bytes as usize));
        }
        let choice = match kind {
            Kind::Chat => json!({"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": text}}),
            Kind::Completion => json!({"index": 0, "finish_reason": "stop", "text": text}),
        };
        return Json(
            json!({"id": id, "object": object, "created": CREATED, "model": model,
            "choices": [choice], "usage": usage_json(&usage)}),
        )
        .into_response();
    }
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk_object = match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    };
    let chunk = |choice: Value| {
        let mut c = json!({"id": id, "object": chunk_object, "created": CREATED,
            "model": model, "choices": [choice]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        sse(None, &c)
    };
    let mut pieces = Vec::new();
    for (i, word) in usage.words().iter().enumerate() {
        let text = if i == 0 {
            word.clone()
        } else {
            format!(" {word}")
        };
        pieces.push(chunk(match kind {
            Kind::Chat if i == 0 => json!({"index": 0, "finish_reason": null,
                "delta": {"role": "assistant", "content": text}}),
            Kind::Chat => json!({"index": 0, "finish_reason": null, "delta": {"content": text}}),
            Kind::Completion => json!({"index": 0, "finish_reason": null, "text": text}),
        }));
    }
    pieces.push(chunk(match kind {
        Kind::Chat => json!({"index": 0, "finish_reason": "stop", "delta": {}}),
        Kind::Completion => json!({"index": 0, "finish_reason": "stop", "text": ""}),
    }));
    if include_usage {
        pieces.push(sse(
            None,
            &json!({"id": id, "object": chunk_object, "created": CREATED, "model": model,
                "choices": [], "usage": usage_json(&usage)}),
        ));
    }
    pieces.push("data: [DONE]\n\n".to_string());
    streamed("text/event-stream", pieces, knobs.chunk_delay_ms)
}

pub fn responses(body: &Value, knobs: Knobs) -> Response {
    let usage = Usage::of(
        body,
        &["input", "instructions"],
        &["max_output_tokens"],
        knobs,
    );
    let model = model_of(body, None);
    let response = |status: &str, text: &str, with_usage: bool| {
        json!({
            "id": "resp_mock", "object": "response", "created_at": CREATED, "status": status,
            "model": model,
            "output": [{"type": "message", "id": "msg_mock", "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": if with_usage { json!({
                "input_tokens": usage.input,
                "input_tokens_details": {"cached_tokens": usage.cached},
                "output_tokens": usage.output,
                "output_tokens_details": {"reasoning_tokens": usage.reasoning},
                "total_tokens": usage.input + usage.output,
            }) } else { Value::Null },
        })
    };
    if !wants_stream(body) {
        return Json(response("completed", &usage.text(), true)).into_response();
    }
    let mut pieces = vec![sse(
        Some("response.created"),
        &json!({"type": "response.created", "response": response("in_progress", "", false)}),
    )];
    for (i, word) in usage.words().iter().enumerate() {
        let delta = if i == 0 {
            word.clone()
        } else {
            format!(" {word}")
        };
        pieces.push(sse(
            Some("response.output_text.delta"),
            &json!({"type": "response.output_text.delta", "item_id": "msg_mock",
                "output_index": 0, "content_index": 0, "delta": delta}),
        ));
    }
    pieces.push(sse(
        Some("response.output_text.done"),
        &json!({"type": "response.output_text.done", "item_id": "msg_mock",
            "output_index": 0, "content_index": 0, "text": usage.text()}),
    ));
    pieces.push(sse(
        Some("response.completed"),
        &json!({"type": "response.completed",
            "response": response("completed", &usage.text(), true)}),
    ));
    streamed("text/event-stream", pieces, knobs.chunk_delay_ms)
}

pub fn embeddings(body: &Value, deployment: Option<&str>, knobs: Knobs) -> Response {
    let usage = Usage::of(body, &["input"], &[], knobs);
    let inputs = match &body["input"] {
        Value::Array(items) => items.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            json!({"object": "embedding", "index": i,
            "embedding": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]})
        })
        .collect();
    Json(
        json!({"object": "list", "data": data, "model": model_of(body, deployment),
        "usage": {"prompt_tokens": usage.input, "total_tokens": usage.input}}),
    )
    .into_response()
}

/// The models `GET /v1/models` lists, as `(id, owned_by)`.
pub const MODELS: &[(&str, &str)] = &[
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("text-embedding-3-small", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("gemini-2.5-flash", "google"),
];

fn model_object(id: &str, owned_by: &str) -> Value {
    json!({"id": id, "object": "model", "created": CREATED, "owned_by": owned_by})
}

/// `GET /v1/models`: the OpenAI list shape.
pub async fn list_models() -> Json<Value> {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|(id, owner)| model_object(id, owner))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{model}`: one model of the list, or OpenAI's 404.
pub async fn retrieve_model(axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    match MODELS.iter().find(|(m, _)| *m == id) {
        Some((id, owner)) => Json(model_object(id, owner)).into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            Json(
                json!({"error": {"message": format!("The model '{id}' does not exist"),
                "type": "invalid_request_error", "param": "model",
                "code": "model_not_found"}}),
            ),
        )
            .into_response(),
    }
}
