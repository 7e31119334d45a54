//! Property test: random interleavings of requests, drops and completions (success, error,
//! panic) against a hand-driven executor that polls a future only when it was woken.
//!
//! Invariants: with shared errors, never more than one live inner call per key; a key with no
//! caller left has no live inner call (the call was cancelled); at the end, once every inner
//! call is answered, no caller is left pending (no lost wake-up, no hang).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use proptest::prelude::*;
use tokio::sync::oneshot;
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;
use tower_llm_core::{BoxError, RequestKey};
use tower_llm_dedup::{DedupLayer, OnError};

const KEYS: u8 = 3;

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Ok,
    Err,
    Panic,
}

#[derive(Clone, Debug)]
enum Op {
    Call(u8),
    Drop(usize),
    Complete(u8, Outcome),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS).prop_map(Op::Call),
        2 => any::<usize>().prop_map(Op::Drop),
        3 => (0..KEYS, prop_oneof![Just(Outcome::Ok), Just(Outcome::Err), Just(Outcome::Panic)])
            .prop_map(|(k, o)| Op::Complete(k, o)),
    ]
}

#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<String, BoxError>>>>;

struct Caller {
    key: u8,
    future: Answer,
    woken: Arc<Flag>,
    waker: Waker,
    done: bool,
}

impl Caller {
    fn poll(&mut self) {
        if self.done {
            return;
        }
        self.woken.0.store(false, Ordering::SeqCst);
        let mut cx = Context::from_waker(&self.waker);
        // A call not shared with anyone (an own call after a failure) is the inner service's
        // own future, and its panic is the caller's, as without the layer.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.future.as_mut().poll(&mut cx)
        }));
        if !matches!(polled, Ok(Poll::Pending)) {
            self.done = true;
        }
    }
}

/// The upstream: each call parks until the test answers it; live calls per key are counted.
#[derive(Clone, Default)]
struct Upstream {
    pending: Arc<Mutex<HashMap<u8, Vec<oneshot::Sender<Outcome>>>>>,
    live: Arc<Mutex<HashMap<u8, usize>>>,
    calls: Arc<AtomicUsize>,
}

struct Live {
    upstream: Upstream,
    key: u8,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(n) = self.upstream.live.lock().unwrap().get_mut(&self.key) {
            *n -= 1;
        }
    }
}

impl Upstream {
    fn live(&self, key: u8) -> usize {
        self.live.lock().unwrap().get(&key).copied().unwrap_or(0)
    }

    fn answer(&self, key: u8, outcome: Outcome) {
        let senders = self
            .pending
            .lock()
            .unwrap()
            .remove(&key)
            .unwrap_or_default();
        for sender in senders {
            let _ = sender.send(outcome);
        }
    }
}

fn silence_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let planned = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|m| *m == "planned panic");
            if !planned {
                default(info);
            }
        }));
    });
}

fn run(ops: Vec<Op>, on_error: OnError, cache: bool) -> Result<(), TestCaseError> {
    silence_panics();
    let upstream = Upstream::default();
    let inner = {
        let upstream = upstream.clone();
        service_fn(move |key: u8| {
            upstream.calls.fetch_add(1, Ordering::SeqCst);
            *upstream.live.lock().unwrap().entry(key).or_default() += 1;
            let live = Live {
                upstream: upstream.clone(),
                key,
            };
            let (tx, rx) = oneshot::channel();
            upstream
                .pending
                .lock()
                .unwrap()
                .entry(key)
                .or_default()
                .push(tx);
            async move {
                let _live = live;
                match rx.await {
                    Ok(Outcome::Ok) => Ok(format!("answer {key}")),
                    Ok(Outcome::Err) | Err(_) => Err::<String, BoxError>("upstream failed".into()),
                    Ok(Outcome::Panic) => panic!("planned panic"),
                }
            }
        })
    };
    let mut builder = DedupLayer::builder()
        .key_fn(|key: &u8| Some(RequestKey::from_u128(u128::from(*key))))
        .cache_all()
        .ttl(Duration::from_secs(3600))
        .on_error(on_error);
    if !cache {
        builder = builder.no_cache();
    }
    let layer = builder.build().expect("valid");
    let service = layer.layer(inner);
    let mut callers: Vec<Caller> = Vec::new();

    let poll_woken = |callers: &mut Vec<Caller>| {
        // Until quiet: a caller's poll may wake another.
        loop {
            let mut any = false;
            for caller in callers.iter_mut() {
                if !caller.done && caller.woken.0.load(Ordering::SeqCst) {
                    caller.poll();
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
    };

    for op in ops {
        match op {
            Op::Call(key) => {
                let future: Answer = Box::pin(service.clone().oneshot(key));
                let woken = Arc::new(Flag::default());
                let mut caller = Caller {
                    key,
                    future,
                    waker: Waker::from(woken.clone()),
                    woken,
                    done: false,
                };
                caller.poll();
                callers.push(caller);
            }
            Op::Drop(i) => {
                let waiting: Vec<usize> =
                    (0..callers.len()).filter(|&j| !callers[j].done).collect();
                if !waiting.is_empty() {
                    callers.remove(waiting[i % waiting.len()]);
                }
            }
            Op::Complete(key, outcome) => upstream.answer(key, outcome),
        }
        poll_woken(&mut callers);
        for key in 0..KEYS {
            let live = upstream.live(key);
            if on_error == OnError::Share {
                prop_assert!(live <= 1, "key {key}: {live} live inner calls");
            }
            let waiting = callers.iter().filter(|c| c.key == key && !c.done).count();
            if waiting == 0 {
                prop_assert_eq!(live, 0, "key {} has no caller but a live call", key);
            }
        }
    }

    // Answer everything until no call is left; then nobody may still be pending.
    for _ in 0..64 {
        for key in 0..KEYS {
            upstream.answer(key, Outcome::Ok);
        }
        poll_woken(&mut callers);
        if (0..KEYS).all(|k| upstream.live(k) == 0) {
            break;
        }
    }
    for caller in &callers {
        prop_assert!(
            caller.done,
            "a caller for key {} was left pending",
            caller.key
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn shared_errors(ops in proptest::collection::vec(op(), 1..60), cache in any::<bool>()) {
        run(ops, OnError::Share, cache)?;
    }

    #[test]
    fn own_calls(ops in proptest::collection::vec(op(), 1..60), cache in any::<bool>()) {
        run(ops, OnError::OwnCall, cache)?;
    }
}
