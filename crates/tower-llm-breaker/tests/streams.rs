//! A streamed call's verdict is its stream's end: the terminal event is a success; a cut, an
//! error event or a stall is a failure; a stream the caller dropped is neither. A half-open
//! probe that streams holds the probe slot until its stream ends. Typed providers over the
//! testkit's mock, in paused time.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use tower::{Layer, Service, ServiceExt};
use tower_llm_breaker::{CircuitBreakerLayer, State};
use tower_llm_core::{BoxError, CircuitOpen};
use tower_llm_providers::{ChatRequest, HttpClientConfig, Message, OpenAi, Streaming};
use tower_llm_testkit::{Fault, FaultPlan, MockServer, StreamError};

fn openai(server: &MockServer) -> OpenAi {
    OpenAi::builder()
        .api_key("sk-test")
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(HttpClientConfig::default().build().unwrap())
        .unwrap()
}

fn ask() -> Streaming<ChatRequest> {
    ChatRequest::new("m", vec![Message::user("a story")]).streaming()
}

/// Streams one answer through `service` to its end: `Ok` if it ended with its terminal event.
async fn stream_to_end<S>(service: &mut S) -> Result<(), BoxError>
where
    S: Service<Streaming<ChatRequest>, Error = BoxError>,
    S::Response: futures_util::Stream<
            Item = Result<tower_llm_providers::ChatChunk, tower_llm_providers::Error>,
        > + Unpin,
{
    let mut stream = service.ready().await?.call(ask()).await?;
    while let Some(item) = stream.next().await {
        item?;
    }
    Ok(())
}

/// Starts one streamed call: its stream, or the error before it.
async fn start<S>(service: &mut S) -> Result<S::Response, BoxError>
where
    S: Service<Streaming<ChatRequest>, Error = BoxError>,
{
    ServiceExt::<Streaming<ChatRequest>>::ready(service)
        .await?
        .call(ask())
        .await
}

