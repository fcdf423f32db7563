//! The money path against a hostile key holder (issue 16), in the real Envoy against the
//! real key-service, on SQLite and on PostgreSQL: each case is a request sequence a tenant
//! with one valid key and a socket could send, and what must hold afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread::sleep;
use std::time::{Duration, Instant};

use keygate_e2e::api::{
    admin, assert_error, client, create_key, filter_stat, until_synced, usage_rows,
};
use keygate_e2e::stack::{Stack, StackBuilder};
use reqwest::Method;
use serde_json::{json, Value};

const GEMINI: &str = "/v1beta/models/gemini-2.0-flash:generateContent";

/// Prices a model at `credits` per token, in and out.
fn price(stack: &Stack, model: &str, credits: u64) {
    keygate_e2e::api::price_model(stack, model, credits * 1_000_000, credits * 1_000_000);
}

/// Sends `head` and `body` on a new connection, then closes its sending side and reads
/// whatever Envoy answers (possibly nothing) until it closes too or 5 s pass.
fn raw(stack: &Stack, head: &str, body: &[u8]) -> String {
    let addr = stack.envoy_url.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).expect("connect to Envoy");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    // Long enough for Envoy to have decided on the headers and passed the bytes on.
    sleep(Duration::from_millis(300));
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn gemini_body() -> Value {
    json!({"contents": [{"parts": [{"text": "two words"}]}]})
}

fn gemini(stack: &Stack, secret: &str) -> reqwest::blocking::Response {
    client()
        .post(format!("{}{GEMINI}", stack.envoy_url))
        .header("x-goog-api-key", secret)
        .json(&gemini_body())
        .send()
        .expect("gemini request")
}

/// A request that says its body is 2^62 bytes long (the largest the upstream takes without
/// answering at once), sends ten, and is abandoned, three times, at 4 credits a token:
/// it is billed for the ten bytes that arrived, never from the header; the key-service's
/// numbers stay whole; keys made afterwards still reach Envoy. (2^64 - 1 is answered by
/// the mock upstream at once, 431, so nothing is estimated from it.)
fn a_lying_length_wedges_nothing(builder: StackBuilder) {
    let stack = builder.start();
    price(&stack, "gemini-2.0-flash", 4);
    let key = create_key(&stack, json!({"name": "liar"}));
    assert_eq!(until_synced(|| gemini(&stack, &key.secret)).status(), 200);
    let failures_before = filter_stat(&stack, "keygate.sync_failures").unwrap_or(0);

    let head = format!(
        "POST {GEMINI} HTTP/1.1\r\nhost: gateway\r\nx-goog-api-key: {}\r\n\
         content-type: application/json\r\ncontent-length: 4611686018427387904\r\n\r\n",
        key.secret
    );
    for _ in 0..3 {
        raw(&stack, &head, b"{\"contents");
    }
    let rows = usage_rows(&stack, &key, 4);
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let abandoned: Vec<&Value> = rows.iter().filter(|r| r["status"] == 499).collect();
    assert_eq!(abandoned.len(), 3, "{rows:#?}");
    for row in abandoned {
        // Ten bytes arrived: a token per 4 bytes, rounded up.
        assert_eq!(row["input_tokens"], 3, "{row}");
        assert_eq!(row["estimated"], true, "{row}");
    }

    let (status, keys) = admin(&stack, Method::GET, "/api/v1/keys", None);
    assert_eq!(status, 200, "{keys}");
    for shown in keys["keys"].as_array().unwrap() {
        assert!(shown["used_quota"].is_i64(), "{shown}");
    }
    // A key made afterwards is admitted: the snapshot still syncs.
    let later = create_key(&stack, json!({"name": "later"}));
    assert_eq!(until_synced(|| gemini(&stack, &later.secret)).status(), 200);
    assert_eq!(
        filter_stat(&stack, "keygate.sync_failures").unwrap_or(0),
        failures_before
    );
}

