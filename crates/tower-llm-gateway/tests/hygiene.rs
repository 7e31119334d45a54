//! What must never leak: provider keys echoed by an upstream, upstream error texts, client
//! keys in `Debug`; and the request id every answer carries.

#![allow(clippy::unwrap_used)]

mod support;

use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_llm_gateway::{Config, Gateway};
use tower_llm_testkit::{TestClient, openai_chat, post_json, with_api_key};

use support::{CLIENT_KEY, PROVIDER_KEY, config_text, echoing_upstream};

async fn serve(config: &Config) -> (Gateway, String) {
    let gateway = Gateway::new(config).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = gateway.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (gateway, url)
}

async fn send(request: http::Request<Bytes>) -> http::Response<Bytes> {
    TestClient::new().oneshot(request).await.unwrap()
}

#[tokio::test]
async fn an_upstream_error_text_never_reaches_the_client() {
    for status in [
        StatusCode::BAD_REQUEST,
        StatusCode::UNAUTHORIZED,
        StatusCode::INTERNAL_SERVER_ERROR,
    ] {
        let upstream = echoing_upstream(status).await;
        let config = Config::from_toml(&config_text(upstream)).unwrap();
        let (_gateway, url) = serve(&config).await;
        let response = send(with_api_key(openai_chat(&url, "m", "hello"), CLIENT_KEY)).await;
        let text = String::from_utf8_lossy(response.body()).into_owned();
        assert!(
            !text.contains(PROVIDER_KEY),
            "{status}: the provider key leaked: {text}"
        );
        assert!(
            !text.contains("internal detail"),
            "{status}: upstream text copied: {text}"
        );
        assert!(response.status().is_client_error() || response.status().is_server_error());
        let body: Value = serde_json::from_str(&text).unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(body["error"]["request_id"], id, "{text}");
        assert!(
            body["error"]["code"].is_string(),
            "the classified kind: {text}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`echo`"),
            "{text}"
        );
        for (name, value) in response.headers() {
            let value = value.to_str().unwrap_or("");
            assert!(
                !value.contains(PROVIDER_KEY),
                "header {name} leaked the key"
            );
        }
    }
    // The provider refused the gateway's key: the client's key was fine, so not a 401.
    let upstream = echoing_upstream(StatusCode::UNAUTHORIZED).await;
    let (_gateway, url) = serve(&Config::from_toml(&config_text(upstream)).unwrap()).await;
    let response = send(with_api_key(openai_chat(&url, "m", "hello"), CLIENT_KEY)).await;
    assert_eq!(response.status(), 502);
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let upstream = echoing_upstream(StatusCode::BAD_REQUEST).await;
    let (_gateway, url) = serve(&Config::from_toml(&config_text(upstream)).unwrap()).await;
    let unauthorized = send(openai_chat(&url, "m", "hi")).await;
    assert_eq!(unauthorized.status(), 401);
    let models = send(with_api_key(
        http::Request::get(format!("{url}/v1/models"))
            .body(Bytes::new())
            .unwrap(),
        CLIENT_KEY,
    ))
    .await;
    assert_eq!(models.status(), 200);
    let unknown = send(with_api_key(
        post_json(
            &format!("{url}/v1/chat/completions"),
            &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        ),
        CLIENT_KEY,
    ))
    .await;
    assert_eq!(unknown.status(), 404);
    let mut ids = Vec::new();
    for response in [&unauthorized, &models, &unknown] {
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(id.starts_with("req_"), "{id}");
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "each request has its own id");
    let body: Value = serde_json::from_slice(unauthorized.body()).unwrap();
    assert_eq!(body["error"]["request_id"], ids[0]);
}

