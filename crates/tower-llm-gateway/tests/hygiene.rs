//! What must never leak: provider keys echoed by an upstream, upstream error texts, client
//! keys in `Debug`; and the request id every answer carries.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_llm_gateway::{Config, Gateway};
use tower_llm_testkit::{TestClient, openai_chat, post_json, with_api_key};

const CLIENT_KEY: &str = "sk-client-key-never-shown-7f3a";
const PROVIDER_KEY: &str = "sk-provider-key-never-shown-91c2";

/// An upstream that answers every chat with `status` and an error text quoting the key it
/// was sent, as some servers do ("Incorrect API key provided: sk-...").
async fn echoing_upstream(status: StatusCode) -> SocketAddr {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = json!({"error": {
                "message": format!("Upstream internal detail: you sent `{auth}` from tenant data"),
                "type": "invalid_request_error", "code": null}});
            (status, [("x-upstream", "yes")], body.to_string())
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn config_text(upstream: SocketAddr) -> String {
    format!(
        r#"
[[keys]]
key = "{CLIENT_KEY}"
tenant = "a"

[providers.echo]
kind = "openai"
base_url = "http://{upstream}/v1"
api_key = "{PROVIDER_KEY}"
models = ["m"]
"#
    )
}

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

/// Every log line written while it is the thread's default subscriber, as JSON objects.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// Installs a JSON subscriber at `trace` on this thread for as long as the guard lives.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The access-log lines (`"answered"`), parsed.
    fn access_lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["message"] == "answered")
            .collect()
    }
}

/// Calls the router in this task (so the thread's subscriber sees everything it logs).
async fn call_router(gateway: &Gateway, request: http::Request<Bytes>) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(parts, axum::body::Body::from(body));
    gateway.router().oneshot(request).await.unwrap()
}

#[tokio::test]
async fn the_access_log_names_the_request_and_never_a_key_or_a_prompt() {
    const PROMPT: &str = "my-private-prompt-4d1e";
    let logs = CapturedLogs::default();
    let _guard = logs.install();

    let upstream = echoing_upstream(StatusCode::INTERNAL_SERVER_ERROR).await;
    let failing = Gateway::new(&Config::from_toml(&config_text(upstream)).unwrap())
        .await
        .unwrap();
    let refused = call_router(
        &failing,
        with_api_key(openai_chat("http://gateway", "m", PROMPT), CLIENT_KEY),
    )
    .await;
    let unauthorized = call_router(
        &failing,
        with_api_key(
            openai_chat("http://gateway", "m", PROMPT),
            "sk-wrong-key-3b9f",
        ),
    )
    .await;
    assert_eq!(unauthorized.status(), 401);

    let demo = Gateway::new(&Config::mock().unwrap()).await.unwrap();
    let answered = call_router(
        &demo,
        with_api_key(
            openai_chat("http://gateway", "gpt-4o-mini", PROMPT),
            "sk-gateway-demo",
        ),
    )
    .await;
    assert_eq!(answered.status(), 200);

    let text = logs.text();
    for secret in [
        CLIENT_KEY,
        PROVIDER_KEY,
        "sk-wrong-key-3b9f",
        "sk-gateway-demo",
        PROMPT,
    ] {
        assert!(!text.contains(secret), "{secret} reached the logs:\n{text}");
    }
    assert!(
        !text.contains("internal detail"),
        "upstream text logged:\n{text}"
    );

    let lines = logs.access_lines();
    assert_eq!(lines.len(), 3, "one access line per request:\n{text}");
    let id = |response: &axum::response::Response| {
        response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    for (line, response, level) in [
        (&lines[0], &refused, "WARN"),
        (&lines[1], &unauthorized, "INFO"),
        (&lines[2], &answered, "INFO"),
    ] {
        assert_eq!(line["level"], level, "{line}");
        assert_eq!(
            line["http.response.status_code"],
            response.status().as_u16(),
            "{line}"
        );
        assert!(line["duration_ms"].is_number(), "{line}");
        let span = &line["span"];
        assert_eq!(span["request_id"], id(response), "{line}");
        assert_eq!(span["http.route"], "/v1/chat/completions", "{line}");
        assert_eq!(span["http.request.method"], "POST", "{line}");
    }
    assert!(refused.status().is_server_error());
    assert_eq!(lines[0]["span"]["tenant"], "a");
    assert!(
        lines[1]["span"].get("tenant").is_none(),
        "no tenant without a key"
    );
    assert_eq!(lines[2]["span"]["gen_ai.request.model"], "gpt-4o-mini");
    assert!(lines[2]["span"]["gen_ai.provider.name"].is_string());
}
