//! One budget for every extra attempt (issue 18): retry, fallback and hedge handed one core
//! `AttemptBudget` bound upstream load to `(1 + ratio) × requests + floor` in a total outage,
//! whatever the nesting, because each user request is counted once (by the outermost layer
//! holding the budget). The same stack with each layer's own budget multiplies the load.
//! Paused clock, `service_fn` upstreams; the numbers are printed (`--nocapture`).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_llm_core::{AttemptBudget, BudgetConfig, FailureKind, UpstreamError};
use tower_llm_race::{AllFailed, FallbackLayer, HedgeLayer, hedge::HedgeDelay};
use tower_llm_retry::{Backoff, Jitter, RetryLayer};

const REQUESTS: usize = 200;
/// Requests arrive over 10 s, one every 50 ms: all within one budget window.
const SPACING: Duration = Duration::from_millis(50);
const RATIO: f64 = 0.2;
const WINDOW: Duration = Duration::from_secs(60);
const MIN_PER_SECOND: u32 = 1;

/// A provider in a total outage: every call fails 503 after `latency`.
fn down(
    latency: Duration,
    calls: &Arc<AtomicUsize>,
) -> impl Service<String, Response = String, Error = BoxError, Future: Send> + Clone + Send + 'static
{
    let calls = Arc::clone(calls);
    service_fn(move |_: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(latency).await;
            Err::<String, BoxError>(UpstreamError::new(FailureKind::Overloaded, "503").into())
        }
    })
}

/// retry (5 attempts) → fallback (3 services) → each a hedge over both providers; every layer
/// handed `budget` when there is one, else keeping its own.
async fn outage(budget: Option<&AttemptBudget>) -> (usize, Vec<BoxError>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let a = down(Duration::from_millis(400), &calls);
    let b = down(Duration::from_millis(600), &calls);
    let hedge = |name: &'static str| {
        let mut builder = HedgeLayer::builder()
            .name(name)
            .delay(HedgeDelay::Fixed(Duration::from_millis(200)))
            .max_extra_attempts(1);
        if let Some(budget) = budget {
            builder = builder.shared_budget(budget.clone());
        }
        builder.build().unwrap()
    };
    let services = vec![
        hedge("hedge-ab").layer(vec![a.clone(), b.clone()]),
        hedge("hedge-ba").layer(vec![b.clone(), a.clone()]),
        hedge("hedge-aa").layer(vec![a.clone(), a]),
    ];
    let mut fallback = FallbackLayer::new().name("fallback");
    let mut retry = RetryLayer::builder()
        .name("retry")
        .max_attempts(5)
        .backoff(Backoff::fixed(Duration::from_millis(100)))
        .jitter(Jitter::None);
    if let Some(budget) = budget {
        fallback = fallback.shared_budget(budget.clone());
        retry = retry.shared_budget(budget.clone());
    }
    let stack = retry.build().unwrap().layer(fallback.layer(services));

    let mut tasks = Vec::new();
    for _ in 0..REQUESTS {
        tasks.push(tokio::spawn(stack.clone().oneshot("hi".to_string())));
        tokio::time::sleep(SPACING).await;
    }
    let mut errors = Vec::new();
    for task in tasks {
        errors.push(task.await.unwrap().unwrap_err());
    }
    (calls.load(Ordering::SeqCst), errors)
}

#[tokio::test(start_paused = true)]
async fn one_shared_budget_bounds_an_outage_behind_retry_fallback_and_hedge() {
    let config = BudgetConfig::new(RATIO)
        .window(WINDOW)
        .min_per_second(MIN_PER_SECOND);
    let budget = AttemptBudget::new(config).unwrap();
    let started = tokio::time::Instant::now();
    let (calls, errors) = outage(Some(&budget)).await;
    let elapsed = started.elapsed();
    assert!(elapsed < WINDOW, "the run fits in one window: {elapsed:?}");

    let requests = REQUESTS as f64;
    let bound = (1.0 + RATIO) * requests + config.floor() as f64;
    let stats = budget.stats();
    println!(
        "shared budget: {REQUESTS} requests, {calls} upstream calls in {elapsed:?} \
         (bound (1 + {RATIO}) x {REQUESTS} + {MIN_PER_SECOND}/s x {}s = {bound})",
        WINDOW.as_secs()
    );
    for spender in &stats.spenders {
        println!(
            "  {} {:>9}: {:>3} extra attempts, {:>4} refused",
            spender.role, spender.name, spender.withdrawals, spender.refusals
        );
    }
    assert!(calls as f64 <= bound, "{calls} calls > {bound}");
    // Each user request counted once, though the fallback and the hedges saw it many times.
    assert_eq!(stats.requests, REQUESTS as u64);
    // Every upstream call past each request's first was paid for by exactly one withdrawal.
    assert_eq!(calls as u64, stats.requests + stats.withdrawals());
    // All three kinds of layer drew on the one budget (the inner ones, asking first, spent
    // it; the retries found it empty).
    for role in ["retry", "fallback", "hedge"] {
        let asked: u64 = stats
            .spenders
            .iter()
            .filter(|s| s.role == role)
            .map(|s| s.withdrawals + s.refusals)
            .sum();
        assert!(asked > 0, "{role} never drew on the budget");
    }
    assert!(stats.refusals() > 0);
    assert_eq!(stats.spenders.len(), 5, "retry, fallback, three hedges");
    // The callers got the providers' failure, listed.
    let listed = errors
        .iter()
        .filter(|e| e.downcast_ref::<AllFailed>().is_some())
        .count();
    assert_eq!(listed, REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn the_same_stack_with_a_budget_per_layer_multiplies_the_load() {
    let (calls, _) = outage(None).await;
    let requests = REQUESTS as f64;
    let shared_bound = (1.0 + RATIO) * requests + (MIN_PER_SECOND as u64 * WINDOW.as_secs()) as f64;
    println!(
        "budget per layer (retry's own 20% + 10/s floor, each hedge's own 10%, fallback none): \
         {REQUESTS} requests, {calls} upstream calls ({:.1} per request; shared bound {shared_bound}, \
         no budget at all would be {})",
        calls as f64 / requests,
        REQUESTS * 5 * 3 * 2
    );
    // Nested layers each granting their own extra attempts compound: far past the shared bound.
    assert!(calls as f64 > 2.0 * shared_bound, "{calls}");
}
