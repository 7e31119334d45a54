//! Random interleavings of stream starts, chunks, ends, cuts, drops and waits through a rate
//! limiter and a breaker, over a stream type of the user's own (it carries core's
//! `EndSignal`): the upstream never has more streams open than the concurrency limit, the
//! limiter's slots in use are always the streams open, every slot, probe slot and token
//! reservation comes back, and every stream's end is counted once, by both layers. The
//! breaker trips on two cuts in a row and probes after its cool-down, so streams also start,
//! end and drop as half-open probes, and calls are refused while it is open.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::Stream;
use proptest::prelude::*;
use tower::{Layer, Service, service_fn};
use tower_llm_breaker::CircuitBreakerLayer;
use tower_llm_core::{
    BoxError, CircuitOpen, ClassifyResponse, EndSignal, Failure, FailureKind, Outcome, RequestCost,
    ResponseUsage, StreamEnd, Usage,
};
use tower_llm_ratelimit::{Quota, RateLimitLayer, Reconcile};

const CONCURRENCY: usize = 2;
const CALLS: usize = 6;
const PROBES: usize = 2;
const COOLDOWN: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
enum Op {
    Start(usize),
    Chunk(usize),
    End(usize, u64),
    EndWithoutUsage(usize),
    Cut(usize),
    Drop(usize),
    /// Time passes, past the breaker's cool-down.
    Wait,
}

fn op() -> impl Strategy<Value = Op> {
    let call = 0..CALLS;
    prop_oneof![
        call.clone().prop_map(Op::Start),
        call.clone().prop_map(Op::Chunk),
        (call.clone(), 0u64..200).prop_map(|(i, used)| Op::End(i, used)),
        call.clone().prop_map(Op::EndWithoutUsage),
        call.clone().prop_map(Op::Cut),
        call.prop_map(Op::Drop),
        Just(Op::Wait),
    ]
}

/// What the test tells a stream to do next.
#[derive(Clone, Copy, Debug)]
enum Event {
    Chunk,
    End(Option<u64>),
    Cut,
}

struct Request {
    id: usize,
    cost: u64,
}

impl RequestCost for Request {
    fn estimated_tokens(&self) -> u64 {
        self.cost
    }
}

/// The upstream's side: streams open now, and the most ever open at once.
#[derive(Default)]
struct Upstream {
    open: AtomicUsize,
    peak: AtomicUsize,
}

impl Upstream {
    fn opened(&self) {
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(open, Ordering::SeqCst);
    }
}

/// A user's stream type: its events come from the test; it fires its end signal itself.
struct TestStream {
    events: Arc<Mutex<VecDeque<Event>>>,
    upstream: Arc<Upstream>,
    end: EndSignal,
    closed: bool,
}

