//! The breaker in front of a real HTTP upstream (the testkit's mock server on loopback), in
//! paused time: every transition, every policy, the probe limit, dropped probes, per-key
//! isolation, client errors, and a 30-second outage.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, advance, sleep};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_llm_breaker::{CircuitBreakerLayer, State, Window};
use tower_llm_core::{BoxError, CircuitOpen};
use tower_llm_testkit::{Fault, FaultPlan, Latency, MockServer, TestClient, openai_chat};

type Reply = http::Response<Bytes>;

const COOLDOWN: Duration = Duration::from_secs(10);

fn failing(fault: Fault) -> FaultPlan {
    FaultPlan::healthy().fault(fault, 1.0)
}

async fn server(plan: FaultPlan) -> MockServer {
    MockServer::start(plan).await.expect("mock server starts")
}

async fn send<S>(svc: &mut S, server: &MockServer) -> Result<Reply, BoxError>
where
    S: Service<http::Request<Bytes>, Response = Reply, Error = BoxError>,
{
    let request = openai_chat(&server.base_url(), "gpt-4o-mini", "Hello");
    svc.ready().await?.call(request).await
}

fn is_open(result: &Result<Reply, BoxError>) -> bool {
    matches!(result, Err(e) if e.is::<CircuitOpen>())
}

fn breaker(consecutive: usize) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .consecutive_failures(consecutive)
        .cooldown(COOLDOWN)
        .build()
        .expect("valid")
}

