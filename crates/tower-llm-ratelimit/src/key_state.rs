//! One key's limits: its budgets, concurrency, spacing, pause, the server's word and its FIFO
//! queue, behind one lock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use crate::adaptive::{AdaptiveLimit, LimitChange, OverloadNews, Verdict};
use crate::config::Config;
use crate::error::Rejection;
use crate::headers::{ServerLimit, ServerLimits};
use crate::limiter::Limiter;
use crate::quota::{Budget, Charge};

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
pub(crate) struct Waiter {
    pub(crate) id: u64,
    pub(crate) waker: Option<Waker>,
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
    pub(crate) requests: Option<Budget>,
    pub(crate) tokens: Option<Budget>,
    pub(crate) in_flight: usize,
    /// Calls that may be in flight: the fixed concurrency, the adaptive limit's current
    /// value, or `usize::MAX` (kept here so the check on the hot path is one comparison).
    pub(crate) concurrency_limit: usize,
    /// The adaptive limit, when there is one.
    pub(crate) adaptive: Option<AdaptiveLimit>,
    pub(crate) last_start: Option<u64>,
    pub(crate) paused_until: u64,
    server_requests: Option<ServerHint>,
    server_tokens: Option<ServerHint>,
    pub(crate) queue: VecDeque<Waiter>,
    pub(crate) queued_tokens: u64,
    pub(crate) next_id: u64,
    /// Calls admitted and tokens reserved under this key, kept here (not in the shared
    /// atomics) where the lock already makes them cheap; read for the single key only.
    pub(crate) admitted: u64,
    pub(crate) tokens_reserved: u64,
}

/// What an admitted call was charged, for reconciling later.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Admission {
    pub(crate) tokens: Option<Charge>,
    /// When the call was admitted.
    pub(crate) started: u64,
}

impl Limits {
    #[inline]
    pub(crate) fn blocked(&self, limiter: &Limiter, now: u64, cost: u64) -> Option<Blocked> {
        let config = &limiter.config;
        let mut at = now.max(self.paused_until).max(limiter.paused_until());
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
        } else if self.in_flight >= self.concurrency_limit {
            Some(Blocked::Concurrency)
        } else {
            None
        }
    }

    /// When a call of `cost` arriving now behind everyone queued could start, if nothing
    /// else changes. Running calls are not predictable and are left out.
    pub(crate) fn projected(&self, limiter: &Limiter, now: u64, cost: u64) -> u64 {
        let config = &limiter.config;
        let ahead = self.queue.len() as u64;
        let tokens = self.queued_tokens.saturating_add(cost);
        let mut at = now.max(self.paused_until).max(limiter.paused_until());
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
    pub(crate) fn admit(&mut self, now: u64, cost: u64, counts_in_flight: bool) -> Admission {
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
            started: now,
        }
    }

    pub(crate) fn enqueue(&mut self, cost: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.queued_tokens = self.queued_tokens.saturating_add(cost);
        self.queue.push_back(Waiter { id, waker: None });
        id
    }

    pub(crate) fn wake_head(&mut self) {
        if let Some(waker) = self.queue.front_mut().and_then(|w| w.waker.take()) {
            waker.wake();
        }
    }

    pub(crate) fn pause(&mut self, now: u64, pause: Duration) {
        let pause = pause.min(MAX_SERVER_WAIT);
        self.paused_until = self
            .paused_until
            .max(now.saturating_add(duration_ns(pause)));
    }

    /// Takes in the server's word; with an adaptive limit, the requests left cap it (the
    /// change, if the limit moved).
    pub(crate) fn learn(
        &mut self,
        config: &Config,
        now: u64,
        limits: ServerLimits,
    ) -> Option<LimitChange> {
        let hint = |l: ServerLimit| ServerHint {
            remaining: l.remaining,
            reset_at: now.saturating_add(duration_ns(l.reset_in.min(MAX_SERVER_WAIT))),
            used: 0,
        };
        if let Some(l) = limits.tokens {
            self.server_tokens = Some(hint(l));
        }
        let l = limits.requests?;
        let hint = hint(l);
        self.server_requests = Some(hint);
        let (Some(settings), Some(adaptive)) = (&config.adaptive, &mut self.adaptive) else {
            return None;
        };
        let change = adaptive.cap(settings, l.remaining, hint.reset_at, now);
        self.concurrency_limit = adaptive.effective(settings, now);
        change
    }

    /// Frees a running call's slot; with an adaptive limit, records what its end says (the
    /// change, if the limit moved). `now` is read only when the limit needs the time.
    #[inline]
    pub(crate) fn release(
        &mut self,
        config: &Config,
        verdict: Verdict,
        started: u64,
        now: impl FnOnce() -> u64,
    ) -> Option<LimitChange> {
        let in_flight = self.in_flight;
        self.in_flight = in_flight.saturating_sub(1);
        let (Some(settings), Some(adaptive)) = (&config.adaptive, &mut self.adaptive) else {
            return None;
        };
        // The common success under no server cap needs no clock.
        let now = if adaptive.needs_clock(verdict) {
            now()
        } else {
            0
        };
        let change = adaptive.record(settings, verdict, in_flight, started, now);
        self.concurrency_limit = adaptive.effective(settings, now);
        change
    }

    /// Whether this instance should tell the others of an overload it backed off for since
    /// the last look (never when it does not share overloads).
    #[inline]
    pub(crate) fn overload_to_share(&mut self, limiter: &Limiter) -> bool {
        #[cfg(feature = "redis")]
        if limiter.sharing != crate::limiter::OverloadSharing::Off {
            return self.adaptive.as_mut().is_some_and(|a| a.take_backed_off());
        }
        let _ = limiter;
        false
    }

    pub(crate) fn at_rest(&self, config: &Config, now: u64) -> bool {
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

pub(crate) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 4)
}

