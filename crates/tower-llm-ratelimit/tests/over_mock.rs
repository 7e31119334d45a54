//! The limiter in front of the testkit's mock server, which enforces its own quota over a
//! sliding 60 s window, in paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_layer::Layer;
use tower_llm_core::{BoxError, RateLimited, estimate_body_tokens};
use tower_llm_ratelimit::{Quota, RateLimitLayer, Reconcile};
use tower_llm_testkit::{
    Fault, FaultPlan, MockServer, Quota as MockQuota, TestClient, openai_chat, post_json,
    with_api_key,
};

const S: Duration = Duration::from_secs(1);
const RPM: u64 = 60;
const TPM: u64 = 10_000;

fn chat(base: &str, prompt: &str, max_tokens: u64) -> http::Request<Bytes> {
    post_json(
        &format!("{base}/v1/chat/completions"),
        &json!({
            "model": "gpt-4o-mini",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        }),
    )
}

#[derive(Default)]
struct Tally {
    /// (finished at, status, estimated tokens)
    answers: Vec<(Duration, u16, u64)>,
    local_rejections: u64,
}

/// Offers `per_minute` requests a minute for `minutes`, each of `max_tokens(i)` output tokens,
/// through a limiter configured at the mock's limits. Returns the tally at the end.
async fn offer(per_minute: u64, minutes: u64, max_tokens: impl Fn(u64) -> u64) -> (Tally, u64) {
    let server = MockServer::start(FaultPlan::healthy().quota(MockQuota::new(RPM, TPM)))
        .await
        .expect("mock server");
    let base = server.base_url();
    let layer = RateLimitLayer::builder()
        .requests(Quota::per_minute(RPM))
        .tokens(Quota::per_minute(TPM))
        // The mock, like OpenAI, counts the estimate up front and keeps it.
        .reconcile(Reconcile::ChargeOnly)
        .max_wait(Duration::from_secs(60))
        .build()
        .expect("config");
    let svc = layer.layer(TestClient::new());
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let end = start + Duration::from_secs(60 * minutes);
    let mut tick = tokio::time::interval(Duration::from_secs(60) / per_minute as u32);
    let mut i = 0;
    loop {
        let at = tick.tick().await;
        if at >= end {
            break;
        }
        let request = chat(&base, &format!("request number {i}"), max_tokens(i));
        let cost = estimate_body_tokens(request.body());
        let tally = tally.clone();
        let svc = svc.clone();
        tokio::spawn(async move {
            let result = svc.oneshot(request).await;
            let mut tally = tally.lock().expect("tally");
            match result {
                Ok(response) => {
                    let status = response.status().as_u16();
                    tally.answers.push((start.elapsed(), status, cost));
                }
                Err(e) if e.is::<RateLimited>() => tally.local_rejections += 1,
                Err(e) => panic!("unexpected error: {e}"),
            }
        });
        i += 1;
    }
    let counters = server.counters();
    assert_eq!(
        counters.status(429),
        0,
        "the mock refused some: {counters:?}"
    );
    let tally = std::mem::take(&mut *tally.lock().expect("tally"));
    (tally, i)
}

#[tokio::test(start_paused = true)]
async fn three_times_the_request_limit_gets_no_429_and_uses_the_quota() {
    // Small requests (about 60 tokens): the requests quota binds.
    let minutes = 10;
    let (tally, offered) = offer(3 * RPM, minutes, |_| 50).await;
    let window = Duration::from_secs(60 * minutes);
    let ok = tally
        .answers
        .iter()
        .filter(|a| a.1 == 200 && a.0 <= window)
        .count() as u64;
    assert!(tally.answers.iter().all(|a| a.1 == 200));
    let allowed = RPM * minutes;
    println!(
        "{ok} of {allowed} allowed requests, {offered} offered, {} shed",
        tally.local_rejections
    );
    assert!(
        ok * 100 >= allowed * 95,
        "{ok} of {allowed} allowed requests ({offered} offered)"
    );
    assert!(ok <= allowed + RPM);
    assert!(tally.local_rejections > 0, "the excess was shed locally");
}

