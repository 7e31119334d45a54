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

/// A provider that answers its prompt after `latency`, or fails like a reset connection.
fn leg(latency: Duration, ok: bool) -> tower::util::BoxCloneSyncService<String, String, BoxError> {
    tower::util::BoxCloneSyncService::new(service_fn(move |prompt: String| async move {
        tokio::time::sleep(latency).await;
        if ok {
            Ok::<_, BoxError>(prompt)
        } else {
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into())
        }
    }))
}

#[tokio::test(start_paused = true)]
async fn two_boxed_race_stacks_from_one_layer_share_its_counters() {
    use tower_llm_race::RaceLayer;
    let layer = RaceLayer::new().name("primary-race");
    let before = layer.handle();
    let services = || {
        vec![
            leg(Duration::from_millis(10), true),
            leg(Duration::from_secs(1), true),
        ]
    };
    let one = tower::util::BoxCloneSyncService::new(layer.layer(services()));
    let two = tower::util::BoxCloneSyncService::new(layer.clone().layer(services()));
    assert_eq!(one.oneshot("a".into()).await.expect("answered"), "a");
    assert_eq!(two.oneshot("b".into()).await.expect("answered"), "b");
    let all_fail = layer.layer(vec![
        leg(Duration::from_millis(10), false),
        leg(Duration::from_millis(20), false),
    ]);
    assert!(all_fail.oneshot("c".into()).await.is_err());

    let stats = before.stats();
    assert_eq!(before.name(), "primary-race");
    assert_eq!(stats, layer.handle().stats());
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.answered, 2);
    assert_eq!(stats.failed, 1);
    assert_eq!(stats.legs_started, 6);
    assert_eq!(stats.legs_failed, 2);
    assert_eq!(stats.legs_cancelled, 2);
}

#[tokio::test(start_paused = true)]
async fn fallback_gather_vote_and_route_handles_count_their_own_events() {
    use tower_llm_race::{FallbackLayer, GatherLayer, RouteLayer, VoteLayer};

    let fallback = FallbackLayer::new();
    let handle = fallback.handle();
    let stack = tower::util::BoxCloneSyncService::new(fallback.layer(vec![
        leg(Duration::from_millis(10), false),
        leg(Duration::from_millis(10), true),
    ]));
    assert_eq!(
        stack.clone().oneshot("a".into()).await.expect("second"),
        "a"
    );
    let stats = handle.stats();
    assert_eq!((stats.requests, stats.answered, stats.failed), (1, 1, 0));
    assert_eq!(
        (stats.legs_started, stats.legs_failed, stats.moved_on),
        (2, 1, 1)
    );

    let gather = GatherLayer::new();
    let handle = gather.handle();
    let stack = gather.layer(vec![
        leg(Duration::from_millis(10), false),
        leg(Duration::from_millis(10), true),
    ]);
    let gathered = stack
        .oneshot("b".into())
        .await
        .expect("one success is enough");
    assert_eq!(gathered.successes().count(), 1);
    let stats = handle.stats();
    assert_eq!((stats.requests, stats.answered, stats.partial), (1, 1, 1));
    assert_eq!((stats.legs_started, stats.legs_failed), (2, 1));

    let vote = VoteLayer::majority(|answer: &String| answer.clone())
        .quorum(2)
        .build()
        .expect("valid");
    let handle = vote.handle();
    let stack = vote.layer(vec![
        leg(Duration::from_millis(10), true),
        leg(Duration::from_millis(20), true),
        leg(Duration::from_secs(5), true),
    ]);
    assert_eq!(stack.oneshot("c".into()).await.expect("two agree"), "c");
    let stats = handle.stats();
    assert_eq!((stats.requests, stats.answered, stats.ballots), (1, 1, 2));
    assert_eq!((stats.decided_early, stats.legs_cancelled), (1, 1));

    let route = RouteLayer::predicate(|prompt: &String| prompt.len() < 4);
    let handle = route.handle();
    let stack = route.layer(vec![
        leg(Duration::from_millis(10), true),
        leg(Duration::from_millis(10), true),
    ]);
    assert_eq!(
        stack.clone().oneshot("d".into()).await.expect("routed"),
        "d"
    );
    assert_eq!(
        stack.oneshot("longer".into()).await.expect("routed"),
        "longer"
    );
    let stats = handle.stats();
    assert_eq!((stats.requests, stats.legs_started), (2, 2));
}
