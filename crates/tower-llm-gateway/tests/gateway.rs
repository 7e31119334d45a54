//! The gateway over real HTTP against the testkit's mock upstream.
//!
//! Each test starts mock upstream(s), builds the gateway from a TOML config pointing at them
//! with the crate's public API, serves it on a loopback port and talks to it with the
//! testkit's HTTP client, counting what reached the upstream.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};
use tower_llm_testkit::{
    Fault, FaultPlan, Latency, MockServer, RetryAfterForm, TestClient, embedding_for, openai_chat,
    openai_chat_stream, openai_embeddings, post_json, with_api_key,
};

use tower_llm_gateway::{Config, Gateway, serve};

const KEY_A: &str = "sk-test-tenant-a";
const KEY_B: &str = "sk-test-tenant-b";

/// A gateway served on a loopback port until `stop` is called or it is dropped.
struct Running {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _gateway: Gateway,
}

impl Running {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Signals shutdown and waits for the server to return.
    async fn stop(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A config whose keys are the two test tenants and whose provider is `upstream`; `models`
/// is appended as is.
fn config_for(upstream: &MockServer, max_body: usize, models: &str) -> String {
    format!(
        r#"
[server]
max_body_bytes = {max_body}
shutdown_grace = "30s"

[[keys]]
key = "{KEY_A}"
tenant = "a"

[[keys]]
key = "{KEY_B}"
tenant = "b"

[providers.mock]
kind = "openai"
base_url = "{base}/v1"
models = ["gpt-4o-mini", "text-embedding-3-small", "plain-model"]

{models}
"#,
        base = upstream.base_url()
    )
}

const FULL_STACK: &str = r#"
[models."gpt-4o-mini"]
dedup = { ttl = "5m" }
retry = { max_attempts = 3, backoff = "10ms", max_retry_after = "1s" }
breaker = { cooldown = "10s" }
rate_limit = { requests_per_minute = 1000, tokens_per_minute = 1000000, concurrency = 32, max_wait = "5s" }

[models."text-embedding-3-small"]
dedup = { ttl = "5m" }
"#;

async fn start(config: &str) -> Running {
    let config = Config::from_toml(config).expect("test config is valid");
    let gateway = Gateway::new(&config).await.expect("gateway builds");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        gateway.router(),
        async move {
            let _ = rx.await;
        },
        config.shutdown_grace(),
    ));
    Running {
        addr,
        shutdown: Some(tx),
        task: Some(task),
        _gateway: gateway,
    }
}

async fn send(request: http::Request<Bytes>) -> http::Response<Bytes> {
    TestClient::new()
        .ready()
        .await
        .expect("client ready")
        .call(request)
        .await
        .expect("the gateway answers")
}

fn json_of(response: &http::Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(response.body())
        )
    })
}

fn get(url: &str, key: Option<&str>) -> http::Request<Bytes> {
    let mut request = http::Request::get(url).body(Bytes::new()).unwrap();
    if let Some(key) = key {
        request = with_api_key(request, key);
    }
    request
}

/// Content of a streamed completion, read from its SSE events; panics on a malformed one.
fn sse_content(body: &[u8]) -> (String, bool) {
    let text = String::from_utf8_lossy(body);
    let mut content = String::new();
    let mut done = false;
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            done = true;
            continue;
        }
        let event: Value = serde_json::from_str(line).expect("each event is JSON");
        assert!(event.get("error").is_none(), "stream error: {event}");
        if let Some(delta) = event
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            content.push_str(delta);
        }
    }
    (content, done)
}

#[tokio::test]
async fn missing_or_unknown_key_gets_401_and_reaches_no_provider() {
    let upstream = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let gateway = start(&config_for(&upstream, 1 << 20, FULL_STACK)).await;

    let no_key = send(openai_chat(&gateway.url(), "gpt-4o-mini", "hi")).await;
    assert_eq!(no_key.status(), 401);
    assert_eq!(json_of(&no_key)["error"]["code"], "invalid_api_key");

    let wrong = with_api_key(openai_chat(&gateway.url(), "gpt-4o-mini", "hi"), "sk-nope");
    assert_eq!(send(wrong).await.status(), 401);

    let stream = with_api_key(
        openai_chat_stream(&gateway.url(), "gpt-4o-mini", "hi"),
        "sk-nope",
    );
    assert_eq!(send(stream).await.status(), 401);

    let embeddings = openai_embeddings(&gateway.url(), &["x"]);
    assert_eq!(send(embeddings).await.status(), 401);

    let models = send(get(&format!("{}/v1/models", gateway.url()), None)).await;
    assert_eq!(models.status(), 401);

    assert_eq!(
        upstream.counters().requests,
        0,
        "no call reached the provider"
    );
}

