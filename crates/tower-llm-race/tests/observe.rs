//! The funnel's output: hedges fired, losers cancelled, fallbacks and total failures as
//! events at their levels with their fields, the series with the `name` label and their
//! descriptions, and never a prompt, an answer or an error's text.
//!
//! One `#[test]` runs every case in turn: tracing caches callsite interest per process, and a
//! capturing subscriber beside other tests in the same binary would miss events.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss, clippy::float_cmp)]

use std::time::Duration;

use metrics::Unit;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_core::BoxError;
use tower_llm_race::hedge::{HedgeDelay, HedgeLayer};
use tower_llm_race::{FallbackLayer, RaceLayer};
use tower_llm_testkit::observe::Capture;

const MARKER: &str = "SECRET-PROMPT-9b2d";

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
    let capture = Capture::install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let prompt = format!("{MARKER} hello");
    let ms = Duration::from_millis;

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

    let events = capture.events();
    let cancelled = capture.find_named("losers cancelled", "fastest");
    assert_eq!(cancelled.len(), 1, "{events:#?}");
    assert_eq!(cancelled[0]["level"], "DEBUG");
    assert_eq!(cancelled[0]["target"], "tower_llm_race::observe");
    assert_eq!(cancelled[0]["fields"]["strategy"], "race");
    assert_eq!(cancelled[0]["fields"]["cancelled"], 1);

    let all_failed = capture.find_named("all services failed", "doomed");
    assert_eq!(all_failed.len(), 1, "{events:#?}");
    assert_eq!(all_failed[0]["level"], "WARN");
    assert_eq!(all_failed[0]["fields"]["services"], 2);
    assert_eq!(all_failed[0]["fields"]["kinds"], "transport,transport");

    let failed = capture.find_named("service failed", "doomed");
    assert_eq!(failed.len(), 2, "{events:#?}");
    assert!(failed.iter().all(|e| e["level"] == "DEBUG"));
    assert_eq!(failed[0]["fields"]["kind"], "transport");

    let moved = capture.find_named("falling back to the next service", "chain");
    assert_eq!(moved.len(), 1, "{events:#?}");
    assert_eq!(moved[0]["level"], "INFO");
    assert_eq!(moved[0]["fields"]["strategy"], "fallback");
    assert_eq!(moved[0]["fields"]["from"], 0);
    assert_eq!(moved[0]["fields"]["to"], 1);
    assert_eq!(moved[0]["fields"]["kind"], "transport");

    let fired = capture.find_named("hedge fired", "hedged");
    assert_eq!(fired.len(), 1, "{events:#?}");
    assert_eq!(fired[0]["level"], "DEBUG");
    assert_eq!(fired[0]["fields"]["leg"], 1);
    assert_eq!(fired[0]["fields"]["delay_ms"], 100.0);
    assert_eq!(capture.find_named("losers cancelled", "hedged").len(), 1);

    capture.assert_absent(&[MARKER]);

    let metrics = capture.metrics();
    let series = |metric: &str, labels: &[(&str, &str)]| {
        metrics
            .get(metric, labels)
            .assert_described(Unit::Count)
            .counter() as f64
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
}
