//! The funnel's output: events at their levels with their fields, the counters with the
//! `name` label and their descriptions, and never a prompt or an answer.
//!
//! One `#[test]` runs every case in turn: tracing caches callsite interest per process, and a
//! capturing subscriber beside other tests in the same binary would miss events.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metrics::Unit;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_llm_core::BoxError;
use tower_llm_dedup::DedupLayer;
use tower_llm_testkit::observe::Capture;

const MARKER: &str = "SECRET-PROMPT-7d1f";

#[test]
fn events_and_metrics() {
    let capture = Capture::install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();

    runtime.block_on(async {
        let layer = DedupLayer::<String>::builder()
            .name("chat-cache")
            .cache_all()
            .build()
            .unwrap();
        let handle = layer.handle();
        assert_eq!(handle.name(), "chat-cache");
        let service =
            ServiceBuilder::new()
                .layer(layer)
                .service(service_fn(|prompt: String| async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok::<_, BoxError>(format!("answer to {prompt}"))
                }));
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

    let events = capture.events();
    let coalesced = capture.find("dedup: coalesced with a call in flight");
    assert_eq!(coalesced.len(), 1, "{events:?}");
    assert_eq!(coalesced[0]["level"], "TRACE");
    assert_eq!(coalesced[0]["fields"]["name"], "chat-cache");
    assert_eq!(
        coalesced[0]["target"], "tower_llm_dedup::observe",
        "target is the crate's module path"
    );

    let hits = capture.find("dedup: cache hit");
    assert_eq!(hits.len(), 1, "{events:?}");
    assert_eq!(hits[0]["level"], "TRACE");
    assert_eq!(hits[0]["fields"]["name"], "chat-cache");
    assert_eq!(hits[0]["fields"]["source"], "memory");

    let cleared = capture.find("dedup: cache cleared");
    assert_eq!(cleared.len(), 1, "{events:?}");
    assert_eq!(cleared[0]["level"], "INFO");
    assert_eq!(cleared[0]["fields"]["name"], "chat-cache");
    assert_eq!(cleared[0]["fields"]["entries"], 1);

    capture.assert_absent(&[MARKER]);

    let metrics = capture.metrics();
    let counter = |metric: &str| {
        metrics
            .get(metric, &[("name", "chat-cache")])
            .assert_described(Unit::Count)
            .counter()
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
    assert!(metrics.iter().any(|m| m.label("name") == Some("dedup")));
}
