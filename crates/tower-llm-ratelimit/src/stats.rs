//! The counters behind [`RateLimitStats`], fed by the [funnel](crate::observe).

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Counters shared by every service a layer value makes.
#[derive(Default)]
pub(crate) struct Stats {
    admitted: AtomicU64,
    waited: AtomicU64,
    waiting: AtomicUsize,
    wait_nanos: AtomicU64,
    rejected: AtomicU64,
    tokens_reserved: AtomicU64,
    tokens_refunded: AtomicU64,
    tokens_charged: AtomicU64,
    pauses: AtomicU64,
    limit_decreases: AtomicU64,
    limit_increases: AtomicU64,
    shared_decreases: AtomicU64,
    overloads_published: AtomicU64,
    shared_errors: AtomicU64,
}

/// A snapshot of a limiter's counters and state, from
/// [`RateLimitHandle::stats`](crate::RateLimitHandle::stats).
///
/// Integer types follow one rule across the crate: counts of calls and amounts of tokens,
/// which only grow, are `u64`; numbers bounded by memory (calls waiting or in flight, keys)
/// are `usize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitStats {
    /// Calls sent to the inner service.
    pub admitted: u64,
    /// Calls that had to wait before being sent (or refused after waiting).
    pub waited: u64,
    /// Calls waiting right now.
    pub waiting: usize,
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
    /// Calls in flight right now, all keys (counted only with a fixed or adaptive
    /// concurrency limit; 0 otherwise).
    pub in_flight: usize,
    /// The adaptive concurrency limit now: the single key's when there is no key function,
    /// the lowest of the tracked keys' otherwise (the initial limit while no key is
    /// tracked; `None`: no adaptive limit). One key's: [`RateLimitHandle::concurrency_limit`](crate::RateLimitHandle::concurrency_limit).
    pub concurrency_limit: Option<usize>,
    /// Times an adaptive limit was lowered by whole calls (an overload, the provider's
    /// headers).
    pub limit_decreases: u64,
    /// Times an adaptive limit was raised by a whole call (successes).
    pub limit_increases: u64,
    /// Of [`limit_decreases`](Self::limit_decreases), those caused by another instance's
    /// overload shared through Redis
    /// ([`AdaptiveConcurrency::shared`](crate::AdaptiveConcurrency::shared)).
    pub shared_decreases: u64,
    /// This instance's overloads recorded in Redis for the other instances (writes that
    /// succeeded; one per decrease of its own when overloads are shared).
    pub overloads_published: u64,
    /// Failed writes or reads of the shared overloads (ignored otherwise: the local limit
    /// goes on alone).
    pub shared_errors: u64,
    /// Keys tracked right now (keys other than the single default one of
    /// [`NoKey`](crate::NoKey)).
    pub tracked_keys: usize,
    /// How long the pause set with [`RateLimitHandle::pause`](crate::RateLimitHandle::pause)
    /// still lasts (`None`: not paused). Pauses of single keys after a 429 are not included.
    pub paused_for: Option<Duration>,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}

impl Stats {
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
            in_flight: 0,
            concurrency_limit: None,
            limit_decreases: self.limit_decreases.load(Ordering::Relaxed),
            limit_increases: self.limit_increases.load(Ordering::Relaxed),
            shared_decreases: self.shared_decreases.load(Ordering::Relaxed),
            overloads_published: self.overloads_published.load(Ordering::Relaxed),
            shared_errors: self.shared_errors.load(Ordering::Relaxed),
            tracked_keys: 0,
            paused_for: None,
        }
    }

    /// Counts an admission; `counted`: the key's own tally already has it.
    #[inline]
    pub(crate) fn admitted(&self, tokens: u64, counted: bool) {
        if !counted {
            self.admitted.fetch_add(1, Ordering::Relaxed);
            if tokens > 0 {
                self.tokens_reserved.fetch_add(tokens, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a call that starts waiting; returns how many wait now.
    pub(crate) fn wait_started(&self) -> usize {
        self.waited.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a call that stops waiting; returns how many wait now.
    pub(crate) fn wait_ended(&self, waited: Duration) -> usize {
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.wait_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.waiting
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1)
    }

    pub(crate) fn refunded(&self, tokens: u64) {
        self.tokens_refunded.fetch_add(tokens, Ordering::Relaxed);
    }

    pub(crate) fn charged(&self, tokens: u64) {
        self.tokens_charged.fetch_add(tokens, Ordering::Relaxed);
    }

    pub(crate) fn paused(&self) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
    }
}

impl Stats {
    /// Counts an adaptive limit's move (`shared`: caused by another instance's overload).
    pub(crate) fn limit_moved(&self, up: bool, shared: bool) {
        if up {
            self.limit_increases.fetch_add(1, Ordering::Relaxed);
        } else {
            self.limit_decreases.fetch_add(1, Ordering::Relaxed);
            if shared {
                self.shared_decreases.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn overload_published(&self) {
        self.overloads_published.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn shared_failed(&self) {
        self.shared_errors.fetch_add(1, Ordering::Relaxed);
    }
}
