//! The in-memory response cache: moka for capacity, tokio time for freshness.
//!
//! Freshness is checked against `tokio::time::Instant`, so TTLs follow tokio's clock (and a
//! paused clock in tests); moka is given the same durations on its own clock only to reclaim
//! memory. A stale entry is never served: it reads as a miss and the next completed call
//! replaces it.
//!
//! Hot entries are also held in a small direct-mapped front table, read under a read lock,
//! because moka's own read path costs several times more than everything else on a hit.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant as StdInstant};

use moka::notification::RemovalCause;
use tokio::time::Instant;
use tower_llm_core::RequestKey;

use crate::handle::CacheOps;
use crate::observe::Observe;

/// The longest TTL moka accepts (it panics when built with more).
const MOKA_MAX_TTL: Duration = Duration::from_secs(1_000 * 365 * 24 * 3600);

/// How many bytes an entry costs, for a cache bounded by bytes.
pub(crate) type Weigher<V> = Arc<dyn Fn(&V) -> u32 + Send + Sync>;

/// A per-entry TTL chosen from the value; `None` keeps the default.
pub(crate) type TtlFor<V> = Arc<dyn Fn(&V) -> Option<Duration> + Send + Sync>;

/// The bound on the cache.
pub(crate) enum Capacity<V> {
    Entries(usize),
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

/// What moka (and the front table) hold for a key. Shared behind an `Arc`: a front-table hit
/// clones only the value, and eviction can mark the very entry the front table holds.
struct Entry<V> {
    key: RequestKey,
    value: V,
    created: Instant,
    /// `created + ttl`; `None` when that is past the end of the clock (never stale).
    expires: Option<Instant>,
    ttl: Duration,
    /// Nanoseconds after `created` of the last read, for the idle timeout (only read when
    /// there is one).
    last_read: AtomicU64,
    /// Set by moka's removal listener: the entry left moka (evicted, expired or replaced), so
    /// the front table must not serve it.
    removed: AtomicBool,
    /// The cache's generation when the entry was stored; a [`clear`](MemoryCache::clear)
    /// since makes it unservable at once, before moka gets round to dropping it.
    generation: u64,
}

struct Expiry {
    time_to_idle: Option<Duration>,
}

impl<V> moka::Expiry<RequestKey, Arc<Entry<V>>> for Expiry {
    fn expire_after_create(
        &self,
        _key: &RequestKey,
        value: &Arc<Entry<V>>,
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
        value: &Arc<Entry<V>>,
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
        value: &Arc<Entry<V>>,
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

/// Direct-mapped slots in front of moka for the entries read most recently.
///
/// moka's read path (epoch pin, hash-table probe, read log, amortised maintenance) costs
/// about 900 instructions; a hit here is a read lock, a key compare and the value's clone.
/// moka stays the cache of record: it bounds the size, and its removal listener marks and
/// drops a removed entry from here, so the front table never keeps an entry alive past
/// moka or serves one moka no longer holds. Every [`TOUCH_EVERY`]th front hit on a thread
/// also reads through moka, so its recency and frequency estimates still see hot keys.
struct Front<V> {
    slots: Box<[Slot<V>]>,
    mask: usize,
}

/// One slot, on its own cache line so that readers of neighbouring slots do not contend.
#[repr(align(64))]
struct Slot<V>(RwLock<Option<Arc<Entry<V>>>>);

/// The largest front table, in slots.
const FRONT_SLOTS_MAX: usize = 1024;

/// One front hit in this many also reads through moka (per thread).
const TOUCH_EVERY: u32 = 32;

thread_local! {
    static FRONT_HITS: Cell<u32> = const { Cell::new(0) };
}

/// Whether this front hit should also be reported to moka.
fn touch_due() -> bool {
    FRONT_HITS.with(|hits| {
        let n = hits.get().wrapping_add(1);
        hits.set(n);
        n % TOUCH_EVERY == 0
    })
}

enum FrontRead<V> {
    Hit(V),
    Absent,
}

impl<V: Clone> Front<V> {
    fn new(capacity: &Capacity<V>) -> Self {
        let wanted = match capacity {
            Capacity::Entries(n) => *n,
            Capacity::Bytes(..) => FRONT_SLOTS_MAX,
        };
        let len = wanted.clamp(8, FRONT_SLOTS_MAX).next_power_of_two();
        Front {
            slots: (0..len).map(|_| Slot(RwLock::new(None))).collect(),
            mask: len - 1,
        }
    }

    fn slot(&self, key: &RequestKey) -> &Slot<V> {
        // The key is a keyed hash: its low bits are already uniform.
        &self.slots[(key.as_u128() as usize) & self.mask]
    }

    /// The value for `key` if this table holds it, fresh by `fresh`, and moka has not
    /// removed it. Never waits on a writer.
    fn get(&self, key: &RequestKey, fresh: impl FnOnce(&Entry<V>) -> bool) -> FrontRead<V> {
        let Ok(guard) = self.slot(key).0.try_read() else {
            return FrontRead::Absent;
        };
        match guard.as_deref() {
            Some(entry)
                if entry.key == *key && !entry.removed.load(Ordering::Acquire) && fresh(entry) =>
            {
                FrontRead::Hit(entry.value.clone())
            }
            _ => FrontRead::Absent,
        }
    }

    /// Remembers an entry just read from moka, unless its slot is busy or moka has removed it
    /// meanwhile. The removal listener sets `removed` before it takes the slot's lock, so
    /// either this sees the flag or the listener finds the entry here and drops it.
    fn offer(&self, entry: &Arc<Entry<V>>) {
        let Ok(mut guard) = self.slot(&entry.key).0.try_write() else {
            return;
        };
        if !entry.removed.load(Ordering::Acquire) {
            *guard = Some(entry.clone());
        }
    }

    /// Drops `entry` from its slot (moka removed it).
    fn remove(&self, entry: &Arc<Entry<V>>) {
        entry.removed.store(true, Ordering::Release);
        let mut guard = self
            .slot(&entry.key)
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.as_ref().is_some_and(|held| Arc::ptr_eq(held, entry)) {
            *guard = None;
        }
    }

    /// Empties every slot (the cache was cleared).
    fn clear(&self) {
        for slot in self.slots.iter() {
            let mut guard = slot
                .0
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(entry) = guard.take() {
                entry.removed.store(true, Ordering::Release);
            }
        }
    }

    /// Drops whatever the slot holds for `key` (a new value was stored for it).
    fn forget(&self, key: &RequestKey) {
        let mut guard = self
            .slot(key)
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.as_ref().is_some_and(|held| held.key == *key) {
            *guard = None;
        }
    }
}

pub(crate) struct MemoryCache<V> {
    cache: moka::sync::Cache<RequestKey, Arc<Entry<V>>, KeyHasher>,
    /// `None` with an idle timeout: moka's idle clock only advances on its own reads, so
    /// front hits would let it expire an entry that is being read.
    front: Option<Arc<Front<V>>>,
    /// Values stored so far. A caller that missed can tell, from an unchanged count, that no
    /// value was stored since, and skip looking again (see [`stored`](Self::stored)).
    stored: AtomicU64,
    /// Bumped by [`clear`](Self::clear): entries stored under an older generation are stale.
    generation: AtomicU64,
    default_ttl: Duration,
    time_to_idle: Option<Duration>,
    ttl_for: Option<TtlFor<V>>,
}

impl<V: Clone + Send + Sync + 'static> MemoryCache<V> {
    pub(crate) fn new(config: &CacheConfig<V>, observe: Observe) -> Self {
        let front = config
            .time_to_idle
            .is_none()
            .then(|| Arc::new(Front::new(&config.capacity)));
        let listener_front = front.clone();
        let listener = move |_key: Arc<RequestKey>, entry: Arc<Entry<V>>, cause: RemovalCause| {
            if cause == RemovalCause::Size {
                observe.eviction();
            }
            match &listener_front {
                Some(front) => front.remove(&entry),
                None => entry.removed.store(true, Ordering::Release),
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
            Capacity::Entries(n) => builder.max_capacity(u64::try_from(*n).unwrap_or(u64::MAX)),
            Capacity::Bytes(n, weigh) => {
                let weigh = weigh.clone();
                builder
                    .max_capacity(*n)
                    .weigher(move |_key, entry: &Arc<Entry<V>>| weigh(&entry.value))
            }
        };
        MemoryCache {
            cache: builder.build_with_hasher(KeyHasher),
            front,
            stored: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            default_ttl: config.ttl,
            time_to_idle: config.time_to_idle,
            ttl_for: config.ttl_for.clone(),
        }
    }

    /// A fresh value for `key`.
    pub(crate) fn get(&self, key: &RequestKey) -> Option<V> {
        let now = Instant::now();
        if let Some(front) = &self.front
            && let FrontRead::Hit(value) = front.get(key, |entry| self.fresh(entry, now))
        {
            if touch_due() {
                // Only for moka's recency and frequency estimates; the value is in hand.
                drop(self.cache.get(key));
            }
            return Some(value);
        }
        let entry = self.cache.get(key)?;
        if !self.fresh(&entry, now) {
            return None;
        }
        if let Some(front) = &self.front {
            front.offer(&entry);
        }
        Some(entry.value.clone())
    }

    /// Whether `entry` may be served at `now` (and, with an idle timeout, records the read).
    fn fresh(&self, entry: &Entry<V>, now: Instant) -> bool {
        if entry.expires.is_some_and(|expires| now >= expires)
            || entry.generation != self.generation.load(Ordering::Acquire)
        {
            return false;
        }
        if let Some(idle) = self.time_to_idle {
            let age = now.saturating_duration_since(entry.created);
            let age_nanos = u64::try_from(age.as_nanos()).unwrap_or(u64::MAX);
            let last = entry.last_read.load(Ordering::Relaxed);
            if age_nanos.saturating_sub(last) >= u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX)
            {
                return false;
            }
            entry.last_read.fetch_max(age_nanos, Ordering::Relaxed);
        }
        true
    }

    /// Stores `value` for `ttl` (from [`ttl_of`](Self::ttl_of)); a zero TTL stores nothing.
    pub(crate) fn insert(&self, key: RequestKey, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let created = Instant::now();
        let entry = Entry {
            key,
            value,
            created,
            expires: created.checked_add(ttl),
            ttl,
            last_read: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            generation: self.generation.load(Ordering::Acquire),
        };
        self.cache.insert(key, Arc::new(entry));
        // The front table may still hold the value this one replaces. moka's listener marks
        // that one too, but when it runs is moka's business; this does not depend on it.
        if let Some(front) = &self.front {
            front.forget(&key);
        }
        self.stored.fetch_add(1, Ordering::Release);
    }

    /// How many values have been stored. Read it before a lookup that misses; if it is the
    /// same later, nothing was stored in between and the lookup would miss again. (A value
    /// stored before the read is visible to the lookup: moka's insert is.)
    pub(crate) fn stored(&self) -> u64 {
        self.stored.load(Ordering::Acquire)
    }

    /// A fresh value for `key`, unless nothing was stored since `stored` was read (then the
    /// lookup that read it found nothing and this one would not either).
    pub(crate) fn get_if_stored_since(&self, key: &RequestKey, stored: u64) -> Option<V> {
        if self.stored() == stored {
            return None;
        }
        self.get(key)
    }

    /// The TTL a value would be stored with.
    pub(crate) fn ttl_of(&self, value: &V) -> Duration {
        self.ttl_for
            .as_ref()
            .and_then(|f| f(value))
            .unwrap_or(self.default_ttl)
    }
}

impl<V: Clone + Send + Sync + 'static> CacheOps for MemoryCache<V> {
    fn entry_count(&self) -> usize {
        self.cache.run_pending_tasks();
        // Bounded by `max_entries`, a `usize`.
        usize::try_from(self.cache.entry_count()).unwrap_or(usize::MAX)
    }

