//! The shared state: one [`Limiter`] per layer application, one [`KeyState`] per key, and the
//! handles a call holds while it waits ([`Ticket`]) and while it runs ([`Permit`]).

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tower_llm_core::{FailureKind, Outcome};

use crate::headers::ServerLimits;
use crate::layer::{Config, Reconcile};
use crate::quota::{Budget, Charge};

pub(crate) const METRIC_ADMITTED: &str = "tower_llm_ratelimit_admitted_total";
pub(crate) const METRIC_WAITING: &str = "tower_llm_ratelimit_waiting";
pub(crate) const METRIC_WAIT_SECONDS: &str = "tower_llm_ratelimit_wait_seconds";
pub(crate) const METRIC_REJECTED: &str = "tower_llm_ratelimit_rejected_total";
pub(crate) const METRIC_TOKENS_RESERVED: &str = "tower_llm_ratelimit_tokens_reserved_total";
pub(crate) const METRIC_TOKENS_REFUNDED: &str = "tower_llm_ratelimit_tokens_refunded_total";
pub(crate) const METRIC_TOKENS_CHARGED: &str = "tower_llm_ratelimit_tokens_charged_total";
pub(crate) const METRIC_PAUSES: &str = "tower_llm_ratelimit_pauses_total";

/// Counters shared by every clone of a limiter.
#[derive(Default)]
pub(crate) struct Stats {
    /// Handles of the hot-path metrics, registered once (with the recorder installed when
    /// the layer is applied) rather than looked up on every call.
    admitted_metric: Option<metrics::Counter>,
    reserved_metric: Option<metrics::Counter>,
    admitted: AtomicU64,
    waited: AtomicU64,
    waiting: AtomicU64,
    wait_nanos: AtomicU64,
    rejected: AtomicU64,
    tokens_reserved: AtomicU64,
    tokens_refunded: AtomicU64,
    tokens_charged: AtomicU64,
    pauses: AtomicU64,
}

/// A snapshot of a limiter's counters, from [`RateLimit::stats`](crate::RateLimit::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitStats {
    /// Calls sent to the inner service.
    pub admitted: u64,
    /// Calls that had to wait before being sent (or refused after waiting).
    pub waited: u64,
    /// Calls waiting right now.
    pub waiting: u64,
    /// Total time calls spent waiting.
    pub wait_time: Duration,
    /// Calls refused without being sent.
    pub rejected: u64,
    /// Tokens reserved from estimates.
    pub tokens_reserved: u64,
    /// Tokens given back because calls used less than estimated.
    pub tokens_refunded: u64,
    /// Tokens charged because calls used more than estimated.
    pub tokens_charged: u64,
    /// Pauses started by a 429 or an open circuit.
    pub pauses: u64,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            admitted_metric: Some(metrics::counter!(METRIC_ADMITTED)),
            reserved_metric: Some(metrics::counter!(METRIC_TOKENS_RESERVED)),
            ..Stats::default()
        }
    }

    pub(crate) fn snapshot(&self) -> RateLimitStats {
        RateLimitStats {
            admitted: self.admitted.load(Ordering::Relaxed),
            waited: self.waited.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            wait_time: Duration::from_nanos(self.wait_nanos.load(Ordering::Relaxed)),
            rejected: self.rejected.load(Ordering::Relaxed),
            tokens_reserved: self.tokens_reserved.load(Ordering::Relaxed),
            tokens_refunded: self.tokens_refunded.load(Ordering::Relaxed),
            tokens_charged: self.tokens_charged.load(Ordering::Relaxed),
            pauses: self.pauses.load(Ordering::Relaxed),
        }
    }

    /// Records an admission. `counted` says the key's own tally (kept under its lock, see
    /// [`Limits::admit`]) already has it, which spares the single key an atomic add per call.
    #[inline]
    pub(crate) fn admitted(&self, tokens: u64, counted: bool) {
        if !counted {
            self.admitted.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = &self.admitted_metric {
            m.increment(1);
        }
        if tokens > 0 {
            if !counted {
                self.tokens_reserved.fetch_add(tokens, Ordering::Relaxed);
            }
            if let Some(m) = &self.reserved_metric {
                m.increment(tokens);
            }
        }
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(METRIC_REJECTED, "reason" => reason).increment(1);
    }

    fn wait_started(&self) {
        self.waited.fetch_add(1, Ordering::Relaxed);
        let now = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(METRIC_WAITING).set(now as f64);
    }

    fn wait_ended(&self, waited: Duration) {
        let now = self
            .waiting
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics::gauge!(METRIC_WAITING).set(now as f64);
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.wait_nanos.fetch_add(nanos, Ordering::Relaxed);
        metrics::histogram!(METRIC_WAIT_SECONDS).record(waited.as_secs_f64());
    }

    fn refunded(&self, tokens: u64) {
        self.tokens_refunded.fetch_add(tokens, Ordering::Relaxed);
        metrics::counter!(METRIC_TOKENS_REFUNDED).increment(tokens);
    }

    fn charged(&self, tokens: u64) {
        self.tokens_charged.fetch_add(tokens, Ordering::Relaxed);
        metrics::counter!(METRIC_TOKENS_CHARGED).increment(tokens);
    }

    fn paused(&self) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(METRIC_PAUSES).increment(1);
    }
}

