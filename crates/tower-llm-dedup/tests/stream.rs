//! Streaming responses: replay for late joiners, cached replay, errors mid-stream.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt, stream};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_llm_core::BoxError;
use tower_llm_dedup::{OnError, SharedError, StreamDedupLayer};

type Chunks = std::pin::Pin<Box<dyn Stream<Item = Result<String, BoxError>> + Send>>;

/// Streams `n` chunks, one per second of tokio time; fails after `fail_after` chunks if set.
fn streamer(
    calls: Arc<AtomicUsize>,
    n: usize,
    fail_after: Option<usize>,
) -> impl Service<String, Response = Chunks, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    service_fn(move |prompt: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let chunks: Chunks = Box::pin(stream::unfold(0usize, move |i| {
                let prompt = prompt.clone();
                async move {
                    if i == n {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if fail_after == Some(i) {
                        return Some((Err::<String, BoxError>("stream cut".into()), n));
                    }
                    Some((Ok(format!("{prompt}-{i}")), i + 1))
                }
            }));
            Ok::<_, BoxError>(chunks)
        }
    })
}

async fn collect(stream: tower_llm_dedup::ReplayStream<String>) -> Vec<Result<String, String>> {
    stream
        .map(|chunk| chunk.map_err(|e| e.to_string()))
        .collect()
        .await
}

fn expected(prompt: &str, n: usize) -> Vec<Result<String, String>> {
    (0..n).map(|i| Ok(format!("{prompt}-{i}"))).collect()
}

#[tokio::test(start_paused = true)]
async fn a_late_joiner_gets_every_chunk_in_order() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = StreamDedupLayer::builder().build().expect("valid");
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(streamer(calls.clone(), 5, None));
    let first = tokio::spawn({
        let service = service.clone();
        async move { collect(service.oneshot("p".to_string()).await.expect("ok")).await }
    });
    // Join after three chunks were produced.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let late = service.clone().oneshot("p".to_string()).await.expect("ok");
    assert!(!late.is_cached());
    let late = collect(late).await;
    assert_eq!(late, expected("p", 5));
    assert_eq!(first.await.expect("no panic"), expected("p", 5));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(handle.stats().coalesced, 1);
}