#[tokio::test]
async fn oversized_body_gets_413_and_malformed_json_gets_400() {
    let upstream = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let gateway = start(&config_for(&upstream, 2048, FULL_STACK)).await;
    let url = format!("{}/v1/chat/completions", gateway.url());

    let big = json!({"model": "gpt-4o-mini",
                     "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let response = send(with_api_key(post_json(&url, &big), KEY_A)).await;
    assert_eq!(response.status(), 413);
    assert!(
        json_of(&response)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2048 bytes")
    );

    let mut malformed = with_api_key(post_json(&url, &json!({})), KEY_A);
    *malformed.body_mut() = Bytes::from_static(b"{\"model\": \"gpt-4o-mini\", ");
    let response = send(malformed).await;
    assert_eq!(response.status(), 400);
    let message = json_of(&response)["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("not valid JSON"), "{message}");

    let no_messages = with_api_key(post_json(&url, &json!({"model": "gpt-4o-mini"})), KEY_A);
    let response = send(no_messages).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        json_of(&response)["error"]["message"],
        "`messages` is required"
    );

    let bad_temperature = json!({"model": "gpt-4o-mini", "temperature": "hot",
                                 "messages": [{"role": "user", "content": "hi"}]});
    let response = send(with_api_key(post_json(&url, &bad_temperature), KEY_A)).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        json_of(&response)["error"]["message"],
        "`temperature` must be a number"
    );

    let unknown = with_api_key(openai_chat(&gateway.url(), "no-such-model", "hi"), KEY_A);
    let response = send(unknown).await;
    assert_eq!(response.status(), 404);
    assert_eq!(json_of(&response)["error"]["code"], "model_not_found");

    assert_eq!(upstream.counters().requests, 0);
}

#[tokio::test]
async fn plain_and_streaming_chat_go_through_the_stack() {
    let upstream = MockServer::start(FaultPlan::healthy().name("up"))
        .await
        .unwrap();
    let gateway = start(&config_for(&upstream, 1 << 20, FULL_STACK)).await;

    let response = send(with_api_key(
        openai_chat(&gateway.url(), "gpt-4o-mini", "Hello there"),
        KEY_A,
    ))
    .await;
    assert_eq!(response.status(), 200);
    let body = json_of(&response);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["choices"][0]["message"]["content"], "up: Hello there");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(response.headers()["x-gateway-provider"], "mock");

    let response = send(with_api_key(
        openai_chat_stream(&gateway.url(), "gpt-4o-mini", "Stream me please"),
        KEY_A,
    ))
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (content, done) = sse_content(response.body());
    assert_eq!(content, "up: Stream me please");
    assert!(done, "the stream ends with [DONE]");
    assert!(
        String::from_utf8_lossy(response.body()).contains("\"usage\""),
        "include_usage sends a usage chunk"
    );

    let counters = upstream.counters();
    assert_eq!(counters.requests, 2);
    let received = upstream.received();
    assert_eq!(received[1].json().unwrap()["stream"], true);
}

#[tokio::test]
async fn embeddings_models_and_health() {
    let upstream = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let gateway = start(&config_for(&upstream, 1 << 20, FULL_STACK)).await;

    let response = send(with_api_key(
        openai_embeddings(&gateway.url(), &["alpha", "beta"]),
        KEY_A,
    ))
    .await;
    assert_eq!(response.status(), 200);
    let body = json_of(&response);
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (item, text) in data.iter().zip(["alpha", "beta"]) {
        let vector: Vec<f32> = serde_json::from_value(item["embedding"].clone()).unwrap();
        assert_eq!(vector, embedding_for(text, vector.len()));
    }

    let models = send(get(&format!("{}/v1/models", gateway.url()), Some(KEY_A))).await;
    assert_eq!(models.status(), 200);
    let ids: Vec<String> = json_of(&models)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        ["gpt-4o-mini", "plain-model", "text-embedding-3-small"]
    );

    let health = send(get(&format!("{}/health", gateway.url()), None)).await;
    assert_eq!(health.status(), 200);
    assert_eq!(json_of(&health)["status"], "ok");
    assert_eq!(upstream.counters().requests, 1);
}

