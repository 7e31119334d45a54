//! A streamed call ends when its stream ends: the limiter holds its concurrency slot and its
//! token reservation until then, reconciles with the usage the stream reported, and charges
//! the whole reservation for a stream that ended without one. Typed providers over the
//! testkit's mock (real HTTP on loopback), in paused time.

#![allow(clippy::unwrap_used)]

mod typed;

use std::time::Duration;

use futures_util::StreamExt;
use tower::{Service, ServiceExt};
use tower_layer::Layer;
use tower_llm_core::BoxError;
use tower_llm_providers::{ChatChunk, ChatRequest, Message, Streaming};
use tower_llm_ratelimit::{Quota, RateLimitLayer, Reconcile};
use tower_llm_testkit::{Fault, FaultPlan, MockServer, Quota as MockQuota, StreamError};
use typed::{anthropic, openai};

fn ask(i: usize) -> ChatRequest {
    ChatRequest::new("m", vec![Message::user(format!("question {i}"))]).max_tokens(200)
}

/// Starts a streamed call of the first question through `service`.
async fn start<S>(service: &mut S) -> S::Response
where
    S: Service<Streaming<ChatRequest>, Error = BoxError>,
{
    ServiceExt::<Streaming<ChatRequest>>::ready(service)
        .await
        .unwrap()
        .call(ask(0).streaming())
        .await
        .unwrap()
}

/// Streams one answer to its end through `service`; the items it saw, errors as text.
async fn stream_to_end<S>(mut service: S, request: ChatRequest) -> Result<Vec<String>, BoxError>
where
    S: Service<Streaming<ChatRequest>, Error = BoxError>,
    S::Response: futures_util::Stream<Item = Result<ChatChunk, tower_llm_providers::Error>> + Unpin,
{
    let mut stream = service.ready().await?.call(request.streaming()).await?;
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(match item {
            Ok(chunk) => format!("{chunk:?}"),
            Err(error) => format!("error: {error}"),
        });
    }
    Ok(items)
}

/// One limiter value, a whole-answer stack and a streaming stack: with `concurrency = 1`, the
/// upstream never has two calls at once, streams included (before, streams peaked at 4).
#[tokio::test(start_paused = true)]
async fn concurrency_one_holds_for_the_whole_stream_across_stacks() {
    let server =
        MockServer::start(FaultPlan::healthy().stream_chunk_delay(Duration::from_millis(200)))
            .await
            .unwrap();
    let layer = RateLimitLayer::builder()
        .concurrency(1)
        .max_wait(Duration::from_secs(600))
        .build()
        .unwrap();
    let streaming = layer.layer(openai(&server));
    let whole = layer.layer(openai(&server));
    let mut calls = Vec::new();
    for i in 0..4 {
        calls.push(tokio::spawn(stream_to_end(streaming.clone(), ask(i))));
    }
    let wholes: Vec<_> = (0..2)
        .map(|i| tokio::spawn(whole.clone().oneshot(ask(10 + i))))
        .collect();
    for call in calls {
        let items = call.await.unwrap().unwrap();
        assert!(
            items.iter().all(|item| !item.starts_with("error")),
            "{items:?}"
        );
    }
    for call in wholes {
        call.await.unwrap().unwrap();
    }
    let counters = server.counters();
    assert_eq!(counters.requests, 6);
    assert_eq!(counters.max_concurrent, 1, "{counters:?}");
    assert_eq!(layer.handle().stats().admitted, 6);
}

/// Anthropic counts tokens as produced: a stream's unused reservation comes back when the
/// stream ends with its usage, not before.
#[tokio::test(start_paused = true)]
async fn a_streamed_usage_is_reconciled_at_the_end() {
    let server =
        MockServer::start(FaultPlan::healthy().stream_chunk_delay(Duration::from_millis(100)))
            .await
            .unwrap();
    let layer = RateLimitLayer::builder()
        .tokens(Quota::per_minute(100_000))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(anthropic(&server));
    let mut stream = start(&mut service).await;
    stream.next().await.unwrap().unwrap();
    assert_eq!(
        handle.stats().tokens_refunded,
        0,
        "nothing settled mid-stream"
    );
    while stream.next().await.is_some() {}
    let usage = stream
        .usage()
        .expect("the stream reported its usage")
        .total();
    let stats = handle.stats();
    assert_eq!(
        stats.tokens_refunded,
        stats.tokens_reserved - usage,
        "{stats:?}"
    );
}

