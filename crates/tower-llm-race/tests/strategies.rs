//! Every strategy over mock providers on tokio's paused clock: what a user sees (which
//! service answered, after how long, how many calls were made, what error came back).

mod common;

use std::time::Duration;

use common::{Mock, Reply, body};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_llm_core::{
    BoxError, CircuitOpen, Classify, DefaultClassifier, FailureKind, classify_dyn_error,
};
use tower_llm_race::hedge::{HedgeBudget, HedgeDelay, HedgeLayer};
use tower_llm_race::route::RouteLayer;
use tower_llm_race::vote::{Ballot, VoteLayer};
use tower_llm_race::{
    AllFailed, Answered, FallbackLayer, GatherLayer, MarkResponse, NoQuorum, NoSuchService,
    RaceLayer, RecordAnswer,
};

const fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn answered(reply: &Reply) -> (usize, usize) {
    let mark = reply.answered().expect("the strategy marks its answer");
    (mark.service, mark.attempts)
}

fn all_failed(error: &BoxError) -> &AllFailed {
    error
        .downcast_ref::<AllFailed>()
        .expect("an AllFailed error")
}

// ---------------------------------------------------------------------------------------
// The seeds' example: two providers of 3.5 s and 4.0 s.

#[tokio::test(start_paused = true)]
async fn seeds_example_sequential_join_and_race() {
    let first = Mock::ok(3500, "a");
    let second = Mock::ok(4000, "b");

    let start = Instant::now();
    let one = first.clone().oneshot("q".to_string()).await.expect("first");
    let two = second
        .clone()
        .oneshot("q".to_string())
        .await
        .expect("second");
    assert_eq!((body(&one), body(&two)), ("a: q", "b: q"));
    assert_eq!(start.elapsed(), ms(7500), "sequential");

    let start = Instant::now();
    let (one, two) = tokio::join!(
        first.clone().oneshot("q".to_string()),
        second.clone().oneshot("q".to_string())
    );
    assert!(one.is_ok() && two.is_ok());
    assert_eq!(start.elapsed(), ms(4000), "the seeds' parallel join");

    let race = RaceLayer::new()
        .record_winner(MarkResponse)
        .layer_vec(vec![second.clone(), first.clone()]);
    let start = Instant::now();
    let reply = race.oneshot("q".to_string()).await.expect("race");
    assert_eq!(start.elapsed(), ms(3500), "race");
    assert_eq!(body(&reply), "a: q");
    assert_eq!(answered(&reply), (1, 2));
    // The 4.0 s provider was cancelled at 3.5 s.
    assert_eq!(second.stats.dropped(), 2 - 1);
}

/// `ServiceBuilder::layer(..).service(vec)` reads poorly in a test; this is the same.
trait LayerVec<S>: tower::Layer<Vec<S>> + Sized {
    fn layer_vec(self, services: Vec<S>) -> Self::Service {
        ServiceBuilder::new().layer(self).service(services)
    }
}
impl<S, L: tower::Layer<Vec<S>>> LayerVec<S> for L {}

// ---------------------------------------------------------------------------------------
// Race

