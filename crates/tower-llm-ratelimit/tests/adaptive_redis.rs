//! The adaptive concurrency limit shared across instances through a real `redis-server`
//! (`AdaptiveConcurrency::shared`): two limiter instances (two layer values, as two processes
//! would have, each with its own Redis connection) in front of one upstream whose hidden
//! capacity counts the calls of both; calls beyond it are answered 429 without a retry hint.
//!
//! Run on the real clock: Redis keeps time with its own clock. Short (a few seconds), with
//! small latencies; outcomes are asserted (which limit moved, and why; goodput and 429s as
//! shares of the capacity and of the calls), never how long anything took. The figures are
//! printed: `cargo test -p tower-llm-ratelimit --all-features --test adaptive_redis --
//! --nocapture`.
#![cfg(feature = "redis")]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;
use tower_llm_core::BoxError;
use tower_llm_ratelimit::{
    AdaptiveConcurrency, Quota, RateLimitHandle, RateLimitLayer, RateLimitStats, RedisBackend,
};
use tower_llm_testkit::RedisServer;
use tower_llm_testkit::observe::Capture;

/// How long an accepted call takes, on average (uniform within ±20 %).
const LATENCY: Duration = Duration::from_millis(40);
/// How long the upstream takes to refuse a call over its capacity.
const REFUSAL: Duration = Duration::from_millis(2);
/// Where each instance's limit starts.
const INITIAL: usize = 16;

/// The tests measure shares of real time: one at a time, so they do not crowd each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One call the upstream received.
#[derive(Clone, Copy, Debug)]
struct Call {
    instance: usize,
    started: Duration,
    ended: Duration,
    accepted: bool,
}

/// The upstream both instances call: at most `capacity` calls at once, counted across them.
#[derive(Clone)]
struct Upstream {
    capacity: usize,
    running: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Call>>>,
    seed: Arc<AtomicU64>,
    start: Instant,
}

impl Upstream {
    fn new(capacity: usize) -> Self {
        Upstream {
            capacity,
            running: Arc::new(AtomicUsize::new(0)),
            log: Arc::default(),
            seed: Arc::new(AtomicU64::new(0x9E37_79B9_7F4A_7C15)),
            start: Instant::now(),
        }
    }

    /// A latency within ±20 % of [`LATENCY`], from a fixed sequence.
    fn latency(&self) -> Duration {
        let x = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        LATENCY * (80 + ((x >> 33) % 41) as u32) / 100
    }

    /// The upstream as instance `instance` sees it.
    fn service(
        &self,
        instance: usize,
    ) -> impl tower::Service<(), Response = http::Response<()>, Error = BoxError, Future = impl Send>
    + Clone
    + Send
    + 'static {
        let upstream = self.clone();
        service_fn(move |()| {
            let u = upstream.clone();
            async move {
                let started = u.start.elapsed();
                let running = u.running.fetch_add(1, Ordering::SeqCst);
                struct Leave(Arc<AtomicUsize>);
                impl Drop for Leave {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let leave = Leave(u.running.clone());
                let accepted = running < u.capacity;
                if accepted {
                    tokio::time::sleep(u.latency()).await;
                    drop(leave);
                } else {
                    drop(leave);
                    tokio::time::sleep(REFUSAL).await;
                }
                u.log.lock().expect("log").push(Call {
                    instance,
                    started,
                    ended: u.start.elapsed(),
                    accepted,
                });
                let status = if accepted { 200 } else { 429 };
                Ok::<_, BoxError>(http::Response::builder().status(status).body(())?)
            }
        })
    }

    /// Calls answered 429 to `instance`.
    fn refused(&self, instance: usize) -> usize {
        let log = self.log.lock().expect("log");
        log.iter()
            .filter(|c| c.instance == instance && !c.accepted)
            .count()
    }

    /// Goodput (the capacity's busy share: accepted calls' time within `from..to` over
    /// `capacity × (to - from)`) and the share of the calls started within it answered 429.
    fn figures(&self, from: Duration, to: Duration) -> (f64, f64, usize) {
        let log = self.log.lock().expect("log");
        let busy: Duration = log
            .iter()
            .filter(|c| c.accepted)
            .map(|c| c.ended.min(to).saturating_sub(c.started.max(from)))
            .sum();
        let inside: Vec<_> = log
            .iter()
            .filter(|c| c.started >= from && c.started < to)
            .collect();
        let refused = inside.iter().filter(|c| !c.accepted).count();
        let goodput = busy.as_secs_f64() / ((to - from).as_secs_f64() * self.capacity as f64);
        (
            goodput,
            refused as f64 / inside.len().max(1) as f64,
            inside.len(),
        )
    }
}

