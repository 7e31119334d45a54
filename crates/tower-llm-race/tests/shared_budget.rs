//! Fallback and hedge drawing on a core `AttemptBudget` shared with other layers: every call
//! past the first pays, a refusal ends the request with the failures so far, and a request is
//! counted once however many of the layers holding the budget it passes through.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_llm_core::{AttemptBudget, BudgetConfig, FailureKind, UpstreamError};
use tower_llm_race::{AllFailed, FallbackLayer, HedgeLayer, hedge::HedgeDelay};

fn failing(
    calls: &Arc<AtomicUsize>,
) -> impl Service<String, Response = String, Error = BoxError, Future: Send> + Clone + Send {
    let calls = Arc::clone(calls);
    service_fn(move |_: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<String, BoxError>(UpstreamError::new(FailureKind::Overloaded, "503").into()) }
    })
}

/// `ratio` of an attempt per request, no floor, over a minute; `earned` attempts already
/// earned by requests counted up front.
fn budget(ratio: f64, earned: u32) -> AttemptBudget {
    let budget = AttemptBudget::new(
        BudgetConfig::new(ratio)
            .window(Duration::from_secs(60))
            .min_per_second(0),
    )
    .unwrap();
    let requests = (f64::from(earned) / ratio).ceil() as u32;
    for _ in 0..requests {
        budget.deposit();
    }
    budget
}

#[tokio::test(start_paused = true)]
async fn fallback_pays_for_each_step_past_the_first_and_stops_when_refused() {
    let calls = Arc::new(AtomicUsize::new(0));
    let shared = budget(0.5, 1);
    let layer = FallbackLayer::new()
        .name("chain")
        .shared_budget(shared.clone());
    let handle = layer.handle();
    let fallback = layer.layer(vec![failing(&calls), failing(&calls), failing(&calls)]);

    let error = fallback.oneshot("hi".into()).await.unwrap_err();
    let all_failed = error.downcast_ref::<AllFailed>().unwrap();
    // Two requests counted up front earned one step; this request half of another.
    assert!(all_failed.is_budget_spent(), "{all_failed}");
    assert_eq!(all_failed.failures().len(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(error.to_string().contains("budget is spent"), "{error}");
    let stats = shared.stats();
    let account = stats.spender("fallback", "chain").unwrap();
    assert_eq!((account.withdrawals, account.refusals), (1, 1));
    assert_eq!(handle.stats().budget_exhausted, 1);
}

#[tokio::test(start_paused = true)]
async fn a_shared_budget_pays_for_hedges_and_failovers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let shared = budget(0.5, 1);
    let hedge = HedgeLayer::builder()
        .name("h")
        .delay(HedgeDelay::Fixed(Duration::from_millis(100)))
        .shared_budget(shared.clone())
        .build()
        .unwrap();
    let handle = hedge.handle();
    let service = hedge.layer(vec![failing(&calls), failing(&calls)]);

    // Each request earns half a failover, on top of the one earned up front: the first two
    // requests fail over to the second service, paid for...
    for paid in 1..=2 {
        let error = service.clone().oneshot("hi".into()).await.unwrap_err();
        assert!(!error.downcast_ref::<AllFailed>().unwrap().is_budget_spent());
        assert_eq!(calls.load(Ordering::SeqCst), 2 * paid);
    }
    // ...and the third finds half a failover left: refused, it fails with what it tried.
    let error = service.oneshot("hi".into()).await.unwrap_err();
    let all_failed = error.downcast_ref::<AllFailed>().unwrap();
    assert!(all_failed.is_budget_spent());
    assert_eq!(all_failed.failures().len(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    let account = shared.stats().spender("hedge", "h").cloned().unwrap();
    assert_eq!((account.withdrawals, account.refusals), (2, 1));
    assert_eq!(handle.stats().budget_exhausted, 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_through_fallback_and_hedges_sharing_a_budget_counts_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let shared = AttemptBudget::new(BudgetConfig::new(1.0).min_per_second(100)).unwrap();
    let hedge = || {
        HedgeLayer::builder()
            .delay(HedgeDelay::Fixed(Duration::from_millis(100)))
            .shared_budget(shared.clone())
            .build()
            .unwrap()
    };
    let fallback = FallbackLayer::new()
        .shared_budget(shared.clone())
        .layer(vec![
            hedge().layer(vec![failing(&calls), failing(&calls)]),
            hedge().layer(vec![failing(&calls), failing(&calls)]),
        ]);
    for _ in 0..10 {
        fallback.clone().oneshot("hi".into()).await.unwrap_err();
    }
    let stats = shared.stats();
    // Ten requests, each seen by the fallback and two hedges: counted ten times.
    assert_eq!(stats.requests, 10);
    // Four calls each: the first free, the fallback step and two failovers paid.
    assert_eq!(calls.load(Ordering::SeqCst), 40);
    assert_eq!(stats.withdrawals(), 30);

    // Without the fallback marking the budget, each hedge would count the request again:
    // a hedge on its own counts every call it gets.
    let alone = hedge().layer(vec![failing(&calls), failing(&calls)]);
    alone.oneshot("hi".into()).await.unwrap_err();
    assert_eq!(shared.stats().requests, 11);
}