/// Key A makes a normal call, then key B, on the same connection (so the same worker and
/// the same usage report), sends `{"model": ""}`: B's odd record is normalised and billed,
/// and A's record is never dropped with it.
fn an_odd_record_voids_no_other_bill(builder: StackBuilder) {
    let stack = builder.start();
    price(&stack, "gpt-4o-mini", 1);
    let a = create_key(&stack, json!({"name": "a"}));
    let b = create_key(&stack, json!({"name": "b"}));
    let chat = |http: &reqwest::blocking::Client, secret: &str, model: &str| {
        http.post(format!("{}/v1/chat/completions", stack.envoy_url))
            .bearer_auth(secret)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi there"}]}))
            .send()
            .expect("chat request")
    };
    let http = client();
    assert_eq!(
        until_synced(|| chat(&http, &a.secret, "gpt-4o-mini")).status(),
        200
    );
    assert_eq!(
        until_synced(|| chat(&http, &b.secret, "gpt-4o-mini")).status(),
        200
    );
    // Let the syncing calls' usage go out first.
    usage_rows(&stack, &a, 1);
    usage_rows(&stack, &b, 1);
    let a_before = usage_rows(&stack, &a, 1).len();
    let b_before = usage_rows(&stack, &b, 1).len();

    assert_eq!(chat(&http, &a.secret, "gpt-4o-mini").status(), 200);
    let odd = chat(&http, &b.secret, "");
    assert!(odd.status().is_success(), "{}", odd.status());
    let a_rows = usage_rows(&stack, &a, a_before + 1);
    assert_eq!(
        a_rows.len(),
        a_before + 1,
        "A's call is billed: {a_rows:#?}"
    );
    let b_rows = usage_rows(&stack, &b, b_before + 1);
    assert_eq!(
        b_rows.len(),
        b_before + 1,
        "B's call is billed: {b_rows:#?}"
    );
    assert!(
        b_rows.iter().any(|r| r["model"] == "unknown"),
        "{b_rows:#?}"
    );
    assert_eq!(filter_stat(&stack, "keygate.usage_dropped").unwrap_or(0), 0);
}

/// An Anthropic stream read for a while and dropped by the client: billed its prompt and
/// at least an output token per event that went by, not `message_start`'s placeholder 1.
fn a_cut_anthropic_stream_is_billed_for_what_went_by(builder: StackBuilder) {
    let stack = builder.start();
    let key = create_key(&stack, json!({"name": "cutter"}));
    let messages = |secret: &str, body: Value| {
        client()
            .post(format!("{}/v1/messages", stack.envoy_url))
            .header("x-api-key", secret)
            .header("x-mock-chunk-delay-ms", "10")
            .json(&body)
            .send()
            .expect("messages request")
    };
    let short = json!({"model": "claude-haiku", "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        until_synced(|| messages(&key.secret, short.clone())).status(),
        200
    );
    let before = usage_rows(&stack, &key, 1).len();

    let long = json!({"model": "claude-haiku", "max_tokens": 1000, "stream": true,
        "messages": [{"role": "user", "content": "tell me a long story"}]});
    let mut res = messages(&key.secret, long);
    assert_eq!(res.status(), 200);
    // About 100 events at 10 ms each, then the client hangs up.
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(1) {
        let n = res.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    drop(res);
    let deltas = String::from_utf8_lossy(&seen)
        .matches("event: content_block_delta")
        .count() as u64;
    assert!(deltas >= 20, "{deltas} content events read");

    let rows = usage_rows(&stack, &key, before + 1);
    let cut = &rows[0];
    assert_eq!(cut["estimated"], true, "{cut}");
    // The real prompt count from message_start (5 words), and no less output than the
    // content events the client read, nor more than were asked for.
    assert_eq!(cut["input_tokens"], 5, "{cut}");
    let output = cut["output_tokens"].as_u64().unwrap();
    assert!(
        output >= deltas && output < 1000,
        "{output} for {deltas} events: {cut}"
    );
}

/// A body the filter edits (it adds `stream_options.include_usage`) goes upstream with
/// an exact `content-length`, not chunked: some upstreams refuse chunked request bodies.
fn an_edited_body_keeps_an_exact_length(builder: StackBuilder) {
    let stack = builder.start();
    let key = create_key(&stack, json!({"name": "streamer"}));
    let body = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "hello"}]});
    let send = || {
        client()
            .post(format!("{}/v1/chat/completions", stack.envoy_url))
            .bearer_auth(&key.secret)
            .json(&body)
            .send()
            .expect("chat request")
    };
    let res = until_synced(send);
    assert_eq!(res.status(), 200);
    let _ = res.text();
    let seen = keygate_e2e::api::upstream_requests(&stack)
        .pop()
        .expect("the upstream saw the request");
    let sent = seen["body"].as_str().unwrap();
    assert!(sent.contains("include_usage"), "{sent}");
    assert_eq!(
        keygate_e2e::api::header(&seen, "content-length"),
        Some(sent.len().to_string().as_str()),
        "{seen}"
    );
    assert_eq!(keygate_e2e::api::header(&seen, "transfer-encoding"), None);

    // A big body, arriving in many chunks, with its own `"stream_options": null` after
    // 2 MB of messages: that value is rewritten in place.
    let big = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": null,
        "messages": [{"role": "user", "content": "x".repeat(2_000_000)}]});
    let res = client()
        .post(format!("{}/v1/chat/completions", stack.envoy_url))
        .bearer_auth(&key.secret)
        .json(&big)
        .send()
        .expect("big chat request");
    assert_eq!(res.status(), 200);
    let _ = res.text();
    let seen = keygate_e2e::api::upstream_requests(&stack)
        .pop()
        .expect("the upstream saw the request");
    // The upstream answered 200: it read the body as a JSON object.
    let tail = seen["body_tail"].as_str().unwrap();
    assert!(
        tail.ends_with(r#""stream":true,"stream_options":{"include_usage":true}}"#),
        "{tail}"
    );
    let length = seen["body_len"].as_u64().unwrap().to_string();
    assert_eq!(
        keygate_e2e::api::header(&seen, "content-length"),
        Some(length.as_str())
    );
}

