//! Coalescing, caching, cancellation and error sharing, over `service_fn`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_llm_core::{BoxError, FailureKind, RateLimited, UpstreamError, classify_dyn_error};
use tower_llm_dedup::{BYPASS_HEADER, Bypass, DedupLayer, InnerPanicked, OnError, SharedError};

/// Counts calls, completions and cancellations of a slow inner service.
#[derive(Clone, Default)]
struct Counts {
    calls: Arc<AtomicUsize>,
    completed: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
}

struct CancelGuard {
    counts: Counts,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.done {
            self.counts.completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.counts.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Counts {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// A prompt service that answers after `delay` of (tokio) time.
fn slow_echo(
    counts: Counts,
    delay: Duration,
) -> impl Service<String, Response = String, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    service_fn(move |prompt: String| {
        let counts = counts.clone();
        counts.calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut guard = CancelGuard {
                counts,
                done: false,
            };
            tokio::time::sleep(delay).await;
            guard.done = true;
            Ok::<_, BoxError>(format!("answer to {prompt}"))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn hundred_identical_requests_make_one_call() {
    let counts = Counts::default();
    let layer = DedupLayer::new(Duration::from_secs(60));
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(slow_echo(counts.clone(), Duration::from_secs(1)));
    let tasks: Vec<_> = (0..100)
        .map(|_| tokio::spawn(service.clone().oneshot("same".to_string())))
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("no panic").expect("ok"), "answer to same");
    }
    assert_eq!(counts.calls(), 1);
    let snapshot = handle.stats();
    assert_eq!(snapshot.requests, 100);
    assert_eq!(snapshot.misses, 1);
    assert_eq!(snapshot.coalesced + snapshot.hits, 99);
    assert_eq!(snapshot.inner_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_leader_does_not_hurt_the_waiters() {
    let counts = Counts::default();
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(slow_echo(counts.clone(), Duration::from_secs(1)));
    let leader = tokio::spawn(service.clone().oneshot("q".to_string()));
    tokio::task::yield_now().await;
    let waiters: Vec<_> = (0..10)
        .map(|_| tokio::spawn(service.clone().oneshot("q".to_string())))
        .collect();
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(100)).await;
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    for waiter in waiters {
        assert_eq!(waiter.await.expect("no panic").expect("ok"), "answer to q");
    }
    assert_eq!(counts.calls(), 1);
    assert_eq!(counts.cancelled(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_caller_cancels_the_inner_call() {
    let counts = Counts::default();
    let layer = DedupLayer::new(Duration::from_secs(60));
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(slow_echo(counts.clone(), Duration::from_secs(10)));
    let callers: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot("q".to_string())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(counts.calls(), 1);
    for caller in &callers {
        caller.abort();
    }
    for caller in callers {
        let _ = caller.await;
    }
    assert_eq!(counts.cancelled(), 1, "the inner call was dropped");
    // Nothing was cached and nothing is left in flight: the next caller calls again.
    let answer = service.clone().oneshot("q".to_string()).await.expect("ok");
    assert_eq!(answer, "answer to q");
    assert_eq!(counts.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn ttl_expiry_follows_tokio_time() {
    let counts = Counts::default();
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(slow_echo(counts.clone(), Duration::ZERO));
    service.clone().oneshot("q".to_string()).await.expect("ok");
    tokio::time::advance(Duration::from_secs(59)).await;
    service.clone().oneshot("q".to_string()).await.expect("ok");
    assert_eq!(counts.calls(), 1, "fresh at 59 s");
    tokio::time::advance(Duration::from_secs(1)).await;
    service.clone().oneshot("q".to_string()).await.expect("ok");
    assert_eq!(counts.calls(), 2, "expired at 60 s");
}

#[tokio::test(start_paused = true)]
async fn idle_time_and_per_entry_ttl() {
    let counts = Counts::default();
    let layer = DedupLayer::builder()
        .ttl(Duration::from_secs(600))
        .time_to_idle(Duration::from_secs(10))
        .ttl_for(|answer: &String| answer.contains("short").then(|| Duration::from_secs(2)))
        .build()
        .expect("valid");
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(slow_echo(counts.clone(), Duration::ZERO));
    service.clone().oneshot("q".to_string()).await.expect("ok");
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(9)).await;
        service.clone().oneshot("q".to_string()).await.expect("ok");
    }
    assert_eq!(counts.calls(), 1, "read every 9 s: never idle for 10");
    tokio::time::advance(Duration::from_secs(10)).await;
    service.clone().oneshot("q".to_string()).await.expect("ok");
    assert_eq!(counts.calls(), 2, "idle for 10 s");

    service
        .clone()
        .oneshot("short".to_string())
        .await
        .expect("ok");
    tokio::time::advance(Duration::from_secs(1)).await;
    service
        .clone()
        .oneshot("short".to_string())
        .await
        .expect("ok");
    assert_eq!(counts.calls(), 3);
    tokio::time::advance(Duration::from_secs(1)).await;
    service
        .clone()
        .oneshot("short".to_string())
        .await
        .expect("ok");
    assert_eq!(counts.calls(), 4, "its own 2 s TTL ran out");
}

fn chat(auth: &str, body: &str) -> http::Request<Bytes> {
    http::Request::post("http://llm.test/v1/chat/completions")
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_owned()))
        .expect("valid request")
}

fn http_counter(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    http::Request<Bytes>,
    Response = http::Response<Bytes>,
    Error = BoxError,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    service_fn(move |request: http::Request<Bytes>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let status = if request.uri().path().ends_with("/fail") {
                503
            } else {
                200
            };
            Ok::<_, BoxError>(
                http::Response::builder()
                    .status(status)
                    .body(Bytes::from(format!("call {n}")))
                    .expect("valid response"),
            )
        }
    })
}

#[tokio::test(start_paused = true)]
async fn tenants_never_share_and_json_key_order_does_not_matter() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(http_counter(calls.clone()));
    let body = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
    let reordered = r#"{ "messages": [ {"content": "hi", "role": "user"} ], "temperature": 0.0, "model": "m" }"#;
    let (a, b) = tokio::join!(
        service.clone().oneshot(chat("Bearer tenant-a", body)),
        service.clone().oneshot(chat("Bearer tenant-b", body)),
    );
    assert_ne!(a.expect("ok").body(), b.expect("ok").body());
    assert_eq!(calls.load(Ordering::SeqCst), 2, "two tenants, two calls");
    let again = service
        .clone()
        .oneshot(chat("Bearer tenant-a", reordered))
        .await
        .expect("ok");
    assert_eq!(again.body(), "call 0");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "key order did not defeat the cache"
    );
}

#[tokio::test(start_paused = true)]
async fn sampled_requests_are_coalesced_but_not_cached_unless_opted_in() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(http_counter(calls.clone()));
    let sampled =
        r#"{"model":"m","temperature":0.7,"messages":[{"role":"user","content":"a poem"}]}"#;
    let (a, b) = tokio::join!(
        service.clone().oneshot(chat("k", sampled)),
        service.clone().oneshot(chat("k", sampled)),
    );
    assert_eq!(a.expect("ok").body(), b.expect("ok").body());
    assert_eq!(calls.load(Ordering::SeqCst), 1, "coalesced in flight");
    service
        .clone()
        .oneshot(chat("k", sampled))
        .await
        .expect("ok");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "not cached");

    let seeded = r#"{"model":"m","temperature":0.7,"seed":1,"messages":[]}"#;
    service
        .clone()
        .oneshot(chat("k", seeded))
        .await
        .expect("ok");
    service
        .clone()
        .oneshot(chat("k", seeded))
        .await
        .expect("ok");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "a seed makes it cacheable");

    let calls = Arc::new(AtomicUsize::new(0));
    let layer = DedupLayer::builder().cache_all().build().expect("valid");
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(http_counter(calls.clone()));
    service
        .clone()
        .oneshot(chat("k", sampled))
        .await
        .expect("ok");
    service
        .clone()
        .oneshot(chat("k", sampled))
        .await
        .expect("ok");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "cache_all keeps sampled answers"
    );
}

