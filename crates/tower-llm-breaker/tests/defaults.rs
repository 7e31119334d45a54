//! The default policy against the upstreams it has to tell apart, in paused time: a flaky one
//! (30 % of calls fail at random, which retry copes with) must not open it; a hard-down one
//! must, after the minimum number of calls.
//!
//! Run with `--nocapture` to see the figures per seed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::sleep;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_breaker::{CircuitBreakerLayer, State};
use tower_llm_core::{BoxError, CircuitOpen, FailureKind, UpstreamError};

const CALLERS: usize = 20;
const CALLS_PER_CALLER: usize = 50;
const SEEDS: u64 = 10;
/// Each caller's pause between its calls, so a refused call does not turn into a burst.
const THINK_TIME: Duration = Duration::from_millis(100);

/// splitmix64: a seeded sequence, so each run is the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Default)]
struct Run {
    upstream_calls: usize,
    failed: usize,
    refused: usize,
    opened: u64,
}

/// `CALLERS` tasks each make `CALLS_PER_CALLER` calls in a row (with [`THINK_TIME`] between
/// them) through one breaker, to an
/// upstream that fails `failure_percent` % of calls (an overloaded error) after a latency of
/// 20 to 300 ms, both drawn from `seed`.
async fn drive(layer: CircuitBreakerLayer, seed: u64, failure_percent: u64) -> Run {
    let handle = layer.handle();
    let rng = Arc::new(Mutex::new(Rng(seed)));
    let upstream_calls = Arc::new(Mutex::new(0usize));
    let upstream = {
        let upstream_calls = Arc::clone(&upstream_calls);
        service_fn(move |_: u32| {
            *upstream_calls.lock().expect("lock") += 1;
            let (fails, latency) = {
                let mut rng = rng.lock().expect("lock");
                (rng.below(100) < failure_percent, 20 + rng.below(281))
            };
            async move {
                sleep(Duration::from_millis(latency)).await;
                if fails {
                    Err(BoxError::from(UpstreamError::new(
                        FailureKind::Overloaded,
                        "overloaded",
                    )))
                } else {
                    Ok(String::from("an answer"))
                }
            }
        })
    };
    let svc = layer.layer(upstream);
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                let (mut failed, mut refused) = (0, 0);
                for _ in 0..CALLS_PER_CALLER {
                    match svc.ready().await.expect("ready").call(0).await {
                        Ok(_) => {}
                        Err(e) if e.is::<CircuitOpen>() => refused += 1,
                        Err(_) => failed += 1,
                    }
                    sleep(THINK_TIME).await;
                }
                (failed, refused)
            })
        })
        .collect();
    let mut run = Run::default();
    for caller in callers {
        let (failed, refused) = caller.await.expect("caller");
        run.failed += failed;
        run.refused += refused;
    }
    run.upstream_calls = *upstream_calls.lock().expect("lock");
    run.opened = handle.stats().opened;
    run
}

#[tokio::test(start_paused = true)]
async fn a_flaky_upstream_never_opens_the_default_and_often_opens_five_in_a_row() {
    let mut default_opened = 0;
    let mut consecutive_opened = 0;
    let mut consecutive_refused = 0;
    for seed in 0..SEEDS {
        let default = drive(CircuitBreakerLayer::new(), seed, 30).await;
        let consecutive = drive(
            CircuitBreakerLayer::builder()
                .consecutive_failures(5)
                .build()
                .expect("valid"),
            seed,
            30,
        )
        .await;
        println!("seed {seed}: default {default:?}; consecutive_failures(5) {consecutive:?}");
        assert_eq!(default.upstream_calls, CALLERS * CALLS_PER_CALLER);
        assert_eq!(default.refused, 0, "seed {seed}: the default refused calls");
        default_opened += usize::from(default.opened > 0);
        consecutive_opened += usize::from(consecutive.opened > 0);
        consecutive_refused += consecutive.refused;
    }
    println!(
        "over {SEEDS} seeds of {} calls at 30 % failures: the default opened in {default_opened}, \
         consecutive_failures(5) in {consecutive_opened} (refusing {consecutive_refused} calls)",
        CALLERS * CALLS_PER_CALLER
    );
    assert_eq!(default_opened, 0);
    assert!(
        consecutive_opened > 0,
        "five failures in a row happen by chance at this volume"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hard_outage_opens_the_default_after_its_minimum_calls() {
    let layer = CircuitBreakerLayer::new();
    let handle = layer.handle();
    let run = drive(layer, 7, 100).await;
    println!("100 % failures: {run:?}");
    let stats = handle.stats();
    assert_eq!(stats.opened, 1);
    // The 40th failure opens it; at most the other callers' calls already in flight then
    // reach the upstream, and every later call is refused until the cool-down ends.
    assert!(
        (40..40 + CALLERS).contains(&run.upstream_calls),
        "{} upstream calls",
        run.upstream_calls
    );
    assert_eq!(
        run.failed + run.refused,
        CALLERS * CALLS_PER_CALLER,
        "every call failed"
    );
    assert!(run.refused > run.failed);
}

#[tokio::test(start_paused = true)]
async fn one_caller_opens_the_default_on_exactly_the_fortieth_failure() {
    let layer = CircuitBreakerLayer::new();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|_: u32| async {
        Err::<String, BoxError>(UpstreamError::new(FailureKind::Timeout, "timed out").into())
    }));
    for n in 1..=40 {
        assert_eq!(handle.state(), State::Closed, "before call {n}");
        let err = svc
            .ready()
            .await
            .expect("ready")
            .call(0)
            .await
            .expect_err("the upstream is down");
        assert!(!err.is::<CircuitOpen>(), "call {n} reached the upstream");
    }
    let stats = handle.stats();
    assert_eq!(stats.state, State::Open);
    assert_eq!((stats.failures, stats.window_failures), (40, 40));
    let err = svc
        .ready()
        .await
        .expect("ready")
        .call(0)
        .await
        .expect_err("refused");
    assert!(err.is::<CircuitOpen>());
}
