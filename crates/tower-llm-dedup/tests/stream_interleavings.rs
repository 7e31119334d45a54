//! Property test for streams: random interleavings of requests, drops, stream heads, chunks,
//! ends and failures, with a hand-driven executor that polls only what was woken.
//!
//! Invariants: never more than one live upstream call per key; a key with no caller left has
//! no live call; every subscriber reads one call's chunks in order from the first, with none
//! skipped; at the end, once every call is finished, no caller is left pending.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::Stream;
use proptest::prelude::*;
use tokio::sync::{mpsc, oneshot};
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;
use tower_llm_core::{BoxError, RequestKey};
use tower_llm_dedup::{ReplayStream, StreamDedupLayer};

const KEYS: u8 = 2;

/// A chunk names its upstream call and its place in that call's stream.
type Chunk = (usize, usize);
type Chunks = Pin<Box<dyn Stream<Item = Result<Chunk, BoxError>> + Send>>;

#[derive(Clone, Debug)]
enum Op {
    Call(u8),
    Drop(usize),
    Head(u8, bool),
    Chunk(u8),
    End(u8),
    Fail(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS).prop_map(Op::Call),
        2 => any::<usize>().prop_map(Op::Drop),
        2 => (0..KEYS, prop::bool::weighted(0.8)).prop_map(|(k, ok)| Op::Head(k, ok)),
        4 => (0..KEYS).prop_map(Op::Chunk),
        1 => (0..KEYS).prop_map(Op::End),
        1 => (0..KEYS).prop_map(Op::Fail),
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

/// One upstream call the test controls: its head, then its chunks.
struct Call {
    id: usize,
    head: Option<oneshot::Sender<bool>>,
    chunks: Option<mpsc::UnboundedSender<Result<Chunk, BoxError>>>,
    sent: usize,
}

#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<Mutex<HashMap<u8, Vec<Call>>>>,
    live: Arc<Mutex<HashMap<u8, usize>>>,
    next_id: Arc<AtomicUsize>,
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

/// The stream half keeps the call live until it ends or is dropped.
struct Tracked {
    inner: mpsc::UnboundedReceiver<Result<Chunk, BoxError>>,
    _live: Live,
}

impl Stream for Tracked {
    type Item = Result<Chunk, BoxError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_recv(cx)
    }
}

impl Upstream {
    fn live(&self, key: u8) -> usize {
        self.live.lock().unwrap().get(&key).copied().unwrap_or(0)
    }

    /// How many chunks call `id` sent.
    fn sent(&self, id: usize) -> Option<usize> {
        let calls = self.calls.lock().unwrap();
        calls
            .values()
            .flatten()
            .find(|c| c.id == id)
            .map(|c| c.sent)
    }

    fn with_calls(&self, key: u8, f: impl FnMut(&mut Call)) {
        if let Some(calls) = self.calls.lock().unwrap().get_mut(&key) {
            calls.iter_mut().for_each(f);
        }
    }
}

enum Phase {
    Head(Pin<Box<dyn Future<Output = Result<ReplayStream<Chunk>, BoxError>>>>),
    Reading(ReplayStream<Chunk>),
    Done,
}

struct Caller {
    key: u8,
    phase: Phase,
    read: Vec<Chunk>,
    /// The stream ended without error.
    complete: bool,
    woken: Arc<Flag>,
    waker: Waker,
}

impl Caller {
    fn done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Polls as far as it can; checks the chunks read so far.
    fn poll(&mut self) -> Result<(), TestCaseError> {
        self.woken.0.store(false, Ordering::SeqCst);
        let mut cx = Context::from_waker(&self.waker);
        loop {
            match &mut self.phase {
                Phase::Head(future) => match future.as_mut().poll(&mut cx) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(Ok(stream)) => self.phase = Phase::Reading(stream),
                    Poll::Ready(Err(_)) => self.phase = Phase::Done,
                },
                Phase::Reading(stream) => match Pin::new(stream).poll_next(&mut cx) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(Some(Ok(chunk))) => {
                        let expected_call = self.read.first().map_or(chunk.0, |c| c.0);
                        prop_assert_eq!(chunk, (expected_call, self.read.len()), "out of order");
                        self.read.push(chunk);
                    }
                    Poll::Ready(Some(Err(_))) => self.phase = Phase::Done,
                    Poll::Ready(None) => {
                        self.complete = true;
                        self.phase = Phase::Done;
                    }
                },
                Phase::Done => return Ok(()),
            }
        }
    }
}

