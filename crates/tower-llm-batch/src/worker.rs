//! The batching task: collects queued requests into batches, sends them, hands out results.
//!
//! One task per batcher owns the inner service, like `tower::buffer`'s worker. Callers talk to
//! it through a channel; each request carries a oneshot sender for its own result. A caller
//! that goes away closes that sender, which is how the task knows to leave its request out of a
//! batch that has not been sent yet, and to cancel a sent batch once all its callers are gone.

use std::any::Any;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use pin_project_lite::pin_project;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tower_llm_core::{BoxError, classify_dyn_error};
use tower_service::Service;

use crate::adapter::{Pack, Unpack};
use crate::error::{BatchClosed, BatchFailed, ItemMissing, Panicked};
use crate::layer::Limits;
use crate::observe::{Failed, Observe};
use crate::stats::FlushReason;

pub(crate) type Reply<Res> = oneshot::Sender<Result<Res, BoxError>>;

/// One request on its way to the batching task.
pub(crate) struct Message<K, I, Res> {
    pub(crate) key: K,
    pub(crate) item: I,
    pub(crate) weight: u64,
    pub(crate) reply: Reply<Res>,
    pub(crate) enqueued: Instant,
}

struct Entry<I, Res> {
    item: I,
    weight: u64,
    reply: Reply<Res>,
    enqueued: Instant,
}

/// Requests collecting under one key; sealed when full, heavy enough or old enough.
struct Pending<I, Res> {
    entries: Vec<Entry<I, Res>>,
    weight: u64,
    deadline: Instant,
}

impl<I, Res> Pending<I, Res> {
    fn new(deadline: Instant) -> Self {
        Pending {
            entries: Vec::new(),
            weight: 0,
            deadline,
        }
    }

    fn push(&mut self, entry: Entry<I, Res>) {
        self.weight = self.weight.saturating_add(entry.weight);
        self.entries.push(entry);
    }

    fn would_overflow(&self, weight: u64, limits: &Limits) -> bool {
        !self.entries.is_empty() && self.weight.saturating_add(weight) > limits.max_weight
    }

    fn flush_reason(&self, limits: &Limits) -> Option<FlushReason> {
        if self.entries.len() >= limits.max_items {
            Some(FlushReason::Full)
        } else if self.weight >= limits.max_weight {
            Some(FlushReason::Weight)
        } else {
            None
        }
    }
}

/// `from + wait`, or a far future when that does not fit in an `Instant`.
fn deadline_after(from: Instant, wait: Duration) -> Instant {
    from.checked_add(wait)
        .or_else(|| from.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(from)
}

/// Drops the requests whose callers went away; they were never sent, so nothing else is owed.
fn prune<I, Res>(entries: &mut Vec<Entry<I, Res>>, weight: &mut u64, observe: &Observe) {
    let before = entries.len();
    entries.retain(|entry| {
        let gone = entry.reply.is_closed();
        if gone {
            *weight = weight.saturating_sub(entry.weight);
        }
        !gone
    });
    let cancelled = before - entries.len();
    if cancelled > 0 {
        observe.cancelled(cancelled);
    }
}

/// A batch ready to go, waiting for a free in-flight slot and the inner service's readiness.
struct Sealed<K, I, Res> {
    key: K,
    entries: Vec<Entry<I, Res>>,
    weight: u64,
    reason: FlushReason,
}

fn seal<K, I, Res>(
    observe: &Observe,
    sealed: &mut VecDeque<Sealed<K, I, Res>>,
    key: K,
    pending: Pending<I, Res>,
    reason: FlushReason,
) {
    // The metric counts batches sealed; the stats count the reason when the batch is sent,
    // since its callers may all leave before.
    observe.sealed(reason);
    sealed.push_back(Sealed {
        key,
        entries: pending.entries,
        weight: pending.weight,
        reason,
    });
}

pin_project! {
    /// One batch sent to the inner service.
    struct InFlight<F, Split, Res> {
        #[pin]
        future: F,
        split: Option<Split>,
        replies: Vec<Reply<Res>>,
    }
}

type PanicPayload = Box<dyn Any + Send>;

/// How a batch in flight ended.
enum Landed<T, Split, Res> {
    /// The inner future finished (or panicked); its callers are owed their results.
    Answered(Result<T, PanicPayload>, Option<Split>, Vec<Reply<Res>>),
    /// Every caller (this many) went away first: the inner future was dropped unfinished.
    Abandoned(usize),
}

impl<F: Future, Split, Res> Future for InFlight<F, Split, Res> {
    type Output = Landed<F::Output, Split, Res>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Nobody is left to answer: the call is cancelled (dropped with this future) so that
        // its in-flight slot goes to a batch someone is waiting for. `all` stops at the first
        // caller still there, whose sender then wakes this task when that caller leaves.
        if this
            .replies
            .iter_mut()
            .all(|reply| reply.poll_closed(cx).is_ready())
        {
            return Poll::Ready(Landed::Abandoned(this.replies.len()));
        }
        let mut future = this.future;
        // A panic here would unwind the batching task and with it every other batch and
        // queued request; it fails only this batch instead. The future is dropped after it.
        let output = ready!(
            match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                Ok(poll) => poll.map(Ok),
                Err(panic) => Poll::Ready(Err(panic)),
            }
        );
        Poll::Ready(Landed::Answered(
            output,
            this.split.take(),
            std::mem::take(this.replies),
        ))
    }
}

