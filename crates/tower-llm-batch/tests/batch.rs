//! Batching behaviour against `service_fn` inner services, in paused time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_batch::{
    BatchClosed, BatchFailed, BatchLayer, ItemMissing, LengthMismatch, PackAdapter,
};
use tower_llm_core::{
    BoxError, Classify, DefaultClassifier, FailureKind, RateLimited, UpstreamError,
    classify_dyn_error,
};

/// Every batch the inner service received, in order.
type Seen = Arc<Mutex<Vec<Vec<u32>>>>;

/// An inner service answering `x * 10` for each `x`, after `latency`, recording its batches.
fn recording(
    latency: Duration,
) -> (
    Seen,
    impl Service<Vec<u32>, Response = Vec<u32>, Error = BoxError, Future: Send> + Send + 'static,
) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let service = service_fn(move |batch: Vec<u32>| {
        record.lock().expect("not poisoned").push(batch.clone());
        async move {
            tokio::time::sleep(latency).await;
            Ok::<_, BoxError>(batch.into_iter().map(|x| x * 10).collect())
        }
    });
    (seen, service)
}

fn batches(seen: &Seen) -> Vec<Vec<u32>> {
    seen.lock().expect("not poisoned").clone()
}

async fn call<S>(mut service: S, x: u32) -> Result<u32, BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    service.ready().await?.call(x).await
}

#[tokio::test(start_paused = true)]
async fn full_batches_go_at_once_and_each_caller_gets_its_own_result() {
    let (seen, inner) = recording(Duration::from_millis(30));
    let layer = BatchLayer::builder()
        .max_items(12)
        .max_wait(Duration::from_secs(10))
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    let handle = layer.handle();
    let start = Instant::now();
    let results = join_all((0..24).map(|x| call(service.clone(), x))).await;
    for (x, result) in results.into_iter().enumerate() {
        assert_eq!(result.expect("answered"), x as u32 * 10);
    }
    // Both batches were full, so neither waited for max_wait.
    assert_eq!(start.elapsed(), Duration::from_millis(30));
    let sent = batches(&seen);
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|b| b.len() == 12));
    let stats = service.stats();
    assert_eq!(stats.batches, 2);
    assert_eq!(stats.flushed_full, 2);
    assert_eq!(stats.items_sent, 24);
    assert_eq!(stats.largest_batch, 12);
    assert_eq!(stats.in_flight_batches, 0);
    assert_eq!(stats.waiting, 0);
    drop(service);
    assert_eq!(handle.stats(), stats);
}

