//! The crate's one funnel: the limiter calls one method here per event, and the funnel feeds
//! the [`RateLimitStats`] counters, `tracing` (feature `tracing`) and `metrics` (feature
//! `metrics`). Nothing else in the crate calls either.
//!
//! Keys never appear: a key function's output is the user's data (an API key, a tenant), so
//! events say only whether the limiter is keyed (`keyed`), never which key.

use std::borrow::Cow;
use std::time::Duration;

use tower_llm_core::FailureKind;

use crate::adaptive::{Cause, LimitChange};
use crate::error::Rejection;
use crate::headers::ServerLimits;
use crate::stats::{RateLimitStats, Stats};

#[cfg(feature = "metrics")]
const METRIC_ADMITTED: &str = "tower_llm_ratelimit_admitted_total";
#[cfg(feature = "metrics")]
const METRIC_WAITING: &str = "tower_llm_ratelimit_waiting";
#[cfg(feature = "metrics")]
const METRIC_WAIT_SECONDS: &str = "tower_llm_ratelimit_wait_seconds";
#[cfg(feature = "metrics")]
const METRIC_REJECTED: &str = "tower_llm_ratelimit_rejected_total";
#[cfg(feature = "metrics")]
const METRIC_TOKENS_RESERVED: &str = "tower_llm_ratelimit_tokens_reserved_total";
#[cfg(feature = "metrics")]
const METRIC_TOKENS_REFUNDED: &str = "tower_llm_ratelimit_tokens_refunded_total";
#[cfg(feature = "metrics")]
const METRIC_TOKENS_CHARGED: &str = "tower_llm_ratelimit_tokens_charged_total";
#[cfg(feature = "metrics")]
const METRIC_PAUSES: &str = "tower_llm_ratelimit_pauses_total";
#[cfg(feature = "metrics")]
const METRIC_CONCURRENCY_LIMIT: &str = "tower_llm_ratelimit_concurrency_limit";
#[cfg(feature = "metrics")]
const METRIC_LIMIT_DECREASES: &str = "tower_llm_ratelimit_limit_decreases_total";
#[cfg(feature = "metrics")]
const METRIC_LIMIT_INCREASES: &str = "tower_llm_ratelimit_limit_increases_total";
#[cfg(feature = "metrics")]
const METRIC_OVERLOADS_PUBLISHED: &str = "tower_llm_ratelimit_overloads_published_total";
#[cfg(feature = "metrics")]
const METRIC_SHARED_ERRORS: &str = "tower_llm_ratelimit_shared_errors_total";

/// What failed when overloads are shared through Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum SharedOp {
    /// Recording this instance's overload.
    Publish,
    /// Reading the other instances' latest overload (with the quotas' round trip or alone).
    Read,
}

impl SharedOp {
    #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
    fn as_str(self) -> &'static str {
        match self {
            SharedOp::Publish => "publish",
            SharedOp::Read => "read",
        }
    }
}

/// The default `name` of a limiter.
pub(crate) const DEFAULT_NAME: &str = "ratelimit";

/// One layer value's funnel: its name, its counters and its metric handles.
pub(crate) struct Observe {
    #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
    name: Cow<'static, str>,
    stats: Stats,
    /// Made once, with the recorder installed when the layer is first applied, so the hot
    /// path never builds a label.
    #[cfg(feature = "metrics")]
    metrics: std::sync::OnceLock<Metrics>,
    /// When the last "shared overloads unavailable" warning was logged (milliseconds since
    /// `born`): with the quotas in Redis every call reads it, and an outage must not log
    /// once per call.
    #[cfg(feature = "tracing")]
    shared_warned_at: std::sync::atomic::AtomicU64,
    #[cfg(feature = "tracing")]
    born: std::time::Instant,
}

