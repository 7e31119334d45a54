//! The official Python SDKs (`openai`, `anthropic`) against the gateway on a loopback port 0.
//!
//! Each test runs a script of `tests/sdk/` with python3. Without python3 or the package the
//! test prints why and returns; under CI (`CI=true`) that is a failure instead (`.ci/run`
//! installs them). Upstreams: the testkit's mock for text and embeddings, a mock that
//! answers 429 with a retry hint once, and a small OpenAI-speaking upstream that calls a
//! tool and refuses (the testkit's mock does neither), plain and streamed.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower_llm_gateway::{Config, Gateway, serve};
use tower_llm_testkit::{
    DEFAULT_DIMENSIONS, Fault, FaultPlan, MockServer, RetryAfterForm, embedding_for,
};

const KEY: &str = "sk-sdk-test";

/// Whether python3 can import `module`; `None` (after saying why) when the test should skip.
fn python_with(module: &str) -> Option<()> {
    let under_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let probe = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output();
    let why = match probe {
        Ok(out) if out.status.success() => return Some(()),
        Ok(_) => format!("python3 has no `{module}` package (python3 -m pip install {module})"),
        Err(e) => format!("no python3 ({e})"),
    };
    assert!(!under_ci, "CI=true and {why}");
    println!("skipped: {why}");
    None
}

/// The city of "weather in Paris?".
fn city(text: &str) -> String {
    text.rsplit("in ")
        .next()
        .unwrap_or("")
        .trim_end_matches('?')
        .to_owned()
}

/// What [`tool_upstream`] refuses with, as OpenAI's models refuse: in `refusal`, not
/// `content`.
const REFUSAL: &str = "I can't help with that.";

/// An OpenAI chat upstream that refuses a request asking it to (`refuse` in the last user
/// message), calls `get_weather` when it is offered and no tool result is in the conversation
/// yet, then answers `answer: <tool result>`.
async fn tool_upstream() -> SocketAddr {
    async fn chat(body: bytes::Bytes) -> axum::response::Response {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let last = messages.last().cloned().unwrap_or(Value::Null);
        let stream = body["stream"].as_bool().unwrap_or(false);
        let refuse = last["role"] == "user"
            && last["content"]
                .as_str()
                .is_some_and(|text| text.contains("refuse"));
        let (delta_or_message, finish) = if refuse {
            (
                json!({"role": "assistant", "content": null, "refusal": REFUSAL}),
                "stop",
            )
        } else if last["role"] == "tool" {
            let text = format!("answer: {}", last["content"].as_str().unwrap_or(""));
            (json!({"role": "assistant", "content": text}), "stop")
        } else {
            let asked = messages
                .iter()
                .rev()
                .find(|m| m["role"] == "user")
                .and_then(|m| m["content"].as_str())
                .unwrap_or("");
            let arguments = json!({"city": city(asked)}).to_string();
            let call = json!({"index": 0, "id": "call_1", "type": "function",
                              "function": {"name": "get_weather", "arguments": arguments}});
            (
                json!({"role": "assistant", "content": null, "tool_calls": [call]}),
                "tool_calls",
            )
        };
        let usage = json!({"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14});
        if !stream {
            let mut message = delta_or_message;
            if let Some(calls) = message["tool_calls"].as_array_mut() {
                for call in calls {
                    call.as_object_mut().unwrap().remove("index");
                }
            }
            let body = json!({"id": "chatcmpl-tool", "object": "chat.completion", "created": 1,
                "model": body["model"], "usage": usage,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}]});
            return (
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response();
        }
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-tool", "object": "chat.completion.chunk", "created": 1,
                   "model": "tool-model",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut events = Vec::new();
        if let Some(call) = delta_or_message["tool_calls"].get(0) {
            // As OpenAI streams a call: its id and name first, the arguments in pieces.
            let arguments = call["function"]["arguments"].as_str().unwrap_or("");
            let (a, b) = arguments.split_at(arguments.len() / 2);
            let mut head = call.clone();
            head["function"]["arguments"] = json!("");
            events.push(chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [head]}),
                Value::Null,
            ));
            for piece in [a, b] {
                events.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
        } else if let Some(refusal) = delta_or_message["refusal"].as_str() {
            // As OpenAI streams a refusal: in `refusal` deltas, `content` null.
            let (a, b) = refusal.split_at(refusal.len() / 2);
            events.push(chunk(
                json!({"role": "assistant", "content": null, "refusal": ""}),
                Value::Null,
            ));
            events.push(chunk(json!({"refusal": a}), Value::Null));
            events.push(chunk(json!({"refusal": b}), Value::Null));
        } else {
            let text = delta_or_message["content"].as_str().unwrap_or("");
            let (a, b) = text.split_at(text.len() / 2);
            events.push(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ));
            events.push(chunk(json!({"content": a}), Value::Null));
            events.push(chunk(json!({"content": b}), Value::Null));
        }
        events.push(chunk(json!({}), json!(finish)));
        let mut usage_chunk = chunk(json!({}), Value::Null);
        usage_chunk["choices"] = json!([]);
        usage_chunk["usage"] = usage;
        events.push(usage_chunk);
        let mut text = String::new();
        for event in events {
            text.push_str(&format!("data: {event}\n\n"));
        }
        text.push_str("data: [DONE]\n\n");
        ([(header::CONTENT_TYPE, "text/event-stream")], text).into_response()
    }
    let app = Router::new().route("/v1/chat/completions", post(chat));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct Upstreams {
    text: MockServer,
    flaky: MockServer,
    _tools: SocketAddr,
    url: String,
}

