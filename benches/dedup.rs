//! The added cost of tower-llm-dedup per call, over a no-op inner service, beside
//! tower-resilience's cache + coalesce layers measured in the same run.
//!
//! `cargo bench -p tower-llm-benches --bench dedup`
//!
//! - `hit`: the answer is in the cache (the common case the layer exists for).
//! - `miss`: a prompt never seen before: key, lookup, a shared call, the inner call, storing.
//! - `fingerprint`: core's keyed HighwayHash of the prompt alone, to show what hashing costs.
//! - `http-json-hit`: an `http::Request<Bytes>` with a 1 KiB JSON chat body; the fingerprint
//!   parses the JSON to hash it canonically.
//!
//! Prompts are `Arc<str>` so that handing one to the service costs a reference count, not a
//! copy, for every contender alike. Futures are polled once with a no-op waker: on a no-op
//! inner service every contender's future is ready at once.

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, service_fn};
use tower_llm_core::{FingerprintKey, RequestKey};
use tower_llm_dedup::DedupLayer;
use tower_resilience::cache::CacheLayer;
use tower_resilience::coalesce::CoalesceLayer;

const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (16 * 1024, "16KiB")];

fn prompt(len: usize, salt: u64) -> Arc<str> {
    let mut text = format!("{salt:016x} ");
    while text.len() < len {
        text.push_str("the quick brown fox jumps over the lazy dog ");
    }
    text.truncate(len);
    Arc::from(text)
}

fn now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a no-op inner service answers at once"),
    }
}

fn answer() -> Bytes {
    Bytes::from_static(b"{\"choices\":[{\"message\":{\"content\":\"four\"}}]}")
}

fn noop() -> impl Service<Arc<str>, Response = Bytes, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    service_fn(|_prompt: Arc<str>| std::future::ready(Ok::<_, Infallible>(answer())))
}

fn bench_hits(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup/hit");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (len, label) in SIZES {
        let p = prompt(len, 0);

        let mut baseline = noop();
        group.bench_with_input(BenchmarkId::new("no-layer", label), &p, |b, p| {
            b.iter(|| black_box(now(baseline.call(black_box(p.clone())))))
        });

        let mut ours = DedupLayer::builder()
            .cache_all()
            .ttl(Duration::from_secs(3600))
            .build()
            .expect("valid")
            .layer(noop());
        now(ours.call(p.clone())).expect("warm");
        group.bench_with_input(BenchmarkId::new("tower-llm-dedup", label), &p, |b, p| {
            b.iter(|| black_box(now(ours.call(black_box(p.clone()))).expect("hit")))
        });

        let mut peer = CacheLayer::builder()
            .max_size(10_000)
            .ttl(Duration::from_secs(3600))
            .key_extractor(|p: &Arc<str>| p.clone())
            .build()
            .expect("valid")
            .layer(CoalesceLayer::new(|p: &Arc<str>| p.clone()).layer(noop()));
        now(peer.call(p.clone())).expect("warm");
        group.bench_with_input(BenchmarkId::new("tower-resilience", label), &p, |b, p| {
            b.iter(|| black_box(now(peer.call(black_box(p.clone()))).expect("hit")))
        });

        // The same layer keyed by a constant: everything but the fingerprint.
        let mut prekeyed = DedupLayer::builder()
            .key_fn(|_: &Arc<str>| Some(RequestKey::from_u128(7)))
            .cache_all()
            .ttl(Duration::from_secs(3600))
            .build()
            .expect("valid")
            .layer(noop());
        now(prekeyed.call(p.clone())).expect("warm");
        group.bench_with_input(
            BenchmarkId::new("dedup-without-hashing", label),
            &p,
            |b, p| b.iter(|| black_box(now(prekeyed.call(black_box(p.clone()))).expect("hit"))),
        );

        let key = FingerprintKey::random();
        group.bench_with_input(BenchmarkId::new("fingerprint-only", label), &p, |b, p| {
            b.iter(|| black_box(key.fingerprint(black_box(&**p))))
        });
    }
    group.finish();
}

