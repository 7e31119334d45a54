//! Typed answers keep their HTTP facts: over the testkit's mock, a rate limiter that follows
//! the provider's headers stops the typed OpenAI and Anthropic services at "remaining 0" and
//! resumes at the reset, in paused time; answers, streams and errors carry the request id.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_core::{FailureKind, RateLimitHeaders, ResponseUsage, UpstreamError};
use tower_llm_providers::{
    Anthropic, ChatChunk, ChatRequest, ChatResponse, Dialect, HttpClient, HttpClientConfig,
    Message, OpenAi, TokenCounting,
};
use tower_llm_ratelimit::RateLimitLayer;
use tower_llm_testkit::{Fault, FaultPlan, MockServer, Quota};

const S: Duration = Duration::from_secs(1);

fn client() -> HttpClient {
    HttpClientConfig::default().build().unwrap()
}

fn request(i: usize) -> ChatRequest {
    ChatRequest::new("m", vec![Message::user(format!("question {i}"))]).max_tokens(16)
}

/// Four calls through a limiter with no quota of its own, only the server's headers, over a
/// mock that admits two requests a minute: the third waits for the reset instead of getting
/// the 429.
async fn stops_at_zero_and_resumes_at_reset<S>(service: S, server: &MockServer)
where
    S: Service<ChatRequest, Response = ChatResponse, Error = UpstreamError> + Clone,
    S::Future: Send,
{
    let mut limited = RateLimitLayer::builder()
        .adapt_to_headers()
        // Anthropic's reset is a whole second, rounded up: past the default 60 s.
        .max_wait(Duration::from_secs(120))
        .build()
        .unwrap()
        .layer(service);
    let start = Instant::now();
    let mut started = Vec::new();
    for i in 0..4 {
        let answer = limited
            .ready()
            .await
            .unwrap()
            .call(request(i))
            .await
            .unwrap_or_else(|e| panic!("call {i} after {:?}: {e}", start.elapsed()));
        started.push(start.elapsed());
        assert!(answer.rate_limit_headers().is_some_and(|h| !h.is_empty()));
    }
    assert_eq!(
        server.counters().status(429),
        0,
        "the limiter sent a call too many"
    );
    // The first two go at once; the third only once the server's minute has passed.
    assert!(started[1] < S, "{started:?}");
    assert!(started[2] >= 59 * S && started[2] < 62 * S, "{started:?}");
    assert!(started[3] < 62 * S, "{started:?}");
}

#[tokio::test(start_paused = true)]
async fn openai_headers_pause_the_limiter() {
    let server = MockServer::start(FaultPlan::healthy().quota(Quota::new(2, 100_000)))
        .await
        .unwrap();
    let openai = OpenAi::builder()
        .api_key("sk-test")
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(client())
        .unwrap();
    stops_at_zero_and_resumes_at_reset(openai, &server).await;
}

#[tokio::test(start_paused = true)]
async fn anthropic_headers_pause_the_limiter() {
    let server = MockServer::start(FaultPlan::healthy().quota(Quota::new(2, 100_000)))
        .await
        .unwrap();
    let anthropic = Anthropic::builder()
        .api_key("sk-ant-test")
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(client())
        .unwrap();
    stops_at_zero_and_resumes_at_reset(anthropic, &server).await;
}

