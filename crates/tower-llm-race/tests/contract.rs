//! The layer contract for race: a hedge's state belongs to its layer value.

use std::time::Duration;

use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_llm_race::hedge::{HedgeBudget, HedgeDelay, HedgeLayer};

#[tokio::test(start_paused = true)]
async fn two_stacks_from_one_hedge_layer_share_its_budget_and_counters() {
    let provider = |latency: Duration| {
        service_fn(move |prompt: String| async move {
            tokio::time::sleep(latency).await;
            Ok::<_, BoxError>(prompt)
        })
    };
    // One hedge in the budget, earned back by no request: whichever stack hedges first spends
    // it for both.
    let layer = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(Duration::from_millis(100)))
        .budget(HedgeBudget::new(0.0, 1))
        .build()
        .expect("valid");
    let handle = layer.handle();
    let services = || {
        vec![
            provider(Duration::from_secs(2)),
            provider(Duration::from_millis(10)),
        ]
    };
    let whole = layer.layer(services());
    let streaming = layer.clone().layer(services());

    let start = tokio::time::Instant::now();
    assert_eq!(whole.oneshot("a".into()).await.expect("answered"), "a");
    assert_eq!(start.elapsed(), Duration::from_millis(110));
    let start = tokio::time::Instant::now();
    assert_eq!(streaming.oneshot("b".into()).await.expect("answered"), "b");
    // The budget was spent by the other stack: no hedge, the slow primary answered.
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    let stats = handle.stats();
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.hedges, 1);
    assert_eq!(stats.budget_exhausted, 1);
    assert_eq!(stats.answered_by_others, 1);
    assert_eq!(stats.answered_by_first, 1);
}

#[tokio::test(start_paused = true)]
async fn the_learned_delay_is_shared_by_every_stack_of_one_layer_value() {
    let provider = service_fn(|prompt: String| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, BoxError>(prompt)
    });
    let layer = HedgeLayer::builder()
        .delay(HedgeDelay::Percentile {
            percentile: 0.9,
            initial: Duration::from_secs(5),
            min_samples: 4,
            window: Duration::from_secs(600),
        })
        .build()
        .expect("valid");
    let handle = layer.handle();
    let first = layer.layer(vec![provider, provider]);
    for _ in 0..4 {
        first.clone().oneshot("x".into()).await.expect("answered");
    }
    // Learned through the first stack, read by a stack built afterwards.
    let second = layer.layer(vec![provider, provider]);
    let learned = second.current_delay();
    assert!(
        learned >= Duration::from_millis(300) && learned < Duration::from_millis(400),
        "{learned:?}"
    );
    assert_eq!(handle.current_delay(), learned);
}
