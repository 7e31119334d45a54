//! The layer contract (docs/architecture.md): one layer value, one state, whichever stack its
//! services land in; a handle that reads and steers it after the stack is boxed; bad knobs are
//! a `ConfigError` naming the knob.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt, stream};
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_llm_core::BoxError;
use tower_llm_dedup::{DedupLayer, ReplayStream, StreamDedupLayer};

/// A prompt service, named so its answers show which stack's inner service made them, that
/// answers after a second of tokio time and counts its calls.
fn answerer(
    name: &'static str,
    calls: Arc<AtomicUsize>,
) -> impl Service<String, Response = String, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    service_fn(move |prompt: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(format!("{name}: {prompt}"))
        }
    })
}

type Boxed = BoxCloneService<String, String, BoxError>;

/// Two stacks built from one layer value, each over its own inner service, boxed.
fn two_stacks(layer: &DedupLayer<String>) -> (Boxed, Boxed, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (calls_a, calls_b) = (Arc::default(), Arc::default());
    let a = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(answerer("a", Arc::clone(&calls_a))),
    );
    let b = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(answerer("b", Arc::clone(&calls_b))),
    );
    (a, b, calls_a, calls_b)
}

#[tokio::test(start_paused = true)]
async fn two_stacks_from_one_layer_value_share_the_cache() {
    let layer = DedupLayer::new(Duration::from_secs(60));
    let handle = layer.handle();
    let (a, b, calls_a, calls_b) = two_stacks(&layer);
    drop(layer);

    assert_eq!(a.oneshot("q".to_string()).await.unwrap(), "a: q");
    // Stack B's inner service is never asked: stack A's answer is in the shared cache.
    assert_eq!(b.oneshot("q".to_string()).await.unwrap(), "a: q");
    assert_eq!(calls_a.load(Ordering::SeqCst), 1);
    assert_eq!(calls_b.load(Ordering::SeqCst), 0);
    let stats = handle.stats();
    assert_eq!((stats.requests, stats.misses, stats.hits), (2, 1, 1));
    assert_eq!(stats.inner_calls, 1);
    assert_eq!(handle.cached_entries(), 1);
}

#[tokio::test(start_paused = true)]
async fn two_stacks_from_one_layer_value_share_calls_in_flight() {
    let layer = DedupLayer::builder().no_cache().build().unwrap();
    let handle = layer.handle();
    let (a, b, calls_a, calls_b) = two_stacks(&layer);

    let started = tokio::time::Instant::now();
    let (from_a, from_b) = tokio::join!(a.oneshot("q".to_string()), async {
        // B asks while A's call is in flight: it joins that call.
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.oneshot("q".to_string()).await
    });
    assert_eq!(from_a.unwrap(), "a: q");
    assert_eq!(from_b.unwrap(), "a: q");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "B waited for A's call"
    );
    assert_eq!(calls_a.load(Ordering::SeqCst), 1);
    assert_eq!(calls_b.load(Ordering::SeqCst), 0);
    assert_eq!(handle.stats().coalesced, 1);
    assert_eq!(handle.cached_entries(), 0, "no cache");
}