fn bench_misses(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup/miss");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (len, label) in SIZES {
        let salt = AtomicU64::new(1);
        let fresh = || prompt(len, salt.fetch_add(1, Ordering::Relaxed));

        let mut baseline = noop();
        group.bench_function(BenchmarkId::new("no-layer", label), |b| {
            b.iter_batched(
                fresh,
                |p| black_box(now(baseline.call(p))),
                BatchSize::SmallInput,
            )
        });

        let mut ours = DedupLayer::builder()
            .cache_all()
            .max_entries(10_000)
            .build()
            .expect("valid")
            .layer(noop());
        group.bench_function(BenchmarkId::new("tower-llm-dedup", label), |b| {
            b.iter_batched(
                fresh,
                |p| black_box(now(ours.call(p)).expect("answer")),
                BatchSize::SmallInput,
            )
        });

        // Coalescing only: the shared-call machinery without the cache insert.
        let mut coalesce_only = DedupLayer::builder()
            .cache_all()
            .no_cache()
            .build()
            .expect("valid")
            .layer(noop());
        group.bench_function(BenchmarkId::new("dedup-no-cache", label), |b| {
            b.iter_batched(
                fresh,
                |p| black_box(now(coalesce_only.call(p)).expect("answer")),
                BatchSize::SmallInput,
            )
        });

        let mut peer = CacheLayer::builder()
            .max_size(10_000)
            .ttl(Duration::from_secs(3600))
            .key_extractor(|p: &Arc<str>| p.clone())
            .build()
            .expect("valid")
            .layer(CoalesceLayer::new(|p: &Arc<str>| p.clone()).layer(noop()));
        group.bench_function(BenchmarkId::new("tower-resilience", label), |b| {
            b.iter_batched(
                fresh,
                |p| black_box(now(peer.call(p)).expect("answer")),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn chat_request(body: &Bytes) -> http::Request<Bytes> {
    http::Request::post("https://api.openai.com/v1/chat/completions")
        .header("authorization", "Bearer sk-test")
        .header("content-type", "application/json")
        .body(body.clone())
        .expect("valid request")
}

fn bench_http_json(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup/http-json-hit");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let content = prompt(1024 - 90, 0);
    // The prompt is plain ASCII words: no JSON escaping needed.
    let body = Bytes::from(format!(
        r#"{{"model":"gpt-4o-mini","temperature":0,"messages":[{{"role":"user","content":"{content}"}}]}}"#
    ));
    let inner = || {
        service_fn(|_request: http::Request<Bytes>| {
            std::future::ready(Ok::<_, Infallible>(answer()))
        })
    };
    let mut ours = DedupLayer::new(Duration::from_secs(3600)).layer(inner());
    now(ours.call(chat_request(&body))).expect("warm");
    group.bench_function("tower-llm-dedup/1KiB", |b| {
        b.iter_batched(
            || chat_request(&body),
            |r| black_box(now(ours.call(r)).expect("hit")),
            BatchSize::SmallInput,
        )
    });
    // The peer keys by the raw body bytes: cheaper, but blind to JSON spelling and to the
    // caller's credentials.
    let mut peer = CacheLayer::builder()
        .max_size(10_000)
        .ttl(Duration::from_secs(3600))
        .key_extractor(|r: &http::Request<Bytes>| r.body().clone())
        .build()
        .expect("valid")
        .layer(CoalesceLayer::new(|r: &http::Request<Bytes>| r.body().clone()).layer(inner()));
    now(peer.call(chat_request(&body))).expect("warm");
    group.bench_function("tower-resilience/1KiB", |b| {
        b.iter_batched(
            || chat_request(&body),
            |r| black_box(now(peer.call(r)).expect("hit")),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_hits, bench_misses, bench_http_json);
criterion_main!(benches);
