//! The batcher's `metrics`: batch sizes, per-request waits and flush reasons, read through a
//! recorder of our own.
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_batch::BatchLayer;
use tower_llm_core::BoxError;

/// Everything recorded, by metric name and labels.
#[derive(Default)]
struct Recorded {
    counters: BTreeMap<String, u64>,
    gauges: BTreeMap<String, f64>,
    histograms: BTreeMap<String, Vec<f64>>,
}

#[derive(Clone, Default)]
struct TestRecorder(Arc<Mutex<Recorded>>);

struct Handle {
    name: String,
    recorded: Arc<Mutex<Recorded>>,
}

impl Handle {
    fn with<T>(&self, f: impl FnOnce(&mut Recorded, &str) -> T) -> T {
        f(&mut self.recorded.lock().expect("not poisoned"), &self.name)
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.with(|r, name| *r.counters.entry(name.to_owned()).or_default() += value);
    }
    fn absolute(&self, value: u64) {
        self.with(|r, name| r.counters.insert(name.to_owned(), value));
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.with(|r, name| *r.gauges.entry(name.to_owned()).or_default() += value);
    }
    fn decrement(&self, value: f64) {
        self.with(|r, name| *r.gauges.entry(name.to_owned()).or_default() -= value);
    }
    fn set(&self, value: f64) {
        self.with(|r, name| r.gauges.insert(name.to_owned(), value));
    }
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.with(|r, name| r.histograms.entry(name.to_owned()).or_default().push(value));
    }
}

impl TestRecorder {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        Arc::new(Handle {
            name,
            recorded: Arc::clone(&self.0),
        })
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

#[test]
fn batch_sizes_waits_and_flush_reasons_are_recorded() {
    let recorder = TestRecorder::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let inner = service_fn(|batch: Vec<u32>| async move { Ok::<_, BoxError>(batch) });
            let service = BatchLayer::builder()
                .max_items(4)
                .max_wait(Duration::from_millis(30))
                .build()
                .expect("valid")
                .layer(inner);
            // Four fill a batch at once; the fifth waits 30 ms for company that never comes.
            let results = join_all((0..5).map(|x| {
                let mut service = service.clone();
                async move { service.ready().await?.call(x).await }
            }))
            .await;
            assert!(results.iter().all(Result::is_ok));
        });
    });
    let recorded = recorder.0.lock().expect("not poisoned");
    assert_eq!(
        recorded.histograms.get("tower_llm_batch_size{name=batch}"),
        Some(&vec![4.0, 1.0])
    );
    assert_eq!(
        recorded
            .histograms
            .get("tower_llm_batch_wait_seconds{name=batch}"),
        Some(&vec![0.0, 0.0, 0.0, 0.0, 0.03])
    );
    assert_eq!(
        recorded
            .counters
            .get("tower_llm_batch_batches_total{name=batch,reason=full}"),
        Some(&1)
    );
    assert_eq!(
        recorded
            .counters
            .get("tower_llm_batch_batches_total{name=batch,reason=wait}"),
        Some(&1)
    );
    assert_eq!(
        recorded
            .counters
            .get("tower_llm_batch_requests_total{name=batch}"),
        Some(&5)
    );
    assert_eq!(
        recorded
            .gauges
            .get("tower_llm_batch_in_flight_batches{name=batch}"),
        Some(&0.0)
    );
    assert_eq!(
        recorded
            .gauges
            .get("tower_llm_batch_waiting_requests{name=batch}"),
        Some(&0.0)
    );
}
