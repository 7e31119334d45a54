//! The access log: one line per request, with what identifies it and never a key or a prompt.
//!
//! Its own test binary on purpose: it captures logs with a thread-local subscriber, and
//! `tracing` caches whether a callsite is enabled process-wide, so a test running beside it on
//! another thread (with no subscriber) can make it miss events it should see.

#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use serde_json::Value;
use tower::ServiceExt;
use tower_llm_gateway::{Config, Gateway};
use tower_llm_testkit::{openai_chat, with_api_key};

use axum::http::StatusCode;
use support::{CLIENT_KEY, PROVIDER_KEY, config_text, echoing_upstream};

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
        // The client sees the upstream's id when there is one; the line has both.
        let shown = span
            .get("upstream_request_id")
            .unwrap_or(&span["request_id"]);
        assert_eq!(shown, &id(response), "{line}");
        assert!(
            span["request_id"].as_str().unwrap().starts_with("req_"),
            "{line}"
        );
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
    assert!(
        lines[2]["span"]["upstream_request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_mock"),
        "the mock upstream's id is logged beside ours"
    );
    assert!(lines[2]["span"]["gen_ai.provider.name"].is_string());
}
