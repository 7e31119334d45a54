//! A stalled upstream under the providers' default stream timeouts, through a rate limiter and
//! a breaker, over the testkit's mock (real HTTP on loopback) on tokio's paused clock: the
//! stream ends in a timeout at the default between-chunks limit, which frees the caller, the
//! concurrency slot and the breaker's judgement; nothing is held for the year the mock stalls.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_breaker::{CircuitBreakerLayer, State};
use tower_llm_core::FailureKind;
use tower_llm_providers::{
    Anthropic, ChatChunk, ChatRequest, HttpClientConfig, Message, OpenAi, StreamTimeouts,
    Streaming, UpstreamError,
};
use tower_llm_ratelimit::RateLimitLayer;
use tower_llm_testkit::{Fault, FaultPlan, MockServer};

fn ask() -> Streaming<ChatRequest> {
    ChatRequest::new("m", vec![Message::user("a story")]).streaming()
}

/// Streams one answer to its end: its items, and when it ended.
async fn read_to_end<S>(mut service: S) -> (Vec<Result<ChatChunk, UpstreamError>>, Instant)
where
    S: Service<Streaming<ChatRequest>>,
    S::Error: std::fmt::Debug,
    S::Response: futures_util::Stream<Item = Result<ChatChunk, UpstreamError>> + Unpin,
{
    let mut stream = service.ready().await.unwrap().call(ask()).await.unwrap();
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item);
    }
    (items, Instant::now())
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_ends_at_the_default_limit_and_lets_its_slot_go() {
    let server = MockServer::start(
        FaultPlan::healthy().script([Some(Fault::StallStream { after_chunks: 1 })]),
    )
    .await
    .unwrap();
    // The provider as it comes: default stream timeouts.
    let openai = OpenAi::builder()
        .api_key("sk-test")
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(HttpClientConfig::default().build().unwrap())
        .unwrap();
    let limiter = RateLimitLayer::builder()
        .concurrency(1)
        .max_wait(Duration::from_secs(3600))
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .build()
        .unwrap();
    let service = limiter.layer(breaker.layer(openai));

    let started = Instant::now();
    let stalled = tokio::spawn(read_to_end(service.clone()));
    while server.counters().requests < 1 {
        tokio::task::yield_now().await;
    }
    // A second caller queues behind the stalled stream's slot.
    let next = tokio::spawn(read_to_end(service));

    let (items, ended) = stalled.await.unwrap();
    let (last, before) = items.split_last().unwrap();
    assert!(before.iter().all(Result::is_ok), "{items:?}");
    let error = last.as_ref().unwrap_err();
    assert_eq!(error.kind(), FailureKind::Timeout, "{error}");
    assert!(error.to_string().contains("between-chunks"), "{error}");
    // Virtual time: the default silence limit after the last event, not the mock's year.
    let took = ended - started;
    assert!(
        took >= StreamTimeouts::DEFAULT_BETWEEN_CHUNKS
            && took < StreamTimeouts::DEFAULT_BETWEEN_CHUNKS + Duration::from_secs(1),
        "{took:?}"
    );

    let (items, _) = next.await.unwrap();
    assert!(items.iter().all(Result::is_ok), "{items:?}");
    let counters = server.counters();
    assert_eq!((counters.requests, counters.max_concurrent), (2, 1));
    let limits = limiter.handle().stats();
    assert_eq!((limits.waited, limits.in_flight), (1, 0), "{limits:?}");
    let judged = breaker.handle().stats();
    assert_eq!((judged.failures, judged.successes), (1, 1), "{judged:?}");
    assert_eq!(judged.state, State::Closed);
}

/// The mock's stall with no content chunk: only the opening events go out (OpenAI's
/// role-only chunk; Anthropic's `message_start`, `content_block_start` and a ping), then
/// nothing. A silence limit shorter than the first-token one ends each stream on its own,
/// counted from the response head.
#[tokio::test(start_paused = true)]
async fn a_stall_after_the_opening_events_ends_at_the_between_chunks_limit() {
    const SILENCE: Duration = Duration::from_secs(3);
    let timeouts = StreamTimeouts::default().between_chunks(SILENCE);
    let server =
        MockServer::start(FaultPlan::healthy().fault(Fault::StallStream { after_chunks: 0 }, 1.0))
            .await
            .unwrap();
    let base_url = format!("{}/v1", server.base_url());
    let openai = OpenAi::builder()
        .api_key("sk-test")
        .base_url(&base_url)
        .stream_timeouts(timeouts)
        .build_with(HttpClientConfig::default().build().unwrap())
        .unwrap();
    let anthropic = Anthropic::builder()
        .api_key("sk-test")
        .base_url(&base_url)
        .stream_timeouts(timeouts)
        .build_with(HttpClientConfig::default().build().unwrap())
        .unwrap();

    let started = Instant::now();
    let (items, ended) = read_to_end(openai).await;
    let (anthropic_items, anthropic_ended) = read_to_end(anthropic).await;
    for (items, took) in [
        (items, ended - started),
        (anthropic_items, anthropic_ended - ended),
    ] {
        // No content before the timeout (Anthropic's block start is handed over as a
        // chunk of its own).
        let (Some(Err(error)), before) = (items.last(), &items[..items.len() - 1]) else {
            panic!("ends in the timeout: {items:?}");
        };
        assert!(
            before
                .iter()
                .all(|item| matches!(item, Ok(ChatChunk::Block(_)))),
            "{items:?}"
        );
        assert_eq!(error.kind(), FailureKind::Timeout, "{error}");
        assert!(error.to_string().contains("between-chunks"), "{error}");
        // Virtual time: the silence limit from the head (which comes within the same
        // instant over loopback), not the 10-minute first-token limit.
        assert!(
            took >= SILENCE && took < SILENCE + Duration::from_secs(1),
            "{took:?}"
        );
    }
}