#[tokio::test(start_paused = true)]
async fn race_a_fast_failure_does_not_win() {
    let failing = Mock::status(100, 500);
    let slow = Mock::ok(900, "slow");
    let race = RaceLayer::new()
        .record_winner(MarkResponse)
        .layer_vec(vec![failing.clone(), slow.clone()]);
    let start = Instant::now();
    let reply = race
        .oneshot("q".to_string())
        .await
        .expect("the slow success");
    assert_eq!(start.elapsed(), ms(900));
    assert_eq!(body(&reply), "slow: q");
    assert_eq!(answered(&reply), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn race_losers_are_dropped_when_the_winner_answers() {
    let fast = Mock::ok(100, "fast");
    let slow = Mock::ok(5000, "slow");
    let slower = Mock::ok(9000, "slower");
    let race = RaceLayer::new().record_winner(MarkResponse).layer_vec(vec![
        slow.clone(),
        fast.clone(),
        slower.clone(),
    ]);
    let reply = race.oneshot("q".to_string()).await.expect("fast wins");
    assert_eq!(body(&reply), "fast: q");
    for loser in [&slow, &slower] {
        assert_eq!(loser.stats.calls(), 1);
        assert_eq!(loser.stats.completed(), 0);
        assert_eq!(loser.stats.dropped(), 1, "cancelled at once, not later");
    }
}

#[tokio::test(start_paused = true)]
async fn race_dropping_the_future_cancels_every_call() {
    let a = Mock::ok(1000, "a");
    let b = Mock::ok(2000, "b");
    let mut race = RaceLayer::new()
        .record_winner(MarkResponse)
        .layer_vec(vec![a.clone(), b.clone()]);
    let future = race.call("q".to_string());
    let outcome = tokio::time::timeout(ms(500), future).await;
    assert!(outcome.is_err(), "gave up at 500 ms");
    assert_eq!((a.stats.dropped(), b.stats.dropped()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn race_a_service_that_is_not_ready_does_not_block_the_others() {
    let stuck = Mock::ok(10, "stuck").never_ready();
    let ready = Mock::ok(300, "ready");
    let race = RaceLayer::new()
        .record_winner(MarkResponse)
        .layer_vec(vec![stuck.clone(), ready.clone()]);
    let start = Instant::now();
    let reply = race.oneshot("q".to_string()).await.expect("the ready one");
    assert_eq!(start.elapsed(), ms(300));
    assert_eq!(body(&reply), "ready: q");
    assert_eq!(stuck.stats.calls(), 0, "never called while not ready");
}

#[tokio::test(start_paused = true)]
async fn race_all_failing_lists_each_failure_classified() {
    let race = RaceLayer::new().record_winner(MarkResponse).layer_vec(vec![
        Mock::status(50, 429),
        Mock::err(20, FailureKind::Overloaded),
        Mock::status(10, 401),
    ]);
    let error = race.oneshot("q".to_string()).await.expect_err("all fail");
    let failed = all_failed(&error);
    let kinds: Vec<_> = failed
        .failures()
        .iter()
        .map(|f| (f.service(), f.kind()))
        .collect();
    assert_eq!(
        kinds,
        [
            (2, FailureKind::Unauthorized),
            (1, FailureKind::Overloaded),
            (0, FailureKind::RateLimited),
        ]
    );
    // A layer further out sees a retryable failure.
    assert!(classify_dyn_error(&*error).kind.is_retryable());
    let text = error.to_string();
    assert!(text.starts_with("all 3 services failed"), "{text}");
    assert!(text.contains("service #2: unauthorized"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn race_with_a_custom_classifier() {
    // Treat 404 as an answer.
    let classifier = |result: Result<&Reply, &BoxError>| match result {
        Ok(reply) if reply.status() == 404 => tower_llm_core::Outcome::Success,
        other => DefaultClassifier.classify(other),
    };
    let race = RaceLayer::new()
        .record_winner(MarkResponse)
        .classifier(classifier)
        .layer_vec(vec![Mock::status(10, 404), Mock::ok(100, "b")]);
    let reply = race.oneshot("q".to_string()).await.expect("404 accepted");
    assert_eq!(reply.status(), 404);
}

#[tokio::test(start_paused = true)]
async fn race_over_no_services_fails_at_once() {
    let race = RaceLayer::new()
        .record_winner(MarkResponse)
        .layer_vec(Vec::<Mock>::new());
    let error = race
        .oneshot("q".to_string())
        .await
        .expect_err("nothing to call");
    assert_eq!(error.to_string(), "no service to call");
}

// ---------------------------------------------------------------------------------------
// Hedge

#[tokio::test(start_paused = true)]
async fn hedge_sends_the_backup_only_after_the_delay() {
    let primary = Mock::ok(1000, "primary");
    let backup = Mock::ok(200, "backup");
    let made = Instant::now();
    let hedge = HedgeLayer::builder()
        .record_winner(MarkResponse)
        .delay(HedgeDelay::Fixed(ms(300)))
        .unlimited_budget()
        .build()
        .expect("valid")
        .layer_vec(vec![primary.clone(), backup.clone()]);

    // A fast primary: no backup at all.
    let fast = Mock::ok(100, "fast");
    let unused = Mock::ok(200, "backup");
    let quick = HedgeLayer::new(ms(300))
        .record_winner(MarkResponse)
        .layer_vec(vec![fast.clone(), unused.clone()]);
    let start = Instant::now();
    let reply = quick.oneshot("q".to_string()).await.expect("fast");
    assert_eq!(start.elapsed(), ms(100));
    assert_eq!(answered(&reply), (0, 1));
    assert_eq!(unused.stats.calls(), 0);

    let start = Instant::now();
    let reply = hedge.oneshot("q".to_string()).await.expect("backup wins");
    assert_eq!(start.elapsed(), ms(500));
    assert_eq!(body(&reply), "backup: q");
    assert_eq!(answered(&reply), (1, 2));
    // The mock's clock started when it was made, before the fast run.
    assert_eq!(
        backup.stats.call_times(),
        [start - made + ms(300)],
        "sent at the delay"
    );
    assert_eq!(primary.stats.dropped(), 1, "the primary was cancelled");
}

#[tokio::test(start_paused = true)]
async fn hedge_caps_extra_attempts() {
    let services: Vec<Mock> = (0..4).map(|_| Mock::ok(10_000, "slow")).collect();
    let hedge = HedgeLayer::builder()
        .record_winner(MarkResponse)
        .delay(HedgeDelay::Fixed(ms(100)))
        .max_extra_attempts(2)
        .unlimited_budget()
        .build()
        .expect("valid")
        .layer_vec(services.clone());
    let start = Instant::now();
    let reply = hedge.oneshot("q".to_string()).await.expect("the first one");
    assert_eq!(start.elapsed(), ms(10_000));
    assert_eq!(answered(&reply), (0, 3));
    let calls: Vec<_> = services.iter().map(|s| s.stats.calls()).collect();
    assert_eq!(calls, [1, 1, 1, 0]);
    assert_eq!(services[1].stats.call_times(), [ms(100)]);
    assert_eq!(services[2].stats.call_times(), [ms(200)]);
}

#[tokio::test(start_paused = true)]
async fn hedge_budget_caps_extra_load() {
    let primary = Mock::ok(1000, "primary");
    let backup = Mock::ok(10, "backup");
    // No refill: one hedge, ever.
    let hedge = HedgeLayer::builder()
        .record_winner(MarkResponse)
        .delay(HedgeDelay::Fixed(ms(100)))
        .budget(HedgeBudget::new(0.0, 1))
        .build()
        .expect("valid")
        .layer_vec(vec![primary.clone(), backup.clone()]);
    let first = hedge
        .clone()
        .oneshot("q".to_string())
        .await
        .expect("hedged");
    assert_eq!(answered(&first), (1, 2));
    // The clone shares the spent budget: no more hedges, the primary answers.
    let start = Instant::now();
    let second = hedge
        .clone()
        .oneshot("q".to_string())
        .await
        .expect("primary");
    assert_eq!(start.elapsed(), ms(1000));
    assert_eq!(answered(&second), (0, 1));
    assert_eq!(backup.stats.calls(), 1);

    // With 50 %, twenty slow requests send ten hedges: the budget starts full (the burst of
    // one), so the first request's half-hedge is lost to the cap, then every second
    // request earns one.
    let primary = Mock::ok(1000, "primary");
    let backup = Mock::ok(1000, "backup");
    let hedge = HedgeLayer::builder()
        .record_winner(MarkResponse)
        .delay(HedgeDelay::Fixed(ms(100)))
        .budget(HedgeBudget::new(0.5, 1))
        .build()
        .expect("valid")
        .layer_vec(vec![primary.clone(), backup.clone()]);
    for _ in 0..20 {
        hedge
            .clone()
            .oneshot("q".to_string())
            .await
            .expect("answer");
    }
    assert_eq!(primary.stats.calls(), 20);
    assert_eq!(backup.stats.calls(), 10);
}

#[tokio::test(start_paused = true)]
async fn hedge_learns_the_delay_from_the_primarys_latency() {
    let primary = Mock::ok(400, "primary");
    let backup = Mock::ok(50, "backup");
    let hedge = HedgeLayer::builder()
        .record_winner(MarkResponse)
        .delay(HedgeDelay::Percentile {
            percentile: 0.9,
            initial: ms(5000),
            min_samples: 10,
            window: Duration::from_secs(600),
        })
        .unlimited_budget()
        .build()
        .expect("valid")
        .layer_vec(vec![primary.clone(), backup.clone()]);
    assert_eq!(hedge.current_delay(), ms(5000));
    for _ in 0..10 {
        let reply = hedge
            .clone()
            .oneshot("q".to_string())
            .await
            .expect("primary");
        assert_eq!(
            answered(&reply),
            (0, 1),
            "the initial delay is longer than 400 ms"
        );
    }
    let learned = hedge.current_delay();
    assert!(learned >= ms(400) && learned <= ms(450), "{learned:?}");
    assert_eq!(backup.stats.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn hedge_fails_over_at_once_and_stops_on_client_errors() {
    let down = Mock::err(10, FailureKind::Transport);
    let backup = Mock::ok(100, "backup");
    let hedge = HedgeLayer::new(ms(5000))
        .record_winner(MarkResponse)
        .layer_vec(vec![down.clone(), backup.clone()]);
    let start = Instant::now();
    let reply = hedge.oneshot("q".to_string()).await.expect("failover");
    assert_eq!(start.elapsed(), ms(110), "no wait for the delay");
    assert_eq!(answered(&reply), (1, 2));

    let refused = Mock::status(10, 400);
    let backup = Mock::ok(100, "backup");
    let hedge = HedgeLayer::new(ms(50))
        .record_winner(MarkResponse)
        .layer_vec(vec![refused, backup.clone()]);
    let error = hedge
        .oneshot("q".to_string())
        .await
        .expect_err("a client error");
    let failed = all_failed(&error);
    assert!(failed.is_stopped());
    assert_eq!(failed.failure().kind, FailureKind::BadRequest);
    assert_eq!(backup.stats.calls(), 0, "not hedged after a 400");
}

#[tokio::test(start_paused = true)]
async fn hedge_a_primary_that_is_not_ready_does_not_block_the_backup() {
    let stuck = Mock::ok(10, "stuck").never_ready();
    let backup = Mock::ok(100, "backup");
    let hedge = HedgeLayer::new(ms(200))
        .record_winner(MarkResponse)
        .layer_vec(vec![stuck.clone(), backup]);
    let start = Instant::now();
    let reply = hedge.oneshot("q".to_string()).await.expect("backup");
    assert_eq!(start.elapsed(), ms(300));
    assert_eq!(answered(&reply), (1, 2));
    assert_eq!(stuck.stats.calls(), 0);
}

// ---------------------------------------------------------------------------------------
// Fallback

#[tokio::test(start_paused = true)]
async fn fallback_tries_in_order_and_moves_on_when_worth_it() {
    let limited = Mock::status(100, 429);
    let overloaded = Mock::err(200, FailureKind::Overloaded);
    let healthy = Mock::ok(300, "third");
    let unused = Mock::ok(10, "fourth");
    let fallback = FallbackLayer::new()
        .record_winner(MarkResponse)
        .layer_vec(vec![
            limited.clone(),
            overloaded.clone(),
            healthy.clone(),
            unused.clone(),
        ]);
    let start = Instant::now();
    let reply = fallback.oneshot("q".to_string()).await.expect("third");
    assert_eq!(start.elapsed(), ms(600), "one after the other");
    assert_eq!(answered(&reply), (2, 3));
    assert_eq!(overloaded.stats.call_times(), [ms(100)]);
    assert_eq!(healthy.stats.call_times(), [ms(300)]);
    assert_eq!(unused.stats.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn fallback_an_open_circuit_moves_on_at_once() {
    let breaker_open = tower::service_fn(|_: String| async {
        Err::<Reply, BoxError>(CircuitOpen::new(Duration::from_secs(30)).into())
    });
    let healthy = tower::service_fn(|prompt: String| async move {
        Ok::<_, BoxError>(http::Response::new(prompt))
    });
    let services: Vec<BoxCloneService<String, Reply, BoxError>> = vec![
        BoxCloneService::new(breaker_open),
        BoxCloneService::new(healthy),
    ];
    let fallback = FallbackLayer::new()
        .record_winner(MarkResponse)
        .layer_vec(services);
    let start = Instant::now();
    let reply = fallback.oneshot("q".to_string()).await.expect("second");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(answered(&reply), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn fallback_stops_on_client_errors_by_default() {
    for status in [400, 401, 403, 404, 422] {
        let next = Mock::ok(10, "next");
        let fallback = FallbackLayer::new()
            .record_winner(MarkResponse)
            .layer_vec(vec![Mock::status(10, status), next.clone()]);
        let error = fallback.oneshot("q".to_string()).await.expect_err("stops");
        let failed = all_failed(&error);
        assert!(failed.is_stopped(), "{status}");
        assert_eq!(failed.failures().len(), 1);
        assert!(
            classify_dyn_error(&*error).kind.is_client_error(),
            "{status}"
        );
        assert_eq!(next.stats.calls(), 0, "{status}");
        assert!(error.to_string().starts_with("stopped after 1 of 2"));
    }
    // A rule of your own can move on anyway.
    let next = Mock::ok(10, "next");
    let fallback = FallbackLayer::new()
        .record_winner(MarkResponse)
        .move_on_if(|failure| failure.kind != FailureKind::Unauthorized)
        .layer_vec(vec![Mock::status(10, 400), next.clone()]);
    let reply = fallback.oneshot("q".to_string()).await.expect("moved on");
    assert_eq!(answered(&reply), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn fallback_sends_context_length_failures_to_the_larger_service() {
    let small = Mock::status(10, 413);
    let other = Mock::ok(10, "other");
    let large = Mock::ok(10, "large");
    let fallback = FallbackLayer::new()
        .record_winner(MarkResponse)
        .larger_context(2)
        .layer_vec(vec![small.clone(), other.clone(), large.clone()]);
    let reply = fallback
        .clone()
        .oneshot("q".to_string())
        .await
        .expect("large");
    assert_eq!(body(&reply), "large: q");
    assert_eq!(answered(&reply), (2, 2));
    assert_eq!(other.stats.calls(), 0, "skipped: it has the same window");

    // Without a larger service, a context-length failure is a client error: stop.
    let fallback = FallbackLayer::new()
        .record_winner(MarkResponse)
        .layer_vec(vec![small, other.clone()]);
    let error = fallback.oneshot("q".to_string()).await.expect_err("stop");
    assert_eq!(
        all_failed(&error).failure().kind,
        FailureKind::ContextLengthExceeded
    );
}

#[tokio::test(start_paused = true)]
async fn fallback_exhausted_lists_every_failure() {
    let fallback = FallbackLayer::new()
        .record_winner(MarkResponse)
        .layer_vec(vec![
            Mock::status(10, 503),
            Mock::err(10, FailureKind::Timeout),
            Mock::status(10, 429),
        ]);
    let error = fallback
        .oneshot("q".to_string())
        .await
        .expect_err("all fail");
    let failed = all_failed(&error);
    assert!(!failed.is_stopped());
    let kinds: Vec<_> = failed.failures().iter().map(|f| f.kind()).collect();
    assert_eq!(
        kinds,
        [
            FailureKind::Overloaded,
            FailureKind::Timeout,
            FailureKind::RateLimited
        ]
    );
    assert!(failed.failures()[1].error().is_some());
    assert!(
        failed.failures()[0].error().is_none(),
        "a 503 response, not an error"
    );
}

// ---------------------------------------------------------------------------------------
// Gather

#[tokio::test(start_paused = true)]
async fn gather_returns_every_result_and_tolerates_partial_failure() {
    let gather = GatherLayer::new().layer_vec(vec![
        Mock::ok(300, "a"),
        Mock::status(100, 500),
        Mock::ok(200, "c"),
    ]);
    let start = Instant::now();
    let gathered = gather.oneshot("q".to_string()).await.expect("two of three");
    assert_eq!(start.elapsed(), ms(300));
    let answers: Vec<_> = gathered
        .successes()
        .map(|(i, r)| (i, body(r).to_string()))
        .collect();
    assert_eq!(answers, [(0, "a: q".to_string()), (2, "c: q".to_string())]);
    let failure = gathered.failures().next().expect("one failure");
    assert_eq!(
        (failure.service(), failure.kind()),
        (1, FailureKind::ServerError)
    );
}

#[tokio::test(start_paused = true)]
async fn gather_timeout_cancels_stragglers_and_min_successes_fails() {
    let straggler = Mock::ok(10_000, "late");
    let gather = GatherLayer::new()
        .timeout(ms(1000))
        .layer_vec(vec![Mock::ok(100, "a"), straggler.clone()]);
    let start = Instant::now();
    let gathered = gather.oneshot("q".to_string()).await.expect("one in time");
    assert_eq!(start.elapsed(), ms(1000));
    assert_eq!(gathered.success_count(), 1);
    let failure = gathered.failures().next().expect("the straggler");
    assert_eq!(
        (failure.service(), failure.kind()),
        (1, FailureKind::Timeout)
    );
    assert_eq!(straggler.stats.dropped(), 1);

    let gather = GatherLayer::new()
        .min_successes(2)
        .layer_vec(vec![Mock::ok(10, "a"), Mock::status(10, 503)]);
    let error = gather
        .oneshot("q".to_string())
        .await
        .expect_err("one is not two");
    assert_eq!(all_failed(&error).failures().len(), 1);
    assert!(error.to_string().starts_with("1 of 2 services failed"));
}

// ---------------------------------------------------------------------------------------
// Vote

fn normalised(reply: &Reply) -> String {
    reply
        .body()
        .split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_lowercase()
}

#[tokio::test(start_paused = true)]
async fn vote_majority_decides_at_quorum_and_cancels_the_rest() {
    let late = Mock::ok(5000, "no");
    let vote = VoteLayer::majority(normalised)
        .record_winner(MarkResponse)
        .build()
        .expect("valid")
        .layer_vec(vec![
            Mock::ok(100, "Yes"),
            Mock::ok(200, "no"),
            Mock::ok(300, " YES"),
            late.clone(),
            Mock::ok(6000, "yes"),
        ]);
    let start = Instant::now();
    let reply = vote.oneshot("q".to_string()).await.expect("three agree");
    // A strict majority of five is three: reached at 6 s by "yes" (100 ms, 300 ms, 6 s).
    assert_eq!(start.elapsed(), ms(6000));
    assert_eq!(body(&reply), "Yes: q");
    assert_eq!(answered(&reply), (0, 5));
    assert_eq!(late.stats.completed(), 1);

    // With a quorum of two, the vote ends at 300 ms and the others are cancelled.
    let late = Mock::ok(5000, "no");
    let vote = VoteLayer::majority(normalised)
        .record_winner(MarkResponse)
        .quorum(2)
        .build()
        .expect("valid")
        .layer_vec(vec![
            Mock::ok(100, "Yes"),
            Mock::ok(200, "no"),
            Mock::ok(300, "yes"),
            late.clone(),
        ]);
    let start = Instant::now();
    let reply = vote.oneshot("q".to_string()).await.expect("two agree");
    assert_eq!(start.elapsed(), ms(300));
    assert_eq!(answered(&reply), (0, 4));
    assert_eq!(late.stats.dropped(), 1);
}

#[tokio::test(start_paused = true)]
async fn vote_without_quorum_fails_and_says_why() {
    let vote = VoteLayer::majority(normalised)
        .record_winner(MarkResponse)
        .build()
        .expect("valid")
        .layer_vec(vec![
            Mock::ok(10, "a"),
            Mock::ok(20, "b"),
            Mock::ok(30, "c"),
        ]);
    let error = vote
        .oneshot("q".to_string())
        .await
        .expect_err("disagreement");
    let no_quorum = error.downcast_ref::<NoQuorum>().expect("NoQuorum");
    assert_eq!((no_quorum.quorum(), no_quorum.answers()), (2, 3));
    assert_eq!(classify_dyn_error(&*error).kind, FailureKind::Other);

    // Failures that put the quorum out of reach end the vote early, classified.
    let slow = Mock::ok(9000, "a");
    let vote = VoteLayer::majority(normalised)
        .record_winner(MarkResponse)
        .build()
        .expect("valid")
        .layer_vec(vec![
            Mock::status(10, 503),
            Mock::status(20, 503),
            slow.clone(),
        ]);
    let start = Instant::now();
    let error = vote
        .oneshot("q".to_string())
        .await
        .expect_err("out of reach");
    assert_eq!(start.elapsed(), ms(20));
    assert_eq!(slow.stats.dropped(), 1);
    assert_eq!(classify_dyn_error(&*error).kind, FailureKind::Overloaded);
}

/// A quorum no list this short can meet: no service is called, and the refusal is ready at
/// once.
#[tokio::test(start_paused = true)]
async fn vote_over_fewer_services_than_its_quorum_calls_none() {
    let (a, b) = (Mock::ok(10, "a"), Mock::ok(10, "a"));
    let vote = VoteLayer::majority(normalised)
        .quorum(3)
        .build()
        .expect("valid")
        .layer_vec(vec![a.clone(), b.clone()]);
    let start = Instant::now();
    let error = vote
        .oneshot("q".to_string())
        .await
        .expect_err("out of reach");
    assert_eq!(start.elapsed(), Duration::ZERO);
    let no_quorum = error.downcast_ref::<NoQuorum>().expect("NoQuorum");
    assert_eq!((no_quorum.quorum(), no_quorum.answers()), (3, 0));
    assert_eq!(classify_dyn_error(&*error).kind, FailureKind::Other);
    assert_eq!((a.stats.calls(), b.stats.calls()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn vote_timeout_decides_over_the_answers_in() {
    // A combiner that keeps the longest answer, once two are in.
    let longest = |ballots: Vec<Ballot<Reply>>| {
        ballots
            .into_iter()
            .max_by_key(|ballot| ballot.response.body().len())
    };
    let straggler = Mock::ok(60_000, "a very long but very late answer");
    let vote = VoteLayer::combine(longest)
        .record_winner(MarkResponse)
        .quorum(2)
        .timeout(ms(2000))
        .build()
        .expect("valid")
        .layer_vec(vec![
            Mock::ok(100, "short"),
            Mock::ok(500, "longer"),
            straggler.clone(),
        ]);
    let start = Instant::now();
    let reply = vote.oneshot("q".to_string()).await.expect("two in time");
    assert_eq!(start.elapsed(), ms(2000));
    assert_eq!(body(&reply), "longer: q");
    assert_eq!(answered(&reply), (1, 3));
    assert_eq!(straggler.stats.dropped(), 1);

    let vote = VoteLayer::combine(longest)
        .record_winner(MarkResponse)
        .quorum(2)
        .timeout(ms(2000))
        .build()
        .expect("valid")
        .layer_vec(vec![Mock::ok(100, "short"), Mock::ok(60_000, "late")]);
    let error = vote.oneshot("q".to_string()).await.expect_err("one answer");
    let no_quorum = error.downcast_ref::<NoQuorum>().expect("NoQuorum");
    assert_eq!(no_quorum.failures()[0].kind(), FailureKind::Timeout);
}

#[test]
fn vote_rejects_a_zero_quorum() {
    let error = VoteLayer::majority(normalised)
        .record_winner(MarkResponse)
        .quorum(0)
        .build()
        .expect_err("zero");
    assert_eq!(error.knob(), "quorum");
}

// ---------------------------------------------------------------------------------------
// Route

#[tokio::test(start_paused = true)]
async fn route_by_predicate_and_by_request() {
    let fast = Mock::ok(10, "fast");
    let strong = Mock::ok(10, "strong");
    let route = RouteLayer::predicate(|prompt: &String| prompt.split_whitespace().count() < 8)
        .record_winner(MarkResponse)
        .layer_vec(vec![fast.clone(), strong.clone()]);
    let reply = route
        .clone()
        .oneshot("what is 2 + 2".to_string())
        .await
        .expect("fast");
    assert_eq!(answered(&reply), (0, 1));
    let long = "explain the proof of the four colour theorem in detail please".to_string();
    let reply = route.oneshot(long).await.expect("strong");
    assert_eq!(body(&reply).split(':').next(), Some("strong"));
    assert_eq!((fast.stats.calls(), strong.stats.calls()), (1, 1));

    let route =
        RouteLayer::by_request(|prompt: &String| if prompt.contains("code") { 2 } else { 0 })
            .record_winner(MarkResponse)
            .layer_vec(vec![Mock::ok(1, "a"), Mock::ok(1, "b")]);
    let reply = route.clone().oneshot("hi".to_string()).await.expect("a");
    assert_eq!(answered(&reply), (0, 1));
    let error = route
        .oneshot("code".to_string())
        .await
        .expect_err("no service #2");
    assert_eq!(
        error
            .downcast_ref::<NoSuchService>()
            .map(NoSuchService::index),
        Some(2)
    );
}

#[tokio::test(start_paused = true)]
async fn route_by_weight_follows_the_weights() {
    let services: Vec<Mock> = (0..3).map(|_| Mock::ok(0, "x")).collect();
    let weights = [1u64, 2, 7];
    let route = RouteLayer::weighted_seeded(&weights, 42)
        .expect("valid")
        .layer_vec(services.clone());
    const CALLS: usize = 10_000;
    for _ in 0..CALLS {
        route
            .clone()
            .oneshot("q".to_string())
            .await
            .expect("answer");
    }
    // Each count is binomial: within 5 standard deviations of its mean (a false failure
    // has probability below 1e-6, and the seed makes the run repeatable).
    let total: u64 = weights.iter().sum();
    for (service, weight) in services.iter().zip(weights) {
        let p = weight as f64 / total as f64;
        let mean = p * CALLS as f64;
        let sd = (CALLS as f64 * p * (1.0 - p)).sqrt();
        let seen = service.stats.calls() as f64;
        assert!(
            (seen - mean).abs() <= 5.0 * sd,
            "weight {weight}: {seen} calls, expected {mean}"
        );
    }
    // Chi-square over the three buckets, 2 degrees of freedom: 13.8 is the 0.999 quantile.
    let chi2: f64 = services
        .iter()
        .zip(weights)
        .map(|(service, weight)| {
            let expected = weight as f64 / total as f64 * CALLS as f64;
            (service.stats.calls() as f64 - expected).powi(2) / expected
        })
        .sum();
    assert!(chi2 < 13.8, "chi-square {chi2}");
}

// ---------------------------------------------------------------------------------------
// Composition

#[tokio::test(start_paused = true)]
async fn strategies_box_and_nest_across_provider_types() {
    type Provider = BoxCloneService<String, Reply, BoxError>;
    let provider = |mock: Mock| -> Provider { BoxCloneService::new(mock) };
    let vote = VoteLayer::majority(normalised)
        .record_winner(MarkResponse)
        .build()
        .expect("valid")
        .layer_vec(vec![
            provider(Mock::ok(100, "yes")),
            provider(Mock::ok(100, "yes")),
            provider(Mock::ok(100, "no")),
        ]);
    let race = RaceLayer::new().record_winner(MarkResponse).layer_vec(vec![
        provider(Mock::ok(50, "a")),
        provider(Mock::ok(60, "b")),
    ]);
    let router = RouteLayer::predicate(|prompt: &String| prompt.len() < 10)
        .record_winner(MarkResponse)
        .layer_vec(vec![BoxCloneService::new(race), BoxCloneService::new(vote)]);
    // The whole thing is a Send + Clone service again.
    let mut boxed: Provider = BoxCloneService::new(router);
    let short = boxed
        .ready()
        .await
        .expect("ready")
        .call("hi".to_string())
        .await
        .expect("race");
    assert_eq!(body(&short), "a: hi");
    let long = boxed
        .ready()
        .await
        .expect("ready")
        .call("a longer question".to_string())
        .await
        .expect("vote");
    assert_eq!(normalised(&long), "yes");
    assert_eq!(long.answered(), Some(Answered::new(1, 1)));
}

#[tokio::test(start_paused = true)]
async fn hedge_dropping_the_future_cancels_every_call() {
    let primary = Mock::ok(5000, "primary");
    let backup = Mock::ok(5000, "backup");
    let mut hedge = HedgeLayer::new(ms(100))
        .record_winner(MarkResponse)
        .layer_vec(vec![primary.clone(), backup.clone()]);
    let future = hedge.call("q".to_string());
    assert!(tokio::time::timeout(ms(1000), future).await.is_err());
    assert_eq!((primary.stats.calls(), backup.stats.calls()), (1, 1));
    assert_eq!((primary.stats.dropped(), backup.stats.dropped()), (1, 1));
}

#[test]
fn every_strategy_over_boxed_providers_is_a_send_boxable_service() {
    type Provider = BoxCloneService<String, Reply, BoxError>;
    fn boxable<S>(service: S) -> Provider
    where
        S: Service<String, Response = Reply, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        BoxCloneService::new(service)
    }
    let providers = || -> Vec<Provider> { vec![BoxCloneService::new(Mock::ok(1, "a"))] };
    boxable(
        RaceLayer::new()
            .record_winner(MarkResponse)
            .layer_vec(providers()),
    );
    boxable(
        HedgeLayer::new(ms(1))
            .record_winner(MarkResponse)
            .layer_vec(providers()),
    );
    boxable(
        FallbackLayer::new()
            .record_winner(MarkResponse)
            .layer_vec(providers()),
    );
    boxable(
        VoteLayer::majority(normalised)
            .record_winner(MarkResponse)
            .build()
            .expect("valid")
            .layer_vec(providers()),
    );
    boxable(
        RouteLayer::weighted(&[1])
            .expect("valid")
            .layer_vec(providers()),
    );
    boxable(
        RouteLayer::by_request(|_: &String| 0)
            .record_winner(MarkResponse)
            .layer_vec(providers())
            .map_response(|reply| reply),
    );
    let mut gather = GatherLayer::new().layer_vec(providers());
    fn send<T: Send>(_: &T) {}
    send(&gather);
    send(&gather.call("q".to_string()));
}

// ---------------------------------------------------------------------------------------
// Durations too long to add to a clock reading mean "never", not a panic.

#[tokio::test(start_paused = true)]
async fn a_delay_or_timeout_past_the_end_of_time_never_fires_and_never_panics() {
    // `Instant + Duration::MAX` overflows; a user writing `Duration::MAX` for "never"
    // must get "never".
    let primary = Mock::ok(300, "primary");
    let backup = Mock::ok(10, "backup");
    for delay in [
        HedgeDelay::Fixed(Duration::MAX),
        HedgeDelay::percentile(0.9, Duration::MAX),
    ] {
        let hedge = HedgeLayer::builder()
            .record_winner(MarkResponse)
            .delay(delay)
            .unlimited_budget()
            .build()
            .expect("valid")
            .layer_vec(vec![primary.clone(), backup.clone()]);
        let start = Instant::now();
        let reply = hedge.oneshot("q".to_string()).await.expect("the primary");
        assert_eq!(start.elapsed(), ms(300));
        assert_eq!(answered(&reply), (0, 1), "{delay:?}");
    }
    assert_eq!(backup.stats.calls(), 0, "never hedged");

    let gather = GatherLayer::new()
        .timeout(Duration::MAX)
        .layer_vec(vec![Mock::ok(100, "a"), Mock::ok(200, "b")]);
    let start = Instant::now();
    let gathered = gather.oneshot("q".to_string()).await.expect("both");
    assert_eq!(start.elapsed(), ms(200));
    assert_eq!(gathered.success_count(), 2);

    let vote = VoteLayer::majority(normalised)
        .record_winner(MarkResponse)
        .timeout(Duration::MAX)
        .build()
        .expect("valid")
        .layer_vec(vec![Mock::ok(100, "yes"), Mock::ok(200, "yes")]);
    let start = Instant::now();
    let reply = vote.oneshot("q".to_string()).await.expect("a majority");
    assert_eq!(start.elapsed(), ms(200));
    assert_eq!(normalised(&reply), "yes");
}
