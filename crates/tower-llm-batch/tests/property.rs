//! Property test of the batcher as a state machine: random arrivals, limits, latencies and
//! cancellations, checking the invariants a caller relies on.

use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::future::join_all;
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_batch::BatchLayer;
use tower_llm_core::BoxError;

#[derive(Clone, Debug)]
struct Caller {
    arrival_ms: u64,
    weight: u64,
    give_up_after_ms: Option<u64>,
}

fn caller() -> impl Strategy<Value = Caller> {
    (0u64..40, 1u64..6, prop::option::weighted(0.3, 0u64..60)).prop_map(
        |(arrival_ms, weight, give_up_after_ms)| Caller {
            arrival_ms,
            weight,
            give_up_after_ms,
        },
    )
}

/// Every batch the inner service received, with when it was sent.
type SentBatches = Arc<Mutex<Vec<(Instant, Vec<(u64, u64)>)>>>;

/// What a caller saw: its answer, or the moment it gave up.
enum Seen {
    Answer(Result<u64, BoxError>),
    GaveUp(Instant),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn batches_respect_limits_and_answers_never_cross(
        callers in prop::collection::vec(caller(), 1..40),
        max_items in 1usize..8,
        max_weight in prop::option::of(3u64..15),
        max_wait_ms in 0u64..20,
        max_in_flight in 1usize..4,
        extra_capacity in 0usize..6,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            // Each request is (caller id, weight); each answer is a function of the id.
            let sent: SentBatches = Arc::default();
            let record = Arc::clone(&sent);
            let inner = service_fn(move |batch: Vec<(u64, u64)>| {
                record.lock().expect("not poisoned").push((Instant::now(), batch.clone()));
                let latency = batch.iter().map(|(id, _)| id).sum::<u64>() % 17;
                async move {
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                    Ok::<_, BoxError>(batch.into_iter().map(|(id, _)| id * 3 + 1).collect())
                }
            });
            let capacity = max_items + extra_capacity;
            let mut builder = BatchLayer::builder()
                .max_items(max_items)
                .max_wait(Duration::from_millis(max_wait_ms))
                .max_in_flight(max_in_flight)
                .capacity(capacity);
            if let Some(limit) = max_weight {
                builder = builder.max_weight(limit, |(_, weight): &(u64, u64)| *weight);
            }
            let service = builder.build().expect("valid").layer(inner);

            let tasks = callers.iter().enumerate().map(|(id, c)| {
                let mut service = service.clone();
                let c = c.clone();
                let id = id as u64;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(c.arrival_ms)).await;
                    let answer = async {
                        service.ready().await?.call((id, c.weight)).await
                    };
                    match c.give_up_after_ms {
                        None => Seen::Answer(answer.await),
                        Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), answer).await {
                            Ok(result) => Seen::Answer(result),
                            Err(_) => Seen::GaveUp(Instant::now()),
                        },
                    }
                })
            });
            let seen: Vec<Seen> = join_all(tasks)
                .await
                .into_iter()
                .map(|r| r.expect("no panic"))
                .collect();
            // Let anything left (batches of callers who gave up) drain.
            tokio::time::sleep(Duration::from_secs(10)).await;

            let sent = sent.lock().expect("not poisoned").clone();
            let mut times_sent = vec![0u32; callers.len()];
            for (at, batch) in &sent {
                assert!(!batch.is_empty(), "an empty batch was sent");
                assert!(batch.len() <= max_items, "batch of {} > {max_items}", batch.len());
                if let Some(limit) = max_weight {
                    let weight: u64 = batch.iter().map(|(_, w)| w).sum();
                    assert!(batch.len() == 1 || weight <= limit, "weight {weight} > {limit}");
                }
                for (id, _) in batch {
                    times_sent[*id as usize] += 1;
                    // A caller who gave up before its batch went is never in it.
                    if let Seen::GaveUp(when) = &seen[*id as usize] {
                        assert!(*when >= *at, "caller {id} gave up before its batch was sent");
                    }
                }
            }
            for (id, outcome) in seen.iter().enumerate() {
                assert!(times_sent[id] <= 1, "caller {id} sent {} times", times_sent[id]);
                if let Seen::Answer(result) = outcome {
                    let answer = result.as_ref().expect("the inner service never fails");
                    assert_eq!(*answer, id as u64 * 3 + 1, "caller {id} got another's answer");
                    assert_eq!(times_sent[id], 1);
                }
            }

            let stats = service.stats();
            let sent_items: u64 = sent.iter().map(|(_, b)| b.len() as u64).sum();
            assert_eq!(stats.items_sent, sent_items);
            assert_eq!(stats.batches, sent.len() as u64);
            assert_eq!(stats.waiting, 0);
            assert_eq!(stats.in_flight_batches, 0);
            assert_eq!(stats.items_sent + stats.cancelled, stats.requests);

            // Every place in the queue was given back.
            let mut handles: Vec<_> = (0..capacity).map(|_| service.clone()).collect();
            for handle in &mut handles {
                let ready = std::future::poll_fn(|cx| Poll::Ready(handle.poll_ready(cx))).await;
                assert!(matches!(ready, Poll::Ready(Ok(()))), "a place was leaked");
            }
        });
    }
}
