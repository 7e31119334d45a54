//! The in-memory response cache: moka for capacity, tokio time for freshness.
//!
//! Freshness is checked against `tokio::time::Instant`, so TTLs follow tokio's clock (and a
//! paused clock in tests); moka is given the same durations on its own clock only to reclaim
//! memory. A stale entry is never served: it reads as a miss and the next completed call
//! replaces it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use moka::notification::RemovalCause;
use tokio::time::Instant;
use tower_llm_core::RequestKey;

use crate::stats::DedupStats;

/// The longest TTL moka accepts (it panics when built with more).
const MOKA_MAX_TTL: Duration = Duration::from_secs(1_000 * 365 * 24 * 3600);

/// How many bytes an entry costs, for a cache bounded by bytes.
pub(crate) type Weigher<V> = Arc<dyn Fn(&V) -> u32 + Send + Sync>;

/// A per-entry TTL chosen from the value; `None` keeps the default.
pub(crate) type TtlFor<V> = Arc<dyn Fn(&V) -> Option<Duration> + Send + Sync>;

/// The bound on the cache.
pub(crate) enum Capacity<V> {
    Entries(u64),
    Bytes(u64, Weigher<V>),
}

impl<V> Clone for Capacity<V> {
    fn clone(&self) -> Self {
        match self {
            Capacity::Entries(n) => Capacity::Entries(*n),
            Capacity::Bytes(n, w) => Capacity::Bytes(*n, w.clone()),
        }
    }
}

pub(crate) struct CacheConfig<V> {
    pub(crate) capacity: Capacity<V>,
    pub(crate) ttl: Duration,
    pub(crate) time_to_idle: Option<Duration>,
    pub(crate) ttl_for: Option<TtlFor<V>>,
}

impl<V> Clone for CacheConfig<V> {
    fn clone(&self) -> Self {
        CacheConfig {
            capacity: self.capacity.clone(),
            ttl: self.ttl,
            time_to_idle: self.time_to_idle,
            ttl_for: self.ttl_for.clone(),
        }
    }
}

/// What moka holds for a key. It is cloned on every hit (moka hands out clones), so it holds
/// the value itself rather than an `Arc` of it: one reference count fewer to bump on every
/// hit, and none shared by every thread reading a hot key.
#[derive(Clone)]
struct Entry<V> {
    value: V,
    created: Instant,
    /// `created + ttl`; `None` when that is past the end of the clock (never stale).
    expires: Option<Instant>,
    ttl: Duration,
    /// Nanoseconds after `created` of the last read, for the idle timeout (only kept when
    /// there is one).
    last_read: Option<Arc<AtomicU64>>,
}

struct Expiry {
    time_to_idle: Option<Duration>,
}

impl<V> moka::Expiry<RequestKey, Entry<V>> for Expiry {
    fn expire_after_create(
        &self,
        _key: &RequestKey,
        value: &Entry<V>,
        _created_at: StdInstant,
    ) -> Option<Duration> {
        Some(match self.time_to_idle {
            Some(idle) => idle.min(value.ttl),
            None => value.ttl,
        })
    }

    fn expire_after_read(
        &self,
        _key: &RequestKey,
        value: &Entry<V>,
        _read_at: StdInstant,
        duration_until_expiry: Option<Duration>,
        _last_modified_at: StdInstant,
    ) -> Option<Duration> {
        match self.time_to_idle {
            // Moka's clock is only for reclaiming memory; ours decides freshness. Never
            // reclaim before our TTL could have run out.
            Some(idle) => Some(idle.min(value.ttl)),
            None => duration_until_expiry,
        }
    }

    fn expire_after_update(
        &self,
        key: &RequestKey,
        value: &Entry<V>,
        updated_at: StdInstant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        // A replaced entry lives by its own TTL, not what was left of the old one's.
        self.expire_after_create(key, value, updated_at)
    }
}

