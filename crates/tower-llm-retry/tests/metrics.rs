//! The layer's `metrics` counters, read through a recorder installed for this thread.
#![cfg(feature = "metrics")]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_core::BoxError;
use tower_llm_retry::{Backoff, Jitter, RetryLayer};

/// Counts every counter increment and histogram sample by key (name and sorted labels).
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, Arc<AtomicU64>>>);

struct Cell(Arc<AtomicU64>);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Tally {
    fn cell(&self, key: &Key) -> Arc<AtomicU64> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.0.lock().unwrap().entry(name).or_default().clone()
    }

    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

impl Recorder for Tally {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Cell(self.cell(key))))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Cell(self.cell(key))))
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn attempts_retries_and_give_ups_are_counted() {
    let tally = Tally::default();
    let _guard = metrics::set_default_local_recorder(&tally);

    // Two calls: 503, 503, 503 (gives up after 3 attempts); then 429, 200 (recovers).
    let calls = Arc::new(AtomicU32::new(0));
    let upstream = service_fn({
        let calls = calls.clone();
        move |_: ()| {
            let status = match calls.fetch_add(1, Ordering::SeqCst) {
                0..=2 => 503,
                3 => 429,
                _ => 200,
            };
            std::future::ready(Ok::<_, BoxError>(
                http::Response::builder().status(status).body(()).unwrap(),
            ))
        }
    });
    let mut service = RetryLayer::builder()
        .backoff(Backoff::fixed(std::time::Duration::from_millis(10)))
        .jitter(Jitter::None)
        .build()
        .unwrap()
        .layer(upstream);
    for _ in 0..2 {
        service.ready().await.unwrap().call(()).await.unwrap();
    }

    assert_eq!(tally.get("tower_llm_retry_attempts_total{name=retry}"), 5);
    assert_eq!(
        tally.get("tower_llm_retry_retries_total{kind=overloaded,name=retry}"),
        2
    );
    assert_eq!(
        tally.get("tower_llm_retry_retries_total{kind=rate_limited,name=retry}"),
        1
    );
    assert_eq!(
        tally.get(
            "tower_llm_retry_give_ups_total{kind=overloaded,name=retry,reason=attempts_exhausted}"
        ),
        1
    );
    assert_eq!(tally.get("tower_llm_retry_delay_seconds{name=retry}"), 3);
}
