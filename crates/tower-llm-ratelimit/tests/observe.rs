//! The funnel's output: every event at its level with its fields and the limiter's `name`,
//! every metric series with the `name` label, its unit and description, and never a key or
//! a prompt.
//!
//! One `#[test]` runs every case in turn: tracing caches callsite interest per process, and
//! a capturing subscriber set for one thread misses events when other tests run beside it.
#![cfg(all(feature = "tracing", feature = "metrics"))]

use std::time::Duration;

use serde_json::Value;
use tower::{Service, ServiceExt, service_fn};
use tower_llm_core::{
    BoxError, ClassifyResponse, Failure, FailureKind, Outcome, RateLimitHeaders, RequestCost,
    ResponseUsage, Usage,
};
use tower_llm_ratelimit::{Quota, RateLimitLayer};
use tower_llm_testkit::observe::{Capture, Metric, MetricKind, Metrics};

/// Text that must never reach a log line or a metric: it is in every prompt and key.
const MARKER: &str = "SECRET-MARKER-7f3a";

#[derive(Clone, Debug)]
struct Req {
    prompt: String,
    key: String,
    cost: u64,
    latency: Duration,
    limited: Option<Duration>,
    headers: Vec<(&'static str, &'static str)>,
}

impl Req {
    fn new(n: u32) -> Self {
        Req {
            prompt: format!("prompt {n} {MARKER}"),
            key: format!("sk-{MARKER}"),
            cost: 10,
            latency: Duration::ZERO,
            limited: None,
            headers: Vec::new(),
        }
    }
}

impl RequestCost for Req {
    fn estimated_tokens(&self) -> u64 {
        self.cost
    }
}

#[derive(Debug)]
struct Res {
    #[allow(dead_code)]
    answer: String,
    limited: Option<Duration>,
    headers: http::HeaderMap,
}

impl ResponseUsage for Res {
    fn usage(&self) -> Option<Usage> {
        None
    }
}

impl ClassifyResponse for Res {
    fn classify_response(&self) -> Outcome {
        match self.limited {
            Some(after) => Outcome::Failure(
                Failure::new(FailureKind::RateLimited).with_retry_after(Some(after)),
            ),
            None => Outcome::Success,
        }
    }
}

impl RateLimitHeaders for Res {
    fn rate_limit_headers(&self) -> Option<&http::HeaderMap> {
        Some(&self.headers)
    }
}

fn upstream() -> impl Service<Req, Response = Res, Error = BoxError, Future = impl Send> + Clone {
    service_fn(|req: Req| async move {
        tokio::time::sleep(req.latency).await;
        let mut headers = http::HeaderMap::new();
        for (name, value) in req.headers {
            headers.insert(name, http::HeaderValue::from_static(value));
        }
        Ok::<_, BoxError>(Res {
            answer: format!("answer to {}", req.prompt),
            limited: req.limited,
            headers,
        })
    })
}

/// The events with this message.
fn find<'a>(events: &'a [Value], message: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["fields"]["message"] == message)
        .collect()
}

/// The one event with this message from the limiter `name`, checked for its level.
fn one<'a>(events: &'a [Value], message: &str, level: &str, name: &str) -> &'a Value {
    let found: Vec<_> = find(events, message)
        .into_iter()
        .filter(|e| e["fields"]["name"] == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {message:?} event from {name}: {events:#?}"
    );
    let event = found[0];
    assert_eq!(event["level"], level, "{message}");
    assert_eq!(event["target"], "tower_llm_ratelimit::observe");
    &event["fields"]
}

/// The one series of metric `metric` whose labels include every pair in `labels`.
fn series<'a>(
    all: &'a Metrics,
    kind: MetricKind,
    metric: &str,
    labels: &[(&str, &str)],
) -> &'a Metric {
    let found: Vec<_> = all
        .iter()
        .filter(|m| m.kind == kind && m.name == metric && m.has_labels(labels))
        .collect();
    assert_eq!(found.len(), 1, "one series {metric} {labels:?}: {all:#?}");
    found[0]
}

fn counter(all: &Metrics, metric: &str, labels: &[(&str, &str)]) -> u64 {
    series(all, MetricKind::Counter, metric, labels)
        .assert_described(metrics::Unit::Count)
        .counter()
}

