//! One deadline through the stack (issue 18): set once, outermost (core's `DeadlineLayer`), read
//! by every layer inside. Retry sleeps no wait that ends past it and hands a hint longer than
//! the time left straight back; the limiter queues no caller whose wait would pass it; fallback
//! moves on rather than wait, and starts no service past it; hedge fires no leg past it; at
//! the deadline the error says so and lists what was tried. Paused clock, `service_fn`
//! upstreams.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt, service_fn};
use tower_llm_core::{DeadlineLayer, FailureKind, RateLimited, UpstreamError, classify_dyn_error};
use tower_llm_race::{AllFailed, FallbackLayer, HedgeLayer, hedge::HedgeDelay};
use tower_llm_ratelimit::RateLimitLayer;
use tower_llm_retry::{Backoff, GiveUpReason, Jitter, RetryLayer};

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

/// What a scripted provider does with every call.
#[derive(Clone, Copy)]
enum Script {
    /// 429 at once, with this retry hint.
    RateLimited(Duration),
    /// Answers after this long.
    Answer(Duration),
    /// Fails 503 after this long.
    Fail(Duration),
}

/// Counts calls started and calls running (a call dropped unfinished stops running), and
/// when each started.
#[derive(Default)]
struct Ledger {
    running: AtomicUsize,
    starts: std::sync::Mutex<Vec<Duration>>,
}

struct Running(Arc<Ledger>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

fn provider(
    script: Script,
    ledger: &Arc<Ledger>,
    origin: Instant,
) -> impl tower::Service<String, Response = String, Error = BoxError, Future: Send> + Clone + Send {
    let ledger = Arc::clone(ledger);
    service_fn(move |_: String| {
        ledger.running.fetch_add(1, Ordering::SeqCst);
        ledger.starts.lock().unwrap().push(origin.elapsed());
        let running = Running(Arc::clone(&ledger));
        async move {
            let _running = running;
            match script {
                Script::RateLimited(hint) => {
                    Err(UpstreamError::new(FailureKind::RateLimited, "429")
                        .with_retry_after(Some(hint))
                        .into())
                }
                Script::Answer(latency) => {
                    tokio::time::sleep(latency).await;
                    Ok("answer".to_string())
                }
                Script::Fail(latency) => {
                    tokio::time::sleep(latency).await;
                    Err(UpstreamError::new(FailureKind::Overloaded, "503").into())
                }
            }
        }
    })
}

fn retry(attempts: usize) -> RetryLayer {
    RetryLayer::builder()
        .max_attempts(attempts)
        .max_retry_after(Duration::from_secs(600))
        .backoff(Backoff::fixed(Duration::from_secs(1)))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_hint_past_the_deadline_sends_fallback_to_the_second_provider_in_time() {
    let origin = Instant::now();
    let (first, second) = (Arc::new(Ledger::default()), Arc::new(Ledger::default()));
    let retry_first = retry(3);
    let retries = retry_first.handle();
    let fallback = FallbackLayer::new().layer(vec![
        retry_first.layer(provider(
            Script::RateLimited(Duration::from_secs(30)),
            &first,
            origin,
        )),
        retry(3).layer(provider(
            Script::Answer(Duration::from_secs(1)),
            &second,
            origin,
        )),
    ]);
    let service = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(10)))
        .service(fallback.clone());
    let answer = service.oneshot("hi".into()).await.unwrap();
    assert_eq!(answer, "answer");
    // The first provider's 429 asked for 30 s, more than the 10 s left: its retry handed it
    // back at once, the fallback moved on, and the second answered at 1 s.
    assert_eq!(origin.elapsed(), Duration::from_secs(1));
    assert_eq!(first.starts.lock().unwrap().len(), 1);
    assert_eq!(second.starts.lock().unwrap().len(), 1);
    assert_eq!(retries.stats().give_ups.get(GiveUpReason::PastDeadline), 1);

    // Without a deadline the same stack waits the hint out twice before moving on.
    let started = Instant::now();
    assert_eq!(fallback.oneshot("hi".into()).await.unwrap(), "answer");
    assert_eq!(started.elapsed(), Duration::from_secs(61));
}

