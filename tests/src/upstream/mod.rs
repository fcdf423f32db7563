//! The mock LLM upstream of the contract: OpenAI (Chat Completions, Completions, Responses,
//! Embeddings, also under Azure's deployment paths; the model list), Anthropic Messages and
//! Gemini generateContent / streamGenerateContent (under `v1beta` and `v1`), streamed or
//! not, with deterministic usage.
//! It also records what reached it (`GET /mock/requests`) so tests can check what the
//! filter let through, and tallies the usage its chat answers reported per
//! `x-keygate-key-id` (`GET /mock/usage`), so the benchmark can reconcile it with what
//! the key-service billed.

mod anthropic;
mod gemini;
mod media;
mod openai;
mod usage;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub use openai::MODELS;
pub use usage::Usage;

/// Requests kept for `GET /mock/requests`.
const LOG_CAPACITY: usize = 1000;
/// Bodies kept per logged request.
const LOGGED_BODY_LIMIT: usize = 64 * 1024;
/// Largest request body accepted.
const BODY_LIMIT: usize = 8 * 1024 * 1024;
/// Longest delay a knob may ask for.
const MAX_DELAY_MS: u64 = 30_000;

#[derive(Clone, Default)]
struct AppState {
    log: Arc<Mutex<VecDeque<Value>>>,
    /// Per key id: chat calls answered, input and output tokens reported.
    tally: Arc<Mutex<BTreeMap<String, [u64; 3]>>>,
}

/// Every route of the mock upstream.
pub fn router() -> Router {
    routes(AppState::default())
}

fn routes(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/mock/requests", get(requests).delete(clear_requests))
        .route("/mock/usage", get(tally))
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/completions", post(openai_completions))
        .route("/v1/responses", post(openai_responses))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/openai/deployments/{deployment}/{*operation}", post(azure))
        .route("/v1/messages", post(anthropic_messages))
        .route("/v1/models", get(openai::list_models))
        // `GET` retrieves an OpenAI model; `POST` is Gemini's `{model}:{action}` under the
        // `v1` version prefix (the Google Gen AI SDK's `api_version="v1"`).
        .route(
            "/v1/models/{model_action}",
            get(openai::retrieve_model).post(gemini),
        )
        .route("/v1beta/models/{model_action}", post(gemini))
        .route("/v1/images/generations", post(media::image_generations))
        .route("/v1/audio/transcriptions", post(media::transcriptions))
        .route("/v1/audio/translations", post(media::transcriptions))
        .route("/v1/audio/speech", post(media::speech))
        .route("/v1/batches", post(media::batches))
        .fallback(lenient)
        .with_state(state)
}

impl AppState {
    /// Logs a request the handler read itself (a multipart form), for `GET /mock/requests`.
    fn note(&self, entry: Value) {
        if let Ok(mut log) = self.log.lock() {
            if log.len() == LOG_CAPACITY {
                log.pop_front();
            }
            log.push_back(entry);
        }
    }
}

/// A path no route takes is read as lenient providers read it (percent-escapes decoded,
/// `//` merged, a trailing `/` dropped) and routed again: what keygate must not mistake
/// for something cheaper (`/v1/chat/complet%69ons`, `/v1/chat/completions/`).
async fn lenient(State(state): State<AppState>, mut req: Request) -> Response {
    use tower::ServiceExt;
    let path = req.uri().path();
    let mut decoded = Vec::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                decoded.push(b);
                i += 3;
            }
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded).into_owned();
    let segments: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    let normal = format!("/{}", segments.join("/"));
    if normal == path {
        return not_found().await;
    }
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    match format!("{normal}{query}").parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return not_found().await,
    }
    match routes(state).oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

/// Which provider's error shape a refusal takes.
#[derive(Clone, Copy)]
enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
}

/// A request as the handlers need it: parsed body and the test knobs from its headers.
struct Call {
    body: Value,
    knobs: Knobs,
    query: String,
    /// The `x-keygate-key-id` the filter set.
    key_id: Option<String>,
}

