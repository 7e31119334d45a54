//! Client keys kept as keyed digests, compared in constant time; provider keys that never
//! print.
//!
//! The gateway never keeps a client key itself: at start each key is hashed with HighwayHash
//! under a random per-process key (256-bit digests), and a presented key is hashed the same
//! way and compared with every stored digest in constant time. A memory dump, a `Debug` or a
//! log line therefore holds no client key, and the time a refusal takes says nothing about how
//! close a guess was.

use std::fmt;
use std::sync::Arc;

use highway::{HighwayHash, HighwayHasher, Key};
use subtle::ConstantTimeEq;

/// A secret read from the configuration or the environment; `Debug` prints `****`.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself, for the one place that sends it (a provider's auth header).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

type Digest = [u64; 4];

/// The client keys of a configuration, as digests, each with its tenant.
#[derive(Clone)]
pub(crate) struct ClientKeys {
    hash_key: Key,
    entries: Vec<(Digest, Arc<str>)>,
}

impl ClientKeys {
    pub(crate) fn new() -> Self {
        let mut bytes = [0u8; 32];
        if getrandom::fill(&mut bytes).is_err() {
            // std's hash seeds come from the OS too, with their own fallbacks.
            use std::hash::{BuildHasher, Hasher};
            for chunk in bytes.chunks_exact_mut(8) {
                let seed = std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish();
                chunk.copy_from_slice(&seed.to_le_bytes());
            }
        }
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *word = u64::from_le_bytes(b);
        }
        ClientKeys {
            hash_key: Key(words),
            entries: Vec::new(),
        }
    }

    fn digest(&self, key: &str) -> Digest {
        let mut hasher = HighwayHasher::new(self.hash_key);
        hasher.append(key.as_bytes());
        hasher.finalize256()
    }

    /// Adds `key` for `tenant`; if the key is already there, returns the index of the first
    /// entry holding it and adds nothing.
    pub(crate) fn insert(&mut self, key: &str, tenant: &str) -> Option<usize> {
        let digest = self.digest(key);
        if let Some(i) = self.position(&digest) {
            return Some(i);
        }
        self.entries.push((digest, Arc::from(tenant)));
        None
    }

    fn position(&self, digest: &Digest) -> Option<usize> {
        // Every entry is compared, whatever matched before: the time is the same for any key.
        let mut found = None;
        for (i, (stored, _)) in self.entries.iter().enumerate() {
            if bool::from(stored.as_slice().ct_eq(digest.as_slice())) {
                found = Some(i);
            }
        }
        found
    }

    /// The tenant of `key`, if it is one of the configured keys.
    pub(crate) fn tenant(&self, key: &str) -> Option<Arc<str>> {
        let digest = self.digest(key);
        self.position(&digest).map(|i| self.entries[i].1.clone())
    }
}

impl fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenants: Vec<&str> = self.entries.iter().map(|(_, t)| &**t).collect();
        f.debug_struct("ClientKeys")
            .field("keys", &self.entries.len())
            .field("tenants", &tenants)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_finds_its_tenant_and_nothing_prints_it() {
        let mut keys = ClientKeys::new();
        assert_eq!(keys.insert("sk-alpha-secret", "alpha"), None);
        assert_eq!(keys.insert("sk-beta-secret", "beta"), None);
        assert_eq!(keys.insert("sk-alpha-secret", "again"), Some(0));
        assert_eq!(keys.tenant("sk-beta-secret").as_deref(), Some("beta"));
        assert_eq!(keys.tenant("sk-alpha-secre"), None);
        assert_eq!(keys.tenant(""), None);
        let debug = format!("{keys:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert_eq!(format!("{:?}", Secret::new("sk-x".into())), "****");
    }
}
