//! What travels with a request over real HTTP: the client's W3C trace context to the
//! upstream, the upstream's request id back to the client, and the client's deadline into
//! the stack.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};
use tower_llm_testkit::{
    Fault, FaultPlan, Latency, MockServer, RetryAfterForm, TestClient, anthropic_messages,
    openai_chat, openai_chat_stream, openai_embeddings, with_api_key,
};

use tower_llm_gateway::{Config, Gateway, serve};

const KEY: &str = "sk-context-tenant";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn config(upstream: &MockServer, server: &str, models: &str) -> String {
    format!(
        r#"
[server]
{server}

[[keys]]
key = "{KEY}"
tenant = "a"

[providers.mock]
kind = "openai"
base_url = "{base}/v1"
models = ["m", "text-embedding-3-small"]

{models}
"#,
        base = upstream.base_url()
    )
}

/// Serves the gateway on a loopback port for as long as the test runs.
async fn start(config: &str) -> (SocketAddr, Gateway) {
    let config = Config::from_toml(config).expect("test config is valid");
    let gateway = Gateway::new(&config).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        gateway.router(),
        std::future::pending(),
        Duration::from_secs(1),
    ));
    (addr, gateway)
}

async fn send(request: http::Request<Bytes>) -> http::Response<Bytes> {
    TestClient::new()
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap()
}

fn with_header(mut request: http::Request<Bytes>, name: &str, value: &str) -> http::Request<Bytes> {
    request.headers_mut().append(
        http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    with_api_key(request, KEY)
}

fn json_of(response: &http::Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).unwrap()
}