/// What one application of the layer shares between its clones.
#[derive(Debug)]
pub(crate) struct Limiter {
    pub(crate) config: Config,
    origin: Instant,
    pub(crate) stats: Stats,
    /// Whether a response's usage is read: a tokens quota that is reconciled.
    pub(crate) wants_usage: bool,
}

impl Limiter {
    pub(crate) fn new(config: Config) -> Self {
        let wants_usage = config.tokens.is_some() && config.reconcile != Reconcile::Off;
        Limiter {
            config,
            origin: Instant::now(),
            stats: Stats::new(),
            wants_usage,
        }
    }

    /// Nanoseconds since the limiter was made, on tokio's clock (so a paused clock works).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        // Plain u64 arithmetic: `as_nanos` goes through u128 and a fallible conversion.
        const NANOS: u64 = 1_000_000_000;
        const MAX_SECS: u64 = u64::MAX / 4 / NANOS;
        let since = Instant::now().saturating_duration_since(self.origin);
        let secs = since.as_secs();
        if secs < MAX_SECS {
            secs * NANOS + u64::from(since.subsec_nanos())
        } else {
            u64::MAX / 4
        }
    }

    pub(crate) fn instant(&self, at: u64) -> Instant {
        self.origin + Duration::from_nanos(at)
    }

    pub(crate) fn remote(&self) -> bool {
        #[cfg(feature = "redis")]
        {
            self.config.redis.is_some()
        }
        #[cfg(not(feature = "redis"))]
        {
            false
        }
    }
}

/// The server's word on one dimension, counted from when it was received.
#[derive(Clone, Copy, Debug)]
struct ServerHint {
    remaining: u64,
    reset_at: u64,
    used: u64,
}

impl ServerHint {
    fn ready_at(&self, now: u64, cost: u64) -> u64 {
        if now < self.reset_at && self.used.saturating_add(cost) > self.remaining {
            self.reset_at
        } else {
            now
        }
    }
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    waker: Option<Waker>,
}

/// Why a call cannot start yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// Not before this time (pause, spacing, quota, server hint).
    Until(u64),
    /// Not before a running call finishes.
    Concurrency,
}

/// The limits of one key.
#[derive(Debug)]
pub(crate) struct Limits {
    requests: Option<Budget>,
    tokens: Option<Budget>,
    in_flight: usize,
    last_start: Option<u64>,
    paused_until: u64,
    server_requests: Option<ServerHint>,
    server_tokens: Option<ServerHint>,
    queue: VecDeque<Waiter>,
    queued_tokens: u64,
    next_id: u64,
    /// Calls admitted and tokens reserved under this key, kept here (not in the shared
    /// atomics) where the lock already makes them cheap; read for the single key only.
    admitted: u64,
    tokens_reserved: u64,
}

/// What an admitted call was charged, for reconciling later.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Admission {
    pub(crate) tokens: Option<Charge>,
}