/// Test knobs, each an `x-mock-*` request header.
#[derive(Clone, Copy, Default)]
pub struct Knobs {
    status: Option<u16>,
    delay_ms: u64,
    pub chunk_delay_ms: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Bytes of filler appended to a plain chat answer's text (`x-mock-pad-bytes`), for
    /// large bodies.
    pub pad_bytes: u64,
}

impl Knobs {
    fn from_headers(headers: &HeaderMap) -> Knobs {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Knobs {
            status: num("x-mock-status").and_then(|s| u16::try_from(s).ok()),
            delay_ms: num("x-mock-delay-ms").unwrap_or(0).min(MAX_DELAY_MS),
            chunk_delay_ms: num("x-mock-chunk-delay-ms").unwrap_or(0).min(MAX_DELAY_MS),
            cached_tokens: num("x-mock-cached-tokens").unwrap_or(0),
            reasoning_tokens: num("x-mock-reasoning-tokens").unwrap_or(0),
            pad_bytes: num("x-mock-pad-bytes").unwrap_or(0).min(BODY_LIMIT as u64),
        }
    }
}

/// Logs the request, reads its body and applies the status and delay knobs; `Err` is the
/// response to send instead.
async fn accept(state: &AppState, req: Request, provider: Provider) -> Result<Call, Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        error(
            provider,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        )
    })?;
    let path = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let headers: Vec<[String; 2]> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            [
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ]
        })
        .collect();
    let logged = &bytes[..bytes.len().min(LOGGED_BODY_LIMIT)];
    // And the end of a body longer than that, to see what a filter did to it.
    let tail = &bytes[bytes.len().saturating_sub(1024).max(logged.len())..];
    if let Ok(mut log) = state.log.lock() {
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(json!({
            "method": parts.method.as_str(),
            "path": path,
            "headers": headers,
            "body": String::from_utf8_lossy(logged),
            "body_tail": String::from_utf8_lossy(tail),
            "body_len": bytes.len(),
        }));
    }
    let knobs = Knobs::from_headers(&parts.headers);
    if knobs.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.delay_ms)).await;
    }
    if let Some(status) = knobs.status.and_then(|s| StatusCode::from_u16(s).ok()) {
        return Err(error(provider, status, "status forced by x-mock-status"));
    }
    let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
        error(
            provider,
            StatusCode::BAD_REQUEST,
            &format!("request body is not valid JSON: {e}"),
        )
    })?;
    if !body.is_object() {
        return Err(error(
            provider,
            StatusCode::BAD_REQUEST,
            "request body must be a JSON object",
        ));
    }
    Ok(Call {
        body,
        knobs,
        query: parts.uri.query().unwrap_or_default().to_string(),
        key_id: parts
            .headers
            .get("x-keygate-key-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    })
}

/// A provider-style error response.
fn error(provider: Provider, status: StatusCode, message: &str) -> Response {
    let body = match provider {
        Provider::OpenAi => json!({"error": {"message": message,
            "type": "invalid_request_error", "code": null, "param": null}}),
        Provider::Anthropic => json!({"type": "error",
            "error": {"type": "invalid_request_error", "message": message}}),
        Provider::Gemini => json!({"error": {"code": status.as_u16(), "message": message,
            "status": if status == StatusCode::BAD_REQUEST { "INVALID_ARGUMENT" } else { "UNKNOWN" }}}),
    };
    (status, Json(body)).into_response()
}

/// A body that is sent as the given pieces, one at a time, `delay_ms` apart: streams reach
/// the client chunk by chunk, as a real provider's do.
fn streamed(content_type: &'static str, pieces: Vec<String>, delay_ms: u64) -> Response {
    let stream = futures_util::stream::unfold(
        (pieces.into_iter(), true),
        move |(mut rest, first)| async move {
            let piece = rest.next()?;
            if !first && delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            Some((Ok::<_, Infallible>(Bytes::from(piece)), (rest, false)))
        },
    );
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// One server-sent event; `event` is the optional `event:` line.
fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

fn wants_stream(body: &Value) -> bool {
    body["stream"].as_bool() == Some(true)
}

async fn requests(State(state): State<AppState>) -> Json<Value> {
    let log: Vec<Value> = state
        .log
        .lock()
        .map(|log| log.iter().cloned().collect())
        .unwrap_or_default();
    Json(json!({ "requests": log }))
}

async fn clear_requests(State(state): State<AppState>) -> StatusCode {
    if let Ok(mut log) = state.log.lock() {
        log.clear();
    }
    StatusCode::NO_CONTENT
}

async fn not_found() -> Response {
    error(
        Provider::OpenAi,
        StatusCode::NOT_FOUND,
        "no such endpoint on the mock upstream",
    )
}

async fn openai_chat(State(s): State<AppState>, req: Request) -> Response {
    match accept(&s, req, Provider::OpenAi).await {
        Ok(call) => {
            if let (Some(key), Ok(mut tally)) = (&call.key_id, s.tally.lock()) {
                let usage = openai::chat_usage(&call.body, call.knobs);
                let t = tally.entry(key.clone()).or_default();
                t[0] += 1;
                t[1] += usage.input;
                t[2] += usage.output;
            }
            openai::chat(&call.body, None, call.knobs)
        }
        Err(res) => res,
    }
}

/// `GET /mock/usage`: per key id, the chat calls answered and the tokens they reported.
async fn tally(State(s): State<AppState>) -> Json<Value> {
    let tally = s.tally.lock().map(|t| t.clone()).unwrap_or_default();
    let out: serde_json::Map<String, Value> = tally
        .into_iter()
        .map(|(key, [calls, input, output])| {
            (
                key,
                json!({"calls": calls, "input_tokens": input, "output_tokens": output}),
            )
        })
        .collect();
    Json(Value::Object(out))
}

async fn openai_completions(State(s): State<AppState>, req: Request) -> Response {
    match accept(&s, req, Provider::OpenAi).await {
        Ok(call) => openai::completions(&call.body, None, call.knobs),
        Err(res) => res,
    }
}

async fn openai_responses(State(s): State<AppState>, req: Request) -> Response {
    match accept(&s, req, Provider::OpenAi).await {
        Ok(call) => openai::responses(&call.body, call.knobs),
        Err(res) => res,
    }
}

async fn openai_embeddings(State(s): State<AppState>, req: Request) -> Response {
    match accept(&s, req, Provider::OpenAi).await {
        Ok(call) => openai::embeddings(&call.body, None, call.knobs),
        Err(res) => res,
    }
}

/// Azure OpenAI: the deployment names the model.
async fn azure(
    State(s): State<AppState>,
    Path((deployment, operation)): Path<(String, String)>,
    req: Request,
) -> Response {
    let call = match accept(&s, req, Provider::OpenAi).await {
        Ok(call) => call,
        Err(res) => return res,
    };
    let model = Some(deployment.as_str());
    match operation.as_str() {
        "chat/completions" => openai::chat(&call.body, model, call.knobs),
        "completions" => openai::completions(&call.body, model, call.knobs),
        "embeddings" => openai::embeddings(&call.body, model, call.knobs),
        _ => not_found().await,
    }
}

async fn anthropic_messages(State(s): State<AppState>, req: Request) -> Response {
    match accept(&s, req, Provider::Anthropic).await {
        Ok(call) => anthropic::messages(&call.body, call.knobs),
        Err(res) => res,
    }
}

/// `/v1beta/models/{model}:{action}` (and `/v1/...`): the model and the action share one
/// path segment.
async fn gemini(
    State(s): State<AppState>,
    Path(model_action): Path<String>,
    req: Request,
) -> Response {
    let Some((model, action)) = model_action.rsplit_once(':') else {
        return error(
            Provider::Gemini,
            StatusCode::NOT_FOUND,
            "expected {model}:{action}",
        );
    };
    let (model, action) = (model.to_string(), action.to_string());
    let call = match accept(&s, req, Provider::Gemini).await {
        Ok(call) => call,
        Err(res) => return res,
    };
    let sse = call.query.split('&').any(|p| p == "alt=sse");
    match action.as_str() {
        "generateContent" => gemini::generate(&call.body, &model, call.knobs),
        "streamGenerateContent" => gemini::stream(&call.body, &model, call.knobs, sse),
        _ => error(
            Provider::Gemini,
            StatusCode::NOT_FOUND,
            "unknown Gemini action",
        ),
    }
}

#[cfg(test)]
mod tests;
