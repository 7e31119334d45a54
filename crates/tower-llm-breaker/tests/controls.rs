//! The handle's controls, in paused time: forcing a breaker open and resetting it reach every
//! service of the layer value (boxed ones included), show in `stats()`, and go through the
//! state-change hook.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Reply, Upstream, call, circuit_open};
use tokio::time::advance;
use tower::util::BoxService;
use tower::{Layer, ServiceBuilder};
use tower_llm_breaker::{CircuitBreakerLayer, State, StateChange};
use tower_llm_core::BoxError;

const COOLDOWN: Duration = Duration::from_secs(10);

fn recorded() -> (
    Arc<Mutex<Vec<StateChange>>>,
    impl Fn(&StateChange) + Send + Sync + 'static,
) {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&changes);
    (changes, move |change: &StateChange| {
        sink.lock().expect("lock").push(change.clone());
    })
}

fn transitions(changes: &Mutex<Vec<StateChange>>) -> Vec<(State, State, bool)> {
    changes
        .lock()
        .expect("lock")
        .iter()
        .map(|c| (c.from, c.to, c.forced))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn force_open_holds_every_stack_of_the_layer_open_until_reset() {
    let upstream = Upstream::new(200);
    let (changes, hook) = recorded();
    let layer = CircuitBreakerLayer::builder()
        .cooldown(COOLDOWN)
        .on_state_change(hook)
        .build()
        .expect("valid");
    let handle = layer.handle();
    // Two stacks from one layer value, one of them boxed.
    let mut plain = layer.layer(upstream.service());
    let mut boxed: BoxService<u8, Reply, BoxError> = BoxService::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(upstream.service()),
    );
    call(&mut plain, 0).await.expect("closed");
    call(&mut boxed, 0).await.expect("closed");

    handle.force_open();
    let stats = handle.stats();
    assert_eq!(stats.state, State::Open);
    assert!(stats.forced_open);
    assert_eq!(stats.next_probe_in, None, "no cool-down ends it");
    assert_eq!(stats.opened, 1);
    assert_eq!(
        transitions(&changes),
        [(State::Closed, State::Open, true)],
        "the hook saw it"
    );
    let change = changes.lock().expect("lock")[0].clone();
    assert_eq!(change.cooldown, None);

    // Long past any cool-down, both stacks still refuse, without touching the upstream.
    advance(COOLDOWN * 30).await;
    for result in [call(&mut plain, 0).await, call(&mut boxed, 0).await] {
        let open = circuit_open(&result).expect("refused");
        assert_eq!(open.retry_in(), COOLDOWN, "the hint is the base cool-down");
    }
    assert_eq!(upstream.calls(), 2);
    assert_eq!(handle.state(), State::Open);
    assert_eq!(handle.stats().rejected, 2);

    // Forcing it again changes nothing and says nothing.
    handle.force_open();
    assert_eq!(handle.stats().opened, 1);
    assert_eq!(transitions(&changes).len(), 1);

    handle.reset();
    let stats = handle.stats();
    assert_eq!(stats.state, State::Closed);
    assert!(!stats.forced_open);
    assert_eq!(stats.time_in_state, Duration::ZERO);
    assert_eq!(
        transitions(&changes),
        [
            (State::Closed, State::Open, true),
            (State::Open, State::Closed, true)
        ]
    );
    call(&mut plain, 0).await.expect("closed again");
    call(&mut boxed, 0).await.expect("closed again");
    assert_eq!(upstream.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn reset_after_a_trip_closes_it_with_empty_counts() {
    let upstream = Upstream::new(503);
    let (changes, hook) = recorded();
    let layer = CircuitBreakerLayer::builder()
        .cooldown(COOLDOWN)
        .cooldown_backoff(2.0, COOLDOWN * 8)
        .on_state_change(hook)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = layer.layer(upstream.service());

    for _ in 0..40 {
        call(&mut svc, 0).await.expect("a 503 is a response");
    }
    assert_eq!(handle.state(), State::Open);
    // A failed probe grows the cool-down to 20 s.
    advance(COOLDOWN).await;
    call(&mut svc, 0).await.expect("the probe");
    assert_eq!(handle.stats().next_probe_in, Some(COOLDOWN * 2));

    handle.reset();
    let stats = handle.stats();
    assert_eq!(stats.state, State::Closed);
    assert_eq!((stats.window_calls, stats.window_failures), (0, 0));
    assert_eq!(stats.failures, 41, "running totals stay");
    assert_eq!(
        transitions(&changes),
        [
            (State::Closed, State::Open, false),
            (State::Open, State::HalfOpen, false),
            (State::HalfOpen, State::Open, false),
            (State::Open, State::Closed, true),
        ]
    );

    // The window starts again from nothing: 39 more failures do not open it, the 40th does,
    // and the cool-down is back to its base.
    for _ in 0..39 {
        call(&mut svc, 0).await.expect("a 503 is a response");
    }
    assert_eq!(handle.state(), State::Closed);
    call(&mut svc, 0).await.expect("a 503 is a response");
    let stats = handle.stats();
    assert_eq!(stats.state, State::Open);
    assert_eq!(stats.next_probe_in, Some(COOLDOWN));
}

#[tokio::test(start_paused = true)]
async fn reset_while_closed_clears_the_counts_without_an_event() {
    let upstream = Upstream::new(500);
    let (changes, hook) = recorded();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .on_state_change(hook)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = layer.layer(upstream.service());
    for _ in 0..4 {
        call(&mut svc, 0).await.expect("a 500 is a response");
    }
    let stats = handle.stats();
    assert_eq!((stats.consecutive_failures, stats.window_failures), (4, 4));

    handle.reset();
    let stats = handle.stats();
    assert_eq!((stats.consecutive_failures, stats.window_failures), (0, 0));
    assert!(transitions(&changes).is_empty());
    call(&mut svc, 0).await.expect("a 500 is a response");
    assert_eq!(
        handle.state(),
        State::Closed,
        "one failure, not five in a row"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_across_a_reset_is_not_counted() {
    let upstream = Upstream::new(500);
    upstream.set_latency(Duration::from_secs(1));
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let svc = layer.layer(upstream.service());
    let in_flight = common::spawn_call(svc);
    tokio::task::yield_now().await;
    handle.reset();
    in_flight.await.expect("task").expect("a 500 is a response");
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.stats().failures, 1, "counted in the totals only");
}

#[tokio::test(start_paused = true)]
async fn force_open_on_a_cool_down_holds_it_without_an_event() {
    let upstream = Upstream::new(500);
    let (changes, hook) = recorded();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .cooldown(COOLDOWN)
        .on_state_change(hook)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = layer.layer(upstream.service());
    call(&mut svc, 0).await.expect("a 500 is a response");
    assert_eq!(handle.stats().next_probe_in, Some(COOLDOWN));

    handle.force_open();
    assert!(handle.stats().forced_open);
    assert_eq!(transitions(&changes), [(State::Closed, State::Open, false)]);
    upstream.set(200);
    advance(COOLDOWN * 2).await;
    assert!(circuit_open(&call(&mut svc, 0).await).is_some(), "no probe");
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn reset_all_closes_every_key() {
    let (changes, hook) = recorded();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .on_state_change(hook)
        .build_keyed(|req: &u8| *req, 8)
        .expect("valid");
    let handle = layer.handle();
    let upstream = Upstream::new(500);
    let mut svc = layer.layer(upstream.service());
    for key in [1, 2] {
        call(&mut svc, key).await.expect("a 500 is a response");
    }
    let healthy = Upstream::new(200);
    let mut other = ServiceBuilder::new()
        .layer(layer.clone())
        .service(healthy.service());
    call(&mut other, 3).await.expect("key 3 is fine");
    for key in [1, 2] {
        let breaker = handle.get(&key).expect("known key");
        assert_eq!(breaker.state(), State::Open);
        assert!(circuit_open(&call(&mut other, key).await).is_some());
    }

    handle.reset_all();
    for key in [1, 2, 3] {
        assert_eq!(handle.get(&key).expect("kept").state(), State::Closed);
    }
    let forced: Vec<_> = changes
        .lock()
        .expect("lock")
        .iter()
        .filter(|c| c.forced)
        .map(|c| (c.key.as_deref().map(str::to_owned), c.from, c.to))
        .collect();
    assert_eq!(
        forced.len(),
        2,
        "one event per breaker that was open: {forced:?}"
    );
    assert!(
        forced
            .iter()
            .all(|(_, from, to)| (*from, *to) == (State::Open, State::Closed))
    );
    upstream.set(200);
    call(&mut other, 1).await.expect("closed again");

    // One key's breaker is steered through its own handle.
    handle.get(&3).expect("known key").force_open();
    assert!(circuit_open(&call(&mut svc, 3).await).is_some());
    call(&mut svc, 1).await.expect("other keys unaffected");
}
