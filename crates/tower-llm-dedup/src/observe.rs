//! The crate's one event funnel: the layer calls one method per event, and this module
//! decides what goes to the handle's counters, to `tracing` (feature `tracing`) and to
//! `metrics` (feature `metrics`). With both features off only the counters remain.
//!
//! No request, answer or key ever reaches an event or a label: only the layer's `name` and
//! closed sets of words.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "tracing")]
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::stats::DedupStats;
#[cfg(feature = "metrics")]
use crate::stats::{
    METRIC_BYPASSED, METRIC_COALESCED, METRIC_EVICTIONS, METRIC_HITS, METRIC_INNER_CALLS,
    METRIC_MISSES, METRIC_REMOTE_ERRORS, METRIC_REMOTE_HITS, METRIC_REQUESTS,
};

/// The default `name` of a dedup layer: the label on its series and the field on its events.
pub(crate) const DEFAULT_NAME: &str = "dedup";

/// Why the shared cache could not answer or store.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RemoteFailure {
    /// It failed a moment ago and is left alone for its cool-down.
    CoolingDown,
    /// It did not answer within its timeout.
    Timeout,
    /// It answered with an error (or the connection failed).
    Error,
    /// The value could not be encoded or the stored bytes decoded.
    Codec,
    /// No tokio runtime to write from.
    NoRuntime,
}

impl RemoteFailure {
    /// The `reason` field of the warning.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RemoteFailure::CoolingDown => "cooling_down",
            RemoteFailure::Timeout => "timeout",
            RemoteFailure::Error => "error",
            RemoteFailure::Codec => "codec",
            RemoteFailure::NoRuntime => "no_runtime",
        }
    }
}

/// Which shared-cache operation failed.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RemoteOp {
    Get,
    Put,
}

impl RemoteOp {
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    fn as_str(self) -> &'static str {
        match self {
            RemoteOp::Get => "get",
            RemoteOp::Put => "put",
        }
    }
}

#[derive(Debug, Default)]
struct Tallies {
    hits: AtomicU64,
    coalesced: AtomicU64,
    misses: AtomicU64,
    inner_calls: AtomicU64,
    evictions: AtomicU64,
    bypassed: AtomicU64,
    remote_hits: AtomicU64,
    remote_errors: AtomicU64,
}

fn add(cell: &AtomicU64) {
    cell.fetch_add(1, Ordering::Relaxed);
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Metrics {
    requests: metrics::Counter,
    hits: metrics::Counter,
    coalesced: metrics::Counter,
    misses: metrics::Counter,
    inner_calls: metrics::Counter,
    evictions: metrics::Counter,
    bypassed: metrics::Counter,
    remote_hits: metrics::Counter,
    remote_errors: metrics::Counter,
}

#[cfg(feature = "metrics")]
impl Metrics {
    fn new(name: Cow<'static, str>) -> Self {
        describe();
        let counter = |metric: &'static str| metrics::counter!(metric, "name" => name.clone());
        Metrics {
            requests: counter(METRIC_REQUESTS),
            hits: counter(METRIC_HITS),
            coalesced: counter(METRIC_COALESCED),
            misses: counter(METRIC_MISSES),
            inner_calls: counter(METRIC_INNER_CALLS),
            evictions: counter(METRIC_EVICTIONS),
            bypassed: counter(METRIC_BYPASSED),
            remote_hits: counter(METRIC_REMOTE_HITS),
            remote_errors: counter(METRIC_REMOTE_ERRORS),
        }
    }
}

/// Describes every series once per process, with its unit, to whichever recorder is in force
/// when the first layer is built.
#[cfg(feature = "metrics")]
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use metrics::{Unit, describe_counter};
        describe_counter!(
            METRIC_REQUESTS,
            Unit::Count,
            "Requests seen by a dedup layer."
        );
        describe_counter!(
            METRIC_HITS,
            Unit::Count,
            "Requests answered from the cache (memory or Redis)."
        );
        describe_counter!(
            METRIC_COALESCED,
            Unit::Count,
            "Requests that joined an identical call already in flight."
        );
        describe_counter!(
            METRIC_MISSES,
            Unit::Count,
            "Requests that found nothing and led a new call."
        );
        describe_counter!(
            METRIC_INNER_CALLS,
            Unit::Count,
            "Calls made to the inner service."
        );
        describe_counter!(
            METRIC_EVICTIONS,
            Unit::Count,
            "Cache entries evicted to stay within capacity."
        );
        describe_counter!(
            METRIC_BYPASSED,
            Unit::Count,
            "Requests sent straight to the inner service (bypass)."
        );
        describe_counter!(
            METRIC_REMOTE_HITS,
            Unit::Count,
            "Requests answered from the Redis cache."
        );
        describe_counter!(
            METRIC_REMOTE_ERRORS,
            Unit::Count,
            "Redis reads or writes that failed, timed out or were skipped during a cool-down."
        );
    });
}

