//! Per-key breakers, and the metrics every breaker reports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};
use tokio::time::advance;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_llm_breaker::{CircuitBreakerLayer, State};
use tower_llm_core::{BoxError, CircuitOpen};

/// The upstream answers 500 for odd requests and 200 for even ones; the key is the request's
/// parity name.
fn upstream(
    calls: Arc<Mutex<BTreeMap<u8, usize>>>,
) -> impl Service<u8, Response = http::Response<()>, Error = BoxError, Future: Send> + Clone {
    service_fn(move |req: u8| {
        *calls.lock().expect("lock").entry(req).or_default() += 1;
        async move {
            let status = if req % 2 == 1 { 500 } else { 200 };
            Ok::<_, BoxError>(
                http::Response::builder()
                    .status(status)
                    .body(())
                    .expect("valid"),
            )
        }
    })
}

async fn call<S>(svc: &mut S, req: u8) -> Result<http::Response<()>, BoxError>
where
    S: Service<u8, Response = http::Response<()>, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_breaker() {
    let calls = Arc::default();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .cooldown(Duration::from_secs(10))
        .build_keyed(|req: &u8| format!("model-{req}"), 16)
        .expect("valid");
    let handle = layer.handle();
    let mut svc = layer.layer(upstream(Arc::clone(&calls)));

    for _ in 0..2 {
        call(&mut svc, 1).await.expect("a 500");
    }
    for _ in 0..20 {
        let err = call(&mut svc, 1).await.expect_err("key 1 is open");
        assert!(err.is::<CircuitOpen>());
        let ok = call(&mut svc, 2).await.expect("key 2 is unaffected");
        assert_eq!(ok.status(), 200);
    }
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls, BTreeMap::from([(1, 2), (2, 20)]));

    let one = handle.get("model-1").expect("known key");
    let two = handle.get("model-2").expect("known key");
    assert_eq!(one.state(), State::Open);
    assert_eq!(one.key(), Some("model-1"));
    assert_eq!(two.state(), State::Closed);
    assert_eq!(handle.len(), 2);

    // Clones share the map.
    let mut clone = svc.clone();
    assert!(call(&mut clone, 1).await.is_err());
    advance(Duration::from_secs(10)).await;
    assert_eq!(one.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn the_map_is_bounded_and_keeps_open_breakers_longest() {
    let calls = Arc::default();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .cooldown(Duration::from_secs(60))
        .build_keyed(|req: &u8| *req, 2)
        .expect("valid");
    let handle = layer.handle();
    let mut svc = layer.layer(upstream(Arc::clone(&calls)));

    call(&mut svc, 1).await.expect("trips key 1");
    call(&mut svc, 2).await.expect("key 2 closed");
    call(&mut svc, 4)
        .await
        .expect("key 4 evicts key 2, not the open key 1");
    let mut keys = handle.keys();
    keys.sort_unstable();
    assert_eq!(keys, [1, 4]);
    assert!(call(&mut svc, 1).await.is_err(), "key 1 still open");

    // With every breaker open, the least recently used one goes.
    call(&mut svc, 3)
        .await
        .expect("trips key 3, evicting key 4");
    let mut keys = handle.keys();
    keys.sort_unstable();
    assert_eq!(keys, [1, 3]);
    call(&mut svc, 5)
        .await
        .expect("evicts key 1, used before key 3");
    let mut keys = handle.keys();
    keys.sort_unstable();
    assert_eq!(keys, [3, 5]);
    assert!(handle.get(&1).is_none());

    // Three keys made room for others; the snapshot lists what is left.
    let mut stats = handle.stats();
    assert_eq!(stats.evicted, 3);
    stats.breakers.sort_by_key(|(key, _)| *key);
    let states: Vec<_> = stats.breakers.iter().map(|(k, s)| (*k, s.state)).collect();
    assert_eq!(states, [(3, State::Open), (5, State::Open)]);
}

#[test]
fn max_keys_must_be_positive() {
    let err = CircuitBreakerLayer::builder()
        .build_keyed(|req: &u8| *req, 0)
        .expect_err("invalid");
    assert_eq!(err.knob(), "max_keys");
}

#[derive(Default)]
struct Capture {
    values: Arc<Mutex<BTreeMap<String, f64>>>,
}

struct Handle {
    name: String,
    values: Arc<Mutex<BTreeMap<String, f64>>>,
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        *self
            .values
            .lock()
            .expect("lock")
            .entry(self.name.clone())
            .or_default() += value as f64;
    }
    fn absolute(&self, value: u64) {
        self.values
            .lock()
            .expect("lock")
            .insert(self.name.clone(), value as f64);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        *self
            .values
            .lock()
            .expect("lock")
            .entry(self.name.clone())
            .or_default() += value;
    }
    fn decrement(&self, value: f64) {
        GaugeFn::increment(self, -value);
    }
    fn set(&self, value: f64) {
        self.values
            .lock()
            .expect("lock")
            .insert(self.name.clone(), value);
    }
}

impl Capture {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        let mut name = key.name().to_string();
        for label in key.labels() {
            name.push_str(&format!(" {}={}", label.key(), label.value()));
        }
        Arc::new(Handle {
            name,
            values: Arc::clone(&self.values),
        })
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.values.lock().expect("lock").get(name).copied()
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn metrics_report_state_transitions_and_rejections() {
    let capture = Capture::default();
    let _guard = metrics::set_default_local_recorder(&capture);
    let calls = Arc::default();
    let mut svc = CircuitBreakerLayer::builder()
        .name("openai")
        .consecutive_failures(1)
        .cooldown(Duration::from_secs(5))
        .build()
        .expect("valid")
        .layer(upstream(Arc::clone(&calls)));
    assert_eq!(
        capture.get("tower_llm_breaker_state name=openai"),
        Some(0.0)
    );
    call(&mut svc, 1).await.expect("trips");
    assert_eq!(
        capture.get("tower_llm_breaker_state name=openai"),
        Some(1.0)
    );
    for _ in 0..3 {
        assert!(call(&mut svc, 1).await.is_err());
    }
    assert_eq!(
        capture.get("tower_llm_breaker_rejected_total name=openai"),
        Some(3.0)
    );
    advance(Duration::from_secs(5)).await;
    call(&mut svc, 2).await.expect("probe closes");
    assert_eq!(
        capture.get("tower_llm_breaker_state name=openai"),
        Some(0.0)
    );
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ] {
        assert_eq!(
            capture.get(&format!(
                "tower_llm_breaker_transitions_total name=openai from={from} to={to}"
            )),
            Some(1.0),
            "{from} -> {to}"
        );
    }

    let keyed = CircuitBreakerLayer::builder()
        .name("models")
        .consecutive_failures(1)
        .build_keyed(|req: &u8| *req, 4)
        .expect("valid");
    let mut svc = keyed.layer(upstream(calls));
    call(&mut svc, 7).await.expect("trips key 7");
    assert_eq!(
        capture.get("tower_llm_breaker_state name=models key=7"),
        Some(1.0)
    );
}