impl std::fmt::Debug for Observe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observe")
            .field("name", &self.name)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Observe {
    pub(crate) fn new(name: Cow<'static, str>) -> Self {
        Observe {
            name,
            stats: Stats::default(),
            #[cfg(feature = "metrics")]
            metrics: std::sync::OnceLock::new(),
            #[cfg(feature = "tracing")]
            shared_warned_at: std::sync::atomic::AtomicU64::new(u64::MAX),
            #[cfg(feature = "tracing")]
            born: std::time::Instant::now(),
        }
    }

    /// Describes the metrics (once per process) and makes this layer's handles, with the
    /// recorder installed now; later calls do nothing.
    pub(crate) fn register(&self) {
        #[cfg(feature = "metrics")]
        self.metrics.get_or_init(|| {
            describe();
            Metrics::new(self.name.clone())
        });
    }

    pub(crate) fn snapshot(&self) -> RateLimitStats {
        self.stats.snapshot()
    }

    /// A call was sent to the inner service with `tokens` reserved; `counted`: the key's own
    /// tally already has it. The hot path: no event, two metric increments at most.
    #[inline]
    pub(crate) fn admitted(&self, tokens: u64, counted: bool) {
        self.stats.admitted(tokens, counted);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.admitted.increment(1);
            if tokens > 0 {
                m.tokens_reserved.increment(tokens);
            }
        }
    }

    /// A call could not start at once and waits in its key's queue.
    pub(crate) fn queued(&self, keyed: bool, tokens: u64) {
        let waiting = self.stats.wait_started();
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.waiting.set(waiting as f64);
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(name = &*self.name, keyed, tokens, waiting, "call queued");
        #[cfg(not(feature = "tracing"))]
        let _ = (keyed, tokens, waiting);
    }

    /// A waiting call left the queue after `waited`: admitted, or refused or dropped.
    pub(crate) fn wait_ended(&self, waited: Duration, admitted: bool, keyed: bool) {
        let waiting = self.stats.wait_ended(waited);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.waiting.set(waiting as f64);
            m.wait_seconds.record(waited.as_secs_f64());
        }
        #[cfg(feature = "tracing")]
        if admitted {
            tracing::debug!(
                name = &*self.name,
                keyed,
                wait_seconds = waited.as_secs_f64(),
                waiting,
                "call admitted after waiting"
            );
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (admitted, keyed, waiting);
    }

    /// A call was refused without being sent; `retry_after` is the hint it carries.
    pub(crate) fn rejected(&self, reason: Rejection, retry_after: Option<Duration>) {
        self.stats.rejected();
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.rejected(reason).increment(1);
        }
        #[cfg(feature = "tracing")]
        tracing::warn!(
            name = &*self.name,
            reason = reason.as_str(),
            retry_after_seconds = retry_after.map(|d| d.as_secs_f64()),
            "call rejected"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (reason, retry_after);
    }

    /// A key stops sending for `pause` after a failure of `cause` (a 429 or an open circuit).
    pub(crate) fn paused_by_upstream(&self, pause: Duration, cause: FailureKind, keyed: bool) {
        self.stats.paused();
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            if cause == FailureKind::CircuitOpen {
                m.pauses_circuit_open.increment(1);
            } else {
                m.pauses_rate_limited.increment(1);
            }
        }
        #[cfg(feature = "tracing")]
        tracing::warn!(
            name = &*self.name,
            keyed,
            cause = cause.as_str(),
            pause_seconds = pause.as_secs_f64(),
            "key paused by the upstream"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (pause, cause, keyed);
    }

    /// Reconciling gave back `tokens` the call did not use.
    pub(crate) fn refunded(&self, tokens: u64) {
        self.stats.refunded(tokens);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.tokens_refunded.increment(tokens);
        }
    }

    /// Reconciling charged `tokens` the call used beyond its estimate.
    pub(crate) fn charged(&self, tokens: u64) {
        self.stats.charged(tokens);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.tokens_charged.increment(tokens);
        }
    }

    /// The handle paused every key for `pause`.
    pub(crate) fn handle_paused(&self, pause: Duration) {
        #[cfg(feature = "tracing")]
        tracing::info!(
            name = &*self.name,
            pause_seconds = pause.as_secs_f64(),
            "paused by the handle"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = pause;
    }

    /// The handle ended every pause.
    pub(crate) fn handle_resumed(&self) {
        #[cfg(feature = "tracing")]
        tracing::info!(name = &*self.name, "resumed by the handle");
    }

    /// An adaptive limit moved by whole calls: up after successes (debug), down after an
    /// overload or the provider's headers (debug; warn when it reaches its minimum).
    pub(crate) fn limit_changed(&self, change: LimitChange, keyed: bool) {
        let up = change.to > change.from;
        self.stats.limit_moved(up, change.cause == Cause::Shared);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.concurrency_limit.set(change.to as f64);
            if up {
                m.limit_increases.increment(1);
            } else {
                m.limit_decreased(change.cause.as_str());
            }
        }
        #[cfg(feature = "tracing")]
        {
            let (from, to, cause) = (change.from, change.to, change.cause.as_str());
            if up {
                tracing::debug!(
                    name = &*self.name,
                    keyed,
                    from,
                    to,
                    "concurrency limit increased"
                );
            } else if change.at_min {
                tracing::warn!(
                    name = &*self.name,
                    keyed,
                    from,
                    to,
                    cause,
                    "concurrency limit at its minimum"
                );
            } else {
                tracing::debug!(
                    name = &*self.name,
                    keyed,
                    from,
                    to,
                    cause,
                    "concurrency limit decreased"
                );
            }
        }
        #[cfg(not(feature = "tracing"))]
        let _ = keyed;
    }

    /// This instance's overload was recorded in Redis for the other instances.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn overload_published(&self, keyed: bool) {
        self.stats.overload_published();
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.overloads_published.increment(1);
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(
            name = &*self.name,
            keyed,
            "overload shared with other instances"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = keyed;
    }

    /// Recording or reading shared overloads failed (Redis down, slow or answering
    /// nonsense); the local limit goes on alone. Counted every time; logged at most once a
    /// second per limiter, so a Redis outage cannot flood the log (with the quotas in Redis,
    /// every call reads).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn shared_failed(&self, op: SharedOp) {
        self.stats.shared_failed();
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            match op {
                SharedOp::Publish => m.shared_errors_publish.increment(1),
                SharedOp::Read => m.shared_errors_read.increment(1),
            }
        }
        #[cfg(feature = "tracing")]
        {
            use std::sync::atomic::Ordering;
            const EVERY_MS: u64 = 1_000;
            let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            let last = self.shared_warned_at.load(Ordering::Relaxed);
            let due = last == u64::MAX || now.saturating_sub(last) >= EVERY_MS;
            if due
                && self
                    .shared_warned_at
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    name = &*self.name,
                    op = op.as_str(),
                    "shared overloads unavailable, the local limit goes on alone"
                );
            }
        }
        #[cfg(not(feature = "tracing"))]
        let _ = op;
    }

    /// The provider's headers said what is left of its limits.
    pub(crate) fn learnt(&self, limits: &ServerLimits, keyed: bool) {
        #[cfg(feature = "tracing")]
        tracing::debug!(
            name = &*self.name,
            keyed,
            remaining_requests = limits.requests.map(|l| l.remaining),
            requests_reset_seconds = limits.requests.map(|l| l.reset_in.as_secs_f64()),
            remaining_tokens = limits.tokens.map(|l| l.remaining),
            tokens_reset_seconds = limits.tokens.map(|l| l.reset_in.as_secs_f64()),
            "server limits learnt"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (limits, keyed);
    }
}

