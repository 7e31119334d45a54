//! The `metrics` counters, under their documented names.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_llm_core::BoxError;
use tower_llm_dedup::{
    DedupLayer, METRIC_COALESCED, METRIC_HITS, METRIC_INNER_CALLS, METRIC_MISSES, METRIC_REQUESTS,
};

#[derive(Default)]
struct Counters {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Counters {
    fn get(&self, name: &str) -> u64 {
        self.values
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |v| v.load(Ordering::SeqCst))
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let value = self
            .values
            .lock()
            .unwrap()
            .entry(key.name().to_owned())
            .or_default()
            .clone();
        Counter::from_arc(value)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(start_paused = true)]
async fn counters_are_exported_under_their_names() {
    let recorder = Counters::default();
    // Handles are registered when the layer is built, with the recorder in force then.
    let layer = metrics::with_local_recorder(&recorder, || {
        DedupLayer::<String>::new(Duration::from_secs(60))
    });
    let service =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|prompt: String| async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, BoxError>(prompt)
            }));
    let (a, b) = tokio::join!(
        service.clone().oneshot("q".to_string()),
        service.clone().oneshot("q".to_string())
    );
    a.expect("ok");
    b.expect("ok");
    service.clone().oneshot("q".to_string()).await.expect("ok");
    assert_eq!(recorder.get(METRIC_REQUESTS), 3);
    assert_eq!(recorder.get(METRIC_MISSES), 1);
    assert_eq!(recorder.get(METRIC_COALESCED), 1);
    assert_eq!(recorder.get(METRIC_HITS), 1);
    assert_eq!(recorder.get(METRIC_INNER_CALLS), 1);
    assert_eq!(METRIC_REQUESTS, "tower_llm_dedup_requests_total");
}
