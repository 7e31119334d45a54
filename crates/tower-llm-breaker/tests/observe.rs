//! The funnel's output: every state change and rejection as an event at its level with its
//! fields, the series with the `name` (and `key`) label and their descriptions, and never a
//! prompt or an answer.
//!
//! One `#[test]` runs every case in turn: tracing caches callsite interest per process, and a
//! capturing subscriber beside other tests in the same binary would miss events.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss, clippy::float_cmp)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::Unit;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_breaker::CircuitBreakerLayer;
use tower_llm_core::BoxError;
use tower_llm_testkit::observe::{Capture, MetricValue};

const MARKER: &str = "SECRET-PROMPT-c41e";

/// A prompt service that fails with a connection reset while `failing` is set.
fn upstream(
    failing: Arc<AtomicBool>,
) -> impl Service<String, Response = String, Error = BoxError, Future: Send> + Clone {
    service_fn(move |prompt: String| {
        let fail = failing.load(Ordering::SeqCst);
        async move {
            if fail {
                Err(BoxError::from(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                )))
            } else {
                Ok(format!("answer to {prompt}"))
            }
        }
    })
}

#[test]
fn events_and_metrics() {
    let capture = Capture::install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let prompt = format!("{MARKER} hello");

    runtime.block_on(async {
        let failing = Arc::new(AtomicBool::new(true));
        // Consecutive failures trip it; a probe closes it; the handle forces and resets.
        let layer = CircuitBreakerLayer::builder()
            .name("openai")
            .consecutive_failures(2)
            .cooldown(Duration::from_secs(5))
            .build()
            .unwrap();
        let handle = layer.handle();
        let svc = layer.layer(upstream(failing.clone()));
        for _ in 0..2 {
            assert!(svc.clone().oneshot(prompt.clone()).await.is_err());
        }
        assert!(svc.clone().oneshot(prompt.clone()).await.is_err());
        tokio::time::advance(Duration::from_secs(5)).await;
        failing.store(false, Ordering::SeqCst);
        let answer = svc.clone().oneshot(prompt.clone()).await.unwrap();
        assert!(answer.contains(MARKER));
        handle.force_open();
        handle.reset();
        handle.reset();

        // A failure rate trips it.
        let rate = CircuitBreakerLayer::builder()
            .name("rate")
            .failure_rate(0.5)
            .minimum_calls(4)
            .build()
            .unwrap()
            .layer(upstream(failing.clone()));
        for fail in [false, false, true, true] {
            failing.store(fail, Ordering::SeqCst);
            let _ = rate.clone().oneshot(prompt.clone()).await;
        }

        // Per-key breakers add their key.
        failing.store(true, Ordering::SeqCst);
        let keyed = CircuitBreakerLayer::builder()
            .name("models")
            .consecutive_failures(1)
            .build_keyed(|_: &String| "gpt", 4)
            .unwrap()
            .layer(upstream(failing.clone()));
        let _ = keyed.clone().oneshot(prompt.clone()).await;

        // The default name.
        let unnamed = CircuitBreakerLayer::builder().build().unwrap();
        assert_eq!(unnamed.handle().name(), "breaker");
    });

    let events = capture.events();
    let opened = capture.find_named("breaker: opened", "openai");
    assert_eq!(opened.len(), 1, "{events:#?}");
    let fields = &opened[0]["fields"];
    assert_eq!(opened[0]["level"], "WARN");
    assert_eq!(opened[0]["target"], "tower_llm_breaker::observe");
    assert_eq!(fields["from"], "closed");
    assert_eq!(fields["cause"], "consecutive_failures");
    assert_eq!(fields["consecutive_failures"], 2);
    assert_eq!(fields["cooldown_s"], 5.0);
    assert!(fields.get("key").is_none(), "a single breaker has no key");

    let rejected = capture.find_named("breaker: call rejected", "openai");
    assert_eq!(rejected.len(), 1, "{events:#?}");
    assert_eq!(rejected[0]["level"], "DEBUG");
    assert_eq!(rejected[0]["fields"]["retry_in_s"], 5.0);

    let half_open = capture.find_named("breaker: half-open", "openai");
    assert_eq!(half_open.len(), 1);
    assert_eq!(half_open[0]["level"], "INFO");
    assert_eq!(half_open[0]["fields"]["from"], "open");

    let closed = capture.find_named("breaker: closed", "openai");
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["level"], "INFO");
    assert_eq!(closed[0]["fields"]["from"], "half_open");

    let forced = capture.find_named("breaker: forced open", "openai");
    assert_eq!(forced.len(), 1);
    assert_eq!(forced[0]["level"], "WARN");
    assert_eq!(forced[0]["fields"]["from"], "closed");

    let resets = capture.find_named("breaker: reset", "openai");
    assert_eq!(resets.len(), 2, "{events:#?}");
    assert!(resets.iter().all(|e| e["level"] == "INFO"));
    assert_eq!(resets[0]["fields"]["from"], "open");
    assert_eq!(resets[1]["fields"]["from"], "closed");

    let by_rate = capture.find_named("breaker: opened", "rate");
    assert_eq!(by_rate.len(), 1, "{events:#?}");
    assert_eq!(by_rate[0]["fields"]["cause"], "failure_rate");
    assert_eq!(by_rate[0]["fields"]["failure_rate"], 0.5);
    assert_eq!(by_rate[0]["fields"]["window_calls"], 4);

    let by_key = capture.find_named("breaker: opened", "models");
    assert_eq!(by_key.len(), 1, "{events:#?}");
    assert_eq!(by_key[0]["fields"]["key"], "gpt");

    capture.assert_absent(&[MARKER]);

    let metrics = capture.metrics();
    let series = |metric: &str, labels: &[(&str, &str)]| {
        let found = metrics.get(metric, labels).assert_described(Unit::Count);
        match found.value {
            MetricValue::Counter(n) => n as f64,
            MetricValue::Gauge(g) => g,
            MetricValue::Histogram(_) => panic!("{metric}: a histogram"),
        }
    };
    assert_eq!(
        series("tower_llm_breaker_rejected_total", &[("name", "openai")]),
        1.0
    );
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("open", "closed"),
    ] {
        let expected = if (from, to) == ("closed", "open") {
            2.0
        } else {
            1.0
        };
        assert_eq!(
            series(
                "tower_llm_breaker_transitions_total",
                &[("name", "openai"), ("from", from), ("to", to)]
            ),
            expected,
            "{from} -> {to}"
        );
    }
    assert_eq!(
        series("tower_llm_breaker_state", &[("name", "openai")]),
        0.0
    );
    assert_eq!(
        series(
            "tower_llm_breaker_state",
            &[("name", "models"), ("key", "gpt")]
        ),
        1.0
    );
    series("tower_llm_breaker_state", &[("name", "breaker")]);
}