/// One layer value's metric handles, each with its `name` label.
#[cfg(feature = "metrics")]
struct Metrics {
    admitted: metrics::Counter,
    tokens_reserved: metrics::Counter,
    tokens_refunded: metrics::Counter,
    tokens_charged: metrics::Counter,
    waiting: metrics::Gauge,
    wait_seconds: metrics::Histogram,
    rejected_queue_full: metrics::Counter,
    rejected_max_wait: metrics::Counter,
    rejected_deadline: metrics::Counter,
    rejected_too_large: metrics::Counter,
    rejected_keys_full: metrics::Counter,
    rejected_backend: metrics::Counter,
    pauses_rate_limited: metrics::Counter,
    pauses_circuit_open: metrics::Counter,
    concurrency_limit: metrics::Gauge,
    limit_increases: metrics::Counter,
    overloads_published: metrics::Counter,
    shared_errors_publish: metrics::Counter,
    shared_errors_read: metrics::Counter,
    /// For the series made when they happen.
    name: Cow<'static, str>,
}

#[cfg(feature = "metrics")]
impl Metrics {
    fn new(name: Cow<'static, str>) -> Self {
        // The `name` label, then the closed-set ones.
        let labels = |more: &[(&'static str, &'static str)]| -> Vec<metrics::Label> {
            std::iter::once(metrics::Label::new("name", name.clone()))
                .chain(more.iter().map(|&(k, v)| metrics::Label::new(k, v)))
                .collect()
        };
        let rejected = |reason: Rejection| {
            metrics::counter!(METRIC_REJECTED, labels(&[("reason", reason.as_str())]))
        };
        let pauses = |cause: FailureKind| {
            metrics::counter!(METRIC_PAUSES, labels(&[("cause", cause.as_str())]))
        };
        let shared_errors =
            |op: SharedOp| metrics::counter!(METRIC_SHARED_ERRORS, labels(&[("op", op.as_str())]));
        Metrics {
            admitted: metrics::counter!(METRIC_ADMITTED, labels(&[])),
            tokens_reserved: metrics::counter!(METRIC_TOKENS_RESERVED, labels(&[])),
            tokens_refunded: metrics::counter!(METRIC_TOKENS_REFUNDED, labels(&[])),
            tokens_charged: metrics::counter!(METRIC_TOKENS_CHARGED, labels(&[])),
            waiting: metrics::gauge!(METRIC_WAITING, labels(&[])),
            wait_seconds: metrics::histogram!(METRIC_WAIT_SECONDS, labels(&[])),
            rejected_queue_full: rejected(Rejection::QueueFull),
            rejected_max_wait: rejected(Rejection::MaxWait),
            rejected_deadline: rejected(Rejection::Deadline),
            rejected_too_large: rejected(Rejection::TooLarge),
            rejected_keys_full: rejected(Rejection::KeysFull),
            rejected_backend: rejected(Rejection::Backend),
            pauses_rate_limited: pauses(FailureKind::RateLimited),
            pauses_circuit_open: pauses(FailureKind::CircuitOpen),
            concurrency_limit: metrics::gauge!(METRIC_CONCURRENCY_LIMIT, labels(&[])),
            limit_increases: metrics::counter!(METRIC_LIMIT_INCREASES, labels(&[])),
            overloads_published: metrics::counter!(METRIC_OVERLOADS_PUBLISHED, labels(&[])),
            shared_errors_publish: shared_errors(SharedOp::Publish),
            shared_errors_read: shared_errors(SharedOp::Read),
            name: name.clone(),
        }
    }

