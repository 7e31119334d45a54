//! The layer contract for batch: one layer value, one batcher; a batch nobody waits for is
//! cancelled.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_llm_batch::BatchLayer;

#[tokio::test(start_paused = true)]
async fn two_stacks_from_one_layer_value_share_one_batcher() {
    let first_calls = Arc::new(AtomicUsize::new(0));
    let second_calls = Arc::new(AtomicUsize::new(0));
    let upstream = |calls: Arc<AtomicUsize>| {
        service_fn(move |batch: Vec<u32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(batch.into_iter().map(|x| x * 10).collect::<Vec<_>>()) }
        })
    };
    let layer = BatchLayer::builder()
        .max_items(2)
        .max_wait(Duration::from_secs(1))
        .build()
        .expect("valid");
    let handle = layer.handle();
    let whole = layer.layer(upstream(Arc::clone(&first_calls)));
    let streaming = layer.clone().layer(upstream(Arc::clone(&second_calls)));

    let (a, b) = tokio::join!(whole.oneshot(1), streaming.oneshot(2));
    assert_eq!((a.expect("answered"), b.expect("answered")), (10, 20));
    // One batch of two, sent at once because it was full: the requests met in one batcher,
    // driven by the first inner service.
    let stats = handle.stats();
    assert_eq!(stats.batches, 1);
    assert_eq!(stats.flushed_full, 1);
    assert_eq!(first_calls.load(Ordering::SeqCst), 1);
    assert_eq!(second_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn another_layer_value_is_another_batcher() {
    let upstream = service_fn(|batch: Vec<u32>| async move { Ok::<_, BoxError>(batch) });
    let build = || {
        BatchLayer::builder()
            .max_items(2)
            .max_wait(Duration::from_millis(50))
            .build()
            .expect("valid")
    };
    let (one, two) = (build(), build());
    let (a, b) = tokio::join!(
        one.layer(upstream).oneshot(1),
        two.layer(upstream).oneshot(2)
    );
    assert_eq!((a.expect("answered"), b.expect("answered")), (1, 2));
    assert_eq!(one.handle().stats().batches, 1);
    assert_eq!(two.handle().stats().batches, 1);
    // Neither batch filled: the two requests never met.
    assert_eq!(one.handle().stats().flushed_full, 0);
    assert_eq!(two.handle().stats().flushed_full, 0);
}

/// Drops with the inner call's future, so the test sees the call cancelled.
struct Cancelled(Arc<AtomicBool>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_sent_batch_whose_callers_all_left_is_cancelled_and_frees_its_slot() {
    let calls = Arc::new(AtomicUsize::new(0));
    let first_dropped = Arc::new(AtomicBool::new(false));
    let upstream = {
        let (calls, first_dropped) = (Arc::clone(&calls), Arc::clone(&first_dropped));
        service_fn(move |batch: Vec<u32>| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            let guard = first.then(|| Cancelled(Arc::clone(&first_dropped)));
            async move {
                let _guard = guard;
                if first {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok::<_, BoxError>(batch)
            }
        })
    };
    let layer = BatchLayer::builder()
        .max_items(1)
        .max_in_flight(1)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut service = layer.layer(upstream);

    let abandoned = service.ready().await.expect("ready").call(1);
    let abandoned = tokio::spawn(abandoned);
    // Let the batching task send the first batch, then its only caller leaves.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    abandoned.abort();
    let _ = abandoned.await;

    let start = Instant::now();
    let answer = service.ready().await.expect("ready").call(2).await;
    assert_eq!(answer.expect("answered"), 2);
    // The new request did not wait behind the 60 s call nobody wanted.
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(
        first_dropped.load(Ordering::SeqCst),
        "the abandoned call was dropped"
    );
    let stats = handle.stats();
    assert_eq!(stats.abandoned_batches, 1);
    assert_eq!(stats.batches, 2);
    assert_eq!(stats.in_flight_batches, 0);
}

/// What became of one inner call: its future was dropped, and whether it had finished.
#[derive(Default)]
struct CallFate {
    dropped: AtomicBool,
    finished: AtomicBool,
}

/// Marks its call's fate when the call's future drops it.
struct Watched(Arc<CallFate>);

impl Drop for Watched {
    fn drop(&mut self) {
        self.0.dropped.store(true, Ordering::SeqCst);
    }
}

/// Two callers share a sent batch: one leaving does not cancel it (the other still gets its
/// answer, when the upstream gives it); both leaving does, at once, and the batch's only
/// in-flight slot goes to the next request without waiting for the upstream.
#[tokio::test(start_paused = true)]
async fn a_sent_batch_is_cancelled_only_when_its_last_caller_leaves() {
    const UPSTREAM: Duration = Duration::from_secs(60);
    let fates: Arc<std::sync::Mutex<Vec<Arc<CallFate>>>> = Arc::default();
    let upstream = {
        let fates = Arc::clone(&fates);
        service_fn(move |batch: Vec<u32>| {
            let fate = Arc::new(CallFate::default());
            fates.lock().unwrap().push(Arc::clone(&fate));
            let guard = Watched(Arc::clone(&fate));
            async move {
                let _guard = guard;
                tokio::time::sleep(UPSTREAM).await;
                fate.finished.store(true, Ordering::SeqCst);
                Ok::<_, BoxError>(batch.into_iter().map(|x| x * 10).collect::<Vec<_>>())
            }
        })
    };
    let layer = BatchLayer::builder()
        .max_items(2)
        .max_wait(Duration::from_millis(5))
        .max_in_flight(1)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let service = layer.layer(upstream);
    let fate = |i: usize| Arc::clone(&fates.lock().unwrap()[i]);

    // One caller of a full batch leaves; the batch goes on for the other.
    let start = Instant::now();
    let leaving = tokio::spawn(service.clone().oneshot(1));
    let staying = tokio::spawn(service.clone().oneshot(2));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(fates.lock().unwrap().len(), 1, "one batch sent");
    leaving.abort();
    assert!(leaving.await.unwrap_err().is_cancelled());
    assert_eq!(staying.await.unwrap().expect("answered"), 20);
    assert_eq!(start.elapsed(), UPSTREAM);
    let first = fate(0);
    assert!(
        first.finished.load(Ordering::SeqCst),
        "the batch ran to its end"
    );
    assert_eq!(handle.stats().abandoned_batches, 0);

    // Both callers of the next batch leave: its call is dropped unfinished, at once.
    let one = tokio::spawn(service.clone().oneshot(3));
    let two = tokio::spawn(service.clone().oneshot(4));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(fates.lock().unwrap().len(), 2, "the second batch sent");
    let second = fate(1);
    one.abort();
    let _ = one.await;
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    assert!(!second.dropped.load(Ordering::SeqCst), "one caller is left");
    two.abort();
    let _ = two.await;
    let left = Instant::now();
    // At once: a few turns of the scheduler, before any time passes, and the upstream's
    // future is gone (not left to run out its 60 s, nor dropped only when a new request
    // needs the slot).
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    assert_eq!(Instant::now(), left, "no time passed");
    assert!(
        second.dropped.load(Ordering::SeqCst),
        "the batch was cancelled as its last caller left"
    );

    // Its slot is free: a new request is sent and answered after the upstream's own time,
    // not after what was left of the abandoned call's.
    let answer = service.clone().oneshot(5).await;
    assert_eq!(answer.expect("answered"), 50);
    assert!(
        second.dropped.load(Ordering::SeqCst),
        "the batch was cancelled"
    );
    assert!(
        !second.finished.load(Ordering::SeqCst),
        "before it finished"
    );
    // The batch waits `max_wait` for a second request, then the upstream answers.
    assert_eq!(left.elapsed(), Duration::from_millis(5) + UPSTREAM);
    let stats = handle.stats();
    assert_eq!(stats.abandoned_batches, 1, "{stats:?}");
    assert_eq!(stats.batches, 3, "{stats:?}");
    assert_eq!(stats.in_flight_batches, 0, "{stats:?}");
}
