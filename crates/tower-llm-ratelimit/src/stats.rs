//! Counters and metrics: one funnel that feeds both the stats snapshot and `metrics`.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

pub(crate) const METRIC_ADMITTED: &str = "tower_llm_ratelimit_admitted_total";
pub(crate) const METRIC_WAITING: &str = "tower_llm_ratelimit_waiting";
pub(crate) const METRIC_WAIT_SECONDS: &str = "tower_llm_ratelimit_wait_seconds";
pub(crate) const METRIC_REJECTED: &str = "tower_llm_ratelimit_rejected_total";
pub(crate) const METRIC_TOKENS_RESERVED: &str = "tower_llm_ratelimit_tokens_reserved_total";
pub(crate) const METRIC_TOKENS_REFUNDED: &str = "tower_llm_ratelimit_tokens_refunded_total";
pub(crate) const METRIC_TOKENS_CHARGED: &str = "tower_llm_ratelimit_tokens_charged_total";
pub(crate) const METRIC_PAUSES: &str = "tower_llm_ratelimit_pauses_total";

/// Counters shared by every service a layer value makes.
#[derive(Default)]
pub(crate) struct Stats {
    /// Handles of the hot-path metrics, registered once (with the recorder installed when
    /// the layer is first applied) rather than looked up on every call.
    admitted_metric: OnceLock<metrics::Counter>,
    reserved_metric: OnceLock<metrics::Counter>,
    admitted: AtomicU64,
    waited: AtomicU64,
    waiting: AtomicUsize,
    wait_nanos: AtomicU64,
    rejected: AtomicU64,
    tokens_reserved: AtomicU64,
    tokens_refunded: AtomicU64,
    tokens_charged: AtomicU64,
    pauses: AtomicU64,
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
    /// Registers the hot-path metric handles with the recorder installed now, once.
    pub(crate) fn register(&self) {
        self.admitted_metric
            .get_or_init(|| metrics::counter!(METRIC_ADMITTED));
        self.reserved_metric
            .get_or_init(|| metrics::counter!(METRIC_TOKENS_RESERVED));
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
            tracked_keys: 0,
            paused_for: None,
        }
    }

    /// Records an admission. `counted` says the key's own tally (kept under its lock, see
    /// [`Limits::admit`]) already has it, which spares the single key an atomic add per call.
    #[inline]
    pub(crate) fn admitted(&self, tokens: u64, counted: bool) {
        if !counted {
            self.admitted.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = self.admitted_metric.get() {
            m.increment(1);
        }
        if tokens > 0 {
            if !counted {
                self.tokens_reserved.fetch_add(tokens, Ordering::Relaxed);
            }
            if let Some(m) = self.reserved_metric.get() {
                m.increment(tokens);
            }
        }
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(METRIC_REJECTED, "reason" => reason).increment(1);
    }

    pub(crate) fn wait_started(&self) {
        self.waited.fetch_add(1, Ordering::Relaxed);
        let now = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(METRIC_WAITING).set(now as f64);
    }

    pub(crate) fn wait_ended(&self, waited: Duration) {
        let now = self
            .waiting
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics::gauge!(METRIC_WAITING).set(now as f64);
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.wait_nanos.fetch_add(nanos, Ordering::Relaxed);
        metrics::histogram!(METRIC_WAIT_SECONDS).record(waited.as_secs_f64());
    }

    pub(crate) fn refunded(&self, tokens: u64) {
        self.tokens_refunded.fetch_add(tokens, Ordering::Relaxed);
        metrics::counter!(METRIC_TOKENS_REFUNDED).increment(tokens);
    }

    pub(crate) fn charged(&self, tokens: u64) {
        self.tokens_charged.fetch_add(tokens, Ordering::Relaxed);
        metrics::counter!(METRIC_TOKENS_CHARGED).increment(tokens);
    }

    pub(crate) fn paused(&self) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(METRIC_PAUSES).increment(1);
    }
}
