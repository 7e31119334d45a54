//! The strategies over real HTTP: two or three testkit servers with different latency and
//! fault plans, on tokio's paused clock. The servers' counters show what each provider
//! really received, and whether the client went away before the answer (`cancelled`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_llm_core::{BoxError, FailureKind};
use tower_llm_race::hedge::{HedgeDelay, HedgeLayer};
use tower_llm_race::route::RouteLayer;
use tower_llm_race::vote::VoteLayer;
use tower_llm_race::{AllFailed, FallbackLayer, MarkResponse, RaceLayer, RecordAnswer};
use tower_llm_testkit::{Counters, Fault, FaultPlan, Latency, MockServer, TestClient, openai_chat};

type Provider = BoxCloneService<String, http::Response<Bytes>, BoxError>;

const fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

async fn server(name: &str, latency_ms: u64) -> MockServer {
    let plan = FaultPlan::healthy()
        .name(name)
        .latency(Latency::Fixed(ms(latency_ms)));
    MockServer::start(plan).await.expect("mock server starts")
}

async fn faulty(name: &str, latency_ms: u64, fault: Fault) -> MockServer {
    let plan = FaultPlan::healthy()
        .name(name)
        .latency(Latency::Fixed(ms(latency_ms)))
        .fault(fault, 1.0);
    MockServer::start(plan).await.expect("mock server starts")
}

/// A provider: a prompt in, that server's OpenAI-style answer out, over real HTTP.
fn provider(server: &MockServer) -> Provider {
    let base = server.base_url();
    BoxCloneService::new(
        TestClient::new().map_request(move |prompt: String| openai_chat(&base, "model", &prompt)),
    )
}

fn reply_text(response: &http::Response<Bytes>) -> String {
    let json: serde_json::Value = serde_json::from_slice(response.body()).expect("JSON answer");
    json["choices"][0]["message"]["content"]
        .as_str()
        .expect("a chat answer")
        .to_string()
}

/// Waits until the server has nothing in flight: the cancellation of a dropped request
/// reaches it through the socket.
async fn settled(server: &MockServer) -> Counters {
    server.wait_until(|c| c.in_flight == 0).await
}

#[tokio::test(start_paused = true)]
async fn seeds_example_over_http() {
    let a = server("a", 3500).await;
    let b = server("b", 4000).await;

    let start = Instant::now();
    provider(&a).oneshot("q".into()).await.unwrap();
    provider(&b).oneshot("q".into()).await.unwrap();
    assert_eq!(start.elapsed(), ms(7500), "sequential");

    let start = Instant::now();
    let (x, y) = tokio::join!(
        provider(&a).oneshot("q".into()),
        provider(&b).oneshot("q".into())
    );
    assert!(x.is_ok() && y.is_ok());
    assert_eq!(start.elapsed(), ms(4000), "joined");

    let race = RaceLayer::new()
        .record_winner(MarkResponse)
        .layer(vec![provider(&b), provider(&a)]);
    let start = Instant::now();
    let answer = race.oneshot("q".into()).await.unwrap();
    assert_eq!(start.elapsed(), ms(3500), "race");
    assert_eq!(reply_text(&answer), "a: q");
    assert_eq!(answer.answered().map(|a| a.service), Some(1));
}

#[tokio::test(start_paused = true)]
async fn race_answers_with_the_fastest_success_and_cancels_the_losers() {
    let failing = faulty("failing", 100, Fault::Status(500)).await;
    let fast = server("fast", 3500).await;
    let slow = server("slow", 4000).await;
    let race = RaceLayer::new().record_winner(MarkResponse).layer(vec![
        provider(&failing),
        provider(&slow),
        provider(&fast),
    ]);

    let start = Instant::now();
    let answer = race.oneshot("hello".into()).await.unwrap();
    assert_eq!(
        start.elapsed(),
        ms(3500),
        "the fastest success, not the fastest answer"
    );
    assert_eq!(reply_text(&answer), "fast: hello");
    assert_eq!(
        answer.answered().map(|a| (a.service, a.attempts)),
        Some((2, 3))
    );

    let slow = settled(&slow).await;
    assert_eq!((slow.requests, slow.completed, slow.cancelled), (1, 0, 1));
    let failing = settled(&failing).await;
    assert_eq!((failing.completed, failing.status(500)), (1, 1));
    assert_eq!(settled(&fast).await.completed, 1);
}

