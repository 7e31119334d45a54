//! The crate's one funnel: the service and the batching task call one method here per event,
//! and the funnel feeds the [`BatchStats`] counters, `tracing` (feature `tracing`) and `metrics`
//! (feature `metrics`). Nothing else in the crate calls either.
//!
//! Requests, answers and error messages never appear: events carry sizes, reasons and the
//! failure's kind (core's closed set).

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::stats::{BatchStats, Counters, FlushReason};

#[cfg(feature = "metrics")]
const METRIC_REQUESTS: &str = "tower_llm_batch_requests_total";
#[cfg(feature = "metrics")]
const METRIC_REJECTED: &str = "tower_llm_batch_rejected_total";
#[cfg(feature = "metrics")]
const METRIC_CANCELLED: &str = "tower_llm_batch_cancelled_total";
#[cfg(feature = "metrics")]
const METRIC_BATCHES: &str = "tower_llm_batch_batches_total";
#[cfg(feature = "metrics")]
const METRIC_FAILED: &str = "tower_llm_batch_failed_batches_total";
#[cfg(feature = "metrics")]
const METRIC_ABANDONED: &str = "tower_llm_batch_abandoned_batches_total";
#[cfg(feature = "metrics")]
const METRIC_SIZE: &str = "tower_llm_batch_size";
#[cfg(feature = "metrics")]
const METRIC_WAIT: &str = "tower_llm_batch_wait_seconds";
#[cfg(feature = "metrics")]
const METRIC_IN_FLIGHT: &str = "tower_llm_batch_in_flight_batches";
#[cfg(feature = "metrics")]
const METRIC_WAITING: &str = "tower_llm_batch_waiting_requests";

/// The default `name` of a batcher.
pub(crate) const DEFAULT_NAME: &str = "batch";

/// Why a request was refused before it was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// `call` without `poll_ready` while every place was taken.
    Full,
    /// The batcher stopped (its inner service failed `poll_ready`).
    Closed,
    /// The adapter refused the request.
    Invalid,
}

impl Rejection {
    #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
    fn as_str(self) -> &'static str {
        match self {
            Rejection::Full => "full",
            Rejection::Closed => "closed",
            Rejection::Invalid => "invalid",
        }
    }
}

/// How a batch failed: the inner service's error, classified, or a panic and where.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) enum Failed {
    Error(tower_llm_core::FailureKind),
    Panic(&'static str),
}

/// One layer value's funnel: its name, its counters and its metric handles.
pub(crate) struct Observe {
    #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
    name: Cow<'static, str>,
    counters: Counters,
    /// Made once, with the recorder installed when the layer is first applied.
    #[cfg(feature = "metrics")]
    metrics: std::sync::OnceLock<Metrics>,
}

impl std::fmt::Debug for Observe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observe")
            .field("name", &self.name)
            .field("stats", &self.snapshot())
            .finish()
    }
}