/// An instance: its own connection to Redis, an adaptive limit shared or not, and a requests
/// quota in Redis (far above what the test sends) or none.
async fn instance(server: &RedisServer, prefix: &str, shared: bool, quota: bool) -> RateLimitLayer {
    let backend = RedisBackend::connect(&server.url())
        .await
        .expect("redis")
        .namespace(prefix.to_owned())
        .timeout(Duration::from_secs(1));
    let mut adaptive = AdaptiveConcurrency::new().initial(INITIAL).max(64);
    if shared {
        adaptive = adaptive.shared();
    }
    let builder = RateLimitLayer::builder()
        .adaptive_concurrency(adaptive)
        .redis(backend);
    let builder = if quota {
        builder.requests(Quota::per_second(100_000))
    } else {
        builder
    };
    builder.build().expect("config")
}

fn prefix(test: &str) -> String {
    format!("test:{test}:{}", std::process::id())
}

/// Runs `callers` closed-loop callers through each `(layer, instance)` until `until`.
async fn drive(upstream: &Upstream, layers: &[(&RateLimitLayer, usize, usize)], until: Duration) {
    let end = upstream.start + until;
    let mut tasks = Vec::new();
    for &(layer, instance, callers) in layers {
        let svc = layer.clone().layer(upstream.service(instance));
        for _ in 0..callers {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let _ = svc.clone().oneshot(()).await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("caller");
    }
}

/// Waits (on the real clock, a bounded number of times) until `done` holds of the stats.
async fn eventually(handle: &RateLimitHandle, done: impl Fn(&RateLimitStats) -> bool) {
    for _ in 0..100 {
        if done(&handle.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_met_by_one_instance_lowers_the_others_limit_only_when_shared() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    // With a quota in Redis the news rides on each call's round trip; without one it is read
    // in the background.
    for quota in [true, false] {
        for shared in [true, false] {
            let prefix = prefix(&format!("peer:{quota}:{shared}"));
            let a = instance(&server, &prefix, shared, quota).await;
            let b = instance(&server, &prefix, shared, quota).await;
            let (a_handle, b_handle) = (a.handle(), b.handle());
            let upstream = Upstream::new(10);
            // A alone, well over the capacity: it meets 429s and lowers its limit.
            drive(&upstream, &[(&a, 0, 40)], Duration::from_millis(600)).await;
            let a_stats = a_handle.stats();
            assert!(a_stats.limit_decreases > 0, "{a_stats:?}");
            assert!(upstream.refused(0) > 0);
            if shared {
                eventually(&a_handle, |s| s.overloads_published > 0).await;
            }
            // Let A's last records land, then B makes a few calls, one at a time: the
            // upstream is idle, so they all succeed.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let a_published = a_handle.stats().overloads_published;
            let svc = b.clone().layer(upstream.service(1));
            for _ in 0..3 {
                let answer = svc.clone().oneshot(()).await.expect("sent");
                assert_eq!(answer.status(), 200);
            }
            if shared {
                eventually(&b_handle, |s| s.shared_decreases > 0).await;
            } else {
                // Give a (wrong) background read time to land.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let b_stats = b_handle.stats();
            println!(
                "quota in Redis {quota}, shared {shared}: A published {a_published} of {} \
                 decreases; B: limit {:?}, decreases {} (shared {})",
                a_stats.limit_decreases,
                b_stats.concurrency_limit,
                b_stats.limit_decreases,
                b_stats.shared_decreases,
            );
            assert_eq!(upstream.refused(1), 0, "B met no 429 itself");
            assert_eq!(b_stats.shared_errors, 0);
            assert_eq!(a_handle.stats().shared_errors, 0);
            if shared {
                assert!(a_published > 0);
                // One decrease for the latest overload it had not seen: 16 × 0.9.
                assert_eq!(b_stats.shared_decreases, 1, "{b_stats:?}");
                assert_eq!(b_stats.limit_decreases, 1, "{b_stats:?}");
                assert_eq!(b_stats.concurrency_limit, Some(14));
            } else {
                assert_eq!(a_published, 0);
                assert_eq!(b_stats.limit_decreases, 0, "{b_stats:?}");
                assert_eq!(b_stats.concurrency_limit, Some(INITIAL));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_overloads_converge_within_the_capacity() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    const CAPACITY: usize = 20;
    const RUN: Duration = Duration::from_millis(4_000);
    const FROM: Duration = Duration::from_millis(1_500);
    // Each instance alone offers one and a half times the capacity.
    const CALLERS: usize = 30;
    for (quota, shared) in [(true, true), (false, true), (true, false)] {
        let prefix = prefix(&format!("converge:{quota}:{shared}"));
        let a = instance(&server, &prefix, shared, quota).await;
        let b = instance(&server, &prefix, shared, quota).await;
        let upstream = Upstream::new(CAPACITY);
        drive(&upstream, &[(&a, 0, CALLERS), (&b, 1, CALLERS)], RUN).await;
        let (goodput, refused, calls) = upstream.figures(FROM, RUN);
        let (sa, sb) = (a.handle().stats(), b.handle().stats());
        println!(
            "quota in Redis {quota}, shared {shared}: goodput {:.1} %, 429s {:.2} % of {calls} \
             calls; limits {:?} + {:?}; decreases A {} (shared {}), B {} (shared {})",
            goodput * 100.0,
            refused * 100.0,
            sa.concurrency_limit,
            sb.concurrency_limit,
            sa.limit_decreases,
            sa.shared_decreases,
            sb.limit_decreases,
            sb.shared_decreases,
        );
        assert_eq!(sa.in_flight + sb.in_flight, 0, "every slot came back");
        assert_eq!(sa.shared_errors + sb.shared_errors, 0);
        if shared {
            // Which instance meets a crowding first is a race; the other follows it (when
            // both meet it within one round trip, the second decrease is absorbed).
            assert!(
                sa.shared_decreases + sb.shared_decreases > 0,
                "an instance reacted to the other's overloads"
            );
            assert!(goodput >= 0.9, "goodput {goodput}");
            assert!(refused <= 0.02, "429s {refused}");
        } else {
            assert_eq!(sa.shared_decreases + sb.shared_decreases, 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_leaves_the_local_limit_working() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let prefix = prefix("down");
    // No quota: the overloads are the only thing in Redis, read and written in the
    // background.
    let backend = RedisBackend::connect(&server.url())
        .await
        .expect("redis")
        .namespace(prefix)
        .timeout(Duration::from_millis(200));
    let layer = RateLimitLayer::builder()
        .adaptive_concurrency(AdaptiveConcurrency::new().initial(INITIAL).shared())
        .redis(backend)
        .build()
        .expect("config");
    let handle = layer.handle();
    // The layer's metric handles are made when it is first applied: under this recorder.
    let capture = Capture::install();
    let upstream = Upstream::new(4);
    let _ = layer.clone().layer(upstream.service(0));
    server.kill();
    drive(&upstream, &[(&layer, 0, 12)], Duration::from_millis(800)).await;
    eventually(&handle, |s| s.shared_errors >= 2).await;
    // Past the backend's timeout, every write or read still under way has failed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stats = handle.stats();
    // Calls went through, the limit followed this instance's own 429s, and the failed
    // writes and reads were counted.
    assert!(upstream.log.lock().expect("log").iter().any(|c| c.accepted));
    assert!(stats.limit_decreases > 0, "{stats:?}");
    assert!(stats.concurrency_limit < Some(INITIAL));
    assert!(stats.shared_errors >= 2, "{stats:?}");
    assert_eq!(stats.overloads_published, 0);
    assert_eq!(stats.rejected, 0);
    let metrics = capture.metrics();
    let count = |name: &str, op: Option<&str>| -> u64 {
        metrics
            .iter()
            .filter(|m| m.name == name && op.is_none_or(|op| m.label("op") == Some(op)))
            .map(|m| m.counter())
            .sum()
    };
    let (publish, read) = (
        count("tower_llm_ratelimit_shared_errors_total", Some("publish")),
        count("tower_llm_ratelimit_shared_errors_total", Some("read")),
    );
    assert!(publish > 0 && read > 0, "publish {publish}, read {read}");
    assert_eq!(publish + read, stats.shared_errors);
    assert_eq!(
        count("tower_llm_ratelimit_overloads_published_total", None),
        0
    );
}

#[tokio::test]
async fn sharing_needs_a_redis_backend() {
    let err = RateLimitLayer::builder()
        .adaptive_concurrency(AdaptiveConcurrency::new().shared())
        .build()
        .expect_err("nothing to share through");
    assert_eq!(err.knob(), "adaptive_concurrency.shared");
}