#[tokio::test(start_paused = true)]
async fn max_wait_flushes_a_partial_batch() {
    let (seen, inner) = recording(Duration::ZERO);
    let service = BatchLayer::builder()
        .max_items(10)
        .max_wait(Duration::from_millis(50))
        .build()
        .expect("valid")
        .layer(inner);
    let start = Instant::now();
    let callers: Vec<_> = (1..=3)
        .map(|x| tokio::spawn(call(service.clone(), x)))
        .collect();
    tokio::time::sleep(Duration::from_millis(49)).await;
    assert!(batches(&seen).is_empty(), "sent before max_wait");
    for (x, caller) in (1..=3).zip(callers) {
        assert_eq!(caller.await.expect("no panic").expect("answered"), x * 10);
    }
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert_eq!(batches(&seen), vec![vec![1, 2, 3]]);
    let stats = service.stats();
    assert_eq!(stats.flushed_wait, 1);
    assert_eq!(stats.total_wait, Duration::from_millis(150));
    assert_eq!(stats.mean_wait(), Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_caller_is_left_out_of_the_unsent_batch_and_frees_its_place_at_once() {
    let (seen, inner) = recording(Duration::from_millis(100));
    let service = BatchLayer::builder()
        .max_items(2)
        .max_in_flight(1)
        .capacity(3)
        .max_wait(Duration::from_millis(50))
        .build()
        .expect("valid")
        .layer(inner);
    let start = Instant::now();
    // 1 and 2 fill a batch that goes at once; 3 waits for the next one.
    let first = tokio::spawn(call(service.clone(), 1));
    let second = tokio::spawn(call(service.clone(), 2));
    let dropped = tokio::spawn(call(service.clone(), 3));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut fourth = service.clone();
    let ready = std::future::poll_fn(|cx| Poll::Ready(fourth.poll_ready(cx))).await;
    assert!(ready.is_pending(), "capacity is 3");
    dropped.abort();
    assert!(dropped.await.expect_err("aborted").is_cancelled());
    // Its place is free at once, not when its batch would have gone.
    let ready = std::future::poll_fn(|cx| Poll::Ready(fourth.poll_ready(cx))).await;
    assert!(matches!(ready, Poll::Ready(Ok(()))));
    let fourth = tokio::spawn(fourth.call(4));
    assert_eq!(first.await.expect("no panic").expect("answered"), 10);
    assert_eq!(second.await.expect("no panic").expect("answered"), 20);
    assert_eq!(fourth.await.expect("no panic").expect("answered"), 40);
    assert_eq!(batches(&seen), vec![vec![1, 2], vec![4]]);
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(service.stats().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn a_batch_whose_callers_all_left_is_not_sent() {
    let (seen, inner) = recording(Duration::ZERO);
    let service = BatchLayer::builder()
        .max_wait(Duration::from_millis(50))
        .build()
        .expect("valid")
        .layer(inner);
    let gone = tokio::spawn(call(service.clone(), 1));
    tokio::time::sleep(Duration::from_millis(1)).await;
    gone.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(batches(&seen).is_empty());
    let stats = service.stats();
    assert_eq!(
        (stats.batches, stats.flushed_wait),
        (0, 0),
        "no batch was sent"
    );
    assert_eq!(stats.cancelled, 1);
    assert_eq!(call(service.clone(), 2).await.expect("answered"), 20);
    assert_eq!(batches(&seen), vec![vec![2]]);
    let stats = service.stats();
    assert_eq!((stats.batches, stats.flushed_wait), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn an_inner_failure_reaches_every_caller_classified() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let inner = service_fn(move |_batch: Vec<u32>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            Err::<Vec<u32>, BoxError>(Box::new(
                UpstreamError::new(FailureKind::Overloaded, "busy")
                    .with_retry_after(Some(Duration::from_secs(3))),
            ))
        }
    });
    let service = BatchLayer::builder()
        .max_items(5)
        .build()
        .expect("valid")
        .layer(inner);
    let results = join_all((0..5).map(|x| call(service.clone(), x))).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for result in results {
        let error = result.expect_err("the batch failed");
        let failed = error.downcast_ref::<BatchFailed>().expect("a BatchFailed");
        assert_eq!(failed.batch_size(), 5);
        assert!(failed.inner().is::<UpstreamError>());
        let failure = classify_dyn_error(&*error);
        assert_eq!(failure.kind, FailureKind::Overloaded);
        assert_eq!(failure.retry_after, Some(Duration::from_secs(3)));
        let outcome = DefaultClassifier.classify(Err::<&(), _>(&error));
        assert_eq!(outcome.kind(), Some(FailureKind::Overloaded));
    }
    assert_eq!(service.stats().failed_batches, 1);
}

#[tokio::test(start_paused = true)]
async fn max_weight_seals_before_the_limit_is_passed() {
    let (seen, inner) = recording(Duration::ZERO);
    let service = BatchLayer::builder()
        .max_items(100)
        .max_weight(10, |x: &u32| u64::from(*x))
        .max_wait(Duration::from_millis(5))
        .build()
        .expect("valid")
        .layer(inner);
    let weights = [4, 5, 3, 7, 20, 1, 9];
    let results = join_all(weights.map(|x| call(service.clone(), x))).await;
    assert!(results.iter().all(Result::is_ok));
    // 4+5 (3 would pass 10), 3+7 (reaches 10), 20 alone, 1+9.
    assert_eq!(
        batches(&seen),
        vec![vec![4, 5], vec![3, 7], vec![20], vec![1, 9]]
    );
    assert_eq!(service.stats().flushed_weight, 4);
}

#[tokio::test(start_paused = true)]
async fn in_flight_batches_are_bounded_and_callers_feel_backpressure() {
    let concurrent = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (c, p) = (Arc::clone(&concurrent), Arc::clone(&peak));
    let inner = service_fn(move |batch: Vec<u32>| {
        let now = c.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(now, Ordering::SeqCst);
        let c = Arc::clone(&c);
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(batch)
        }
    });
    let service = BatchLayer::builder()
        .max_items(2)
        .max_in_flight(1)
        .capacity(4)
        .max_wait(Duration::from_millis(1))
        .build()
        .expect("valid")
        .layer(inner);
    let start = Instant::now();
    let callers: Vec<_> = (0..4)
        .map(|x| tokio::spawn(call(service.clone(), x)))
        .collect();
    tokio::task::yield_now().await;
    // Four requests admitted: the fifth waits in poll_ready.
    let mut fifth = service.clone();
    let ready = std::future::poll_fn(|cx| Poll::Ready(fifth.poll_ready(cx))).await;
    assert!(ready.is_pending());
    // `call` without readiness is refused at once, as rate limited.
    let refused = fifth.call(9).await.expect_err("queue full");
    assert!(refused.is::<RateLimited>());
    assert_eq!(service.stats().rejected, 1);
    let fifth_answer = call(fifth, 4).await.expect("answered");
    assert_eq!(fifth_answer, 4);
    assert!(start.elapsed() >= Duration::from_millis(100));
    for caller in callers {
        caller.await.expect("no panic").expect("answered");
    }
    assert_eq!(peak.load(Ordering::SeqCst), 1);
    // Two full batches one after the other, then the fifth alone, sent when the second
    // returned (its max_wait was long over by then).
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn pack_adapter_fails_only_the_item_it_cannot_unpack() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&sent);
    // A "chat" upstream: one prompt holding numbered questions, one answer per line.
    let inner = service_fn(move |prompt: String| {
        record.lock().expect("not poisoned").push(prompt.clone());
        async move {
            let answers: Vec<String> = prompt
                .lines()
                .map(|line| match line.split_once(". ") {
                    Some((n, q)) if q != "unanswerable" => format!("{n}. {}", q.to_uppercase()),
                    Some((n, _)) => format!("{n}."),
                    None => String::new(),
                })
                .collect();
            Ok::<_, BoxError>(answers.join("\n"))
        }
    });
    let pack = |prompts: Vec<String>| {
        prompts
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}. {p}", i + 1))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let unpack = |answer: String, count: usize| {
        let lines: Vec<&str> = answer.lines().collect();
        (0..count)
            .map(|i| {
                let prefix = format!("{}. ", i + 1);
                match lines.get(i).and_then(|l| l.strip_prefix(&prefix)) {
                    Some(text) if !text.is_empty() => Ok(text.to_owned()),
                    _ => Err(format!("no answer for question {}", i + 1)),
                }
            })
            .collect::<Vec<Result<String, String>>>()
    };
    let service = BatchLayer::packed(pack, unpack)
        .max_items(3)
        .build()
        .expect("valid")
        .layer(inner);
    let prompts = ["red", "unanswerable", "blue"];
    let results = join_all(prompts.map(|p| {
        let mut service = service.clone();
        async move { service.ready().await?.call(p.to_owned()).await }
    }))
    .await;
    assert_eq!(
        sent.lock().expect("not poisoned").as_slice(),
        ["1. red\n2. unanswerable\n3. blue"]
    );
    assert_eq!(results[0].as_deref().expect("answered"), "RED");
    let error = results[1].as_ref().expect_err("garbled");
    assert_eq!(error.to_string(), "no answer for question 2");
    assert_eq!(results[2].as_deref().expect("answered"), "BLUE");
}

