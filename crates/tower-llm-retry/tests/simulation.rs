//! 10,000 requests against an upstream that fails 5% of attempts, independently, with the
//! layer's defaults and 3 attempts: the success rate must be consistent with 1 - 0.05^3.
//!
//! A request fails only if its 3 attempts all fail: probability p = 0.05^3 = 1.25e-4, so the
//! number of failed requests X is Binomial(10 000, 1.25e-4), mean 1.25. The test asserts
//! X <= 8; P(X >= 9) = 6.7e-6 (exact binomial tail), so a correct layer fails this test about
//! once in 150 000 seeds. Without retries X would be about 500. The RNG is seeded, so the run
//! is deterministic; the bound says the seed was not cherry-picked to pass.

#![allow(clippy::unwrap_used)]

use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_core::BoxError;
use tower_llm_retry::{GiveUpReason, RetryLayer};

const REQUESTS: u64 = 10_000;
const FAILURE_RATE: f64 = 0.05;

async fn run(max_attempts: usize, seed: u64) -> (u64, u64, RetryLayer) {
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = service_fn({
        let calls = calls.clone();
        move |_: u64| {
            calls.fetch_add(1, Ordering::Relaxed);
            let status = if rng.lock().unwrap().random_bool(FAILURE_RATE) {
                503
            } else {
                200
            };
            ready(Ok::<_, BoxError>(
                http::Response::builder().status(status).body(()).unwrap(),
            ))
        }
    });
    let retry = RetryLayer::builder()
        .max_attempts(max_attempts)
        .seed(seed)
        .build()
        .unwrap();
    let mut service = retry.layer(upstream);
    let mut failures = 0;
    for i in 0..REQUESTS {
        let response = service.ready().await.unwrap().call(i).await.unwrap();
        if !response.status().is_success() {
            failures += 1;
        }
    }
    (failures, calls.load(Ordering::Relaxed), retry)
}

#[tokio::test(start_paused = true)]
async fn success_rate_is_consistent_with_one_minus_p_cubed() {
    let (failures, calls, retry) = run(3, 2026).await;
    assert!(
        failures <= 8,
        "{failures} of {REQUESTS} failed; expected 1.25, P(>= 9) = 6.7e-6"
    );
    let success_rate = 1.0 - failures as f64 / REQUESTS as f64;
    assert!(success_rate >= 0.9992, "{success_rate}");

    // Upstream calls: 10 000 + retries; expected 10 000 × (1 + 0.05 + 0.0025) = 10 525, with a
    // standard deviation of about 22: ±150 is a 6.8-sigma band.
    assert!((10_375..=10_675).contains(&calls), "{calls} upstream calls");

    // The default budget (20% of requests) never stood in the way at a 5% failure rate.
    let stats = retry.handle().stats();
    assert_eq!(stats.give_ups.get(GiveUpReason::BudgetExhausted), 0);
    assert_eq!(stats.attempts(), calls);
    assert_eq!(
        stats.give_ups.get(GiveUpReason::AttemptsExhausted),
        failures
    );
}

#[tokio::test(start_paused = true)]
async fn without_retries_about_five_percent_fail() {
    let (failures, calls, _) = run(1, 2026).await;
    assert_eq!(calls, REQUESTS);
    // Binomial(10 000, 0.05): mean 500, standard deviation 21.8; ±130 is 6 sigma.
    assert!((370..=630).contains(&failures), "{failures}");
}