impl Limits {
    #[inline]
    fn blocked(&self, config: &Config, now: u64, cost: u64) -> Option<Blocked> {
        let mut at = now.max(self.paused_until);
        if let (Some(spacing), Some(last)) = (config.spacing, self.last_start) {
            at = at.max(last.saturating_add(duration_ns(spacing)));
        }
        if let Some(b) = &self.requests {
            at = at.max(b.ready_at(now, 1));
        }
        if let Some(b) = &self.tokens {
            at = at.max(b.ready_at(now, cost));
        }
        if let Some(h) = &self.server_requests {
            at = at.max(h.ready_at(now, 1));
        }
        if let Some(h) = &self.server_tokens {
            at = at.max(h.ready_at(now, cost));
        }
        if at > now {
            Some(Blocked::Until(at))
        } else if config.concurrency.is_some_and(|max| self.in_flight >= max) {
            Some(Blocked::Concurrency)
        } else {
            None
        }
    }

    /// When a call of `cost` arriving now behind everyone queued could start, if nothing
    /// else changes. Running calls are not predictable and are left out.
    fn projected(&self, config: &Config, now: u64, cost: u64) -> u64 {
        let ahead = self.queue.len() as u64;
        let tokens = self.queued_tokens.saturating_add(cost);
        let mut at = now.max(self.paused_until);
        if let Some(spacing) = config.spacing {
            let spacing = duration_ns(spacing);
            let first = self.last_start.map_or(now, |l| l.saturating_add(spacing));
            at = at.max(first.saturating_add(spacing.saturating_mul(ahead)));
        }
        if let Some(b) = &self.requests {
            at = at.max(b.ready_after(now, ahead, 1));
        }
        if let Some(b) = &self.tokens {
            at = at.max(b.ready_after(now, self.queued_tokens, cost));
        }
        if let Some(h) = &self.server_requests {
            at = at.max(h.ready_at(now, ahead + 1));
        }
        if let Some(h) = &self.server_tokens {
            at = at.max(h.ready_at(now, tokens));
        }
        at
    }

    #[inline]
    fn admit(&mut self, now: u64, cost: u64, counts_in_flight: bool) -> Admission {
        if counts_in_flight {
            self.in_flight += 1;
        }
        self.admitted += 1;
        self.tokens_reserved = self.tokens_reserved.saturating_add(cost);
        self.last_start = Some(now);
        if let Some(b) = &mut self.requests {
            b.charge(now, 1);
        }
        if let Some(h) = &mut self.server_requests {
            h.used = h.used.saturating_add(1);
        }
        if let Some(h) = &mut self.server_tokens {
            h.used = h.used.saturating_add(cost);
        }
        Admission {
            tokens: self.tokens.as_mut().map(|b| b.charge(now, cost)),
        }
    }

    fn enqueue(&mut self, cost: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.queued_tokens = self.queued_tokens.saturating_add(cost);
        self.queue.push_back(Waiter { id, waker: None });
        id
    }

    fn wake_head(&mut self) {
        if let Some(waker) = self.queue.front_mut().and_then(|w| w.waker.take()) {
            waker.wake();
        }
    }

    fn pause(&mut self, now: u64, pause: Duration) {
        let pause = pause.min(MAX_SERVER_WAIT);
        self.paused_until = self
            .paused_until
            .max(now.saturating_add(duration_ns(pause)));
    }

    fn learn(&mut self, now: u64, limits: ServerLimits) {
        let hint = |l: crate::headers::ServerLimit| ServerHint {
            remaining: l.remaining,
            reset_at: now.saturating_add(duration_ns(l.reset_in.min(MAX_SERVER_WAIT))),
            used: 0,
        };
        if let Some(l) = limits.requests {
            self.server_requests = Some(hint(l));
        }
        if let Some(l) = limits.tokens {
            self.server_tokens = Some(hint(l));
        }
    }

    fn at_rest(&self, config: &Config, now: u64) -> bool {
        self.queue.is_empty()
            && self.in_flight == 0
            && self.paused_until <= now
            && self
                .last_start
                .is_none_or(|l| l.saturating_add(config.spacing.map_or(0, duration_ns)) <= now)
            && self.requests.as_ref().is_none_or(|b| b.at_rest(now))
            && self.tokens.as_ref().is_none_or(|b| b.at_rest(now))
            && self.server_requests.is_none_or(|h| h.reset_at <= now)
            && self.server_tokens.is_none_or(|h| h.reset_at <= now)
    }
}