impl TestStream {
    fn close(&mut self, end: StreamEnd) {
        if !self.closed {
            self.closed = true;
            self.upstream.open.fetch_sub(1, Ordering::SeqCst);
        }
        self.end.finish(end);
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        if !self.closed {
            self.closed = true;
            self.upstream.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Stream for TestStream {
    type Item = Result<u32, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.closed {
            return Poll::Ready(None);
        }
        let next = self.events.lock().unwrap().pop_front();
        match next {
            None => Poll::Pending,
            Some(Event::Chunk) => Poll::Ready(Some(Ok(1))),
            Some(Event::End(used)) => {
                let usage = used.map(|output_tokens| Usage::new(0, output_tokens));
                self.close(StreamEnd::Completed { usage });
                Poll::Ready(None)
            }
            Some(Event::Cut) => {
                self.close(StreamEnd::Failed(Failure::new(FailureKind::Transport)));
                Poll::Ready(Some(Err("cut".into())))
            }
        }
    }
}

impl ClassifyResponse for TestStream {
    fn classify_response(&self) -> Outcome {
        Outcome::Success
    }

    fn end_signal(&mut self) -> Option<&mut EndSignal> {
        Some(&mut self.end)
    }
}

impl ResponseUsage for TestStream {
    /// Usage arrives with the end, through the signal.
    fn usage(&self) -> Option<Usage> {
        None
    }
}

type CallFuture = Pin<Box<dyn Future<Output = Result<TestStream, BoxError>> + Send>>;

#[derive(Default)]
struct Call {
    started: bool,
    future: Option<CallFuture>,
    stream: Option<TestStream>,
}

/// What the test saw, to compare with what the layers counted.
#[derive(Default, Debug)]
struct Seen {
    /// Calls the limiter let through: the streams handed over and the breaker's refusals.
    admitted: usize,
    streams: usize,
    completed: usize,
    cut: usize,
    /// Refused by the open breaker (the limiter admitted them; their reservation stays).
    refused: usize,
    /// Streams dropped before their end.
    dropped: usize,
    /// Tokens that stay charged: the usage of a stream that reported one, else the estimate.
    charged: u64,
}

const COST: u64 = 100;

fn poll_once<T>(future: &mut Pin<Box<dyn Future<Output = T> + Send>>) -> Option<T> {
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

fn poll_stream(stream: &mut TestStream) -> Poll<Option<Result<u32, BoxError>>> {
    Pin::new(stream).poll_next(&mut Context::from_waker(Waker::noop()))
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let upstream = Arc::new(Upstream::default());
    let scripts: Vec<Arc<Mutex<VecDeque<Event>>>> =
        (0..CALLS + CONCURRENCY).map(|_| Arc::default()).collect();
    let inner = {
        let upstream = Arc::clone(&upstream);
        let scripts = scripts.clone();
        service_fn(move |request: Request| {
            upstream.opened();
            let stream = TestStream {
                events: Arc::clone(&scripts[request.id]),
                upstream: Arc::clone(&upstream),
                end: EndSignal::new(),
                closed: false,
            };
            std::future::ready(Ok::<_, BoxError>(stream))
        })
    };
    let limiter = RateLimitLayer::builder()
        .concurrency(CONCURRENCY)
        .tokens(Quota::per_minute(1_000_000))
        .reconcile(Reconcile::RefundAndCharge)
        .max_queue(CALLS)
        // Longer than every wait of a case together: no call is refused for waiting.
        .max_wait(Duration::from_secs(24 * 3600))
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .cooldown(COOLDOWN)
        .probes(PROBES)
        .build()
        .unwrap();
    let mut service = limiter.layer(breaker.layer(inner));
    let mut calls: Vec<Call> = (0..CALLS).map(|_| Call::default()).collect();
    let mut seen = Seen::default();

    for op in ops {
        match op {
            Op::Start(i) if !calls[i].started => {
                calls[i].started = true;
                let ready = Service::<Request>::poll_ready(
                    &mut service,
                    &mut Context::from_waker(Waker::noop()),
                );
                prop_assert!(matches!(ready, Poll::Ready(Ok(()))));
                calls[i].future = Some(Box::pin(service.call(Request { id: i, cost: COST })));
            }
            Op::Chunk(i) | Op::End(i, _) | Op::EndWithoutUsage(i) | Op::Cut(i)
                if calls[i].stream.is_some() =>
            {
                let event = match op {
                    Op::Chunk(_) => Event::Chunk,
                    Op::End(_, used) => Event::End(Some(used)),
                    Op::EndWithoutUsage(_) => Event::End(None),
                    _ => Event::Cut,
                };
                scripts[i].lock().unwrap().push_back(event);
                let stream = calls[i].stream.as_mut().unwrap();
                let was_closed = stream.closed;
                let _ = poll_stream(stream);
                if !was_closed && stream.closed {
                    match event {
                        Event::End(used) => {
                            seen.completed += 1;
                            seen.charged += used.unwrap_or(COST);
                        }
                        Event::Cut => {
                            seen.cut += 1;
                            seen.charged += COST;
                        }
                        Event::Chunk => unreachable!("a chunk closes nothing"),
                    }
                }
            }
            Op::Drop(i) => {
                calls[i].future = None;
                if let Some(stream) = calls[i].stream.take()
                    && !stream.closed
                {
                    seen.dropped += 1;
                    seen.charged += COST;
                }
            }
            Op::Wait => runtime.block_on(tokio::time::advance(COOLDOWN + Duration::from_secs(1))),
            _ => {}
        }
        // Let every waiting call look again.
        for call in &mut calls {
            if let Some(future) = call.future.as_mut()
                && let Some(result) = poll_once(future)
            {
                call.future = None;
                seen.admitted += 1;
                match result {
                    Ok(stream) => {
                        seen.streams += 1;
                        call.stream = Some(stream);
                    }
                    Err(error) => {
                        prop_assert!(error.is::<CircuitOpen>(), "{}", error);
                        seen.refused += 1;
                        seen.charged += COST;
                    }
                }
            }
        }
        let open = upstream.open.load(Ordering::SeqCst);
        prop_assert!(open <= CONCURRENCY, "more streams open than the limit");
        // Each stream open holds a slot, and nothing else does.
        prop_assert_eq!(limiter.handle().stats().in_flight, open);
        prop_assert!(breaker.handle().stats().probes_in_flight <= PROBES);
    }

    // Everything the callers held goes away.
    for call in &mut calls {
        call.future = None;
        if let Some(stream) = call.stream.take()
            && !stream.closed
        {
            seen.dropped += 1;
            seen.charged += COST;
        }
    }
    prop_assert_eq!(upstream.open.load(Ordering::SeqCst), 0);
    prop_assert!(upstream.peak.load(Ordering::SeqCst) <= CONCURRENCY);

    let stats = limiter.handle().stats();
    prop_assert_eq!(stats.admitted, seen.admitted as u64);
    prop_assert_eq!((stats.waiting, stats.in_flight), (0, 0));
    prop_assert_eq!(stats.tokens_reserved, COST * seen.admitted as u64);
    // Nothing double-counted: what stays charged is each stream's usage or its estimate.
    prop_assert_eq!(
        stats.tokens_reserved - stats.tokens_refunded + stats.tokens_charged,
        seen.charged,
        "{:?} {:?}",
        stats,
        seen
    );
    let judged = breaker.handle().stats();
    prop_assert_eq!(judged.successes, seen.completed as u64);
    prop_assert_eq!(judged.failures, seen.cut as u64);
    prop_assert_eq!(judged.rejected, seen.refused as u64);
    // A dropped stream is neither a success nor a failure, nor anything else.
    prop_assert_eq!(judged.ignored, 0);
    prop_assert_eq!(judged.probes_in_flight, 0);
    prop_assert_eq!(
        seen.streams,
        seen.completed + seen.cut + seen.dropped,
        "{:?}",
        seen
    );

    // Every slot came back: `CONCURRENCY` new calls are admitted at once, once the breaker
    // is closed and the pause its refusals asked of the limiter is over.
    breaker.handle().reset();
    runtime.block_on(tokio::time::advance(COOLDOWN + Duration::from_secs(1)));
    let mut held = Vec::new();
    for id in CALLS..CALLS + CONCURRENCY {
        let mut future: CallFuture = Box::pin(service.call(Request { id, cost: COST }));
        match poll_once(&mut future) {
            Some(Ok(stream)) => held.push(stream),
            _ => prop_assert!(false, "a slot was not given back"),
        }
    }
    prop_assert_eq!(upstream.open.load(Ordering::SeqCst), CONCURRENCY);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn slots_and_reservations_always_come_back(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
