//! The funnel's output: hedges fired, losers cancelled, fallbacks and total failures as
//! events at their levels with their fields, the series with the `name` label and their
//! descriptions, and never a prompt, an answer or an error's text.
//!
//! One `#[test]` runs every case in turn: tracing caches callsite interest per process, and a
//! capturing subscriber beside other tests in the same binary would miss events.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss, clippy::float_cmp)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::Value;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_core::BoxError;
use tower_llm_race::hedge::{HedgeDelay, HedgeLayer};
use tower_llm_race::{FallbackLayer, RaceLayer};

const MARKER: &str = "SECRET-PROMPT-9b2d";

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

/// The events with `message` from the layer called `name`.
fn find<'a>(events: &'a [Value], message: &str, name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["fields"]["message"].as_str() == Some(message)
                && e["fields"]["name"].as_str() == Some(name)
        })
        .collect()
}

/// A provider that echoes the prompt after `latency`, or fails with a connection reset whose
/// text carries the marker.
fn leg(
    latency: Duration,
    ok: bool,
) -> impl Service<String, Response = String, Error = BoxError, Future: Send> + Clone {
    service_fn(move |prompt: String| async move {
        tokio::time::sleep(latency).await;
        if ok {
            Ok(format!("answer to {prompt}"))
        } else {
            Err(BoxError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                format!("reset while sending {prompt}"),
            )))
        }
    })
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
    let prompt = format!("{MARKER} hello");
    let ms = Duration::from_millis;

    tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                // A race: the fast leg wins, the slow one is cancelled.
                let race = RaceLayer::new()
                    .name("fastest")
                    .layer(vec![leg(ms(10), true), leg(ms(500), true)]);
                let answer = race.oneshot(prompt.clone()).await.unwrap();
                assert!(answer.contains(MARKER));

                // Every leg fails.
                let doomed = RaceLayer::new()
                    .name("doomed")
                    .layer(vec![leg(ms(10), false), leg(ms(20), false)]);
                assert!(doomed.oneshot(prompt.clone()).await.is_err());

                // A fallback moves on from a reset.
                let fallback = FallbackLayer::new()
                    .name("chain")
                    .layer(vec![leg(ms(10), false), leg(ms(10), true)]);
                fallback.oneshot(prompt.clone()).await.unwrap();

                // A hedge fires after its delay.
                let hedge = HedgeLayer::builder()
                    .name("hedged")
                    .delay(HedgeDelay::Fixed(ms(100)))
                    .unlimited_budget()
                    .build()
                    .unwrap()
                    .layer(vec![leg(ms(2000), true), leg(ms(10), true)]);
                hedge.oneshot(prompt.clone()).await.unwrap();

                // The default name.
                assert_eq!(RaceLayer::new().handle().name(), "race");
                assert_eq!(FallbackLayer::new().handle().name(), "fallback");
            });
        });
    });

    let events = buffer.events();
    let cancelled = find(&events, "losers cancelled", "fastest");
    assert_eq!(cancelled.len(), 1, "{events:#?}");
    assert_eq!(cancelled[0]["level"], "DEBUG");
    assert_eq!(cancelled[0]["target"], "tower_llm_race::observe");
    assert_eq!(cancelled[0]["fields"]["strategy"], "race");
    assert_eq!(cancelled[0]["fields"]["cancelled"], 1);

    let all_failed = find(&events, "all services failed", "doomed");
    assert_eq!(all_failed.len(), 1, "{events:#?}");
    assert_eq!(all_failed[0]["level"], "WARN");
    assert_eq!(all_failed[0]["fields"]["services"], 2);
    assert_eq!(all_failed[0]["fields"]["kinds"], "transport,transport");

    let failed = find(&events, "service failed", "doomed");
    assert_eq!(failed.len(), 2, "{events:#?}");
    assert!(failed.iter().all(|e| e["level"] == "DEBUG"));
    assert_eq!(failed[0]["fields"]["kind"], "transport");

    let moved = find(&events, "falling back to the next service", "chain");
    assert_eq!(moved.len(), 1, "{events:#?}");
    assert_eq!(moved[0]["level"], "INFO");
    assert_eq!(moved[0]["fields"]["strategy"], "fallback");
    assert_eq!(moved[0]["fields"]["from"], 0);
    assert_eq!(moved[0]["fields"]["to"], 1);
    assert_eq!(moved[0]["fields"]["kind"], "transport");

    let fired = find(&events, "hedge fired", "hedged");
    assert_eq!(fired.len(), 1, "{events:#?}");
    assert_eq!(fired[0]["level"], "DEBUG");
    assert_eq!(fired[0]["fields"]["leg"], 1);
    assert_eq!(fired[0]["fields"]["delay_ms"], 100.0);
    assert_eq!(find(&events, "losers cancelled", "hedged").len(), 1);

    assert!(
        !buffer.text().contains(MARKER),
        "a prompt, answer or error text leaked"
    );

    let snapshot = snapshotter.snapshot().into_vec();
    let series = |metric: &str, labels: &[(&str, &str)]| {
        let (_, unit, description, value) = snapshot
            .iter()
            .find(|(key, ..)| {
                key.key().name() == metric
                    && labels
                        .iter()
                        .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .unwrap_or_else(|| panic!("{metric} {labels:?} missing: {snapshot:#?}"));
        assert_eq!(*unit, Some(Unit::Count), "{metric}: unit");
        assert!(description.is_some(), "{metric}: description");
        match value {
            DebugValue::Counter(n) => *n as f64,
            other => panic!("{metric}: not a counter: {other:?}"),
        }
    };
    let race = [("name", "fastest"), ("strategy", "race")];
    assert_eq!(series("tower_llm_race_requests_total", &race), 1.0);
    assert_eq!(series("tower_llm_race_attempts_total", &race), 2.0);
    assert_eq!(series("tower_llm_race_cancelled_total", &race), 1.0);
    let doomed = [("name", "doomed")];
    assert_eq!(series("tower_llm_race_exhausted_total", &doomed), 1.0);
    assert_eq!(
        series(
            "tower_llm_race_failures_total",
            &[("name", "doomed"), ("kind", "transport")]
        ),
        2.0
    );
    assert_eq!(
        series("tower_llm_race_attempts_total", &[("name", "chain")]),
        2.0
    );
    let hedged = [("name", "hedged"), ("strategy", "hedge")];
    assert_eq!(series("tower_llm_race_hedges_total", &hedged), 1.0);
    assert_eq!(
        series("tower_llm_race_hedge_budget_exhausted_total", &hedged),
        0.0
    );
    for (key, ..) in &snapshot {
        assert!(
            key.key().labels().all(|l| !l.value().contains(MARKER)),
            "a prompt leaked into a label"
        );
    }
}
