//! A cache shared between instances, behind the in-memory one.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tower_llm_core::RequestKey;

/// A shared cache. Failures and timeouts are the backend's to count and swallow: a lookup that
/// cannot answer in time is a miss, a write that cannot land is skipped.
pub(crate) trait Remote<V>: Send + Sync {
    /// The stored answer, or `None` (miss, error or timeout).
    fn get(&self, key: RequestKey) -> Pin<Box<dyn Future<Output = Option<V>> + Send>>;

    /// Stores an answer in the background.
    fn put(&self, key: RequestKey, value: &V, ttl: Duration);
}
