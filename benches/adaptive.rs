//! Added cost per call of tower-llm-ratelimit's adaptive concurrency limit when it does not
//! limit, beside the static concurrency limit of the same layer, tower-resilience's adaptive
//! limiter (AIMD) and tower's own `ConcurrencyLimit`, all over the same no-op `service_fn`
//! and in the same run. Each limit is far above the one call in flight, so nothing waits:
//! the figures are the bookkeeping of admitting a call and recording its end (for the
//! adaptive limits, the outcome read and the limit's update).
//!
//! Every service is driven by hand with a no-op waker (ready, call, one poll), inside a tokio
//! runtime context for the timers, as in `ratelimit.rs`.
//!
//! `cargo bench -p tower-llm-benches --bench adaptive`
//!
//! For instruction counts, the same binary runs one configuration a fixed number of times
//! without criterion when `ADAPTIVE_CALLS=<name>:<count>` is set (names: `bare`, `adaptive`,
//! `adaptive-growing`, `static`, `tower-resilience`, `tower`); the difference between a run
//! of N calls and a run of 0, divided by N, is the cost of one call:
//!
//! ```text
//! cargo bench -p tower-llm-benches --bench adaptive --no-run   # prints the binary's path
//! ADAPTIVE_CALLS=adaptive:200000 valgrind --tool=callgrind target/release/deps/adaptive-<hash>
//! ADAPTIVE_CALLS=adaptive:0      valgrind --tool=callgrind target/release/deps/adaptive-<hash>
//! ```

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use tower::limit::ConcurrencyLimit;
use tower::{Layer, Service, service_fn};
use tower_llm_core::BoxError;
use tower_llm_ratelimit::{AdaptiveConcurrency, RateLimitLayer};
use tower_resilience::adaptive::{AdaptiveLimiterLayer, Aimd};

type Req = http::Request<Bytes>;
type Res = http::Response<Bytes>;

/// A limit no single caller reaches.
const HUGE: usize = 1 << 19;

fn noop() -> impl Service<Req, Response = Res, Error = BoxError, Future = impl Future> + Clone {
    service_fn(|_req: Req| async { Ok::<_, BoxError>(http::Response::new(Bytes::new())) })
}

/// Ready, call, one poll: the whole life of a call that is not limited.
fn drive<S: Service<Req, Response = Res>>(svc: &mut S, req: Req) -> Res
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("the bench service must be ready"),
    }
    let mut future = pin!(svc.call(req));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(response)) => response,
        _ => panic!("the bench call must complete at once"),
    }
}

fn request() -> Req {
    http::Request::new(Bytes::from_static(
        br#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#,
    ))
}

fn ours_adaptive() -> impl Service<Req, Response = Res, Error = BoxError> {
    RateLimitLayer::builder()
        .adaptive_concurrency(AdaptiveConcurrency::new().initial(HUGE).max(HUGE))
        .build()
        .expect("config")
        .layer(noop())
}

/// The adaptive limit where every success grows it (one call in flight at a limit of one,
/// growing by so little it stays under two in the run): the update taken on each call.
fn ours_adaptive_growing() -> impl Service<Req, Response = Res, Error = BoxError> {
    RateLimitLayer::builder()
        .adaptive_concurrency(
            AdaptiveConcurrency::new()
                .initial(1)
                .max(1_000_000)
                .increase(1e-9),
        )
        .build()
        .expect("config")
        .layer(noop())
}

fn ours_static() -> impl Service<Req, Response = Res, Error = BoxError> {
    RateLimitLayer::builder()
        .concurrency(HUGE)
        .build()
        .expect("config")
        .layer(noop())
}

fn resilience_adaptive() -> impl Service<Req, Response = Res, Error = impl std::fmt::Debug> {
    AdaptiveLimiterLayer::new(
        Aimd::builder()
            .initial_limit(HUGE)
            .max_limit(HUGE)
            .latency_threshold(Duration::from_secs(10))
            .build()
            .expect("config"),
    )
    .layer(noop())
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    let mut group = c.benchmark_group("adaptive_added_cost");

    let mut bare = noop();
    group.bench_function("baseline: service_fn alone", |b| {
        b.iter(|| black_box(drive(&mut bare, request())))
    });

    let mut adaptive = ours_adaptive();
    group.bench_function("tower-llm RateLimit: adaptive concurrency", |b| {
        b.iter(|| black_box(drive(&mut adaptive, request())))
    });

    let mut growing = ours_adaptive_growing();
    group.bench_function(
        "tower-llm RateLimit: adaptive concurrency, growing on every success",
        |b| b.iter(|| black_box(drive(&mut growing, request()))),
    );

    let mut fixed = ours_static();
    group.bench_function("tower-llm RateLimit: static concurrency", |b| {
        b.iter(|| black_box(drive(&mut fixed, request())))
    });

    let mut resilience = resilience_adaptive();
    group.bench_function("tower-resilience AdaptiveLimiterLayer: AIMD", |b| {
        b.iter(|| black_box(drive(&mut resilience, request())))
    });

    let mut concurrency = ConcurrencyLimit::new(noop(), HUGE);
    group.bench_function("tower ConcurrencyLimit", |b| {
        b.iter(|| black_box(drive(&mut concurrency, request())))
    });

    group.finish();
}

/// `ADAPTIVE_CALLS=<name>:<count>`: that many calls through one configuration, no criterion.
fn count_calls(spec: &str) {
    let (name, count) = spec.split_once(':').expect("ADAPTIVE_CALLS=<name>:<count>");
    let count: u64 = count.parse().expect("a count of calls");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    fn run<S: Service<Req, Response = Res>>(mut svc: S, count: u64)
    where
        S::Error: std::fmt::Debug,
    {
        for _ in 0..count {
            black_box(drive(&mut svc, request()));
        }
    }
    match name {
        "bare" => run(noop(), count),
        "adaptive" => run(ours_adaptive(), count),
        "adaptive-growing" => run(ours_adaptive_growing(), count),
        "static" => run(ours_static(), count),
        "tower-resilience" => run(resilience_adaptive(), count),
        "tower" => run(ConcurrencyLimit::new(noop(), HUGE), count),
        other => panic!("no configuration named {other}"),
    }
}

criterion_group!(benches, bench);

// criterion_main!, plus the fixed-count mode for callgrind.
fn main() {
    if let Ok(spec) = std::env::var("ADAPTIVE_CALLS") {
        count_calls(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
