//! Recipe: axum handlers calling a stacked provider, whole answers and streams alike.
//!
//! `cargo run --example axum_handler` starts the testkit mock (no key, no network), serves two
//! routes on a free loopback port, calls each, prints what came back and what the layers saw,
//! and exits:
//!
//! - `POST /ask`: a plain-text prompt in, the whole answer out;
//! - `POST /ask/stream`: the same, streamed back as the tokens arrive (plain text, chunked).
//!
//! `-- --serve` keeps serving and prints curl commands instead. Point it at OpenAI by
//! replacing the `OpenAi::compatible(..)` line with `OpenAi::from_env()?` (reads
//! `OPENAI_API_KEY`).
//!
//! The stacks, outermost first: dedup on the whole-answer route (identical requests share one
//! call; deterministic answers are cached); **one rate limiter for both routes** (one layer
//! value is one budget, whichever stack it lands in: a stream holds its concurrency slot and
//! its token reservation until it ends, then is reconciled with the usage it reported); retry
//! (transient failures and 429s, with backoff, within a deadline; a stream is retried only
//! before its first chunk); the circuit breaker (one layer value too: a provider that fails
//! whole answers or cuts streams is left alone for a cool-down, a stream judged by how it
//! ended); then the provider, with **stream timeouts** set (a stalled stream ends in an error
//! instead of holding the caller and the limiter's slot). Each stack is built once, boxed into
//! a `BoxCloneSyncService` and kept in axum's state: clones share every layer's state.
//!
//! Errors are mapped to a status with core's classifier: 429 with `retry-after` for rate
//! limits, 503 for an open breaker or an overloaded upstream, 400 for the client's own
//! mistakes, 502 otherwise. An error in the middle of a stream ends the response body with an
//! error (the status, 200, is already sent).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use futures_util::StreamExt;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_llm_breaker::{CircuitBreakerHandle, CircuitBreakerLayer};
use tower_llm_core::{BoxError, FailureKind, classify_dyn_error};
use tower_llm_dedup::DedupLayer;
use tower_llm_providers::{
    ChatChunk, ChatRequest, ChatResponse, HttpChatStream, Message, OpenAi, StreamTimeouts,
    Streaming,
};
use tower_llm_ratelimit::{Quota, RateLimitHandle, RateLimitLayer};
use tower_llm_retry::{Backoff, RetryLayer};
use tower_llm_testkit::{FaultPlan, Latency, MockServer, Route, TestClient};

const MODEL: &str = "gpt-4o-mini";

/// The provider behind its layers, for each route, and handles on the shared layers.
#[derive(Clone)]
struct Llm {
    whole: BoxCloneSyncService<ChatRequest, ChatResponse, BoxError>,
    stream: BoxCloneSyncService<Streaming<ChatRequest>, HttpChatStream, BoxError>,
    limits: RateLimitHandle,
    breaker: CircuitBreakerHandle,
}

fn stacks(openai_base_url: String) -> Result<Llm, BoxError> {
    // Every layer is named: the name labels its metrics and its log events, so two limiters
    // (or a limiter per provider) read apart in a dashboard.
    let provider = OpenAi::compatible(openai_base_url)
        .name("openai")
        .api_key("sk-mock")
        // The defaults, written out: 10 minutes to the first chunk (reasoning models think
        // before they speak), as long for silence (an early head, then a silent think), no
        // limit on a long answer.
        .stream_timeouts(
            StreamTimeouts::none()
                .first_token(Duration::from_secs(600))
                .between_chunks(Duration::from_secs(600)),
        )
        .build()?;
    // One value of each stateful layer, applied to both routes' stacks.
    let limiter = RateLimitLayer::builder()
        .name("openai")
        .concurrency(8)
        .requests(Quota::per_minute(500))
        .tokens(Quota::per_minute(200_000))
        .max_wait(Duration::from_secs(10))
        .build()?;
    let retry = RetryLayer::builder()
        .name("openai")
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(200)))
        .deadline(Duration::from_secs(30))
        .build()?;
    // The default policy: open when half of the last 100 calls failed, once 40 are in, so a
    // flaky provider that retry copes with does not open it (five failures in a row would,
    // under concurrent traffic).
    let breaker = CircuitBreakerLayer::builder()
        .name("openai")
        .cooldown(Duration::from_secs(30))
        .build()?;
    // Keyed by core's fingerprint of the typed request (model, messages, sampling, tenant).
    let dedup = DedupLayer::<ChatResponse>::builder()
        .name("chat")
        .ttl(Duration::from_secs(300))
        .max_entries(10_000)
        .build()?;
    let whole = ServiceBuilder::new()
        .layer(dedup)
        .layer(limiter.clone())
        .layer(retry.clone())
        .layer(breaker.clone())
        .service(provider.clone());
    let stream = ServiceBuilder::new()
        .layer(limiter.clone())
        .layer(retry)
        .layer(breaker.clone())
        .service(provider);
    Ok(Llm {
        whole: BoxCloneSyncService::new(whole),
        stream: BoxCloneSyncService::new(stream),
        limits: limiter.handle(),
        breaker: breaker.handle(),
    })
}

