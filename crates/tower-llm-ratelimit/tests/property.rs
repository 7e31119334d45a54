//! Over random arrivals, costs, usages, 429s and drops: what is reserved minus what is
//! refunded never exceeds the budget in any window, nothing is sent during a pause, and
//! nothing leaks. Run with every limit on, and with a requests quota alone (the
//! configuration whose completions take no lock).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Req, Res};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;
use tower_llm_core::BoxError;
use tower_llm_ratelimit::{Quota, RateLimitLayer};

const WINDOW: Duration = Duration::from_secs(10);
const TOKENS: u64 = 100;
const REQUESTS: u64 = 6;
const CONCURRENCY: usize = 3;

#[derive(Clone, Debug)]
struct Call {
    /// Milliseconds after the previous arrival.
    gap: u64,
    cost: u64,
    /// Fraction (in percent) of the estimate really used.
    used_percent: u64,
    latency: u64,
    /// Dropped this many milliseconds after it was made, if at all.
    drop_after: Option<u64>,
    /// Answered 429 with a retry hint of this many milliseconds, if at all.
    limited: Option<u64>,
}

fn call() -> impl Strategy<Value = Call> {
    (
        0u64..3_000,
        1u64..=TOKENS,
        0u64..=100,
        0u64..4_000,
        prop::option::weighted(0.3, 0u64..8_000),
        prop::option::weighted(0.1, 1u64..5_000),
    )
        .prop_map(
            |(gap, cost, used_percent, latency, drop_after, limited)| Call {
                gap,
                cost,
                used_percent,
                latency,
                drop_after,
                limited,
            },
        )
}

#[derive(Debug, Default)]
struct Ledger {
    /// (admitted at, cost)
    admitted: Vec<(Duration, u64)>,
    /// (index in admitted, refunded at, amount)
    refunds: Vec<(usize, Duration, u64)>,
    /// (answered 429 at, retry hint)
    pauses: Vec<(Duration, Duration)>,
    running: usize,
    max_running: usize,
}

#[derive(Clone, Copy, Debug)]
enum Setup {
    /// Concurrency, requests and tokens.
    Everything,
    /// A requests quota alone.
    RequestsOnly,
}