#[tokio::test(start_paused = true)]
async fn pack_adapter_keys_keep_batches_apart_and_short_unpacks_fail_the_rest() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&sent);
    let inner = service_fn(move |batch: Vec<(String, u32)>| {
        record.lock().expect("not poisoned").push(batch.clone());
        async move { Ok::<_, BoxError>(batch) }
    });
    let adapter = PackAdapter::new(
        |items: Vec<(String, u32)>| items,
        // Answers all but the last item.
        |batch: Vec<(String, u32)>, count: usize| {
            batch
                .into_iter()
                .take(count - 1)
                .map(|(_, x)| Ok::<_, BoxError>(x))
                .collect::<Vec<_>>()
        },
    )
    .key_by(|(model, _): &(String, u32)| model.clone());
    let service = BatchLayer::builder()
        .adapter(adapter)
        .max_wait(Duration::from_millis(5))
        .build()
        .expect("valid")
        .layer(inner);
    let requests = [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5)];
    let results = join_all(requests.map(|(model, x)| {
        let mut service = service.clone();
        async move { service.ready().await?.call((model.to_owned(), x)).await }
    }))
    .await;
    let mut sent = sent.lock().expect("not poisoned").clone();
    sent.sort();
    assert_eq!(sent.len(), 2);
    assert!(sent[0].iter().all(|(m, _)| m == "a"));
    assert!(sent[1].iter().all(|(m, _)| m == "b"));
    assert_eq!(*results[0].as_ref().expect("answered"), 1);
    assert_eq!(*results[1].as_ref().expect("answered"), 2);
    assert_eq!(*results[2].as_ref().expect("answered"), 3);
    let missing = results[3].as_ref().expect_err("last of b");
    assert_eq!(
        missing
            .downcast_ref::<ItemMissing>()
            .map(ItemMissing::position),
        Some(1)
    );
    assert!(
        results[4]
            .as_ref()
            .expect_err("last of a")
            .is::<ItemMissing>()
    );
}