/// A path or a method the gateway does not serve gets an error body an SDK can read, in the
/// route's dialect, with the request id: not an empty 404 or 405.
#[tokio::test]
async fn unknown_routes_and_methods_are_answered_with_an_error_body() {
    let upstream = echoing_upstream(StatusCode::BAD_REQUEST).await;
    let (_gateway, url) = serve(&Config::from_toml(&config_text(upstream)).unwrap()).await;
    let request = |method: &str, path: &str| {
        with_api_key(
            http::Request::builder()
                .method(method)
                .uri(format!("{url}{path}"))
                .body(Bytes::new())
                .unwrap(),
            CLIENT_KEY,
        )
    };
    let id_and_body = |response: &http::Response<Bytes>| {
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = serde_json::from_slice(response.body()).unwrap();
        (id, body)
    };

    let missing = send(request("POST", "/v1/completions")).await;
    assert_eq!(missing.status(), 404);
    let (id, body) = id_and_body(&missing);
    assert_eq!(body["error"]["code"], "unknown_url", "{body}");
    assert_eq!(body["error"]["request_id"], id.as_str());

    let wrong_method = send(request("GET", "/v1/chat/completions")).await;
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "POST");
    let (id, body) = id_and_body(&wrong_method);
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    assert_eq!(body["error"]["request_id"], id.as_str());

    // Anthropic's route answers in Anthropic's shape.
    let wrong_method = send(request("GET", "/v1/messages")).await;
    assert_eq!(wrong_method.status(), 405);
    let (id, body) = id_and_body(&wrong_method);
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["request_id"], id.as_str());
}

/// toml's own error quotes the line at fault; a key written inline on it is not repeated.
#[test]
fn a_config_that_is_not_toml_is_refused_without_quoting_its_keys() {
    let text = "[[keys]]\nkey = \"sk-inline-secret-4d1e\ntenant = \"a\"\n";
    let error = Config::from_toml(text).unwrap_err().to_string();
    assert!(error.contains("line 2"), "{error}");
    assert!(!error.contains("sk-inline-secret-4d1e"), "{error}");
}

#[tokio::test]
async fn no_key_in_the_debug_of_the_config_or_the_gateway() {
    let upstream = echoing_upstream(StatusCode::BAD_REQUEST).await;
    let config = Config::from_toml(&config_text(upstream)).unwrap();
    let (gateway, _url) = serve(&config).await;
    for debug in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{gateway:?}"),
    ] {
        assert!(!debug.contains(CLIENT_KEY), "client key in Debug: {debug}");
        assert!(
            !debug.contains(PROVIDER_KEY),
            "provider key in Debug: {debug}"
        );
        assert!(
            !debug.contains("never-shown"),
            "part of a key in Debug: {debug}"
        );
    }
    let error =
        Config::from_toml(&config_text(upstream).replace("tenant = \"a\"", "tenant = \"\""))
            .unwrap_err();
    assert!(!error.to_string().contains(CLIENT_KEY), "{error}");
}

#[tokio::test]
async fn a_key_one_character_off_is_refused() {
    let upstream = echoing_upstream(StatusCode::BAD_REQUEST).await;
    let (_gateway, url) = serve(&Config::from_toml(&config_text(upstream)).unwrap()).await;
    let near = &CLIENT_KEY[..CLIENT_KEY.len() - 1];
    for key in [near, "", "sk-client-key-never-shown-7f3b"] {
        let response = send(with_api_key(openai_chat(&url, "m", "hi"), key)).await;
        assert_eq!(response.status(), 401, "{key:?}");
    }
    let anthropic_style = openai_chat(&url, "m", "hi");
    let (mut parts, body) = anthropic_style.into_parts();
    parts
        .headers
        .insert("x-api-key", CLIENT_KEY.parse().unwrap());
    let response = send(http::Request::from_parts(parts, body)).await;
    assert_ne!(
        response.status(),
        401,
        "x-api-key is accepted like a bearer key"
    );
}

/// A URL with credentials in it would be printed wherever the URL is (`Debug`, logs): it is
/// refused, and the refusal does not repeat the credentials.
#[test]
fn urls_that_carry_credentials_are_refused_without_repeating_them() {
    let provider = r#"
[[keys]]
key = "sk-client"
tenant = "a"

[providers.p]
kind = "openai"
base_url = "https://user:hunter2-secret@api.example.com/v1"
models = ["m"]
"#;
    let error = Config::from_toml(provider).unwrap_err().to_string();
    assert!(error.contains("providers.p.base_url"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");

    let telemetry = r#"
[[keys]]
key = "sk-client"
tenant = "a"

[providers.p]
kind = "mock"
models = ["m"]

[telemetry]
endpoint = "http://collector:hunter2-secret@localhost:4318"
traces = false
metrics = false
"#;
    let error = Config::from_toml(telemetry).unwrap_err().to_string();
    assert!(error.contains("telemetry.endpoint"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}