#[tokio::test(start_paused = true)]
async fn consecutive_server_errors_open_it_and_then_the_server_sees_nothing() {
    let server = server(failing(Fault::Status(500))).await;
    let layer = breaker(3);
    let handle = layer.handle();
    let mut svc = layer.layer(TestClient::new());
    for _ in 0..3 {
        let reply = send(&mut svc, &server).await.expect("a 500 answer");
        assert_eq!(reply.status(), 500);
    }
    assert_eq!(handle.state(), State::Open);
    for _ in 0..50 {
        let started = Instant::now();
        let result = send(&mut svc, &server).await;
        assert!(is_open(&result));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
    assert_eq!(server.counters().requests, 3);
    assert_eq!(handle.stats().rejected, 50);
}

#[tokio::test(start_paused = true)]
async fn overload_and_dropped_connections_open_it() {
    for fault in [Fault::Overloaded, Fault::DropConnection, Fault::HtmlError] {
        let server = server(failing(fault.clone())).await;
        let mut svc = breaker(2).layer(TestClient::new());
        let _ = send(&mut svc, &server).await;
        let _ = send(&mut svc, &server).await;
        assert!(is_open(&send(&mut svc, &server).await), "{fault:?}");
        assert_eq!(server.counters().requests, 2, "{fault:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn client_errors_never_open_it() {
    for status in [400, 401, 403, 404, 422] {
        let server = server(failing(Fault::Status(status))).await;
        let layer = breaker(1);
        let handle = layer.handle();
        let mut svc = layer.layer(TestClient::new());
        for _ in 0..100 {
            let reply = send(&mut svc, &server).await.expect("answered");
            assert_eq!(reply.status(), status);
        }
        assert_eq!(handle.state(), State::Closed, "status {status}");
        assert_eq!(server.counters().requests, 100);
        assert_eq!(handle.stats().ignored, 100);
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limits_count_only_when_asked() {
    let limited = Fault::RateLimited {
        retry_after: Duration::from_secs(1),
        form: Default::default(),
    };
    let server = server(failing(limited)).await;
    let mut svc = breaker(2).layer(TestClient::new());
    for _ in 0..10 {
        assert_eq!(send(&mut svc, &server).await.expect("429").status(), 429);
    }
    assert_eq!(svc.handle().state(), State::Closed);

    let mut svc = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .count_rate_limited(true)
        .build()
        .expect("valid")
        .layer(TestClient::new());
    let _ = send(&mut svc, &server).await;
    let _ = send(&mut svc, &server).await;
    assert_eq!(svc.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn open_half_open_closed_and_back_to_open() {
    let server = server(failing(Fault::Status(503))).await;
    let layer = breaker(1);
    let handle = layer.handle();
    let mut svc = layer.layer(TestClient::new());

    send(&mut svc, &server).await.expect("503");
    assert_eq!(handle.state(), State::Open);
    advance(COOLDOWN).await;
    assert_eq!(handle.state(), State::HalfOpen);

    // A failed probe: open again for another cool-down.
    send(&mut svc, &server).await.expect("probe gets a 503");
    assert_eq!(handle.state(), State::Open);
    assert_eq!(server.counters().requests, 2);
    advance(COOLDOWN / 2).await;
    assert!(is_open(&send(&mut svc, &server).await));
    advance(COOLDOWN / 2).await;

    // A successful probe: closed.
    server.set_plan(FaultPlan::healthy());
    let reply = send(&mut svc, &server).await.expect("probe succeeds");
    assert_eq!(reply.status(), 200);
    assert_eq!(handle.state(), State::Closed);
    for _ in 0..5 {
        send(&mut svc, &server).await.expect("closed");
    }
    assert_eq!(server.counters().requests, 8);
}

#[tokio::test(start_paused = true)]
async fn the_cooldown_grows_while_probes_fail_and_resets_on_close() {
    let server = server(failing(Fault::Overloaded)).await;
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .cooldown(Duration::from_secs(2))
        .cooldown_backoff(3.0, Duration::from_secs(30))
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = layer.layer(TestClient::new());
    send(&mut svc, &server).await.expect("trips");
    let mut waits = Vec::new();
    for _ in 0..4 {
        let result = send(&mut svc, &server).await;
        let Err(err) = result else {
            panic!("expected a rejection")
        };
        let open = err.downcast_ref::<CircuitOpen>().expect("circuit open");
        waits.push(open.retry_in().as_secs());
        assert_eq!(handle.stats().next_probe_in, Some(open.retry_in()));
        advance(open.retry_in()).await;
        send(&mut svc, &server).await.expect("a failing probe");
    }
    assert_eq!(waits, [2, 6, 18, 30]);
    assert_eq!(
        server.counters().requests,
        5,
        "one trip, then one probe per cool-down"
    );

    advance(Duration::from_secs(30)).await;
    server.set_plan(FaultPlan::healthy());
    send(&mut svc, &server).await.expect("the probe closes it");
    server.set_plan(failing(Fault::Overloaded));
    send(&mut svc, &server).await.expect("trips again");
    let open = send(&mut svc, &server).await.expect_err("open");
    let open = open.downcast_ref::<CircuitOpen>().expect("circuit open");
    assert_eq!(
        open.retry_in(),
        Duration::from_secs(2),
        "back to the base cool-down"
    );
}

#[tokio::test(start_paused = true)]
async fn it_closes_on_a_share_of_probe_successes() {
    let server = server(failing(Fault::Status(500))).await;
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .cooldown(COOLDOWN)
        .probes(4)
        .probe_success_rate(0.5)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = layer.layer(TestClient::new());
    send(&mut svc, &server).await.expect("trips");
    advance(COOLDOWN).await;

    // Two of four probes must succeed; up to two may fail.
    server.set_plan(FaultPlan::healthy().script([
        Some(Fault::Status(500)),
        None,
        Some(Fault::Status(502)),
        None,
    ]));
    let statuses = [500, 200, 502];
    for status in statuses {
        let reply = send(&mut svc, &server).await.expect("a probe");
        assert_eq!(reply.status(), status);
        assert_eq!(handle.state(), State::HalfOpen);
    }
    send(&mut svc, &server).await.expect("the second success");
    assert_eq!(handle.state(), State::Closed);

    // And a third failure among four probes reopens it.
    server.set_plan(failing(Fault::Status(500)));
    send(&mut svc, &server).await.expect("trips");
    advance(COOLDOWN).await;
    server.set_plan(FaultPlan::healthy().script([
        Some(Fault::Status(500)),
        Some(Fault::Status(500)),
        None,
        Some(Fault::Status(500)),
    ]));
    for _ in 0..3 {
        send(&mut svc, &server).await.expect("a probe");
        assert_eq!(handle.state(), State::HalfOpen);
    }
    send(&mut svc, &server).await.expect("the third failure");
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_the_probe_limit() {
    let server = server(failing(Fault::Status(500))).await;
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .cooldown(COOLDOWN)
        .probes(3)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let svc = layer.layer(TestClient::new());
    send(&mut svc.clone(), &server).await.expect("trips");
    advance(COOLDOWN).await;

    server.set_plan(FaultPlan::healthy().latency(Latency::Fixed(Duration::from_secs(2))));
    let mut probes = Vec::new();
    for _ in 0..3 {
        let mut probe = svc.clone();
        let base = server.base_url();
        probes.push(tokio::spawn(async move {
            probe
                .ready()
                .await?
                .call(openai_chat(&base, "gpt-4o-mini", "probe"))
                .await
        }));
    }
    // Let the probes reach the server.
    while server.counters().in_flight < 3 {
        tokio::task::yield_now().await;
    }
    for _ in 0..20 {
        assert!(is_open(&send(&mut svc.clone(), &server).await));
    }
    assert_eq!(server.counters().requests, 4);
    assert_eq!(server.counters().max_concurrent, 3);
    assert_eq!(handle.stats().probes_in_flight, 3);
    for probe in probes {
        assert_eq!(probe.await.expect("joined").expect("ok").status(), 200);
    }
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_place() {
    let server = server(failing(Fault::Status(500))).await;
    let layer = breaker(1);
    let handle = layer.handle();
    // The caller gives up after 5 s: the timeout drops the probe's future.
    let mut svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .layer(layer)
        .service(TestClient::new());
    send(&mut svc, &server).await.expect("trips");
    advance(COOLDOWN).await;

    server.set_plan(FaultPlan::healthy().latency(Latency::Fixed(Duration::from_secs(60))));
    let err = send(&mut svc, &server)
        .await
        .expect_err("the probe times out");
    assert!(err.is::<tower::timeout::error::Elapsed>());
    assert_eq!(handle.state(), State::HalfOpen, "no outcome was recorded");
    assert_eq!(handle.stats().probes_in_flight, 0);
    while server.counters().cancelled < 1 {
        tokio::task::yield_now().await;
    }

    server.set_plan(FaultPlan::healthy());
    let reply = send(&mut svc, &server).await.expect("the next call probes");
    assert_eq!(reply.status(), 200);
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_the_last_calls() {
    // Every other answer is a 500: 50 % failures, and never two in a row.
    let script = (0..40).map(|i| (i % 2 == 1).then_some(Fault::Status(500)));
    let server = server(FaultPlan::healthy().script(script)).await;
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .failure_rate(0.5)
        .window(Window::count(20))
        .minimum_calls(20)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = layer.layer(TestClient::new());
    for _ in 0..19 {
        send(&mut svc, &server).await.expect("answered");
    }
    assert_eq!(handle.state(), State::Closed, "below the minimum");
    send(&mut svc, &server).await.expect("the 20th call, a 500");
    let stats = handle.stats();
    assert_eq!((stats.window_calls, stats.window_failures), (20, 10));
    assert_eq!(stats.state, State::Open);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_the_last_minute() {
    let server = server(failing(Fault::Status(502))).await;
    let layer = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .failure_rate(0.5)
        .window(Window::time(Duration::from_secs(60)))
        .minimum_calls(5)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = layer.layer(TestClient::new());
    // Four failures, one every 20 s (at 0, 20, 40 and 60 s): the first has left the
    // one-minute window when the fourth comes.
    for i in 0..4 {
        send(&mut svc, &server).await.expect("502");
        if i < 3 {
            advance(Duration::from_secs(20)).await;
        }
    }
    assert_eq!(handle.stats().window_calls, 3);
    assert_eq!(handle.state(), State::Closed);
    // Two more at once make five of five within the minute.
    send(&mut svc, &server).await.expect("502");
    assert_eq!(handle.state(), State::Closed);
    send(&mut svc, &server).await.expect("502");
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_answers_open_it() {
    let plan = FaultPlan::healthy().latency(Latency::Fixed(Duration::from_secs(8)));
    let server = server(plan).await;
    let layer = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .slow_calls(Duration::from_secs(5), 0.8)
        .window(Window::count(5))
        .minimum_calls(5)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = layer.layer(TestClient::new());
    for _ in 0..4 {
        let started = Instant::now();
        send(&mut svc, &server).await.expect("slow 200");
        assert!(started.elapsed() >= Duration::from_secs(8));
    }
    assert_eq!(handle.state(), State::Closed);
    send(&mut svc, &server).await.expect("slow 200");
    let stats = handle.stats();
    assert_eq!(stats.state, State::Open);
    assert_eq!((stats.successes, stats.slow), (5, 5));
}

#[tokio::test(start_paused = true)]
async fn each_host_has_its_own_breaker() {
    let down = server(failing(Fault::Overloaded)).await;
    let up = server(FaultPlan::healthy()).await;
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .cooldown(COOLDOWN)
        .build_keyed(
            |req: &http::Request<Bytes>| {
                req.uri()
                    .authority()
                    .map_or_else(String::new, |a| a.to_string())
            },
            64,
        )
        .expect("valid");
    let handle = layer.handle();
    let mut svc = layer.layer(TestClient::new());
    for _ in 0..20 {
        let _ = send(&mut svc, &down).await;
        let reply = send(&mut svc, &up).await.expect("the healthy host answers");
        assert_eq!(reply.status(), 200);
    }
    assert_eq!(down.counters().requests, 2);
    assert_eq!(up.counters().requests, 20);
    let down_key = down.addr().to_string();
    let up_key = up.addr().to_string();
    assert_eq!(
        handle.get(down_key.as_str()).expect("known").state(),
        State::Open
    );
    assert_eq!(
        handle.get(up_key.as_str()).expect("known").state(),
        State::Closed
    );
}

/// The upstream fails every call for 30 s of virtual time, then recovers. A single client
/// keeps calling every 100 ms: the case consecutive counting fits. The breaker must keep the upstream's load to its policy (the trip
/// threshold, then one probe per cool-down) and let the first success through within one
/// cool-down of the recovery.
#[tokio::test(start_paused = true)]
async fn a_thirty_second_outage() {
    const THRESHOLD: usize = 5;
    const PROBES: usize = 1;
    const OUTAGE: Duration = Duration::from_secs(30);
    let server =
        server(failing(Fault::Status(500)).latency(Latency::Fixed(Duration::from_millis(50))))
            .await;
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(THRESHOLD)
        .cooldown(COOLDOWN)
        .probes(PROBES)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = layer.layer(TestClient::new());

    let start = Instant::now();
    let mut recovered = false;
    let mut outage_requests = 0;
    let mut first_success = None;
    let (mut rejected, mut failed) = (0u32, 0usize);
    while start.elapsed() < Duration::from_secs(60) {
        if !recovered && start.elapsed() >= OUTAGE {
            outage_requests = server.counters().requests;
            server
                .set_plan(FaultPlan::healthy().latency(Latency::Fixed(Duration::from_millis(50))));
            recovered = true;
        }
        match send(&mut svc, &server).await {
            Ok(reply) if reply.status() == 200 => {
                first_success.get_or_insert(start.elapsed());
            }
            Ok(_) => failed += 1,
            Err(e) if e.is::<CircuitOpen>() => rejected += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
        sleep(Duration::from_millis(100)).await;
    }

    // Trip after THRESHOLD failures, then PROBES per cool-down (the last probe may land just
    // as the outage ends).
    let first_success = first_success.expect("it recovered");
    println!(
        "outage: {outage_requests} upstream calls in {OUTAGE:?}, {rejected} refused, \
         {failed} failed; first success at {first_success:?}"
    );
    let cycles = OUTAGE.as_secs() / COOLDOWN.as_secs() + 1;
    let bound = THRESHOLD as u64 + PROBES as u64 * cycles;
    assert!(
        outage_requests <= bound,
        "{outage_requests} upstream calls during the outage, policy allows {bound}"
    );
    assert!(outage_requests >= THRESHOLD as u64);
    assert!(
        rejected > 200,
        "most calls were refused at once: {rejected}"
    );
    assert!(failed >= THRESHOLD);
    assert!(
        first_success <= OUTAGE + COOLDOWN,
        "first success at {first_success:?}, more than one cool-down after the recovery"
    );
    assert_eq!(handle.state(), State::Closed);
}
