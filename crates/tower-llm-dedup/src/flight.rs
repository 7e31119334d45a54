//! One upstream call shared by every caller that asked the same question while it ran.
//!
//! Nothing is spawned. The call's future (or stream) lives in the flight, and whichever
//! subscriber is polled drives it, with a waker that wakes every subscriber, so the call goes
//! on whoever is dropped, as long as one subscriber remains. The last subscriber to leave drops
//! the call, which cancels it. A panic while driving is caught and becomes every subscriber's
//! error. Everything the call produced is kept in order, so a subscriber that joins late reads
//! from the start.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_core::Stream;
use tower_llm_core::{BoxError, RequestKey};

use crate::cache::KeyHasher;
use crate::error::{InnerPanicked, SharedError};

/// What drives a flight: the inner call as a stream of steps.
pub(crate) type Producer<I> = Pin<Box<dyn Stream<Item = Result<Step<I>, BoxError>> + Send>>;

/// Runs once when the call completes successfully, with everything it produced, before the
/// flight leaves the in-flight map (so a newcomer finds either the flight or the cache).
pub(crate) type Completion<I> = Box<dyn FnOnce(&[I]) + Send>;

/// One step of the inner call.
pub(crate) enum Step<I> {
    /// A streaming response's head arrived (the stream exists; no chunk yet).
    Started,
    /// A response, or one chunk of a stream.
    Item(I),
}

/// What a subscriber reads next.
pub(crate) enum Next<I> {
    Started,
    Item(I),
    Done,
    Failed(BoxError),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under one of these locks cannot leave the state half-written (panics in the
    // inner call are caught before they reach here), so a poisoned lock is still good.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Wakers {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

/// The waker the inner call is polled with: it wakes every subscriber, so that whichever runs
/// first drives the call on, even if the one that polled it last is gone.
#[derive(Default)]
struct Notifier {
    wakers: Mutex<Wakers>,
}

impl Notifier {
    fn allocate(&self) -> usize {
        let mut w = lock(&self.wakers);
        match w.free.pop() {
            Some(id) => id,
            None => {
                w.slots.push(None);
                w.slots.len() - 1
            }
        }
    }

    fn register(&self, id: usize, waker: &Waker) {
        let mut w = lock(&self.wakers);
        if let Some(slot) = w.slots.get_mut(id) {
            match slot {
                Some(old) if old.will_wake(waker) => {}
                _ => *slot = Some(waker.clone()),
            }
        }
    }

    fn release(&self, id: usize) {
        let mut w = lock(&self.wakers);
        if let Some(slot) = w.slots.get_mut(id) {
            *slot = None;
            w.free.push(id);
        }
    }

    fn wake_all(&self) {
        self.wake_others(usize::MAX);
    }

    /// Wakes every registered subscriber but `except` (the one doing the waking, which is
    /// running already).
    fn wake_others(&self, except: usize) {
        let woken: Vec<Waker> = {
            let mut w = lock(&self.wakers);
            if w.slots
                .iter()
                .enumerate()
                .all(|(id, slot)| id == except || slot.is_none())
            {
                return;
            }
            w.slots
                .iter_mut()
                .enumerate()
                .filter(|(id, _)| *id != except)
                .filter_map(|(_, slot)| slot.take())
                .collect()
        };
        // Woken outside the lock: a waker may run code that registers again.
        for waker in woken {
            waker.wake();
        }
    }
}

impl Wake for Notifier {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

enum End {
    Done,
    Failed {
        original: Option<BoxError>,
        shared: Option<SharedError>,
    },
}

struct State<I> {
    producer: Option<Producer<I>>,
    completion: Option<Completion<I>>,
    started: bool,
    items: Vec<I>,
    end: Option<End>,
    subscribers: usize,
    error_readers: usize,
    /// No subscriber is left and the call was dropped.
    closed: bool,
}

pub(crate) struct Flight<I> {
    state: Mutex<State<I>>,
    notifier: Arc<Notifier>,
    waker: Waker,
}

impl<I> Flight<I> {
    fn new() -> Self {
        let notifier = Arc::new(Notifier::default());
        Flight {
            state: Mutex::new(State {
                producer: None,
                completion: None,
                started: false,
                items: Vec::new(),
                end: None,
                subscribers: 0,
                error_readers: 0,
                closed: false,
            }),
            waker: Waker::from(notifier.clone()),
            notifier,
        }
    }
}

/// The calls in flight, by key.
pub(crate) struct InFlight<I> {
    map: Mutex<HashMap<RequestKey, Arc<Flight<I>>, KeyHasher>>,
}

impl<I> Default for InFlight<I> {
    fn default() -> Self {
        InFlight {
            map: Mutex::new(HashMap::with_hasher(KeyHasher)),
        }
    }
}

/// How a request joined.
pub(crate) enum Joined<I, V> {
    /// It joined a call already in flight.
    Waiter(Subscription<I>),
    /// The cache had the answer after all (a call completed in between).
    Cached(V),
    /// It must start the call: install its producer with [`Subscription::start`].
    Leader(Subscription<I>),
}

impl<I> InFlight<I> {
    /// Joins the call in flight for `key`, or, when there is none (or it already failed),
    /// asks `recheck` (the cache) once more and else registers a new flight for the caller to
    /// start. `reads_error`: whether this subscriber will read a failure (rather than making
    /// its own call).
    pub(crate) fn join<V>(
        self: &Arc<Self>,
        key: RequestKey,
        reads_error: bool,
        recheck: impl FnOnce() -> Option<V>,
    ) -> Joined<I, V> {
        let mut map = lock(&self.map);
        if let Some(flight) = map.get(&key) {
            let mut state = lock(&flight.state);
            let failed = matches!(state.end, Some(End::Failed { .. }));
            if !state.closed && !failed {
                state.subscribers += 1;
                if reads_error {
                    state.error_readers += 1;
                }
                drop(state);
                let flight = flight.clone();
                drop(map);
                return Joined::Waiter(Subscription::new(flight, self.clone(), key, reads_error));
            }
        }
        // A completing call fills the cache before it leaves this map, and we hold the map:
        // if the cache misses now, no identical call can have finished unseen.
        if let Some(value) = recheck() {
            return Joined::Cached(value);
        }
        let flight = Arc::new(Flight::new());
        {
            let mut state = lock(&flight.state);
            state.subscribers = 1;
            state.error_readers = 1;
        }
        map.insert(key, flight.clone());
        drop(map);
        let mut leader = Subscription::new(flight, self.clone(), key, true);
        leader.pending_start = true;
        Joined::Leader(leader)
    }

    fn remove(&self, key: &RequestKey, flight: &Arc<Flight<I>>) {
        let mut map = lock(&self.map);
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }
}

/// One caller's place in a flight. Dropping it leaves the flight; the last to leave cancels
/// the call.
pub(crate) struct Subscription<I> {
    flight: Arc<Flight<I>>,
    in_flight: Arc<InFlight<I>>,
    key: RequestKey,
    id: usize,
    cursor: usize,
    seen_start: bool,
    attached: bool,
    /// Whether this subscriber reads a failure (rather than making its own call).
    reads_error: bool,
    /// A leader that has not installed its call yet: if it goes away before it does (the
    /// inner service's `call` panicked), the flight fails instead of leaving waiters parked.
    pending_start: bool,
}

impl<I> std::fmt::Debug for Subscription<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("key", &self.key)
            .field("cursor", &self.cursor)
            .field("attached", &self.attached)
            .finish()
    }
}

impl<I> Subscription<I> {
    fn new(
        flight: Arc<Flight<I>>,
        in_flight: Arc<InFlight<I>>,
        key: RequestKey,
        reads_error: bool,
    ) -> Self {
        let id = flight.notifier.allocate();
        Subscription {
            flight,
            in_flight,
            key,
            id,
            cursor: 0,
            seen_start: false,
            attached: true,
            reads_error,
            pending_start: false,
        }
    }