/// At most one warning per interval about the shared cache, with the number left unsaid.
/// The count is an atomic: during an outage every request adds to it, and only a failure
/// that may warn takes the lock.
#[cfg(feature = "tracing")]
#[derive(Debug, Default)]
struct WarnGate {
    last: Mutex<Option<tokio::time::Instant>>,
    suppressed: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Inner {
    name: Cow<'static, str>,
    tallies: Tallies,
    #[cfg(feature = "metrics")]
    metrics: Metrics,
    #[cfg(feature = "tracing")]
    warn_every: Duration,
    #[cfg(feature = "tracing")]
    warn_gate: WarnGate,
}

/// The funnel of one layer value, shared by its services, its handle and the futures that
/// report outcomes after `call`.
#[derive(Clone)]
pub(crate) struct Observe {
    inner: Arc<Inner>,
}

impl fmt::Debug for Observe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Observe {
    /// The funnel of a layer called `name`; `warn_every` spaces out the shared cache's
    /// warnings (the Redis backend's cool-down). Registers the metric handles now.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    pub(crate) fn new(name: Cow<'static, str>, warn_every: Duration) -> Self {
        Observe {
            inner: Arc::new(Inner {
                #[cfg(feature = "metrics")]
                metrics: Metrics::new(name.clone()),
                name,
                tallies: Tallies::default(),
                #[cfg(feature = "tracing")]
                warn_every,
                #[cfg(feature = "tracing")]
                warn_gate: WarnGate::default(),
            }),
        }
    }

    /// The layer's name.
    pub(crate) fn name(&self) -> &str {
        &self.inner.name
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> DedupStats {
        let t = &self.inner.tallies;
        let load = |cell: &AtomicU64| cell.load(Ordering::Relaxed);
        let (hits, coalesced, misses, bypassed) = (
            load(&t.hits),
            load(&t.coalesced),
            load(&t.misses),
            load(&t.bypassed),
        );
        DedupStats {
            // Every request has exactly one of these four outcomes, so the hot path does not
            // keep a separate local count.
            requests: hits + coalesced + misses + bypassed,
            hits,
            coalesced,
            misses,
            inner_calls: load(&t.inner_calls),
            evictions: load(&t.evictions),
            bypassed,
            remote_hits: load(&t.remote_hits),
            remote_errors: load(&t.remote_errors),
        }
    }

    /// A request arrived; it is counted locally by the outcome that follows.
    #[inline]
    pub(crate) fn request(&self) {
        #[cfg(feature = "metrics")]
        self.inner.metrics.requests.increment(1);
    }

    /// Answered from the in-memory cache.
    #[inline]
    pub(crate) fn hit(&self) {
        add(&self.inner.tallies.hits);
        #[cfg(feature = "metrics")]
        self.inner.metrics.hits.increment(1);
        #[cfg(feature = "tracing")]
        tracing::trace!(name = %self.inner.name, source = "memory", "dedup: cache hit");
    }

    /// Joined an identical call in flight.
    #[inline]
    pub(crate) fn coalesced(&self) {
        add(&self.inner.tallies.coalesced);
        #[cfg(feature = "metrics")]
        self.inner.metrics.coalesced.increment(1);
        #[cfg(feature = "tracing")]
        tracing::trace!(name = %self.inner.name, "dedup: coalesced with a call in flight");
    }

    /// Found nothing: this request leads a new call.
    #[inline]
    pub(crate) fn miss(&self) {
        add(&self.inner.tallies.misses);
        #[cfg(feature = "metrics")]
        self.inner.metrics.misses.increment(1);
    }

    /// A call went to the inner service.
    #[inline]
    pub(crate) fn inner_call(&self) {
        add(&self.inner.tallies.inner_calls);
        #[cfg(feature = "metrics")]
        self.inner.metrics.inner_calls.increment(1);
    }

    /// The cache evicted an entry for capacity.
    #[inline]
    pub(crate) fn eviction(&self) {
        add(&self.inner.tallies.evictions);
        #[cfg(feature = "metrics")]
        self.inner.metrics.evictions.increment(1);
    }

    /// The request bypassed dedup.
    #[inline]
    pub(crate) fn bypassed(&self) {
        add(&self.inner.tallies.bypassed);
        #[cfg(feature = "metrics")]
        self.inner.metrics.bypassed.increment(1);
    }

    /// Answered from the shared (Redis) cache.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn remote_hit(&self) {
        add(&self.inner.tallies.remote_hits);
        #[cfg(feature = "metrics")]
        self.inner.metrics.remote_hits.increment(1);
        #[cfg(feature = "tracing")]
        tracing::trace!(name = %self.inner.name, source = "redis", "dedup: cache hit");
    }

    /// The shared cache failed `op`; the request went on without it. Warns at most once per
    /// cool-down, and never for the calls skipped during one (the failure that started it
    /// was reported).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    pub(crate) fn remote_error(&self, op: RemoteOp, failure: RemoteFailure) {
        add(&self.inner.tallies.remote_errors);
        #[cfg(feature = "metrics")]
        self.inner.metrics.remote_errors.increment(1);
        #[cfg(feature = "tracing")]
        self.warn_remote(op, failure);
    }

    #[cfg(feature = "tracing")]
    fn warn_remote(&self, op: RemoteOp, failure: RemoteFailure) {
        use std::sync::atomic::Ordering;
        let gate = &self.inner.warn_gate;
        if failure == RemoteFailure::CoolingDown {
            gate.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = tokio::time::Instant::now();
        {
            let mut last = gate.last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|last| now.saturating_duration_since(last) < self.inner.warn_every)
            {
                gate.suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            *last = Some(now);
        }
        let suppressed = gate.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            name = %self.inner.name,
            op = op.as_str(),
            reason = failure.as_str(),
            suppressed,
            "dedup: Redis cache unavailable; requests go on without it",
        );
    }

    /// The handle cleared the cache, which held `entries` answers.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    pub(crate) fn cleared(&self, entries: usize) {
        #[cfg(feature = "tracing")]
        tracing::info!(name = %self.inner.name, entries, "dedup: cache cleared");
    }
}
