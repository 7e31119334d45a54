//! The Redis backend against a real `redis-server` (the testkit's fixture), behind the mock
//! LLM server. Skipped, with a printed reason, when `redis-server` is not installed (and a
//! failure then when `CI` is set).
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};
use tower_llm_core::FingerprintKey;
use tower_llm_dedup::DedupLayer;
use tower_llm_dedup::redis::{HttpResponseCodec, RedisBackend};
use tower_llm_testkit::{FaultPlan, MockServer, RedisServer, TestClient, post_json, with_api_key};

const SECRET: &[u8] = b"a shared secret of at least 32 bytes, for tests";

fn chat(base_url: &str, prompt: &str) -> http::Request<Bytes> {
    let body = json!({
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
    });
    with_api_key(
        post_json(&format!("{base_url}/v1/chat/completions"), &body),
        "k",
    )
}

fn instance(redis_url: &str, namespace: &str) -> DedupLayer<http::Response<Bytes>> {
    let backend = RedisBackend::new(redis_url, HttpResponseCodec)
        .expect("valid url")
        .namespace(namespace)
        .timeout(Duration::from_millis(250))
        .cool_down(Duration::from_millis(200));
    DedupLayer::builder()
        .fingerprint_key(FingerprintKey::from_secret(SECRET))
        .redis(backend)
        .build()
        .expect("valid")
}

/// Waits (bounded) until the background write of an answer has landed in Redis.
async fn until_stored(check: impl Fn() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_answers_through_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server = MockServer::start(FaultPlan::healthy().name("mock"))
        .await
        .expect("server");
    let base = server.base_url();
    let first = instance(&redis.url(), "shared");
    let second = instance(&redis.url(), "shared");
    let second_handle = second.handle();
    let a = ServiceBuilder::new()
        .layer(first)
        .service(TestClient::new());
    let b = ServiceBuilder::new()
        .layer(second)
        .service(TestClient::new());

    let answer = a.clone().oneshot(chat(&base, "q")).await.expect("ok");
    assert_eq!(answer.status(), 200);
    let client = redis::Client::open(redis.url()).expect("url");
    until_stored(|| {
        let mut conn = client.get_connection().expect("connect");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("shared:*")
            .query(&mut conn)
            .expect("keys");
        !keys.is_empty()
    })
    .await;

    let from_redis = b.clone().oneshot(chat(&base, "q")).await.expect("ok");
    assert_eq!(from_redis.body(), answer.body());
    assert_eq!(from_redis.headers(), answer.headers());
    assert_eq!(
        server.counters().requests,
        1,
        "the second instance asked Redis, not upstream"
    );
    assert_eq!(second_handle.stats().remote_hits, 1);

    // Another namespace sees nothing.
    let other = ServiceBuilder::new()
        .layer(instance(&redis.url(), "other"))
        .service(TestClient::new());
    other.oneshot(chat(&base, "q")).await.expect("ok");
    assert_eq!(server.counters().requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_means_inner_calls_never_errors() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let server = MockServer::start(FaultPlan::healthy())
        .await
        .expect("server");
    let base = server.base_url();
    let layer = instance(&redis.url(), "kill");
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(TestClient::new());
    for i in 0..5 {
        service
            .clone()
            .oneshot(chat(&base, &format!("before {i}")))
            .await
            .expect("ok");
    }
    assert_eq!(handle.stats().remote_errors, 0);

    redis.kill();
    for i in 0..20 {
        let response = service
            .clone()
            .oneshot(chat(&base, &format!("after {i}")))
            .await
            .expect("Redis down never fails a request");
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        server.counters().requests,
        25,
        "every new prompt went upstream"
    );
    assert!(handle.stats().remote_errors >= 1, "{:?}", handle.stats());
    // The in-memory cache still answers.
    service
        .clone()
        .oneshot(chat(&base, "after 3"))
        .await
        .expect("ok");
    assert_eq!(server.counters().requests, 25);

    // Back up (empty): after the cool-down the layer uses it again.
    redis.restart();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stored = false;
    for i in 0..50 {
        service
            .clone()
            .oneshot(chat(&base, &format!("later {i}")))
            .await
            .expect("ok");
        let client = redis::Client::open(redis.url()).expect("url");
        if let Ok(mut conn) = client.get_connection() {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("kill:*")
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                stored = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stored,
        "the layer reconnected and wrote to the restarted Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_a_miss_not_an_error() {
    // Nothing listens on the port of a server we start and kill.
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    redis.kill();
    let server = MockServer::start(FaultPlan::healthy())
        .await
        .expect("server");
    let layer = DedupLayer::<String>::builder()
        .cache_all()
        .redis(
            RedisBackend::json(&url)
                .expect("valid url")
                .timeout(Duration::from_millis(100)),
        )
        .build()
        .expect("valid");
    let handle = layer.handle();
    let base = server.base_url();
    let client = TestClient::new();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(move |prompt: String| {
            let client = client.clone();
            let request = chat(&base, &prompt);
            async move {
                let response = client.oneshot(request).await?;
                Ok::<_, tower_llm_core::BoxError>(
                    String::from_utf8_lossy(response.body()).into_owned(),
                )
            }
        }));
    for _ in 0..3 {
        service
            .clone()
            .oneshot("q".to_string())
            .await
            .expect("answered without Redis");
    }
    assert_eq!(server.counters().requests, 1, "memory cache still works");
    assert!(handle.stats().remote_errors >= 1);
}

/// An answer kept "for ever" (`Duration::MAX`) is stored in Redis with the longest TTL Redis
/// accepts, not refused by Redis and silently missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_too_long_for_redis_is_clamped_not_dropped() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server = MockServer::start(FaultPlan::healthy())
        .await
        .expect("server");
    let backend = RedisBackend::new(&redis.url(), HttpResponseCodec)
        .expect("valid url")
        .namespace("forever")
        .timeout(Duration::from_millis(250));
    let layer = DedupLayer::builder()
        .fingerprint_key(FingerprintKey::from_secret(SECRET))
        .ttl(Duration::MAX)
        .redis(backend)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(TestClient::new());
    let answer = service
        .oneshot(chat(&server.base_url(), "q"))
        .await
        .expect("ok");
    assert_eq!(answer.status(), 200);

    let client = redis::Client::open(redis.url()).expect("url");
    let ttl_of_stored = || {
        let mut conn = client.get_connection().expect("connect");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("forever:*")
            .query(&mut conn)
            .expect("keys");
        let key = keys.first()?;
        redis::cmd("PTTL").arg(key).query::<i64>(&mut conn).ok()
    };
    until_stored(|| ttl_of_stored().is_some()).await;
    let ttl = ttl_of_stored().expect("the answer was stored in Redis");
    const CENTURY_MS: i64 = 100 * 365 * 24 * 3600 * 1000;
    assert!(ttl > 1_000 * CENTURY_MS, "PTTL {ttl}");
    assert_eq!(handle.stats().remote_errors, 0);
}
