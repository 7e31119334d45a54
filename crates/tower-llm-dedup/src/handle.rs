//! [`DedupHandle`]: reads and steers one layer value's cache from outside the stack.

use std::fmt;
use std::sync::Arc;

use tower_llm_core::RequestKey;

use crate::observe::Observe;
use crate::stats::DedupStats;

/// What the handle may do to a cache, whatever type of answer it holds.
pub(crate) trait CacheOps: Send + Sync {
    /// Entries held now.
    fn entry_count(&self) -> usize;
    /// Drops every entry.
    fn clear(&self);
    /// Drops the entry for `key`.
    fn invalidate(&self, key: &RequestKey);
}

/// A handle on one [`DedupLayer`](crate::DedupLayer) or
/// [`StreamDedupLayer`](crate::StreamDedupLayer) value: its counters and its cache.
///
/// Get it from [`DedupLayer::handle`](crate::DedupLayer::handle) (or the stream layer's, or a
/// service's `handle()`) before building the stack: it keeps working after the service has
/// been wrapped in other layers, boxed, cloned or moved into other tasks, and it covers every
/// service the layer value made, in every stack. Clones are the same handle.
///
/// The controls act on the in-memory cache. Calls in flight are not affected: one that
/// finishes after [`clear`](Self::clear) stores its answer as usual. A Redis backend keeps its
/// copies until their TTL runs out.
#[derive(Clone)]
pub struct DedupHandle {
    observe: Observe,
    cache: Option<Arc<dyn CacheOps>>,
}

impl DedupHandle {
    pub(crate) fn new(observe: Observe, cache: Option<Arc<dyn CacheOps>>) -> Self {
        DedupHandle { observe, cache }
    }

    /// The layer's name, as given to the builder's `name` (default `"dedup"`).
    pub fn name(&self) -> &str {
        self.observe.name()
    }

    /// The counters now.
    pub fn stats(&self) -> DedupStats {
        self.observe.snapshot()
    }

    /// Answers in the cache now (0 without a cache), a `usize` like the `max_entries` it is
    /// bounded by. Runs the cache's pending maintenance first, so the count is exact but not
    /// free: not for a hot path.
    pub fn cached_entries(&self) -> usize {
        self.cache.as_ref().map_or(0, |cache| cache.entry_count())
    }

    /// Drops every cached answer: from now on each request is a miss until its answer is
    /// stored again. Logged at `info` with the number of answers dropped.
    pub fn clear(&self) {
        if let Some(cache) = &self.cache {
            let entries = cache.entry_count();
            cache.clear();
            self.observe.cleared(entries);
        }
    }

    /// Drops the cached answer stored under `key`, if any. The key is the one the layer files
    /// a request under: get it with [`DedupLayer::request_key`](crate::DedupLayer::request_key)
    /// (or your key function, or [`FingerprintKey::fingerprint`] with the layer's
    /// fingerprint key).
    ///
    /// [`FingerprintKey::fingerprint`]: tower_llm_core::FingerprintKey::fingerprint
    pub fn invalidate(&self, key: RequestKey) {
        if let Some(cache) = &self.cache {
            cache.invalidate(&key);
        }
    }
}

impl fmt::Debug for DedupHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupHandle")
            .field("name", &self.name())
            .field("stats", &self.stats())
            .field("cache", &self.cache.is_some())
            .finish()
    }
}