/// A stream that ends without its usage (cut, failed, dropped, stalled) is charged its whole
/// reservation and frees its slot.
#[tokio::test(start_paused = true)]
async fn a_stream_without_usage_is_charged_its_reservation() {
    for fault in [
        Fault::CutStream { after_chunks: 1 },
        Fault::StreamErrorEvent {
            after_chunks: 1,
            error: StreamError::Overloaded,
        },
        Fault::StallStream { after_chunks: 1 },
    ] {
        let server = MockServer::start(FaultPlan::healthy().script([Some(fault.clone())]))
            .await
            .unwrap();
        let layer = RateLimitLayer::builder()
            .concurrency(1)
            .tokens(Quota::per_minute(100_000))
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = layer.layer(anthropic(&server));
        let items = stream_to_end(service.clone(), ask(0)).await.unwrap();
        assert!(
            items.last().unwrap().starts_with("error"),
            "{fault:?}: {items:?}"
        );
        let stats = handle.stats();
        assert!(stats.tokens_reserved > 0, "{fault:?}: {stats:?}");
        assert_eq!(stats.tokens_refunded, 0, "{fault:?}: {stats:?}");
        // The slot is free: the next call goes at once and is answered in full.
        let items = stream_to_end(service, ask(1)).await.unwrap();
        assert!(
            items.iter().all(|item| !item.starts_with("error")),
            "{fault:?}: {items:?}"
        );
        assert_eq!(handle.stats().waited, 0, "{fault:?}");
    }

    // Dropped by the caller after its first chunk.
    let server =
        MockServer::start(FaultPlan::healthy().stream_chunk_delay(Duration::from_millis(100)))
            .await
            .unwrap();
    let layer = RateLimitLayer::builder()
        .concurrency(1)
        .tokens(Quota::per_minute(100_000))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(anthropic(&server));
    let mut stream = start(&mut service).await;
    stream.next().await.unwrap().unwrap();
    // While the stream is open it holds the only slot: a second call waits for it.
    let second = tokio::spawn(stream_to_end(service.clone(), ask(1)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(handle.stats().waiting, 1, "{:?}", handle.stats());
    drop(stream);
    // Nothing given back for the dropped stream (read before the second call, which runs
    // on this thread only once the test awaits, can be reconciled).
    assert_eq!(handle.stats().tokens_refunded, 0, "{:?}", handle.stats());
    let items = second.await.unwrap().unwrap();
    assert!(items.iter().all(|item| !item.starts_with("error")));
    assert_eq!(handle.stats().waited, 1, "{:?}", handle.stats());
}

/// A token budget charged by the usage the streams report keeps an OpenAI-style counter at
/// zero 429s, where the reservations alone would not.
///
/// The requests name no `max_tokens`, so both sides count an assumed 1024 output tokens at
/// admission, and the answers are long (about 2,100 output tokens): the mock's quota, like a
/// provider's, also counts what each answer used beyond its admission cost, which a client
/// learns only from the usage chunk at the end of the stream. A limiter that charges that
/// usage (`ChargeOnly`, what it does for OpenAI) meets no 429; the same traffic through a
/// limiter that does not read usage (`Reconcile::Off`: as if the stream's usage never
/// reached it) holds only its reservations, about half of what the mock counts, and is
/// refused.
#[tokio::test(start_paused = true)]
async fn a_token_budget_charged_by_streamed_usage_meets_no_429() {
    const TOKENS_PER_MINUTE: u64 = 10_000;
    const CALLS: usize = 12;
    // 500 words of 17 characters: about 2,125 tokens by core's estimate.
    let long_answer = "abcdefghijklmnop ".repeat(500);
    for reads_usage in [true, false] {
        let plan = FaultPlan::healthy()
            .quota(MockQuota::new(10_000, TOKENS_PER_MINUTE))
            .reply(long_answer.clone());
        let server = MockServer::start(plan).await.unwrap();
        let reconcile = if reads_usage {
            Reconcile::FollowProvider
        } else {
            Reconcile::Off
        };
        let layer = RateLimitLayer::builder()
            .tokens(Quota::per_minute(TOKENS_PER_MINUTE))
            .reconcile(reconcile)
            .max_wait(Duration::from_secs(3600))
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = layer.layer(openai(&server));
        let mut used = 0;
        // One call at a time, each read to its end: what is proven here is the charge of
        // the streamed usage, before the next call is admitted.
        for i in 0..CALLS {
            let request = ChatRequest::new("m", vec![Message::user(format!("question {i}"))]);
            let Ok(mut stream) = service.clone().oneshot(request.streaming()).await else {
                continue;
            };
            while let Some(item) = stream.next().await {
                if let Ok(ChatChunk::Usage(usage)) = item {
                    used += usage.total();
                }
            }
        }
        let refused = server.counters().status(429);
        let stats = handle.stats();
        if !reads_usage {
            assert!(refused > 0, "the reservations alone: {stats:?}");
            continue;
        }
        assert_eq!(refused, 0, "{stats:?}");
        assert_eq!(server.counters().requests, CALLS as u64);
        // The streams used more than they reserved: the rest was charged at their ends.
        assert!(used > stats.tokens_reserved, "{used} {stats:?}");
        assert!(stats.tokens_charged > 0, "{stats:?}");
        assert_eq!(
            stats.tokens_reserved + stats.tokens_charged,
            used,
            "{stats:?}"
        );
        assert_eq!(stats.tokens_refunded, 0, "{stats:?}");
    }
}

/// A stream that reaches its terminal event without reporting usage (a compatible server that
/// ignores `stream_options.include_usage`) is a success with nothing to reconcile: its whole
/// reservation stays charged, never refunded on a guess. The same stream with its usage is
/// refunded what it did not use, so the refund is really withheld, not merely absent.
#[tokio::test(start_paused = true)]
async fn a_stream_completed_without_usage_keeps_its_whole_reservation() {
    for with_usage in [true, false] {
        let fault = (!with_usage).then_some(Fault::StreamWithoutUsage);
        let server = MockServer::start(FaultPlan::healthy().script([fault.clone(), fault]))
            .await
            .unwrap();
        // Anthropic counts tokens as produced (refunds follow usage); OpenAI is told to.
        let layer = RateLimitLayer::builder()
            .tokens(Quota::per_minute(100_000))
            .build()
            .unwrap();
        let openai_layer = RateLimitLayer::builder()
            .tokens(Quota::per_minute(100_000))
            .reconcile(Reconcile::RefundAndCharge)
            .build()
            .unwrap();
        let items = stream_to_end(layer.layer(anthropic(&server)), ask(0))
            .await
            .unwrap();
        let openai_items = stream_to_end(openai_layer.layer(openai(&server)), ask(1))
            .await
            .unwrap();
        for (items, handle) in [
            (items, layer.handle()),
            (openai_items, openai_layer.handle()),
        ] {
            assert!(
                items.iter().all(|item| !item.starts_with("error")),
                "{items:?}"
            );
            assert!(
                items.iter().any(|item| item.starts_with("Finish")),
                "{items:?}"
            );
            assert_eq!(
                items.iter().any(|item| item.starts_with("Usage")),
                with_usage,
                "{items:?}"
            );
            let stats = handle.stats();
            assert!(stats.tokens_reserved > 0, "{stats:?}");
            assert_eq!(stats.tokens_charged, 0, "{stats:?}");
            if with_usage {
                assert!(stats.tokens_refunded > 0, "{stats:?}");
            } else {
                assert_eq!(stats.tokens_refunded, 0, "{stats:?}");
            }
        }
    }
}

/// A rate-limit error inside a stream pauses the key like a 429 answer; an overload or a
/// client error inside a stream does not.
#[tokio::test(start_paused = true)]
async fn a_rate_limit_error_inside_a_stream_pauses_the_key() {
    for (error, pauses) in [
        (StreamError::RateLimited, 1),
        (StreamError::Overloaded, 0),
        (StreamError::InvalidRequest, 0),
    ] {
        let fault = Fault::StreamErrorEvent {
            after_chunks: 1,
            error,
        };
        let server = MockServer::start(FaultPlan::healthy().script([Some(fault)]))
            .await
            .unwrap();
        let layer = RateLimitLayer::builder().concurrency(4).build().unwrap();
        let handle = layer.handle();
        let service = layer.layer(anthropic(&server));
        let items = stream_to_end(service.clone(), ask(0)).await.unwrap();
        assert!(
            items.last().unwrap().starts_with("error"),
            "{error:?}: {items:?}"
        );
        let stats = handle.stats();
        assert_eq!(stats.pauses, pauses, "{error:?}: {stats:?}");
        // The next call waits out the pause, and only then reaches the upstream.
        let items = stream_to_end(service, ask(1)).await.unwrap();
        assert!(
            items.iter().all(|item| !item.starts_with("error")),
            "{error:?}: {items:?}"
        );
        assert_eq!(handle.stats().waited, pauses, "{error:?}");
        assert_eq!(server.counters().requests, 2, "{error:?}");
    }
}