#[tokio::test(start_paused = true)]
async fn bypass_by_header_or_extension() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = DedupLayer::new(Duration::from_secs(60));
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(http_counter(calls.clone()));
    let body = r#"{"input":"x"}"#;
    service.clone().oneshot(chat("k", body)).await.expect("ok");
    let mut flagged = chat("k", body);
    flagged.extensions_mut().insert(Bypass);
    service.clone().oneshot(flagged).await.expect("ok");
    let mut header = chat("k", body);
    header
        .headers_mut()
        .insert(BYPASS_HEADER, http::HeaderValue::from_static("bypass"));
    let (a, b) = tokio::join!(
        service.clone().oneshot(header),
        service.clone().oneshot({
            let mut r = chat("k", body);
            r.extensions_mut().insert(Bypass);
            r
        })
    );
    a.expect("ok");
    b.expect("ok");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "bypassed calls are neither cached nor coalesced"
    );
    assert_eq!(handle.stats().bypassed, 3);
}

#[tokio::test(start_paused = true)]
async fn error_statuses_are_shared_but_not_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(http_counter(calls.clone()));
    let request = || {
        http::Request::post("http://llm.test/v1/fail")
            .body(Bytes::from_static(b"{\"input\":\"x\"}"))
            .expect("valid")
    };
    let (a, b) = tokio::join!(
        service.clone().oneshot(request()),
        service.clone().oneshot(request())
    );
    assert_eq!(a.expect("ok").status(), 503);
    assert_eq!(b.expect("ok").status(), 503);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    service.clone().oneshot(request()).await.expect("ok");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "a 503 is not cached");
}