type Queue<Req, A, Res> =
    mpsc::UnboundedReceiver<Message<<A as Pack<Req>>::Key, <A as Pack<Req>>::Item, Res>>;

pub(crate) struct Worker<S, Req, A, Res>
where
    A: Pack<Req>,
    S: Service<<A as Pack<Req>>::Batch>,
{
    inner: S,
    adapter: Arc<A>,
    queue: Queue<Req, A, Res>,
    queue_open: bool,
    pending: HashMap<A::Key, Pending<A::Item, Res>>,
    sealed: VecDeque<Sealed<A::Key, A::Item, Res>>,
    in_flight: FuturesUnordered<InFlight<S::Future, A::Split, Res>>,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    limits: Limits,
    observe: Arc<Observe>,
    semaphore: Arc<Semaphore>,
    failure: Arc<OnceLock<Arc<BoxError>>>,
    _request: PhantomData<fn(Req)>,
}

pub(crate) struct WorkerParts<Req, A: Pack<Req>, Res> {
    pub(crate) adapter: Arc<A>,
    pub(crate) queue: Queue<Req, A, Res>,
    pub(crate) limits: Limits,
    pub(crate) observe: Arc<Observe>,
    pub(crate) semaphore: Arc<Semaphore>,
    pub(crate) failure: Arc<OnceLock<Arc<BoxError>>>,
}