/// The longest a server's word (a retry hint, a rate-limit reset) may hold a key back. No
/// provider limit resets later than daily; an absurd value must not freeze a key for years
/// (and keep it in the key table for good).
pub(crate) const MAX_SERVER_WAIT: Duration = Duration::from_secs(24 * 3600);

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 4)
}

/// The outcome of trying to start a call from `call`.
#[derive(Debug)]
pub(crate) enum Start {
    Now(Admission),
    /// Queued with this id; `false` when it is only first in line to ask the shared store
    /// (not counted as waiting unless the store says to wait).
    Queued(u64, bool),
    Rejected(crate::error::Rejection, Duration),
}

/// One key's limits behind a lock.
#[derive(Debug)]
pub(crate) struct KeyState {
    limits: Mutex<Limits>,
    pub(crate) limiter: Arc<Limiter>,
    /// The key's name in the shared store (feature `redis`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) remote_key: Option<String>,
    counts_locally: bool,
}

impl KeyState {
    /// `counts_locally`: admissions are counted in the key's tally rather than the shared
    /// atomics, and [`tally`](Self::tally) must be added to the stats (the single key).
    pub(crate) fn new(
        limiter: &Arc<Limiter>,
        remote_key: Option<String>,
        counts_locally: bool,
    ) -> Self {
        let config = &limiter.config;
        // With a shared store the quotas live there; only local limits stay here.
        let local = remote_key.is_none();
        KeyState {
            limiter: limiter.clone(),
            limits: Mutex::new(Limits {
                requests: config.requests.filter(|_| local).map(Budget::new),
                tokens: config.tokens.filter(|_| local).map(Budget::new),
                in_flight: 0,
                last_start: None,
                paused_until: 0,
                server_requests: None,
                server_tokens: None,
                queue: VecDeque::new(),
                queued_tokens: 0,
                next_id: 0,
                admitted: 0,
                tokens_reserved: 0,
            }),
            remote_key,
            counts_locally,
        }
    }

    /// What this key's own tally holds: (admitted, tokens reserved).
    pub(crate) fn tally(&self) -> (u64, u64) {
        let limits = self.lock();
        (limits.admitted, limits.tokens_reserved)
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, Limits> {
        // A panic while holding the lock leaves the numbers consistent enough to go on.
        self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a call at once if nothing is queued and nothing blocks it; otherwise queues it
    /// or says why not.
    #[inline]
    pub(crate) fn start(&self, limiter: &Limiter, now: u64, cost: u64) -> Start {
        let config = &limiter.config;
        let mut limits = self.lock();
        if limits.queue.is_empty() {
            match limits.blocked(config, now, cost) {
                None if !limiter.remote() => {
                    let admission = limits.admit(now, cost, config.concurrency.is_some());
                    return Start::Now(admission);
                }
                // Free locally: first in line, it goes to ask the shared store at once.
                None => return Start::Queued(limits.enqueue(cost), false),
                Some(_) if config.max_queue == 0 || config.max_wait.is_zero() => {
                    let at = limits.projected(config, now, cost);
                    return Start::Rejected(
                        crate::error::Rejection::QueueFull,
                        Duration::from_nanos(at - now),
                    );
                }
                Some(_) => {}
            }
        }
        let at = limits.projected(config, now, cost);
        let wait = Duration::from_nanos(at.saturating_sub(now));
        if limits.queue.len() >= config.max_queue {
            return Start::Rejected(crate::error::Rejection::QueueFull, wait);
        }
        if wait > config.max_wait {
            return Start::Rejected(crate::error::Rejection::MaxWait, wait);
        }
        Start::Queued(limits.enqueue(cost), true)
    }

    pub(crate) fn at_rest(&self, config: &Config, now: u64) -> bool {
        self.lock().at_rest(config, now)
    }
}

/// A queued call's place. Dropping it leaves the queue and lets the next call go.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) key: Arc<KeyState>,
    pub(crate) limiter: Arc<Limiter>,
    id: u64,
    cost: u64,
    since: Instant,
    /// Whether this call counts as waiting (in the stats and the `waiting` gauge).
    counted: bool,
    done: bool,
}

/// What a queued call learns when it polls.
#[derive(Debug)]
pub(crate) enum Turn {
    /// Admitted: go.
    Go(Admission),
    /// Wait until woken, or until this time if given.
    Wait(Option<u64>),
    /// First in line with only the shared store left to ask (feature `redis`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    AskRemote,
}

impl Ticket {
    pub(crate) fn new(
        key: Arc<KeyState>,
        limiter: Arc<Limiter>,
        id: u64,
        cost: u64,
        waiting: bool,
    ) -> Self {
        if waiting {
            limiter.stats.wait_started();
        }
        Ticket {
            key,
            limiter,
            id,
            cost,
            since: Instant::now(),
            counted: waiting,
            done: false,
        }
    }