#[tokio::test(start_paused = true)]
async fn a_wrong_length_answer_fails_the_whole_batch() {
    let inner = service_fn(|batch: Vec<u32>| async move {
        Ok::<_, BoxError>(batch.into_iter().skip(1).collect::<Vec<_>>())
    });
    let service = BatchLayer::builder()
        .max_items(3)
        .build()
        .expect("valid")
        .layer(inner);
    let results = join_all((0..3).map(|x| call(service.clone(), x))).await;
    for result in results {
        let error = result.expect_err("mismatch");
        let mismatch = error.downcast_ref::<LengthMismatch>().expect("typed");
        assert_eq!((mismatch.sent(), mismatch.received()), (3, 2));
    }
}

#[derive(Clone)]
struct NeverReady;

impl Service<Vec<u32>> for NeverReady {
    type Response = Vec<u32>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Vec<u32>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err(Box::new(UpstreamError::new(
            FailureKind::Transport,
            "pool closed",
        ))))
    }

    fn call(&mut self, batch: Vec<u32>) -> Self::Future {
        std::future::ready(Ok(batch))
    }
}

#[tokio::test(start_paused = true)]
async fn an_inner_readiness_failure_stops_the_batcher_with_its_error() {
    let service = BatchLayer::builder()
        .max_items(2)
        .build()
        .expect("valid")
        .layer(NeverReady);
    let results = join_all((0..2).map(|x| call(service.clone(), x))).await;
    for result in results {
        let error = result.expect_err("not ready");
        assert!(error.is::<BatchClosed>());
        assert_eq!(classify_dyn_error(&*error).kind, FailureKind::Transport);
    }
    // Later callers are told at once, from `call`, not `poll_ready`.
    let later = call(service.clone(), 7).await.expect_err("stopped");
    assert!(later.is::<BatchClosed>());
    assert_eq!(classify_dyn_error(&*later).kind, FailureKind::Transport);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_sends_what_is_queued() {
    let (seen, inner) = recording(Duration::ZERO);
    let mut service = BatchLayer::builder()
        .max_wait(Duration::from_secs(3600))
        .build()
        .expect("valid")
        .layer(inner);
    service.ready().await.expect("ready");
    let pending = service.call(5);
    drop(service);
    let start = Instant::now();
    assert_eq!(pending.await.expect("answered"), 50);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(batches(&seen), vec![vec![5]]);
}

#[test]
fn invalid_configuration_names_the_knob() {
    let knob = |builder: tower_llm_batch::BatchBuilder<u32, _>| {
        builder.build().expect_err("invalid").knob().to_owned()
    };
    assert_eq!(knob(BatchLayer::builder().max_items(0)), "max_items");
    assert_eq!(
        knob(BatchLayer::builder().max_in_flight(0)),
        "max_in_flight"
    );
    assert_eq!(
        knob(BatchLayer::builder().max_items(8).capacity(4)),
        "capacity"
    );
    assert_eq!(
        knob(BatchLayer::builder().max_weight(0, |_: &u32| 1)),
        "max_weight"
    );
    let error = BatchLayer::<u32>::builder()
        .max_items(0)
        .build()
        .expect_err("invalid");
    assert!(error.to_string().contains("max_items"));
}

#[test]
fn services_and_futures_can_cross_threads() {
    fn send_sync<T: Send + Sync + Clone>() {}
    fn send<T: Send>() {}
    type Embeddings = tower_llm_batch::Batch<
        http::Request<bytes::Bytes>,
        tower_llm_batch::EmbeddingsAdapter,
        http::Response<bytes::Bytes>,
    >;
    send_sync::<Embeddings>();
    send::<tower_llm_batch::ResponseFuture<http::Response<bytes::Bytes>>>();
    send_sync::<BatchLayer<http::Request<bytes::Bytes>, tower_llm_batch::EmbeddingsAdapter>>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_callers_on_many_threads_each_get_their_own_answer() {
    let (seen, inner) = recording(Duration::ZERO);
    let service = BatchLayer::builder()
        .max_items(16)
        .max_wait(Duration::from_millis(1))
        .max_in_flight(2)
        .capacity(40)
        .build()
        .expect("valid")
        .layer(inner);
    let callers: Vec<_> = (0..2000u32)
        .map(|x| {
            let service = service.clone();
            tokio::spawn(async move {
                // Every seventh caller gives up almost at once.
                if x % 7 == 0 {
                    let _ = tokio::time::timeout(Duration::from_micros(1), call(service, x)).await;
                    None
                } else {
                    Some(call(service, x).await.expect("answered"))
                }
            })
        })
        .collect();
    for (x, caller) in (0..2000u32).zip(callers) {
        if let Some(answer) = caller.await.expect("no panic") {
            assert_eq!(answer, x * 10);
        }
    }
    // Callers who gave up may leave a batch queued or in flight for a moment: let it settle.
    for _ in 0..10_000 {
        let stats = service.stats();
        if stats.waiting == 0 && stats.in_flight_batches == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let sent = batches(&seen);
    let mut all: Vec<u32> = sent.iter().flatten().copied().collect();
    let total = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), total, "a request was sent twice");
    assert!(sent.iter().all(|b| !b.is_empty() && b.len() <= 16));
    let stats = service.stats();
    assert_eq!(stats.items_sent, total as u64);
    assert_eq!(stats.items_sent + stats.cancelled, stats.requests);
}

#[tokio::test(start_paused = true)]
async fn an_endless_max_wait_is_not_a_panic() {
    let (seen, inner) = recording(Duration::ZERO);
    let service = BatchLayer::builder()
        .max_items(2)
        .max_wait(Duration::MAX)
        .build()
        .expect("valid")
        .layer(inner);
    let results = join_all((0..2).map(|x| call(service.clone(), x))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(batches(&seen), vec![vec![0, 1]]);
}

#[tokio::test(start_paused = true)]
async fn max_estimated_tokens_weighs_requests_by_core_estimate() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&sent);
    let inner = service_fn(move |batch: Vec<String>| {
        record.lock().expect("not poisoned").push(batch.len());
        async move { Ok::<_, BoxError>(batch) }
    });
    let service = BatchLayer::builder()
        .max_items(100)
        .max_estimated_tokens(10)
        .max_wait(Duration::from_millis(5))
        .build()
        .expect("valid")
        .layer(inner);
    // 16 ASCII characters estimate at 4 tokens: two fit under 10, a third does not.
    let prompts = vec!["x".repeat(16); 6];
    let results = join_all(prompts.into_iter().map(|p| {
        let mut service = service.clone();
        async move { service.ready().await?.call(p).await }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(*sent.lock().expect("not poisoned"), vec![2, 2, 2]);
}
