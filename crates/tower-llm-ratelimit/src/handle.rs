//! The handle: a layer's stats and controls, reachable after the stack is boxed.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crate::limiter::Shared;
use crate::stats::RateLimitStats;

/// A handle on a [`RateLimitLayer`](crate::RateLimitLayer)'s state, from
/// [`RateLimitLayer::handle`](crate::RateLimitLayer::handle) (or
/// [`RateLimit::handle`](crate::RateLimit::handle)). Clones share it.
///
/// It sees every service the layer made, in every stack, and keeps working once they are
/// boxed or moved into a router.
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
/// use tower_llm_core::BoxError;
/// use tower_llm_ratelimit::{Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let layer = RateLimitLayer::builder().requests(Quota::per_minute(60)).build()?;
/// let handle = layer.handle();
/// let echo = service_fn(|prompt: String| async move { Ok::<_, BoxError>(prompt) });
/// let boxed: BoxCloneService<String, String, BoxError> =
///     BoxCloneService::new(ServiceBuilder::new().layer(layer).service(echo));
///
/// boxed.clone().oneshot("hi".to_owned()).await?;
/// assert_eq!(handle.stats().admitted, 1);
///
/// handle.pause(Duration::from_secs(5));
/// assert_eq!(handle.stats().paused_for, Some(Duration::from_secs(5)));
/// handle.resume();
/// assert_eq!(handle.stats().paused_for, None);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimitHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl RateLimitHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        RateLimitHandle { shared }
    }

    /// A snapshot of the counters and state shared by every service of the layer.
    pub fn stats(&self) -> RateLimitStats {
        self.shared.stats()
    }

    /// The adaptive concurrency limit of one key now: `key` as the
    /// [key function](crate::RateLimitBuilder::key_fn) returns it (the same type). `None`
    /// when the limiter has no adaptive limit or does not track that key (it has no call
    /// in flight or waiting, and was forgotten or never seen: it would start at the
    /// initial limit). For a limiter without a key function, see
    /// [`RateLimitStats::concurrency_limit`].
    pub fn concurrency_limit<K: Hash + Eq + 'static>(&self, key: &K) -> Option<usize> {
        self.shared.keys.find(key)?.concurrency().1
    }

    /// Sends nothing, on any key, for `pause` from now: new and queued calls wait (and are
    /// refused if that would pass their [`max_wait`](crate::RateLimitBuilder::max_wait)),
    /// calls in flight go on. A longer pause already set stays. For an operator (a
    /// provider's incident, a known maintenance window) or a program that learned of a limit
    /// some other way.
    pub fn pause(&self, pause: Duration) {
        self.shared.pause(pause);
    }

    /// Ends every pause at once: the one set with [`pause`](Self::pause) and every key's pause
    /// after a 429. Queued calls go as soon as their other limits allow.
    ///
    /// There is no reset of the quotas: the provider still counts what was sent, and a
    /// limiter that forgot it would send what the provider refuses.
    pub fn resume(&self) {
        self.shared.resume();
    }
}
