//! A request may end with HTTP/2 trailers instead of a body chunk marked as the last. The
//! filter must decide it then, as it would have at its body's end: otherwise Envoy, once
//! the trailers arrive, passes on a request whose model, quota and rate limits were never
//! checked.

use bytes::Bytes;
use keygate_e2e::api::{chat, create_key, until_synced, upstream_requests, CHAT};
use keygate_e2e::stack::Stack;
use serde_json::{json, Value};

/// A chat call over HTTP/2 (prior knowledge) whose body is followed by trailers; its
/// status and body.
async fn chat_with_trailers(address: &str, secret: &str, model: &str) -> (u16, Value) {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to Envoy");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("h2 ready");
    let request = http::Request::post(format!("http://{address}{CHAT}"))
        .header("authorization", format!("Bearer {secret}"))
        .header("content-type", "application/json")
        .body(())
        .expect("request");
    let (response, mut stream) = client.send_request(request, false).expect("send headers");
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    stream
        .send_data(Bytes::from(body.to_string()), false)
        .expect("send body");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-client-trailer", http::HeaderValue::from_static("end"));
    stream.send_trailers(trailers).expect("send trailers");
    let response = response.await.expect("response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("response body");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[test]
fn a_request_ending_with_trailers_is_checked_like_any_other() {
    let stack = Stack::start();
    let key = create_key(
        &stack,
        json!({"name": "trailers", "models": ["gpt-4o-mini"], "rpm": 3}),
    );
    // The key is known (a plain call, the first of its 3 a minute).
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );
    let address = stack.envoy_url.trim_start_matches("http://").to_string();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let call = |model: &str| runtime.block_on(chat_with_trailers(&address, &key.secret, model));

    // A model the key may not use is refused, and never reaches the upstream.
    let (status, body) = call("gpt-4o");
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "model_not_allowed");
    let models: Vec<String> = upstream_requests(&stack)
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(r["body"].as_str()?).ok())
        .filter_map(|b| Some(b["model"].as_str()?.to_string()))
        .collect();
    assert!(!models.iter().any(|m| m == "gpt-4o"), "{models:?}");

    // Allowed ones pass, and count against the key's RPM like any other call.
    for _ in 0..2 {
        let (status, body) = call("gpt-4o-mini");
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = call("gpt-4o-mini");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}