fn question(prompt: String) -> ChatRequest {
    // temperature 0: a deterministic request, so its whole answer may be cached.
    ChatRequest::new(MODEL, vec![Message::user(prompt)]).temperature(0.0)
}

async fn ask(State(llm): State<Llm>, prompt: String) -> Response {
    match llm.whole.oneshot(question(prompt)).await {
        Ok(answer) => answer.content.into_response(),
        Err(error) => refusal(&error),
    }
}

async fn ask_stream(State(llm): State<Llm>, prompt: String) -> Response {
    match llm.stream.oneshot(question(prompt).streaming()).await {
        Ok(stream) => {
            // The text as it arrives; an error mid-stream ends the body with that error.
            let text = stream.filter_map(|chunk| {
                std::future::ready(match chunk {
                    Ok(ChatChunk::Content(text)) => Some(Ok(Bytes::from(text))),
                    Ok(_) => None,
                    Err(error) => Some(Err(BoxError::from(error))),
                })
            });
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                Body::from_stream(text),
            )
                .into_response()
        }
        Err(error) => refusal(&error),
    }
}

/// A failure before any answer, as a status a client can act on.
fn refusal(error: &BoxError) -> Response {
    let failure = classify_dyn_error(&**error);
    let status = match failure.kind {
        FailureKind::RateLimited | FailureKind::QuotaExhausted => StatusCode::TOO_MANY_REQUESTS,
        FailureKind::CircuitOpen | FailureKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        FailureKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        kind if kind.is_client_error() => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    };
    let mut headers = HeaderMap::new();
    if let Some(wait) = failure.retry_after {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    (status, headers, format!("{error}\n")).into_response()
}

fn app(llm: Llm) -> Router {
    Router::new()
        .route("/ask", post(ask))
        .route("/ask/stream", post(ask_stream))
        .with_state(llm)
}

/// The mock upstream: answers after 50 ms, streams a chunk every 20 ms.
async fn mock() -> Result<MockServer, BoxError> {
    let plan = FaultPlan::healthy()
        .name("mock")
        .latency(Latency::Fixed(Duration::from_millis(50)))
        .stream_chunk_delay(Duration::from_millis(20));
    Ok(MockServer::start(plan).await?)
}

/// Serves `app` on a free loopback port.
async fn serve(app: Router) -> Result<std::net::SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// POSTs `prompt` to `path`; the status and the whole body.
async fn post_prompt(
    addr: std::net::SocketAddr,
    path: &str,
    prompt: &'static str,
) -> Result<(StatusCode, String), BoxError> {
    let request = http::Request::post(format!("http://{addr}{path}"))
        .body(Bytes::from_static(prompt.as_bytes()))?;
    let response = TestClient::new().oneshot(request).await?;
    Ok((
        response.status(),
        String::from_utf8_lossy(response.body()).into_owned(),
    ))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let serve_forever = std::env::args().any(|arg| arg == "--serve");
    let mock = mock().await?;
    let llm = stacks(format!("{}/v1", mock.base_url()))?;
    let addr = serve(app(llm.clone())).await?;

    if serve_forever {
        println!("serving on http://{addr} (Ctrl-C to stop); try");
        println!("  curl -s http://{addr}/ask -d 'What is the capital of France?'");
        println!("  curl -sN http://{addr}/ask/stream -d 'Tell me a story'");
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }

    const PROMPT: &str = "What is the capital of France?";
    for attempt in 1..=2 {
        let (status, body) = post_prompt(addr, "/ask", PROMPT).await?;
        println!("ask {attempt}: {status} {body}");
    }
    let (status, body) = post_prompt(addr, "/ask/stream", "Tell me a story").await?;
    println!("ask/stream: {status} {body}");
    let limits = llm.limits.stats();
    println!(
        "upstream calls: {} (the second whole answer came from the dedup cache); \
         the shared limiter admitted {} and keeps {} tokens reserved; breaker {:?}",
        mock.counters().route(Route::OpenAiChat),
        limits.admitted,
        limits.tokens_reserved - limits.tokens_refunded + limits.tokens_charged,
        llm.breaker.state(),
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Both routes over the mock: answers come back whole and streamed, through one limiter.
    #[tokio::test]
    async fn both_routes_answer_through_one_limiter() {
        let mock = mock().await.unwrap();
        let llm = stacks(format!("{}/v1", mock.base_url())).unwrap();
        let addr = serve(app(llm.clone())).await.unwrap();

        let (status, whole) = post_prompt(addr, "/ask", "capital of France?")
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(whole, "mock: capital of France?");
        let (status, streamed) = post_prompt(addr, "/ask/stream", "capital of France?")
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            streamed, whole,
            "the stream says what the whole answer said"
        );
        // A second whole answer is the cached one: two upstream calls in all.
        post_prompt(addr, "/ask", "capital of France?")
            .await
            .unwrap();
        assert_eq!(mock.counters().route(Route::OpenAiChat), 2);
        // One limiter saw both routes' calls; the stream's slot is back (it held it until its
        // last chunk, not just until its head).
        let stats = llm.limits.stats();
        assert_eq!(stats.admitted, 2);
        assert_eq!(stats.waiting, 0);
        assert_eq!(stats.in_flight, 0, "a call still holds a concurrency slot");
        assert_eq!(llm.breaker.stats().successes, 2);
    }

    /// The streaming route holds its concurrency slot while its body is open, from the
    /// response head to the stream's last chunk, and gives it back once the body is drained:
    /// the head alone does not release it.
    #[tokio::test]
    async fn a_stream_holds_its_slot_from_its_head_to_its_last_chunk() {
        let mock = mock().await.unwrap();
        let llm = stacks(format!("{}/v1", mock.base_url())).unwrap();
        let request = http::Request::post("/ask/stream")
            .body(Body::from("capital of France?"))
            .unwrap();
        // The route called in process: its response is the head, its body not read yet.
        let response = app(llm.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let stats = llm.limits.stats();
        assert_eq!(stats.admitted, 1, "{stats:?}");
        assert_eq!(
            stats.in_flight, 1,
            "the open stream holds its slot: {stats:?}"
        );

        let mut body = response.into_body().into_data_stream();
        let (mut text, mut chunks) = (Vec::new(), 0);
        while let Some(chunk) = body.next().await {
            text.extend_from_slice(&chunk.unwrap());
            chunks += 1;
            let stats = llm.limits.stats();
            assert_eq!(
                stats.in_flight,
                1,
                "released before the stream's end, at {:?}: {stats:?}",
                String::from_utf8_lossy(&text)
            );
        }
        assert_eq!(String::from_utf8(text).unwrap(), "mock: capital of France?");
        assert!(
            chunks > 1,
            "the slot was seen held mid-stream: {chunks} chunks"
        );
        let stats = llm.limits.stats();
        assert_eq!(
            stats.in_flight, 0,
            "the drained stream still holds its slot"
        );
        assert_eq!(stats.waiting, 0, "{stats:?}");
        assert_eq!(mock.counters().route(Route::OpenAiChat), 1);
    }
}