/// Hashes a [`RequestKey`] by folding it: the key is already a keyed 128-bit hash, uniform and
/// not forgeable, so hashing it again (SipHash, by default) would only cost time on every hit.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeyHasher;

impl std::hash::BuildHasher for KeyHasher {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        FoldHasher(0)
    }
}

pub(crate) struct FoldHasher(u64);

impl std::hash::Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for a RequestKey (it writes one u128); kept correct for any input.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word))
                .rotate_left(29)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 ^= (value as u64) ^ ((value >> 64) as u64);
    }
}

pub(crate) struct MemoryCache<V> {
    cache: moka::sync::Cache<RequestKey, Entry<V>, KeyHasher>,
    default_ttl: Duration,
    time_to_idle: Option<Duration>,
    ttl_for: Option<TtlFor<V>>,
}

impl<V: Clone + Send + Sync + 'static> MemoryCache<V> {
    pub(crate) fn new(config: &CacheConfig<V>, stats: DedupStats) -> Self {
        let listener = move |_key: Arc<RequestKey>, _value: Entry<V>, cause: RemovalCause| {
            if cause == RemovalCause::Size {
                stats.eviction();
            }
        };
        let mut builder = moka::sync::Cache::builder().eviction_listener(listener);
        // A per-read expiry hook costs every hit; only install one when an idle timeout or a
        // per-entry TTL needs it.
        builder = if config.time_to_idle.is_some() || config.ttl_for.is_some() {
            builder.expire_after(Expiry {
                time_to_idle: config.time_to_idle,
            })
        } else {
            // Freshness is ours to decide; moka only reclaims memory, and panics when built
            // with a TTL over 1000 years, so "for ever" is clamped to that for moka alone.
            builder.time_to_live(config.ttl.min(MOKA_MAX_TTL))
        };
        builder = match &config.capacity {
            Capacity::Entries(n) => builder.max_capacity(*n),
            Capacity::Bytes(n, weigh) => {
                let weigh = weigh.clone();
                builder
                    .max_capacity(*n)
                    .weigher(move |_key, entry: &Entry<V>| weigh(&entry.value))
            }
        };
        MemoryCache {
            cache: builder.build_with_hasher(KeyHasher),
            default_ttl: config.ttl,
            time_to_idle: config.time_to_idle,
            ttl_for: config.ttl_for.clone(),
        }
    }

    /// A fresh value for `key`.
    pub(crate) fn get(&self, key: &RequestKey) -> Option<V> {
        let entry = self.cache.get(key)?;
        let now = Instant::now();
        if entry.expires.is_some_and(|expires| now >= expires) {
            return None;
        }
        if let (Some(idle), Some(last_read)) = (self.time_to_idle, &entry.last_read) {
            let age = now.saturating_duration_since(entry.created);
            let age_nanos = u64::try_from(age.as_nanos()).unwrap_or(u64::MAX);
            let last = last_read.load(Ordering::Relaxed);
            if age_nanos.saturating_sub(last) >= u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX)
            {
                return None;
            }
            last_read.fetch_max(age_nanos, Ordering::Relaxed);
        }
        Some(entry.value)
    }

    /// Stores `value` for `ttl` (from [`ttl_of`](Self::ttl_of)); a zero TTL stores nothing.
    pub(crate) fn insert(&self, key: RequestKey, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let created = Instant::now();
        let entry = Entry {
            value,
            created,
            expires: created.checked_add(ttl),
            ttl,
            last_read: self.time_to_idle.map(|_| Arc::new(AtomicU64::new(0))),
        };
        self.cache.insert(key, entry);
    }

    /// The TTL a value would be stored with.
    pub(crate) fn ttl_of(&self, value: &V) -> Duration {
        self.ttl_for
            .as_ref()
            .and_then(|f| f(value))
            .unwrap_or(self.default_ttl)
    }
}

impl<V: Clone + Send + Sync + 'static> MemoryCache<V> {
    /// Entries held now (after pending maintenance).
    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}