/// A quota-limited key against every endpoint family: what keygate can meter is billed
/// (images, transcriptions, a trailing slash, a percent-escaped path), the rest is
/// refused with `endpoint_not_metered`; models nobody priced are refused with
/// `model_not_priced`, and priced by a pattern (`gpt-4o-*`) they are billed.
fn no_endpoint_family_is_unmetered_and_no_model_free(builder: StackBuilder) {
    let stack = builder.start();
    for model in ["gpt-4o-mini", "gpt-image-1", "gpt-4o-transcribe"] {
        price(&stack, model, 1);
    }
    let key = create_key(
        &stack,
        json!({"name": "limited", "unlimited_quota": false, "quota": 10_000_000}),
    );
    let post = |path: &str, body: Value| {
        client()
            .post(format!("{}{path}", stack.envoy_url))
            .bearer_auth(&key.secret)
            .json(&body)
            .send()
            .expect("request")
    };
    let chat = json!({"model": "gpt-4o-mini", "max_tokens": 3,
        "messages": [{"role": "user", "content": "four words right here"}]});
    assert_eq!(
        until_synced(|| post("/v1/chat/completions", chat.clone())).status(),
        200
    );
    let mut expected = 1;

    for path in ["/v1/chat/completions/", "/v1/chat/complet%69ons"] {
        let res = post(path, chat.clone());
        assert_eq!(
            res.status(),
            200,
            "{path}: {}",
            res.text().unwrap_or_default()
        );
        expected += 1;
    }
    let image = post(
        "/v1/images/generations",
        json!({"model": "gpt-image-1", "prompt": "a red fox", "n": 2}),
    );
    assert_eq!(image.status(), 200);
    expected += 1;
    let form = reqwest::blocking::multipart::Form::new()
        .text("model", "gpt-4o-transcribe")
        .part(
            "file",
            reqwest::blocking::multipart::Part::bytes(vec![7u8; 1000]).file_name("a.wav"),
        );
    let upload = client()
        .post(format!("{}/v1/audio/transcriptions", stack.envoy_url))
        .bearer_auth(&key.secret)
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(
        upload.status(),
        200,
        "{}",
        upload.text().unwrap_or_default()
    );
    expected += 1;

    for (path, body) in [
        (
            "/v1/batches",
            json!({"input_file_id": "file-1", "endpoint": "/v1/chat/completions"}),
        ),
        (
            "/v1/audio/speech",
            json!({"model": "tts-1", "input": "hello"}),
        ),
        ("/v1/images/variations", json!({"model": "dall-e-2"})),
        ("/v1/messages/batches", json!({"requests": []})),
    ] {
        assert_error(post(path, body), 403, "endpoint_not_metered");
    }
    // An escaped slash is refused by Envoy's shipped configuration before any filter.
    let hidden = post("/v1/chat/completions%2F..%2F..%2Fbatches", chat.clone());
    assert_eq!(hidden.status(), 400);
    let mut dated = chat.clone();
    dated["model"] = json!("gpt-4o-2024-11-20");
    assert_error(
        post("/v1/chat/completions", dated.clone()),
        403,
        "model_not_priced",
    );
    // Priced by a pattern, the dated alias is admitted (once the price has synced).
    price(&stack, "gpt-4o-*", 1);
    let res = keygate_e2e::api::until_status(200, || post("/v1/chat/completions", dated.clone()));
    assert_eq!(res.status(), 200);
    expected += 1;

    let rows = usage_rows(&stack, &key, expected);
    assert_eq!(rows.len(), expected, "{rows:#?}");
    for row in &rows {
        assert!(row["cost"].as_u64().unwrap() > 0, "billed: {row}");
        assert_eq!(row["priced"], true, "{row}");
    }
    let of = |model: &str| {
        rows.iter()
            .find(|r| r["model"] == model)
            .unwrap_or_else(|| panic!("{model} billed: {rows:#?}"))
    };
    // 3 words of prompt, 272 tokens an image.
    assert_eq!(of("gpt-image-1")["output_tokens"], 544);
    // 1,000 bytes of audio (a token per 100), 5 words of text.
    let transcribed = of("gpt-4o-transcribe");
    assert_eq!(
        (&transcribed["input_tokens"], &transcribed["output_tokens"]),
        (&json!(10), &json!(5))
    );
}

