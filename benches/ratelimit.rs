//! Added cost per call of tower-llm-ratelimit when it does not limit, beside its peers, all
//! over the same no-op `service_fn`: tower-resilience's `RateLimiterLayer` (a layer beside a
//! layer, with the same quota shape: a huge limit per second with a burst, as a token bucket,
//! and as its sliding counter), governor (a check beside the call, not a layer), and tower's
//! own `ConcurrencyLimit` and `RateLimit`.
//!
//! Every service is driven by hand with a no-op waker (ready, call, one poll), inside a tokio
//! runtime context for the timers, so the figures are the middleware's own cost.
//!
//! `cargo bench -p tower-llm-benches --bench ratelimit`
//!
//! For instruction counts, the same binary runs one configuration a fixed number of times
//! without criterion when `RATELIMIT_CALLS=<name>:<count>` is set (names: `bare`, `requests`,
//! `requests+concurrency`, `requests+tokens+concurrency`, `governor`,
//! `tower-resilience`); the difference between
//! a run of N calls and a run of 0, divided by N, is the cost of one call:
//!
//! ```text
//! cargo bench -p tower-llm-benches --bench ratelimit --no-run   # prints the binary's path
//! RATELIMIT_CALLS=requests:200000 valgrind --tool=callgrind target/release/deps/ratelimit-<hash>
//! RATELIMIT_CALLS=requests:0      valgrind --tool=callgrind target/release/deps/ratelimit-<hash>
//! ```

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use tower::limit::{ConcurrencyLimit, RateLimit as TowerRateLimit, rate::Rate};
use tower::{Layer, Service, service_fn};
use tower_llm_core::BoxError;
use tower_llm_ratelimit::{Quota, RateLimitLayer};
use tower_resilience::ratelimiter::{RateLimiterLayer, WindowType};

type Req = http::Request<Bytes>;
type Res = http::Response<Bytes>;

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

/// A quota no workload reaches: the limiter does all its bookkeeping and never waits.
fn huge() -> Quota {
    Quota::new(u64::MAX / 4, Duration::from_secs(1)).with_burst(u64::MAX / 4)
}

fn ours_requests() -> impl Service<Req, Response = Res, Error = BoxError> {
    RateLimitLayer::builder()
        .requests(huge())
        .build()
        .expect("config")
        .layer(noop())
}

fn ours_requests_concurrency() -> impl Service<Req, Response = Res, Error = BoxError> {
    RateLimitLayer::builder()
        .concurrency(1 << 20)
        .requests(huge())
        .build()
        .expect("config")
        .layer(noop())
}

fn ours_requests_tokens_concurrency() -> impl Service<Req, Response = Res, Error = BoxError> {
    RateLimitLayer::builder()
        .concurrency(1 << 20)
        .requests(huge())
        .tokens(huge())
        .build()
        .expect("config")
        .layer(noop())
}

/// The same quota shape as [`huge`] in tower-resilience's rate limiter layer: a limit per
/// second that no workload reaches, with an equal burst (its token bucket).
fn resilience_token_bucket() -> impl Service<Req, Response = Res, Error = impl std::fmt::Debug> {
    let huge = usize::MAX / 4;
    RateLimiterLayer::builder()
        .limit_for_period(huge)
        .refresh_period(Duration::from_secs(1))
        .burst_size(huge)
        .build()
        .expect("config")
        .layer(noop())
}

/// tower-resilience's sliding counter, its O(1) sliding window, at the same limit.
fn resilience_sliding_counter() -> impl Service<Req, Response = Res, Error = impl std::fmt::Debug> {
    RateLimiterLayer::builder()
        .limit_for_period(usize::MAX / 4)
        .refresh_period(Duration::from_secs(1))
        .window_type(WindowType::SlidingCounter)
        .build()
        .expect("config")
        .layer(noop())
}

