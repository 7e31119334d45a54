//! Recipe: an axum handler calling a stacked provider.
//!
//! `cargo run --example axum_handler` starts the testkit mock (no key, no network), serves
//! `POST /ask` (a plain-text prompt in, the answer out) on a free loopback port, asks itself
//! the same question twice, prints both answers and how many calls reached the upstream (one:
//! the second answer came from the dedup cache), and exits. `-- --serve` keeps serving and
//! prints a curl command instead. Point it at OpenAI by replacing the `OpenAi::compatible(..)`
//! line with `OpenAi::from_env()?` (reads `OPENAI_API_KEY`).
//!
//! The stack, outermost first: dedup (identical requests share one call; deterministic
//! answers are cached), retry (transient failures and 429s, with backoff, within a deadline),
//! circuit breaker (an upstream that keeps failing is left alone for a cool-down; retry sits
//! outside it so that it waits out the breaker's hint instead of hammering it), then the
//! provider. It is built once, boxed into a `BoxCloneSyncService` and kept in axum's state:
//! clones share the cache, the retry budget and the breaker.
//!
//! Errors are mapped to a status with core's classifier: 429 with `retry-after` for rate
//! limits, 503 for an open breaker or an overloaded upstream, 400 for the client's own
//! mistakes, 502 otherwise.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::routing::post;
use bytes::Bytes;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_llm_breaker::CircuitBreakerLayer;
use tower_llm_core::{BoxError, FailureKind, classify_dyn_error};
use tower_llm_dedup::DedupLayer;
use tower_llm_providers::{ChatRequest, ChatResponse, Message, OpenAi};
use tower_llm_retry::{Backoff, RetryLayer, StatsOnly};
use tower_llm_testkit::{FaultPlan, Latency, MockServer, Route, TestClient};

/// The provider behind its layers, shared by every request.
type Llm = BoxCloneSyncService<ChatRequest, ChatResponse, BoxError>;

const MODEL: &str = "gpt-4o-mini";

fn stack(openai_base_url: String) -> Result<Llm, BoxError> {
    let provider = OpenAi::compatible(openai_base_url)
        .api_key("sk-mock")
        .build()?;
    // Keyed by core's fingerprint of the typed request (model, messages, sampling, tenant).
    let dedup = DedupLayer::<ChatResponse>::builder()
        .ttl(Duration::from_secs(300))
        .max_entries(10_000)
        .build()?;
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(200)))
        .deadline(Duration::from_secs(30))
        // The default records the attempt count in an http::Response's extensions; a typed
        // ChatResponse has none, so the count goes to the layer's stats only.
        .record_attempts(StatsOnly)
        .build()?;
    // The default policy: open when half of the last 100 calls failed, once 40 are in, so a
    // flaky provider that retry copes with does not open it (five failures in a row would,
    // under concurrent traffic).
    let breaker = CircuitBreakerLayer::builder()
        .name("openai")
        .cooldown(Duration::from_secs(30))
        .build()?;
    let service = ServiceBuilder::new()
        .layer(dedup)
        .layer(retry)
        .layer(breaker)
        .timeout(Duration::from_secs(60))
        .service(provider);
    Ok(BoxCloneSyncService::new(service))
}

async fn ask(State(llm): State<Llm>, prompt: String) -> (StatusCode, HeaderMap, String) {
    // temperature 0: a deterministic request, so its answer may be cached.
    let request = ChatRequest::new(MODEL, vec![Message::user(prompt)]).temperature(0.0);
    match llm.oneshot(request).await {
        Ok(answer) => (StatusCode::OK, HeaderMap::new(), answer.content),
        Err(error) => {
            let failure = classify_dyn_error(&*error);
            let status = match failure.kind {
                FailureKind::RateLimited | FailureKind::QuotaExhausted => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                FailureKind::CircuitOpen | FailureKind::Overloaded => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                FailureKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                kind if kind.is_client_error() => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            };
            let mut headers = HeaderMap::new();
            if let Some(wait) = failure.retry_after {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            (status, headers, format!("{error}\n"))
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let serve_forever = std::env::args().any(|arg| arg == "--serve");
    let mock = MockServer::start(
        FaultPlan::healthy()
            .name("mock")
            .latency(Latency::Fixed(Duration::from_millis(50))),
    )
    .await?;
    let app = Router::new()
        .route("/ask", post(ask))
        .with_state(stack(format!("{}/v1", mock.base_url()))?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    if serve_forever {
        println!("serving on http://{addr} (Ctrl-C to stop); try");
        println!("  curl -s http://{addr}/ask -d 'What is the capital of France?'");
        server.await??;
        return Ok(());
    }

    let client = TestClient::new();
    for attempt in 1..=2 {
        let request = http::Request::post(format!("http://{addr}/ask"))
            .body(Bytes::from_static(b"What is the capital of France?"))?;
        let response = client.clone().oneshot(request).await?;
        println!(
            "request {attempt}: {} {}",
            response.status(),
            String::from_utf8_lossy(response.body())
        );
    }
    println!(
        "upstream calls: {} (the second answer came from the dedup cache)",
        mock.counters().route(Route::OpenAiChat)
    );
    server.abort();
    Ok(())
}