#[tokio::test(start_paused = true)]
async fn three_times_the_token_limit_gets_no_429_and_uses_the_quota() {
    // Requests of 60 to 460 tokens, about 40 a minute fit: the tokens quota binds.
    let minutes = 10;
    let (tally, offered) = offer(120, minutes, |i| 50 + (i * 37) % 400).await;
    let window = Duration::from_secs(60 * minutes);
    assert!(tally.answers.iter().all(|a| a.1 == 200));
    let tokens: u64 = tally
        .answers
        .iter()
        .filter(|a| a.0 <= window)
        .map(|a| a.2)
        .sum();
    let allowed = TPM * minutes;
    println!(
        "{tokens} of {allowed} allowed tokens, {offered} offered, {} shed",
        tally.local_rejections
    );
    assert!(
        tokens * 100 >= allowed * 95,
        "{tokens} of {allowed} allowed tokens ({offered} offered)"
    );
    assert!(tally.local_rejections > 0, "the excess was shed locally");
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_20s_pauses_sending_for_20s() {
    let plan = FaultPlan::healthy().script([Some(Fault::RateLimited {
        retry_after: Duration::from_secs(20),
        form: Default::default(),
    })]);
    let server = MockServer::start(plan).await.expect("mock server");
    let base = server.base_url();
    let svc = RateLimitLayer::builder()
        .build()
        .expect("config")
        .layer(TestClient::new());
    let first = svc
        .clone()
        .oneshot(openai_chat(&base, "gpt-4o-mini", "first"))
        .await
        .expect("answer");
    assert_eq!(first.status(), 429);
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..3 {
        let request = openai_chat(&base, "gpt-4o-mini", &format!("queued {i}"));
        handles.push(tokio::spawn(svc.clone().oneshot(request)));
    }
    tokio::time::sleep(10 * S).await;
    let late = openai_chat(&base, "gpt-4o-mini", "new");
    handles.push(tokio::spawn(svc.clone().oneshot(late)));
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert_eq!(server.counters().requests, 1, "sent during the pause");
    for h in handles {
        let response = h.await.expect("join").expect("answer");
        assert_eq!(response.status(), 200);
    }
    let waited = start.elapsed();
    assert!(
        waited >= 20 * S - Duration::from_millis(5) && waited < 21 * S,
        "{waited:?}"
    );
    assert_eq!(server.counters().requests, 5);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_lets_the_next_one_go_earlier() {
    let server = MockServer::start(FaultPlan::healthy().quota(MockQuota::new(RPM, TPM)))
        .await
        .expect("mock server");
    let base = server.base_url();
    let svc = RateLimitLayer::builder()
        .tokens(Quota::per_minute(TPM).with_burst(TPM))
        .reconcile(Reconcile::ChargeOnly)
        .max_wait(Duration::from_secs(120))
        .build()
        .expect("config")
        .layer(TestClient::new());
    let first = svc
        .clone()
        .oneshot(chat(&base, "big", 6_000))
        .await
        .expect("answer");
    assert_eq!(first.status(), 200);
    // 6,000 more cannot go until the first leaves the window; 100 more could go now.
    let big = tokio::spawn(svc.clone().oneshot(chat(&base, "big too", 6_000)));
    tokio::task::yield_now().await;
    let small = tokio::spawn(svc.clone().oneshot(chat(&base, "small", 100)));
    tokio::time::sleep(2 * S).await;
    assert_eq!(
        server.counters().requests,
        1,
        "FIFO: the small one waits its turn"
    );
    let start = Instant::now();
    big.abort();
    let answer = small.await.expect("join").expect("answer");
    assert_eq!(answer.status(), 200);
    assert!(
        start.elapsed() < S,
        "went {:?} after the drop",
        start.elapsed()
    );
    assert_eq!(server.counters().requests, 2);
    assert_eq!(server.counters().status(429), 0);
}

#[tokio::test(start_paused = true)]
async fn waiters_reach_the_server_in_order() {
    let server = MockServer::start(FaultPlan::healthy())
        .await
        .expect("mock server");
    let base = server.base_url();
    let svc = RateLimitLayer::builder()
        .requests(Quota::per_minute(RPM))
        .build()
        .expect("config")
        .layer(TestClient::new());
    let mut handles = Vec::new();
    for i in 0..8 {
        let request = openai_chat(&base, "gpt-4o-mini", &format!("{i}"));
        handles.push(tokio::spawn(svc.clone().oneshot(request)));
        tokio::task::yield_now().await;
    }
    for h in handles {
        h.await.expect("join").expect("answer");
    }
    let order: Vec<String> = server
        .received()
        .iter()
        .filter_map(|r| r.json())
        .map(|j| {
            j["messages"][0]["content"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect();
    assert_eq!(order, ["0", "1", "2", "3", "4", "5", "6", "7"]);
}

#[tokio::test(start_paused = true)]
async fn keys_are_limited_and_paused_separately() {
    let plan = FaultPlan::healthy().script([Some(Fault::RateLimited {
        retry_after: Duration::from_secs(30),
        form: Default::default(),
    })]);
    let server = MockServer::start(plan).await.expect("mock server");
    let base = server.base_url();
    let key_of = |r: &http::Request<Bytes>| {
        r.headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec())
    };
    let svc = RateLimitLayer::builder()
        .requests(Quota::per_minute(6).with_burst(1))
        .key_fn(key_of)
        .build()
        .expect("config")
        .layer(TestClient::new());
    let send = |key: &str, prompt: &str| {
        let request = with_api_key(openai_chat(&base, "gpt-4o-mini", prompt), key);
        tokio::spawn(svc.clone().oneshot(request))
    };
    // Key "one" gets the scripted 429 and pauses for 30 s.
    let limited = send("one", "a").await.expect("join").expect("answer");
    assert_eq!(limited.status(), 429);
    let mut handles = vec![send("one", "b")];
    for i in 0..3 {
        handles.push(send("two", &format!("{i}")));
    }
    tokio::time::sleep(21 * S).await;
    let counters = server.counters();
    // "two" went at its own pace (one per 10 s); "one" sent nothing more.
    assert_eq!((counters.key("one"), counters.key("two")), (1, 3));
    for h in handles {
        let answer: Result<http::Response<Bytes>, BoxError> = h.await.expect("join");
        assert_eq!(answer.expect("answer").status(), 200);
    }
    assert_eq!(server.counters().key("one"), 2);
}

#[tokio::test(start_paused = true)]
async fn the_mocks_own_headers_are_understood() {
    let server = MockServer::start(FaultPlan::healthy().quota(MockQuota::new(2, TPM)))
        .await
        .expect("mock server");
    let base = server.base_url();
    // No local requests quota at all: only the server's headers say when to stop.
    let mut svc = RateLimitLayer::builder()
        .adapt_to_headers()
        .build()
        .expect("config")
        .layer(TestClient::new());
    let start = Instant::now();
    for i in 0..4 {
        let request = openai_chat(&base, "gpt-4o-mini", &format!("{i}"));
        let answer = svc
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("answer");
        assert_eq!(
            answer.status(),
            200,
            "request {i} after {:?}",
            start.elapsed()
        );
    }
    assert_eq!(server.counters().status(429), 0);
    assert!(start.elapsed() >= 60 * S);
}