#[tokio::test(start_paused = true)]
async fn a_cached_stream_replays_chunk_by_chunk() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(StreamDedupLayer::builder().build().expect("valid"))
        .service(streamer(calls.clone(), 3, None));
    let live = service.clone().oneshot("p".to_string()).await.expect("ok");
    assert_eq!(collect(live).await, expected("p", 3));
    let mut cached = service.clone().oneshot("p".to_string()).await.expect("ok");
    assert!(cached.is_cached());
    assert_eq!(
        cached.next().await.map(|c| c.expect("ok")),
        Some("p-0".to_string())
    );
    assert_eq!(
        cached.next().await.map(|c| c.expect("ok")),
        Some("p-1".to_string())
    );
    assert_eq!(
        cached.next().await.map(|c| c.expect("ok")),
        Some("p-2".to_string())
    );
    assert!(cached.next().await.is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_error_mid_stream_reaches_everyone_and_nothing_is_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(StreamDedupLayer::builder().build().expect("valid"))
        .service(streamer(calls.clone(), 4, Some(2)));
    let subscribers: Vec<_> = (0..3)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                collect(service.oneshot("p".to_string()).await.expect("head ok")).await
            })
        })
        .collect();
    for subscriber in subscribers {
        let chunks = subscriber.await.expect("no panic");
        assert_eq!(chunks.len(), 3, "{chunks:?}");
        assert_eq!(chunks[..2], expected("p", 2)[..]);
        let error = chunks[2].as_ref().expect_err("the cut");
        assert!(error.contains("stream cut"), "{error}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let again = service.clone().oneshot("p".to_string()).await.expect("ok");
    assert!(!again.is_cached(), "a failed stream is not cached");
    drop(again);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// With `OnError::OwnCall` a stream past its head cannot be restarted, so the joiners get the
/// shared error; it must be the real one (what was cut and why), not a bare marker.
#[tokio::test(start_paused = true)]
async fn own_call_mode_shares_the_real_error_mid_stream() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(
            StreamDedupLayer::builder()
                .on_error(OnError::OwnCall)
                .build()
                .expect("valid"),
        )
        .service(streamer(calls.clone(), 4, Some(2)));
    let subscribers: Vec<_> = (0..3)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                collect(service.oneshot("p".to_string()).await.expect("head ok")).await
            })
        })
        .collect();
    for subscriber in subscribers {
        let chunks = subscriber.await.expect("no panic");
        assert_eq!(chunks.len(), 3, "{chunks:?}");
        assert_eq!(chunks[..2], expected("p", 2)[..]);
        let error = chunks[2].as_ref().expect_err("the cut");
        assert!(error.contains("stream cut"), "{error}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no own call after the head"
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_before_the_head_is_the_future_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let layer = StreamDedupLayer::builder()
        .on_error(OnError::Share)
        .build()
        .expect("valid");
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |_: String| {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Err::<Chunks, BoxError>("refused".into())
            }
        }));
    let (a, b) = tokio::join!(
        service.clone().oneshot("p".to_string()),
        service.clone().oneshot("p".to_string())
    );
    for result in [a, b] {
        let error = result.expect_err("refused");
        assert!(error.downcast_ref::<SharedError>().is_some());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_subscriber_cancels_the_stream() {
    let calls = Arc::new(AtomicUsize::new(0));
    let produced = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let seen = produced.clone();
    let service = ServiceBuilder::new()
        .layer(StreamDedupLayer::builder().build().expect("valid"))
        .service(service_fn(move |_: String| {
            counted.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            async move {
                let chunks: Chunks = Box::pin(stream::unfold(0usize, move |i| {
                    let seen = seen.clone();
                    async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        seen.fetch_add(1, Ordering::SeqCst);
                        Some((Ok::<_, BoxError>(i.to_string()), i + 1))
                    }
                }));
                Ok::<_, BoxError>(chunks)
            }
        }));
    let mut a = service.clone().oneshot("p".to_string()).await.expect("ok");
    let mut b = service.clone().oneshot("p".to_string()).await.expect("ok");
    assert_eq!(
        a.next().await.map(|c| c.expect("ok")),
        Some("0".to_string())
    );
    assert_eq!(
        b.next().await.map(|c| c.expect("ok")),
        Some("0".to_string())
    );
    drop(a);
    assert_eq!(
        b.next().await.map(|c| c.expect("ok")),
        Some("1".to_string())
    );
    drop(b);
    let before = produced.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        produced.load(Ordering::SeqCst),
        before,
        "the stream stopped"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn own_call_mode_restarts_streams_that_failed_before_their_head() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = StreamDedupLayer::builder()
        .on_error(OnError::OwnCall)
        .build()
        .expect("valid");
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(fails_first(calls.clone()));
    let leader = tokio::spawn(service.clone().oneshot("p".to_string()));
    tokio::task::yield_now().await;
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                collect(service.oneshot("p".to_string()).await.expect("own call")).await
            })
        })
        .collect();
    let error = leader
        .await
        .expect("no panic")
        .expect_err("the leader's call failed");
    assert_eq!(error.to_string(), "refused");
    for waiter in waiters {
        assert_eq!(waiter.await.expect("no panic"), expected("p", 1));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Refuses its first call before any chunk, then streams one chunk.
fn fails_first(
    calls: Arc<AtomicUsize>,
) -> impl Service<String, Response = Chunks, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    service_fn(move |prompt: String| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if n == 0 {
                return Err::<Chunks, BoxError>("refused".into());
            }
            let chunks: Chunks = Box::pin(stream::iter(vec![Ok(format!("{prompt}-0"))]));
            Ok(chunks)
        }
    })
}
