//! The funnel's output: every event at its level with its fields and the layer's `name`,
//! every metric series with the `name` label, its unit and description, and never a prompt,
//! an answer or an error message.
//!
//! One `#[test]` runs every case in turn: tracing caches callsite interest per process, and
//! a capturing subscriber set for one thread misses events when other tests run beside it.
#![cfg(all(feature = "tracing", feature = "metrics"))]

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use serde_json::Value;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_core::{BoxError, FailureKind, UpstreamError};
use tower_llm_retry::{Backoff, Jitter, RetryBudget, RetryLayer};

/// Text that must never reach a log line or a metric: it is in every prompt, answer and
/// error message.
const MARKER: &str = "SECRET-MARKER-91c2";

/// An upstream that fails with the scripted kinds (and hints), then answers.
fn upstream(
    script: Vec<(FailureKind, Option<Duration>)>,
) -> impl Service<String, Response = String, Error = BoxError, Future = impl Send> + Clone {
    let calls = Arc::new(AtomicU32::new(0));
    service_fn(move |prompt: String| {
        let n = calls.fetch_add(1, Ordering::SeqCst) as usize;
        let step = script.get(n).copied();
        async move {
            match step {
                Some((kind, hint)) => Err(BoxError::from(
                    UpstreamError::new(kind, format!("failed on {prompt} {MARKER}"))
                        .with_retry_after(hint),
                )),
                None => Ok(format!("answer to {prompt} {MARKER}")),
            }
        }
    })
}

fn layer(name: &str) -> RetryLayer {
    RetryLayer::builder()
        .name(name.to_owned())
        .max_attempts(3)
        .backoff(Backoff::fixed(Duration::from_millis(100)))
        .jitter(Jitter::None)
        .no_budget()
        .build()
        .expect("valid retry layer")
}

async fn call(
    layer: &RetryLayer,
    script: Vec<(FailureKind, Option<Duration>)>,
) -> Result<String, BoxError> {
    layer
        .layer(upstream(script))
        .oneshot(format!("prompt {MARKER}"))
        .await
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("buffer").clone()).expect("utf-8 logs")
    }

    fn events(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
            .collect()
    }
}

/// The fields of the events with this message and level from the layer `name`, each checked
/// for its target.
fn fields<'a>(events: &'a [Value], message: &str, level: &str, name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["fields"]["message"] == message && e["fields"]["name"] == name && e["level"] == level
        })
        .map(|e| {
            assert_eq!(e["target"], "tower_llm_retry::observe");
            &e["fields"]
        })
        .collect()
}

type Entry = (
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
);