#[tokio::test(start_paused = true)]
async fn retry_fallback_and_hedge_never_run_past_the_deadline() {
    let origin = Instant::now();
    let ledger = Arc::new(Ledger::default());
    let a = provider(Script::Fail(Duration::from_secs(3)), &ledger, origin);
    let b = provider(Script::Fail(Duration::from_secs(5)), &ledger, origin);
    let hedge = || {
        HedgeLayer::builder()
            .delay(HedgeDelay::Fixed(Duration::from_secs(2)))
            .max_extra_attempts(1)
            .unlimited_budget()
            .build()
            .unwrap()
    };
    let fallback = FallbackLayer::new().name("chain");
    let fallback_handle = fallback.handle();
    let service = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(10)))
        .layer(retry(5))
        .service(fallback.layer(vec![
            hedge().layer(vec![a.clone(), b.clone()]),
            hedge().layer(vec![b, a]),
        ]));
    let error = service.oneshot("hi".into()).await.unwrap_err();

    // 0 s: A; 2 s: hedge to B; 3 s: A fails; 7 s: B fails, the fallback moves on;
    // 7 s: B; 9 s: hedge to A; 10 s: the deadline, both cut. No retry: no time left.
    assert_eq!(origin.elapsed(), Duration::from_secs(10));
    let starts = ledger.starts.lock().unwrap().clone();
    assert_eq!(
        starts,
        [0, 2, 7, 9].map(Duration::from_secs).to_vec(),
        "every call started before the deadline"
    );
    assert_eq!(
        ledger.running.load(Ordering::SeqCst),
        0,
        "nothing runs past it"
    );

    // The error is the fallback's, at the deadline, with what was tried.
    let all_failed = error
        .downcast_ref::<AllFailed>()
        .expect("the chain's error");
    assert!(all_failed.is_at_deadline(), "{all_failed}");
    let kinds: Vec<_> = all_failed.failures().iter().map(|f| f.kind()).collect();
    assert_eq!(kinds, [FailureKind::Overloaded, FailureKind::Timeout]);
    let text = error.to_string();
    assert!(
        text.starts_with("the call's deadline passed with 2 of 2 services tried"),
        "{text}"
    );
    let inner = all_failed.failures()[1].error().unwrap().to_string();
    assert!(
        inner.contains("deadline passed with 2 of 2"),
        "the hedge lists its two legs: {inner}"
    );
    assert_eq!(classify_dyn_error(&*error).kind, FailureKind::Timeout);
    assert_eq!(fallback_handle.stats().ended_at_deadline, 1);
}

#[tokio::test(start_paused = true)]
async fn hedge_arms_no_leg_that_would_start_at_the_deadline() {
    let origin = Instant::now();
    let ledger = Arc::new(Ledger::default());
    let slow = provider(Script::Answer(Duration::from_secs(60)), &ledger, origin);
    let hedge = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(Duration::from_secs(5)))
        .unlimited_budget()
        .build()
        .unwrap();
    let handle = hedge.handle();
    let service = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(5)))
        .service(hedge.layer(vec![slow.clone(), slow]));
    let error = service.oneshot("hi".into()).await.unwrap_err();
    assert_eq!(origin.elapsed(), Duration::from_secs(5));
    assert_eq!(
        ledger.starts.lock().unwrap().len(),
        1,
        "no hedge at the deadline"
    );
    assert_eq!(handle.stats().hedges, 0);
    assert_eq!(handle.stats().ended_at_deadline, 1);
    assert_eq!(ledger.running.load(Ordering::SeqCst), 0);
    let all_failed = error
        .downcast_ref::<AllFailed>()
        .expect("the hedge's error");
    assert!(all_failed.is_at_deadline());
    assert_eq!(all_failed.failures()[0].kind(), FailureKind::Timeout);
}

#[tokio::test(start_paused = true)]
async fn a_gather_timeout_is_cut_to_the_time_left() {
    use tower_llm_race::GatherLayer;

    let origin = Instant::now();
    let ledger = Arc::new(Ledger::default());
    let quick = provider(Script::Answer(Duration::from_secs(1)), &ledger, origin);
    let slow = provider(Script::Answer(Duration::from_secs(60)), &ledger, origin);
    let gather = GatherLayer::new()
        .timeout(Duration::from_secs(30))
        .layer(vec![quick, slow]);
    let service = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(5)))
        .service(gather);
    // The gather's own 30 s are cut to the 5 s left: it answers with what it has at 5 s
    // rather than be cut off by the deadline with nothing.
    let gathered = service.oneshot("hi".into()).await.unwrap();
    assert_eq!(origin.elapsed(), Duration::from_secs(5));
    assert_eq!(gathered.successes().count(), 1);
    assert_eq!(ledger.running.load(Ordering::SeqCst), 0);
}
