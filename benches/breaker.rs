//! What the circuit breaker adds per call over a no-op inner service: on the closed path (the
//! call goes through and its outcome is recorded) and on the open path (the call is refused
//! at once), beside tower-resilience's circuit breaker measured in the same run.
//!
//! `cargo bench -p tower-llm-benches --bench breaker`

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, service_fn};
use tower_llm_breaker::{CircuitBreakerLayer, State, Window};

/// One call, driven to completion: readiness, `call`, one poll (every future here is ready at
/// once, as a no-op upstream's would be).
fn drive<S, R>(svc: &mut S, req: R) -> Option<Result<S::Response, S::Error>>
where
    S: Service<R>,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Some(Err(e)),
        Poll::Pending => return None,
    }
    let future = pin!(svc.call(req));
    match future.poll(&mut cx) {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    }
}

fn ok_service()
-> impl Service<u64, Response = u64, Error = Infallible, Future = Ready<Result<u64, Infallible>>> + Clone
{
    service_fn(|x: u64| ready(Ok::<u64, Infallible>(x)))
}

fn failing_service()
-> impl Service<u64, Response = u64, Error = std::io::Error, Future = Ready<Result<u64, std::io::Error>>>
+ Clone {
    service_fn(|_: u64| {
        ready(Err::<u64, _>(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )))
    })
}

/// The peer's open path may arm a tokio timer, so both run inside a runtime.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

fn closed(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("breaker_closed");

    let mut baseline = ok_service();
    group.bench_function("no-op inner (baseline)", |b| {
        b.iter(|| black_box(drive(&mut baseline, black_box(1))))
    });

    let mut ours = CircuitBreakerLayer::new().layer(ok_service());
    group.bench_function("tower-llm default (failure rate, count window)", |b| {
        b.iter(|| black_box(drive(&mut ours, black_box(1))))
    });

    let mut ours_consecutive = CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .without_failure_rate()
        .build()
        .expect("valid")
        .layer(ok_service());
    group.bench_function("tower-llm consecutive only", |b| {
        b.iter(|| black_box(drive(&mut ours_consecutive, black_box(1))))
    });

    let mut ours_time = CircuitBreakerLayer::builder()
        .window(Window::time(Duration::from_secs(60)))
        .build()
        .expect("valid")
        .layer(ok_service());
    group.bench_function("tower-llm time window (reads the clock)", |b| {
        b.iter(|| black_box(drive(&mut ours_time, black_box(1))))
    });

    let mut peer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid")
        .layer(ok_service());
    group.bench_function("tower-resilience", |b| {
        b.iter(|| black_box(drive(&mut peer, black_box(1))))
    });
    group.finish();
}

fn open(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("breaker_open");

    let layer = CircuitBreakerLayer::builder()
        .cooldown(Duration::from_secs(3600))
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut ours = layer.layer(failing_service());
    // Tripped by failures, as in an outage (a forced open takes the same path).
    while handle.state() == State::Closed {
        let _ = drive(&mut ours, 1);
    }
    assert_eq!(handle.state(), State::Open);
    group.bench_function("tower-llm", |b| {
        b.iter(|| black_box(drive(&mut ours, black_box(1))))
    });

    let mut peer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(10)
        .minimum_number_of_calls(5)
        .wait_duration_in_open(Duration::from_secs(3600))
        .build()
        .expect("valid")
        .layer(failing_service());
    for _ in 0..10 {
        let _ = drive(&mut peer, 1);
    }
    assert!(
        matches!(
            drive(&mut peer, 1),
            Some(Err(
                tower_resilience::circuitbreaker::CircuitBreakerError::OpenCircuit
            ))
        ),
        "the peer is open"
    );
    group.bench_function("tower-resilience", |b| {
        b.iter(|| black_box(drive(&mut peer, black_box(1))))
    });
    group.finish();
}

/// The open path's floor: a rejection must read the clock (how long until the probe?) and
/// box its error (tower's `BoxError`).
fn floor(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker_open_floor");
    group.bench_function("tokio Instant::now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    group.bench_function("Box<CircuitOpen> as BoxError", |b| {
        b.iter(|| {
            let err: tower_llm_core::BoxError = Box::new(tower_llm_core::CircuitOpen::new(
                black_box(Duration::from_secs(1)),
            ));
            black_box(err)
        })
    });
    group.finish();
}

criterion_group!(benches, closed, open, floor);
criterion_main!(benches);