    /// Decreases are rare (at most one per round trip and key): their `cause` label, from a
    /// closed set, is made when one happens.
    #[cold]
    fn limit_decreased(&self, cause: &'static str) {
        metrics::counter!(
            METRIC_LIMIT_DECREASES,
            "name" => self.name.clone(),
            "cause" => cause
        )
        .increment(1);
    }

    fn rejected(&self, reason: Rejection) -> &metrics::Counter {
        match reason {
            Rejection::QueueFull => &self.rejected_queue_full,
            Rejection::MaxWait => &self.rejected_max_wait,
            Rejection::Deadline => &self.rejected_deadline,
            Rejection::TooLarge => &self.rejected_too_large,
            Rejection::KeysFull => &self.rejected_keys_full,
            Rejection::Backend => &self.rejected_backend,
        }
    }
}

/// Describes every metric of the crate to the recorder, once per process.
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::Unit;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        metrics::describe_counter!(
            METRIC_ADMITTED,
            Unit::Count,
            "Calls the rate limiter sent to the inner service."
        );
        metrics::describe_gauge!(
            METRIC_WAITING,
            Unit::Count,
            "Calls waiting in the rate limiter's queues now."
        );
        metrics::describe_histogram!(
            METRIC_WAIT_SECONDS,
            Unit::Seconds,
            "How long each waiting call waited for its turn (admitted, refused or dropped)."
        );
        metrics::describe_counter!(
            METRIC_REJECTED,
            Unit::Count,
            "Calls the rate limiter refused without sending them, by reason."
        );
        metrics::describe_counter!(
            METRIC_TOKENS_RESERVED,
            Unit::Count,
            "Tokens reserved from request estimates."
        );
        metrics::describe_counter!(
            METRIC_TOKENS_REFUNDED,
            Unit::Count,
            "Tokens given back when a call used fewer than it reserved."
        );
        metrics::describe_counter!(
            METRIC_TOKENS_CHARGED,
            Unit::Count,
            "Tokens charged when a call used more than it reserved."
        );
        metrics::describe_gauge!(
            METRIC_CONCURRENCY_LIMIT,
            Unit::Count,
            "The adaptive concurrency limit (the key that moved last)."
        );
        metrics::describe_counter!(
            METRIC_LIMIT_DECREASES,
            Unit::Count,
            "Times an adaptive concurrency limit was lowered, by cause."
        );
        metrics::describe_counter!(
            METRIC_LIMIT_INCREASES,
            Unit::Count,
            "Times an adaptive concurrency limit was raised by one call or more."
        );
        metrics::describe_counter!(
            METRIC_OVERLOADS_PUBLISHED,
            Unit::Count,
            "Overloads of this instance recorded in Redis for the other instances (shared adaptive limit)."
        );
        metrics::describe_counter!(
            METRIC_SHARED_ERRORS,
            Unit::Count,
            "Failed writes or reads of the overloads shared through Redis, by op."
        );
        metrics::describe_counter!(
            METRIC_PAUSES,
            Unit::Count,
            "Pauses of a key after a 429 or an open circuit, by cause."
        );
    });
}