    /// From now on this call counts as waiting (the shared store said "not yet").
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn start_waiting(&mut self) {
        if !self.counted && !self.done {
            self.counted = true;
            self.since = Instant::now();
            self.limiter.stats.wait_started();
        }
    }

    pub(crate) fn cost(&self) -> u64 {
        self.cost
    }

    /// Checks whether this call may start; registers `waker` if not.
    pub(crate) fn poll_turn(&mut self, now: u64, waker: &Waker) -> Turn {
        let limiter = self.limiter.clone();
        let config = &limiter.config;
        let key = self.key.clone();
        let mut limits = key.lock();
        let head = limits.queue.front().map(|w| w.id);
        if head != Some(self.id) {
            if let Some(w) = limits.queue.iter_mut().find(|w| w.id == self.id) {
                set_waker(&mut w.waker, waker);
            }
            return Turn::Wait(None);
        }
        match limits.blocked(config, now, self.cost) {
            None if limiter.remote() => {
                if let Some(w) = limits.queue.front_mut() {
                    set_waker(&mut w.waker, waker);
                }
                Turn::AskRemote
            }
            None => {
                let admission = self.leave(&mut limits, now, true);
                Turn::Go(admission)
            }
            Some(blocked) => {
                if let Some(w) = limits.queue.front_mut() {
                    set_waker(&mut w.waker, waker);
                }
                match blocked {
                    Blocked::Until(at) => Turn::Wait(Some(at)),
                    Blocked::Concurrency => Turn::Wait(None),
                }
            }
        }
    }

    /// The shared store admitted this call (it is first in line): start it locally.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn admit_remote(&mut self, now: u64) -> Admission {
        let key = self.key.clone();
        let mut limits = key.lock();
        self.leave(&mut limits, now, true)
    }

    fn leave(&mut self, limits: &mut Limits, now: u64, admit: bool) -> Admission {
        let was_head = limits.queue.front().is_some_and(|w| w.id == self.id);
        if let Some(pos) = limits.queue.iter().position(|w| w.id == self.id) {
            limits.queue.remove(pos);
            limits.queued_tokens = limits.queued_tokens.saturating_sub(self.cost);
        }
        let admission = if admit {
            let counts = self.limiter.config.concurrency.is_some();
            limits.admit(now, self.cost, counts)
        } else {
            Admission::default()
        };
        if was_head {
            limits.wake_head();
        }
        self.done = true;
        if self.counted {
            self.limiter.stats.wait_ended(self.since.elapsed());
        }
        admission
    }

    /// Gives up the place (the wait ran out).
    pub(crate) fn give_up(&mut self, now: u64) {
        if !self.done {
            let key = self.key.clone();
            let mut limits = key.lock();
            self.leave(&mut limits, now, false);
        }
    }

    /// When a call like this one could expect to start, for a retry hint.
    pub(crate) fn retry_hint(&self, now: u64) -> Duration {
        let limits = self.key.lock();
        let at = limits.projected(&self.limiter.config, now, self.cost);
        Duration::from_nanos(at.saturating_sub(now))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            let now = self.limiter.now();
            let key = self.key.clone();
            let mut limits = key.lock();
            self.leave(&mut limits, now, false);
        }
    }
}

fn set_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

