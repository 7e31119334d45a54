//! The funnel's output: events at their levels with their fields, the counters with the
//! `name` label and their descriptions, and never a prompt or an answer.
//!
//! One `#[test]` runs every case in turn: tracing caches callsite interest per process, and a
//! capturing subscriber beside other tests in the same binary would miss events.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_llm_core::BoxError;
use tower_llm_dedup::DedupLayer;

const MARKER: &str = "SECRET-PROMPT-7d1f";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
    fn events(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

fn find<'a>(events: &'a [Value], message: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["fields"]["message"].as_str() == Some(message))
        .collect()
}

#[test]
fn events_and_metrics() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();

    tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let layer = DedupLayer::<String>::builder()
                    .name("chat-cache")
                    .cache_all()
                    .build()
                    .unwrap();
                let handle = layer.handle();
                assert_eq!(handle.name(), "chat-cache");
                let service = ServiceBuilder::new().layer(layer).service(service_fn(
                    |prompt: String| async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Ok::<_, BoxError>(format!("answer to {prompt}"))
                    },
                ));
                let prompt = format!("{MARKER} what is 2 + 2?");
                let (a, b) = tokio::join!(
                    service.clone().oneshot(prompt.clone()),
                    service.clone().oneshot(prompt.clone())
                );
                assert!(a.unwrap().contains(MARKER));
                b.unwrap();
                service.clone().oneshot(prompt.clone()).await.unwrap();
                handle.clear();

                // Default name.
                let unnamed = DedupLayer::<String>::new(Duration::from_secs(1));
                assert_eq!(unnamed.handle().name(), "dedup");
            });
        });
    });

    let events = buffer.events();
    let coalesced = find(&events, "dedup: coalesced with a call in flight");
    assert_eq!(coalesced.len(), 1, "{events:?}");
    assert_eq!(coalesced[0]["level"], "TRACE");
    assert_eq!(coalesced[0]["fields"]["name"], "chat-cache");
    assert_eq!(
        coalesced[0]["target"], "tower_llm_dedup::observe",
        "target is the crate's module path"
    );

    let hits = find(&events, "dedup: cache hit");
    assert_eq!(hits.len(), 1, "{events:?}");
    assert_eq!(hits[0]["level"], "TRACE");
    assert_eq!(hits[0]["fields"]["name"], "chat-cache");
    assert_eq!(hits[0]["fields"]["source"], "memory");

    let cleared = find(&events, "dedup: cache cleared");
    assert_eq!(cleared.len(), 1, "{events:?}");
    assert_eq!(cleared[0]["level"], "INFO");
    assert_eq!(cleared[0]["fields"]["name"], "chat-cache");
    assert_eq!(cleared[0]["fields"]["entries"], 1);

    assert!(!buffer.text().contains(MARKER), "a prompt or answer leaked");

    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |metric: &str| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                key.key().name() == metric
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "name" && l.value() == "chat-cache")
            })
            .map(|(_, unit, description, value)| {
                assert_eq!(*unit, Some(Unit::Count), "{metric}: unit");
                assert!(description.is_some(), "{metric}: description");
                match value {
                    DebugValue::Counter(n) => *n,
                    other => panic!("{metric}: {other:?}"),
                }
            })
            .unwrap_or_else(|| panic!("{metric} with name=chat-cache missing: {snapshot:?}"))
    };
    assert_eq!(counter(tower_llm_dedup::METRIC_REQUESTS), 3);
    assert_eq!(counter(tower_llm_dedup::METRIC_MISSES), 1);
    assert_eq!(counter(tower_llm_dedup::METRIC_COALESCED), 1);
    assert_eq!(counter(tower_llm_dedup::METRIC_HITS), 1);
    assert_eq!(counter(tower_llm_dedup::METRIC_INNER_CALLS), 1);
    assert_eq!(counter(tower_llm_dedup::METRIC_EVICTIONS), 0);
    assert_eq!(counter(tower_llm_dedup::METRIC_BYPASSED), 0);
    assert_eq!(counter(tower_llm_dedup::METRIC_REMOTE_HITS), 0);
    assert_eq!(counter(tower_llm_dedup::METRIC_REMOTE_ERRORS), 0);
    // The unnamed layer reports under the default name.
    assert!(snapshot.iter().any(|(key, ..)| {
        key.key()
            .labels()
            .any(|l| l.key() == "name" && l.value() == "dedup")
    }));
    for (key, ..) in &snapshot {
        assert!(
            key.key().labels().all(|l| !l.value().contains(MARKER)),
            "a prompt leaked into a label"
        );
    }
}
