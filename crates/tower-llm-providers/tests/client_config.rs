//! The default client's knobs at their extremes: the pool's idle reaper must not panic when
//! the idle timeout is too long to add to the clock.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tower::ServiceExt;
use tower_llm_providers::{ChatRequest, HttpClientConfig, Message, OpenAi};
use tower_llm_testkit::{FaultPlan, MockServer};

#[test]
fn an_idle_timeout_of_duration_max_does_not_panic_the_pool() {
    // A spawned task's panic vanishes with the task; this binary's only test records any.
    static PANICKED: AtomicBool = AtomicBool::new(false);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        default_hook(info);
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = MockServer::start(FaultPlan::healthy()).await.unwrap();
        let client = HttpClientConfig {
            pool_idle_timeout: Duration::MAX,
            ..HttpClientConfig::default()
        }
        .build()
        .unwrap();
        let openai = OpenAi::compatible(format!("{}/v1", server.base_url()))
            .api_key("k")
            .build_with(client)
            .unwrap();
        for _ in 0..3 {
            let answer = openai
                .clone()
                .oneshot(ChatRequest::new("m", vec![Message::user("hi")]))
                .await
                .unwrap();
            assert!(!answer.content.is_empty());
        }
        // Give the pool's idle task its turn.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(server.counters().requests, 3);
    });
    assert!(!PANICKED.load(Ordering::SeqCst), "a task panicked");
}