/// The limiter between the typed provider and its HTTP client: a tokens quota and the
/// provider's headers over `http::Request<RequestBody>` and hyper's `http::Response<Incoming>`.
/// It reads each request's estimate from the body being sent and stops at remaining 0 as
/// above; the body of the answer is not read yet when it passes, so each reservation is kept.
#[tokio::test(start_paused = true)]
async fn a_limiter_under_the_provider_reads_the_request_and_the_headers() {
    let server = MockServer::start(FaultPlan::healthy().quota(Quota::new(2, 100_000)))
        .await
        .unwrap();
    let limiter = RateLimitLayer::builder()
        .tokens(tower_llm_ratelimit::Quota::per_minute(1_000_000))
        .adapt_to_headers()
        .max_wait(Duration::from_secs(120))
        .build()
        .unwrap();
    let handle = limiter.handle();
    let mut openai = OpenAi::builder()
        .api_key("sk-test")
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(limiter.layer(client()))
        .unwrap();
    let start = Instant::now();
    let mut started = Vec::new();
    for i in 0..4 {
        ServiceExt::<ChatRequest>::ready(&mut openai)
            .await
            .unwrap()
            .call(request(i))
            .await
            .unwrap_or_else(|e| panic!("call {i} after {:?}: {e}", start.elapsed()));
        started.push(start.elapsed());
    }
    assert_eq!(
        server.counters().status(429),
        0,
        "a call too many: {started:?}"
    );
    assert!(started[1] < S, "{started:?}");
    assert!(started[2] >= 59 * S && started[2] < 62 * S, "{started:?}");
    let stats = handle.stats();
    // Each body's prompt and its max_tokens (16), read from the bytes sent: exactly core's
    // estimate of the four bodies the mock received, no more, no less.
    let received = server.received();
    assert_eq!(received.len(), 4, "{received:?}");
    for (i, sent) in received.iter().enumerate() {
        let body = sent.json().unwrap();
        assert_eq!(body["max_completion_tokens"], 16, "{body}");
        assert_eq!(
            body["messages"][0]["content"],
            format!("question {i}"),
            "{body}"
        );
    }
    let estimated: u64 = received
        .iter()
        .map(|sent| tower_llm_core::estimate_body_tokens(&sent.body))
        .sum();
    assert!(estimated > 4 * 16, "the prompts count too: {estimated}");
    assert_eq!(stats.tokens_reserved, estimated, "{stats:?}");
    assert_eq!(stats.tokens_refunded, 0, "{stats:?}");
    assert_eq!(stats.in_flight, 0, "{stats:?}");
}

#[tokio::test]
async fn answers_streams_and_errors_carry_their_http_facts() {
    let server = MockServer::start(
        FaultPlan::healthy()
            .quota(Quota::new(100, 100_000))
            .script([None, None, Some(Fault::Status(500))]),
    )
    .await
    .unwrap();
    let anthropic = Anthropic::builder()
        .api_key("sk-ant-test")
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(client())
        .unwrap();

    let answer = anthropic.clone().oneshot(request(0)).await.unwrap();
    let meta = &answer.meta;
    assert_eq!(meta.status, Some(http::StatusCode::OK));
    assert_eq!(meta.dialect, Some(Dialect::Anthropic));
    assert_eq!(meta.provider.as_deref(), Some("anthropic"));
    assert_eq!(meta.token_counting(), Some(TokenCounting::AsProduced));
    assert!(
        meta.request_id
            .as_deref()
            .is_some_and(|id| id.starts_with("req_"))
    );
    assert_eq!(meta.headers["anthropic-ratelimit-requests-remaining"], "99");
    assert!(answer.usage().is_some());

    let mut stream = anthropic
        .clone()
        .oneshot(request(1).streaming())
        .await
        .unwrap();
    assert!(stream.meta().request_id.is_some());
    assert_eq!(stream.usage(), None, "no usage before the stream said it");
    let mut seen = None;
    while let Some(chunk) = stream.next().await {
        if let ChatChunk::Usage(usage) = chunk.unwrap() {
            seen = Some(usage);
        }
    }
    assert!(seen.is_some());
    assert_eq!(ResponseUsage::usage(&stream), seen);
    assert_eq!(stream.model(), Some("m"));
    assert!(
        stream
            .rate_limit_headers()
            .is_some_and(|h| h.contains_key("request-id"))
    );

    let error = anthropic.oneshot(request(2)).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::ServerError);
    assert!(error.request_id().is_some_and(|id| id.starts_with("req_")));
}
