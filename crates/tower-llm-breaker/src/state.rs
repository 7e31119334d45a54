//! What a breaker reports about itself: its state, its changes and its counts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls are refused at once with [`CircuitOpen`](tower_llm_core::CircuitOpen) until the
    /// cool-down ends.
    Open,
    /// A bounded number of probe calls go through; the rest are refused.
    HalfOpen,
}

impl State {
    /// A short snake_case name, stable, for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The value of the `tower_llm_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub const fn as_gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open => 1.0,
            State::HalfOpen => 2.0,
        }
    }

    pub(crate) const fn from_bits(bits: u64) -> State {
        match bits & 0b11 {
            0 => State::Closed,
            1 => State::Open,
            _ => State::HalfOpen,
        }
    }

    pub(crate) const fn bits(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change, as given to the [`on_state_change`] hook.
///
/// Changes made from a handle ([`force_open`], [`reset`]) are reported too, with
/// [`forced`](StateChange::forced) set.
///
/// [`on_state_change`]: crate::CircuitBreakerBuilder::on_state_change
/// [`force_open`]: crate::CircuitBreakerHandle::force_open
/// [`reset`]: crate::CircuitBreakerHandle::reset
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateChange {
    /// The breaker's [name](crate::CircuitBreakerBuilder::name).
    pub breaker: Arc<str>,
    /// The key of a per-key breaker (its `Display` form), `None` for a single breaker.
    pub key: Option<Arc<str>>,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// When it happened. An open breaker becomes half-open lazily, at the first call after
    /// its cool-down, so that change is stamped with that call's time.
    pub at: Instant,
    /// When entering [`State::Open`] on a trip: the cool-down before the next probe (`None`
    /// when forced open: no cool-down ends that).
    pub cooldown: Option<Duration>,
    /// Whether a handle made this change ([`force_open`] or [`reset`]) rather than the
    /// calls' outcomes.
    ///
    /// [`force_open`]: crate::CircuitBreakerHandle::force_open
    /// [`reset`]: crate::CircuitBreakerHandle::reset
    pub forced: bool,
}

/// A snapshot of one breaker, from
/// [`CircuitBreakerHandle::stats`](crate::CircuitBreakerHandle::stats).
///
/// Counts run from the breaker's creation (a [`reset`] leaves them); the window figures are
/// those the rate policies see right now.
///
/// [`reset`]: crate::CircuitBreakerHandle::reset
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BreakerStats {
    /// The state a call would meet now: an open breaker whose cool-down has ended reports
    /// [`State::HalfOpen`], since the next call is a probe.
    pub state: State,
    /// How long it has been in that state.
    pub time_in_state: Duration,
    /// When the breaker is open on a cool-down: how long until it admits a probe (`None`
    /// while [forced open](BreakerStats::forced_open)).
    pub next_probe_in: Option<Duration>,
    /// Calls that succeeded.
    pub successes: u64,
    /// Calls whose failure counted against the upstream.
    pub failures: u64,
    /// Calls whose outcome said nothing about the upstream's health (client errors, 429
    /// unless counted, cancellations...).
    pub ignored: u64,
    /// Calls slower than the slow-call threshold (when that policy is on).
    pub slow: u64,
    /// Calls refused while open or half-open.
    pub rejected: u64,
    /// How many times the breaker opened (forced opens included).
    pub opened: u64,
    /// Upstream failures in a row, as the consecutive policy sees them (0 when that policy
    /// is off).
    pub consecutive_failures: usize,
    /// Calls in the sliding window (0 when no rate policy is on).
    pub window_calls: usize,
    /// Failures in the sliding window.
    pub window_failures: usize,
    /// Slow calls in the sliding window.
    pub window_slow: usize,
    /// Probes currently admitted and not yet finished (half-open only).
    pub probes_in_flight: usize,
    /// Whether the breaker is held open by
    /// [`CircuitBreakerHandle::force_open`](crate::CircuitBreakerHandle::force_open) until a
    /// [`reset`](crate::CircuitBreakerHandle::reset).
    pub forced_open: bool,
}

/// The former name of [`BreakerStats`].
#[deprecated(
    since = "0.1.0",
    note = "renamed `BreakerStats`, like the other layers' snapshots"
)]
pub type Stats = BreakerStats;
