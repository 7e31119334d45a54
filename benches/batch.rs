//! What batching costs per request: `n` calls through a `Batch` layer become one call to a
//! no-op `Service<Vec<u64>>`, for batches of 1, 8 and 64. Beside it, its nearest peer in tower,
//! `tower::buffer::Buffer` (also a channel to a task that owns the service), making one no-op
//! call per request. Both run on a current-thread runtime, so the numbers are the bookkeeping,
//! not thread hand-offs. Times are per group of `n` requests; divide by `n` (or read the
//! elements/s throughput) for the per-request figure.
//!
//! `cargo bench -p tower-llm-benches --bench batch`

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tower::buffer::Buffer;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_batch::BatchLayer;

fn noop_batch(batch: Vec<u64>) -> Ready<Result<Vec<u64>, Infallible>> {
    ready(Ok(batch))
}

fn noop_one(item: u64) -> Ready<Result<u64, Infallible>> {
    ready(Ok(item))
}

/// Sends `n` requests through `service` before awaiting any, so a batcher sees them together.
async fn round<S>(service: &mut S, n: usize) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut pending = Vec::with_capacity(n);
    for i in 0..n as u64 {
        service.ready().await.expect("ready");
        pending.push(service.call(i));
    }
    let mut sum = 0;
    for response in pending {
        sum += response.await.expect("answered");
    }
    sum
}

fn per_request(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("batch");
    for n in [1usize, 8, 64] {
        group.throughput(Throughput::Elements(n as u64));

        let mut batched = runtime.block_on(async {
            BatchLayer::builder()
                .max_items(n)
                // Batches fill before this; it only bounds a stray one.
                .max_wait(Duration::from_secs(1))
                .build()
                .expect("valid")
                .layer(service_fn(noop_batch))
        });
        group.bench_function(BenchmarkId::new("batch_layer", n), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(round(&mut batched, n).await);
                    }
                    start.elapsed()
                })
            })
        });

        let mut buffered = runtime.block_on(async { Buffer::new(service_fn(noop_one), 1024) });
        group.bench_function(BenchmarkId::new("tower_buffer", n), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(round(&mut buffered, n).await);
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
