//! Streaming dedup over the typed providers: only a stream that ended with its terminal event
//! is cached or replayed to a later caller. Every way a stream can fail without one (a cut, an
//! error event, a stall ended by the provider's default timeout, a malformed event) reaches the
//! caller as an error and leaves nothing behind: the next identical request goes upstream.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use tower::{Layer, ServiceExt};
use tower_llm_dedup::{ReplayStream, StreamDedupLayer};
use tower_llm_providers::{ChatChunk, ChatRequest, HttpClientConfig, Message, OpenAi};
use tower_llm_testkit::{Fault, FaultPlan, MockServer, StreamError};

fn ask() -> tower_llm_providers::Streaming<ChatRequest> {
    // Temperature 0: deterministic, so a whole answer may be cached.
    ChatRequest::new("gpt-4o-mini", vec![Message::user("a short story")])
        .temperature(0.0)
        .streaming()
}

/// The chunks of a stream, or its error as text.
async fn read(stream: ReplayStream<ChatChunk>) -> Result<Vec<ChatChunk>, String> {
    let mut chunks = Vec::new();
    let mut stream = stream;
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.map_err(|error| error.to_string())?);
    }
    Ok(chunks)
}

#[tokio::test(start_paused = true)]
async fn only_a_stream_that_reached_its_terminal_event_is_kept() {
    for fault in [
        Fault::CutStream { after_chunks: 1 },
        Fault::StreamErrorEvent {
            after_chunks: 1,
            error: StreamError::Overloaded,
        },
        Fault::StreamErrorEvent {
            after_chunks: 1,
            error: StreamError::RateLimited,
        },
        Fault::StallStream { after_chunks: 1 },
        Fault::MalformedJson,
    ] {
        let server = MockServer::start(FaultPlan::healthy().script([Some(fault.clone())]))
            .await
            .unwrap();
        let layer = StreamDedupLayer::<ChatChunk>::builder().build().unwrap();
        let service = layer.layer(openai(&server));

        let failed = read(service.clone().oneshot(ask()).await.unwrap()).await;
        assert!(failed.is_err(), "{fault:?}: {failed:?}");
        assert_eq!(layer.handle().cached_entries(), 0, "{fault:?}");

        // Nothing was kept: the same request goes upstream and streams whole...
        let again = service.clone().oneshot(ask()).await.unwrap();
        assert!(!again.is_cached(), "{fault:?}");
        let whole = read(again).await.unwrap();
        assert!(
            matches!(
                whole.last(),
                Some(ChatChunk::Finish(_) | ChatChunk::Usage(_))
            ),
            "{fault:?}: {whole:?}"
        );
        assert_eq!(server.counters().requests, 2, "{fault:?}");
        // ...and that whole stream is what a later caller is replayed.
        let replayed = service.clone().oneshot(ask()).await.unwrap();
        assert!(replayed.is_cached(), "{fault:?}");
        assert_eq!(read(replayed).await.unwrap(), whole, "{fault:?}");
        assert_eq!(server.counters().requests, 2, "{fault:?}");
    }
}

fn openai(server: &MockServer) -> OpenAi {
    OpenAi::builder()
        .api_key("sk-test")
        .base_url(format!("{}/v1", server.base_url()))
        .build_with(HttpClientConfig::default().build().unwrap())
        .unwrap()
}

/// A caller that joins a stream in flight is replayed what it produced so far, then its end:
/// when that end is a cut, the joiner gets the error too, never a short answer.
#[tokio::test(start_paused = true)]
async fn a_late_joiner_of_a_stream_that_breaks_gets_its_error() {
    let server = MockServer::start(
        FaultPlan::healthy()
            .stream_chunk_delay(Duration::from_millis(100))
            .script([Some(Fault::CutStream { after_chunks: 2 })]),
    )
    .await
    .unwrap();
    let layer = StreamDedupLayer::<ChatChunk>::builder().build().unwrap();
    let service = layer.layer(openai(&server));
    let mut first = service.clone().oneshot(ask()).await.unwrap();
    first.next().await.unwrap().unwrap();
    let joiner = service.clone().oneshot(ask()).await.unwrap();
    assert!(!joiner.is_cached());
    let (first, joiner) = tokio::join!(read(first), read(joiner));
    assert!(first.is_err(), "{first:?}");
    assert!(joiner.is_err(), "{joiner:?}");
    assert_eq!(server.counters().requests, 1, "the joiner shared the call");
    assert_eq!(layer.handle().cached_entries(), 0);
}

/// A stream its only caller dropped before the end is cancelled upstream and kept nowhere;
/// one that ended with its terminal event but reported no usage is whole, and kept.
#[tokio::test(start_paused = true)]
async fn a_dropped_stream_is_not_kept_and_one_without_usage_is() {
    let server = MockServer::start(
        FaultPlan::healthy()
            .stream_chunk_delay(Duration::from_millis(100))
            .script([None, Some(Fault::StreamWithoutUsage)]),
    )
    .await
    .unwrap();
    let layer = StreamDedupLayer::<ChatChunk>::builder().build().unwrap();
    let service = layer.layer(openai(&server));
    let mut dropped = service.clone().oneshot(ask()).await.unwrap();
    dropped.next().await.unwrap().unwrap();
    drop(dropped);
    while server.counters().cancelled < 1 {
        tokio::task::yield_now().await;
    }
    assert_eq!(layer.handle().cached_entries(), 0);

    let again = service.clone().oneshot(ask()).await.unwrap();
    assert!(!again.is_cached());
    let whole = read(again).await.unwrap();
    assert!(
        !whole
            .iter()
            .any(|chunk| matches!(chunk, ChatChunk::Usage(_))),
        "{whole:?}"
    );
    assert!(
        matches!(whole.last(), Some(ChatChunk::Finish(_))),
        "{whole:?}"
    );
    let replayed = service.clone().oneshot(ask()).await.unwrap();
    assert!(replayed.is_cached());
    assert_eq!(read(replayed).await.unwrap(), whole);
    assert_eq!(server.counters().requests, 2);
}
