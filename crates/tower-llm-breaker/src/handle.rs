//! A handle to read and steer one breaker from outside the service stack.

use std::sync::Arc;

use crate::breaker::Breaker;
use crate::state::{BreakerStats, State};

/// Reads and steers one breaker: its state and its counts, and the operator's controls
/// ([`force_open`](Self::force_open), [`reset`](Self::reset)). Cheap to clone; it shares the
/// breaker, so a control takes effect for every service made by the layer value, in every
/// stack, boxed or not.
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
    pub fn stats(&self) -> BreakerStats {
        self.breaker.stats()
    }

    /// Opens the breaker and holds it open until [`reset`](Self::reset): every call is
    /// refused at once with [`CircuitOpen`](tower_llm_core::CircuitOpen) (its retry hint is
    /// the base cool-down), no probe is admitted whatever the cool-down, and calls already in
    /// flight are not counted. For taking an upstream out of rotation by hand.
    ///
    /// The [`on_state_change`](crate::CircuitBreakerBuilder::on_state_change) hook sees the
    /// change (with [`StateChange::forced`](crate::StateChange::forced) set) unless the
    /// breaker was already open; [`BreakerStats::forced_open`] tells a held breaker from one on a
    /// cool-down. Forcing a breaker that is already held open does nothing.
    pub fn force_open(&self) {
        self.breaker.force_open();
    }

    /// Closes the breaker, whatever its state (a [forced open](Self::force_open) included),
    /// and clears what its policies count: the failure window, the consecutive count, the
    /// grown cool-down. Calls in flight are not counted. The running totals of [`BreakerStats`]
    /// (successes, failures, rejections, opens) are kept.
    ///
    /// The [`on_state_change`](crate::CircuitBreakerBuilder::on_state_change) hook sees the
    /// change to closed (with [`StateChange::forced`](crate::StateChange::forced) set) unless
    /// the breaker was already closed.
    pub fn reset(&self) {
        self.breaker.reset();
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