fn failing(
    calls: Arc<AtomicUsize>,
) -> impl Service<String, Response = String, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    service_fn(move |prompt: String| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if n == 0 {
                Err::<String, BoxError>(Box::new(RateLimited::new(
                    "slow down",
                    Some(Duration::from_secs(7)),
                )))
            } else {
                Ok(format!("answer {n} to {prompt}"))
            }
        }
    })
}

/// Spawns one call of "q", lets it start, then spawns `n` more that join it.
async fn leader_and_waiters<S>(service: &S, n: usize) -> (Call, Vec<Call>)
where
    S: Service<String, Response = String, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let leader = tokio::spawn(service.clone().oneshot("q".to_string()));
    tokio::task::yield_now().await;
    let waiters = (0..n)
        .map(|_| tokio::spawn(service.clone().oneshot("q".to_string())))
        .collect();
    (leader, waiters)
}

type Call = tokio::task::JoinHandle<Result<String, BoxError>>;

#[tokio::test(start_paused = true)]
async fn errors_are_shared_classifiable_and_never_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(failing(calls.clone()));
    let results: Vec<_> =
        futures_util::future::join_all((0..5).map(|_| service.clone().oneshot("q".to_string())))
            .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for result in results {
        let error = result.expect_err("shared failure");
        assert!(error.downcast_ref::<SharedError>().is_some(), "{error}");
        let failure = classify_dyn_error(&*error);
        assert_eq!(failure.kind, FailureKind::RateLimited);
        assert_eq!(failure.retry_after, Some(Duration::from_secs(7)));
    }
    let answer = service.clone().oneshot("q".to_string()).await.expect("ok");
    assert_eq!(answer, "answer 1 to q");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the error was not cached");
}

