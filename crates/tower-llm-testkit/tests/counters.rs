//! Counters, concurrency, cancellation and virtual time.

#![allow(clippy::unwrap_used)]

use std::pin::pin;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;
use tower_llm_testkit::{
    FaultPlan, Latency, MockServer, Route, TestClient, openai_chat, openai_chat_stream,
    openai_chat_with_key, openai_embeddings,
};

/// A real-time bound so a broken test fails instead of hanging; never an assertion.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(start_paused = true)]
async fn latency_passes_in_virtual_time() {
    let plan = FaultPlan::healthy().latency(Latency::Fixed(Duration::from_secs(30)));
    let server = MockServer::start(plan).await.unwrap();
    let client = TestClient::new();
    let start = Instant::now();
    let response = client
        .send(openai_chat(&server.base_url(), "m", "x"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(start.elapsed() >= Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn ten_slow_requests_are_in_flight_together() {
    let plan = FaultPlan::healthy().latency(Latency::Fixed(Duration::from_secs(5)));
    let server = MockServer::start(plan).await.unwrap();
    let client = TestClient::new();
    let start = Instant::now();
    let calls = (0..10).map(|i| {
        let client = client.clone();
        let request = openai_chat(&server.base_url(), "m", &format!("q{i}"));
        async move { client.send(request).await.unwrap().status() }
    });
    let statuses = join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200));
    // Concurrent, not one after another: well under 10 x 5 s of virtual time.
    assert!(start.elapsed() < Duration::from_secs(10));
    let counters = server.counters();
    assert_eq!(counters.max_concurrent, 10);
    assert_eq!(counters.requests, 10);
    assert_eq!(counters.completed, 10);
    assert_eq!(counters.in_flight, 0);
    assert_eq!(counters.cancelled, 0);
}

#[tokio::test(start_paused = true)]
async fn past_its_capacity_the_server_answers_429_at_once() {
    let plan = FaultPlan::healthy()
        .latency(Latency::Fixed(Duration::from_secs(5)))
        .capacity(4);
    let server = MockServer::start(plan.clone()).await.unwrap();
    assert_eq!(FaultPlan::from_json(&plan.to_json()).unwrap(), plan);
    let client = TestClient::new();
    let start = Instant::now();
    let calls = (0..10).map(|i| {
        let client = client.clone();
        let request = openai_chat(&server.base_url(), "m", &format!("q{i}"));
        async move {
            let response = client.send(request).await.unwrap();
            (response.status().as_u16(), Instant::now() - start)
        }
    });
    let answers = join_all(calls).await;
    let ok: Vec<_> = answers.iter().filter(|(s, _)| *s == 200).collect();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!((ok.len(), refused.len()), (4, 6), "{answers:?}");
    // Refused at once, without the latency; no retry hint (a provider under load).
    assert!(refused.iter().all(|(_, t)| *t < Duration::from_secs(1)));
    assert_eq!(server.counters().status(429), 6);
    // Once the four are answered there is room again.
    let response = client
        .send(openai_chat(&server.base_url(), "m", "again"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn a_dropped_client_future_counts_as_cancelled_not_completed() {
    let plan = FaultPlan::healthy().latency(Latency::Fixed(Duration::from_secs(3600)));
    let server = MockServer::start(plan).await.unwrap();
    let client = TestClient::new();
    {
        let mut call = pin!(client.send(openai_chat(&server.base_url(), "m", "x")));
        tokio::select! {
            _ = &mut call => panic!("answered through an hour of latency"),
            counters = within("the request", server.wait_until(|c| c.in_flight == 1)) => {
                assert_eq!(counters.requests, 1);
            }
        }
    }
    // The call future is dropped: hyper closes the connection and the server drops its
    // handler.
    let counters = within("the cancellation", server.wait_until(|c| c.cancelled == 1)).await;
    assert_eq!(counters.completed, 0);
    assert_eq!(counters.in_flight, 0);
    assert!(counters.by_status.is_empty());
}

#[tokio::test]
async fn a_client_leaving_mid_stream_is_cancelled_and_a_finished_stream_completed() {
    let plan = FaultPlan::healthy().stream_chunk_delay(Duration::from_secs(3600));
    let server = MockServer::start(plan).await.unwrap();
    let client = TestClient::new();
    let response = client
        .send_streaming(openai_chat_stream(&server.base_url(), "m", "a b c"))
        .await
        .unwrap();
    let mut body = response.into_body();
    assert!(TestClient::next_chunk(&mut body).await.unwrap().is_some());
    assert_eq!(server.counters().in_flight, 1);
    drop(body);
    let counters = within("the cancellation", server.wait_until(|c| c.in_flight == 0)).await;
    assert_eq!((counters.completed, counters.cancelled), (0, 1));
    // The head went out, so the status is counted.
    assert_eq!(counters.status(200), 1);

    server.set_plan(FaultPlan::healthy());
    server.reset_counters();
    let response = client
        .send(openai_chat_stream(&server.base_url(), "m", "a b c"))
        .await
        .unwrap();
    assert!(response.body().ends_with(b"data: [DONE]\n\n"));
    let counters = server.counters();
    assert_eq!((counters.completed, counters.cancelled), (1, 0));
}

#[tokio::test]
async fn counts_per_route_and_key_and_resets() {
    let server = MockServer::start(FaultPlan::healthy()).await.unwrap();
    let client = TestClient::new();
    let base = server.base_url();
    for key in ["tenant-a", "tenant-a", "tenant-b"] {
        client
            .send(openai_chat_with_key(&base, "m", "x", key))
            .await
            .unwrap();
    }
    client.send(openai_embeddings(&base, &["x"])).await.unwrap();
    let counters = server.counters();
    assert_eq!(counters.requests, 4);
    assert_eq!(counters.route(Route::OpenAiChat), 3);
    assert_eq!(counters.route(Route::OpenAiEmbeddings), 1);
    assert_eq!(counters.route(Route::AnthropicMessages), 0);
    assert_eq!(counters.key("tenant-a"), 2);
    assert_eq!(counters.key("tenant-b"), 1);
    assert_eq!(counters.key(""), 1);
    assert_eq!(counters.status(200), 4);
    assert_eq!(
        counters.requests,
        counters.completed + counters.cancelled + counters.in_flight
    );
    server.reset_counters();
    assert_eq!(server.counters(), tower_llm_testkit::Counters::default());
    assert_eq!(server.received().len(), 4, "received is kept apart");
}

#[tokio::test(start_paused = true)]
async fn long_tail_latency_is_seeded() {
    async fn elapsed(seed: u64) -> Vec<Duration> {
        let plan = FaultPlan::healthy().seed(seed).latency(Latency::LongTail {
            median: Duration::from_millis(200),
            p99: Duration::from_secs(5),
        });
        let server = MockServer::start(plan).await.unwrap();
        let client = TestClient::new();
        let mut out = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            client
                .send(openai_chat(&server.base_url(), "m", "x"))
                .await
                .unwrap();
            // Virtual time: exactly the drawn latency, give or take the runtime's tick.
            out.push(
                start
                    .elapsed()
                    .div_duration_f64(Duration::from_millis(1))
                    .round() as u64,
            );
        }
        out.into_iter().map(Duration::from_millis).collect()
    }
    let a = elapsed(9).await;
    assert_eq!(a, elapsed(9).await);
    assert_ne!(a, elapsed(10).await);
}

#[tokio::test]
async fn dropping_the_server_closes_it_and_its_connections() {
    use tower_llm_core::{FailureKind, classify_dyn_error};
    let plan = FaultPlan::healthy().stream_chunk_delay(Duration::from_secs(3600));
    let server = MockServer::start(plan).await.unwrap();
    let base = server.base_url();
    let client = TestClient::new();
    let response = client
        .send_streaming(openai_chat_stream(&base, "m", "a b"))
        .await
        .unwrap();
    let mut body = response.into_body();
    assert!(TestClient::next_chunk(&mut body).await.unwrap().is_some());
    drop(server);
    let cut = within("the cut", async {
        loop {
            match TestClient::next_chunk(&mut body).await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await;
    let error = cut.unwrap_err();
    assert_eq!(classify_dyn_error(&*error).kind, FailureKind::Transport);
    let refused = client.send(openai_chat(&base, "m", "x")).await.unwrap_err();
    assert_eq!(classify_dyn_error(&*refused).kind, FailureKind::Transport);
}