/// A model-restricted key uploading a file (multipart, as every SDK sends it) is checked
/// by the form's `model` field, not refused as "not JSON".
fn an_upload_is_checked_by_its_model_field(builder: StackBuilder) {
    let stack = builder.start();
    let key = create_key(
        &stack,
        json!({"name": "restricted", "models": ["whisper-1", "gpt-4o-mini"]}),
    );
    let upload = |model: &str| {
        let form = reqwest::blocking::multipart::Form::new()
            .part(
                "file",
                reqwest::blocking::multipart::Part::bytes(vec![1u8; 500]).file_name("a.wav"),
            )
            .text("model", model.to_string());
        client()
            .post(format!("{}/v1/audio/transcriptions", stack.envoy_url))
            .bearer_auth(&key.secret)
            .multipart(form)
            .send()
            .unwrap()
    };
    let res = until_synced(|| upload("whisper-1"));
    assert_eq!(res.status(), 200, "{}", res.text().unwrap_or_default());
    assert_error(upload("gpt-4o-transcribe"), 403, "model_not_allowed");
}

/// `GET /v1/models` with a model-restricted key answers 200 with only its models (the
/// upstream's list filtered, or its own where the upstream has none); an unrestricted
/// key sees the upstream's list untouched; one model is read only if the key may use it.
fn a_model_list_speaks_for_the_key(builder: StackBuilder) {
    let stack = builder.start();
    let restricted = create_key(
        &stack,
        json!({"name": "few", "models": ["gpt-4o-mini", "claude-*"]}),
    );
    let open = create_key(&stack, json!({"name": "all"}));
    let get = |secret: &str, path: &str| {
        client()
            .get(format!("{}{path}", stack.envoy_url))
            .bearer_auth(secret)
            .header("accept-encoding", "gzip")
            .send()
            .expect("models request")
    };
    let ids = |res: reqwest::blocking::Response| -> Vec<String> {
        assert_eq!(res.status(), 200);
        let list: Value = res.json().expect("a JSON list");
        list["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let everything = ids(until_synced(|| get(&open.secret, "/v1/models")));
    assert!(everything.len() > 2, "{everything:?}");
    let mine = ids(until_synced(|| get(&restricted.secret, "/v1/models")));
    let expected: Vec<String> = everything
        .iter()
        .filter(|m| *m == "gpt-4o-mini" || m.starts_with("claude-"))
        .cloned()
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(mine, expected);
    // Gemini's list path, which the mock upstream does not serve: the key's own models.
    assert_eq!(
        ids(get(&restricted.secret, "/v1beta/models")),
        ["gpt-4o-mini"]
    );
    assert_eq!(
        get(&restricted.secret, "/v1/models/gpt-4o-mini").status(),
        200
    );
    assert_error(
        get(&restricted.secret, "/v1/models/gpt-4o"),
        403,
        "model_not_allowed",
    );
}

/// A header value that is not UTF-8 (obs-text, which Envoy passes on) is the client's
/// error, 400 `invalid_request_header`, not 503 `key_service_unavailable`.
fn a_header_that_is_not_utf8_is_the_clients_error(builder: StackBuilder) {
    let stack = builder.start();
    let key = create_key(&stack, json!({"name": "odd"}));
    assert_eq!(until_synced(|| gemini(&stack, &key.secret)).status(), 200);
    let mut head = format!(
        "POST {GEMINI} HTTP/1.1\r\nhost: gateway\r\nx-goog-api-key: {}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\nx-odd: caf",
        key.secret
    )
    .into_bytes();
    head.extend_from_slice(b"\xe9\r\n\r\n{}");
    let addr = stack.envoy_url.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).expect("connect to Envoy");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(&head).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = conn.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_request_header"), "{answer}");
}

/// Two calls with the same client-sent `x-request-id`, through an Envoy that keeps it
/// (`preserve_external_request_id: true`): both are billed, as the filter's own ids
/// (never the client's) are what the key-service bills once.
fn a_client_chosen_request_id_cannot_make_two_calls_bill_once(builder: StackBuilder) {
    let stack = builder
        .envoy_edit(
            "use_remote_address: true",
            "use_remote_address: true\n                preserve_external_request_id: true",
        )
        .start();
    let key = create_key(&stack, json!({"name": "forger"}));
    let call = || {
        client()
            .post(format!("{}{GEMINI}", stack.envoy_url))
            .header("x-goog-api-key", &key.secret)
            .header("x-request-id", "same-id-every-time")
            .json(&gemini_body())
            .send()
            .expect("gemini request")
    };
    assert_eq!(until_synced(call).status(), 200);
    let before = usage_rows(&stack, &key, 1).len();
    assert_eq!(call().status(), 200);
    assert_eq!(call().status(), 200);
    let rows = usage_rows(&stack, &key, before + 2);
    assert_eq!(rows.len(), before + 2, "{rows:#?}");
    let seen = keygate_e2e::api::upstream_requests(&stack);
    assert!(
        seen.iter()
            .any(|r| keygate_e2e::api::header(r, "x-request-id") == Some("same-id-every-time")),
        "Envoy kept the client's id, as configured"
    );
}

/// An Azure-style deployment path and the body's `model` are checked together: a
/// restricted key cannot name an allowed deployment and slip another model in the body.
fn an_azure_deployment_and_the_body_model_are_checked_together(builder: StackBuilder) {
    let stack = builder.start();
    let key = create_key(&stack, json!({"name": "azure", "models": ["gpt-4o-mini"]}));
    let call = |body: Value| {
        client()
            .post(format!(
                "{}/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
                stack.envoy_url
            ))
            .header("api-key", &key.secret)
            .json(&body)
            .send()
            .expect("azure request")
    };
    let plain = json!({"messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(until_synced(|| call(plain.clone())).status(), 200);
    let mut same = plain.clone();
    same["model"] = json!("gpt-4o-mini");
    assert_eq!(call(same).status(), 200);
    let mut other = plain;
    other["model"] = json!("gpt-4o");
    assert_error(call(other), 403, "model_not_allowed");
}

/// What keygate cannot meter in tokens is billed per call once the operator prices it: a
/// route (`route:/v1/audio/speech`) or a model without token usage (`dall-e-3`). A call
/// the provider fails is not charged per call.
fn per_call_prices_bill_routes_and_models_without_tokens(builder: StackBuilder) {
    let stack = builder.start();
    let key = create_key(
        &stack,
        json!({"name": "per-call", "unlimited_quota": false, "quota": 1_000_000}),
    );
    let post = |path: &str, body: Value| {
        client()
            .post(format!("{}{path}", stack.envoy_url))
            .bearer_auth(&key.secret)
            .json(&body)
            .send()
            .expect("request")
    };
    let speech = json!({"model": "tts-1", "input": "hello"});
    assert_error(
        until_synced(|| post("/v1/audio/speech", speech.clone())),
        403,
        "endpoint_not_metered",
    );
    for (name, per_request) in [("route:%2Fv1%2Faudio%2Fspeech", 25), ("dall-e-3", 40)] {
        let (status, body) = admin(
            &stack,
            Method::PUT,
            &format!("/api/v1/models/{name}"),
            Some(json!({"input": 0, "output": 0, "per_request": per_request})),
        );
        assert_eq!(status, 201, "{body}");
    }
    let res = keygate_e2e::api::until_status(200, || post("/v1/audio/speech", speech.clone()));
    assert_eq!(res.status(), 200);
    let image = json!({"model": "dall-e-3", "prompt": "a fox"});
    let priced =
        keygate_e2e::api::until_status(200, || post("/v1/images/generations", image.clone()));
    assert_eq!(priced.status(), 200);
    // Each worker rereads the prices on its own tick: a worker yet to see dall-e-3's
    // refuses it (model_not_priced, not billed) until it does.
    let failed = keygate_e2e::api::until_status(500, || {
        client()
            .post(format!("{}/v1/images/generations", stack.envoy_url))
            .bearer_auth(&key.secret)
            .header("x-mock-status", "500")
            .json(&image)
            .send()
            .unwrap()
    });
    assert_eq!(failed.status(), 500);

    let rows = usage_rows(&stack, &key, 3);
    let cost_of = |model: &str, status: u64| {
        rows.iter()
            .find(|r| r["model"] == model && r["status"] == status)
            .map(|r| r["cost"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("{model} {status}: {rows:#?}"))
    };
    assert_eq!(cost_of("route:/v1/audio/speech", 200), 25);
    assert_eq!(cost_of("dall-e-3", 200), 40);
    assert_eq!(cost_of("dall-e-3", 500), 0);
}

/// An upload whose `model` field comes first (as SDKs send it) is decided on the form's
/// head and streams on: a restricted key's upload may be larger than `max_body_bytes`.
/// With the model after the file, the whole form must be read, within the limit.
fn an_upload_is_decided_on_its_head_and_streams_on(builder: StackBuilder) {
    let stack = builder
        .envoy_edit("\"max_body_bytes\": 8388608", "\"max_body_bytes\": 100000")
        .start();
    let key = create_key(&stack, json!({"name": "uploader", "models": ["whisper-1"]}));
    let upload = |model_first: bool, model: &str| {
        let file = reqwest::blocking::multipart::Part::bytes(vec![3u8; 500_000]).file_name("a.wav");
        let form = reqwest::blocking::multipart::Form::new();
        let form = if model_first {
            form.text("model", model.to_string()).part("file", file)
        } else {
            form.part("file", file).text("model", model.to_string())
        };
        client()
            .post(format!("{}/v1/audio/transcriptions", stack.envoy_url))
            .bearer_auth(&key.secret)
            .multipart(form)
            .send()
            .unwrap()
    };
    let res = until_synced(|| upload(true, "whisper-1"));
    assert_eq!(res.status(), 200, "{}", res.text().unwrap_or_default());
    let seen = keygate_e2e::api::upstream_requests(&stack);
    assert!(
        seen.iter().any(|r| r["file_bytes"] == 500_000),
        "the whole file reached the upstream"
    );
    assert_error(upload(true, "gpt-4o-transcribe"), 403, "model_not_allowed");
    assert_error(upload(false, "whisper-1"), 413, "request_too_large");
}

/// Every case, on SQLite and on PostgreSQL.
macro_rules! on_both_engines {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $case() {
                super::$case(super::Stack::builder())
            })*
        }
        mod postgres {
            $(#[test]
            fn $case() {
                super::$case(super::Stack::builder().postgres())
            })*
        }
    };
}

on_both_engines!(
    a_lying_length_wedges_nothing,
    a_cut_anthropic_stream_is_billed_for_what_went_by,
    an_odd_record_voids_no_other_bill,
    an_edited_body_keeps_an_exact_length,
    no_endpoint_family_is_unmetered_and_no_model_free,
    an_upload_is_checked_by_its_model_field,
    a_model_list_speaks_for_the_key,
    a_header_that_is_not_utf8_is_the_clients_error,
    a_client_chosen_request_id_cannot_make_two_calls_bill_once,
    an_azure_deployment_and_the_body_model_are_checked_together,
    per_call_prices_bill_routes_and_models_without_tokens,
    an_upload_is_decided_on_its_head_and_streams_on,
);
