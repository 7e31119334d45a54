//! Counters kept by the layer, read through its [`DedupHandle`](crate::DedupHandle) and
//! exported through `metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;

/// Counter: requests seen by the layer.
pub const METRIC_REQUESTS: &str = "tower_llm_dedup_requests_total";
/// Counter: requests answered from the cache (memory or Redis).
pub const METRIC_HITS: &str = "tower_llm_dedup_cache_hits_total";
/// Counter: requests that joined a call already in flight.
pub const METRIC_COALESCED: &str = "tower_llm_dedup_coalesced_total";
/// Counter: requests that found nothing and started a call.
pub const METRIC_MISSES: &str = "tower_llm_dedup_misses_total";
/// Counter: calls made to the inner service (misses, bypasses, own calls after a failure).
pub const METRIC_INNER_CALLS: &str = "tower_llm_dedup_inner_calls_total";
/// Counter: cache entries evicted to stay within capacity.
pub const METRIC_EVICTIONS: &str = "tower_llm_dedup_evictions_total";
/// Counter: requests that bypassed dedup.
pub const METRIC_BYPASSED: &str = "tower_llm_dedup_bypassed_total";
/// Counter: answers found in Redis.
pub const METRIC_REMOTE_HITS: &str = "tower_llm_dedup_remote_hits_total";
/// Counter: Redis reads or writes that failed or ran past the timeout (the request went on
/// without Redis).
pub const METRIC_REMOTE_ERRORS: &str = "tower_llm_dedup_remote_errors_total";

#[derive(Debug, Default)]
struct Cell {
    value: AtomicU64,
}

#[derive(Debug)]
struct Tally {
    cell: Cell,
    counter: Counter,
}

impl Tally {
    fn new(name: &'static str) -> Self {
        Tally {
            cell: Cell::default(),
            counter: metrics::counter!(name),
        }
    }

    fn add(&self) {
        self.cell.value.fetch_add(1, Ordering::Relaxed);
        self.counter.increment(1);
    }

    fn get(&self) -> u64 {
        self.cell.value.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Tallies {
    /// Only the exported counter: the local count is the sum of the four outcomes, one of
    /// which every request has, so the hot path does one atomic add fewer.
    requests: Counter,
    hits: Tally,
    coalesced: Tally,
    misses: Tally,
    inner_calls: Tally,
    evictions: Tally,
    bypassed: Tally,
    remote_hits: Tally,
    remote_errors: Tally,
}

/// The layer's counters, shared by every service one layer value makes, its handle and the
/// futures that count outcomes after `call`. Each event also goes to the `metrics` recorder.
#[derive(Clone, Debug)]
pub(crate) struct Counters {
    tallies: Arc<Tallies>,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            tallies: Arc::new(Tallies {
                requests: metrics::counter!(METRIC_REQUESTS),
                hits: Tally::new(METRIC_HITS),
                coalesced: Tally::new(METRIC_COALESCED),
                misses: Tally::new(METRIC_MISSES),
                inner_calls: Tally::new(METRIC_INNER_CALLS),
                evictions: Tally::new(METRIC_EVICTIONS),
                bypassed: Tally::new(METRIC_BYPASSED),
                remote_hits: Tally::new(METRIC_REMOTE_HITS),
                remote_errors: Tally::new(METRIC_REMOTE_ERRORS),
            }),
        }
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> DedupStats {
        let t = &self.tallies;
        let (hits, coalesced, misses, bypassed) = (
            t.hits.get(),
            t.coalesced.get(),
            t.misses.get(),
            t.bypassed.get(),
        );
        DedupStats {
            requests: hits + coalesced + misses + bypassed,
            hits,
            coalesced,
            misses,
            inner_calls: t.inner_calls.get(),
            evictions: t.evictions.get(),
            bypassed,
            remote_hits: t.remote_hits.get(),
            remote_errors: t.remote_errors.get(),
        }
    }

    /// A request arrived; it is counted locally by the outcome that follows.
    pub(crate) fn request(&self) {
        self.tallies.requests.increment(1);
    }
    pub(crate) fn hit(&self) {
        self.tallies.hits.add();
    }
    pub(crate) fn coalesced(&self) {
        self.tallies.coalesced.add();
    }
    pub(crate) fn miss(&self) {
        self.tallies.misses.add();
    }
    pub(crate) fn inner_call(&self) {
        self.tallies.inner_calls.add();
    }
    pub(crate) fn eviction(&self) {
        self.tallies.evictions.add();
    }
    pub(crate) fn bypassed(&self) {
        self.tallies.bypassed.add();
    }
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn remote_hit(&self) {
        self.tallies.remote_hits.add();
    }
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn remote_error(&self) {
        self.tallies.remote_errors.add();
    }
}

/// A dedup layer's counters at one moment, from [`DedupHandle::stats`](crate::DedupHandle::stats).
///
/// They cover every service the layer value made (and their clones), whichever stack each
/// landed in. The same events go to the `metrics` recorder under the `tower_llm_dedup_*`
/// names ([`METRIC_REQUESTS`] and the others); those counters are registered when the layer
/// is built, so install the recorder first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DedupStats {
    /// Requests seen.
    pub requests: u64,
    /// Requests answered from the cache (memory or Redis).
    pub hits: u64,
    /// Requests that joined a call already in flight.
    pub coalesced: u64,
    /// Requests that found nothing and started a call.
    pub misses: u64,
    /// Calls made to the inner service.
    pub inner_calls: u64,
    /// Cache entries evicted for capacity.
    pub evictions: u64,
    /// Requests that bypassed dedup.
    pub bypassed: u64,
    /// Answers found in Redis.
    pub remote_hits: u64,
    /// Redis operations that failed or timed out.
    pub remote_errors: u64,
}
