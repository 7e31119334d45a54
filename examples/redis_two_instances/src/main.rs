//! Recipe: dedup and a rate limit shared by two instances through Redis.
//!
//! `cargo run -p example-redis-two-instances` starts a throwaway `redis-server` (the testkit's
//! `RedisServer`, on a free loopback port) and the testkit mock upstream, builds the same
//! stack twice, as two gateway instances would, and shows that:
//!
//! - an answer one instance got is served to the other from Redis: the upstream is called once;
//! - the requests-per-minute budget is one budget: each instance stays under it on its own,
//!   together they are held to it.
//!
//! Without `redis-server` on the `PATH` it says so and exits successfully (install it with
//! your package manager, e.g. `apt-get install redis-server`).
//!
//! What must match across instances: the fingerprint key (`FingerprintKey::from_secret`, the
//! same secret everywhere, or their cache keys differ), the dedup namespace and the rate-limit
//! prefix. What stays per instance: in-flight coalescing, the in-memory cache in front of
//! Redis, the concurrency limit and waiting queues. Redis down or slow never fails a request:
//! dedup goes on to the upstream, the limiter applies its `BackendFailure` choice (default:
//! admit). See `docs/distributed.md`.

use std::time::Duration;

use bytes::Bytes;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_llm_core::{BoxError, FingerprintKey};
use tower_llm_dedup::DedupLayer;
use tower_llm_dedup::redis::{HttpResponseCodec, RedisBackend as DedupRedis};
use tower_llm_ratelimit::{Quota, RateLimitLayer, RedisBackend as LimitRedis};
use tower_llm_testkit::{
    FaultPlan, Latency, MockServer, RedisServer, Route, TestClient, post_json,
};

type Instance = BoxCloneSyncService<http::Request<Bytes>, http::Response<Bytes>, BoxError>;

/// In production: 32 random bytes from your secret store, the same for every instance.
const SHARED_SECRET: &[u8] = b"recipe: use 32 random bytes here";

/// One instance's stack: dedup backed by Redis, then a rate limit whose budget lives in Redis.
async fn instance(redis_url: &str) -> Result<Instance, BoxError> {
    let dedup = DedupLayer::<http::Response<Bytes>>::builder()
        .fingerprint_key(FingerprintKey::from_secret(SHARED_SECRET))
        .redis(DedupRedis::new(redis_url, HttpResponseCodec)?.namespace("recipe-chat"))
        .ttl(Duration::from_secs(600))
        .build()?;
    let limit = RateLimitLayer::builder()
        // Six requests a minute for the whole fleet, all six allowed back to back.
        .requests(Quota::per_minute(6).with_burst(6))
        .redis(
            LimitRedis::connect(redis_url)
                .await?
                .namespace("recipe-limit"),
        )
        // Refuse rather than queue for the next free slot (10 s away), so that the refusal
        // shows.
        .max_wait(Duration::from_millis(100))
        .build()?;
    let stack = ServiceBuilder::new()
        .layer(dedup)
        .layer(limit)
        .service(TestClient::new());
    Ok(BoxCloneSyncService::new(stack))
}

fn chat(base_url: &str, prompt: &str) -> http::Request<Bytes> {
    // temperature 0: deterministic, so the answer may be cached and shared.
    post_json(
        &format!("{base_url}/v1/chat/completions"),
        &serde_json::json!({
            "model": "gpt-4o-mini",
            "temperature": 0,
            "messages": [{ "role": "user", "content": prompt }],
        }),
    )
}

async fn ask(name: &str, instance: &Instance, base_url: &str, prompt: &str, mock: &MockServer) {
    let result = instance.clone().oneshot(chat(base_url, prompt)).await;
    let what = match &result {
        Ok(response) => {
            let body: serde_json::Value =
                serde_json::from_slice(response.body()).unwrap_or_default();
            format!(
                "{} {}",
                response.status(),
                body["choices"][0]["message"]["content"]
            )
        }
        Err(error) => format!("refused, {error}"),
    };
    println!(
        "  {name} asks {prompt:<12} -> {what:<34} upstream calls so far: {}",
        mock.counters().route(Route::OpenAiChat)
    );
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let Some(redis) = RedisServer::start() else {
        println!(
            "redis_two_instances: redis-server is not installed, nothing to show; \
             install it (e.g. `apt-get install redis-server`) and run again"
        );
        return Ok(());
    };
    let mock = MockServer::start(
        FaultPlan::healthy()
            .name("mock")
            .latency(Latency::Fixed(Duration::from_millis(30))),
    )
    .await?;
    let base_url = mock.base_url();
    let a = instance(&redis.url()).await?;
    let b = instance(&redis.url()).await?;
    println!("redis at {}, upstream at {base_url}", redis.url());

    println!("shared cache:");
    ask("A", &a, &base_url, "Hello", &mock).await;
    // Dedup writes to Redis in the background, after answering: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ask("B", &b, &base_url, "Hello", &mock).await;

    println!("shared budget of 6 requests a minute (one already spent by A):");
    for n in 1..=3 {
        ask("A", &a, &base_url, &format!("question {n}"), &mock).await;
    }
    for n in 4..=6 {
        ask("B", &b, &base_url, &format!("question {n}"), &mock).await;
    }
    Ok(())
}
