//! Dropping a [`ChatStream`](tower_llm_providers::ChatStream) mid-answer closes its
//! connection: the testkit server sees the client go away (its `cancelled` counter) instead of
//! streaming on to a reader that is gone. Real clock and real HTTP; nothing asserts a duration.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use tower::ServiceExt;
use tower_llm_providers::{
    Anthropic, ChatRequest, Gemini, HttpClientConfig, Message, OpenAi, Streaming,
};
use tower_llm_testkit::{FaultPlan, MockServer};

async fn wait_for_cancelled(server: &MockServer, want: u64) -> u64 {
    // Bounded wait for the server to notice the closed socket; the count is what is asserted.
    for _ in 0..500 {
        let cancelled = server.counters().cancelled;
        if cancelled >= want {
            return cancelled;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.counters().cancelled
}

#[tokio::test]
async fn dropping_a_stream_mid_answer_closes_the_connection() {
    // Long gaps between events keep each answer in flight until the client leaves.
    let plan = FaultPlan::healthy()
        .reply("one two three four five six seven eight nine ten")
        .stream_chunk_delay(Duration::from_secs(1));
    let server = MockServer::start(plan).await.unwrap();
    let base = server.base_url();
    let client = HttpClientConfig::default().build().unwrap();
    let request = |model: &str| {
        Streaming(ChatRequest::new(model, vec![Message::user("count")]).max_tokens(64))
    };
    for (round, which) in ["openai", "anthropic", "gemini"].into_iter().enumerate() {
        let mut stream = match which {
            "openai" => OpenAi::compatible(format!("{base}/v1"))
                .api_key("sk-test")
                .build_with(client.clone())
                .unwrap()
                .oneshot(request("gpt-4o-mini"))
                .await
                .unwrap()
                .boxed(),
            "anthropic" => Anthropic::builder()
                .base_url(format!("{base}/v1"))
                .api_key("sk-ant-test")
                .build_with(client.clone())
                .unwrap()
                .oneshot(request("claude-sonnet-4-5"))
                .await
                .unwrap()
                .boxed(),
            _ => Gemini::builder()
                .base_url(format!("{base}/v1beta"))
                .api_key("AIza-test")
                .build_with(client.clone())
                .unwrap()
                .oneshot(request("gemini-2.5-flash"))
                .await
                .unwrap()
                .boxed(),
        };
        let first = stream.next().await.expect("a first item");
        assert!(first.is_ok(), "{which}: {first:?}");
        assert_eq!(server.counters().cancelled, round as u64, "{which}");
        drop(stream);
        let want = round as u64 + 1;
        assert_eq!(wait_for_cancelled(&server, want).await, want, "{which}");
        assert_eq!(server.counters().in_flight, 0, "{which}");
    }
}
