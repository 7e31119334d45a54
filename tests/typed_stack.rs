//! Typed provider requests and responses go through dedup's default key source and the rate
//! limiter with no glue: the traits those layers read (`CacheControl`, `RateLimitHeaders`)
//! live in core, and providers implement them.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_llm_dedup::DedupLayer;
use tower_llm_providers::{ChatRequest, ChatResponse, Message};
use tower_llm_ratelimit::{Quota, RateLimitLayer};

#[tokio::test(start_paused = true)]
async fn typed_requests_dedup_and_rate_limit_without_glue() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let calls = calls.clone();
        service_fn(move |request: ChatRequest| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(ChatResponse::new("hi").with_model(request.model)) }
        })
    };
    let stack = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .layer(RateLimitLayer::new(
            Quota::per_minute(60),
            Quota::per_minute(100_000),
        ))
        .service(upstream);

    // Temperature 0: deterministic, so the second identical request is served from the cache.
    let ask = || ChatRequest::new("m", vec![Message::user("hello")]).temperature(0.0);
    let first = stack.clone().oneshot(ask()).await.unwrap();
    let second = stack.clone().oneshot(ask()).await.unwrap();
    assert_eq!(first.content, "hi");
    assert_eq!(second, first);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A sampled request is not cached: it makes its own call.
    let sampled = ChatRequest::new("m", vec![Message::user("hello")]).temperature(0.9);
    stack.clone().oneshot(sampled).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