#[tokio::test(start_paused = true)]
async fn a_lone_caller_gets_the_original_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(failing(calls));
    let error = service.oneshot("q".to_string()).await.expect_err("fails");
    assert!(error.downcast_ref::<RateLimited>().is_some(), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_caller_left_alone_by_dropped_waiters_gets_the_original_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(failing(calls.clone()));
    let (leader, waiters) = leader_and_waiters(&service, 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for waiter in waiters {
        waiter.abort();
        assert!(waiter.await.expect_err("aborted").is_cancelled());
    }
    let error = leader.await.expect("no panic").expect_err("fails");
    assert!(error.downcast_ref::<RateLimited>().is_some(), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn own_call_mode_lets_waiters_call_again() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = DedupLayer::builder()
        .on_error(OnError::OwnCall)
        .build()
        .expect("valid");
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(failing(calls.clone()));
    let (leader, waiters) = leader_and_waiters(&service, 3).await;
    let error = leader.await.expect("no panic").expect_err("leader fails");
    assert!(error.downcast_ref::<RateLimited>().is_some(), "{error}");
    for waiter in waiters {
        let answer = waiter.await.expect("no panic").expect("own call succeeds");
        assert!(answer.starts_with("answer"), "{answer}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "one shared call, then three own calls"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_inner_future_answers_every_waiter() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(service_fn(move |_prompt: String| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if n == 0 {
                    panic!("inner bug");
                }
                Ok::<_, BoxError>("recovered".to_string())
            }
        }));
    let results = futures_util::future::join_all(
        (0..4).map(|_| tokio::spawn(service.clone().oneshot("q".to_string()))),
    )
    .await;
    for result in results {
        let error = result
            .expect("the caller's task did not panic")
            .expect_err("panicked");
        let panicked = error
            .downcast_ref::<SharedError>()
            .and_then(|s| s.inner().downcast_ref::<InnerPanicked>())
            .expect("an InnerPanicked, shared");
        assert_eq!(panicked.message(), "inner bug");
    }
    let answer = service.clone().oneshot("q".to_string()).await.expect("ok");
    assert_eq!(answer, "recovered");
}

#[tokio::test(start_paused = true)]
async fn capacity_by_weight_evicts() {
    let counts = Counts::default();
    let layer = DedupLayer::builder()
        .max_weight(100, |answer: &String| answer.len() as u32)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(slow_echo(counts.clone(), Duration::ZERO));
    for i in 0..20 {
        service
            .clone()
            .oneshot(format!("prompt {i:02}"))
            .await
            .expect("ok");
    }
    // Each answer weighs 19 bytes: at most five fit.
    assert!(handle.cached_entries() <= 5, "{}", handle.cached_entries());
    assert!(handle.stats().evictions >= 15, "{:?}", handle.stats());
}

#[tokio::test(start_paused = true)]
async fn user_key_function() {
    let counts = Counts::default();
    let layer = DedupLayer::builder()
        .key_fn(|prompt: &String| {
            // Case-insensitive questions share answers; "!" prompts bypass.
            (!prompt.starts_with('!')).then(|| {
                tower_llm_core::FingerprintKey::process().fingerprint(&prompt.to_lowercase())
            })
        })
        .cache_rule(|_prompt: &String| true)
        .build()
        .expect("valid");
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(slow_echo(counts.clone(), Duration::ZERO));
    service
        .clone()
        .oneshot("Hello".to_string())
        .await
        .expect("ok");
    let again = service
        .clone()
        .oneshot("HELLO".to_string())
        .await
        .expect("ok");
    assert_eq!(again, "answer to Hello");
    service.clone().oneshot("!x".to_string()).await.expect("ok");
    service.clone().oneshot("!x".to_string()).await.expect("ok");
    assert_eq!(counts.calls(), 3);
}

#[test]
fn bad_knobs_are_named() {
    let error = DedupLayer::<String>::builder()
        .ttl(Duration::ZERO)
        .build()
        .expect_err("zero ttl");
    assert_eq!(error.knob(), "ttl");
    let error = DedupLayer::<String>::builder()
        .max_entries(0)
        .build()
        .expect_err("zero capacity");
    assert_eq!(error.knob(), "max_entries");
    DedupLayer::<String>::builder()
        .ttl(Duration::ZERO)
        .no_cache()
        .build()
        .expect("coalescing only needs no ttl");
}

/// moka refuses a TTL over 1000 years with a panic when the cache is built; "keep it for
/// ever" (`Duration::MAX`) is a reasonable thing to ask and must neither panic nor expire.
#[tokio::test(start_paused = true)]
async fn a_huge_ttl_keeps_answers_without_panicking() {
    for idle in [None, Some(Duration::MAX)] {
        let counts = Counts::default();
        let mut builder = DedupLayer::builder().ttl(Duration::MAX);
        if let Some(idle) = idle {
            builder = builder.time_to_idle(idle);
        }
        let layer = builder.build().expect("a huge ttl is valid");
        let service = ServiceBuilder::new()
            .layer(layer)
            .service(slow_echo(counts.clone(), Duration::ZERO));
        service.clone().oneshot("q".to_string()).await.expect("ok");
        tokio::time::advance(Duration::from_secs(3600 * 24 * 365)).await;
        service.clone().oneshot("q".to_string()).await.expect("ok");
        assert_eq!(
            counts.calls(),
            1,
            "still cached a year later (idle {idle:?})"
        );
    }
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::MAX))
        .service(slow_echo(Counts::default(), Duration::ZERO));
    service.oneshot("q".to_string()).await.expect("ok");
}

