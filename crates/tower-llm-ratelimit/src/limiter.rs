//! What one layer value shares with every service it makes: the configuration, the clock,
//! the counters, the pause set from the handle, and the per-key states.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, Reconcile};
use crate::key_state::{KeyState, duration_ns};
use crate::key_table::KeyTable;
use crate::observe::Observe;
use crate::stats::RateLimitStats;

/// The configuration, clock and counters every key of one layer value reads.
#[derive(Debug)]
pub(crate) struct Limiter {
    pub(crate) config: Config,
    origin: Instant,
    /// The funnel every event goes through: stats, `tracing`, `metrics`.
    pub(crate) observe: Observe,
    /// Whether a response's usage is read: a tokens quota that is reconciled.
    pub(crate) wants_usage: bool,
    /// Until when every key is paused by [`RateLimitHandle::pause`](crate::RateLimitHandle::pause),
    /// in nanoseconds since `origin` (0: not paused).
    paused_until: AtomicU64,
    /// Whether the quotas live in Redis (a round trip before each call).
    remote_quotas: bool,
    /// How overloads are shared with other instances (feature `redis`).
    pub(crate) sharing: OverloadSharing,
    /// This layer value's id among the instances sharing overloads: 48 random bits (exact in
    /// Redis's Lua numbers).
    pub(crate) instance: u64,
}

/// How an adaptive limit learns of other instances' overloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OverloadSharing {
    /// It does not.
    Off,
    /// From the reply to the quota round trip every call makes.
    WithQuotas,
    /// By a background read when a call starts, at most every 100 ms per key.
    Read,
}

impl Limiter {
    pub(crate) fn new(config: Config) -> Self {
        let wants_usage = config.tokens.is_some() && config.reconcile != Reconcile::Off;
        let observe = Observe::new(config.name.clone());
        #[cfg(feature = "redis")]
        let has_redis = config.redis.is_some();
        #[cfg(not(feature = "redis"))]
        let has_redis = false;
        // A backend with no quota to keep has nothing to say before a call.
        let remote_quotas = has_redis && (config.requests.is_some() || config.tokens.is_some());
        #[cfg(feature = "redis")]
        let shared = config.adaptive.as_ref().is_some_and(|a| a.shared);
        #[cfg(not(feature = "redis"))]
        let shared = false;
        let sharing = match (has_redis && shared, remote_quotas) {
            (false, _) => OverloadSharing::Off,
            (true, true) => OverloadSharing::WithQuotas,
            (true, false) => OverloadSharing::Read,
        };
        let instance = std::hash::BuildHasher::hash_one(
            &std::hash::RandomState::new(),
            (std::process::id(), std::time::SystemTime::now()),
        ) >> 16;
        Limiter {
            config,
            origin: Instant::now(),
            observe,
            wants_usage,
            paused_until: AtomicU64::new(0),
            remote_quotas,
            sharing,
            instance,
        }
    }

    /// Nanoseconds since the limiter was made, on tokio's clock (so a paused clock works).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        // Plain u64 arithmetic: `as_nanos` goes through u128 and a fallible conversion.
        const NANOS: u64 = 1_000_000_000;
        const MAX_SECS: u64 = u64::MAX / 4 / NANOS;
        let since = Instant::now().saturating_duration_since(self.origin);
        let secs = since.as_secs();
        if secs < MAX_SECS {
            secs * NANOS + u64::from(since.subsec_nanos())
        } else {
            u64::MAX / 4
        }
    }

    pub(crate) fn instant(&self, at: u64) -> Instant {
        self.origin + Duration::from_nanos(at)
    }

    /// Until when the handle paused every key (0 or a past time: not paused).
    #[inline]
    pub(crate) fn paused_until(&self) -> u64 {
        self.paused_until.load(Ordering::Acquire)
    }

    /// Whether the quotas live in the shared store: each call asks it before starting.
    #[inline]
    pub(crate) fn remote(&self) -> bool {
        self.remote_quotas
    }

    /// Whether keys need a name in the shared store (quotas or overloads kept there).
    pub(crate) fn names_keys(&self) -> bool {
        self.remote_quotas || self.sharing != OverloadSharing::Off
    }
}

/// Everything a layer value owns, made once when the layer is built and shared by every
/// service it makes (whatever stack they land in), their clones, and its handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) keys: KeyTable,
    /// The one key of a [`NoKey`](crate::NoKey) limiter, outside the table.
    pub(crate) single: Arc<KeyState>,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        let limiter = Arc::new(Limiter::new(config));
        let single_name = limiter.names_keys().then(|| "_".to_owned());
        let single = Arc::new(KeyState::new(&limiter, single_name, true));
        Shared {
            limiter,
            keys: KeyTable::new(),
            single,
        }
    }

    pub(crate) fn stats(&self) -> RateLimitStats {
        let limiter = &self.limiter;
        let mut stats = limiter.observe.snapshot();
        let (admitted, tokens_reserved) = self.single.tally();
        stats.admitted += admitted;
        stats.tokens_reserved += tokens_reserved;
        stats.tracked_keys = self.keys.len();
        if limiter.config.counts_in_flight() {
            let (mut in_flight, single_limit) = self.single.concurrency();
            let mut lowest: Option<usize> = None;
            self.keys.for_each(|key| {
                let (calls, limit) = key.concurrency();
                in_flight += calls;
                lowest = match (lowest, limit) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            });
            stats.in_flight = in_flight;
            // No tracked key: the single key's limit (for a keyed limiter, the initial one).
            stats.concurrency_limit = lowest.or(single_limit);
        }
        let now = limiter.now();
        let until = limiter.paused_until();
        stats.paused_for = (until > now).then(|| Duration::from_nanos(until - now));
        stats
    }

    /// Pauses every key for `pause` from now (a longer pause already set stays).
    pub(crate) fn pause(&self, pause: Duration) {
        let limiter = &self.limiter;
        let until = limiter.now().saturating_add(duration_ns(pause));
        limiter.paused_until.fetch_max(until, Ordering::AcqRel);
        limiter.observe.handle_paused(pause);
    }

    /// Ends every pause (the handle's and every key's) and lets each key's first waiter look
    /// again.
    pub(crate) fn resume(&self) {
        self.limiter.paused_until.store(0, Ordering::Release);
        self.single.resume();
        self.keys.for_each(KeyState::resume);
        self.limiter.observe.handle_resumed();
    }
}
