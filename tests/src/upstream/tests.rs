//! The mock upstream served on a real loopback port and called over HTTP.

use std::net::SocketAddr;

use reqwest::blocking::Client;
use serde_json::{json, Value};

use super::usage::words_in;

/// Serves the router on a free port from a background runtime for the test's lifetime.
fn serve() -> String {
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, super::router()).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn post(base: &str, path: &str, body: Value, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = Client::new().post(format!("{base}{path}")).json(&body);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let res = req.send().unwrap();
    (res.status().as_u16(), res.text().unwrap())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// The JSON payloads of an SSE body's `data:` lines, `[DONE]` left out.
fn sse_data(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(json_of)
        .collect()
}

#[test]
fn prompt_words_are_counted_through_every_provider_nesting() {
    let cases = [
        (json!("one two  three"), 3),
        (json!(["a b", "c"]), 3),
        (
            json!([{"role": "user", "content": "a b"}, {"content": [{"type": "text", "text": "c"}]}]),
            3,
        ),
        (json!([{"parts": [{"text": "a b c d"}]}]), 4),
        (json!({"parts": [{"text": "sys tem"}]}), 2),
        (json!(null), 0),
        (json!([1, 2, 3]), 0),
    ];
    for (value, words) in cases {
        assert_eq!(words_in(&value), words, "{value}");
    }
}

#[test]
fn chat_reports_usage_with_cached_and_reasoning_details() {
    let base = serve();
    let body = json!({"model": "gpt-x", "max_tokens": 5,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there you"}]});
    let headers = [
        ("x-mock-cached-tokens", "2"),
        ("x-mock-reasoning-tokens", "1"),
    ];
    let (status, text) = post(&base, "/v1/chat/completions", body, &headers);
    assert_eq!(status, 200);
    let v = json_of(&text);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-x");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 10);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        1
    );
    assert_eq!(v["choices"][0]["message"]["content"], "w1 w2 w3 w4 w5");
}

#[test]
fn chat_stream_reports_usage_only_when_include_usage_is_true() {
    let base = serve();
    let body = |include: bool| {
        json!({"model": "m", "stream": true, "stream_options": {"include_usage": include},
            "messages": [{"role": "user", "content": "a b"}], "max_completion_tokens": 3})
    };
    let (_, without) = post(&base, "/v1/chat/completions", body(false), &[]);
    assert!(without.ends_with("data: [DONE]\n\n"));
    let events = sse_data(&without);
    assert_eq!(events.len(), 4, "three words and a finish chunk");
    assert!(events.iter().all(|e| e.get("usage").is_none()));

    let (_, with) = post(&base, "/v1/chat/completions", body(true), &[]);
    let events = sse_data(&with);
    assert_eq!(events.len(), 5);
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 2);
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert!(events[..4].iter().all(|e| e["usage"].is_null()));
}

#[test]
fn completions_and_embeddings_count_their_inputs() {
    let base = serve();
    let (_, text) = post(
        &base,
        "/v1/completions",
        json!({"prompt": ["a b", "c"]}),
        &[],
    );
    let v = json_of(&text);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 16);

    let (_, text) = post(
        &base,
        "/v1/embeddings",
        json!({"model": "e", "input": ["a b", "c d e"]}),
        &[],
    );
    let v = json_of(&text);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["usage"], json!({"prompt_tokens": 5, "total_tokens": 5}));
}

#[test]
fn responses_stream_reports_usage_in_response_completed() {
    let base = serve();
    let body = json!({"model": "o", "instructions": "be kind", "input": "why is the sky",
        "max_output_tokens": 2, "stream": true});
    let (_, text) = post(
        &base,
        "/v1/responses",
        body,
        &[("x-mock-reasoning-tokens", "7")],
    );
    assert!(text.contains("event: response.completed\n"));
    let events = sse_data(&text);
    let completed = events.last().unwrap();
    assert_eq!(completed["type"], "response.completed");
    let usage = &completed["response"]["usage"];
    assert_eq!(usage["input_tokens"], 6);
    assert_eq!(usage["output_tokens"], 2);
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 7);
    assert!(events[0]["response"]["usage"].is_null());
}

#[test]
fn anthropic_stream_splits_usage_like_the_real_api() {
    let base = serve();
    let body = json!({"model": "claude", "max_tokens": 4, "stream": true, "system": "s t",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "u v w"}]}]});
    let (_, text) = post(
        &base,
        "/v1/messages",
        body,
        &[("x-mock-cached-tokens", "2")],
    );
    let events = sse_data(&text);
    let start = &events[0]["message"]["usage"];
    assert_eq!(
        start["input_tokens"], 3,
        "cached tokens are not in input_tokens"
    );
    assert_eq!(start["cache_read_input_tokens"], 2);
    assert_eq!(start["output_tokens"], 1);
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["usage"]["output_tokens"], 4);
    assert_eq!(events.last().unwrap()["type"], "message_stop");
}

