//! OpenAI's image, audio and batch endpoints, as far as billing needs them:
//! - `POST /v1/images/generations` (JSON): `gpt-image-*` report `usage` (input = words of
//!   the prompt, output = 272 tokens per image), `dall-e-*` report none;
//! - `POST /v1/audio/transcriptions` and `/translations` (multipart, as every SDK sends
//!   them): `gpt-4o*-transcribe` report token `usage` (input = a token per 100 bytes of
//!   audio, output = words of the text), `whisper-1` reports seconds;
//! - `POST /v1/audio/speech`: audio bytes, no usage;
//! - `POST /v1/batches`: a batch object (its results would come later, as a file).

use axum::extract::{Multipart, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{accept, error, AppState, Provider};
use crate::upstream::usage::words_in;

/// Output tokens one generated image reports.
pub const TOKENS_PER_IMAGE: u64 = 272;
/// The text every transcription returns.
pub const TRANSCRIPT: &str = "the quick brown fox jumps";

pub async fn image_generations(State(s): State<AppState>, req: axum::extract::Request) -> Response {
    let call = match accept(&s, req, Provider::OpenAi).await {
        Ok(call) => call,
        Err(res) => return res,
    };
    let model = call.body["model"]
        .as_str()
        .unwrap_or("dall-e-2")
        .to_string();
    let n = call.body["n"].as_u64().unwrap_or(1).clamp(1, 10);
    let data: Vec<Value> = (0..n).map(|_| json!({"b64_json": "AAAA"})).collect();
    let mut answer = json!({"created": 1_700_000_000u64, "data": data});
    if model.starts_with("gpt-image") {
        let input = words_in(&call.body["prompt"]);
        let output = TOKENS_PER_IMAGE * n;
        answer["usage"] = json!({"input_tokens": input, "output_tokens": output,
            "total_tokens": input + output,
            "input_tokens_details": {"text_tokens": input, "image_tokens": 0}});
    }
    Json(answer).into_response()
}

pub async fn transcriptions(State(s): State<AppState>, mut form: Multipart) -> Response {
    let (mut model, mut audio_bytes) = (None, 0u64);
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                let Ok(bytes) = field.bytes().await else {
                    return error(Provider::OpenAi, StatusCode::BAD_REQUEST, "bad form field");
                };
                match name.as_str() {
                    "model" => model = Some(String::from_utf8_lossy(&bytes).into_owned()),
                    "file" => audio_bytes = bytes.len() as u64,
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => {
                return error(
                    Provider::OpenAi,
                    StatusCode::BAD_REQUEST,
                    &format!("not a multipart form: {e}"),
                )
            }
        }
    }
    let Some(model) = model else {
        return error(
            Provider::OpenAi,
            StatusCode::BAD_REQUEST,
            "model is required",
        );
    };
    s.note(json!({"path": "/v1/audio/transcriptions", "model": model, "file_bytes": audio_bytes}));
    let usage = if model.contains("transcribe") {
        let input = audio_bytes.div_ceil(100);
        let output = TRANSCRIPT.split_whitespace().count() as u64;
        json!({"type": "tokens", "input_tokens": input, "output_tokens": output,
            "total_tokens": input + output,
            "input_token_details": {"text_tokens": 0, "audio_tokens": input}})
    } else {
        json!({"type": "duration", "seconds": 3})
    };
    Json(json!({"text": TRANSCRIPT, "usage": usage})).into_response()
}

pub async fn speech(State(s): State<AppState>, req: axum::extract::Request) -> Response {
    if let Err(res) = accept(&s, req, Provider::OpenAi).await {
        return res;
    }
    (
        [(header::CONTENT_TYPE, "audio/mpeg")],
        vec![0xffu8, 0xfb, 0x90, 0x00],
    )
        .into_response()
}

pub async fn batches(State(s): State<AppState>, req: axum::extract::Request) -> Response {
    let call = match accept(&s, req, Provider::OpenAi).await {
        Ok(call) => call,
        Err(res) => return res,
    };
    Json(
        json!({"id": "batch_mock", "object": "batch", "status": "validating",
        "endpoint": call.body["endpoint"], "input_file_id": call.body["input_file_id"]}),
    )
    .into_response()
}
