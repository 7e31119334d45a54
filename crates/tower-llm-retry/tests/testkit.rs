//! The retry layer over real HTTP against the testkit's mock server, in paused time: what the
//! server receives, what the caller gets back and how long it took on tokio's clock.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_llm_core::BoxError;
use tower_llm_retry::{
    Attempts, AttemptsExtension, Backoff, DefaultClassifier, GiveUpReason, Jitter,
    QuotaAwareClassifier, RetryBudget, RetryBuilder, RetryLayer,
};
use tower_llm_testkit::{
    Fault, FaultPlan, MockServer, RetryAfterForm, Route, TestClient, gemini_generate, openai_chat,
    openai_chat_stream,
};

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn rate_limited(retry_after: Duration) -> Option<Fault> {
    Some(Fault::RateLimited {
        retry_after,
        form: RetryAfterForm::Seconds,
    })
}

/// The testkit client, with the time each attempt was sent recorded.
fn client(
    sent: &Arc<Mutex<Vec<Instant>>>,
) -> impl Service<http::Request<Bytes>, Response = http::Response<Bytes>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    let sent = sent.clone();
    ServiceBuilder::new()
        .map_request(move |request: http::Request<Bytes>| {
            sent.lock().unwrap().push(Instant::now());
            request
        })
        .service(TestClient::new())
}

fn gaps(sent: &Arc<Mutex<Vec<Instant>>>) -> Vec<Duration> {
    let sent = sent.lock().unwrap();
    sent.windows(2).map(|w| w[1] - w[0]).collect()
}

