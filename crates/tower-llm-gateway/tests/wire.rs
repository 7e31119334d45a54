//! Wire fidelity over HTTP, without the SDKs: what the official clients send and expect.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_llm_gateway::{Config, Gateway};
use tower_llm_testkit::{
    DEFAULT_DIMENSIONS, FaultPlan, MockServer, TestClient, embedding_for, post_json, with_api_key,
};

const KEY: &str = "sk-wire";

async fn start() -> (MockServer, String) {
    let upstream = MockServer::start(FaultPlan::healthy().name("up"))
        .await
        .unwrap();
    let config = format!(
        "[[keys]]\nkey = \"{KEY}\"\ntenant = \"w\"\n[providers.up]\nkind = \"openai\"\n\
         base_url = \"{}/v1\"\nmodels = [\"m\", \"e\"]\n",
        upstream.base_url()
    );
    let gateway = Gateway::new(&Config::from_toml(&config).unwrap())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = gateway.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (upstream, url)
}

async fn post(url: &str, body: &Value) -> http::Response<Bytes> {
    TestClient::new()
        .oneshot(with_api_key(post_json(url, body), KEY))
        .await
        .unwrap()
}

fn json_of(response: &http::Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).unwrap()
}

#[tokio::test]
async fn an_assistant_message_without_role_but_with_tool_calls_is_accepted() {
    let (upstream, url) = start().await;
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": "weather?"},
        {"content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]});
    let response = post(&format!("{url}/v1/chat/completions"), &body).await;
    assert_eq!(response.status(), 200, "{:?}", response.body());
    assert_eq!(upstream.counters().requests, 1);

    let no_role = json!({"model": "m", "messages": [{"content": "who am I?"}]});
    let response = post(&format!("{url}/v1/chat/completions"), &no_role).await;
    assert_eq!(
        response.status(),
        400,
        "without tool calls a role is still required"
    );
}

#[tokio::test]
async fn n_above_one_is_refused_before_any_upstream_call() {
    let (upstream, url) = start().await;
    let body = json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]});
    let response = post(&format!("{url}/v1/chat/completions"), &body).await;
    assert_eq!(response.status(), 400);
    assert!(
        json_of(&response)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`n`")
    );
    assert_eq!(
        upstream.counters().requests,
        0,
        "n was not paid for upstream"
    );
    let one = json!({"model": "m", "n": 1, "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(
        post(&format!("{url}/v1/chat/completions"), &one)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn embeddings_in_base64_are_little_endian_f32() {
    let (_upstream, url) = start().await;
    let body = json!({"model": "e", "input": ["alpha"], "encoding_format": "base64"});
    let response = post(&format!("{url}/v1/embeddings"), &body).await;
    assert_eq!(response.status(), 200);
    let encoded = json_of(&response)["data"][0]["embedding"]
        .as_str()
        .unwrap()
        .to_owned();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(floats, embedding_for("alpha", DEFAULT_DIMENSIONS));
    let bad = json!({"model": "e", "input": "x", "encoding_format": "int8"});
    assert_eq!(
        post(&format!("{url}/v1/embeddings"), &bad).await.status(),
        400
    );
}

#[tokio::test]
async fn messages_route_answers_in_anthropics_shape() {
    let (_upstream, url) = start().await;
    let body = json!({"model": "m", "max_tokens": 32, "system": "brief",
                      "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]});
    let mut request = with_api_key(post_json(&format!("{url}/v1/messages"), &body), KEY);
    request
        .headers_mut()
        .insert("anthropic-version", "2023-06-01".parse().unwrap());
    let response = TestClient::new().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let message = json_of(&response);
    assert_eq!(message["type"], "message");
    assert_eq!(message["content"][0]["text"], "up: hello");
    assert_eq!(message["stop_reason"], "end_turn");

    let streamed = post(
        &format!("{url}/v1/messages"),
        &json!({"model": "m", "max_tokens": 32, "stream": true,
                "messages": [{"role": "user", "content": "a stream"}]}),
    )
    .await;
    assert_eq!(streamed.status(), 200);
    let text = String::from_utf8_lossy(streamed.body()).into_owned();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"message_start"), "{text}");
    assert_eq!(kinds[1], "content_block_start");
    assert!(
        kinds[2..kinds.len() - 3]
            .iter()
            .all(|k| *k == "content_block_delta")
    );
    assert_eq!(
        &kinds[kinds.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let streamed_text: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|e| {
            e.pointer("/delta/text")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(streamed_text, "up: a stream");

    let missing = post(
        &format!("{url}/v1/messages"),
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(missing.status(), 400);
    let error = json_of(&missing);
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );

    let unauthorized = TestClient::new()
        .oneshot(post_json(&format!("{url}/v1/messages"), &body))
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(
        json_of(&unauthorized)["error"]["type"],
        "authentication_error"
    );
}
