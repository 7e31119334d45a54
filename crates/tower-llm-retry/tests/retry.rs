//! Behaviour of the retry layer over `service_fn` upstreams, in tokio's paused time.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_core::{
    BoxError, CircuitOpen, DefaultClassifier, FailureKind, Outcome, UpstreamError,
};
use tower_llm_retry::{
    Attempts, AttemptsExtension, Backoff, GiveUpReason, Jitter, RetryBudget, RetryDecision,
    RetryEvent, RetryLayer, StatsOnly,
};

type Response = http::Response<()>;
type Step = Result<Response, BoxError>;

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn status(code: u16) -> Step {
    Ok(http::Response::builder().status(code).body(()).unwrap())
}

fn hinted(code: u16, retry_after: &str) -> Step {
    Ok(http::Response::builder()
        .status(code)
        .header("retry-after", retry_after)
        .body(())
        .unwrap())
}

fn upstream_error(kind: FailureKind) -> Step {
    Err(Box::new(UpstreamError::new(kind, "scripted")))
}

/// An upstream that answers the scripted steps in order, then 200, and records when each
/// call arrived (in virtual time).
#[derive(Clone, Default)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Step>>>,
    calls: Arc<Mutex<Vec<Instant>>>,
    then: Option<u16>,
}

impl Upstream {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Upstream {
            script: Arc::new(Mutex::new(steps.into_iter().collect())),
            ..Default::default()
        }
    }

    /// Answers `code` for ever.
    fn always(code: u16) -> Self {
        Upstream {
            then: Some(code),
            ..Default::default()
        }
    }

    fn service(
        &self,
    ) -> impl Service<u32, Response = Response, Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let this = self.clone();
        service_fn(move |_prompt: u32| {
            this.calls.lock().unwrap().push(Instant::now());
            let step = this
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| status(this.then.unwrap_or(200)));
            async move { step }
        })
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// The waits between consecutive calls.
    fn gaps(&self) -> Vec<Duration> {
        let calls = self.calls.lock().unwrap();
        calls.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

fn layer() -> tower_llm_retry::RetryBuilder<DefaultClassifier, AttemptsExtension> {
    RetryLayer::builder()
        .no_budget()
        .seed(42)
        .record_attempts(AttemptsExtension::when_retried())
}

async fn call<S>(service: &mut S) -> Result<Response, BoxError>
where
    S: Service<u32, Response = Response, Error = BoxError>,
{
    service.ready().await?.call(1).await
}

#[tokio::test(start_paused = true)]
async fn recovers_after_transient_failures() {
    let upstream = Upstream::new([status(503), status(529), status(200)]);
    let retry = layer()
        .backoff(Backoff::fixed(ms(10)))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let mut service = retry.layer(upstream.service());
    let response = call(&mut service).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(Attempts::of(&response), Attempts::new(3));
    assert_eq!(upstream.calls(), 3);
    let stats = retry.handle().stats();
    assert_eq!((stats.requests, stats.retries, stats.recovered), (1, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_response() {
    let upstream = Upstream::always(503);
    let retry = layer().max_attempts(4).build().unwrap();
    let mut service = retry.layer(upstream.service());
    let response = call(&mut service).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(Attempts::of(&response).get(), 4);
    assert_eq!(upstream.calls(), 4);
    assert_eq!(
        retry
            .handle()
            .stats()
            .give_ups
            .get(GiveUpReason::AttemptsExhausted),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn one_attempt_means_no_retry() {
    let upstream = Upstream::always(503);
    let mut service = layer()
        .max_attempts(1)
        .build()
        .unwrap()
        .layer(upstream.service());
    assert_eq!(call(&mut service).await.unwrap().status(), 503);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn fixed_linear_and_exponential_without_jitter_wait_exactly() {
    for (backoff, expected) in [
        (Backoff::fixed(ms(300)), [300, 300, 300, 300]),
        (Backoff::linear(ms(100), ms(50)), [100, 150, 200, 250]),
        (Backoff::exponential(ms(100)), [100, 200, 400, 500]),
        // Capped at max_delay.
        (
            Backoff::Exponential {
                initial: ms(100),
                multiplier: 3.0,
            },
            [100, 300, 500, 500],
        ),
    ] {
        let upstream = Upstream::always(500);
        let mut service = layer()
            .max_attempts(5)
            .backoff(backoff)
            .jitter(Jitter::None)
            .max_delay(ms(500))
            .build()
            .unwrap()
            .layer(upstream.service());
        call(&mut service).await.unwrap();
        let expected: Vec<Duration> = expected.iter().map(|&n| ms(n)).collect();
        assert_eq!(upstream.gaps(), expected, "{backoff:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_stay_within_their_bounds() {
    // tokio's timer fires on the next whole millisecond.
    let tick = ms(1);
    let base = [100u64, 200, 400, 800, 1600, 2000, 2000];
    for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
        for seed in 0..20 {
            let upstream = Upstream::always(503);
            let mut service = layer()
                .seed(seed)
                .max_attempts(8)
                .backoff(Backoff::exponential(ms(100)))
                .jitter(jitter)
                .max_delay(ms(2000))
                .build()
                .unwrap()
                .layer(upstream.service());
            call(&mut service).await.unwrap();
            let gaps = upstream.gaps();
            assert_eq!(gaps.len(), 7);
            let mut previous = ms(100);
            for (gap, base) in gaps.iter().zip(base.map(ms)) {
                let (low, high) = match jitter {
                    Jitter::Full => (Duration::ZERO, base),
                    Jitter::Equal => (base / 2, base),
                    _ => (ms(100), (previous * 3).min(ms(2000))),
                };
                assert!(
                    *gap >= low && *gap <= high + tick,
                    "{jitter:?} seed {seed}: {gap:?} outside [{low:?}, {high:?}]"
                );
                previous = *gap;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_concurrent_callers() {
    let upstream = Upstream::new([status(503), status(503)]);
    let retry = layer()
        .backoff(Backoff::fixed(ms(1000)))
        .jitter(Jitter::Full)
        .build()
        .unwrap();
    let mut a = retry.layer(upstream.service());
    let mut b = retry.layer(upstream.service());
    let (ra, rb) = tokio::join!(call(&mut a), call(&mut b));
    assert_eq!(ra.unwrap().status(), 200);
    assert_eq!(rb.unwrap().status(), 200);
    let calls = upstream.calls.lock().unwrap().clone();
    // Two failures at t=0, then two retries at distinct jittered times.
    assert_eq!(calls.len(), 4);
    assert_ne!(
        calls[2], calls[3],
        "both callers retried at the same instant"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_waits_for_the_hint_not_the_backoff() {
    let upstream = Upstream::new([hinted(429, "7")]);
    let mut service = layer()
        .backoff(Backoff::fixed(ms(100)))
        .jitter(Jitter::None)
        .build()
        .unwrap()
        .layer(upstream.service());
    let start = Instant::now();
    let response = call(&mut service).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(start.elapsed(), secs(7));
    assert_eq!(upstream.gaps(), [secs(7)]);
}

#[tokio::test(start_paused = true)]
async fn the_backoff_wins_when_longer_than_the_hint() {
    let upstream = Upstream::new([hinted(503, "1")]);
    let mut service = layer()
        .backoff(Backoff::fixed(secs(3)))
        .jitter(Jitter::None)
        .build()
        .unwrap()
        .layer(upstream.service());
    call(&mut service).await.unwrap();
    assert_eq!(upstream.gaps(), [secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn the_latest_hint_is_used_when_hints_change() {
    let upstream = Upstream::new([hinted(429, "1"), hinted(429, "5"), hinted(503, "2")]);
    let mut service = layer()
        .max_attempts(4)
        .backoff(Backoff::fixed(ms(10)))
        .jitter(Jitter::None)
        .build()
        .unwrap()
        .layer(upstream.service());
    let response = call(&mut service).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.gaps(), [secs(1), secs(5), secs(2)]);
}

#[tokio::test(start_paused = true)]
async fn millisecond_hints_are_honoured() {
    let upstream = Upstream::new([Ok(http::Response::builder()
        .status(429)
        .header("retry-after-ms", "1500")
        .header("retry-after", "9")
        .body(())
        .unwrap())]);
    let mut service = layer()
        .backoff(Backoff::fixed(ms(10)))
        .jitter(Jitter::None)
        .build()
        .unwrap()
        .layer(upstream.service());
    call(&mut service).await.unwrap();
    assert_eq!(upstream.gaps(), [ms(1500)]);
}

#[tokio::test(start_paused = true)]
async fn a_hint_past_the_deadline_gives_up_at_once() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let upstream = Upstream::new([hinted(429, "7")]);
    let mut service = layer()
        .deadline(secs(5))
        .on_retry({
            let events = events.clone();
            move |event: &RetryEvent| events.lock().unwrap().push(*event)
        })
        .build()
        .unwrap()
        .layer(upstream.service());
    let start = Instant::now();
    let response = call(&mut service).await.unwrap();
    assert_eq!(response.status(), 429, "the last failure comes back");
    assert_eq!(start.elapsed(), Duration::ZERO, "no sleep before giving up");
    assert_eq!(upstream.calls(), 1);
    let events = events.lock().unwrap();
    assert_eq!(
        events[0].decision,
        RetryDecision::GiveUp(GiveUpReason::PastDeadline)
    );
    assert_eq!(events[0].failure.retry_after, Some(secs(7)));
}

#[tokio::test(start_paused = true)]
async fn a_hint_over_the_maximum_gives_up_at_once() {
    let upstream = Upstream::new([hinted(429, "3600")]);
    let retry = layer().max_retry_after(secs(60)).build().unwrap();
    let mut service = retry.layer(upstream.service());
    let start = Instant::now();
    assert_eq!(call(&mut service).await.unwrap().status(), 429);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(upstream.calls(), 1);
    assert_eq!(
        retry
            .handle()
            .stats()
            .give_ups
            .get(GiveUpReason::HintTooLong),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_backoff_that_would_overrun_it() {
    let upstream = Upstream::always(503);
    let retry = layer()
        .max_attempts(10)
        .backoff(Backoff::fixed(ms(400)))
        .jitter(Jitter::None)
        .deadline(secs(1))
        .build()
        .unwrap();
    let mut service = retry.layer(upstream.service());
    let start = Instant::now();
    assert_eq!(call(&mut service).await.unwrap().status(), 503);
    // Attempts at 0, 0.4 and 0.8 s; a fourth would start at 1.2 s, past the deadline.
    assert_eq!(upstream.calls(), 3);
    assert_eq!(start.elapsed(), ms(800));
    assert_eq!(
        retry
            .handle()
            .stats()
            .give_ups
            .get(GiveUpReason::PastDeadline),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_never_retried() {
    for step in [
        status(400),
        status(401),
        status(403),
        status(404),
        status(413),
        status(422),
        upstream_error(FailureKind::BadRequest),
        upstream_error(FailureKind::ContextLengthExceeded),
        upstream_error(FailureKind::ContentFiltered),
        upstream_error(FailureKind::QuotaExhausted),
        upstream_error(FailureKind::Cancelled),
        Err("an error nobody knows".into()),
    ] {
        let label = format!("{step:?}");
        let upstream = Upstream::new([step]);
        let retry = layer().max_attempts(5).build().unwrap();
        let mut service = retry.layer(upstream.service());
        let _ = call(&mut service).await;
        assert_eq!(upstream.calls(), 1, "{label} was retried");
        assert_eq!(
            retry
                .handle()
                .stats()
                .give_ups
                .get(GiveUpReason::NotRetryable),
            1,
            "{label}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_quota_exhausted_429_is_not_retried() {
    let quota: Step = Err(Box::new(
        UpstreamError::new(
            FailureKind::QuotaExhausted,
            "You exceeded your current quota",
        )
        .with_status(http::StatusCode::TOO_MANY_REQUESTS)
        .with_code("insufficient_quota")
        .with_retry_after(Some(secs(1))),
    ));
    let upstream = Upstream::new([quota]);
    let mut service = layer().build().unwrap().layer(upstream.service());
    let err = call(&mut service).await.unwrap_err();
    let upstream_err = err.downcast_ref::<UpstreamError>().unwrap();
    assert_eq!(upstream_err.code(), Some("insufficient_quota"));
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn transport_errors_and_timeouts_are_retried_and_errors_come_back_unchanged() {
    let refused: Step = Err(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)));
    let timeout: Step = Err(Box::new(tower::timeout::error::Elapsed::new()));
    let reset: Step = Err(Box::new(io::Error::from(io::ErrorKind::ConnectionReset)));
    let upstream = Upstream::new([refused, timeout, reset]);
    let retry = layer().max_attempts(3).build().unwrap();
    let mut service = retry.layer(upstream.service());
    let err = call(&mut service).await.unwrap_err();
    assert_eq!(upstream.calls(), 3);
    // The last attempt's error, unwrapped, so an outer layer still classifies it.
    assert_eq!(
        err.downcast_ref::<io::Error>().unwrap().kind(),
        io::ErrorKind::ConnectionReset
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_is_retried_after_its_hint() {
    let open: Step = Err(Box::new(CircuitOpen::new(secs(2))));
    let upstream = Upstream::new([open]);
    let mut service = layer()
        .backoff(Backoff::fixed(ms(10)))
        .jitter(Jitter::None)
        .build()
        .unwrap()
        .layer(upstream.service());
    assert_eq!(call(&mut service).await.unwrap().status(), 200);
    assert_eq!(upstream.gaps(), [secs(2)]);
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_without_a_hint_is_not_retried() {
    // A classifier of our own that reports circuit-open failures without a hint.
    let classify = |result: Result<&Response, &BoxError>| match result {
        Ok(r) if r.status().is_success() => Outcome::Success,
        _ => Outcome::failure(FailureKind::CircuitOpen),
    };
    let upstream = Upstream::new([status(503)]);
    let mut service = layer()
        .classifier(classify)
        .build()
        .unwrap()
        .layer(upstream.service());
    assert_eq!(call(&mut service).await.unwrap().status(), 503);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_hook_sees_every_decision() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let upstream = Upstream::new([hinted(429, "2"), status(500), status(502)]);
    let mut service = layer()
        .max_attempts(3)
        .backoff(Backoff::fixed(ms(100)))
        .jitter(Jitter::None)
        .on_retry({
            let events = events.clone();
            move |event: &RetryEvent| events.lock().unwrap().push(*event)
        })
        .build()
        .unwrap()
        .layer(upstream.service());
    call(&mut service).await.unwrap();
    let seen: Vec<(usize, FailureKind, RetryDecision)> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.attempt, e.failure.kind, e.decision))
        .collect();
    assert_eq!(
        seen,
        [
            (
                1,
                FailureKind::RateLimited,
                RetryDecision::Retry { after: secs(2) }
            ),
            (
                2,
                FailureKind::ServerError,
                RetryDecision::Retry { after: ms(100) }
            ),
            (
                3,
                FailureKind::ServerError,
                RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted)
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_extension_modes() {
    // The default records nothing, even on a retried response.
    let upstream = Upstream::new([status(503)]);
    let mut service = RetryLayer::builder()
        .no_budget()
        .build()
        .unwrap()
        .layer(upstream.service());
    let response = call(&mut service).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.extensions().get::<Attempts>().is_none());

    // `when_retried`: only on retried responses.
    let upstream = Upstream::new([]);
    let mut service = layer().build().unwrap().layer(upstream.service());
    let response = call(&mut service).await.unwrap();
    assert!(response.extensions().get::<Attempts>().is_none());
    assert_eq!(Attempts::of(&response).get(), 1);

    let mut service = layer()
        .record_attempts(AttemptsExtension::always())
        .build()
        .unwrap()
        .layer(upstream.service());
    let response = call(&mut service).await.unwrap();
    assert_eq!(
        response.extensions().get::<Attempts>(),
        Some(&Attempts::new(1))
    );

    // A closure recorder, e.g. for a typed response; and StatsOnly compiles for any type.
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = service_fn(|_: ()| async { Ok::<_, BoxError>(String::from("ok")) });
    let mut typed = layer()
        .record_attempts({
            let seen = seen.clone();
            move |_: &mut String, attempts: Attempts| seen.store(attempts.get(), Ordering::SeqCst)
        })
        .build()
        .unwrap()
        .layer(counter);
    typed.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let mut plain = layer()
        .record_attempts(StatsOnly)
        .build()
        .unwrap()
        .layer(counter);
    plain.ready().await.unwrap().call(()).await.unwrap();
}

/// An upstream that refuses a call made without a fresh readiness grant, and fails twice.
#[derive(Clone)]
struct StrictReadiness {
    granted: bool,
    polls: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
}

impl Service<u32> for StrictReadiness {
    type Response = Response;
    type Error = BoxError;
    type Future = std::future::Ready<Step>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.granted = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: u32) -> Self::Future {
        assert!(
            std::mem::take(&mut self.granted),
            "called without poll_ready"
        );
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if n < 2 { status(503) } else { status(200) })
    }
}

#[tokio::test(start_paused = true)]
async fn readiness_is_polled_before_every_attempt() {
    let inner = StrictReadiness {
        granted: false,
        polls: Arc::default(),
        calls: Arc::default(),
    };
    let mut service = layer().build().unwrap().layer(inner.clone());
    assert_eq!(call(&mut service).await.unwrap().status(), 200);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    assert!(inner.polls.load(Ordering::SeqCst) >= 3);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_call_during_the_wait_stops_retrying() {
    let upstream = Upstream::always(503);
    let mut service = layer()
        .backoff(Backoff::fixed(secs(10)))
        .jitter(Jitter::None)
        .build()
        .unwrap()
        .layer(upstream.service());
    let pending = tokio::time::timeout(secs(1), call(&mut service)).await;
    assert!(pending.is_err(), "still waiting for the backoff");
    tokio::time::sleep(secs(60)).await;
    assert_eq!(upstream.calls(), 1, "a dropped call made another attempt");
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_during_the_wait_gives_its_retry_back_to_the_budget() {
    let upstream = Upstream::always(503);
    // One request earns exactly one retry; no floor.
    let retry = RetryLayer::builder()
        .budget(RetryBudget::new(1.0).window(secs(60)).min_per_second(0))
        .backoff(Backoff::fixed(secs(10)))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let mut service = retry.layer(upstream.service());
    let pending = tokio::time::timeout(secs(1), call(&mut service)).await;
    assert!(pending.is_err(), "still waiting for the backoff");
    assert_eq!(retry.handle().stats().budget_available, Some(1));
    assert_eq!(retry.handle().stats().retries, 0);

    // A call that does retry keeps what it spent.
    let upstream = Upstream::new([status(503)]);
    let mut service = retry.layer(upstream.service());
    assert_eq!(call(&mut service).await.unwrap().status(), 200);
    // Two requests earned two retries; one was made.
    assert_eq!(retry.handle().stats().budget_available, Some(1));
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_load_in_a_total_outage_across_clones() {
    let offered = 1000u64;
    let ratio = 0.1;
    let budget = RetryBudget::new(ratio).window(secs(60)).min_per_second(1);
    let upstream = Upstream::always(503);
    let retry = RetryLayer::builder()
        .max_attempts(5)
        .backoff(Backoff::fixed(ms(5)))
        .jitter(Jitter::None)
        .budget(budget)
        .build()
        .unwrap();
    let service = retry.layer(upstream.service());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..offered {
        let mut service = service.clone();
        tasks.spawn(async move {
            tokio::time::sleep(ms(i % 50)).await;
            call(&mut service).await.unwrap().status()
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 503);
    }
    let calls = upstream.calls() as u64;
    let cap = ((1.0 + ratio) * offered as f64) as u64 + budget.floor();
    assert!(calls <= cap, "{calls} upstream calls > cap {cap}");
    // Without the budget this outage would have cost 5 000 calls; with it, the retries
    // allowed are actually made.
    assert!(
        calls >= offered + 100,
        "{calls}: the budget allowed no retry"
    );
    let stats = retry.handle().stats();
    assert_eq!(stats.requests, offered);
    assert!(stats.give_ups.get(GiveUpReason::BudgetExhausted) > 0);
    assert_eq!(stats.attempts(), calls);
}

/// A streaming response: headers first, then chunks through a channel.
type Chunks = tokio::sync::mpsc::Receiver<Result<&'static str, &'static str>>;

#[tokio::test(start_paused = true)]
async fn a_stream_is_retried_only_before_its_first_chunk() {
    let calls = Arc::new(AtomicU32::new(0));
    let upstream = service_fn({
        let calls = calls.clone();
        move |_: u32| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    // Failed before any header: the call future fails, and is retried.
                    return Err::<http::Response<Chunks>, BoxError>(Box::new(io::Error::from(
                        io::ErrorKind::ConnectionReset,
                    )));
                }
                // Headers arrive; the stream then breaks after one chunk.
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tx.send(Ok("Hel")).await.unwrap();
                tx.send(Err("connection reset mid-stream")).await.unwrap();
                Ok(http::Response::new(rx))
            }
        }
    });
    let mut service = layer().build().unwrap().layer(upstream);
    let response = service.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(Attempts::of(&response).get(), 2);
    let mut body = response.into_body();
    assert_eq!(body.recv().await, Some(Ok("Hel")));
    assert_eq!(body.recv().await, Some(Err("connection reset mid-stream")));
    tokio::time::sleep(secs(60)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a broken stream is the caller's, never retried"
    );
}

#[test]
fn bad_configuration_names_the_knob() {
    let cases = [
        (
            RetryLayer::builder().max_attempts(0).build(),
            "max_attempts",
        ),
        (
            RetryLayer::builder()
                .backoff(Backoff::Exponential {
                    initial: ms(1),
                    multiplier: 0.5,
                })
                .build(),
            "backoff",
        ),
        (
            RetryLayer::builder()
                .backoff(Backoff::fixed(secs(5)))
                .max_delay(secs(1))
                .build(),
            "max_delay",
        ),
        (
            RetryLayer::builder().deadline(Duration::ZERO).build(),
            "deadline",
        ),
        (
            RetryLayer::builder().budget(RetryBudget::new(-1.0)).build(),
            "budget.ratio",
        ),
    ];
    for (result, knob) in cases {
        let err = result.unwrap_err();
        assert_eq!(err.knob(), knob);
        assert!(err.to_string().contains(knob), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clones_on_many_threads_share_one_budget() {
    // No waits (zero backoff), so real time does not matter; retries race on the budget.
    let offered = 4000u64;
    let ratio = 0.1;
    let upstream = Upstream::always(500);
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::fixed(Duration::ZERO))
        .max_delay(Duration::ZERO)
        .budget(RetryBudget::new(ratio).window(secs(3600)).min_per_second(0))
        .build()
        .unwrap();
    let service = retry.layer(upstream.service());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut service = service.clone();
        tasks.spawn(async move {
            for _ in 0..offered / 8 {
                call(&mut service).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let calls = upstream.calls() as u64;
    let stats = retry.handle().stats();
    assert_eq!(stats.requests, offered);
    assert_eq!(stats.attempts(), calls);
    assert!(
        calls <= offered + (ratio * offered as f64) as u64,
        "{calls} calls for {offered} requests at ratio {ratio}"
    );
    assert!(calls > offered, "no retry was allowed");
}

#[tokio::test(start_paused = true)]
async fn two_stacks_from_one_layer_share_stats_and_budget_through_the_handle() {
    // Each request earns half a retry, with no floor: only the two stacks' requests together
    // earn one.
    let retry = RetryLayer::builder()
        .max_attempts(2)
        .seed(7)
        .budget(RetryBudget::new(0.5).min_per_second(0).window(secs(60)))
        .build()
        .unwrap();
    let handle = retry.handle();
    let whole = Upstream::always(503);
    let streaming = Upstream::always(503);
    let mut first = tower::ServiceBuilder::new()
        .layer(retry.clone())
        .service(whole.service())
        .boxed_clone();
    let mut second = tower::ServiceBuilder::new()
        .layer(retry)
        .service(streaming.service())
        .boxed();

    assert_eq!(call(&mut first).await.unwrap().status(), 503);
    assert_eq!(call(&mut second).await.unwrap().status(), 503);
    // The first stack's request alone could not pay for a retry; the second's, added to the
    // first's in the one shared budget, could.
    assert_eq!(whole.calls(), 1);
    assert_eq!(streaming.calls(), 2);
    let stats = handle.clone().stats();
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.retries, 1);
    assert_eq!(stats.give_ups.budget_exhausted, 1);
    assert_eq!(stats.give_ups.attempts_exhausted, 1);
    assert_eq!(stats.give_ups.total(), 2);
    assert!(handle.same_layer(&handle.clone()));
    let debug = format!("{stats:?}");
    assert!(debug.contains("budget_exhausted: 1"), "{debug}");

    // Another layer value has its own state.
    assert!(!handle.same_layer(&RetryLayer::new().handle()));
}

#[tokio::test(start_paused = true)]
async fn nested_retries_sharing_a_budget_count_each_call_once_and_spend_from_one_balance() {
    use tower_llm_core::{AttemptBudget, BudgetConfig};

    // One retry a request, no floor.
    let shared = AttemptBudget::new(BudgetConfig::new(1.0).min_per_second(0)).unwrap();
    let layer = |name: &'static str| {
        RetryLayer::builder()
            .name(name)
            .max_attempts(3)
            .backoff(Backoff::fixed(ms(10)))
            .jitter(Jitter::None)
            .shared_budget(shared.clone())
            .build()
            .unwrap()
    };
    let upstream = Upstream::always(503);
    let outer = layer("outer");
    let handle = outer.handle();
    let service = outer.layer(layer("inner").layer(upstream.service()));
    // The service given to the layer is still reachable.
    let _upstream = service.get_ref().get_ref().get_ref().get_ref();

    for _ in 0..4 {
        let response = service.clone().oneshot(0).await.unwrap();
        assert_eq!(response.status(), 503);
    }
    let stats = shared.stats();
    // Four calls, each seen by both layers, counted four times: four retries in all.
    assert_eq!(stats.requests, 4);
    assert_eq!(stats.withdrawals(), 4);
    assert_eq!(upstream.calls(), 8);
    let inner = stats.spender("retry", "inner").unwrap();
    let outer = stats.spender("retry", "outer").unwrap();
    assert_eq!(inner.withdrawals + outer.withdrawals, 4);
    assert!(inner.refusals + outer.refusals > 0);
    assert_eq!(handle.budget().map(|b| b.same_budget(&shared)), Some(true));
    assert_eq!(handle.stats().budget_available, Some(0));
}