    fn clear(&self) {
        // First the generation: from here on no entry stored before is served, wherever it
        // is (moka, the front table, an insert racing this call). Then the memory.
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
        if let Some(front) = &self.front {
            front.clear();
        }
    }

    fn invalidate(&self, key: &RequestKey) {
        if let Some(entry) = self.cache.remove(key) {
            match &self.front {
                Some(front) => front.remove(&entry),
                None => entry.removed.store(true, Ordering::Release),
            }
        }
        if let Some(front) = &self.front {
            front.forget(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::observe::DEFAULT_NAME;

    fn cache(capacity: Capacity<u64>, ttl: Duration) -> MemoryCache<u64> {
        let config = CacheConfig {
            capacity,
            ttl,
            time_to_idle: None,
            ttl_for: None,
        };
        MemoryCache::new(&config, Observe::new(DEFAULT_NAME.into(), Duration::ZERO))
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn the_front_table_never_serves_what_moka_dropped() {
        let cache = cache(Capacity::Entries(2), HOUR);
        for i in 0..200u128 {
            let key = RequestKey::from_u128(i % 40);
            cache.insert(key, i as u64, HOUR);
            // Read some keys often so that the front table holds them while moka evicts.
            for hot in 0..4u128 {
                cache.get(&RequestKey::from_u128(hot));
            }
            cache.get(&key);
        }
        cache.cache.run_pending_tasks();
        assert!(cache.cache.entry_count() <= 2);
        let mut served = 0;
        for i in 0..40u128 {
            let key = RequestKey::from_u128(i);
            if let Some(value) = cache.get(&key) {
                served += 1;
                let held = cache
                    .cache
                    .get(&key)
                    .expect("served only while moka holds it");
                assert_eq!(held.value, value);
            }
        }
        assert!(served <= 2, "{served}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_value_replaces_the_front_copy() {
        let cache = cache(Capacity::Entries(100), HOUR);
        let key = RequestKey::from_u128(7);
        cache.insert(key, 1, HOUR);
        assert_eq!(cache.get(&key), Some(1));
        assert_eq!(cache.get(&key), Some(1), "now from the front table");
        cache.insert(key, 2, HOUR);
        assert_eq!(cache.get(&key), Some(2));
        cache.cache.run_pending_tasks();
        assert_eq!(cache.get(&key), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_front_copy_goes_stale_on_tokio_time() {
        let cache = cache(Capacity::Entries(100), Duration::from_secs(10));
        let key = RequestKey::from_u128(7);
        cache.insert(key, 1, Duration::from_secs(10));
        assert_eq!(cache.get(&key), Some(1));
        assert_eq!(cache.get(&key), Some(1));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(cache.get(&key), Some(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cache.get(&key), None);
    }

    #[test]
    fn keys_sharing_a_slot_do_not_mix() {
        let cache = cache(Capacity::Entries(8), HOUR);
        let front = cache
            .front
            .as_ref()
            .expect("a front table without idle timeout");
        let slots = front.slots.len() as u128;
        let (a, b) = (RequestKey::from_u128(3), RequestKey::from_u128(3 + slots));
        cache.insert(a, 1, HOUR);
        cache.insert(b, 2, HOUR);
        for _ in 0..10 {
            assert_eq!(cache.get(&a), Some(1));
            assert_eq!(cache.get(&b), Some(2));
        }
    }

    /// An entry moka evicts is dropped from its front slot too, not just marked: the front
    /// table never keeps a value alive after moka let it go.
    #[tokio::test(start_paused = true)]
    async fn an_evicted_value_is_not_kept_alive_by_the_front_table() {
        let config = CacheConfig {
            capacity: Capacity::Entries(1),
            ttl: HOUR,
            time_to_idle: None,
            ttl_for: None,
        };
        let cache = MemoryCache::<Arc<u64>>::new(
            &config,
            Observe::new(DEFAULT_NAME.into(), Duration::ZERO),
        );
        let slots = cache.front.as_ref().expect("a front table").slots.len() as u128;
        let cold = RequestKey::from_u128(0);
        let value = Arc::new(0);
        cache.insert(cold, value.clone(), HOUR);
        assert_eq!(cache.get(&cold).as_deref(), Some(&0));
        assert_eq!(
            cache.get(&cold).as_deref(),
            Some(&0),
            "now from the front table"
        );
        // Hotter keys in the other slots push it out of moka.
        for round in 0..50u64 {
            for k in 1..slots {
                let key = RequestKey::from_u128(k);
                cache.insert(key, Arc::new(round), HOUR);
                for _ in 0..4 {
                    cache.get(&key);
                }
            }
            cache.cache.run_pending_tasks();
        }
        assert!(!cache.cache.contains_key(&cold), "moka evicted it");
        assert_eq!(cache.get(&cold), None);
        assert_eq!(Arc::strong_count(&value), 1, "only this test holds it");
    }

    /// Writers replace values while readers hammer the same keys through the front table;
    /// once they stop, every key reads as the last value stored for it, or as absent when
    /// moka evicted it, never as an older value.
    #[test]
    fn concurrent_writers_and_readers_end_on_the_last_value() {
        const KEYS: u128 = 16;
        let cache = Arc::new(cache(Capacity::Entries(8), HOUR));
        let last: Arc<Vec<Mutex<Option<u64>>>> =
            Arc::new((0..KEYS).map(|_| Mutex::new(None)).collect());
        let version = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (cache, last, version) = (cache.clone(), last.clone(), version.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .expect("runtime");
                    let _guard = rt.enter();
                    for i in 0..5_000u128 {
                        let k = (i * 7 + t) % KEYS;
                        let key = RequestKey::from_u128(k);
                        if i % 5 == 0 {
                            let mut slot = last[k as usize].lock().expect("not poisoned");
                            let v = version.fetch_add(1, Ordering::Relaxed);
                            cache.insert(key, v, HOUR);
                            *slot = Some(v);
                        } else {
                            cache.get(&key);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        cache.cache.run_pending_tasks();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        for k in 0..KEYS {
            let key = RequestKey::from_u128(k);
            let expected = *last[k as usize].lock().expect("not poisoned");
            if let Some(value) = cache.get(&key) {
                assert_eq!(Some(value), expected, "key {k}");
                assert!(cache.cache.contains_key(&key));
            }
        }
    }
}