impl Observe {
    pub(crate) fn new(name: Cow<'static, str>) -> Self {
        Observe {
            name,
            counters: Counters::default(),
            #[cfg(feature = "metrics")]
            metrics: std::sync::OnceLock::new(),
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

    pub(crate) fn snapshot(&self) -> BatchStats {
        self.counters.snapshot()
    }

    /// A request was handed to the batching task.
    #[inline]
    pub(crate) fn requested(&self) {
        Counters::add(&self.counters.requests, 1);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.requests.increment(1);
        }
    }

    /// A request was refused before it was queued.
    pub(crate) fn rejected(&self, reason: Rejection) {
        Counters::add(&self.counters.rejected, 1);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            match reason {
                Rejection::Full => &m.rejected_full,
                Rejection::Closed => &m.rejected_closed,
                Rejection::Invalid => &m.rejected_invalid,
            }
            .increment(1);
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(
            name = &*self.name,
            reason = reason.as_str(),
            "request rejected"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = reason;
    }

    /// The batching task took a request into a pending batch.
    pub(crate) fn queued(&self) {
        let waiting = Counters::raise(&self.counters.waiting, 1);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.waiting.set(waiting as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = waiting;
    }

    /// `n` queued requests were left out of their batch because their callers went away.
    pub(crate) fn cancelled(&self, n: usize) {
        Counters::add(&self.counters.cancelled, n as u64);
        let waiting = Counters::lower(&self.counters.waiting, n);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.cancelled.increment(n as u64);
            m.waiting.set(waiting as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = waiting;
    }

    /// A batch was sealed for `reason`; it is sent when a slot and the inner service allow.
    pub(crate) fn sealed(&self, reason: FlushReason) {
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.batches(reason).increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = reason;
    }

    /// One request of a batch being sent waited `waited` since its `call`.
    #[inline]
    pub(crate) fn request_sent(&self, waited: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.wait.record(waited.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = waited;
    }

    /// A batch of `size` requests (sealed for `reason`, whose requests waited `waited` in
    /// all and `oldest` at most) went to the inner service.
    pub(crate) fn flushed(
        &self,
        reason: FlushReason,
        size: usize,
        weight: u64,
        waited: Duration,
        oldest: Duration,
    ) {
        let c = &self.counters;
        c.flushed(reason);
        Counters::add(&c.batches, 1);
        Counters::add(&c.items_sent, size as u64);
        Counters::add(
            &c.wait_nanos,
            u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
        );
        let waiting = Counters::lower(&c.waiting, size);
        c.max_batch.fetch_max(size, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.size.record(size as f64);
            m.waiting.set(waiting as f64);
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(
            name = &*self.name,
            reason = reason.as_str(),
            size,
            weight,
            oldest_wait_seconds = oldest.as_secs_f64(),
            "batch flushed"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (weight, oldest);
        #[cfg(not(feature = "metrics"))]
        let _ = waiting;
    }

    /// A batch's inner call started.
    pub(crate) fn call_started(&self) {
        let in_flight = Counters::raise(&self.counters.in_flight, 1);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.in_flight.set(in_flight as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = in_flight;
    }

    /// A batch's inner call ended (answered, failed or abandoned).
    pub(crate) fn call_ended(&self) {
        let in_flight = Counters::lower(&self.counters.in_flight, 1);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.in_flight.set(in_flight as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = in_flight;
    }

    /// Every caller of a sent batch of `size` went away: its inner call was dropped.
    pub(crate) fn abandoned(&self, size: usize) {
        Counters::add(&self.counters.abandoned_batches, 1);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.abandoned.increment(1);
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(name = &*self.name, size, "abandoned batch cancelled");
        #[cfg(not(feature = "tracing"))]
        let _ = size;
    }

    /// A batch of `size` failed; each of its callers gets the error.
    pub(crate) fn failed(&self, size: usize, how: Failed) {
        Counters::add(&self.counters.failed_batches, 1);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.failed.increment(1);
        }
        #[cfg(feature = "tracing")]
        match how {
            Failed::Error(kind) => tracing::warn!(
                name = &*self.name,
                size,
                kind = kind.as_str(),
                "batch failed"
            ),
            Failed::Panic(stage) => tracing::warn!(
                name = &*self.name,
                size,
                kind = "panic",
                panicked_in = stage,
                "batch failed"
            ),
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (size, how);
    }

    /// The inner service failed `poll_ready`: the batcher stopped, failing `dropped` queued
    /// requests.
    pub(crate) fn stopped(&self, dropped: usize, how: Failed) {
        let waiting = Counters::lower(&self.counters.waiting, dropped);
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.get() {
            m.waiting.set(waiting as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = waiting;
        #[cfg(feature = "tracing")]
        {
            let kind = match how {
                Failed::Error(kind) => kind.as_str(),
                Failed::Panic(_) => "panic",
            };
            tracing::warn!(name = &*self.name, dropped, kind, "batcher stopped");
        }
        #[cfg(not(feature = "tracing"))]
        let _ = how;
    }
}

/// One layer value's metric handles, each with its `name` label.
#[cfg(feature = "metrics")]
struct Metrics {
    requests: metrics::Counter,
    rejected_full: metrics::Counter,
    rejected_closed: metrics::Counter,
    rejected_invalid: metrics::Counter,
    cancelled: metrics::Counter,
    batches_full: metrics::Counter,
    batches_weight: metrics::Counter,
    batches_wait: metrics::Counter,
    batches_shutdown: metrics::Counter,
    failed: metrics::Counter,
    abandoned: metrics::Counter,
    size: metrics::Histogram,
    wait: metrics::Histogram,
    in_flight: metrics::Gauge,
    waiting: metrics::Gauge,
}

#[cfg(feature = "metrics")]
impl Metrics {
    fn new(name: Cow<'static, str>) -> Self {
        let labels = |more: &[(&'static str, &'static str)]| -> Vec<metrics::Label> {
            std::iter::once(metrics::Label::new("name", name.clone()))
                .chain(more.iter().map(|&(k, v)| metrics::Label::new(k, v)))
                .collect()
        };
        let rejected = |reason: Rejection| {
            metrics::counter!(METRIC_REJECTED, labels(&[("reason", reason.as_str())]))
        };
        let batches = |reason: FlushReason| {
            metrics::counter!(METRIC_BATCHES, labels(&[("reason", reason.as_str())]))
        };
        Metrics {
            requests: metrics::counter!(METRIC_REQUESTS, labels(&[])),
            rejected_full: rejected(Rejection::Full),
            rejected_closed: rejected(Rejection::Closed),
            rejected_invalid: rejected(Rejection::Invalid),
            cancelled: metrics::counter!(METRIC_CANCELLED, labels(&[])),
            batches_full: batches(FlushReason::Full),
            batches_weight: batches(FlushReason::Weight),
            batches_wait: batches(FlushReason::Wait),
            batches_shutdown: batches(FlushReason::Shutdown),
            failed: metrics::counter!(METRIC_FAILED, labels(&[])),
            abandoned: metrics::counter!(METRIC_ABANDONED, labels(&[])),
            size: metrics::histogram!(METRIC_SIZE, labels(&[])),
            wait: metrics::histogram!(METRIC_WAIT, labels(&[])),
            in_flight: metrics::gauge!(METRIC_IN_FLIGHT, labels(&[])),
            waiting: metrics::gauge!(METRIC_WAITING, labels(&[])),
        }
    }

    fn batches(&self, reason: FlushReason) -> &metrics::Counter {
        match reason {
            FlushReason::Full => &self.batches_full,
            FlushReason::Weight => &self.batches_weight,
            FlushReason::Wait => &self.batches_wait,
            FlushReason::Shutdown => &self.batches_shutdown,
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
            METRIC_REQUESTS,
            Unit::Count,
            "Requests handed to the batcher."
        );
        metrics::describe_counter!(
            METRIC_REJECTED,
            Unit::Count,
            "Requests refused before they were queued, by reason."
        );
        metrics::describe_counter!(
            METRIC_CANCELLED,
            Unit::Count,
            "Queued requests left out of their batch because their caller went away."
        );
        metrics::describe_counter!(
            METRIC_BATCHES,
            Unit::Count,
            "Batches sealed, by why they were sealed."
        );
        metrics::describe_counter!(
            METRIC_FAILED,
            Unit::Count,
            "Batches the inner service failed, or that panicked."
        );
        metrics::describe_counter!(
            METRIC_ABANDONED,
            Unit::Count,
            "Sent batches cancelled because every one of their callers went away."
        );
        metrics::describe_histogram!(
            METRIC_SIZE,
            Unit::Count,
            "Requests per batch sent to the inner service."
        );
        metrics::describe_histogram!(
            METRIC_WAIT,
            Unit::Seconds,
            "Per request: time from its call to its batch being sent."
        );
        metrics::describe_gauge!(
            METRIC_IN_FLIGHT,
            Unit::Count,
            "Batches sent to the inner service and not answered yet."
        );
        metrics::describe_gauge!(
            METRIC_WAITING,
            Unit::Count,
            "Requests queued in the batcher and not sent yet."
        );
    });
}
