//! Streams through race's strategies (docs/streams.md, the race row): the winner is the first
//! leg to hand over its stream (its head), a stream that breaks after that is not failed
//! over, and the winner's stream keeps its end signal through `Answer`, so a limiter and a
//! breaker outside the strategy hold and judge the call until the stream ends. Typed
//! providers over the testkit's mock, on tokio's paused clock.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use tower::util::MapResponse;
use tower::{Layer, Service, ServiceExt};
use tower_llm_breaker::CircuitBreakerLayer;
use tower_llm_core::BoxError;
use tower_llm_providers::{
    ChatChunk, ChatRequest, HttpChatStream, HttpClientConfig, Message, OpenAi, Streaming,
    UpstreamError,
};
use tower_llm_race::{Answer, FallbackLayer, MarkResponse, RecordAnswer};
use tower_llm_ratelimit::RateLimitLayer;
use tower_llm_testkit::{Fault, FaultPlan, MockServer};

fn openai(server: &MockServer) -> OpenAi {
    OpenAi::builder()
        .api_key("sk-test")
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(HttpClientConfig::default().build().unwrap())
        .unwrap()
}

/// A leg of a strategy: the provider's stream, wrapped so the strategy can mark the winner.
type Leg = MapResponse<OpenAi, fn(HttpChatStream) -> Answer<HttpChatStream>>;

fn leg(server: &MockServer) -> Leg {
    ServiceExt::<Streaming<ChatRequest>>::map_response(openai(server), Answer::new)
}

fn ask(i: usize) -> Streaming<ChatRequest> {
    ChatRequest::new("m", vec![Message::user(format!("story {i}"))]).streaming()
}

/// Streams one answer to its end: which leg answered, and its items.
async fn stream_to_end<S, St>(
    mut service: S,
    request: Streaming<ChatRequest>,
) -> (usize, Vec<Result<ChatChunk, UpstreamError>>)
where
    S: Service<Streaming<ChatRequest>, Response = Answer<St>, Error = BoxError>,
    St: futures_util::Stream<Item = Result<ChatChunk, UpstreamError>> + Unpin,
{
    let mut answer = service.ready().await.unwrap().call(request).await.unwrap();
    let leg = answer.answered().unwrap().service;
    let mut items = Vec::new();
    while let Some(item) = answer.get_mut().next().await {
        items.push(item);
    }
    (leg, items)
}

/// Every first leg answers 500, so each call falls back to the second, whose stream wins:
/// with `concurrency = 1` outside the fallback, the streams never overlap upstream, and the
/// breaker outside counts each at its end, not its head.
#[tokio::test(start_paused = true)]
async fn a_winning_stream_holds_the_outer_limiter_and_breaker_until_its_end() {
    let down = MockServer::start(FaultPlan::healthy().fault(Fault::Status(500), 1.0))
        .await
        .unwrap();
    let up = MockServer::start(FaultPlan::healthy().stream_chunk_delay(Duration::from_millis(100)))
        .await
        .unwrap();
    let legs = vec![leg(&down), leg(&up)];
    let limiter = RateLimitLayer::builder()
        .concurrency(1)
        .max_wait(Duration::from_secs(600))
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .build()
        .unwrap();
    let fallback = FallbackLayer::new().record_winner(MarkResponse).layer(legs);
    let service = limiter.layer(breaker.layer(fallback));

    let mut first = service.clone().oneshot(ask(0)).await.unwrap();
    first.get_mut().next().await.unwrap().unwrap();
    assert_eq!(
        breaker.handle().stats().successes,
        0,
        "not judged at its head"
    );
    let others: Vec<_> = (1..3)
        .map(|i| tokio::spawn(stream_to_end(service.clone(), ask(i))))
        .collect();
    while first.get_mut().next().await.is_some() {}
    assert_eq!(breaker.handle().stats().successes, 1);
    for other in others {
        let (leg, items) = other.await.unwrap();
        assert_eq!(leg, 1);
        assert!(items.iter().all(Result::is_ok), "{items:?}");
    }
    assert_eq!(up.counters().requests, 3);
    assert_eq!(up.counters().max_concurrent, 1, "{:?}", up.counters());
    assert_eq!(limiter.handle().stats().waited, 2);
    assert_eq!(breaker.handle().stats().successes, 3);
}

/// The first leg's stream starts well and is cut mid-way: it had won at its head, so the
/// fallback does not move on; the caller gets the error, the breaker outside a failure.
#[tokio::test(start_paused = true)]
async fn a_stream_that_breaks_after_its_head_is_not_failed_over() {
    let cutting =
        MockServer::start(FaultPlan::healthy().fault(Fault::CutStream { after_chunks: 1 }, 1.0))
            .await
            .unwrap();
    let healthy = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let legs = vec![leg(&cutting), leg(&healthy)];
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .build()
        .unwrap();
    let fallback = FallbackLayer::new().record_winner(MarkResponse).layer(legs);
    let (leg, items) = stream_to_end(breaker.layer(fallback), ask(0)).await;
    assert_eq!(leg, 0);
    let (last, before) = items.split_last().unwrap();
    assert!(before.iter().all(Result::is_ok), "{items:?}");
    assert!(last.is_err(), "{items:?}");
    assert_eq!(healthy.counters().requests, 0);
    let judged = breaker.handle().stats();
    assert_eq!((judged.successes, judged.failures), (0, 1), "{judged:?}");
}
