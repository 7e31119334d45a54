//! The crate's one funnel: the policy calls one method here per event, and the funnel feeds
//! the [`RetryStats`](crate::RetryStats) counters, `tracing` (feature `tracing`) and
//! `metrics` (feature `metrics`). Nothing else in the crate calls either.
//!
//! Requests, responses and errors never appear: events carry the failure's kind (core's
//! closed set) and numbers only.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use tower_llm_core::Failure;

use crate::policy::GiveUpReason;
use crate::stats::Counters;

/// `tower_llm_retry_attempts_total{name}`: every attempt sent to the inner service, first or
/// retry.
pub const METRIC_ATTEMPTS: &str = "tower_llm_retry_attempts_total";
/// `tower_llm_retry_retries_total{name, kind}`: retries decided, by the failure that caused
/// them.
pub const METRIC_RETRIES: &str = "tower_llm_retry_retries_total";
/// `tower_llm_retry_give_ups_total{name, reason, kind}`: failures handed back to the caller
/// without another attempt, by [`GiveUpReason`] and failure kind.
pub const METRIC_GIVE_UPS: &str = "tower_llm_retry_give_ups_total";
/// `tower_llm_retry_delay_seconds{name}`: how long the layer waited before each retry (the
/// backoff, or the server's hint when longer).
pub const METRIC_DELAY: &str = "tower_llm_retry_delay_seconds";

/// The default `name` of a retry layer.
pub(crate) const DEFAULT_NAME: &str = "retry";

/// One layer value's funnel: its name, its counters (shared with its handles) and its
/// metric handles.
pub(crate) struct Observe {
    #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
    name: Cow<'static, str>,
    pub(crate) counters: Arc<Counters>,
    /// Made at the first call, with the recorder installed then, so no call builds a label.
    #[cfg(feature = "metrics")]
    metrics: std::sync::OnceLock<Metrics>,
}

impl std::fmt::Debug for Observe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observe").field("name", &self.name).finish()
    }
}

impl Observe {
    pub(crate) fn new(name: Cow<'static, str>) -> Self {
        Observe {
            name,
            counters: Arc::default(),
            #[cfg(feature = "metrics")]
            metrics: std::sync::OnceLock::new(),
        }
    }

    #[cfg(feature = "metrics")]
    #[inline]
    fn metrics(&self) -> &Metrics {
        self.metrics.get_or_init(|| {
            describe();
            Metrics::new(self.name.clone())
        })
    }

    /// A call's first attempt goes to the inner service.
    #[inline]
    pub(crate) fn first_attempt(&self) {
        #[cfg(feature = "metrics")]
        self.metrics().attempts.increment(1);
        self.counters.requests.increment();
    }

    /// A retry goes to the inner service.
    pub(crate) fn retry_attempt(&self) {
        #[cfg(feature = "metrics")]
        self.metrics().attempts.increment(1);
        self.counters.retried();
    }

    /// A call succeeded at attempt `attempt`, after at least one retry.
    pub(crate) fn recovered(&self, attempt: usize) {
        self.counters.recovered();
        #[cfg(feature = "tracing")]
        tracing::debug!(name = &*self.name, attempt, "call recovered");
        #[cfg(not(feature = "tracing"))]
        let _ = attempt;
    }

