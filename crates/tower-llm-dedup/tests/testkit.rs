//! Over real HTTP: the testkit's mock server counts what actually went upstream.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};
use tower_llm_dedup::DedupLayer;
use tower_llm_testkit::{FaultPlan, Latency, MockServer, TestClient, post_json, with_api_key};

fn slow_plan() -> FaultPlan {
    FaultPlan::healthy()
        .name("mock")
        .latency(Latency::Fixed(Duration::from_millis(300)))
}

/// A deterministic chat request (temperature 0), so its answer may be cached.
fn chat(base_url: &str, prompt: &str, key: &str) -> http::Request<Bytes> {
    let body = json!({
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
    });
    with_api_key(
        post_json(&format!("{base_url}/v1/chat/completions"), &body),
        key,
    )
}

fn content(response: &http::Response<Bytes>) -> String {
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json body");
    body["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_identical_requests_make_one_upstream_call() {
    let server = MockServer::start(slow_plan()).await.expect("server");
    let layer = DedupLayer::new(Duration::from_secs(60));
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(TestClient::new());
    let base = server.base_url();
    let tasks: Vec<_> = (0..100)
        .map(|_| tokio::spawn(service.clone().oneshot(chat(&base, "hello", "k"))))
        .collect();
    for task in tasks {
        let response = task.await.expect("no panic").expect("ok");
        assert_eq!(response.status(), 200);
        assert_eq!(content(&response), "mock: hello");
    }
    assert_eq!(server.counters().requests, 1);
    assert_eq!(handle.stats().inner_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leader_with_ten_waiters_makes_one_call_and_all_get_the_answer() {
    let server = MockServer::start(slow_plan()).await.expect("server");
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(TestClient::new());
    let base = server.base_url();
    let leader = tokio::spawn(service.clone().oneshot(chat(&base, "q", "k")));
    server.wait_until(|c| c.requests == 1).await;
    let waiters: Vec<_> = (0..10)
        .map(|_| tokio::spawn(service.clone().oneshot(chat(&base, "q", "k"))))
        .collect();
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    for waiter in waiters {
        let response = waiter.await.expect("no panic").expect("ok");
        assert_eq!(content(&response), "mock: q");
    }
    let counters = server.counters();
    assert_eq!(counters.requests, 1);
    assert_eq!(counters.cancelled, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_waiters_dropped_cancels_the_upstream_call() {
    let plan = FaultPlan::healthy().latency(Latency::Fixed(Duration::from_secs(30)));
    let server = MockServer::start(plan).await.expect("server");
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(TestClient::new());
    let base = server.base_url();
    let callers: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(chat(&base, "q", "k"))))
        .collect();
    server.wait_until(|c| c.requests == 1).await;
    for caller in &callers {
        caller.abort();
    }
    for caller in callers {
        let _ = caller.await;
    }
    let counters = server.wait_until(|c| c.cancelled == 1).await;
    assert_eq!(counters.requests, 1);
    assert_eq!(counters.completed, 0);
}

#[tokio::test(start_paused = true)]
async fn ttl_expiry_in_paused_time() {
    let server = MockServer::start(FaultPlan::healthy())
        .await
        .expect("server");
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(30)))
        .service(TestClient::new());
    let base = server.base_url();
    service
        .clone()
        .oneshot(chat(&base, "q", "k"))
        .await
        .expect("ok");
    tokio::time::advance(Duration::from_secs(29)).await;
    service
        .clone()
        .oneshot(chat(&base, "q", "k"))
        .await
        .expect("ok");
    assert_eq!(server.counters().requests, 1, "cached at 29 s");
    tokio::time::advance(Duration::from_secs(2)).await;
    service
        .clone()
        .oneshot(chat(&base, "q", "k"))
        .await
        .expect("ok");
    assert_eq!(server.counters().requests, 2, "expired at 31 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_with_the_same_prompt_make_two_calls() {
    let server = MockServer::start(slow_plan()).await.expect("server");
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(TestClient::new());
    let base = server.base_url();
    let (a, b) = tokio::join!(
        service.clone().oneshot(chat(&base, "same", "tenant-a")),
        service.clone().oneshot(chat(&base, "same", "tenant-b")),
    );
    a.expect("ok");
    b.expect("ok");
    service
        .clone()
        .oneshot(chat(&base, "same", "tenant-a"))
        .await
        .expect("ok");
    service
        .clone()
        .oneshot(chat(&base, "same", "tenant-b"))
        .await
        .expect("ok");
    let counters = server.counters();
    assert_eq!(counters.requests, 2);
    assert_eq!(counters.key("tenant-a"), 1);
    assert_eq!(counters.key("tenant-b"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_key_order_does_not_defeat_the_cache() {
    let server = MockServer::start(FaultPlan::healthy())
        .await
        .expect("server");
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(TestClient::new());
    let url = format!("{}/v1/chat/completions", server.base_url());
    let spelled = |body: &str| {
        let mut request = post_json(&url, &json!(null));
        *request.body_mut() = Bytes::from(body.to_owned());
        with_api_key(request, "k")
    };
    let a = service
        .clone()
        .oneshot(spelled(
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
        ))
        .await
        .expect("ok");
    let b = service
        .clone()
        .oneshot(spelled(
            "{\n  \"messages\": [ { \"content\": \"hi\", \"role\": \"user\" } ],\n  \"temperature\": 0.0,\n  \"model\": \"m\"\n}",
        ))
        .await
        .expect("ok");
    assert_eq!(a.body(), b.body());
    assert_eq!(server.counters().requests, 1);
}