fn run(ops: Vec<Op>, cache: bool) -> Result<(), TestCaseError> {
    let upstream = Upstream::default();
    let inner = {
        let upstream = upstream.clone();
        service_fn(move |key: u8| {
            *upstream.live.lock().unwrap().entry(key).or_default() += 1;
            let live = Live {
                upstream: upstream.clone(),
                key,
            };
            let (head_tx, head_rx) = oneshot::channel();
            let (chunk_tx, chunk_rx) = mpsc::unbounded_channel();
            let id = upstream.next_id.fetch_add(1, Ordering::SeqCst);
            upstream
                .calls
                .lock()
                .unwrap()
                .entry(key)
                .or_default()
                .push(Call {
                    id,
                    head: Some(head_tx),
                    chunks: Some(chunk_tx),
                    sent: 0,
                });
            async move {
                match head_rx.await {
                    Ok(true) => {
                        let stream: Chunks = Box::pin(Tracked {
                            inner: chunk_rx,
                            _live: live,
                        });
                        Ok(stream)
                    }
                    _ => Err::<Chunks, BoxError>("refused".into()),
                }
            }
        })
    };
    let mut builder = StreamDedupLayer::builder()
        .key_fn(|key: &u8| Some(RequestKey::from_u128(u128::from(*key))))
        .cache_all();
    if !cache {
        builder = builder.no_cache();
    }
    let service = builder.build().expect("valid").layer(inner);
    let mut callers: Vec<Caller> = Vec::new();

    let poll_woken = |callers: &mut Vec<Caller>| -> Result<(), TestCaseError> {
        loop {
            let mut any = false;
            for caller in callers.iter_mut() {
                if !caller.done() && caller.woken.0.load(Ordering::SeqCst) {
                    caller.poll()?;
                    any = true;
                }
            }
            if !any {
                return Ok(());
            }
        }
    };

    for op in ops {
        match op {
            Op::Call(key) => {
                let woken = Arc::new(Flag::default());
                let mut caller = Caller {
                    key,
                    phase: Phase::Head(Box::pin(service.clone().oneshot(key))),
                    read: Vec::new(),
                    complete: false,
                    waker: Waker::from(woken.clone()),
                    woken,
                };
                caller.poll()?;
                callers.push(caller);
            }
            Op::Drop(i) => {
                let waiting: Vec<usize> =
                    (0..callers.len()).filter(|&j| !callers[j].done()).collect();
                if !waiting.is_empty() {
                    callers.remove(waiting[i % waiting.len()]);
                }
            }
            Op::Head(key, ok) => upstream.with_calls(key, |call| {
                if let Some(head) = call.head.take() {
                    let _ = head.send(ok);
                }
            }),
            Op::Chunk(key) => upstream.with_calls(key, |call| {
                if call.head.is_none()
                    && let Some(chunks) = &call.chunks
                {
                    let _ = chunks.send(Ok((call.id, call.sent)));
                    call.sent += 1;
                }
            }),
            Op::End(key) => upstream.with_calls(key, |call| {
                if call.head.is_none() {
                    call.chunks = None;
                }
            }),
            Op::Fail(key) => upstream.with_calls(key, |call| {
                if call.head.is_none()
                    && let Some(chunks) = call.chunks.take()
                {
                    let _ = chunks.send(Err("cut".into()));
                }
            }),
        }
        poll_woken(&mut callers)?;
        for key in 0..KEYS {
            let live = upstream.live(key);
            prop_assert!(live <= 1, "key {key}: {live} live upstream calls");
            let waiting = callers.iter().filter(|c| c.key == key && !c.done()).count();
            if waiting == 0 {
                prop_assert_eq!(live, 0, "key {} has no caller but a live call", key);
            }
        }
    }

    // Finish every call (head, then end) until nothing is live; nobody may be left pending.
    for _ in 0..16 {
        for key in 0..KEYS {
            upstream.with_calls(key, |call| {
                if let Some(head) = call.head.take() {
                    let _ = head.send(true);
                }
                call.chunks = None;
            });
        }
        poll_woken(&mut callers)?;
    }
    for caller in &callers {
        prop_assert!(
            caller.done(),
            "a caller for key {} was left pending",
            caller.key
        );
        // A stream that ended without error delivered every chunk its call sent.
        if caller.complete
            && let Some(first) = caller.read.first()
        {
            prop_assert_eq!(
                Some(caller.read.len()),
                upstream.sent(first.0),
                "chunks skipped"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn stream_interleavings(ops in proptest::collection::vec(op(), 1..60), cache in any::<bool>()) {
        run(ops, cache)?;
    }
}