impl<S, Req, A, Res> Worker<S, Req, A, Res>
where
    A: Pack<Req> + Unpack<Req, <S as Service<<A as Pack<Req>>::Batch>>::Response, Response = Res>,
    S: Service<<A as Pack<Req>>::Batch>,
    S::Error: Into<BoxError>,
{
    pub(crate) fn new(inner: S, parts: WorkerParts<Req, A, Res>) -> Self {
        Worker {
            inner,
            adapter: parts.adapter,
            queue: parts.queue,
            queue_open: true,
            pending: HashMap::new(),
            sealed: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            timer_at: None,
            limits: parts.limits,
            observe: parts.observe,
            semaphore: parts.semaphore,
            failure: parts.failure,
            _request: PhantomData,
        }
    }

    pub(crate) async fn run(mut self) {
        std::future::poll_fn(|cx| self.poll(cx)).await;
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut progress = false;
            while let Poll::Ready(Some(done)) = self.in_flight.poll_next_unpin(cx) {
                self.deliver(done);
                progress = true;
            }
            while self.queue_open {
                match self.queue.poll_recv(cx) {
                    Poll::Ready(Some(message)) => {
                        self.enqueue(message);
                        progress = true;
                    }
                    Poll::Ready(None) => {
                        // Every handle is gone: nothing more can join, so send what is left.
                        self.queue_open = false;
                        progress = true;
                    }
                    Poll::Pending => break,
                }
            }
            self.expire(Instant::now());
            if self.launch(cx) {
                progress = true;
            }
            if progress {
                continue;
            }
            if let Some(deadline) = self.pending.values().map(|p| p.deadline).min() {
                if self.timer_at != Some(deadline) {
                    self.timer.as_mut().reset(deadline);
                    self.timer_at = Some(deadline);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    self.timer_at = None;
                    // The timer, not `Instant::now()`, says the deadline has passed, so a timer
                    // that rounds differently cannot make this loop spin.
                    self.expire(deadline);
                    continue;
                }
            }
            if !self.queue_open
                && self.pending.is_empty()
                && self.sealed.is_empty()
                && self.in_flight.is_empty()
            {
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
    }

    fn enqueue(&mut self, message: Message<A::Key, A::Item, Res>) {
        let Message {
            key,
            item,
            weight,
            reply,
            enqueued,
        } = message;
        self.observe.queued();
        let entry = Entry {
            item,
            weight,
            reply,
            enqueued,
        };
        let limits = self.limits;
        let observe = &*self.observe;
        // Counted from the caller's `call`, so a busy task does not stretch anyone's wait.
        let deadline = deadline_after(enqueued, limits.max_wait);
        match self.pending.entry(key) {
            MapEntry::Vacant(vacant) => {
                let mut pending = Pending::new(deadline);
                pending.push(entry);
                match pending.flush_reason(&limits) {
                    Some(reason) => {
                        seal(
                            observe,
                            &mut self.sealed,
                            vacant.into_key(),
                            pending,
                            reason,
                        );
                    }
                    None => {
                        vacant.insert(pending);
                    }
                }
            }
            MapEntry::Occupied(mut occupied) => {
                let pending = occupied.get_mut();
                if pending.would_overflow(entry.weight, &limits) {
                    prune(&mut pending.entries, &mut pending.weight, observe);
                    if pending.would_overflow(entry.weight, &limits) {
                        let full = std::mem::replace(pending, Pending::new(deadline));
                        let key = occupied.key().clone();
                        seal(observe, &mut self.sealed, key, full, FlushReason::Weight);
                    }
                }
                let pending = occupied.get_mut();
                if pending.entries.is_empty() {
                    // Everyone who was waiting here left: the new request starts a fresh wait.
                    pending.deadline = deadline;
                }
                pending.push(entry);
                if pending.entries.len() >= limits.max_items {
                    prune(&mut pending.entries, &mut pending.weight, observe);
                }
                if let Some(reason) = pending.flush_reason(&limits) {
                    let (key, full) = occupied.remove_entry();
                    seal(observe, &mut self.sealed, key, full, reason);
                }
            }
        }
    }

    /// Seals every batch whose deadline is at or before `now`, oldest first; all of them once
    /// nothing more can join.
    fn expire(&mut self, now: Instant) {
        let closing = !self.queue_open;
        let mut due: Vec<(Instant, A::Key)> = self
            .pending
            .iter()
            .filter(|(_, p)| closing || p.deadline <= now)
            .map(|(key, p)| (p.deadline, key.clone()))
            .collect();
        if due.is_empty() {
            return;
        }
        due.sort_by_key(|(deadline, _)| *deadline);
        let reason = if closing {
            FlushReason::Shutdown
        } else {
            FlushReason::Wait
        };
        for (_, key) in due {
            if let Some((key, pending)) = self.pending.remove_entry(&key) {
                seal(&self.observe, &mut self.sealed, key, pending, reason);
            }
        }
    }

    /// Sends sealed batches while in-flight slots are free and the inner service is ready.
    fn launch(&mut self, cx: &mut Context<'_>) -> bool {
        let mut launched = false;
        while self.in_flight.len() < self.limits.max_in_flight {
            let Some(front) = self.sealed.front_mut() else {
                break;
            };
            prune(&mut front.entries, &mut front.weight, &self.observe);
            if front.entries.is_empty() {
                self.sealed.pop_front();
                continue;
            }
            let inner = &mut self.inner;
            match catch_unwind(AssertUnwindSafe(|| inner.poll_ready(cx))) {
                Ok(Poll::Pending) => break,
                Ok(Poll::Ready(Err(error))) => {
                    let error: BoxError = error.into();
                    let how = Failed::Error(classify_dyn_error(&*error).kind);
                    self.fail(Arc::new(error), how);
                    break;
                }
                Err(panic) => {
                    let error = Panicked::boxed("poll_ready", &*panic);
                    self.fail(Arc::new(error), Failed::Panic("poll_ready"));
                    break;
                }
                Ok(Poll::Ready(Ok(()))) => {}
            }
            let Some(batch) = self.sealed.pop_front() else {
                break;
            };
            let now = Instant::now();
            let size = batch.entries.len();
            let mut items = Vec::with_capacity(size);
            let mut replies = Vec::with_capacity(size);
            let mut waited = Duration::ZERO;
            let mut oldest = Duration::ZERO;
            for entry in batch.entries {
                let d = now.saturating_duration_since(entry.enqueued);
                self.observe.request_sent(d);
                waited = waited.saturating_add(d);
                oldest = oldest.max(d);
                items.push(entry.item);
                replies.push(entry.reply);
            }
            let (adapter, inner) = (&self.adapter, &mut self.inner);
            let called = catch_unwind(AssertUnwindSafe(|| {
                let (request, split) = adapter.pack(batch.key, items);
                (inner.call(request), split)
            }));
            launched = true;

            self.observe
                .flushed(batch.reason, size, batch.weight, waited, oldest);
            match called {
                Ok((future, split)) => {
                    self.observe.call_started();
                    self.in_flight.push(InFlight {
                        future,
                        split: Some(split),
                        replies,
                    });
                }
                Err(panic) => self.fail_batch(
                    replies,
                    Panicked::boxed("pack or call", &*panic),
                    Failed::Panic("pack or call"),
                ),
            }
        }
        launched
    }

    fn deliver(&mut self, done: <InFlight<S::Future, A::Split, Res> as Future>::Output) {
        self.observe.call_ended();
        let (result, split, replies) = match done {
            Landed::Answered(result, split, replies) => (result, split, replies),
            Landed::Abandoned(size) => {
                self.observe.abandoned(size);
                return;
            }
        };
        let result = match result {
            Ok(result) => result,
            Err(panic) => {
                return self.fail_batch(
                    replies,
                    Panicked::boxed("the inner future", &*panic),
                    Failed::Panic("the inner future"),
                );
            }
        };
        match (result, split) {
            (Ok(response), Some(split)) => {
                let adapter = &self.adapter;
                let unpacked = catch_unwind(AssertUnwindSafe(|| adapter.unpack(response, split)));
                let results = match unpacked {
                    Ok(results) => results,
                    Err(panic) => {
                        return self.fail_batch(
                            replies,
                            Panicked::boxed("unpack", &*panic),
                            Failed::Panic("unpack"),
                        );
                    }
                };
                let mut results = results.into_iter();
                for (position, reply) in replies.into_iter().enumerate() {
                    let result = results
                        .next()
                        .unwrap_or_else(|| Err(Box::new(ItemMissing::new(position))));
                    // A caller that left after its batch was sent simply misses its answer.
                    let _ = reply.send(result);
                }
            }
            (Ok(_), None) => {
                for (position, reply) in replies.into_iter().enumerate() {
                    let _ = reply.send(Err(Box::new(ItemMissing::new(position))));
                }
            }
            (Err(error), _) => {
                let error: BoxError = error.into();
                let how = Failed::Error(classify_dyn_error(&*error).kind);
                self.fail_batch(replies, error, how);
            }
        }
    }

    /// Every caller of a batch gets `error`, shared.
    fn fail_batch(&self, replies: Vec<Reply<Res>>, error: BoxError, how: Failed) {
        let size = replies.len();
        self.observe.failed(size, how);
        let error = Arc::new(error);
        for reply in replies {
            let failed = BatchFailed::new(Arc::clone(&error), size);
            let _ = reply.send(Err(Box::new(failed)));
        }
    }

    /// The inner service failed `poll_ready`, so it may never be called again: every queued
    /// request fails with its error, and so does every later one. Batches in flight finish.
    fn fail(&mut self, error: Arc<BoxError>, how: Failed) {
        let _ = self.failure.set(Arc::clone(&error));
        self.semaphore.close();
        self.queue.close();
        self.queue_open = false;
        let mut replies: Vec<Reply<Res>> = Vec::new();
        for (_, pending) in self.pending.drain() {
            replies.extend(pending.entries.into_iter().map(|e| e.reply));
        }
        for sealed in self.sealed.drain(..) {
            replies.extend(sealed.entries.into_iter().map(|e| e.reply));
        }
        let dropped = replies.len();
        self.observe.stopped(dropped, how);
        while let Ok(message) = self.queue.try_recv() {
            replies.push(message.reply);
        }
        for reply in replies {
            let closed = BatchClosed::new(Some(Arc::clone(&error)));
            let _ = reply.send(Err(Box::new(closed)));
        }
    }
}