#[test]
fn gemini_streams_repeat_cumulative_usage_as_sse_or_a_json_array() {
    let base = serve();
    let body = json!({"contents": [{"parts": [{"text": "a b c"}]}],
        "generationConfig": {"maxOutputTokens": 3}});
    let path = "/v1beta/models/gemini-x:streamGenerateContent";
    let (_, sse_text) = post(&base, &format!("{path}?alt=sse"), body.clone(), &[]);
    let events = sse_data(&sse_text);
    let counts: Vec<u64> = events
        .iter()
        .map(|e| e["usageMetadata"]["candidatesTokenCount"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 2, 3]);
    assert!(events
        .iter()
        .all(|e| e["usageMetadata"]["promptTokenCount"] == 3));

    let (_, array_text) = post(&base, path, body.clone(), &[]);
    let array = json_of(&array_text);
    assert_eq!(array.as_array().unwrap().len(), 3);
    assert_eq!(array[2]["usageMetadata"]["totalTokenCount"], 6);
    assert_eq!(array[2]["candidates"][0]["finishReason"], "STOP");

    let (_, one) = post(&base, "/v1beta/models/gemini-x:generateContent", body, &[]);
    assert_eq!(json_of(&one)["usageMetadata"]["candidatesTokenCount"], 3);
}

#[test]
fn gemini_is_served_under_the_v1_prefix_too() {
    let base = serve();
    let body = json!({"contents": [{"parts": [{"text": "a b"}]}]});
    let (status, one) = post(
        &base,
        "/v1/models/gemini-x:generateContent",
        body.clone(),
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(json_of(&one)["usageMetadata"]["promptTokenCount"], 2);
    let path = "/v1/models/gemini-x:streamGenerateContent?alt=sse";
    let (status, text) = post(&base, path, body, &[]);
    assert_eq!(status, 200);
    let events = sse_data(&text);
    assert_eq!(
        events.last().unwrap()["usageMetadata"]["candidatesTokenCount"],
        16
    );
}

#[test]
fn models_are_listed_and_retrieved_in_openai_shape() {
    let base = serve();
    let get = |path: &str| {
        let res = Client::new().get(format!("{base}{path}")).send().unwrap();
        (res.status().as_u16(), res.json::<Value>().unwrap())
    };
    let (status, list) = get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"gpt-4o-mini"), "{list}");
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["object"] == "model"));
    let (status, one) = get("/v1/models/gpt-4o");
    assert_eq!((status, &one["id"]), (200, &json!("gpt-4o")));
    let (status, missing) = get("/v1/models/nope");
    assert_eq!(
        (status, &missing["error"]["code"]),
        (404, &json!("model_not_found"))
    );
}

#[test]
fn azure_deployment_paths_answer_in_openai_shape() {
    let base = serve();
    let path = "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21";
    let (status, text) = post(
        &base,
        path,
        json!({"messages": [{"role": "user", "content": "x"}]}),
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(json_of(&text)["model"], "my-gpt");
}

#[test]
fn bad_bodies_and_forced_statuses_get_provider_errors() {
    let base = serve();
    let res = Client::new()
        .post(format!("{base}/v1/messages"))
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().unwrap()["error"]["type"],
        "invalid_request_error"
    );

    let (status, text) = post(
        &base,
        "/v1beta/models/g:generateContent",
        json!({}),
        &[("x-mock-status", "503")],
    );
    assert_eq!(status, 503);
    assert_eq!(json_of(&text)["error"]["code"], 503);

    let (status, _) = post(&base, "/v2/unknown", json!({}), &[]);
    assert_eq!(status, 404);
}

#[test]
fn requests_are_logged_with_headers_and_can_be_cleared() {
    let base = serve();
    post(
        &base,
        "/v1/chat/completions?x=1",
        json!({"messages": []}),
        &[("x-keygate-key-id", "k1")],
    );
    let log: Value = Client::new()
        .get(format!("{base}/mock/requests"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let requests = log["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["path"], "/v1/chat/completions?x=1");
    assert!(requests[0]["headers"]
        .as_array()
        .unwrap()
        .contains(&json!(["x-keygate-key-id", "k1"])));
    Client::new()
        .delete(format!("{base}/mock/requests"))
        .send()
        .unwrap();
    let log: Value = Client::new()
        .get(format!("{base}/mock/requests"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(log["requests"], json!([]));
}