/// The one series of metric `metric` whose labels are exactly `labels`, checked for its
/// unit and description.
fn series<'a>(
    all: &'a [Entry],
    kind: MetricKind,
    metric: &str,
    labels: &[(&str, &str)],
    unit: metrics::Unit,
) -> &'a DebugValue {
    let found: Vec<_> = all
        .iter()
        .filter(|(key, ..)| {
            key.kind() == kind
                && key.key().name() == metric
                && key.key().labels().count() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .collect();
    assert_eq!(found.len(), 1, "one series {metric} {labels:?}: {all:#?}");
    let (_, found_unit, description, value) = found[0];
    assert_eq!(*found_unit, Some(unit), "{metric} unit");
    assert!(description.is_some(), "{metric} described");
    value
}

fn counter(all: &[Entry], metric: &str, labels: &[(&str, &str)]) -> u64 {
    match series(
        all,
        MetricKind::Counter,
        metric,
        labels,
        metrics::Unit::Count,
    ) {
        DebugValue::Counter(n) => *n,
        other => panic!("{metric}: {other:?}"),
    }
}

#[test]
fn events_and_metrics_carry_the_name_and_never_a_prompt() {
    let logs = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .finish();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");

    metrics::with_local_recorder(&recorder, || {
        tracing::subscriber::with_default(subscriber, || runtime.block_on(cases()))
    });

    let events = logs.events();
    let name = "llm-retry";

    // Overloaded twice, then an answer; then overloaded three times.
    let scheduled = fields(&events, "retry scheduled", "DEBUG", name);
    assert_eq!(scheduled.len(), 4, "{events:#?}");
    for (fields, attempt) in scheduled.iter().zip([1, 2, 1, 2]) {
        assert_eq!(fields["attempt"], attempt);
        assert_eq!(fields["kind"], "overloaded");
        assert_eq!(fields["backoff_seconds"], 0.1);
    }
    let recovered = fields(&events, "call recovered", "DEBUG", name);
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0]["attempt"], 3);

    let exhausted = fields(&events, "giving up", "WARN", name);
    let reasons: Vec<_> = exhausted.iter().map(|f| f["reason"].clone()).collect();
    assert_eq!(reasons, ["attempts_exhausted", "hint_too_long"]);
    assert_eq!(exhausted[0]["attempt"], 3);
    assert_eq!(exhausted[0]["kind"], "overloaded");
    assert_eq!(exhausted[1]["kind"], "rate_limited");

    // A client error is the caller's, not a retry given up: debug.
    let not_retryable = fields(&events, "giving up", "DEBUG", name);
    assert_eq!(not_retryable.len(), 1);
    assert_eq!(not_retryable[0]["reason"], "not_retryable");
    assert_eq!(not_retryable[0]["kind"], "bad_request");

    let budget = fields(
        &events,
        "retry budget exhausted, giving up",
        "WARN",
        "budgeted",
    );
    assert_eq!(budget.len(), 1);
    assert_eq!(budget[0]["attempt"], 1);
    assert_eq!(budget[0]["kind"], "overloaded");

    let all = snapshotter.snapshot().into_vec();
    // 3 + 3 + 1 + 1 attempts.
    assert_eq!(
        counter(&all, "tower_llm_retry_attempts_total", &[("name", name)]),
        8
    );
    assert_eq!(
        counter(
            &all,
            "tower_llm_retry_retries_total",
            &[("name", name), ("kind", "overloaded")]
        ),
        4
    );
    for (reason, kind) in [
        ("attempts_exhausted", "overloaded"),
        ("hint_too_long", "rate_limited"),
        ("not_retryable", "bad_request"),
    ] {
        assert_eq!(
            counter(
                &all,
                "tower_llm_retry_give_ups_total",
                &[("name", name), ("reason", reason), ("kind", kind)]
            ),
            1,
            "{reason}"
        );
    }
    assert_eq!(
        counter(
            &all,
            "tower_llm_retry_give_ups_total",
            &[
                ("name", "budgeted"),
                ("reason", "budget_exhausted"),
                ("kind", "overloaded")
            ]
        ),
        1
    );
    let delays = series(
        &all,
        MetricKind::Histogram,
        "tower_llm_retry_delay_seconds",
        &[("name", name)],
        metrics::Unit::Seconds,
    );
    assert!(matches!(delays, DebugValue::Histogram(v) if v.len() == 4));
    // The default name.
    assert_eq!(
        counter(&all, "tower_llm_retry_attempts_total", &[("name", "retry")]),
        1
    );

    for (key, ..) in &all {
        assert!(
            key.key().labels().any(|l| l.key() == "name"),
            "{key:?} has no name label"
        );
    }
    assert!(!logs.text().contains(MARKER), "{}", logs.text());
    assert!(!format!("{all:?}").contains(MARKER));
}

async fn cases() {
    use FailureKind::{BadRequest, Overloaded, RateLimited};
    let retry = layer("llm-retry");

    let answer = call(&retry, vec![(Overloaded, None), (Overloaded, None)]).await;
    assert!(answer.is_ok(), "recovered on the third attempt");
    let failed = call(&retry, vec![(Overloaded, None); 3]).await;
    assert!(failed.is_err(), "three attempts, all failed");
    let hint = call(&retry, vec![(RateLimited, Some(Duration::from_secs(600)))]).await;
    assert!(hint.is_err(), "a ten-minute hint is past max_retry_after");
    let client = call(&retry, vec![(BadRequest, None)]).await;
    assert!(client.is_err(), "a client error is not retried");

    let budgeted = RetryLayer::builder()
        .name("budgeted")
        .budget(RetryBudget::new(0.0).min_per_second(0))
        .build()
        .expect("valid retry layer");
    assert!(call(&budgeted, vec![(Overloaded, None)]).await.is_err());

    let default = RetryLayer::new();
    assert!(call(&default, Vec::new()).await.is_ok());
}