/// `RATELIMIT_CALLS=<name>:<count>`: that many calls through one configuration, no criterion.
fn count_calls(spec: &str) {
    let (name, count) = spec
        .split_once(':')
        .expect("RATELIMIT_CALLS=<name>:<count>");
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
        "requests" => run(ours_requests(), count),
        "requests+concurrency" => run(ours_requests_concurrency(), count),
        "requests+tokens+concurrency" => run(ours_requests_tokens_concurrency(), count),
        "tower-resilience" => run(resilience_token_bucket(), count),
        "governor" => {
            let governor =
                governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::MAX));
            let mut svc = noop();
            for _ in 0..count {
                assert!(governor.check().is_ok());
                black_box(drive(&mut svc, request()));
            }
        }
        other => panic!("no configuration named {other}"),
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    let mut group = c.benchmark_group("ratelimit_added_cost");

    let mut bare = noop();
    group.bench_function("baseline: service_fn alone", |b| {
        b.iter(|| black_box(drive(&mut bare, request())))
    });

    let mut ours = ours_requests();
    group.bench_function("tower-llm RateLimit: requests quota", |b| {
        b.iter(|| black_box(drive(&mut ours, request())))
    });

    let mut ours_concurrency = ours_requests_concurrency();
    group.bench_function("tower-llm RateLimit: requests quota + concurrency", |b| {
        b.iter(|| black_box(drive(&mut ours_concurrency, request())))
    });

    let mut ours_tokens = ours_requests_tokens_concurrency();
    group.bench_function(
        "tower-llm RateLimit: requests + tokens (estimate, reconcile) + concurrency",
        |b| b.iter(|| black_box(drive(&mut ours_tokens, request()))),
    );

    let mut resilience = resilience_token_bucket();
    group.bench_function(
        "tower-resilience RateLimiterLayer: token bucket (limit + burst)",
        |b| b.iter(|| black_box(drive(&mut resilience, request()))),
    );

    let mut resilience_sliding = resilience_sliding_counter();
    group.bench_function("tower-resilience RateLimiterLayer: sliding counter", |b| {
        b.iter(|| black_box(drive(&mut resilience_sliding, request())))
    });

    let governor = governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::MAX));
    group.bench_function("governor: check alone", |b| {
        b.iter(|| black_box(governor.check().is_ok()))
    });
    let mut governed = noop();
    group.bench_function("governor: check + service_fn", |b| {
        b.iter(|| {
            assert!(governor.check().is_ok());
            black_box(drive(&mut governed, request()))
        })
    });

    let mut concurrency = ConcurrencyLimit::new(noop(), 1 << 20);
    group.bench_function("tower ConcurrencyLimit", |b| {
        b.iter(|| black_box(drive(&mut concurrency, request())))
    });

    let mut tower_rate = TowerRateLimit::new(noop(), Rate::new(u64::MAX, Duration::from_secs(1)));
    group.bench_function("tower RateLimit", |b| {
        b.iter(|| black_box(drive(&mut tower_rate, request())))
    });

    group.finish();

    // What a limiter's fast path is made of, measured in the same run, to show the floor any
    // design that keeps the paused-clock support, shared stats and clones-share-state pays.
    // This bench is built with tokio's `test-util` (unified in from the root package's
    // dev-dependencies), under which `tokio::time::Instant::now()` first checks whether any
    // clock was ever paused.
    let mut parts = c.benchmark_group("ratelimit_parts");
    parts.bench_function("tokio::time::Instant::now (test-util build)", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    parts.bench_function("std::time::Instant::now", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    // What the limiter no longer pays to turn a reading into nanoseconds since its origin.
    let origin = tokio::time::Instant::now();
    parts.bench_function("tokio Instant::now + duration_since an origin", |b| {
        b.iter(|| black_box(tokio::time::Instant::now().saturating_duration_since(origin)))
    });
    let mutex = std::sync::Mutex::new(0u64);
    parts.bench_function("uncontended Mutex lock + unlock", |b| {
        b.iter(|| {
            let mut guard = mutex.lock().expect("not poisoned");
            *guard += 1;
            black_box(*guard)
        })
    });
    let shared = std::sync::Arc::new(0u64);
    parts.bench_function("Arc clone + drop", |b| {
        b.iter(|| black_box(std::sync::Arc::clone(black_box(&shared))))
    });
    let counter = std::sync::atomic::AtomicU64::new(0);
    parts.bench_function("AtomicU64 fetch_add", |b| {
        b.iter(|| black_box(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
    });
    parts.finish();
}

criterion_group!(benches, bench);

// criterion_main!, plus the fixed-count mode for callgrind.
fn main() {
    if let Ok(spec) = std::env::var("RATELIMIT_CALLS") {
        count_calls(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