fn request_id(response: &http::Response<Bytes>) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// The `traceparent` and `tracestate` each request the upstream received carried.
fn upstream_context(upstream: &MockServer) -> Vec<(Option<String>, Option<String>)> {
    let header =
        |h: &http::HeaderMap, name: &str| h.get(name).map(|v| v.to_str().unwrap().to_owned());
    upstream
        .received()
        .iter()
        .map(|r| {
            (
                header(&r.headers, "traceparent"),
                header(&r.headers, "tracestate"),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_clients_trace_context_reaches_the_upstream_and_a_malformed_one_does_not() {
    let upstream = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let (addr, _gateway) = start(&config(&upstream, "", "")).await;
    let url = format!("http://{addr}");

    // Whole answers, streams and embeddings: traceparent and tracestate as sent.
    for request in [
        openai_chat(&url, "m", "hi"),
        openai_chat_stream(&url, "m", "hi"),
        openai_embeddings(&url, &["x"]),
        anthropic_messages(&url, "m", "hi"),
    ] {
        let request = with_header(request, "traceparent", TRACEPARENT);
        let request = with_header(
            request,
            "tracestate",
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        );
        let response = send(request).await;
        assert_eq!(response.status(), 200);
    }
    let seen = upstream_context(&upstream);
    assert_eq!(seen.len(), 4);
    for (parent, state) in &seen {
        assert_eq!(parent.as_deref(), Some(TRACEPARENT));
        assert_eq!(
            state.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
    }

    // Malformed (uppercase hex) or absent: nothing is sent, tracestate neither.
    upstream.clear_received();
    let bad = TRACEPARENT.to_uppercase();
    let request = with_header(openai_chat(&url, "m", "hi"), "traceparent", &bad);
    let request = with_header(request, "tracestate", "a=1");
    assert_eq!(send(request).await.status(), 200);
    assert_eq!(
        send(with_api_key(openai_chat(&url, "m", "hi"), KEY))
            .await
            .status(),
        200
    );
    assert_eq!(
        upstream_context(&upstream),
        vec![(None, None), (None, None)]
    );
}

#[tokio::test]
async fn every_attempt_of_a_retried_call_carries_the_clients_context() {
    let upstream = MockServer::start(FaultPlan::healthy().script([Some(Fault::Status(500))]))
        .await
        .unwrap();
    let models = r#"[models.m]
retry = { max_attempts = 2, backoff = "1ms" }"#;
    let (addr, _gateway) = start(&config(&upstream, "", models)).await;
    let request = with_header(
        openai_chat(&format!("http://{addr}"), "m", "hi"),
        "traceparent",
        TRACEPARENT,
    );
    assert_eq!(send(request).await.status(), 200);
    let seen = upstream_context(&upstream);
    assert_eq!(seen.len(), 2, "one failure, one retry");
    assert!(seen.iter().all(|(p, _)| p.as_deref() == Some(TRACEPARENT)));
}

#[tokio::test]
async fn answers_carry_the_upstreams_request_id_and_errors_repeat_it() {
    let upstream = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let (addr, _gateway) = start(&config(&upstream, "", "")).await;
    let url = format!("http://{addr}");

    for request in [
        openai_chat(&url, "m", "hi"),
        openai_chat_stream(&url, "m", "hi"),
        openai_embeddings(&url, &["x"]),
        anthropic_messages(&url, "m", "hi"),
    ] {
        let response = send(with_api_key(request, KEY)).await;
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        assert!(id.starts_with("req_mock"), "the upstream's id, got {id}");
    }

    // An upstream error: the body names the id the header does, the upstream's.
    upstream.set_plan(FaultPlan::healthy().fault(Fault::Status(500), 1.0));
    let failed = send(with_api_key(openai_chat(&url, "m", "hi"), KEY)).await;
    assert_eq!(failed.status(), 500);
    let id = request_id(&failed);
    assert!(id.starts_with("req_mock"), "{id}");
    assert_eq!(json_of(&failed)["error"]["request_id"], id.as_str());

    // Refused before any upstream call: the gateway's own id, in header and body alike.
    let refused = send(openai_chat(&url, "m", "hi")).await;
    assert_eq!(refused.status(), 401);
    let id = request_id(&refused);
    assert!(
        id.starts_with("req_") && !id.starts_with("req_mock"),
        "{id}"
    );
    assert_eq!(json_of(&refused)["error"]["request_id"], id.as_str());
}

#[tokio::test]
async fn a_clients_deadline_ends_a_slow_call_with_504() {
    let upstream =
        MockServer::start(FaultPlan::healthy().latency(Latency::Fixed(Duration::from_secs(30))))
            .await
            .unwrap();
    let (addr, _gateway) = start(&config(&upstream, "", "")).await;
    let url = format!("http://{addr}");

    for (header, value) in [
        ("x-request-timeout", "0.2"),
        ("x-request-timeout", "200ms"),
        ("x-stainless-timeout", "0.2"),
    ] {
        let response = send(with_header(openai_chat(&url, "m", "hi"), header, value)).await;
        assert_eq!(response.status(), 504, "{header}: {value}");
        let body = json_of(&response);
        assert_eq!(body["error"]["code"], "deadline_exceeded", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("deadline")
        );
        assert_eq!(body["error"]["request_id"], request_id(&response).as_str());
    }
    // Anthropic's shape on its route.
    let response = send(with_header(
        anthropic_messages(&url, "m", "hi"),
        "x-request-timeout",
        "0.2",
    ))
    .await;
    assert_eq!(response.status(), 504);
    assert_eq!(json_of(&response)["type"], "error");

    // A malformed header of ours is refused before any call; the SDK's is ignored.
    let upstream_calls = upstream.counters().requests;
    let refused = send(with_header(
        openai_chat(&url, "m", "hi"),
        "x-request-timeout",
        "soon",
    ))
    .await;
    assert_eq!(refused.status(), 400);
    assert_eq!(json_of(&refused)["error"]["code"], "invalid_timeout");
    assert_eq!(upstream.counters().requests, upstream_calls);
}

#[tokio::test]
async fn the_gateways_request_timeout_caps_the_clients() {
    let upstream =
        MockServer::start(FaultPlan::healthy().latency(Latency::Fixed(Duration::from_secs(30))))
            .await
            .unwrap();
    let (addr, _gateway) = start(&config(&upstream, r#"request_timeout = "200ms""#, "")).await;
    let url = format!("http://{addr}");
    // The client would wait ten minutes (the OpenAI SDK's default); the gateway will not.
    let response = send(with_header(
        openai_chat(&url, "m", "hi"),
        "x-stainless-timeout",
        "600",
    ))
    .await;
    assert_eq!(response.status(), 504);
    assert_eq!(json_of(&response)["error"]["code"], "deadline_exceeded");
    // And without a header, it is the deadline.
    let response = send(with_api_key(openai_chat(&url, "m", "hi"), KEY)).await;
    assert_eq!(response.status(), 504);
}

#[tokio::test]
async fn retry_waits_no_retry_after_past_the_deadline_and_fast_calls_are_untouched() {
    let rate_limited = Fault::RateLimited {
        retry_after: Duration::from_secs(5),
        form: RetryAfterForm::Seconds,
    };
    let upstream = MockServer::start(FaultPlan::healthy().fault(rate_limited, 1.0))
        .await
        .unwrap();
    let models = r#"[models.m]
retry = { max_attempts = 5, backoff = "1ms", max_retry_after = "1m" }"#;
    let (addr, _gateway) = start(&config(&upstream, "", models)).await;
    let url = format!("http://{addr}");
    let response = send(with_header(
        openai_chat(&url, "m", "hi"),
        "x-request-timeout",
        "0.5",
    ))
    .await;
    // The server's hint would pass the deadline: retry gives up at once with its 429.
    assert_eq!(response.status(), 429);
    assert_eq!(
        upstream.counters().requests,
        1,
        "no retry past the deadline"
    );

    upstream.set_plan(FaultPlan::healthy());
    let response = send(with_header(
        openai_chat(&url, "m", "hi"),
        "x-request-timeout",
        "30",
    ))
    .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_stream_running_past_the_deadline_ends_with_a_deadline_error_event() {
    let upstream =
        MockServer::start(FaultPlan::healthy().stream_chunk_delay(Duration::from_millis(300)))
            .await
            .unwrap();
    let (addr, _gateway) = start(&config(&upstream, "", "")).await;
    let url = format!("http://{addr}");
    let response = send(with_header(
        openai_chat_stream(&url, "m", "hi"),
        "x-request-timeout",
        "0.5",
    ))
    .await;
    assert_eq!(response.status(), 200, "the head came in time");
    let body = String::from_utf8_lossy(response.body()).into_owned();
    let last = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .rfind(|l| *l != "[DONE]")
        .unwrap();
    let event: Value = serde_json::from_str(last).unwrap();
    assert_eq!(event["error"]["code"], "deadline_exceeded", "{body}");
    assert_eq!(event["error"]["request_id"], request_id(&response).as_str());
}

/// A client's short deadline is not the provider's failure: streams cut at their deadline,
/// before their first chunk, open no breaker (here one that opens after two failures in a
/// row), and the next client is answered.
#[tokio::test]
async fn streams_cut_at_a_clients_deadline_open_no_breaker() {
    let upstream =
        MockServer::start(FaultPlan::healthy().latency(Latency::Fixed(Duration::from_millis(400))))
            .await
            .unwrap();
    let models = r#"
[models.m]
breaker = { consecutive_failures = 2, cooldown = "60s" }
"#;
    let (addr, _gateway) = start(&config(&upstream, "", models)).await;
    let url = format!("http://{addr}");
    for i in 0..4 {
        let response = send(with_header(
            openai_chat_stream(&url, "m", &format!("short {i}")),
            "x-request-timeout",
            "0.1",
        ))
        .await;
        assert_eq!(response.status(), 504, "{:?}", response.body());
        assert_eq!(json_of(&response)["error"]["code"], "deadline_exceeded");
    }
    let response = send(with_api_key(openai_chat_stream(&url, "m", "patient"), KEY)).await;
    assert_eq!(response.status(), 200, "the breaker stayed closed");
}

/// With stream dedup, a client joining a stream another client started (with no deadline)
/// still has its own answer end at its own deadline, while the first client's goes on to
/// the end: the provider's cut follows the client that started the call, the gateway's
/// timer follows each client.
#[tokio::test]
async fn a_client_joining_a_shared_stream_is_cut_at_its_own_deadline() {
    let upstream =
        MockServer::start(FaultPlan::healthy().stream_chunk_delay(Duration::from_millis(200)))
            .await
            .unwrap();
    let models = r#"
[models.m]
dedup = { ttl = "5m" }
"#;
    let (addr, _gateway) = start(&config(&upstream, "", models)).await;
    let url = format!("http://{addr}");
    let first = tokio::spawn(send(with_api_key(
        openai_chat_stream(&url, "m", "one shared answer"),
        KEY,
    )));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let joined = send(with_header(
        openai_chat_stream(&url, "m", "one shared answer"),
        "x-request-timeout",
        "0.5",
    ))
    .await;
    let first = first.await.unwrap();
    assert_eq!(
        upstream.counters().requests,
        1,
        "the second client joined the first's call"
    );

    let last_event = |response: &http::Response<Bytes>| {
        let body = String::from_utf8_lossy(response.body()).into_owned();
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .rfind(|l| *l != "[DONE]")
            .map(str::to_owned)
            .unwrap()
    };
    let event: Value = serde_json::from_str(&last_event(&joined)).unwrap();
    assert_eq!(event["error"]["code"], "deadline_exceeded", "{event}");
    let event: Value = serde_json::from_str(&last_event(&first)).unwrap();
    assert!(
        event.get("error").is_none(),
        "the first client's stream ended well: {event}"
    );
    assert!(
        String::from_utf8_lossy(first.body()).contains("[DONE]"),
        "{:?}",
        first.body()
    );
}
