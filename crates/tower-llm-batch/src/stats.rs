//! Counters of what a batcher did, shared by every service one [`BatchLayer`] value makes,
//! and the [`BatchHandle`] that reads them.
//!
//! [`BatchLayer`]: crate::BatchLayer

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::observe::Observe;

/// Why a batch was sent when it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlushReason {
    /// It reached `max_items`.
    Full,
    /// It reached `max_weight`, or the next request would have taken it past.
    Weight,
    /// Its oldest request had waited `max_wait`.
    Wait,
    /// Every handle to the service was dropped, so nothing more could join.
    Shutdown,
}

impl FlushReason {
    /// A short name, for logs and the `reason` metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            FlushReason::Full => "full",
            FlushReason::Weight => "weight",
            FlushReason::Wait => "wait",
            FlushReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) items_sent: AtomicU64,
    pub(crate) flushed_full: AtomicU64,
    pub(crate) flushed_weight: AtomicU64,
    pub(crate) flushed_wait: AtomicU64,
    pub(crate) flushed_shutdown: AtomicU64,
    pub(crate) failed_batches: AtomicU64,
    pub(crate) abandoned_batches: AtomicU64,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) waiting: AtomicUsize,
    pub(crate) max_batch: AtomicUsize,
    pub(crate) wait_nanos: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n`; returns the new value.
    pub(crate) fn raise(gauge: &AtomicUsize, n: usize) -> usize {
        gauge.fetch_add(n, Ordering::Relaxed).wrapping_add(n)
    }

    /// Takes `n` away; returns the new value.
    pub(crate) fn lower(gauge: &AtomicUsize, n: usize) -> usize {
        gauge.fetch_sub(n, Ordering::Relaxed).wrapping_sub(n)
    }

    pub(crate) fn flushed(&self, reason: FlushReason) {
        let counter = match reason {
            FlushReason::Full => &self.flushed_full,
            FlushReason::Weight => &self.flushed_weight,
            FlushReason::Wait => &self.flushed_wait,
            FlushReason::Shutdown => &self.flushed_shutdown,
        };
        Self::add(counter, 1);
    }

    pub(crate) fn snapshot(&self) -> BatchStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let now = |c: &AtomicUsize| c.load(Ordering::Relaxed);
        BatchStats {
            requests: get(&self.requests),
            rejected: get(&self.rejected),
            cancelled: get(&self.cancelled),
            batches: get(&self.batches),
            items_sent: get(&self.items_sent),
            flushed_full: get(&self.flushed_full),
            flushed_weight: get(&self.flushed_weight),
            flushed_wait: get(&self.flushed_wait),
            flushed_shutdown: get(&self.flushed_shutdown),
            failed_batches: get(&self.failed_batches),
            abandoned_batches: get(&self.abandoned_batches),
            in_flight_batches: now(&self.in_flight),
            waiting: now(&self.waiting),
            largest_batch: now(&self.max_batch),
            total_wait: Duration::from_nanos(get(&self.wait_nanos)),
        }
    }
}

/// A handle on one [`BatchLayer`](crate::BatchLayer) value's batcher, from
/// [`BatchLayer::handle`](crate::BatchLayer::handle) or [`Batch::handle`](crate::Batch::handle).
///
/// Take it from the layer before building the stack: it keeps reading the same counters after
/// the service has been wrapped in other layers, boxed or moved into other tasks, and it sees
/// every service the layer value made. Clones are the same handle.
#[derive(Clone, Debug)]
pub struct BatchHandle {
    observe: Arc<Observe>,
}

impl BatchHandle {
    pub(crate) fn new(observe: Arc<Observe>) -> Self {
        BatchHandle { observe }
    }

    /// The counters now.
    pub fn stats(&self) -> BatchStats {
        self.observe.snapshot()
    }
}

/// A snapshot of a batcher's counters (see [`BatchHandle::stats`]). Totals are `u64`; the
/// values that say how much is held right now (batches in flight, requests waiting, the
/// largest batch) are `usize`, like the limits they are measured against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchStats {
    /// Requests queued for batching.
    pub requests: u64,
    /// Requests refused before they were queued (invalid for the adapter, batcher stopped,
    /// `call` without `poll_ready` while the queue was full).
    pub rejected: u64,
    /// Queued requests whose caller went away before their batch was sent; they were left
    /// out of it.
    pub cancelled: u64,
    /// Batches sent to the inner service.
    pub batches: u64,
    /// Requests sent in those batches.
    pub items_sent: u64,
    /// Batches sent because they reached `max_items`.
    pub flushed_full: u64,
    /// Batches sent because they reached `max_weight`.
    pub flushed_weight: u64,
    /// Batches sent because their oldest request had waited `max_wait`.
    pub flushed_wait: u64,
    /// Batches sent because the service was dropped.
    pub flushed_shutdown: u64,
    /// Batches the inner service failed (its `call` returned an error) or that panicked in the
    /// inner service or the adapter.
    pub failed_batches: u64,
    /// Batches cancelled after they were sent because every one of their callers had gone
    /// (dropped its response future): the inner call was dropped and its in-flight slot freed.
    pub abandoned_batches: u64,
    /// Batches sent and not yet answered.
    pub in_flight_batches: usize,
    /// Requests queued and not yet sent.
    pub waiting: usize,
    /// The largest batch sent.
    pub largest_batch: usize,
    /// Time the sent requests spent waiting for their batch to be sent, summed.
    pub total_wait: Duration,
}

/// The former name of [`BatchStats`].
#[deprecated(
    since = "0.1.0",
    note = "renamed `BatchStats`, like the other layers' snapshots"
)]
pub type Stats = BatchStats;

impl BatchStats {
    /// Requests per sent batch, on average (0 before the first batch).
    pub fn mean_batch_size(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.items_sent as f64 / self.batches as f64
        }
    }

    /// How long a sent request waited for its batch, on average.
    pub fn mean_wait(&self) -> Duration {
        match u32::try_from(self.items_sent) {
            Ok(0) => Duration::ZERO,
            Ok(n) => self.total_wait / n,
            Err(_) => {
                Duration::from_secs_f64(self.total_wait.as_secs_f64() / self.items_sent as f64)
            }
        }
    }
}