#[tokio::test(start_paused = true)]
async fn transport_errors_classify_through_the_share() {
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(service_fn(|_: String| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err::<String, BoxError>(Box::new(UpstreamError::new(
                FailureKind::Overloaded,
                "busy",
            )))
        }));
    let (a, b) = tokio::join!(
        service.clone().oneshot("q".into()),
        service.clone().oneshot("q".into())
    );
    for error in [a.expect_err("fails"), b.expect_err("fails")] {
        assert_eq!(classify_dyn_error(&*error).kind, FailureKind::Overloaded);
    }
}

/// An inner service whose `call` itself panics, after a second caller has joined the flight
/// it was about to start: the second caller must get an error, not hang.
#[derive(Clone)]
struct PanicsInCall {
    joined: Arc<std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>>,
}

impl Service<String> for PanicsInCall {
    type Response = String;
    type Error = BoxError;
    type Future = std::future::Ready<Result<String, BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _prompt: String) -> Self::Future {
        let waiting = self.joined.lock().expect("lock").take();
        if let Some(joined) = waiting {
            joined.recv().expect("the second caller joined");
            panic!("call itself panicked");
        }
        std::future::ready(Ok("fine".to_string()))
    }
}

#[test]
fn a_panic_in_the_inner_call_itself_fails_the_waiters() {
    let (tx, rx) = std::sync::mpsc::channel();
    let service = ServiceBuilder::new()
        .layer(DedupLayer::new(Duration::from_secs(60)))
        .service(PanicsInCall {
            joined: Arc::new(std::sync::Mutex::new(Some(rx))),
        });
    let mut leader = service.clone();
    let leader = std::thread::spawn(move || {
        drop(leader.call("q".to_string()));
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // Wait until the leader is inside `call` (its flight is registered), then join it.
        let mut waiter = loop {
            let mut probe = service.clone();
            let stats = probe.handle().stats();
            if stats.misses == 1 {
                break probe.call("q".to_string());
            }
            drop(probe);
            tokio::task::yield_now().await;
            std::thread::yield_now();
        };
        tx.send(()).expect("leader waiting");
        let result = tokio::time::timeout(Duration::from_secs(30), &mut waiter)
            .await
            .expect("the waiter got an answer instead of hanging");
        let error = result.expect_err("the call panicked");
        assert!(error.to_string().contains("panicked"), "{error}");
    });
    assert!(
        leader.join().is_err(),
        "the panic stayed with the caller whose call panicked"
    );
}

/// Threads racing on one key at a time, with an inner service that answers at once: every
/// caller either joins the call in flight or finds its answer in the cache, even one that
/// missed the cache just before the call completed and left. Exactly one inner call per key.
#[test]
fn racing_threads_make_one_call_per_key() {
    const THREADS: usize = 6;
    const KEYS: usize = 300;
    let calls: Arc<Vec<AtomicUsize>> = Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    let counted = calls.clone();
    let service =
        DedupLayer::new(Duration::from_secs(3600)).layer(service_fn(move |prompt: String| {
            let i: usize = prompt.parse().expect("a key number");
            counted[i].fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, BoxError>(prompt))
        }));
    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (service, barrier) = (service.clone(), barrier.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("runtime");
                for i in 0..KEYS {
                    barrier.wait();
                    let answer = runtime
                        .block_on(service.clone().oneshot(i.to_string()))
                        .expect("answered");
                    assert_eq!(answer, i.to_string());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("no panic");
    }
    for (i, n) in calls.iter().enumerate() {
        assert_eq!(n.load(Ordering::SeqCst), 1, "key {i}");
    }
}
