//! A handle to read one breaker from outside the service stack.

use std::sync::Arc;

use crate::breaker::Breaker;
use crate::state::{State, Stats};

/// Reads one breaker: its state and its counts. Cheap to clone; it shares the breaker.
///
/// Get one from [`CircuitBreakerLayer::handle`](crate::CircuitBreakerLayer::handle),
/// [`CircuitBreaker::handle`](crate::CircuitBreaker::handle) or, per key,
/// [`KeyedCircuitBreakerHandle::get`](crate::KeyedCircuitBreakerHandle::get).
#[derive(Clone, Debug)]
pub struct CircuitBreakerHandle {
    pub(crate) breaker: Arc<Breaker>,
}

impl CircuitBreakerHandle {
    /// The state a call would meet now (an open breaker past its cool-down reads as
    /// half-open: the next call is a probe).
    pub fn state(&self) -> State {
        self.breaker.state()
    }

    /// A snapshot of the state, the time in it and the counts.
    pub fn stats(&self) -> Stats {
        self.breaker.stats()
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        self.breaker.name()
    }

    /// The key of a per-key breaker, in its `Display` form.
    pub fn key(&self) -> Option<&str> {
        self.breaker.key()
    }

    /// Whether two handles read the same breaker.
    pub fn same_breaker(&self, other: &CircuitBreakerHandle) -> bool {
        Arc::ptr_eq(&self.breaker, &other.breaker)
    }
}