fn breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .cooldown(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Every stream starts well (200, event stream) and fails mid-way: judged at the head, the
/// breaker would never open.
#[tokio::test(start_paused = true)]
async fn an_upstream_that_breaks_every_stream_opens_the_breaker() {
    for fault in [
        Fault::CutStream { after_chunks: 1 },
        Fault::StreamErrorEvent {
            after_chunks: 1,
            error: StreamError::Overloaded,
        },
        Fault::StallStream { after_chunks: 1 },
    ] {
        let server = MockServer::start(FaultPlan::healthy().fault(fault.clone(), 1.0))
            .await
            .unwrap();
        let layer = breaker();
        let mut service = layer.layer(openai(&server));
        for _ in 0..3 {
            stream_to_end(&mut service).await.unwrap_err();
        }
        let handle = layer.handle();
        assert_eq!(handle.state(), State::Open, "{fault:?}");
        assert_eq!(handle.stats().failures, 3, "{fault:?}");
        let refused = start(&mut service).await.unwrap_err();
        assert!(refused.is::<CircuitOpen>(), "{fault:?}: {refused}");
        assert_eq!(server.counters().requests, 3, "{fault:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_whole_stream_is_a_success_and_a_dropped_one_is_neither() {
    let server =
        MockServer::start(FaultPlan::healthy().stream_chunk_delay(Duration::from_millis(100)))
            .await
            .unwrap();
    let layer = breaker();
    let mut service = layer.layer(openai(&server));
    stream_to_end(&mut service).await.unwrap();
    let stats = layer.handle().stats();
    assert_eq!((stats.successes, stats.failures), (1, 0));

    let mut stream = start(&mut service).await.unwrap();
    stream.next().await.unwrap().unwrap();
    assert_eq!(
        layer.handle().stats().successes,
        1,
        "not judged at its head"
    );
    drop(stream);
    let stats = layer.handle().stats();
    assert_eq!((stats.successes, stats.failures), (1, 0), "{stats:?}");
}

/// In half-open, the probe is a stream: no other call goes until it has ended, and its end
/// decides.
#[tokio::test(start_paused = true)]
async fn a_streaming_probe_holds_its_slot_until_its_end() {
    let server = MockServer::start(
        FaultPlan::healthy()
            .stream_chunk_delay(Duration::from_millis(100))
            .script([
                Some(Fault::CutStream { after_chunks: 1 }),
                Some(Fault::CutStream { after_chunks: 1 }),
                Some(Fault::CutStream { after_chunks: 1 }),
            ]),
    )
    .await
    .unwrap();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .cooldown(Duration::from_secs(30))
        .probes(1)
        .build()
        .unwrap();
    let mut service = layer.layer(openai(&server));
    for _ in 0..3 {
        stream_to_end(&mut service).await.unwrap_err();
    }
    assert_eq!(layer.handle().state(), State::Open);
    tokio::time::advance(Duration::from_secs(31)).await;

    let mut probe = start(&mut service).await.unwrap();
    probe.next().await.unwrap().unwrap();
    // The probe is streaming: a second call is refused, the breaker is still half-open.
    let refused = start(&mut service).await.unwrap_err();
    assert!(refused.is::<CircuitOpen>(), "{refused}");
    while let Some(item) = probe.next().await {
        item.unwrap();
    }
    assert_eq!(layer.handle().state(), State::Closed);
    stream_to_end(&mut service).await.unwrap();
}

/// A half-open probe that streams and is dropped by its caller says nothing about the
/// upstream: its probe slot comes back at once, the breaker stays half-open, and the next
/// call is the probe that decides.
#[tokio::test(start_paused = true)]
async fn a_dropped_streaming_probe_gives_its_slot_back() {
    let cut = || Some(Fault::CutStream { after_chunks: 1 });
    let server = MockServer::start(
        FaultPlan::healthy()
            .stream_chunk_delay(Duration::from_millis(100))
            .script([cut(), cut(), cut()]),
    )
    .await
    .unwrap();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .cooldown(Duration::from_secs(30))
        .probes(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(openai(&server));
    for _ in 0..3 {
        stream_to_end(&mut service).await.unwrap_err();
    }
    tokio::time::advance(Duration::from_secs(31)).await;

    let mut probe = start(&mut service).await.unwrap();
    probe.next().await.unwrap().unwrap();
    assert_eq!(handle.stats().probes_in_flight, 1);
    drop(probe);
    let stats = handle.stats();
    assert_eq!(stats.probes_in_flight, 0, "{stats:?}");
    assert_eq!(stats.state, State::HalfOpen, "{stats:?}");
    assert_eq!((stats.successes, stats.failures), (0, 3), "{stats:?}");

    stream_to_end(&mut service).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(server.counters().requests, 5);
}

/// An error event that blames the request (Anthropic's and OpenAI's `invalid_request_error`,
/// Gemini's `INVALID_ARGUMENT`) is the caller's failure, not the upstream's: streams that all
/// end in one never open the breaker. An overload named inside the stream does.
#[tokio::test(start_paused = true)]
async fn a_client_error_inside_a_stream_does_not_open_the_breaker() {
    for (error, opens) in [
        (StreamError::InvalidRequest, false),
        (StreamError::ServerError, true),
    ] {
        let fault = Fault::StreamErrorEvent {
            after_chunks: 1,
            error,
        };
        let server = MockServer::start(FaultPlan::healthy().fault(fault, 1.0))
            .await
            .unwrap();
        let layer = breaker();
        let mut service = layer.layer(openai(&server));
        for _ in 0..3 {
            stream_to_end(&mut service).await.unwrap_err();
        }
        let stats = layer.handle().stats();
        let expected = if opens { State::Open } else { State::Closed };
        assert_eq!(stats.state, expected, "{error:?}: {stats:?}");
        let judged = if opens { stats.failures } else { stats.ignored };
        assert_eq!(judged, 3, "{error:?}: {stats:?}");
    }
}