#[tokio::test(start_paused = true)]
async fn another_layer_value_has_its_own_state() {
    let first = DedupLayer::new(Duration::from_secs(60));
    let second = DedupLayer::new(Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let a = ServiceBuilder::new()
        .layer(first.clone())
        .service(answerer("a", Arc::clone(&calls)));
    let b = ServiceBuilder::new()
        .layer(second.clone())
        .service(answerer("b", Arc::clone(&calls)));
    a.oneshot("q".to_string()).await.unwrap();
    assert_eq!(b.oneshot("q".to_string()).await.unwrap(), "b: q");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(first.handle().stats().misses, 1);
    assert_eq!(second.handle().stats().misses, 1);
    assert_eq!(first.handle().stats().hits, 0);
}

#[tokio::test(start_paused = true)]
async fn the_handle_clears_and_invalidates_after_the_stack_is_boxed() {
    let layer = DedupLayer::new(Duration::from_secs(60));
    let handle = layer.handle();
    let (a, b, calls_a, calls_b) = two_stacks(&layer);
    for prompt in ["p", "q"] {
        a.clone().oneshot(prompt.to_string()).await.unwrap();
    }
    assert_eq!(handle.cached_entries(), 2);

    // One key: "p" is asked again, "q" still comes from the cache.
    handle.invalidate(layer.request_key(&"p".to_string()).unwrap());
    assert_eq!(b.clone().oneshot("p".to_string()).await.unwrap(), "b: p");
    assert_eq!(b.clone().oneshot("q".to_string()).await.unwrap(), "a: q");
    assert_eq!(calls_b.load(Ordering::SeqCst), 1);

    // Everything: both are asked again, and stored again.
    handle.clear();
    assert_eq!(handle.cached_entries(), 0);
    assert_eq!(a.clone().oneshot("p".to_string()).await.unwrap(), "a: p");
    assert_eq!(a.clone().oneshot("q".to_string()).await.unwrap(), "a: q");
    assert_eq!(calls_a.load(Ordering::SeqCst), 4);
    assert_eq!(b.oneshot("q".to_string()).await.unwrap(), "a: q");
    assert_eq!(calls_b.load(Ordering::SeqCst), 1);
    let stats = handle.stats();
    assert_eq!((stats.misses, stats.hits), (5, 2));
}

/// A read served from the cache's hot front table right before `clear` is not served after.
#[tokio::test(start_paused = true)]
async fn a_clear_reaches_hot_entries() {
    let layer = DedupLayer::new(Duration::from_secs(60));
    let handle = layer.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(answerer("a", Arc::clone(&calls)));
    for _ in 0..10 {
        service.clone().oneshot("hot".to_string()).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    handle.clear();
    service.clone().oneshot("hot".to_string()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

type Chunks = std::pin::Pin<Box<dyn Stream<Item = Result<String, BoxError>> + Send>>;

fn streamer(
    name: &'static str,
    calls: Arc<AtomicUsize>,
) -> impl Service<String, Response = Chunks, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    service_fn(move |prompt: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let chunks: Chunks = Box::pin(stream::iter([
                Ok(name.to_string()),
                Ok::<_, BoxError>(prompt),
            ]));
            Ok::<_, BoxError>(chunks)
        }
    })
}

async fn collect(stream: ReplayStream<String>) -> Vec<String> {
    stream.map(|chunk| chunk.unwrap()).collect().await
}

#[tokio::test(start_paused = true)]
async fn the_stream_builder_builds_a_streaming_layer_shared_across_stacks() {
    // The builder's `build` makes the streaming layer (the type says so).
    let layer: StreamDedupLayer<String> = StreamDedupLayer::builder()
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (calls_a, calls_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = ServiceBuilder::new()
        .layer(layer.clone())
        .service(streamer("a", Arc::clone(&calls_a)));
    let b = ServiceBuilder::new()
        .layer(layer.clone())
        .service(streamer("b", Arc::clone(&calls_b)));
    assert_eq!(
        collect(a.oneshot("q".to_string()).await.unwrap()).await,
        ["a", "q"]
    );
    let replay = b.oneshot("q".to_string()).await.unwrap();
    assert!(replay.is_cached());
    assert_eq!(collect(replay).await, ["a", "q"]);
    assert_eq!(calls_b.load(Ordering::SeqCst), 0);
    let stats = handle.stats();
    assert_eq!((stats.requests, stats.misses, stats.hits), (2, 1, 1));
    handle.clear();
    assert_eq!(handle.cached_entries(), 0);
}

#[test]
fn bad_knobs_are_config_errors_naming_the_knob() {
    let error = DedupLayer::<String>::builder()
        .ttl(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!((error.component(), error.knob()), ("dedup", "ttl"));
    let error = StreamDedupLayer::<String>::builder()
        .max_entries(0)
        .build()
        .unwrap_err();
    assert_eq!((error.component(), error.knob()), ("dedup", "max_entries"));
    let error = StreamDedupLayer::<String>::builder()
        .time_to_idle(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(error.knob(), "time_to_idle");
}