    /// Attempt `attempt` failed with `failure`; the next one starts after `after`.
    pub(crate) fn retry_scheduled(&self, attempt: usize, failure: &Failure, after: Duration) {
        #[cfg(feature = "metrics")]
        {
            let m = self.metrics();
            m.retries(failure.kind).increment(1);
            m.delay.record(after.as_secs_f64());
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(
            name = &*self.name,
            attempt,
            kind = failure.kind.as_str(),
            backoff_seconds = after.as_secs_f64(),
            retry_after_seconds = failure.retry_after.map(|d| d.as_secs_f64()),
            "retry scheduled"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (attempt, failure, after);
    }

    /// Attempt `attempt` failed with `failure` and goes back to the caller, for `reason`.
    pub(crate) fn gave_up(&self, attempt: usize, failure: &Failure, reason: GiveUpReason) {
        self.counters.give_up(reason);
        #[cfg(feature = "metrics")]
        self.metrics().give_ups(reason, failure.kind).increment(1);
        #[cfg(feature = "tracing")]
        {
            let name = &*self.name;
            let kind = failure.kind.as_str();
            let reason_str = reason.as_str();
            match reason {
                // The caller's own error (or an unknown one): nothing the layer gave up on.
                GiveUpReason::NotRetryable => {
                    tracing::debug!(name, attempt, kind, reason = reason_str, "giving up");
                }
                GiveUpReason::BudgetExhausted => {
                    tracing::warn!(
                        name,
                        spender = "retry",
                        attempt,
                        kind,
                        "retry budget exhausted, giving up"
                    );
                }
                _ => tracing::warn!(name, attempt, kind, reason = reason_str, "giving up"),
            }
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (attempt, failure);
    }
}

/// One layer value's metric handles, each with its `name` label. The per-kind ones are made
/// when a kind first occurs: registering every kind and reason up front would export
/// 90 empty series per layer.
#[cfg(feature = "metrics")]
struct Metrics {
    name: Cow<'static, str>,
    attempts: metrics::Counter,
    delay: metrics::Histogram,
    retries: [std::sync::OnceLock<metrics::Counter>; KINDS],
    give_ups: [[std::sync::OnceLock<metrics::Counter>; KINDS]; GiveUpReason::ALL.len()],
}

#[cfg(feature = "metrics")]
const KINDS: usize = tower_llm_core::FailureKind::ALL.len();

#[cfg(feature = "metrics")]
impl Metrics {
    fn new(name: Cow<'static, str>) -> Self {
        let labels = vec![metrics::Label::new("name", name.clone())];
        Metrics {
            attempts: metrics::counter!(METRIC_ATTEMPTS, labels.clone()),
            delay: metrics::histogram!(METRIC_DELAY, labels),
            retries: std::array::from_fn(|_| std::sync::OnceLock::new()),
            give_ups: std::array::from_fn(|_| std::array::from_fn(|_| std::sync::OnceLock::new())),
            name,
        }
    }

    fn labels(&self, more: &[(&'static str, &'static str)]) -> Vec<metrics::Label> {
        std::iter::once(metrics::Label::new("name", self.name.clone()))
            .chain(more.iter().map(|&(k, v)| metrics::Label::new(k, v)))
            .collect()
    }

    fn retries(&self, kind: tower_llm_core::FailureKind) -> metrics::Counter {
        let make = || metrics::counter!(METRIC_RETRIES, self.labels(&[("kind", kind.as_str())]));
        match kind_index(kind) {
            Some(i) => self.retries[i].get_or_init(make).clone(),
            None => make(),
        }
    }

    fn give_ups(
        &self,
        reason: GiveUpReason,
        kind: tower_llm_core::FailureKind,
    ) -> metrics::Counter {
        let make = || {
            metrics::counter!(
                METRIC_GIVE_UPS,
                self.labels(&[("reason", reason.as_str()), ("kind", kind.as_str())])
            )
        };
        let r = GiveUpReason::ALL.iter().position(|r| *r == reason);
        match (r, kind_index(kind)) {
            (Some(r), Some(k)) => self.give_ups[r][k].get_or_init(make).clone(),
            _ => make(),
        }
    }
}

#[cfg(feature = "metrics")]
fn kind_index(kind: tower_llm_core::FailureKind) -> Option<usize> {
    tower_llm_core::FailureKind::ALL
        .iter()
        .position(|k| *k == kind)
}

/// Describes every metric of the crate to the recorder, once per process.
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::Unit;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        metrics::describe_counter!(
            METRIC_ATTEMPTS,
            Unit::Count,
            "Attempts the retry layer sent to the inner service, first ones included."
        );
        metrics::describe_counter!(
            METRIC_RETRIES,
            Unit::Count,
            "Retries decided, by the kind of failure that caused them."
        );
        metrics::describe_counter!(
            METRIC_GIVE_UPS,
            Unit::Count,
            "Failures returned to the caller without another attempt, by reason and kind."
        );
        metrics::describe_histogram!(
            METRIC_DELAY,
            Unit::Seconds,
            "Wait before each retry: the backoff, or the server's hint when longer."
        );
    });
}