/// The outcome of trying to start a call from `call`.
#[derive(Debug)]
pub(crate) enum Start {
    Now(Admission),
    /// Queued with this id; `false` when it is only first in line to ask the shared store
    /// (not counted as waiting unless the store says to wait).
    Queued(u64, bool),
    Rejected(Rejection, Duration),
}

/// One key's limits behind a lock.
#[derive(Debug)]
pub(crate) struct KeyState {
    limits: Mutex<Limits>,
    pub(crate) limiter: Arc<Limiter>,
    /// The key's name in the shared store (feature `redis`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) remote_key: Option<String>,
    pub(crate) counts_locally: bool,
    /// When this key may next read the overloads shared in Redis without a quota round trip
    /// (`u64::MAX`: a read is under way).
    #[cfg(feature = "redis")]
    pub(crate) next_overload_read: std::sync::atomic::AtomicU64,
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
        // With the quotas in a shared store, only local limits stay here.
        let local = !limiter.remote();
        KeyState {
            limiter: limiter.clone(),
            limits: Mutex::new(Limits {
                requests: config.requests.filter(|_| local).map(Budget::new),
                tokens: config.tokens.filter(|_| local).map(Budget::new),
                in_flight: 0,
                concurrency_limit: config
                    .concurrency
                    .or(config.adaptive.as_ref().map(|a| a.initial))
                    .unwrap_or(usize::MAX),
                adaptive: config.adaptive.as_ref().map(AdaptiveLimit::new),
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
            #[cfg(feature = "redis")]
            next_overload_read: std::sync::atomic::AtomicU64::new(0),
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
    /// or says why not. `deadline_left` is the time left before the call's own deadline, if
    /// it has one: a wait past it is refused at once.
    #[inline]
    pub(crate) fn start(
        &self,
        limiter: &Limiter,
        now: u64,
        cost: u64,
        deadline_left: Option<Duration>,
    ) -> Start {
        let config = &limiter.config;
        let mut limits = self.lock();
        if limits.queue.is_empty() {
            match limits.blocked(limiter, now, cost) {
                None if !limiter.remote() => {
                    let admission = limits.admit(now, cost, config.counts_in_flight());
                    return Start::Now(admission);
                }
                // Free locally: first in line, it goes to ask the shared store at once.
                None => return Start::Queued(limits.enqueue(cost), false),
                Some(_) if config.max_queue == 0 || config.max_wait.is_zero() => {
                    let at = limits.projected(limiter, now, cost);
                    return Start::Rejected(Rejection::QueueFull, Duration::from_nanos(at - now));
                }
                Some(_) => {}
            }
        }
        let at = limits.projected(limiter, now, cost);
        let wait = Duration::from_nanos(at.saturating_sub(now));
        if limits.queue.len() >= config.max_queue {
            return Start::Rejected(Rejection::QueueFull, wait);
        }
        if wait > config.max_wait {
            return Start::Rejected(Rejection::MaxWait, wait);
        }
        if deadline_left.is_some_and(|left| wait > left) {
            return Start::Rejected(Rejection::Deadline, wait);
        }
        Start::Queued(limits.enqueue(cost), true)
    }

    /// Calls in flight under this key and, with an adaptive limit, its current value.
    pub(crate) fn concurrency(&self) -> (usize, Option<usize>) {
        let limits = self.lock();
        (
            limits.in_flight,
            limits
                .adaptive
                .is_some()
                .then_some(limits.concurrency_limit),
        )
    }

    /// Whether this key came from a key function (every key but the single one of a
    /// [`NoKey`](crate::NoKey) limiter, which alone counts locally). Events report this,
    /// never the key itself.
    pub(crate) fn keyed(&self) -> bool {
        !self.counts_locally
    }

    pub(crate) fn at_rest(&self, config: &Config, now: u64) -> bool {
        self.lock().at_rest(config, now)
    }

    /// Takes in the latest overload recorded in the shared store for this key (`None`:
    /// none recent): one decrease of the adaptive limit if it is another instance's and new
    /// to this one (see [`AdaptiveLimit::shared_overload`]).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn learn_overload(&self, news: Option<OverloadNews>) {
        let Some(news) = news else {
            return;
        };
        let limiter = &self.limiter;
        let Some(settings) = &limiter.config.adaptive else {
            return;
        };
        let now = limiter.now();
        let change = {
            let mut guard = self.lock();
            let limits = &mut *guard;
            let Some(adaptive) = &mut limits.adaptive else {
                return;
            };
            let change = adaptive.shared_overload(settings, news, limiter.instance, now);
            limits.concurrency_limit = adaptive.effective(settings, now);
            change
        };
        if let Some(change) = change {
            limiter.observe.limit_changed(change, self.keyed());
        }
    }

    /// Ends this key's pause and lets its first waiter look again.
    pub(crate) fn resume(&self) {
        let mut limits = self.lock();
        limits.paused_until = 0;
        limits.wake_head();
    }
}
