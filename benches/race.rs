//! What the race strategies add over immediately-ready no-op services, beside `tower::hedge`
//! in the same run.
//!
//! `cargo bench -p tower-llm-benches --bench race`
//!
//! Every service answers `http::Response<()>` 200 from an immediately ready future; each
//! iteration polls readiness, calls, and polls the response future once (it is ready).
//! A tokio runtime is entered (not driven) so that hedges can create their timers.
//!
//! - `baseline`: one no-op service alone.
//! - `race/two`: `Race` over two no-op services: both called, the first wins, the other's
//!   (finished) future is dropped; the `Answered` extension is set on the response.
//! - `fallback/first_succeeds`: `Fallback` over two, the first answers.
//! - `hedge/fixed_primary_first`: `Hedge` over two with a fixed 10 ms delay; the primary
//!   answers first, so no timer is ever created.
//! - `hedge/percentile_primary_first`: the same with the p90 learned online (each success
//!   records its latency in the lock-free histogram).
//! - `tower_hedge/primary_first`: `tower::hedge::Hedge` over the same no-op service, p90
//!   after 10 data points, 10 s period: tower's nearest peer.
//! - `route/weighted`: `Route` by weights 1:3 over two.
//! - `*/answer_wrapper`: the same over services answering `Answer<()>`: the mark is a field,
//!   where on `http::Response` it is an extension (a map allocated on first insert), which
//!   is most of the cost above.

// `criterion_main!` generates an undocumented `main`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service};
use tower_llm_race::hedge::{HedgeDelay, HedgeLayer};
use tower_llm_race::route::RouteLayer;
use tower_llm_race::{Answer, FallbackLayer, MarkResponse, RaceLayer};

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

/// Answers `Answer<()>`: a response type that keeps the mark in a field.
#[derive(Clone, Copy, Debug)]
struct NoopAnswer;

impl Service<u64> for NoopAnswer {
    type Response = Answer<()>;
    type Error = Infallible;
    type Future = Ready<Result<Answer<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: u64) -> Self::Future {
        ready(Ok(Answer::new(())))
    }
}

#[derive(Clone, Copy, Debug)]
struct CloneEverything;

impl tower::hedge::Policy<u64> for CloneEverything {
    fn clone_request(&self, req: &u64) -> Option<u64> {
        Some(*req)
    }

    fn can_retry(&self, _req: &u64) -> bool {
        true
    }
}

fn bench_service<S>(c: &mut Criterion, name: &str, mut service: S)
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function(name, |b| {
        b.iter(|| {
            assert!(service.poll_ready(&mut cx).is_ready());
            let future = pin!(service.call(black_box(7)));
            match future.poll(&mut cx) {
                Poll::Ready(result) => black_box(result.expect("no-op never fails")),
                Poll::Pending => unreachable!("a no-op service answers at once"),
            }
        })
    });
}

fn race(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _entered = runtime.enter();

    bench_service(c, "baseline", Noop);
    bench_service(
        c,
        "race/two",
        RaceLayer::new()
            .record_winner(MarkResponse)
            .layer(vec![Noop, Noop]),
    );
    bench_service(
        c,
        "fallback/first_succeeds",
        FallbackLayer::new()
            .record_winner(MarkResponse)
            .layer(vec![Noop, Noop]),
    );
    bench_service(
        c,
        "hedge/fixed_primary_first",
        HedgeLayer::new(Duration::from_millis(10))
            .record_winner(MarkResponse)
            .layer(vec![Noop, Noop]),
    );
    let percentile = HedgeLayer::builder()
        .record_winner(MarkResponse)
        .delay(HedgeDelay::percentile(0.9, Duration::from_millis(10)))
        .build()
        .expect("valid hedge");
    bench_service(
        c,
        "hedge/percentile_primary_first",
        percentile.layer(vec![Noop, Noop]),
    );
    bench_service(
        c,
        "tower_hedge/primary_first",
        tower::hedge::Hedge::new::<u64>(Noop, CloneEverything, 10, 0.9, Duration::from_secs(10)),
    );
    bench_service(
        c,
        "route/weighted",
        RouteLayer::weighted_seeded(&[1, 3], 1)
            .expect("valid weights")
            .record_winner(MarkResponse)
            .layer(vec![Noop, Noop]),
    );
    bench_service(
        c,
        "race/two/answer_wrapper",
        RaceLayer::new()
            .record_winner(MarkResponse)
            .layer(vec![NoopAnswer, NoopAnswer]),
    );
    bench_service(
        c,
        "fallback/first_succeeds/answer_wrapper",
        FallbackLayer::new()
            .record_winner(MarkResponse)
            .layer(vec![NoopAnswer, NoopAnswer]),
    );
    bench_service(
        c,
        "hedge/fixed_primary_first/answer_wrapper",
        HedgeLayer::new(Duration::from_millis(10))
            .record_winner(MarkResponse)
            .layer(vec![NoopAnswer, NoopAnswer]),
    );
}

criterion_group!(benches, race);
criterion_main!(benches);