#[test]
fn events_and_metrics_carry_the_name_and_never_a_key_or_prompt() {
    let capture = Capture::install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");

    runtime.block_on(async {
        named_limiter_events().await;
        default_name().await;
        adaptive_limit_events().await;
    });

    let events = capture.events();
    let name = "chat-limits";

    let queued = one(&events, "call queued", "DEBUG", name);
    assert_eq!(queued["keyed"], true);
    assert_eq!(queued["tokens"], 10);
    assert_eq!(queued["waiting"], 1);

    let waited = one(&events, "call admitted after waiting", "DEBUG", name);
    assert_eq!(waited["keyed"], true);
    assert!(waited["wait_seconds"].as_f64().is_some_and(|s| s > 0.0));

    let rejected: Vec<_> = find(&events, "call rejected")
        .into_iter()
        .filter(|e| e["fields"]["name"] == name)
        .map(|e| {
            assert_eq!(e["level"], "WARN");
            e["fields"]["reason"].as_str().expect("reason").to_owned()
        })
        .collect();
    assert_eq!(rejected, ["queue_full", "too_large"]);
    let full = find(&events, "call rejected")[0];
    assert!(full["fields"]["retry_after_seconds"].as_f64().is_some());

    let paused = one(&events, "key paused by the upstream", "WARN", name);
    assert_eq!(paused["cause"], "rate_limited");
    assert_eq!(paused["pause_seconds"], 2.0);
    assert_eq!(paused["keyed"], true);

    let learnt = one(&events, "server limits learnt", "DEBUG", name);
    assert_eq!(learnt["remaining_requests"], 5);
    assert_eq!(learnt["requests_reset_seconds"], 1.0);
    assert!(learnt.get("remaining_tokens").is_none());

    let by_handle = one(&events, "paused by the handle", "INFO", name);
    assert_eq!(by_handle["pause_seconds"], 3.0);
    one(&events, "resumed by the handle", "INFO", name);

    let all = capture.metrics();
    let named = [("name", name)];
    assert_eq!(
        counter(&all, "tower_llm_ratelimit_admitted_total", &named),
        3
    );
    assert_eq!(
        counter(&all, "tower_llm_ratelimit_tokens_reserved_total", &named),
        30
    );
    assert_eq!(
        counter(
            &all,
            "tower_llm_ratelimit_rejected_total",
            &[("name", name), ("reason", "queue_full")]
        ),
        1
    );
    assert_eq!(
        counter(
            &all,
            "tower_llm_ratelimit_rejected_total",
            &[("name", name), ("reason", "too_large")]
        ),
        1
    );
    assert_eq!(
        counter(
            &all,
            "tower_llm_ratelimit_pauses_total",
            &[("name", name), ("cause", "rate_limited")]
        ),
        1
    );
    let waits = series(
        &all,
        MetricKind::Histogram,
        "tower_llm_ratelimit_wait_seconds",
        &named,
    );
    assert_eq!(
        waits
            .assert_described(metrics::Unit::Seconds)
            .histogram()
            .len(),
        1
    );
    let waiting = series(
        &all,
        MetricKind::Gauge,
        "tower_llm_ratelimit_waiting",
        &named,
    );
    assert_eq!(waiting.assert_described(metrics::Unit::Count).gauge(), 0.0);

    let adaptive = [("name", "adaptive-limits")];
    let decreased = one(
        &events,
        "concurrency limit decreased",
        "DEBUG",
        "adaptive-limits",
    );
    assert_eq!(
        (decreased["from"].as_u64(), decreased["to"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(decreased["cause"], "headers");
    assert_eq!(decreased["keyed"], false);
    let at_min = one(
        &events,
        "concurrency limit at its minimum",
        "WARN",
        "adaptive-limits",
    );
    assert_eq!(
        (at_min["from"].as_u64(), at_min["to"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(at_min["cause"], "rate_limited");
    let increased = one(
        &events,
        "concurrency limit increased",
        "DEBUG",
        "adaptive-limits",
    );
    assert_eq!(
        (increased["from"].as_u64(), increased["to"].as_u64()),
        (Some(1), Some(2))
    );
    for (cause, n) in [("headers", 1), ("rate_limited", 1)] {
        assert_eq!(
            counter(
                &all,
                "tower_llm_ratelimit_limit_decreases_total",
                &[("name", "adaptive-limits"), ("cause", cause)]
            ),
            n
        );
    }
    assert_eq!(
        counter(&all, "tower_llm_ratelimit_limit_increases_total", &adaptive),
        1
    );
    let limit = series(
        &all,
        MetricKind::Gauge,
        "tower_llm_ratelimit_concurrency_limit",
        &adaptive,
    );
    assert_eq!(limit.assert_described(metrics::Unit::Count).gauge(), 2.0);

    // The default name labels a limiter built without one.
    assert_eq!(
        counter(
            &all,
            "tower_llm_ratelimit_admitted_total",
            &[("name", "ratelimit")]
        ),
        1
    );
    one(&events, "call rejected", "WARN", "ratelimit");

    // Every series carries a `name` label.
    for metric in &all {
        assert!(
            metric.label("name").is_some(),
            "{metric:?} has no name label"
        );
    }
    // No key, prompt or answer anywhere.
    capture.assert_absent(&[MARKER]);
}

/// A keyed limiter named `chat-limits`: queued, admitted after waiting, learnt, rejected
/// (queue full, too large), paused by a 429, paused and resumed by the handle.
async fn named_limiter_events() {
    let layer = RateLimitLayer::builder()
        .name("chat-limits")
        .concurrency(1)
        .max_queue(1)
        .max_wait(Duration::from_secs(30))
        .tokens(Quota::per_minute(1000).with_burst(1000))
        .adapt_to_headers()
        .key_fn(|req: &Req| req.key.clone())
        .build()
        .expect("valid limiter");
    let handle = layer.handle();
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(upstream());

    let mut first = Req::new(1);
    first.latency = Duration::from_secs(1);
    first.headers = vec![
        ("x-ratelimit-remaining-requests", "5"),
        ("x-ratelimit-reset-requests", "1s"),
    ];
    let first = tokio::spawn(svc.ready().await.expect("ready").call(first));
    tokio::task::yield_now().await;
    let second = tokio::spawn(svc.ready().await.expect("ready").call(Req::new(2)));
    tokio::task::yield_now().await;
    let third = svc.ready().await.expect("ready").call(Req::new(3)).await;
    assert!(third.is_err(), "the queue holds one");
    first.await.expect("join").expect("first answered");
    second.await.expect("join").expect("second answered");

    let mut huge = Req::new(4);
    huge.cost = 5000; // more than the whole budget
    assert!(svc.ready().await.expect("ready").call(huge).await.is_err());

    let mut limited = Req::new(5);
    limited.limited = Some(Duration::from_secs(2));
    svc.ready()
        .await
        .expect("ready")
        .call(limited)
        .await
        .expect("a 429 answer is still an answer");

    handle.pause(Duration::from_secs(3));
    handle.resume();
}

/// A limiter without a name reports as `ratelimit`.
async fn default_name() {
    let layer = RateLimitLayer::builder()
        .concurrency(1)
        .max_queue(0)
        .build()
        .expect("valid limiter");
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|prompt: String| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(prompt)
        }));
    let slow = tokio::spawn(
        svc.ready()
            .await
            .expect("ready")
            .call(format!("hello {MARKER}")),
    );
    tokio::task::yield_now().await;
    let refused = svc
        .ready()
        .await
        .expect("ready")
        .call(format!("again {MARKER}"))
        .await;
    assert!(refused.is_err());
    slow.await.expect("join").expect("answered");
}

/// An adaptive limiter named `adaptive-limits`: capped by the headers (decreased), lowered to
/// its minimum by a 429, raised by a success.
async fn adaptive_limit_events() {
    let layer = RateLimitLayer::builder()
        .name("adaptive-limits")
        .adaptive_concurrency(
            tower_llm_ratelimit::AdaptiveConcurrency::new()
                .min(1)
                .max(8)
                .initial(4),
        )
        .adapt_to_headers()
        .build()
        .expect("valid limiter");
    let handle = layer.handle();
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(upstream());
    let mut capped = Req::new(20);
    capped.headers = vec![
        ("x-ratelimit-remaining-requests", "2"),
        ("x-ratelimit-reset-requests", "1m0s"),
    ];
    let mut limited = Req::new(21);
    limited.limited = Some(Duration::from_millis(1));
    // Two successes: near the level of the last overload the limit grows a quarter as fast.
    // The first renews the server's word, so the second is not held for its reset.
    let mut renewed = Req::new(22);
    renewed.headers = capped.headers.clone();
    for req in [capped, limited, renewed, Req::new(23)] {
        svc.ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("an answer");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = handle.stats();
    assert_eq!(stats.concurrency_limit, Some(2));
    assert_eq!((stats.limit_decreases, stats.limit_increases), (2, 1));
}