    /// Installs the call this (leading) subscription started, and what to do on success.
    pub(crate) fn start(&mut self, producer: Producer<I>, completion: Completion<I>) {
        self.pending_start = false;
        {
            let mut state = lock(&self.flight.state);
            state.producer = Some(producer);
            state.completion = Some(completion);
        }
        // Callers that joined before the call was installed are parked: let them drive it.
        self.flight.notifier.wake_all();
    }

    /// Leaves the flight once it has given this subscriber its end.
    fn detach(
        attached: &mut bool,
        reads_error: bool,
        notifier: &Notifier,
        id: usize,
        state: &mut State<I>,
    ) {
        *attached = false;
        state.subscribers = state.subscribers.saturating_sub(1);
        if reads_error {
            state.error_readers = state.error_readers.saturating_sub(1);
        }
        notifier.release(id);
    }

    /// The next thing this subscriber has not read yet, driving the call if it must.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next<I>>
    where
        I: Clone,
    {
        if !self.attached {
            return Poll::Ready(Next::Done);
        }
        // Declared before the guard so that a finished call is dropped after the lock is
        // released: its drop runs the inner service's code.
        let mut finished_producer: Option<Producer<I>> = None;
        let mut wake_others = false;
        let mut finished = false;
        let mut state = lock(&self.flight.state);
        let next = loop {
            if !self.seen_start && state.started {
                self.seen_start = true;
                break Poll::Ready(Next::Started);
            }
            if let Some(item) = state.items.get(self.cursor) {
                let item = item.clone();
                self.cursor += 1;
                break Poll::Ready(Next::Item(item));
            }
            // A subscriber past a stream's head cannot make its own call (a stream cannot be
            // restarted halfway): it reads the failure whatever the error mode, and so does
            // every other subscriber of a started stream.
            let reads_error = self.reads_error || self.seen_start;
            let alone = if state.started {
                state.subscribers <= 1
            } else {
                state.error_readers <= 1
            };
            match &mut state.end {
                Some(End::Done) => {
                    Self::detach(
                        &mut self.attached,
                        self.reads_error,
                        &self.flight.notifier,
                        self.id,
                        &mut state,
                    );
                    break Poll::Ready(Next::Done);
                }
                Some(End::Failed { original, shared }) => {
                    // The original goes to its only reader; when several read it, each
                    // gets the same shared error, whose source is the original.
                    let error: BoxError = match (original.take(), shared.as_ref()) {
                        // It makes its own call: any marker will do, the original stays.
                        (original_error, _) if !reads_error => {
                            *original = original_error;
                            Box::new(SharedError::new("the shared call failed".into()))
                        }
                        (Some(error), None) if alone => error,
                        (Some(error), _) => {
                            let s = SharedError::new(error);
                            *shared = Some(s.clone());
                            Box::new(s)
                        }
                        (None, Some(s)) => Box::new(s.clone()),
                        (None, None) => Box::new(SharedError::new("the shared call failed".into())),
                    };
                    Self::detach(
                        &mut self.attached,
                        self.reads_error,
                        &self.flight.notifier,
                        self.id,
                        &mut state,
                    );
                    break Poll::Ready(Next::Failed(error));
                }
                None => {}
            }
            self.flight.notifier.register(self.id, cx.waker());
            let Some(producer) = state.producer.as_mut() else {
                // The leader has not installed the call yet; it wakes us when it does.
                break Poll::Pending;
            };
            let mut driver = Context::from_waker(&self.flight.waker);
            let polled = catch_unwind(AssertUnwindSafe(|| {
                producer.as_mut().poll_next(&mut driver)
            }));
            match polled {
                Ok(Poll::Pending) => break Poll::Pending,
                Ok(Poll::Ready(Some(Ok(Step::Started)))) => {
                    state.started = true;
                    wake_others = true;
                }
                Ok(Poll::Ready(Some(Ok(Step::Item(item))))) => {
                    state.started = true;
                    state.items.push(item);
                    wake_others = true;
                }
                Ok(Poll::Ready(None)) => {
                    finished_producer = state.producer.take();
                    state.end = Some(End::Done);
                    if let Some(complete) = state.completion.take() {
                        // Storing the answer runs user code (classifier, weigher, codec); if
                        // it panics, the answer is simply not stored: the callers still get it.
                        let items = &state.items;
                        let _ = catch_unwind(AssertUnwindSafe(|| complete(items)));
                    }
                    wake_others = true;
                    finished = true;
                }
                Ok(Poll::Ready(Some(Err(error)))) => {
                    finished_producer = state.producer.take();
                    state.completion = None;
                    state.end = Some(End::Failed {
                        original: Some(error),
                        shared: None,
                    });
                    wake_others = true;
                    finished = true;
                }
                Err(payload) => {
                    finished_producer = state.producer.take();
                    state.completion = None;
                    state.end = Some(End::Failed {
                        original: Some(Box::new(InnerPanicked::from_payload(&*payload))),
                        shared: None,
                    });
                    wake_others = true;
                    finished = true;
                }
            }
        };
        drop(state);
        drop(finished_producer);
        if wake_others {
            self.flight.notifier.wake_others(self.id);
        }
        if finished {
            self.in_flight.remove(&self.key, &self.flight);
        }
        next
    }
}

impl<I> Drop for Subscription<I> {
    fn drop(&mut self) {
        if !self.attached {
            return;
        }
        let mut cancelled: Option<Producer<I>> = None;
        let mut last = false;
        {
            let mut state = lock(&self.flight.state);
            state.subscribers = state.subscribers.saturating_sub(1);
            if self.reads_error {
                // So that a reader left alone gets the original error, not a shared wrapper.
                state.error_readers = state.error_readers.saturating_sub(1);
            }
            if state.subscribers == 0 && state.end.is_none() {
                state.closed = true;
                cancelled = state.producer.take();
                state.completion = None;
                last = true;
            } else if self.pending_start && state.end.is_none() {
                state.end = Some(End::Failed {
                    original: None,
                    shared: Some(SharedError::new(Box::new(InnerPanicked::from_payload(
                        &"the inner service's `call` panicked",
                    )))),
                });
                last = true;
            }
        }
        self.flight.notifier.release(self.id);
        if self.pending_start {
            self.flight.notifier.wake_all();
        }
        // Dropping the call cancels it; done outside the lock, as it runs the inner service's
        // code.
        drop(cancelled);
        if last {
            self.in_flight.remove(&self.key, &self.flight);
        }
    }
}