/// The gateway on port 0 over the three upstreams.
async fn gateway() -> Upstreams {
    let text = MockServer::start(FaultPlan::healthy().name("py"))
        .await
        .unwrap();
    let flaky = MockServer::start(FaultPlan::healthy().name("flaky").script([Some(
        Fault::RateLimited {
            retry_after: Duration::from_millis(1500),
            form: RetryAfterForm::MsMillis,
        },
    )]))
    .await
    .unwrap();
    let tools = tool_upstream().await;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[keys]]
key = "{KEY}"
tenant = "sdk"

[providers.py]
kind = "openai"
base_url = "{text}/v1"
models = ["gpt-4o-mini", "text-embedding-3-small"]

[providers.flaky]
kind = "openai"
base_url = "{flaky}/v1"
models = ["flaky-model"]

[providers.tools]
kind = "openai"
base_url = "http://{tools}/v1"
models = ["tool-model"]
"#,
        text = text.base_url(),
        flaky = flaky.base_url(),
    );
    let config = Config::from_toml(&config).unwrap();
    let gateway = Gateway::new(&config).await.unwrap();
    let listener = TcpListener::bind(config.listen()).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        gateway.router(),
        std::future::pending(),
        config.shutdown_grace(),
    ));
    Upstreams {
        text,
        flaky,
        _tools: tools,
        url,
    }
}

/// Runs `tests/sdk/<script>` against the gateway; panics with its output if it fails.
async fn run_script(script: &str, url: &str, env: &[(&str, String)]) {
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut command = std::process::Command::new("python3");
    command
        .arg(&path)
        .env("GATEWAY_URL", url)
        .env("GATEWAY_KEY", KEY);
    for (name, value) in env {
        command.env(name, value);
    }
    // The script blocks; the gateway runs on this test's runtime meanwhile.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_chat_tool_loop_and_embeddings() {
    if python_with("openai").is_none() {
        return;
    }
    let up = gateway().await;
    let alpha = embedding_for("alpha", DEFAULT_DIMENSIONS);
    let expected = serde_json::to_string(&alpha).unwrap();
    run_script(
        "openai_flows.py",
        &up.url,
        &[
            ("EXPECTED_ALPHA", expected),
            ("REFUSAL", REFUSAL.to_owned()),
        ],
    )
    .await;
    assert!(up.text.counters().requests > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_retry_honours_the_gateways_retry_after() {
    if python_with("openai").is_none() {
        return;
    }
    let up = gateway().await;
    run_script("openai_retry.py", &up.url, &[]).await;
    assert_eq!(up.flaky.counters().requests, 2, "one 429, one success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_messages_plain_streamed_and_tools() {
    if python_with("anthropic").is_none() {
        return;
    }
    let up = gateway().await;
    run_script(
        "anthropic_messages.py",
        &up.url,
        &[("REFUSAL", REFUSAL.to_owned())],
    )
    .await;
    assert_eq!(
        up.flaky.counters().requests,
        2,
        "one 429, one success after the SDK's own retry"
    );
}
