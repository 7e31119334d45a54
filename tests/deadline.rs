//! One deadline through the stack (issue 18): set once, outermost (core's `DeadlineLayer`), read
//! by every layer inside. Retry sleeps no wait that ends past it and hands a hint longer than
//! the time left straight back; the limiter queues no caller whose wait would pass it. Paused
//! clock, `service_fn` upstreams.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt, service_fn};
use tower_llm_core::{DeadlineLayer, FailureKind, RateLimited, UpstreamError, classify_dyn_error};
use tower_llm_ratelimit::RateLimitLayer;
use tower_llm_retry::{Backoff, RetryLayer};

/// An upstream that answers every call 429 with a retry hint of `hint`, counting its calls.
fn rate_limited(
    hint: Duration,
    calls: &Arc<AtomicUsize>,
) -> impl tower::Service<String, Response = String, Error = BoxError, Future: Send> + Clone + Send {
    let calls = Arc::clone(calls);
    service_fn(move |_: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let error =
                UpstreamError::new(FailureKind::RateLimited, "429").with_retry_after(Some(hint));
            Err::<String, BoxError>(error.into())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn retry_hands_back_a_hint_longer_than_the_time_left_at_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let retry = RetryLayer::builder()
        .max_attempts(5)
        .max_retry_after(Duration::from_secs(600))
        .build()
        .unwrap();
    let handle = retry.handle();
    let service = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(10)))
        .layer(retry)
        .service(rate_limited(Duration::from_secs(30), &calls));
    let started = Instant::now();
    let error = service.oneshot("hi".into()).await.unwrap_err();
    // No 30 s sleep inside a 10 s deadline: one attempt, the 429 back at once, hint and all.
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let failure = classify_dyn_error(&*error);
    assert_eq!(failure.kind, FailureKind::RateLimited, "{error}");
    assert_eq!(failure.retry_after, Some(Duration::from_secs(30)));
    assert_eq!(handle.stats().give_ups.past_deadline, 1);

    // Without a deadline the same retry waits the hint out.
    let calls = Arc::new(AtomicUsize::new(0));
    let retry = RetryLayer::builder()
        .max_attempts(2)
        .max_retry_after(Duration::from_secs(600))
        .build()
        .unwrap();
    let started = Instant::now();
    retry
        .layer(rate_limited(Duration::from_secs(30), &calls))
        .oneshot("hi".into())
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(started.elapsed() >= Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn retry_backs_off_within_the_deadline_and_never_past_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let retry = RetryLayer::builder()
        .max_attempts(100)
        .backoff(Backoff::exponential(Duration::from_secs(1)))
        .max_retry_after(Duration::from_secs(600))
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(20)))
        .layer(retry)
        .service(rate_limited(Duration::from_millis(1), &calls));
    let started = Instant::now();
    let error = service.oneshot("hi".into()).await.unwrap_err();
    assert!(
        started.elapsed() <= Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // It tried while a wait could end in time (backoffs 1, 2, 4, 8 s, jittered)...
    assert!(
        calls.load(Ordering::SeqCst) >= 3,
        "{}",
        calls.load(Ordering::SeqCst)
    );
    // ...and the caller got the upstream's failure, not a timeout.
    assert_eq!(classify_dyn_error(&*error).kind, FailureKind::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn a_caller_whose_wait_would_pass_its_deadline_is_refused_at_once() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let upstream = {
        let gate = Arc::clone(&gate);
        service_fn(move |request: String| {
            let gate = Arc::clone(&gate);
            async move {
                gate.acquire().await?.forget();
                Ok::<_, BoxError>(request)
            }
        })
    };
    let limiter = RateLimitLayer::builder()
        .concurrency(1)
        .min_spacing(Duration::from_secs(60))
        .max_wait(Duration::from_secs(600))
        .build()
        .unwrap();
    let service = limiter.layer(upstream);
    // The first call starts at once; the next may start 60 s later.
    let first = tokio::spawn(service.clone().oneshot("first".into()));
    tokio::task::yield_now().await;

    let hurried = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(10)))
        .service(service.clone());
    let started = Instant::now();
    let error = hurried.oneshot("hurried".into()).await.unwrap_err();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "refused at once, not at its deadline"
    );
    let limited = error
        .downcast_ref::<RateLimited>()
        .expect("a rate-limit refusal");
    assert!(limited.reason().contains("deadline"), "{limited}");
    assert!(limited.retry_after().unwrap() > Duration::from_secs(10));

    // A caller with time enough waits its turn.
    let patient = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(120)))
        .service(service);
    let waiting = tokio::spawn(patient.oneshot("patient".into()));
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().unwrap(), "first");
    assert_eq!(waiting.await.unwrap().unwrap(), "patient");
    assert_eq!(limiter.handle().stats().rejected, 1);
}
