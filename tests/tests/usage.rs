//! Usage read from responses in the real Envoy and billed by the key-service: every
//! provider format, streamed or not, arrives once in the usage log with the tokens the
//! upstream reported, and the key's quota goes down by their price.

use std::thread::sleep;
use std::time::{Duration, Instant};

use keygate_e2e::api::{admin, client, create_key, filter_stat, until_synced};
use keygate_e2e::stack::Stack;
use reqwest::Method;
use serde_json::{json, Value};

/// One call of each kind: (name, path, body of the plain call, body of the streamed one).
fn calls() -> Vec<(&'static str, &'static str, Value, Value)> {
    let chat = json!({"model": "gpt-4o-mini", "max_tokens": 7,
        "messages": [{"role": "user", "content": "count these five words"}]});
    let mut chat_stream = chat.clone();
    chat_stream["stream"] = json!(true);
    chat_stream["stream_options"] = json!({"include_usage": true});
    let messages = json!({"model": "claude-haiku", "max_tokens": 9,
        "messages": [{"role": "user", "content": "three words here"}]});
    let mut messages_stream = messages.clone();
    messages_stream["stream"] = json!(true);
    let responses =
        json!({"model": "gpt-4o", "input": "hello there friend", "max_output_tokens": 8});
    let mut responses_stream = responses.clone();
    responses_stream["stream"] = json!(true);
    let gemini = json!({"contents": [{"parts": [{"text": "two words"}]}],
        "generationConfig": {"maxOutputTokens": 6}});
    vec![
        ("chat", "/v1/chat/completions", chat, chat_stream),
        ("messages", "/v1/messages", messages, messages_stream),
        ("responses", "/v1/responses", responses, responses_stream),
        (
            "gemini",
            "/v1beta/models/gemini-2.0-flash:generateContent",
            gemini.clone(),
            gemini,
        ),
    ]
}

fn usage_log(stack: &Stack) -> Vec<Value> {
    let (status, page) = admin(stack, Method::GET, "/api/v1/usage?per_page=100", None);
    assert_eq!(status, 200);
    page["usage"].as_array().cloned().unwrap_or_default()
}

#[test]
fn every_format_is_read_streamed_or_not_and_billed_once() {
    let stack = Stack::start();
    for (model, input, output) in [
        ("gpt-4o-mini", 1_000_000, 2_000_000),
        ("claude-haiku", 1_000_000, 1_000_000),
        ("gpt-4o", 2_000_000, 2_000_000),
        ("gemini-2.0-flash", 1_000_000, 3_000_000),
    ] {
        let (status, _) = admin(
            &stack,
            Method::PUT,
            &format!("/api/v1/models/{model}"),
            Some(json!({"input": input, "output": output})),
        );
        assert_eq!(status, 201);
    }
    let key = create_key(
        &stack,
        json!({"name": "metered", "unlimited_quota": false, "quota": 100000}),
    );
    let send = |path: &str, body: &Value| {
        client()
            .post(format!("{}{path}", stack.envoy_url))
            .header("x-api-key", &key.secret)
            .header("accept-encoding", "gzip")
            .json(body)
            .send()
            .unwrap()
    };
    until_synced(|| send("/v1/chat/completions", &calls()[0].2));

    // What the client saw in each plain answer; the streamed twin must bill the same.
    let mut expected = Vec::new();
    for (name, path, plain, streamed) in calls() {
        let res = send(path, &plain);
        assert_eq!(res.status(), 200, "{name}");
        let body: Value = res.json().unwrap();
        expected.push((name, body));
        let stream_path = if name == "gemini" {
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        } else {
            path
        };
        let res = send(stream_path, &streamed);
        assert_eq!(res.status(), 200, "{name} stream");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"),
            "{name} streamed"
        );
        let _ = res.text().unwrap();
    }

    // 1 sync request + 8 calls, reported within a sync interval or two.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut log = usage_log(&stack);
    while log.len() < 9 && Instant::now() < deadline {
        sleep(Duration::from_millis(200));
        log = usage_log(&stack);
    }
    assert_eq!(log.len(), 9, "{log:#?}");
    let mut billed = 0;
    for (name, body) in &expected {
        let (input, output) = match *name {
            "chat" => (
                &body["usage"]["prompt_tokens"],
                &body["usage"]["completion_tokens"],
            ),
            "messages" => (
                &body["usage"]["input_tokens"],
                &body["usage"]["output_tokens"],
            ),
            "responses" => (
                &body["usage"]["input_tokens"],
                &body["usage"]["output_tokens"],
            ),
            _ => (
                &body["usageMetadata"]["promptTokenCount"],
                &body["usageMetadata"]["candidatesTokenCount"],
            ),
        };
        let model = match *name {
            "chat" => "gpt-4o-mini",
            "messages" => "claude-haiku",
            "responses" => "gpt-4o",
            _ => "gemini-2.0-flash",
        };
        let rows: Vec<&Value> = log
            .iter()
            .filter(|r| r["model"] == model && r["input_tokens"] == *input)
            .collect();
        // The sync call repeats the first chat: three rows for it, two for the others.
        let want = if *name == "chat" { 3 } else { 2 };
        assert_eq!(rows.len(), want, "{name}: {log:#?}");
        for row in rows {
            assert_eq!(row["output_tokens"], *output, "{name}");
            assert_eq!(row["key_id"], key.id.as_str());
            assert_eq!(row["status"], 200);
            assert_eq!(row["priced"], true);
            billed += row["cost"].as_i64().unwrap();
        }
    }
    assert!(billed > 0);
    let (_, shown) = admin(
        &stack,
        Method::GET,
        &format!("/api/v1/keys/{}", key.id),
        None,
    );
    assert_eq!(
        shown["used_quota"], billed,
        "the key paid for each call once"
    );
    let ids: std::collections::HashSet<&str> = log
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 9, "each request logged once");
    assert_eq!(filter_stat(&stack, "keygate.usage_dropped").unwrap_or(0), 0);
}

