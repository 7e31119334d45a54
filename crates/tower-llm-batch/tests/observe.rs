//! The funnel's output: every event at its level with its fields and the batcher's `name`,
//! every metric series with the `name` label, its unit and description, and never a prompt,
//! an answer or an error message.
//!
//! One `#[test]` runs every case in turn: tracing caches callsite interest per process, and
//! a capturing subscriber set for one thread misses events when other tests run beside it.
#![cfg(all(feature = "tracing", feature = "metrics"))]

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_batch::BatchLayer;
use tower_llm_core::{BoxError, FailureKind, UpstreamError};
use tower_llm_testkit::observe::{Capture, MetricKind, Metrics};

/// Text that must never reach a log line or a metric: it is in every prompt, answer and
/// error message.
const MARKER: &str = "SECRET-MARKER-4e8d";

/// Answers each prompt, fails a batch holding a prompt with "fail", and takes ten seconds
/// over one holding "slow".
fn upstream()
-> impl Service<Vec<String>, Response = Vec<String>, Error = BoxError, Future = impl Send + 'static>
+ Send
+ 'static {
    service_fn(|prompts: Vec<String>| async move {
        if prompts.iter().any(|p| p.contains("slow")) {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        if prompts.iter().any(|p| p.contains("fail")) {
            return Err(BoxError::from(UpstreamError::new(
                FailureKind::Overloaded,
                format!("overloaded by {prompts:?}"),
            )));
        }
        Ok(prompts
            .into_iter()
            .map(|p| format!("answer to {p} {MARKER}"))
            .collect())
    })
}

fn prompt(text: &str) -> String {
    format!("{text} {MARKER}")
}

/// The fields of the events with this message and level from the batcher `name`, each
/// checked for its target.
fn fields<'a>(events: &'a [Value], message: &str, level: &str, name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["fields"]["message"] == message && e["fields"]["name"] == name && e["level"] == level
        })
        .map(|e| {
            assert_eq!(e["target"], "tower_llm_batch::observe");
            &e["fields"]
        })
        .collect()
}

fn counter(all: &Metrics, metric: &str, labels: &[(&str, &str)]) -> u64 {
    all.exact(MetricKind::Counter, metric, labels)
        .assert_described(metrics::Unit::Count)
        .counter()
}

fn gauge(all: &Metrics, metric: &str, labels: &[(&str, &str)]) -> f64 {
    all.exact(MetricKind::Gauge, metric, labels)
        .assert_described(metrics::Unit::Count)
        .gauge()
}

fn histogram(
    all: &Metrics,
    metric: &str,
    labels: &[(&str, &str)],
    unit: metrics::Unit,
) -> Vec<f64> {
    all.exact(MetricKind::Histogram, metric, labels)
        .assert_described(unit)
        .histogram()
        .to_vec()
}

#[test]
fn events_and_metrics_carry_the_name_and_never_a_prompt() {
    let capture = Capture::install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");

    runtime.block_on(cases());

    let events = capture.events();
    let name = "embed-batch";

    let flushed = fields(&events, "batch flushed", "DEBUG", name);
    let flushes: Vec<_> = flushed
        .iter()
        .map(|f| (f["reason"].as_str().expect("reason"), f["size"].as_u64()))
        .collect();
    assert_eq!(
        flushes,
        [
            ("full", Some(2)),
            ("wait", Some(1)),
            ("wait", Some(1)),
            ("wait", Some(1))
        ],
        "{events:#?}"
    );
    assert_eq!(flushed[1]["oldest_wait_seconds"], 0.03);
    assert_eq!(flushed[0]["weight"], 0);

    let failed = fields(&events, "batch failed", "WARN", name);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["kind"], "overloaded");
    assert_eq!(failed[0]["size"], 1);

    let abandoned = fields(&events, "abandoned batch cancelled", "DEBUG", name);
    assert_eq!(abandoned.len(), 1);
    assert_eq!(abandoned[0]["size"], 1);

    let rejected = fields(&events, "request rejected", "DEBUG", "tiny");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["reason"], "full");

    let all = capture.metrics();
    let named = [("name", name)];
    assert_eq!(counter(&all, "tower_llm_batch_requests_total", &named), 5);
    assert_eq!(
        counter(
            &all,
            "tower_llm_batch_batches_total",
            &[("name", name), ("reason", "full")]
        ),
        1
    );
    assert_eq!(
        counter(
            &all,
            "tower_llm_batch_batches_total",
            &[("name", name), ("reason", "wait")]
        ),
        3
    );
    assert_eq!(
        counter(&all, "tower_llm_batch_failed_batches_total", &named),
        1
    );
    assert_eq!(
        counter(&all, "tower_llm_batch_abandoned_batches_total", &named),
        1
    );
    assert_eq!(
        counter(
            &all,
            "tower_llm_batch_rejected_total",
            &[("name", "tiny"), ("reason", "full")]
        ),
        1
    );
    assert_eq!(
        histogram(&all, "tower_llm_batch_size", &named, metrics::Unit::Count),
        [2.0, 1.0, 1.0, 1.0]
    );
    assert_eq!(
        histogram(
            &all,
            "tower_llm_batch_wait_seconds",
            &named,
            metrics::Unit::Seconds
        )
        .len(),
        5
    );
    assert_eq!(gauge(&all, "tower_llm_batch_waiting_requests", &named), 0.0);
    assert_eq!(
        gauge(&all, "tower_llm_batch_in_flight_batches", &named),
        0.0
    );
    assert_eq!(
        counter(&all, "tower_llm_batch_requests_total", &[("name", "batch")]),
        1
    );

    for metric in &all {
        assert!(
            metric.label("name").is_some(),
            "{metric:?} has no name label"
        );
    }
    capture.assert_absent(&[MARKER]);
}

async fn cases() {
    let layer = BatchLayer::builder()
        .name("embed-batch")
        .max_items(2)
        .max_wait(Duration::from_millis(30))
        .build()
        .expect("valid batcher");
    let service = layer.layer(upstream());
    let send = |text: &'static str| {
        let mut service = service.clone();
        async move { service.ready().await?.call(prompt(text)).await }
    };

    // Two fill a batch; one alone waits out max_wait.
    let answers = join_all([send("one"), send("two")]).await;
    assert!(answers.iter().all(Result::is_ok));
    assert!(send("three").await.is_ok());
    assert!(send("fail").await.is_err(), "the upstream fails that batch");
    // Its caller leaves while the batch is in flight: the batch is abandoned.
    let left = tokio::time::timeout(Duration::from_secs(1), send("slow")).await;
    assert!(left.is_err(), "the caller gave up first");
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(service);

    // Full: `call` without `poll_ready` while the one place is taken.
    let mut tiny = BatchLayer::builder()
        .name("tiny")
        .max_items(1)
        .capacity(1)
        .build()
        .expect("valid batcher")
        .layer(upstream());
    let first = tiny.ready().await.expect("ready").call(prompt("slow"));
    let refused = tiny.call(prompt("again")).await;
    assert!(refused.is_err(), "no room without poll_ready");
    drop(first);

    let mut default = BatchLayer::builder()
        .build()
        .expect("valid batcher")
        .layer(upstream());
    let answer = default
        .ready()
        .await
        .expect("ready")
        .call(prompt("hi"))
        .await;
    assert!(answer.is_ok());
}