fn layer() -> RetryBuilder<DefaultClassifier, AttemptsExtension> {
    RetryLayer::builder()
        .no_budget()
        .seed(7)
        .record_attempts(AttemptsExtension::when_retried())
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_7_waits_7_seconds_not_the_backoff() {
    let server = MockServer::start(FaultPlan::healthy().script([rate_limited(secs(7))]))
        .await
        .unwrap();
    let sent = Arc::default();
    let mut service = ServiceBuilder::new()
        .layer(
            layer()
                .backoff(Backoff::fixed(ms(100)))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .service(client(&sent));
    let start = Instant::now();
    let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(Attempts::of(&response).get(), 2);
    assert_eq!(gaps(&sent), [secs(7)]);
    assert_eq!(start.elapsed(), secs(7));
    let counters = server.counters();
    assert_eq!(counters.route(Route::OpenAiChat), 2);
    assert_eq!(counters.status(429), 1);
    assert_eq!(counters.status(200), 1);
}

#[tokio::test(start_paused = true)]
async fn every_hint_form_is_honoured() {
    for form in [
        RetryAfterForm::Seconds,
        RetryAfterForm::Millis,
        RetryAfterForm::MsMillis,
    ] {
        let plan = FaultPlan::healthy().script([Some(Fault::RateLimited {
            retry_after: ms(2500),
            form,
        })]);
        let server = MockServer::start(plan).await.unwrap();
        let sent = Arc::default();
        let mut service = ServiceBuilder::new()
            .layer(
                layer()
                    .backoff(Backoff::fixed(ms(10)))
                    .jitter(Jitter::None)
                    .build()
                    .unwrap(),
            )
            .service(client(&sent));
        let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200);
        // Seconds are rounded up by the server: 2.5 s is sent as "3".
        let expected = if form == RetryAfterForm::Seconds {
            secs(3)
        } else {
            ms(2500)
        };
        assert_eq!(gaps(&sent), [expected], "{form:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_http_date_hint_is_honoured() {
    let plan = FaultPlan::healthy().script([Some(Fault::RateLimited {
        retry_after: secs(3),
        form: RetryAfterForm::HttpDate,
    })]);
    let server = MockServer::start(plan).await.unwrap();
    let sent = Arc::default();
    let mut service = ServiceBuilder::new()
        .layer(
            layer()
                .backoff(Backoff::fixed(ms(10)))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .service(client(&sent));
    let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 200);
    // A date has whole seconds, so the server rounds up: the wait is between 3 and 4 s (plus
    // the timer's millisecond).
    let gap = gaps(&sent)[0];
    assert!(gap >= secs(3) && gap <= secs(4) + ms(1), "{gap:?}");
}

#[tokio::test(start_paused = true)]
async fn each_backoff_shape_produces_its_delays() {
    let failures = || vec![Some(Fault::Status(503)); 4];
    let cases: [(Backoff, Jitter, [u64; 4]); 3] = [
        (Backoff::fixed(ms(200)), Jitter::None, [200, 200, 200, 200]),
        (
            Backoff::linear(ms(100), ms(100)),
            Jitter::None,
            [100, 200, 300, 400],
        ),
        (
            Backoff::exponential(ms(100)),
            Jitter::None,
            [100, 200, 400, 800],
        ),
    ];
    for (backoff, jitter, expected) in cases {
        let server = MockServer::start(FaultPlan::healthy().script(failures()))
            .await
            .unwrap();
        let sent = Arc::default();
        let mut service = ServiceBuilder::new()
            .layer(
                layer()
                    .max_attempts(5)
                    .backoff(backoff)
                    .jitter(jitter)
                    .build()
                    .unwrap(),
            )
            .service(client(&sent));
        let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200, "{backoff:?}");
        let expected: Vec<Duration> = expected.iter().map(|&n| ms(n)).collect();
        assert_eq!(gaps(&sent), expected, "{backoff:?}");
        assert_eq!(server.counters().requests, 5);
    }

    // With jitter, each delay stays within its bounds around the exponential base.
    let base = [100u64, 200, 400, 800];
    for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
        for seed in 0..5 {
            let server = MockServer::start(FaultPlan::healthy().script(failures()))
                .await
                .unwrap();
            let sent = Arc::default();
            let mut service = ServiceBuilder::new()
                .layer(
                    layer()
                        .seed(seed)
                        .max_attempts(5)
                        .backoff(Backoff::exponential(ms(100)))
                        .jitter(jitter)
                        .max_delay(secs(2))
                        .build()
                        .unwrap(),
                )
                .service(client(&sent));
            let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
            let response = service.ready().await.unwrap().call(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let mut previous = ms(100);
            for (gap, base) in gaps(&sent).into_iter().zip(base.map(ms)) {
                let (low, high) = match jitter {
                    Jitter::Full => (Duration::ZERO, base),
                    Jitter::Equal => (base / 2, base),
                    _ => (ms(100), (previous * 3).min(secs(2))),
                };
                // tokio's timer fires on the next whole millisecond.
                assert!(
                    gap >= low && gap <= high + ms(1),
                    "{jitter:?}: {gap:?} outside [{low:?}, {high:?}]"
                );
                previous = gap;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_hint_beyond_the_deadline_gives_up_at_once() {
    let server = MockServer::start(FaultPlan::healthy().script([rate_limited(secs(7))]))
        .await
        .unwrap();
    let sent = Arc::default();
    let retry = layer().deadline(secs(5)).build().unwrap();
    let mut service = ServiceBuilder::new()
        .layer(retry.clone())
        .service(client(&sent));
    let start = Instant::now();
    let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 429, "the last failure comes back");
    assert_eq!(start.elapsed(), Duration::ZERO, "no sleep before giving up");
    assert_eq!(server.counters().requests, 1);
    assert_eq!(
        retry
            .handle()
            .stats()
            .give_ups
            .get(GiveUpReason::PastDeadline),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn the_latest_hint_is_used_when_hints_change() {
    let plan = FaultPlan::healthy().script([
        rate_limited(secs(1)),
        rate_limited(secs(6)),
        rate_limited(secs(2)),
    ]);
    let server = MockServer::start(plan).await.unwrap();
    let sent = Arc::default();
    let mut service = ServiceBuilder::new()
        .layer(
            layer()
                .max_attempts(4)
                .backoff(Backoff::fixed(ms(10)))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .service(client(&sent));
    let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(gaps(&sent), [secs(1), secs(6), secs(2)]);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_never_retried() {
    for status in [400, 401, 403, 404, 422] {
        let server = MockServer::start(FaultPlan::healthy().script([Some(Fault::Status(status))]))
            .await
            .unwrap();
        let sent = Arc::default();
        let mut service = ServiceBuilder::new()
            .layer(layer().max_attempts(5).build().unwrap())
            .service(client(&sent));
        let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(server.counters().requests, 1, "{status} was retried");
    }
    let server =
        MockServer::start(FaultPlan::healthy().script([Some(Fault::ContextLengthExceeded)]))
            .await
            .unwrap();
    let mut service = ServiceBuilder::new()
        .layer(layer().build().unwrap())
        .service(TestClient::new());
    let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(server.counters().requests, 1);
}

#[tokio::test(start_paused = true)]
async fn a_quota_exhausted_429_is_not_retried_with_the_quota_aware_classifier() {
    for gemini in [false, true] {
        let server = MockServer::start(FaultPlan::healthy().script([Some(Fault::QuotaExhausted)]))
            .await
            .unwrap();
        let retry = layer()
            .classifier(QuotaAwareClassifier)
            .max_attempts(5)
            .build()
            .unwrap();
        let mut service = ServiceBuilder::new()
            .layer(retry.clone())
            .service(TestClient::new());
        let request = if gemini {
            gemini_generate(&server.base_url(), "gemini-2.0-flash", "Hello")
        } else {
            openai_chat(&server.base_url(), "gpt-4o-mini", "Hello")
        };
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(server.counters().requests, 1, "gemini: {gemini}");
        assert_eq!(
            retry
                .handle()
                .stats()
                .give_ups
                .get(GiveUpReason::NotRetryable),
            1
        );
    }
}

#[tokio::test(start_paused = true)]
async fn dropped_connections_and_overload_are_retried() {
    let plan = FaultPlan::healthy().script([
        Some(Fault::DropConnection),
        Some(Fault::Overloaded),
        Some(Fault::HtmlError),
    ]);
    let server = MockServer::start(plan).await.unwrap();
    let retry = layer().max_attempts(4).build().unwrap();
    let mut service = ServiceBuilder::new()
        .layer(retry.clone())
        .service(TestClient::new());
    let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(Attempts::of(&response).get(), 4);
    let counters = server.counters();
    assert_eq!(counters.requests, 4);
    assert_eq!(counters.dropped, 1);
    assert_eq!(retry.handle().stats().recovered, 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_load_in_a_total_outage() {
    let server = MockServer::start(FaultPlan::healthy().fault(Fault::Status(503), 1.0))
        .await
        .unwrap();
    let ratio = 0.2;
    let budget = RetryBudget::new(ratio).window(secs(60)).min_per_second(0);
    let retry = RetryLayer::builder()
        .max_attempts(4)
        .backoff(Backoff::fixed(ms(50)))
        .budget(budget)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(retry.clone())
        .service(TestClient::new());
    let offered = 200u64;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..offered {
        let mut service = service.clone();
        let url = server.base_url();
        tasks.spawn(async move {
            tokio::time::sleep(ms(i * 5)).await;
            let request = openai_chat(&url, "gpt-4o-mini", "Hello");
            service.ready().await.unwrap().call(request).await.unwrap()
        });
    }
    while let Some(response) = tasks.join_next().await {
        assert_eq!(response.unwrap().status(), 503);
    }
    let received = server.counters().requests;
    let cap = ((1.0 + ratio) * offered as f64) as u64 + budget.floor();
    assert!(
        received <= cap,
        "{received} upstream requests > (1 + {ratio}) × {offered}"
    );
    assert!(
        received > offered + 20,
        "{received}: the budget allowed no retry"
    );
    // Without a budget: 4 × 200 = 800.
    assert_eq!(retry.handle().stats().attempts(), received);
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_retried_before_its_first_chunk_and_never_after() {
    // A streaming client: the call future resolves when the headers arrive.
    let streaming = service_fn(|request: http::Request<Bytes>| async move {
        TestClient::new().send_streaming(request).await
    });
    let plan = FaultPlan::healthy().script([
        Some(Fault::Status(503)),
        Some(Fault::CutStream { after_chunks: 2 }),
    ]);
    let server = MockServer::start(plan).await.unwrap();
    let mut service = ServiceBuilder::new()
        .layer(layer().build().unwrap())
        .service(streaming);
    let request = openai_chat_stream(&server.base_url(), "gpt-4o-mini", "one two three four");
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    // The 503 came before any chunk and was retried; the second answer started streaming.
    assert_eq!(response.status(), 200);
    assert_eq!(Attempts::of(&response).get(), 2);
    let mut body = response.into_body();
    let mut chunks = 0;
    let end = loop {
        match TestClient::next_chunk(&mut body).await {
            Ok(Some(_)) => chunks += 1,
            other => break other,
        }
    };
    assert!(chunks >= 1);
    assert!(end.is_err(), "the cut reaches the caller: {end:?}");
    tokio::time::sleep(secs(60)).await;
    assert_eq!(
        server.counters().requests,
        2,
        "a stream cut after its first chunk is never retried"
    );
}