#[tokio::test(start_paused = true)]
async fn race_all_failing_over_http_lists_each_classified() {
    let a = faulty("a", 10, Fault::Overloaded).await;
    let b = faulty("b", 20, Fault::DropConnection).await;
    let race = RaceLayer::new()
        .record_winner(MarkResponse)
        .layer(vec![provider(&a), provider(&b)]);
    let error = race.oneshot("q".into()).await.unwrap_err();
    let failed = error.downcast_ref::<AllFailed>().unwrap();
    let kinds: Vec<_> = failed
        .failures()
        .iter()
        .map(|f| (f.service(), f.kind()))
        .collect();
    assert_eq!(
        kinds,
        [(0, FailureKind::Overloaded), (1, FailureKind::Transport)]
    );
}

#[tokio::test(start_paused = true)]
async fn hedge_over_http_sends_the_backup_after_the_delay_only_when_late() {
    let primary = server("primary", 2000).await;
    let backup = server("backup", 300).await;
    let hedge = HedgeLayer::builder()
        .record_winner(MarkResponse)
        .delay(HedgeDelay::Fixed(ms(500)))
        .unlimited_budget()
        .build()
        .unwrap()
        .layer(vec![provider(&primary), provider(&backup)]);

    let start = Instant::now();
    let answer = hedge.clone().oneshot("q".into()).await.unwrap();
    assert_eq!(
        start.elapsed(),
        ms(800),
        "backup sent at 500 ms, answered 300 ms later"
    );
    assert_eq!(reply_text(&answer), "backup: q");
    let primary_seen = settled(&primary).await;
    assert_eq!((primary_seen.cancelled, primary_seen.completed), (1, 0));

    // A primary that answers before the delay: the backup never hears of it.
    primary.set_plan(
        FaultPlan::healthy()
            .name("primary")
            .latency(Latency::Fixed(ms(200))),
    );
    backup.reset_counters();
    let start = Instant::now();
    let answer = hedge.oneshot("q".into()).await.unwrap();
    assert_eq!(start.elapsed(), ms(200));
    assert_eq!(reply_text(&answer), "primary: q");
    assert_eq!(backup.counters().requests, 0);
}

#[tokio::test(start_paused = true)]
async fn fallback_over_http_order_and_stop_rules() {
    let limited = faulty("limited", 50, Fault::Status(429)).await;
    let dropped = faulty("dropped", 50, Fault::DropConnection).await;
    let healthy = server("healthy", 100).await;
    let unused = server("unused", 10).await;
    let fallback = FallbackLayer::new().record_winner(MarkResponse).layer(vec![
        provider(&limited),
        provider(&dropped),
        provider(&healthy),
        provider(&unused),
    ]);
    let start = Instant::now();
    let answer = fallback.oneshot("q".into()).await.unwrap();
    assert_eq!(start.elapsed(), ms(200));
    assert_eq!(reply_text(&answer), "healthy: q");
    assert_eq!(
        answer.answered().map(|a| (a.service, a.attempts)),
        Some((2, 3))
    );
    let requests: Vec<u64> = [&limited, &dropped, &healthy, &unused]
        .iter()
        .map(|s| s.counters().requests)
        .collect();
    assert_eq!(requests, [1, 1, 1, 0]);

    // 401 stops the chain: the next provider is never called.
    let unauthorized = faulty("unauthorized", 10, Fault::Status(401)).await;
    let next = server("next", 10).await;
    let fallback = FallbackLayer::new()
        .record_winner(MarkResponse)
        .layer(vec![provider(&unauthorized), provider(&next)]);
    let error = fallback.oneshot("q".into()).await.unwrap_err();
    let failed = error.downcast_ref::<AllFailed>().unwrap();
    assert!(failed.is_stopped());
    assert_eq!(failed.failure().kind, FailureKind::Unauthorized);
    assert_eq!(next.counters().requests, 0);
}

