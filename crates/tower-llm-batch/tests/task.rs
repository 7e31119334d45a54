//! The batching task's life: a panic in the inner service's future or in the adapter fails only
//! the batch it hit, and the task ends once every handle is gone and its work is done.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_batch::{BatchFailed, BatchLayer};
use tower_llm_core::BoxError;

async fn call<S>(mut service: S, x: u32) -> Result<u32, BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    service.ready().await?.call(x).await
}

#[tokio::test(start_paused = true)]
async fn a_panicking_inner_future_fails_its_batch_and_the_batcher_goes_on() {
    let inner = service_fn(|batch: Vec<u32>| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if batch.contains(&0) {
            panic!("upstream client bug");
        }
        Ok::<_, BoxError>(batch.into_iter().map(|x| x * 10).collect::<Vec<_>>())
    });
    let service = BatchLayer::builder()
        .max_items(2)
        .max_wait(Duration::from_secs(1))
        .build()
        .expect("valid")
        .layer(inner);
    // Two batches in flight together: [0, 1] panics, [2, 3] must still be answered.
    let results = join_all((0..4).map(|x| call(service.clone(), x))).await;
    for result in &results[..2] {
        let error = result.as_ref().expect_err("its batch panicked");
        let failed = error
            .downcast_ref::<BatchFailed>()
            .expect("a batch failure");
        assert!(
            failed.to_string().contains("upstream client bug"),
            "{failed}"
        );
        assert_eq!(failed.batch_size(), 2);
    }
    assert_eq!(results[2].as_ref().expect("answered"), &20);
    assert_eq!(results[3].as_ref().expect("answered"), &30);
    // Later callers are served as before.
    let later = join_all((4..6).map(|x| call(service.clone(), x))).await;
    let later: Vec<u32> = later.into_iter().map(|r| r.expect("answered")).collect();
    assert_eq!(later, [40, 50]);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_unpack_fails_its_batch_and_the_batcher_goes_on() {
    let inner = service_fn(|batch: Vec<u32>| async move { Ok::<_, BoxError>(batch) });
    let pack = |items: Vec<u32>| items;
    let unpack = |answers: Vec<u32>, _count: usize| {
        assert!(!answers.contains(&0), "unpack bug");
        answers
            .into_iter()
            .map(Ok::<u32, BoxError>)
            .collect::<Vec<_>>()
    };
    let service = BatchLayer::packed(pack, unpack)
        .max_items(2)
        .max_wait(Duration::from_secs(1))
        .build()
        .expect("valid")
        .layer(inner);
    let results = join_all((0..2).map(|x| call(service.clone(), x))).await;
    for result in results {
        let error = result.expect_err("unpack panicked");
        assert!(error.is::<BatchFailed>(), "{error}");
        assert!(error.to_string().contains("unpack bug"), "{error}");
    }
    let later = join_all((1..3).map(|x| call(service.clone(), x))).await;
    let later: Vec<u32> = later.into_iter().map(|r| r.expect("answered")).collect();
    assert_eq!(later, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_pack_fails_its_batch_and_the_batcher_goes_on() {
    let inner = service_fn(|batch: Vec<u32>| async move { Ok::<_, BoxError>(batch) });
    let pack = |items: Vec<u32>| {
        assert!(!items.contains(&0), "pack bug");
        items
    };
    let unpack = |answers: Vec<u32>, _count: usize| {
        answers
            .into_iter()
            .map(Ok::<u32, BoxError>)
            .collect::<Vec<_>>()
    };
    let service = BatchLayer::packed(pack, unpack)
        .max_items(2)
        .max_wait(Duration::from_secs(1))
        .build()
        .expect("valid")
        .layer(inner);
    let results = join_all((0..2).map(|x| call(service.clone(), x))).await;
    for result in results {
        let error = result.expect_err("pack panicked");
        assert!(error.is::<BatchFailed>(), "{error}");
        assert!(error.to_string().contains("pack bug"), "{error}");
    }
    let later = join_all((1..3).map(|x| call(service.clone(), x))).await;
    let later: Vec<u32> = later.into_iter().map(|r| r.expect("answered")).collect();
    assert_eq!(later, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn the_task_ends_after_the_last_handle_once_its_batches_are_answered() {
    // The task owns the inner service: when the service is dropped, the task has ended.
    let alive = Arc::new(());
    let token = Arc::clone(&alive);
    let inner = service_fn(move |batch: Vec<u32>| {
        let _token = &token;
        async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, BoxError>(batch)
        }
    });
    let mut service = BatchLayer::builder()
        .max_items(1)
        .max_wait(Duration::from_secs(3600))
        .build()
        .expect("valid")
        .layer(inner);
    service.ready().await.expect("ready");
    let in_flight = service.call(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    service.ready().await.expect("ready");
    let queued_clone = service.clone();
    drop(service);
    // One handle is left: the task keeps running.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(Arc::strong_count(&alive), 2);
    drop(queued_clone);
    assert_eq!(in_flight.await.expect("answered"), 1);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        Arc::strong_count(&alive),
        1,
        "the batching task outlived every handle"
    );
}