/// A running call's claim: its concurrency slot and its token charge. Dropping it (the call
/// was cancelled) frees the slot; the tokens stay charged, since the upstream may have
/// counted the request already.
#[derive(Debug)]
pub(crate) struct Permit {
    key: Arc<KeyState>,
    cost: u64,
    admission: Admission,
    /// A token charge held in the shared store, for reconciling there (feature `redis`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) remote_charge: Option<Charge>,
    done: bool,
}

impl Permit {
    #[inline]
    pub(crate) fn new(key: Arc<KeyState>, cost: u64, admission: Admission) -> Self {
        key.limiter.stats.admitted(cost, key.counts_locally);
        Permit {
            key,
            cost,
            admission,
            remote_charge: None,
            done: false,
        }
    }

    #[inline]
    pub(crate) fn limiter(&self) -> &Limiter {
        &self.key.limiter
    }

    /// Records how the call ended: reconciles tokens, pauses on a 429, learns from headers,
    /// frees the concurrency slot.
    #[inline]
    pub(crate) fn complete(
        &mut self,
        outcome: Outcome,
        usage: Option<u64>,
        server: Option<&http::HeaderMap>,
    ) {
        self.done = true;
        let config = &self.key.limiter.config;
        let pause = match outcome {
            Outcome::Failure(f)
                if config.pause_on_rate_limit
                    && matches!(f.kind, FailureKind::RateLimited | FailureKind::CircuitOpen) =>
            {
                Some(f.retry_after.unwrap_or(config.default_pause))
            }
            _ => None,
        };
        let learned = match server {
            Some(headers) if config.adapt => {
                let limits = ServerLimits::from_headers(headers, SystemTime::now());
                (!limits.is_empty()).then_some(limits)
            }
            _ => None,
        };
        let delta = match (usage, config.reconcile) {
            (Some(actual), Reconcile::RefundAndCharge) => Some(actual as i128 - self.cost as i128),
            (Some(actual), Reconcile::ChargeOnly) if actual > self.cost => {
                Some(actual as i128 - self.cost as i128)
            }
            _ => None,
        }
        .filter(|d| *d != 0);
        if pause.is_none() && learned.is_none() && delta.is_none() {
            // Nothing to record but maybe a slot to free: the common success.
            if config.concurrency.is_some() {
                self.free_slot();
            }
            return;
        }
        self.settle(pause, learned, delta);
    }

    /// Gives the concurrency slot back and lets the first waiter look again.
    #[inline]
    fn free_slot(&self) {
        let mut limits = self.key.lock();
        limits.in_flight = limits.in_flight.saturating_sub(1);
        limits.wake_head();
    }

    /// The part of [`complete`](Self::complete) that records something (a pause, the
    /// server's word, a usage to reconcile), out of line so the common case stays small.
    #[inline(never)]
    fn settle(&self, pause: Option<Duration>, learned: Option<ServerLimits>, delta: Option<i128>) {
        let config = &self.key.limiter.config;
        let now = self.key.limiter.now();
        #[cfg(feature = "redis")]
        if let (Some(d), Some(charge), Some(backend), Some(key)) = (
            delta,
            self.remote_charge,
            &config.redis,
            &self.key.remote_key,
        ) {
            backend.reconcile(config, key, charge, d);
        }
        let mut limits = self.key.lock();
        if config.concurrency.is_some() {
            limits.in_flight = limits.in_flight.saturating_sub(1);
        }
        if let Some(pause) = pause {
            limits.pause(now, pause);
            self.key.limiter.stats.paused();
        }
        if let Some(learned) = learned {
            limits.learn(now, learned);
        }
        if let Some(delta) = delta {
            let amount = delta.unsigned_abs().min(u128::from(u64::MAX)) as u64;
            if let (Some(budget), Some(charge)) = (&mut limits.tokens, self.admission.tokens) {
                if delta < 0 {
                    budget.refund(now, charge, amount);
                } else {
                    budget.charge_more(now, charge, amount);
                }
            }
            if delta < 0 {
                self.key.limiter.stats.refunded(amount);
            } else {
                self.key.limiter.stats.charged(amount);
            }
        }
        limits.wake_head();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.key.limiter.config.concurrency.is_some() {
            self.free_slot();
        }
    }
}

