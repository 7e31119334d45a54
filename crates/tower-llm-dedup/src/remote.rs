//! A cache shared between instances, behind the in-memory one.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tower_llm_core::RequestKey;

use crate::error::ConfigError;
use crate::observe::{Observe, RemoteFailure};

/// What a shared cache said.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Lookup<V> {
    Hit(V),
    Miss,
    /// It could not answer in time (down, slow, undecodable): the caller goes on without it.
    Failed(RemoteFailure),
}

/// A shared cache. It never fails a request: a lookup that cannot answer in time is
/// [`Lookup::Failed`], a write that cannot land is skipped (and counted).
pub(crate) trait Remote<V>: Send + Sync {
    /// The stored answer.
    fn get(&self, key: RequestKey) -> Pin<Box<dyn Future<Output = Lookup<V>> + Send>>;

    /// Refuses a configuration that cannot work; called when the layer is built.
    fn check(&self) -> Result<(), ConfigError>;

    /// How long it is left alone after a failure: its warnings are spaced as far apart.
    fn cool_down(&self) -> Duration;

    /// Stores an answer in the background.
    fn put(&self, key: RequestKey, value: &V, ttl: Duration, observe: Observe);
}