fn run(calls: Vec<Call>, setup: Setup) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let start = Instant::now();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let book = ledger.clone();
        let inner = service_fn(move |req: Req| {
            let book = book.clone();
            async move {
                let index = {
                    let mut l = book.lock().expect("ledger");
                    l.admitted.push((start.elapsed(), req.cost));
                    l.running += 1;
                    l.max_running = l.max_running.max(l.running);
                    l.admitted.len() - 1
                };
                // Counted down on drop too: a cancelled call stops running.
                struct Running(Arc<Mutex<Ledger>>);
                impl Drop for Running {
                    fn drop(&mut self) {
                        self.0.lock().expect("ledger").running -= 1;
                    }
                }
                let _running = Running(book.clone());
                tokio::time::sleep(req.latency).await;
                let actual = req.actual.unwrap_or(req.cost);
                let mut l = book.lock().expect("ledger");
                if let Some(Some(hint)) = req.limited {
                    // A 429 reports no usage: its reservation stays.
                    l.pauses.push((start.elapsed(), hint));
                } else {
                    l.refunds.push((index, start.elapsed(), req.cost - actual));
                }
                Ok::<_, BoxError>(Res {
                    id: req.id,
                    usage: req.limited.is_none().then_some(actual),
                    limited: req.limited,
                    headers: http::HeaderMap::new(),
                })
            }
        });
        let builder = RateLimitLayer::builder()
            .requests(Quota::new(REQUESTS, WINDOW).with_burst(3))
            .max_wait(Duration::from_secs(30))
            .max_queue(8);
        let layer = match setup {
            Setup::Everything => builder
                .concurrency(CONCURRENCY)
                .tokens(Quota::new(TOKENS, WINDOW).with_burst(30)),
            Setup::RequestsOnly => builder.tokens(None),
        }
        .build()
        .expect("config");
        let everything = matches!(setup, Setup::Everything);
        let svc = layer.layer(inner);
        let mut handles = Vec::new();
        for (id, c) in calls.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(c.gap)).await;
            let req = Req::new(id as u32)
                .cost(c.cost)
                .actual(c.cost * c.used_percent / 100)
                .latency(Duration::from_millis(c.latency));
            let req = match c.limited {
                Some(ms) => req.limited(Some(Duration::from_millis(ms))),
                None => req,
            };
            let handle = tokio::spawn(svc.clone().oneshot(req));
            if let Some(after) = c.drop_after {
                let abort = handle.abort_handle();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after)).await;
                    abort.abort();
                });
            }
            handles.push(handle);
        }
        for h in handles {
            match h.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => assert!(
                    e.is::<tower_llm_core::RateLimited>(),
                    "only rate-limit refusals expected, got {e}"
                ),
                Err(join) => assert!(join.is_cancelled()),
            }
        }

        let admitted = {
            let l = ledger.lock().expect("ledger");
            assert!(
                !everything || l.max_running <= CONCURRENCY,
                "{} ran at once",
                l.max_running
            );
            for &(at, hint) in &l.pauses {
                let during = l.admitted.iter().filter(|(a, _)| *a > at && *a < at + hint);
                assert_eq!(during.count(), 0, "sent during the pause from {at:?}");
            }
            for &(t, _) in &l.admitted {
                let inside = |a: Duration| a <= t && a + WINDOW > t;
                let requests = l.admitted.iter().filter(|(a, _)| inside(*a)).count() as u64;
                assert!(
                    requests <= REQUESTS,
                    "{requests} requests in the window ending {t:?}"
                );
                let reserved: u64 = l
                    .admitted
                    .iter()
                    .filter(|(a, _)| inside(*a))
                    .map(|x| x.1)
                    .sum();
                let refunded: u64 = l
                    .refunds
                    .iter()
                    .filter(|(i, at, _)| inside(l.admitted[*i].0) && *at <= t)
                    .map(|x| x.2)
                    .sum();
                assert!(
                    !everything || reserved - refunded <= TOKENS,
                    "{reserved} reserved - {refunded} refunded in the window ending {t:?}"
                );
            }
            l.admitted.len() as u64
        };

        // Nothing leaked: no one waits, every slot and every token is back.
        let stats = svc.handle().stats();
        assert_eq!(stats.waiting, 0);
        assert_eq!(stats.admitted, admitted);
        tokio::time::sleep(WINDOW * 3).await;
        if !everything {
            // The whole burst at once: nothing is still queued, paused or owed.
            let before = Instant::now();
            for id in 0..3 {
                svc.clone()
                    .oneshot(Req::new(900 + id))
                    .await
                    .expect("the whole burst");
            }
            assert_eq!(before.elapsed(), Duration::ZERO);
            return;
        }
        // The whole token budget at once: every reservation was given back or expired.
        let before = Instant::now();
        svc.clone()
            .oneshot(Req::new(999).cost(TOKENS))
            .await
            .expect("the whole budget");
        assert_eq!(before.elapsed(), Duration::ZERO);
        tokio::time::sleep(WINDOW * 3).await;
        let before = Instant::now();
        let mut full = Vec::new();
        for id in 0..CONCURRENCY {
            let req = Req::new(1_000 + id as u32)
                .cost(1)
                .latency(Duration::from_secs(1));
            full.push(tokio::spawn(svc.clone().oneshot(req)));
        }
        for h in full {
            h.await.expect("join").expect("call");
        }
        // All at once: no dropped call still holds a concurrency slot.
        // (The timer wheel rounds a sleep up to the next millisecond.)
        assert!(
            before.elapsed() < Duration::from_millis(1_005),
            "{:?}",
            before.elapsed()
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn budget_holds_in_every_window_and_nothing_leaks(calls in prop::collection::vec(call(), 1..40)) {
        run(calls, Setup::Everything);
    }

    #[test]
    fn a_requests_quota_alone_holds_its_window_and_its_pauses(
        calls in prop::collection::vec(call(), 1..40),
    ) {
        run(calls, Setup::RequestsOnly);
    }
}