type Bucket = Vec<(Box<dyn Any + Send + Sync>, Arc<KeyState>)>;

/// The bounded table of per-key states. Keys of any type are kept type-erased (compared by
/// downcasting), so the service type does not depend on the request type.
#[derive(Debug)]
pub(crate) struct KeyTable {
    map: Mutex<(HashMap<u64, Bucket>, usize)>,
    hasher: RandomState,
}

impl KeyTable {
    pub(crate) fn new() -> Self {
        KeyTable {
            map: Mutex::new((HashMap::new(), 0)),
            hasher: RandomState::new(),
        }
    }

    /// The state of `key`, made if new; `None` when the table is full of busy keys.
    pub(crate) fn get<K: Hash + Eq + Send + Sync + 'static>(
        &self,
        key: K,
        limiter: &Arc<Limiter>,
        now: u64,
    ) -> Option<Arc<KeyState>> {
        let hash = self.hasher.hash_one(&key);
        let mut guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (map, len) = &mut *guard;
        if let Some(bucket) = map.get(&hash)
            && let Some((_, state)) = bucket
                .iter()
                .find(|(k, _)| k.downcast_ref::<K>() == Some(&key))
        {
            return Some(state.clone());
        }
        if *len >= limiter.config.max_keys {
            // Forget keys that nobody holds and whose state is as good as fresh.
            map.retain(|_, bucket| {
                bucket.retain(|(_, state)| {
                    Arc::strong_count(state) > 1 || !state.at_rest(&limiter.config, now)
                });
                !bucket.is_empty()
            });
            *len = map.values().map(Vec::len).sum();
            if *len >= limiter.config.max_keys {
                return None;
            }
        }
        let remote_key = limiter.remote().then(|| remote_name(&key));
        let state = Arc::new(KeyState::new(limiter, remote_key, false));
        map.entry(hash)
            .or_default()
            .push((Box::new(key), state.clone()));
        *len += 1;
        Some(state)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// A name for `key` that every instance derives alike: 128 bits of two fixed-key hashes.
pub(crate) fn remote_name<K: Hash>(key: &K) -> String {
    // Instances share a budget only if they name its Redis keys alike, so the name must not
    // depend on the toolchain: std's `DefaultHasher` is unspecified across Rust releases.
    // HighwayHash under a fixed, public key is specified; the name needs no secrecy.
    let mut written = Written::default();
    key.hash(&mut written);
    remote_name_key()
        .fingerprint(written.0.as_slice())
        .to_string()
}

fn remote_name_key() -> tower_llm_core::FingerprintKey {
    tower_llm_core::FingerprintKey::from_secret(b"tower-llm-ratelimit/redis-key-name/v1")
}

/// Collects the bytes `Hash::hash` writes, to hash them with a specified algorithm.
#[derive(Default)]
struct Written(Vec<u8>);

impl std::hash::Hasher for Written {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn finish(&self) -> u64 {
        remote_name_key().fingerprint(self.0.as_slice()).as_u128() as u64
    }
}

/// The shared store's answer for the call first in line (feature `redis`).
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum RemoteVerdict {
    /// Admitted; the token charge is recorded in this slot.
    Admitted(Option<Charge>),
    /// Not yet: ask again after this long.
    Wait(Duration),
    /// The store could not be reached or answered nonsense.
    Failed,
}

/// A question in flight to the shared store. Boxed: it only exists with the `redis` feature,
/// where a network round trip dwarfs the allocation.
pub(crate) type RemoteCheck =
    std::pin::Pin<Box<dyn std::future::Future<Output = RemoteVerdict> + Send>>;

#[cfg(test)]
mod remote_name_tests {
    use super::remote_name;

    #[test]
    fn names_are_stable_across_builds() {
        // Pinned: a change here splits the budget of instances running different versions.
        let name = remote_name(&"tenant-a");
        assert_eq!(name.len(), 32);
        assert_eq!(name, remote_name(&"tenant-a".to_string()));
        assert_ne!(name, remote_name(&"tenant-b"));
        assert_eq!(name, PINNED);
    }

    const PINNED: &str = "7e8f6147f2dfca602775a7026e152ded";
}