#[tokio::test]
async fn metrics_text_names_our_metrics() {
    let upstream = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let gateway = start(&config_for(&upstream, 1 << 20, FULL_STACK)).await;
    let response = send(with_api_key(
        openai_chat(&gateway.url(), "gpt-4o-mini", "count me"),
        KEY_A,
    ))
    .await;
    assert_eq!(response.status(), 200);

    let metrics = send(get(&format!("{}/metrics", gateway.url()), None)).await;
    assert_eq!(metrics.status(), 200);
    let text = String::from_utf8_lossy(metrics.body()).into_owned();
    for name in [
        "tower_llm_gateway_requests_total",
        "tower_llm_gateway_request_duration_seconds",
        "tower_llm_gateway_answers_total",
        "tower_llm_providers_requests_total",
        "tower_llm_dedup_requests_total",
        "tower_llm_dedup_misses_total",
        "tower_llm_ratelimit_admitted_total",
        "tower_llm_retry_attempts_total",
        "tower_llm_race_requests_total",
        "tower_llm_breaker_state",
        "gen_ai_client_operation_duration_seconds_bucket",
        "gen_ai_client_token_usage_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(text.contains(r#"route="/v1/chat/completions""#));
    // The GenAI conventions' buckets, not the exporter's defaults.
    assert!(text.contains(r#"le="81.92""#), "{text}");
    assert!(text.contains(r#"le="67108864""#), "{text}");
}

#[tokio::test]
async fn upstream_429_is_mapped_with_its_retry_after() {
    let plan = FaultPlan::healthy().script([Some(Fault::RateLimited {
        retry_after: Duration::from_secs(7),
        form: RetryAfterForm::Seconds,
    })]);
    let upstream = MockServer::start(plan).await.unwrap();
    // No retry on this model: the client gets the provider's 429 and its hint.
    let gateway = start(&config_for(&upstream, 1 << 20, "")).await;

    let response = send(with_api_key(
        openai_chat(&gateway.url(), "plain-model", "hi"),
        KEY_A,
    ))
    .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.headers()["retry-after-ms"], "7000");
    assert_eq!(json_of(&response)["error"]["type"], "rate_limit_exceeded");

    let again = send(with_api_key(
        openai_chat(&gateway.url(), "plain-model", "hi"),
        KEY_A,
    ))
    .await;
    assert_eq!(again.status(), 200, "the script's 429 was one-off");
    assert_eq!(upstream.counters().requests, 2);
}

#[tokio::test]
async fn upstream_server_error_after_retries_maps_to_its_status() {
    let plan = FaultPlan::healthy().fault(Fault::Status(500), 1.0);
    let upstream = MockServer::start(plan).await.unwrap();
    let gateway = start(&config_for(&upstream, 1 << 20, FULL_STACK)).await;
    let response = send(with_api_key(
        openai_chat(&gateway.url(), "gpt-4o-mini", "hi"),
        KEY_A,
    ))
    .await;
    assert_eq!(response.status(), 500);
    assert_eq!(
        upstream.counters().requests,
        3,
        "three attempts, then the error"
    );
}

#[tokio::test]
async fn dedup_is_per_tenant() {
    let upstream = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let gateway = start(&config_for(&upstream, 1 << 20, FULL_STACK)).await;
    let url = format!("{}/v1/chat/completions", gateway.url());
    // temperature 0: a deterministic request, whose answer is kept.
    let body = json!({"model": "gpt-4o-mini", "temperature": 0,
                      "messages": [{"role": "user", "content": "same question"}]});

    let first = send(with_api_key(post_json(&url, &body), KEY_A)).await;
    let second = send(with_api_key(post_json(&url, &body), KEY_A)).await;
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    assert_eq!(json_of(&first)["choices"], json_of(&second)["choices"]);
    assert_eq!(
        upstream.counters().requests,
        1,
        "tenant a asked twice, one call"
    );

    let other = send(with_api_key(post_json(&url, &body), KEY_B)).await;
    assert_eq!(other.status(), 200);
    assert_eq!(
        upstream.counters().requests,
        2,
        "tenant b never shares tenant a's answer"
    );

    // Concurrent identical requests of one tenant coalesce into one call too.
    upstream.reset_counters();
    upstream.set_plan(FaultPlan::healthy().latency(Latency::Fixed(Duration::from_millis(200))));
    let fresh = json!({"model": "gpt-4o-mini", "temperature": 0,
                       "messages": [{"role": "user", "content": "concurrent question"}]});
    let calls = (0..5).map(|_| send(with_api_key(post_json(&url, &fresh), KEY_B)));
    let answers = futures_util::future::join_all(calls).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    assert_eq!(
        upstream.counters().requests,
        1,
        "five concurrent requests, one call"
    );
}

async fn wait_for_upstream_call(upstream: &MockServer) {
    for _ in 0..4000 {
        if upstream.counters().requests >= 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the request never reached the upstream");
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let plan = FaultPlan::healthy().latency(Latency::Fixed(Duration::from_millis(300)));
    let upstream = MockServer::start(plan).await.unwrap();
    let mut gateway = start(&config_for(&upstream, 1 << 20, FULL_STACK)).await;
    let url = gateway.url();

    let in_flight = tokio::spawn(send(with_api_key(
        openai_chat(&url, "gpt-4o-mini", "finish me"),
        KEY_A,
    )));
    wait_for_upstream_call(&upstream).await;
    let stopped = gateway.stop();
    let (stopped, response) = tokio::join!(stopped, in_flight);
    stopped.expect("the server stops cleanly");
    let response = response.expect("request task");
    assert_eq!(response.status(), 200, "the in-flight request finished");
    assert_eq!(
        json_of(&response)["choices"][0]["message"]["content"],
        "mock: finish me"
    );

    // Stopped: new connections are refused.
    let after = TestClient::new()
        .oneshot(with_api_key(
            openai_chat(&url, "gpt-4o-mini", "late"),
            KEY_A,
        ))
        .await;
    assert!(after.is_err(), "the gateway no longer accepts connections");
}

#[tokio::test]
async fn graceful_shutdown_lets_a_stream_finish() {
    let plan = FaultPlan::healthy().stream_chunk_delay(Duration::from_millis(100));
    let upstream = MockServer::start(plan).await.unwrap();
    let mut gateway = start(&config_for(&upstream, 1 << 20, FULL_STACK)).await;
    let url = gateway.url();

    let in_flight = tokio::spawn(send(with_api_key(
        openai_chat_stream(&url, "gpt-4o-mini", "a stream of several words"),
        KEY_A,
    )));
    wait_for_upstream_call(&upstream).await;
    let (stopped, response) = tokio::join!(gateway.stop(), in_flight);
    stopped.expect("the server stops cleanly");
    let response = response.expect("request task");
    assert_eq!(response.status(), 200);
    let (content, done) = sse_content(response.body());
    assert_eq!(content, "mock: a stream of several words");
    assert!(done, "the whole stream arrived, [DONE] included");
}

#[tokio::test]
async fn tenant_rate_limit_refuses_with_retry_after_before_the_provider() {
    let upstream = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let models = r#"
[models."gpt-4o-mini"]
rate_limit = { requests_per_minute = 1, max_wait = "10ms" }
"#;
    let gateway = start(&config_for(&upstream, 1 << 20, models)).await;
    let ask = |key| with_api_key(openai_chat(&gateway.url(), "gpt-4o-mini", "hi"), key);

    assert_eq!(send(ask(KEY_A)).await.status(), 200);
    let refused = send(ask(KEY_A)).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(json_of(&refused)["error"]["code"], "tenant_rate_limited");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "hint {retry_after}s");
    // Tenant b has its own budget.
    assert_eq!(send(ask(KEY_B)).await.status(), 200);
    assert_eq!(
        upstream.counters().requests,
        2,
        "the refused call never left"
    );
}

#[tokio::test]
async fn race_answers_from_the_fast_provider_and_fallback_skips_a_failing_one() {
    let slow = MockServer::start(
        FaultPlan::healthy()
            .name("slow")
            .latency(Latency::Fixed(Duration::from_millis(400))),
    )
    .await
    .unwrap();
    let fast = MockServer::start(FaultPlan::healthy().name("fast"))
        .await
        .unwrap();
    let broken = MockServer::start(FaultPlan::healthy().fault(Fault::Status(503), 1.0))
        .await
        .unwrap();
    let config = format!(
        r#"
[[keys]]
key = "{KEY_A}"
tenant = "a"

[providers.slow]
kind = "openai"
base_url = "{slow}/v1"
models = ["raced", "fallen-back"]

[providers.fast]
kind = "openai"
base_url = "{fast}/v1"
models = ["raced", "fallen-back"]

[providers.broken]
kind = "openai"
base_url = "{broken}/v1"
models = ["fallen-back"]

[models.raced]
providers = ["slow", "fast"]
strategy = "race"

[models.fallen-back]
providers = ["broken", "fast"]
strategy = "fallback"
breaker = {{ consecutive_failures = 2, cooldown = "1m" }}
"#,
        slow = slow.base_url(),
        fast = fast.base_url(),
        broken = broken.base_url(),
    );
    let gateway = start(&config).await;

    let raced = send(with_api_key(
        openai_chat(&gateway.url(), "raced", "go"),
        KEY_A,
    ))
    .await;
    assert_eq!(raced.status(), 200);
    assert_eq!(raced.headers()["x-gateway-provider"], "fast");
    assert_eq!(
        json_of(&raced)["choices"][0]["message"]["content"],
        "fast: go"
    );

    for _ in 0..4 {
        let answer = send(with_api_key(
            openai_chat(&gateway.url(), "fallen-back", "go"),
            KEY_A,
        ))
        .await;
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["x-gateway-provider"], "fast");
    }
    assert_eq!(
        broken.counters().requests,
        2,
        "after two failures its breaker opened and fallback skipped it"
    );
}

#[test]
fn config_errors_name_the_key_at_fault() {
    let base = r#"
[[keys]]
key = "k"
tenant = "t"

[providers.p]
kind = "openai"
models = ["m"]
"#;
    let err = |extra: &str| {
        let err = Config::from_toml(&format!("{base}{extra}")).unwrap_err();
        (err.knob().to_owned(), err.to_string())
    };
    let knob = |extra: &str| err(extra).0;
    assert_eq!(
        knob("[models.m]\nproviders = [\"q\"]\n"),
        "models.m.providers[0]"
    );
    assert_eq!(
        knob("[models.m]\nstrategy = \"hedge\"\n"),
        "models.m.hedge_delay"
    );
    let (k, text) = err("[models.m]\ntimeout = \"soon\"\n");
    assert_eq!(k, "models.m.timeout");
    assert!(text.contains("not a duration"), "{text}");
    assert!(err("[models.m]\nretries = 3\n").1.contains("retries"));
    assert_eq!(knob("[[keys]]\ntenant = \"t2\"\n"), "keys[1]");
    assert!(
        Config::from_toml("[providers]\n").is_err(),
        "no provider at all"
    );

    // Zero where zero is nonsense, durations that would overflow, counts of zero, missing
    // things.
    for (extra, at) in [
        ("[models.m]\ntimeout = \"0s\"\n", "models.m.timeout"),
        (
            "[models.m]\ndedup = { ttl = \"0s\" }\n",
            "models.m.dedup.ttl",
        ),
        (
            "[models.m]\ndedup = { ttl = \"1m\", max_entries = 0 }\n",
            "models.m.dedup.max_entries",
        ),
        (
            "[models.m]\nbreaker = { cooldown = \"0ms\" }\n",
            "models.m.breaker.cooldown",
        ),
        (
            "[models.m]\nbreaker = { consecutive_failures = 0 }\n",
            "models.m.breaker.consecutive_failures",
        ),
        (
            "[models.m]\nbreaker = { failure_rate = 1.5 }\n",
            "models.m.breaker.failure_rate",
        ),
        (
            "[models.m]\nbreaker = { minimum_calls = 0 }\n",
            "models.m.breaker.minimum_calls",
        ),
        (
            "[models.m]\nbreaker = { window_calls = 0 }\n",
            "models.m.breaker.window_calls",
        ),
        (
            "[models.m]\nbreaker = { window_calls = 10, minimum_calls = 20 }\n",
            "models.m.breaker.minimum_calls",
        ),
        (
            "[models.m]\nretry = { max_attempts = 0 }\n",
            "models.m.retry.max_attempts",
        ),
        (
            "[models.m]\nretry = { max_attempts = 2, backoff = \"99999999999999999h\" }\n",
            "models.m.retry.backoff",
        ),
        // Longer than the retry layer's default cap on its delays.
        (
            "[models.m]\nretry = { max_attempts = 2, backoff = \"30s\" }\n",
            "models.m.retry.backoff",
        ),
        (
            "[models.m]\nretry = { max_attempts = 2, backoff = \"30s\", max_delay = \"1s\" }\n",
            "models.m.retry.max_delay",
        ),
        ("[models.m]\ntimeout = \"400days\"\n", "models.m.timeout"),
        (
            "[models.m]\nrate_limit = { concurrency = 0 }\n",
            "models.m.rate_limit.concurrency",
        ),
        (
            "[models.m]\nrate_limit = { requests_per_minute = 0 }\n",
            "models.m.rate_limit.requests_per_minute",
        ),
        (
            "[models.m]\nrate_limit = { max_wait = \"1s\" }\n",
            "models.m.rate_limit",
        ),
        (
            "[models.nobody]\ndedup = { ttl = \"1m\" }\n",
            "models.nobody",
        ),
        (
            "[server]\nshutdown_grace = \"18446744073709551616s\"\n",
            "server.shutdown_grace",
        ),
        ("[server]\nmax_body_bytes = 0\n", "server.max_body_bytes"),
        ("[server]\nlisten = \"localhost\"\n", "server.listen"),
        (
            "[providers.q]\nkind = \"openai\"\nmodels = []\n",
            "providers.q.models",
        ),
        (
            "[providers.q]\nkind = \"openai\"\nmodels = [\"m\"]\nbase_url = \"not a url\"\n",
            "providers.q.base_url",
        ),
        (
            "[providers.q]\nkind = \"openai\"\nmodels = [\"m\"]\nmodel_map = { x = \"y\" }\n",
            "providers.q.model_map.x",
        ),
        (
            "[providers.q]\nkind = \"openai\"\nmodels = [\"m\"]\napi_key_env = \"TOWER_LLM_GATEWAY_TEST_UNSET_VAR\"\n",
            "providers.q.api_key_env",
        ),
        (
            "[[keys]]\nkey_env = \"TOWER_LLM_GATEWAY_TEST_UNSET_VAR\"\ntenant = \"x\"\n",
            "keys[1].key_env",
        ),
        ("[[keys]]\nkey = \"k\"\ntenant = \"again\"\n", "keys[1]"),
    ] {
        assert_eq!(knob(extra), at, "for {extra}");
    }
    assert_eq!(
        Config::from_toml("[providers.p]\nkind = \"mock\"\nmodels = [\"m\"]\n")
            .unwrap_err()
            .knob(),
        "keys",
        "a gateway without client keys would refuse everyone"
    );

    // The built-in sample parses; the real-key sample is checked by the binary's tests.
    let mock = Config::mock().expect("mock.toml");
    assert_eq!(
        mock.model_names(),
        ["gpt-4o-mini", "text-embedding-3-small"]
    );
    assert_eq!(mock.providers_of("gpt-4o-mini"), ["mock-fast", "mock-slow"]);
}

#[tokio::test]
async fn the_default_config_serves_from_its_embedded_mocks() {
    let mut config = Config::mock().expect("mock.toml");
    config.set_shutdown_grace(Duration::from_secs(5));
    let gateway = Gateway::new(&config).await.expect("builds");
    assert_eq!(
        gateway.mock_upstreams().count(),
        2,
        "both mock upstreams started"
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(serve(
        listener,
        gateway.router(),
        std::future::pending(),
        config.shutdown_grace(),
    ));
    let response = send(with_api_key(
        openai_chat(&url, "gpt-4o-mini", "demo"),
        "sk-gateway-demo",
    ))
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_of(&response)["choices"][0]["message"]["content"],
        "mock-fast: demo"
    );
    server.abort();
}

#[tokio::test]
async fn identical_streams_of_one_tenant_share_one_upstream_stream() {
    let plan = FaultPlan::healthy()
        .name("up")
        .stream_chunk_delay(Duration::from_millis(50));
    let upstream = MockServer::start(plan).await.unwrap();
    let gateway = start(&config_for(&upstream, 1 << 20, FULL_STACK)).await;
    let url = format!("{}/v1/chat/completions", gateway.url());
    let body = json!({"model": "gpt-4o-mini", "temperature": 0, "stream": true,
                      "messages": [{"role": "user", "content": "one stream for all"}]});

    let streams = (0..3).map(|_| send(with_api_key(post_json(&url, &body), KEY_A)));
    for response in futures_util::future::join_all(streams).await {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-gateway-provider"], "mock");
        let (content, done) = sse_content(response.body());
        assert_eq!(content, "up: one stream for all");
        assert!(done);
    }
    assert_eq!(
        upstream.counters().requests,
        1,
        "three streams, one upstream call"
    );

    let other = send(with_api_key(post_json(&url, &body), KEY_B)).await;
    assert_eq!(sse_content(other.body()).0, "up: one stream for all");
    assert_eq!(
        upstream.counters().requests,
        2,
        "another tenant gets its own stream"
    );
}

#[tokio::test]
async fn a_stream_cut_upstream_ends_with_an_error_event() {
    let plan = FaultPlan::healthy().script([Some(Fault::CutStream { after_chunks: 1 })]);
    let upstream = MockServer::start(plan).await.unwrap();
    let gateway = start(&config_for(&upstream, 1 << 20, FULL_STACK)).await;
    let response = send(with_api_key(
        openai_chat_stream(&gateway.url(), "gpt-4o-mini", "cut me off please"),
        KEY_A,
    ))
    .await;
    assert_eq!(response.status(), 200, "the head was sent before the cut");
    let text = String::from_utf8_lossy(response.body()).into_owned();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let error: Value = serde_json::from_str(events[events.len() - 2]).expect("error event");
    assert!(
        error["error"]["message"].as_str().is_some(),
        "an error event before [DONE]: {text}"
    );
}

#[tokio::test]
async fn after_the_grace_period_what_is_left_is_cut() {
    let plan = FaultPlan::healthy().stream_chunk_delay(Duration::from_secs(3));
    let upstream = MockServer::start(plan).await.unwrap();
    let config = config_for(&upstream, 1 << 20, FULL_STACK)
        .replace("shutdown_grace = \"30s\"", "shutdown_grace = \"200ms\"");
    let mut gateway = start(&config).await;
    let url = gateway.url();

    let stream = tokio::spawn(TestClient::new().oneshot(with_api_key(
        openai_chat_stream(&url, "gpt-4o-mini", "a long slow stream of words"),
        KEY_A,
    )));
    wait_for_upstream_call(&upstream).await;
    gateway
        .stop()
        .await
        .expect("the server returns after the grace period");
    match stream.await.expect("client task") {
        Err(_) => {}
        Ok(response) => {
            let (_, done) = sse_content(response.body());
            assert!(!done, "the stream was cut, not finished");
        }
    }
}

#[tokio::test]
async fn openai_clients_are_served_by_anthropic_and_gemini_providers() {
    let upstream = MockServer::start(FaultPlan::healthy().name("mock"))
        .await
        .unwrap();
    let config = format!(
        r#"
[[keys]]
key = "{KEY_A}"
tenant = "a"

[providers.claude]
kind = "anthropic"
base_url = "{base}/v1"
api_key = "sk-ant-test"
models = ["claude-model"]

[providers.gemini]
kind = "gemini"
base_url = "{base}/v1beta"
api_key = "gemini-test"
models = ["gemini-model"]
"#,
        base = upstream.base_url()
    );
    let gateway = start(&config).await;

    for model in ["claude-model", "gemini-model"] {
        let plain = send(with_api_key(
            openai_chat(&gateway.url(), model, "translated"),
            KEY_A,
        ))
        .await;
        assert_eq!(plain.status(), 200, "{model}: {:?}", plain.body());
        let content = json_of(&plain)["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(content.ends_with("translated"), "{model}: {content}");

        let streamed = send(with_api_key(
            openai_chat_stream(&gateway.url(), model, "streamed words"),
            KEY_A,
        ))
        .await;
        assert_eq!(streamed.status(), 200);
        let (content, done) = sse_content(streamed.body());
        assert!(content.ends_with("streamed words"), "{model}: {content}");
        assert!(done);
    }
    let counters = upstream.counters();
    assert_eq!(
        counters.route(tower_llm_testkit::Route::AnthropicMessages),
        2
    );
    assert!(counters.route(tower_llm_testkit::Route::GeminiGenerate) >= 1);
    assert_eq!(
        counters.key("sk-ant-test"),
        2,
        "the provider key from the config was sent"
    );

    let embeddings = send(with_api_key(
        post_json(
            &format!("{}/v1/embeddings", gateway.url()),
            &json!({"model": "claude-model", "input": "x"}),
        ),
        KEY_A,
    ))
    .await;
    assert_eq!(embeddings.status(), 404, "Anthropic has no embeddings");

    // OpenAI-only fields the chat types do not model stay with OpenAI: the real Anthropic
    // and Gemini APIs answer 400 to a field they do not know.
    for model in ["claude-model", "gemini-model"] {
        let before = upstream.received().len();
        let response = send(with_api_key(
            post_json(
                &format!("{}/v1/chat/completions", gateway.url()),
                &json!({
                    "model": model,
                    "messages": [{"role": "user", "content": "penalised"}],
                    "frequency_penalty": 0.5,
                    "logprobs": true,
                }),
            ),
            KEY_A,
        ))
        .await;
        assert_eq!(response.status(), 200, "{model}: {:?}", response.body());
        let received = upstream.received();
        assert_eq!(received.len(), before + 1, "{model}");
        let body = received[before].json().unwrap();
        assert!(body.get("frequency_penalty").is_none(), "{model}: {body}");
        assert!(body.get("logprobs").is_none(), "{model}: {body}");
    }
}

/// A tenant's `concurrency = 1` holds for streams as for whole answers, and across them: one
/// limiter serves the model's stacks, and it keeps a stream's slot until the stream ends (it
/// used to free it at the response head, and streams peaked at 4 upstream calls at once).
#[tokio::test]
async fn a_tenant_concurrency_of_one_holds_for_streams() {
    let upstream = MockServer::start(
        FaultPlan::healthy()
            .name("up")
            .stream_chunk_delay(Duration::from_millis(20)),
    )
    .await
    .unwrap();
    let models = r#"
[models."gpt-4o-mini"]
rate_limit = { concurrency = 1, max_wait = "30s" }
"#;
    let gateway = start(&config_for(&upstream, 1 << 20, models)).await;
    let mut calls = Vec::new();
    for i in 0..4 {
        let request = with_api_key(
            openai_chat_stream(&gateway.url(), "gpt-4o-mini", &format!("stream {i}")),
            KEY_A,
        );
        calls.push(tokio::spawn(send(request)));
    }
    for i in 0..2 {
        let request = with_api_key(
            openai_chat(&gateway.url(), "gpt-4o-mini", &format!("whole {i}")),
            KEY_A,
        );
        calls.push(tokio::spawn(send(request)));
    }
    for call in calls {
        let response = call.await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let counters = upstream.counters();
    assert_eq!(counters.requests, 6);
    assert_eq!(counters.max_concurrent, 1, "{counters:?}");
}

/// A model's `budget` is one allowance for its retries and its fallbacks past the first
/// provider: in a total outage, upstream calls stay within `(1 + ratio) × requests + floor`,
/// where retry and fallback each with their own allowance multiply them.
#[tokio::test]
async fn one_budget_bounds_a_models_retries_and_fallbacks_in_an_outage() {
    const REQUESTS: u64 = 20;
    let run = |budget: &'static str| async move {
        let upstream = MockServer::start(FaultPlan::healthy().fault(Fault::Status(503), 1.0))
            .await
            .unwrap();
        let config = format!(
            r#"
[[keys]]
key = "{KEY_A}"
tenant = "a"

[providers.first]
kind = "openai"
base_url = "{base}/v1"
models = ["m"]

[providers.second]
kind = "openai"
base_url = "{base}/v1"
models = ["m"]

[models.m]
providers = ["first", "second"]
strategy = "fallback"
retry = {{ max_attempts = 5, backoff = "1ms" }}
{budget}
"#,
            base = upstream.base_url()
        );
        let gateway = start(&config).await;
        for i in 0..REQUESTS {
            let response = send(with_api_key(
                openai_chat(&gateway.url(), "m", &format!("question {i}")),
                KEY_A,
            ))
            .await;
            assert!(
                response.status().is_server_error(),
                "{:?}",
                response.status()
            );
        }
        upstream.counters().requests
    };
    // One extra attempt per ten requests, plus one a second over 10 s: at most 1.1 × 20 + 10.
    let budgeted = run(r#"budget = { ratio = 0.1, min_per_second = 1, window = "10s" }"#).await;
    let own = run("").await;
    println!(
        "{REQUESTS} requests in an outage: {budgeted} upstream calls with one budget, {own} without"
    );
    assert!(budgeted <= 32, "{budgeted} upstream calls with one budget");
    assert!(
        budgeted >= REQUESTS,
        "every request reached a provider once"
    );
    assert!(
        own > 2 * budgeted,
        "{own} without a shared budget, {budgeted} with"
    );
}

#[test]
fn a_budget_or_adaptive_limit_that_makes_no_sense_is_refused_with_its_key() {
    let config = r#"
[[keys]]
key = "sk-test"
tenant = "t"

[providers.p]
kind = "mock"
models = ["m"]

[models.m]
budget = { ratio = -1.0 }
"#;
    let error = Config::from_toml(config).unwrap_err().to_string();
    assert!(error.contains("models.m.budget.ratio"), "{error}");
    let config = config.replace("ratio = -1.0", r#"ratio = 0.2, window = "0s""#);
    let error = Config::from_toml(&config).unwrap_err().to_string();
    assert!(error.contains("models.m.budget.window"), "{error}");
    let config = config
        .replace(r#"budget = { ratio = 0.2, window = "0s" }"#, "")
        .replace(
            r#"kind = "mock""#,
            "kind = \"mock\"\nadaptive_concurrency = { min = 10, max = 5 }",
        );
    let error = Config::from_toml(&config).unwrap_err().to_string();
    assert!(
        error.contains("providers.p.adaptive_concurrency.max"),
        "{error}"
    );
}

/// A provider's `adaptive_concurrency` finds its capacity: against an upstream that answers
/// four calls at a time and refuses the rest with 429, three waves of sixteen clients meet a
/// few 429s (2 or 3 of 48 here), where without it 36 of them do.
#[tokio::test]
async fn a_providers_adaptive_concurrency_finds_its_capacity() {
    let run = |adaptive: &'static str| async move {
        let upstream = MockServer::start(
            FaultPlan::healthy()
                .latency(Latency::Fixed(Duration::from_millis(50)))
                .capacity(4),
        )
        .await
        .unwrap();
        let config = format!(
            r#"
[[keys]]
key = "{KEY_A}"
tenant = "a"

[providers.up]
kind = "openai"
base_url = "{base}/v1"
models = ["m"]
{adaptive}
"#,
            base = upstream.base_url()
        );
        let gateway = start(&config).await;
        let mut statuses = Vec::new();
        for round in 0..3 {
            let calls: Vec<_> = (0..16)
                .map(|i| {
                    let request = with_api_key(
                        openai_chat(&gateway.url(), "m", &format!("round {round} call {i}")),
                        KEY_A,
                    );
                    tokio::spawn(send(request))
                })
                .collect();
            for call in calls {
                statuses.push(call.await.unwrap().status().as_u16());
            }
        }
        let refused = statuses.iter().filter(|s| **s == 429).count();
        let answered = statuses.iter().filter(|s| **s == 200).count();
        (answered, refused, upstream.counters().max_concurrent)
    };
    let (answered, refused, peak) =
        run("adaptive_concurrency = { min = 1, max = 64, initial = 2, max_wait = \"30s\" }").await;
    let (plain_answered, plain_refused, _) = run("").await;
    println!(
        "48 calls, capacity 4: adaptive {answered} answered, {refused} refused (peak {peak} in \
         flight); without {plain_answered} answered, {plain_refused} refused"
    );
    assert!(plain_refused >= 24, "without: {plain_refused} refused");
    // Each probe above the capacity costs one 429; a loaded machine probes a few more times.
    assert!(refused <= 8, "adaptive: {refused} refused");
    assert_eq!(answered + refused, 48);
}
