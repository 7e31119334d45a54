//! The funnel's output: every event at its level with its fields and the layer's `name`,
//! every metric series with the `name` label, its unit and description, and never a prompt,
//! an answer or an error message.
//!
//! One `#[test]` runs every case in turn: tracing caches callsite interest per process, and
//! a capturing subscriber set for one thread misses events when other tests run beside it.
#![cfg(all(feature = "tracing", feature = "metrics"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_core::{BoxError, FailureKind, UpstreamError};
use tower_llm_retry::{Backoff, Jitter, RetryBudget, RetryLayer};
use tower_llm_testkit::observe::{Capture, MetricKind, MetricValue, Metrics};

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

/// The one series of metric `metric` whose labels are exactly `labels`, checked for its
/// unit and description.
fn series<'a>(
    all: &'a Metrics,
    kind: MetricKind,
    metric: &str,
    labels: &[(&str, &str)],
    unit: metrics::Unit,
) -> &'a MetricValue {
    &all.exact(kind, metric, labels).assert_described(unit).value
}

fn counter(all: &Metrics, metric: &str, labels: &[(&str, &str)]) -> u64 {
    all.exact(MetricKind::Counter, metric, labels)
        .assert_described(metrics::Unit::Count)
        .counter()
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

    let all = capture.metrics();
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
    assert!(matches!(delays, MetricValue::Histogram(v) if v.len() == 4));
    // The default name.
    assert_eq!(
        counter(&all, "tower_llm_retry_attempts_total", &[("name", "retry")]),
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