#[tokio::test(start_paused = true)]
async fn vote_over_http_majority_and_quorum() {
    let yes_fast = server("yes", 100).await;
    let no = server("no", 200).await;
    let yes_slow = server("yes", 300).await;
    let straggler = server("no", 60_000).await;
    let key = |response: &http::Response<Bytes>| {
        reply_text(response)
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let vote = VoteLayer::majority(key)
        .record_winner(MarkResponse)
        .quorum(2)
        .build()
        .unwrap()
        .layer(vec![
            provider(&yes_fast),
            provider(&no),
            provider(&yes_slow),
            provider(&straggler),
        ]);
    let start = Instant::now();
    let answer = vote.clone().oneshot("q".into()).await.unwrap();
    assert_eq!(
        start.elapsed(),
        ms(300),
        "decided when the second 'yes' arrived"
    );
    assert_eq!(reply_text(&answer), "yes: q");
    let straggler_seen = settled(&straggler).await;
    assert_eq!((straggler_seen.cancelled, straggler_seen.completed), (1, 0));

    // Three-way disagreement under a quorum of two, with a timeout for the straggler.
    let maybe = server("maybe", 300).await;
    let vote = VoteLayer::majority(key)
        .record_winner(MarkResponse)
        .quorum(2)
        .timeout(ms(1000))
        .build()
        .unwrap()
        .layer(vec![
            provider(&yes_fast),
            provider(&no),
            provider(&maybe),
            provider(&straggler),
        ]);
    let start = Instant::now();
    let error = vote.oneshot("q".into()).await.unwrap_err();
    assert_eq!(start.elapsed(), ms(1000));
    assert!(
        error.to_string().starts_with("no quorum: 3 answers"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn route_over_http_by_predicate_and_by_weight() {
    let small = server("small", 10).await;
    let large = server("large", 10).await;
    let route = RouteLayer::predicate(|prompt: &String| prompt.len() < 20)
        .record_winner(MarkResponse)
        .layer(vec![provider(&small), provider(&large)]);
    let answer = route.clone().oneshot("2 + 2?".into()).await.unwrap();
    assert_eq!(reply_text(&answer), "small: 2 + 2?");
    let answer = route
        .oneshot("Summarise the history of the Roman Republic.".into())
        .await
        .unwrap();
    assert_eq!(
        reply_text(&answer),
        "large: Summarise the history of the Roman Republic."
    );

    small.reset_counters();
    large.reset_counters();
    let route = RouteLayer::weighted_seeded(&[1, 3], 7)
        .unwrap()
        .layer(vec![provider(&small), provider(&large)]);
    const CALLS: u64 = 400;
    for _ in 0..CALLS {
        route.clone().oneshot("q".into()).await.unwrap();
    }
    let (to_small, to_large) = (small.counters().requests, large.counters().requests);
    assert_eq!(to_small + to_large, CALLS);
    // Binomial(400, 0.25): mean 100, sd 8.7; 5 sd either side.
    assert!(
        (57..=143).contains(&to_small),
        "{to_small} of {CALLS} to the weight-1 service"
    );
}

#[tokio::test(start_paused = true)]
async fn hedge_over_http_caps_extra_calls_and_spends_its_budget() {
    let servers = [
        server("first", 2000).await,
        server("second", 2000).await,
        server("third", 2000).await,
    ];
    let hedge = HedgeLayer::builder()
        .record_winner(MarkResponse)
        .delay(HedgeDelay::Fixed(ms(100)))
        .max_extra_attempts(1)
        .budget(tower_llm_race::HedgeBudget::new(0.0, 1))
        .build()
        .unwrap()
        .layer(servers.iter().map(provider).collect());
    for _ in 0..3 {
        let answer = hedge.clone().oneshot("q".into()).await.unwrap();
        assert_eq!(reply_text(&answer), "first: q");
    }
    let mut requests = Vec::new();
    for server in &servers {
        requests.push(settled(server).await.requests);
    }
    // Three requests to the first; one hedge in the budget, to the second; never a third.
    assert_eq!(requests, [3, 1, 0]);
    assert_eq!(settled(&servers[1]).await.cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn fallback_over_http_sends_context_length_failures_to_the_larger_model() {
    let small = faulty("small", 10, Fault::Status(413)).await;
    let same_window = server("same-window", 10).await;
    let large = server("large", 10).await;
    let fallback = FallbackLayer::new()
        .record_winner(MarkResponse)
        .larger_context(2)
        .layer(vec![
            provider(&small),
            provider(&same_window),
            provider(&large),
        ]);
    let answer = fallback.oneshot("a very long prompt".into()).await.unwrap();
    assert_eq!(reply_text(&answer), "large: a very long prompt");
    assert_eq!(same_window.counters().requests, 0);
}
