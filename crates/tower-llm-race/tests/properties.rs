//! Property tests: random providers (latency, outcome) on a paused clock, checked against a
//! model of what race and fallback must do.

mod common;

use std::time::Duration;

use common::{Mock, Outcome};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_llm_core::FailureKind;
use tower_llm_race::hedge::{HedgeDelay, HedgeLayer};
use tower_llm_race::{AllFailed, FallbackLayer, MarkResponse, RaceLayer, RecordAnswer};

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Ok("ok")),
        1 => Just(Outcome::Status(429)),
        1 => Just(Outcome::Status(503)),
        1 => Just(Outcome::Status(400)),
        1 => Just(Outcome::Status(401)),
        1 => Just(Outcome::Err(FailureKind::Transport)),
        1 => Just(Outcome::Err(FailureKind::CircuitOpen)),
    ]
}

fn providers() -> impl Strategy<Value = Vec<(u64, Outcome)>> {
    proptest::collection::vec((1u64..50, outcome()), 1..6)
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

fn is_success(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Ok(_))
}

fn kind_of(outcome: &Outcome) -> Option<FailureKind> {
    match outcome {
        Outcome::Ok(_) => None,
        Outcome::Status(status) => {
            FailureKind::from_status(http::StatusCode::from_u16(*status).expect("valid"))
        }
        Outcome::Err(kind) => Some(*kind),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// A race answers with a success at the earliest success's latency, every call that
    /// would have ended later is cancelled (ties go to the earlier service), and with no success the error lists every
    /// service's failure after the slowest one.
    #[test]
    fn race_answers_with_the_earliest_success(specs in providers()) {
        paused_runtime().block_on(async {
            let mocks: Vec<Mock> = specs
                .iter()
                .map(|(latency, outcome)| Mock::new(Duration::from_millis(latency * 10), outcome.clone()))
                .collect();
            let race = RaceLayer::new().record_winner(MarkResponse).layer(mocks.clone());
            let start = Instant::now();
            let result = race.oneshot("q".to_string()).await;
            let elapsed = start.elapsed();
            let best = specs
                .iter()
                .filter(|(_, outcome)| is_success(outcome))
                .map(|(latency, _)| Duration::from_millis(latency * 10))
                .min();
            match best {
                Some(best) => {
                    let reply = result.expect("a success exists");
                    prop_assert_eq!(elapsed, best);
                    let winner = reply.answered().expect("marked").service;
                    prop_assert!(is_success(&specs[winner].1));
                    prop_assert_eq!(Duration::from_millis(specs[winner].0 * 10), best);
                    for (index, (mock, (latency, _))) in mocks.iter().zip(&specs).enumerate() {
                        prop_assert_eq!(mock.stats.calls(), 1);
                        // Calls ending at the same instant are looked at in service order:
                        // those after the winner are cancelled.
                        let latency = Duration::from_millis(latency * 10);
                        let ended = latency < best || (latency == best && index <= winner);
                        prop_assert_eq!(mock.stats.completed(), usize::from(ended));
                        prop_assert_eq!(mock.stats.dropped(), usize::from(!ended));
                    }
                }
                None => {
                    let error = result.expect_err("no success");
                    let slowest = specs.iter().map(|(l, _)| Duration::from_millis(l * 10)).max();
                    prop_assert_eq!(Some(elapsed), slowest);
                    let failed = error.downcast_ref::<AllFailed>().expect("AllFailed");
                    prop_assert_eq!(failed.failures().len(), specs.len());
                    for failure in failed.failures() {
                        prop_assert_eq!(Some(failure.kind()), kind_of(&specs[failure.service()].1));
                    }
                }
            }
            Ok(())
        })?;
    }

    /// A fallback calls services strictly in order, each at most once, moves on exactly on
    /// failures worth trying elsewhere, and takes the sum of the latencies it waited for.
    #[test]
    fn fallback_follows_the_rules(specs in providers()) {
        paused_runtime().block_on(async {
            let mocks: Vec<Mock> = specs
                .iter()
                .map(|(latency, outcome)| Mock::new(Duration::from_millis(latency * 10), outcome.clone()))
                .collect();
            let fallback = FallbackLayer::new().record_winner(MarkResponse).layer(mocks.clone());
            let start = Instant::now();
            let result = fallback.oneshot("q".to_string()).await;

            // The model.
            let mut waited = Duration::ZERO;
            let mut tried = 0;
            let mut answer = None;
            let mut stopped = false;
            for (index, (latency, outcome)) in specs.iter().enumerate() {
                tried += 1;
                waited += Duration::from_millis(latency * 10);
                match kind_of(outcome) {
                    None => {
                        answer = Some(index);
                        break;
                    }
                    Some(kind) if kind.is_worth_trying_elsewhere() => {}
                    Some(_) => {
                        stopped = true;
                        break;
                    }
                }
            }

            prop_assert_eq!(start.elapsed(), waited);
            for (index, mock) in mocks.iter().enumerate() {
                prop_assert_eq!(mock.stats.calls(), usize::from(index < tried));
            }
            match answer {
                Some(index) => {
                    let reply = result.expect("a success");
                    let mark = reply.answered().expect("marked");
                    prop_assert_eq!((mark.service, mark.attempts as usize), (index, tried));
                }
                None => {
                    let error = result.expect_err("no success");
                    let failed = error.downcast_ref::<AllFailed>().expect("AllFailed");
                    prop_assert_eq!(failed.is_stopped(), stopped);
                    prop_assert_eq!(failed.failures().len(), tried);
                }
            }
            Ok(())
        })?;
    }

    /// With every provider healthy, a hedge launches service `i` at `i * delay` exactly
    /// when nothing launched before has answered yet, and answers at the earliest answer of
    /// those launched. Latencies end in a different millisecond per service and the delay
    /// is a whole 100 ms, so no two events coincide and the model is exact.
    #[test]
    fn hedge_launches_on_the_delay_and_takes_the_earliest(
        tens in proptest::collection::vec(1u64..60, 1..6),
        max_extra in 1usize..5,
    ) {
        paused_runtime().block_on(async {
            let delay = Duration::from_millis(100);
            let latencies: Vec<Duration> = tens
                .iter()
                .enumerate()
                .map(|(i, t)| Duration::from_millis(t * 10 + i as u64 + 1))
                .collect();
            let mocks: Vec<Mock> = latencies
                .iter()
                .map(|latency| Mock::new(*latency, Outcome::Ok("ok")))
                .collect();
            let hedge = HedgeLayer::builder().record_winner(MarkResponse)
                .delay(HedgeDelay::Fixed(delay))
                .max_extra_attempts(max_extra)
                .unlimited_budget()
                .build()
                .expect("valid")
                .layer(mocks.clone());
            let start = Instant::now();
            let reply = hedge.oneshot("q".to_string()).await.expect("all healthy");

            // The model.
            let mut earliest: Option<(Duration, usize)> = None;
            let mut launched = 0;
            for (i, latency) in latencies.iter().enumerate().take(max_extra + 1) {
                let at = delay * i as u32;
                if earliest.is_some_and(|(answer, _)| answer < at) {
                    break;
                }
                launched += 1;
                let answer = at + *latency;
                if earliest.is_none_or(|(best, _)| answer < best) {
                    earliest = Some((answer, i));
                }
            }
            let (answer_at, winner) = earliest.expect("at least one launch");

            prop_assert_eq!(start.elapsed(), answer_at);
            let mark = reply.answered().expect("marked");
            prop_assert_eq!((mark.service, mark.attempts as usize), (winner, launched));
            for (i, mock) in mocks.iter().enumerate() {
                prop_assert_eq!(mock.stats.calls(), usize::from(i < launched));
                prop_assert_eq!(mock.stats.completed(), usize::from(i == winner));
                prop_assert_eq!(mock.stats.dropped(), usize::from(i < launched && i != winner));
            }
            Ok(())
        })?;
    }

    /// Whatever the providers do, a hedge calls services in order, at most once each and at
    /// most `1 + max_extra` in all; answers only with a success; and leaves no call running.
    #[test]
    fn hedge_invariants_under_failures(specs in providers(), max_extra in 1usize..5) {
        paused_runtime().block_on(async {
            let mocks: Vec<Mock> = specs
                .iter()
                .map(|(latency, outcome)| Mock::new(Duration::from_millis(latency * 10), outcome.clone()))
                .collect();
            let hedge = HedgeLayer::builder().record_winner(MarkResponse)
                .delay(HedgeDelay::Fixed(Duration::from_millis(150)))
                .max_extra_attempts(max_extra)
                .unlimited_budget()
                .build()
                .expect("valid")
                .layer(mocks.clone());
            let result = hedge.oneshot("q".to_string()).await;
            let calls: Vec<usize> = mocks.iter().map(|m| m.stats.calls()).collect();
            let launched = calls.iter().sum::<usize>();
            prop_assert!(launched >= 1 && launched <= max_extra + 1);
            prop_assert!(calls.iter().all(|&c| c <= 1));
            prop_assert!(calls.windows(2).all(|w| w[0] >= w[1]), "in order: {:?}", calls);
            for mock in &mocks {
                prop_assert_eq!(mock.stats.completed() + mock.stats.dropped(), mock.stats.calls());
            }
            match result {
                Ok(reply) => {
                    let mark = reply.answered().expect("marked");
                    prop_assert!(is_success(&specs[mark.service].1));
                    prop_assert_eq!(mark.attempts, launched);
                }
                Err(error) => {
                    let failed = error.downcast_ref::<AllFailed>().expect("AllFailed");
                    prop_assert_eq!(failed.failures().len(), launched);
                    for failure in failed.failures() {
                        prop_assert!(!is_success(&specs[failure.service()].1));
                    }
                }
            }
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A fallback over hedges, all handed one shared budget, whatever the providers do and
    /// however many requests run at once: each request is counted once, every upstream call
    /// past a request's first was paid by exactly one withdrawal, and withdrawals never
    /// exceed what the requests earned.
    #[test]
    fn a_shared_budget_pays_for_every_extra_call_exactly_once(
        specs in proptest::collection::vec((1u64..50, outcome()), 4),
        ratio_pct in 0u32..150,
        requests in 1usize..25,
    ) {
        paused_runtime().block_on(async {
            let ratio = f64::from(ratio_pct) / 100.0;
            let budget = tower_llm_core::AttemptBudget::new(
                tower_llm_core::BudgetConfig::new(ratio)
                    .window(Duration::from_secs(3600))
                    .min_per_second(0),
            )
            .expect("valid");
            let mocks: Vec<Mock> = specs
                .iter()
                .map(|(latency, outcome)| Mock::new(Duration::from_millis(latency * 10), outcome.clone()))
                .collect();
            let hedge = |pair: &[Mock]| {
                HedgeLayer::builder()
                    .delay(HedgeDelay::Fixed(Duration::from_millis(100)))
                    .shared_budget(budget.clone())
                    .build()
                    .expect("valid")
                    .layer(pair.to_vec())
            };
            let fallback = FallbackLayer::new()
                .shared_budget(budget.clone())
                .layer(vec![hedge(&mocks[..2]), hedge(&mocks[2..])]);
            let calls: Vec<_> = (0..requests)
                .map(|_| tokio::spawn(fallback.clone().oneshot("q".to_string())))
                .collect();
            for call in calls {
                let _ = call.await.expect("no panic");
            }
            let upstream: usize = mocks.iter().map(|m| m.stats.calls()).sum();
            let stats = budget.stats();
            prop_assert_eq!(stats.requests, requests as u64);
            prop_assert_eq!(upstream as u64, stats.requests + stats.withdrawals());
            prop_assert!(stats.withdrawals() as f64 <= ratio * requests as f64 + 1e-9);
            Ok(())
        })?;
    }
}
