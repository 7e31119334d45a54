//! The knobs both builders share ([`DedupBuilder`](crate::DedupBuilder) and
//! [`StreamDedupBuilder`](crate::StreamDedupBuilder)), checked and turned into a
//! cache in one place.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{CacheConfig, Capacity, MemoryCache, TtlFor};
use crate::error::ConfigError;
use crate::handle::{CacheOps, DedupHandle};
use crate::observe::{DEFAULT_NAME, Observe};
use crate::policy::OnError;

/// The cache's default capacity, in entries.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// The default time an answer stays in the cache.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// The cache and error knobs, for a cache of `V` (an answer, or a stream's chunks).
pub(crate) struct Knobs<V> {
    pub(crate) name: Cow<'static, str>,
    pub(crate) cache_enabled: bool,
    pub(crate) ttl: Duration,
    pub(crate) time_to_idle: Option<Duration>,
    pub(crate) capacity: Capacity<V>,
    pub(crate) ttl_for: Option<TtlFor<V>>,
    pub(crate) on_error: OnError,
}

impl<V> Default for Knobs<V> {
    fn default() -> Self {
        Knobs {
            name: Cow::Borrowed(DEFAULT_NAME),
            cache_enabled: true,
            ttl: DEFAULT_TTL,
            time_to_idle: None,
            capacity: Capacity::Entries(DEFAULT_MAX_ENTRIES),
            ttl_for: None,
            on_error: OnError::Share,
        }
    }
}

impl<V> Knobs<V> {
    /// The knobs of `new(ttl)`: a zero `ttl` means no cache.
    pub(crate) fn with_ttl(ttl: Duration) -> Self {
        Knobs {
            cache_enabled: !ttl.is_zero(),
            ttl,
            ..Knobs::default()
        }
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !self.cache_enabled {
            return Ok(());
        }
        if self.ttl.is_zero() {
            return Err(ConfigError::new(
                "dedup",
                "ttl",
                "must be above zero (use `no_cache` to keep nothing)",
            ));
        }
        if self.time_to_idle.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "dedup",
                "time_to_idle",
                "must be above zero",
            ));
        }
        match &self.capacity {
            Capacity::Entries(0) => Err(ConfigError::new(
                "dedup",
                "max_entries",
                "must be above zero",
            )),
            Capacity::Bytes(0, _) => Err(ConfigError::new(
                "dedup",
                "max_weight",
                "must be above zero",
            )),
            _ => Ok(()),
        }
    }

    /// The funnel, the cache (unless `no_cache`) and the handle on both, for one layer value;
    /// `warn_every` spaces out warnings about a shared cache.
    pub(crate) fn assemble(self, warn_every: Duration) -> Parts<V>
    where
        V: Clone + Send + Sync + 'static,
    {
        let observe = Observe::new(self.name, warn_every);
        let cache = self.cache_enabled.then(|| {
            let config = CacheConfig {
                capacity: self.capacity,
                ttl: self.ttl,
                time_to_idle: self.time_to_idle,
                ttl_for: self.ttl_for,
            };
            Arc::new(MemoryCache::new(&config, observe.clone()))
        });
        let control = cache.clone().map(|cache| cache as Arc<dyn CacheOps>);
        Parts {
            handle: DedupHandle::new(observe.clone(), control),
            observe,
            cache,
            on_error: self.on_error,
        }
    }
}

/// What a layer value is made of, besides its key source and cache rule.
pub(crate) struct Parts<V> {
    pub(crate) observe: Observe,
    pub(crate) cache: Option<Arc<MemoryCache<V>>>,
    pub(crate) handle: DedupHandle,
    pub(crate) on_error: OnError,
}

/// The builder methods for [`Knobs`], written once for both builders: each builder has a
/// `knobs` field of type `Knobs<$value>`.
macro_rules! knob_methods {
    ($value:ty) => {
        /// The layer's name (default `"dedup"`): the `name` label on its metric series and
        /// the `name` field on its events, to tell two layers in one process apart.
        pub fn name(mut self, name: impl Into<std::borrow::Cow<'static, str>>) -> Self {
            self.knobs.name = name.into();
            self
        }

        /// How long an answer stays in the cache (default five minutes). Must not be zero.
        pub fn ttl(mut self, ttl: std::time::Duration) -> Self {
            self.knobs.ttl = ttl;
            self
        }

        /// Drops an answer that has not been read for this long, even before its TTL.
        pub fn time_to_idle(mut self, idle: std::time::Duration) -> Self {
            self.knobs.time_to_idle = Some(idle);
            self
        }

        /// A TTL per answer: `f` sees the answer (for streams, all of its chunks) and returns
        /// `Some(ttl)` to override the default for it (`Some(Duration::ZERO)` keeps it out of
        /// the cache), `None` for the default.
        pub fn ttl_for(
            mut self,
            f: impl Fn(&$value) -> Option<std::time::Duration> + Send + Sync + 'static,
        ) -> Self {
            self.knobs.ttl_for = Some(std::sync::Arc::new(f));
            self
        }

        /// Bounds the cache by number of answers (default
        /// [`DEFAULT_MAX_ENTRIES`](crate::DEFAULT_MAX_ENTRIES)). A `usize`, as every count
        /// that bounds memory is (a limiter's `max_keys`, a batch's `capacity`).
        pub fn max_entries(mut self, entries: usize) -> Self {
            self.knobs.capacity = crate::cache::Capacity::Entries(entries);
            self
        }

        /// Bounds the cache by weight instead: `weigh` says what one answer (for streams, all
        /// of its chunks) costs, in bytes say, and the entries together stay under `max`.
        pub fn max_weight(
            mut self,
            max: u64,
            weigh: impl Fn(&$value) -> u32 + Send + Sync + 'static,
        ) -> Self {
            self.knobs.capacity = crate::cache::Capacity::Bytes(max, std::sync::Arc::new(weigh));
            self
        }

        /// Keeps no answers: coalescing only.
        pub fn no_cache(mut self) -> Self {
            self.knobs.cache_enabled = false;
            self
        }

        /// What callers that joined a failed call get (default
        /// [`OnError::Share`](crate::OnError::Share)).
        pub fn on_error(mut self, on_error: crate::OnError) -> Self {
            self.knobs.on_error = on_error;
            self
        }
    };
}

pub(crate) use knob_methods;
