//! The counters' snapshot, read through a [`DedupHandle`](crate::DedupHandle), and the
//! names of the `metrics` series that carry the same events.

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