#[test]
fn usage_made_while_the_key_service_is_down_is_billed_when_it_returns() {
    let mut stack = Stack::start();
    let key = create_key(&stack, json!({"name": "patient"}));
    let chat = |stack: &Stack| {
        client()
            .post(format!("{}/v1/chat/completions", stack.envoy_url))
            .bearer_auth(&key.secret)
            .json(&calls()[0].2)
            .send()
            .unwrap()
    };
    assert_eq!(until_synced(|| chat(&stack)).status(), 200);
    stack.kill("key-service");
    // The filter keeps serving from its snapshot and holds what the calls used.
    for _ in 0..5 {
        assert_eq!(chat(&stack).status(), 200);
    }
    sleep(Duration::from_secs(3));
    assert!(
        filter_stat(&stack, "keygate.usage_report_failures").unwrap_or(0) >= 1,
        "reports were tried while the key-service was down"
    );
    stack.restart_key_service();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut log = usage_log(&stack);
    while log.len() < 6 && Instant::now() < deadline {
        sleep(Duration::from_millis(250));
        log = usage_log(&stack);
    }
    let ids: std::collections::HashSet<&str> = log
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!((log.len(), ids.len()), (6, 6), "every call once: {log:#?}");
}

#[test]
fn an_openai_stream_that_did_not_ask_for_usage_is_billed_and_looks_as_asked() {
    let stack = Stack::start();
    let key = create_key(&stack, json!({"name": "streamer"}));
    let plain = json!({"model": "gpt-4o-mini", "max_tokens": 5,
        "messages": [{"role": "user", "content": "stream me four words"}]});
    let mut streamed = plain.clone();
    streamed["stream"] = json!(true);
    let send = |base: &str, body: &Value| {
        client()
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key.secret)
            .json(body)
            .send()
            .unwrap()
    };
    until_synced(|| send(&stack.envoy_url, &plain));
    let usage_seen: Value = send(&stack.envoy_url, &plain).json().unwrap();

    let through_envoy = send(&stack.envoy_url, &streamed).text().unwrap();
    let upstream_saw = keygate_e2e::api::upstream_requests(&stack).pop().unwrap();
    let sent: Value = serde_json::from_str(upstream_saw["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the filter asked the upstream for usage"
    );
    // What the upstream sends a client that did not ask: the same events, no usage.
    let direct = send(&stack.upstream_url, &streamed).text().unwrap();
    assert!(!through_envoy.contains("usage"), "{through_envoy}");
    assert_eq!(
        through_envoy, direct,
        "the client got the stream it asked for"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut log = usage_log(&stack);
    while log.len() < 3 && Instant::now() < deadline {
        sleep(Duration::from_millis(200));
        log = usage_log(&stack);
    }
    assert_eq!(log.len(), 3, "{log:#?}");
    let tokens = |r: &Value| (r["input_tokens"].clone(), r["output_tokens"].clone());
    let want = (
        usage_seen["usage"]["prompt_tokens"].clone(),
        usage_seen["usage"]["completion_tokens"].clone(),
    );
    assert!(log.iter().all(|r| tokens(r) == want), "{log:#?}");
}

#[test]
fn a_provider_error_is_logged_with_its_status_and_no_tokens() {
    let stack = Stack::start();
    let key = create_key(&stack, json!({"name": "unlucky"}));
    let send = |status: Option<&str>| {
        let mut req = client()
            .post(format!("{}/v1/chat/completions", stack.envoy_url))
            .bearer_auth(&key.secret)
            .header(
                "x-request-id",
                format!("{}-long-client-id", "x".repeat(200)),
            )
            .json(&calls()[0].2);
        if let Some(status) = status {
            req = req.header("x-mock-status", status);
        }
        req.send().unwrap()
    };
    until_synced(|| send(None));
    assert_eq!(send(Some("503")).status(), 503);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut log = usage_log(&stack);
    while !log.iter().any(|r| r["status"] == 503) && Instant::now() < deadline {
        sleep(Duration::from_millis(200));
        log = usage_log(&stack);
    }
    let failed = log
        .iter()
        .find(|r| r["status"] == 503)
        .expect("the error is logged");
    assert_eq!(failed["input_tokens"], 0);
    assert_eq!(failed["output_tokens"], 0);
    assert_eq!(failed["cost"], 0);
    // The record's id is the filter's own, never the client's x-request-id.
    let id = failed["request_id"].as_str().unwrap();
    assert!(id.starts_with("kg-") && !id.contains("client"), "{id}");
    // The successful call's tokens reach Envoy's stats on its own VM's next tick, which may
    // come after another VM delivered the error's record.
    let counted = || filter_stat(&stack, "keygate.tokens.input").unwrap_or(0) > 0;
    while !counted() && Instant::now() < deadline {
        sleep(Duration::from_millis(100));
    }
    assert!(
        counted(),
        "the successful call's input tokens were never counted"
    );
}

#[test]
fn a_stream_the_client_leaves_is_billed_as_an_estimate_of_what_went_by() {
    use std::io::Read;

    let stack = Stack::start();
    let key = create_key(&stack, json!({"name": "impatient"}));
    until_synced(|| {
        client()
            .get(format!("{}/v1/models", stack.envoy_url))
            .bearer_auth(&key.secret)
            .send()
            .unwrap()
    });
    // 40 words, one chunk each, 200 ms apart: 8 s in all. The client reads for about a
    // second and hangs up.
    let mut res = client()
        .post(format!("{}/v1/chat/completions", stack.envoy_url))
        .bearer_auth(&key.secret)
        .header("x-mock-chunk-delay-ms", "200")
        .json(
            &json!({"model": "gpt-4o-mini", "max_tokens": 40, "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "tell me a long story"}]}),
        )
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while started.elapsed() < Duration::from_secs(1) {
        read += res.read(&mut buf).unwrap();
    }
    assert!(read > 0);
    drop(res);

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut log = usage_log(&stack);
    while log.is_empty() && Instant::now() < deadline {
        sleep(Duration::from_millis(200));
        log = usage_log(&stack);
    }
    assert_eq!(log.len(), 1, "{log:#?}");
    let record = &log[0];
    assert_eq!(record["estimated"], true, "{record}");
    assert_eq!(record["status"], 200);
    // The prompt, and no more output than the 40 words, nor less than one.
    assert!(record["input_tokens"].as_u64().unwrap() > 0, "{record}");
    let output = record["output_tokens"].as_u64().unwrap();
    assert!((1..40).contains(&output), "{record}");
    assert!(filter_stat(&stack, "keygate.usage_estimated").is_some());
}
