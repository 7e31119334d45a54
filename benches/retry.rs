//! What the retry layer adds to a call that succeeds at once, over a no-op inner service,
//! beside `tower::retry` with an equivalent policy and tower-resilience's retry, same run.
//!
//! `cargo bench -p tower-llm-benches --bench retry`
//!
//! Every service answers `http::Response<()>` 200 from an immediately ready future; each
//! iteration polls readiness, calls, and polls the response future once (it is ready).
//!
//! - `baseline`: the inner service alone.
//! - `tower_llm_retry/default`: our layer with its defaults (3 attempts, exponential backoff
//!   with jitter, budget, the `StatsOnly` recorder that fits any response).
//! - `tower_llm_retry/extension_when_retried`: the `Attempts` extension on retried responses
//!   only (nothing added on this path).
//! - `tower_llm_retry/extension_always`: the `Attempts` extension on every response (one
//!   allocation per call).
//! - `tower_llm_retry/deadline`: defaults plus a deadline (reads the clock per call).
//! - `tower_retry/equivalent`: tower's `Retry` with a policy doing what ours does: classify
//!   through core, count attempts, back off exponentially with jitter, and a `TpsBudget`
//!   deposited on success as tower's docs show.
//! - `tower_retry/attempts_only`: tower's `Retry` with a bare attempt-count policy (no
//!   classification, no budget): the floor of any tower policy.
//! - `tower_resilience`: tower-resilience 0.13's retry, 3 attempts, exponential backoff,
//!   responses classified through core.

// `criterion_main!` generates an undocumented `main`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, Retry};
use tower::util::rng::HasherRng;
use tower::{Layer, Service};
use tower_llm_core::{AttemptBudget, Classify, DefaultClassifier, Outcome};
use tower_llm_retry::{AttemptsExtension, RetryLayer};

type Response = http::Response<()>;

#[derive(Clone, Copy, Debug)]
struct Noop;

impl Service<u64> for Noop {
    type Response = Response;
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: u64) -> Self::Future {
        ready(Ok(http::Response::new(())))
    }
}

/// What our policy does, written against tower's pieces.
#[derive(Clone, Debug)]
struct EquivalentPolicy {
    attempts_left: u32,
    budget: Arc<TpsBudget>,
    backoff: ExponentialBackoff,
}

impl Policy<u64, Response, Infallible> for EquivalentPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut u64,
        result: &mut Result<Response, Infallible>,
    ) -> Option<Self::Future> {
        match DefaultClassifier.classify(result.as_ref()) {
            Outcome::Success => {
                self.budget.deposit();
                None
            }
            Outcome::Failure(failure)
                if failure.kind.is_retryable()
                    && self.attempts_left > 0
                    && self.budget.withdraw() =>
            {
                self.attempts_left -= 1;
                Some(self.backoff.next_backoff())
            }
            Outcome::Failure(_) => None,
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

#[derive(Clone, Copy, Debug)]
struct AttemptsOnly(u32);

impl Policy<u64, Response, Infallible> for AttemptsOnly {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut u64,
        result: &mut Result<Response, Infallible>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response) if !response.status().is_server_error() => None,
            _ if self.0 > 0 => {
                self.0 -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

fn bench_service<S>(c: &mut Criterion, name: &str, mut service: S)
where
    S: Service<u64, Response = Response>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function(name, |b| {
        b.iter(|| {
            assert!(service.poll_ready(&mut cx).is_ready());
            let future = pin!(service.call(black_box(7)));
            match future.poll(&mut cx) {
                Poll::Ready(result) => black_box(result.expect("no-op never fails")),
                Poll::Pending => unreachable!("the no-op inner service is always ready"),
            }
        })
    });
}

fn success_path(c: &mut Criterion) {
    // tokio's timers and clock need a runtime context even when they are never awaited.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();

    bench_service(c, "retry_success/baseline", Noop);

    let ours = RetryLayer::new();
    bench_service(c, "retry_success/tower_llm_retry/default", ours.layer(Noop));

    // Handed a shared budget: counts the call once (a thread-local check) and marks the budget
    // while the inner service is called and polled.
    let shared = RetryLayer::builder()
        .shared_budget(AttemptBudget::default())
        .build()
        .expect("valid config");
    bench_service(
        c,
        "retry_success/tower_llm_retry/shared_budget",
        shared.layer(Noop),
    );

    let when_retried = RetryLayer::builder()
        .record_attempts(AttemptsExtension::when_retried())
        .build()
        .expect("valid config");
    bench_service(
        c,
        "retry_success/tower_llm_retry/extension_when_retried",
        when_retried.layer(Noop),
    );

    let always = RetryLayer::builder()
        .record_attempts(AttemptsExtension::always())
        .build()
        .expect("valid config");
    bench_service(
        c,
        "retry_success/tower_llm_retry/extension_always",
        always.layer(Noop),
    );

    let deadline = RetryLayer::builder()
        .deadline(Duration::from_secs(30))
        .build()
        .expect("valid config");
    bench_service(
        c,
        "retry_success/tower_llm_retry/deadline",
        deadline.layer(Noop),
    );

    let backoff = ExponentialBackoffMaker::new(
        Duration::from_millis(250),
        Duration::from_secs(20),
        1.0,
        HasherRng::default(),
    )
    .expect("valid backoff")
    .make_backoff();
    let equivalent = EquivalentPolicy {
        attempts_left: 2,
        budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
        backoff,
    };
    bench_service(
        c,
        "retry_success/tower_retry/equivalent",
        Retry::new(equivalent, Noop),
    );
    bench_service(
        c,
        "retry_success/tower_retry/attempts_only",
        Retry::new(AttemptsOnly(2), Noop),
    );

    let resilience = tower_resilience::retry::RetryLayer::<u64, Response, Infallible>::builder()
        .max_attempts(3)
        .exponential_backoff(Duration::from_millis(250))
        .retry_on_response(|response: &Response| {
            DefaultClassifier
                .classify(Ok::<_, &Infallible>(response))
                .kind()
                .is_some_and(|kind| kind.is_retryable())
        })
        .build();
    bench_service(c, "retry_success/tower_resilience", resilience.layer(Noop));
}

criterion_group!(benches, success_path);
criterion_main!(benches);
