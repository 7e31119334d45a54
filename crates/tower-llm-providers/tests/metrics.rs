//! The documented counters move: one request per call, one failure per error handed out,
//! labelled with the provider and the failure kind.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{Piece, Reply, call, drain, mock};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use tower_llm_providers::{ChatRequest, Message, OpenAi};

#[derive(Default)]
struct Counts(Mutex<BTreeMap<String, Arc<AtomicU64>>>);

struct Handle(Arc<AtomicU64>);

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

#[derive(Clone, Default)]
struct TestRecorder(Arc<Counts>);

impl TestRecorder {
    fn get(&self, key: &str) -> u64 {
        self.0
            .0
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut name = key.name().to_owned();
        for label in key.labels() {
            name.push_str(&format!(" {}={}", label.key(), label.value()));
        }
        let cell = Arc::clone(self.0.0.lock().unwrap().entry(name).or_default());
        Counter::from_arc(Arc::new(Handle(cell)))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn requests_and_failures_are_counted() {
    let recorder = TestRecorder::default();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let request = ChatRequest::new("m", vec![Message::user("hi")]);
            let (client, _) = mock(Reply::json(
                529,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ));
            let mut service = OpenAi::compatible("http://localhost/v1")
                .name("local")
                .build_with(client)
                .unwrap();
            assert!(call(&mut service, request.clone()).await.is_err());

            let (client, _) = mock(Reply::sse(vec![Piece::Data(
                "data: {\"choices\":[]}\n\n".into(),
            )]));
            let mut service = OpenAi::compatible("http://localhost/v1")
                .name("local")
                .build_with(client)
                .unwrap();
            let items = drain(call(&mut service, request.streaming()).await.unwrap()).await;
            assert!(items.last().unwrap().is_err());
        });
    });
    assert_eq!(
        recorder.get("tower_llm_providers_requests_total provider=local call=chat"),
        1
    );
    assert_eq!(
        recorder.get("tower_llm_providers_requests_total provider=local call=stream"),
        1
    );
    assert_eq!(
        recorder.get("tower_llm_providers_failures_total provider=local kind=overloaded"),
        1
    );
    assert_eq!(
        recorder.get("tower_llm_providers_failures_total provider=local kind=transport"),
        1
    );
}
