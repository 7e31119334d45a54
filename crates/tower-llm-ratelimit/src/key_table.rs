//! The bounded table of per-key states, and the names keys have in a shared store.

use std::any::Any;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex};

use crate::key_state::KeyState;
use crate::limiter::Limiter;

type Bucket = Vec<(Box<dyn Any + Send + Sync>, Arc<KeyState>)>;

/// The bounded table of per-key states. Keys of any type are kept type-erased (compared by
/// downcasting), so the service type does not depend on the request type.
#[derive(Debug)]
pub(crate) struct KeyTable {
    map: Mutex<(HashMap<u64, Bucket>, usize)>,
    hasher: RandomState,
}

impl KeyTable {
    pub(crate) fn new() -> Self {
        KeyTable {
            map: Mutex::new((HashMap::new(), 0)),
            hasher: RandomState::new(),
        }
    }

    /// The state of `key`, made if new; `None` when the table is full of busy keys.
    pub(crate) fn get<K: Hash + Eq + Send + Sync + 'static>(
        &self,
        key: K,
        limiter: &Arc<Limiter>,
        now: u64,
    ) -> Option<Arc<KeyState>> {
        let hash = self.hasher.hash_one(&key);
        let mut guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (map, len) = &mut *guard;
        if let Some(bucket) = map.get(&hash)
            && let Some((_, state)) = bucket
                .iter()
                .find(|(k, _)| k.downcast_ref::<K>() == Some(&key))
        {
            return Some(state.clone());
        }
        if *len >= limiter.config.max_keys {
            // Forget keys that nobody holds and whose state is as good as fresh.
            map.retain(|_, bucket| {
                bucket.retain(|(_, state)| {
                    Arc::strong_count(state) > 1 || !state.at_rest(&limiter.config, now)
                });
                !bucket.is_empty()
            });
            *len = map.values().map(Vec::len).sum();
            if *len >= limiter.config.max_keys {
                return None;
            }
        }
        let remote_key = limiter.names_keys().then(|| remote_name(&key));
        let state = Arc::new(KeyState::new(limiter, remote_key, false));
        map.entry(hash)
            .or_default()
            .push((Box::new(key), state.clone()));
        *len += 1;
        Some(state)
    }

    /// The state of `key` if it is tracked (never made).
    pub(crate) fn find<K: Hash + Eq + 'static>(&self, key: &K) -> Option<Arc<KeyState>> {
        let hash = self.hasher.hash_one(key);
        let guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .0
            .get(&hash)?
            .iter()
            .find(|(k, _)| k.downcast_ref::<K>() == Some(key))
            .map(|(_, state)| state.clone())
    }

    /// Runs `f` on every tracked key's state (outside the table's lock).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&KeyState)) {
        let states: Vec<Arc<KeyState>> = {
            let guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
            guard.0.values().flatten().map(|(_, s)| s.clone()).collect()
        };
        for state in states {
            f(&state);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// A name for `key` that every instance derives alike: 128 bits of two fixed-key hashes.
pub(crate) fn remote_name<K: Hash>(key: &K) -> String {
    // Instances share a budget only if they name its Redis keys alike, so the name must not
    // depend on the toolchain: std's `DefaultHasher` is unspecified across Rust releases.
    // HighwayHash under a fixed, public key is specified; the name needs no secrecy.
    let mut written = Written::default();
    key.hash(&mut written);
    remote_name_key()
        .fingerprint(written.0.as_slice())
        .to_string()
}

fn remote_name_key() -> tower_llm_core::FingerprintKey {
    tower_llm_core::FingerprintKey::from_secret(b"tower-llm-ratelimit/redis-key-name/v1")
}

/// Collects the bytes `Hash::hash` writes, to hash them with a specified algorithm.
#[derive(Default)]
struct Written(Vec<u8>);

impl std::hash::Hasher for Written {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn finish(&self) -> u64 {
        remote_name_key().fingerprint(self.0.as_slice()).as_u128() as u64
    }
}

#[cfg(test)]
mod remote_name_tests {
    use super::remote_name;

    #[test]
    fn names_are_stable_across_builds() {
        // Pinned: a change here splits the budget of instances running different versions.
        let name = remote_name(&"tenant-a");
        assert_eq!(name.len(), 32);
        assert_eq!(name, remote_name(&"tenant-a".to_string()));
        assert_ne!(name, remote_name(&"tenant-b"));
        assert_eq!(name, PINNED);
    }

    const PINNED: &str = "7e8f6147f2dfca602775a7026e152ded";
}
