//! The crate's one event funnel: a breaker calls one method per event, and this module
//! decides what goes to `tracing` (feature `tracing`) and to `metrics` (feature `metrics`).
//! With both features off every method is empty. It is separate from the
//! [`on_state_change`](crate::CircuitBreakerBuilder::on_state_change) hook, which is the
//! user's own.
//!
//! Only the breaker's `name`, its key (per-key breakers: the key function's value, which the
//! docs ask to keep bounded, such as a provider or model) and closed sets of words are
//! recorded; never a request or an answer.

use std::sync::Arc;
use std::time::Duration;

#[cfg(any(feature = "tracing", feature = "metrics"))]
use crate::state::State;
use crate::state::StateChange;

/// Gauge: the breaker's state, 0 closed, 1 open, 2 half-open.
#[cfg(feature = "metrics")]
pub(crate) const STATE_GAUGE: &str = "tower_llm_breaker_state";
/// Counter: state changes, labelled `from` and `to`.
#[cfg(feature = "metrics")]
pub(crate) const TRANSITIONS: &str = "tower_llm_breaker_transitions_total";
/// Counter: calls refused without touching the inner service.
#[cfg(feature = "metrics")]
pub(crate) const REJECTED: &str = "tower_llm_breaker_rejected_total";

/// What opened a breaker, for the warning.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Trip {
    /// This many failures in a row.
    Consecutive(usize),
    /// `failures` of the last `calls` in the window failed.
    FailureRate { failures: usize, calls: usize },
    /// `slow` of the last `calls` in the window were slow.
    SlowRate { slow: usize, calls: usize },
    /// Half-open probes failed.
    ProbeFailed,
}

#[cfg(feature = "tracing")]
impl Trip {
    fn cause(self) -> &'static str {
        match self {
            Trip::Consecutive(_) => "consecutive_failures",
            Trip::FailureRate { .. } => "failure_rate",
            Trip::SlowRate { .. } => "slow_rate",
            Trip::ProbeFailed => "probe_failed",
        }
    }
}

/// Every `(from, to)` a breaker can take, in the order of [`transition_index`].
#[cfg(feature = "metrics")]
const TRANSITION_PAIRS: [(State, State); 5] = [
    (State::Closed, State::Open),
    (State::Open, State::HalfOpen),
    (State::HalfOpen, State::Closed),
    (State::HalfOpen, State::Open),
    (State::Open, State::Closed),
];

#[cfg(feature = "metrics")]
fn transition_index(from: State, to: State) -> Option<usize> {
    TRANSITION_PAIRS
        .iter()
        .position(|&(f, t)| f == from && t == to)
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Metrics {
    state: metrics::Gauge,
    rejected: metrics::Counter,
    transitions: [metrics::Counter; 5],
}

#[cfg(feature = "metrics")]
impl Metrics {
    fn new(name: &str, key: Option<&str>) -> Self {
        describe();
        let mut labels = vec![metrics::Label::new("name", name.to_owned())];
        if let Some(key) = key {
            labels.push(metrics::Label::new("key", key.to_owned()));
        }
        let transitions = TRANSITION_PAIRS.map(|(from, to)| {
            let mut labels = labels.clone();
            labels.push(metrics::Label::new("from", from.as_str()));
            labels.push(metrics::Label::new("to", to.as_str()));
            metrics::counter!(TRANSITIONS, labels)
        });
        let state = metrics::gauge!(STATE_GAUGE, labels.iter());
        state.set(State::Closed.as_gauge());
        Metrics {
            state,
            rejected: metrics::counter!(REJECTED, labels.iter()),
            transitions,
        }
    }
}

/// Describes every series once per process, to the recorder in force when the first
/// breaker is made.
#[cfg(feature = "metrics")]
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use metrics::{Unit, describe_counter, describe_gauge};
        describe_gauge!(
            STATE_GAUGE,
            Unit::Count,
            "Circuit breaker state: 0 closed, 1 open, 2 half-open."
        );
        describe_counter!(
            TRANSITIONS,
            Unit::Count,
            "Circuit breaker state changes, by from and to state."
        );
        describe_counter!(
            REJECTED,
            Unit::Count,
            "Calls refused by an open (or full half-open) breaker without touching the inner service."
        );
    });
}

/// The funnel of one breaker (one per key for per-key breakers).
#[derive(Debug)]
pub(crate) struct Observe {
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    name: Arc<str>,
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    key: Option<Arc<str>>,
    #[cfg(feature = "metrics")]
    metrics: Metrics,
}

impl Observe {
    /// Registers the breaker's series now, so that no call allocates labels.
    pub(crate) fn new(name: Arc<str>, key: Option<Arc<str>>) -> Self {
        Observe {
            #[cfg(feature = "metrics")]
            metrics: Metrics::new(&name, key.as_deref()),
            name,
            key,
        }
    }

    /// A call was refused; the next probe may come in `retry_in`.
    #[inline]
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    pub(crate) fn rejected(&self, retry_in: Duration) {
        #[cfg(feature = "metrics")]
        self.metrics.rejected.increment(1);
        #[cfg(feature = "tracing")]
        tracing::debug!(
            name = &*self.name,
            key = self.key.as_deref(),
            retry_in_s = retry_in.as_secs_f64(),
            "breaker: call rejected",
        );
    }

    /// The handle reset a breaker that was closed already: its counts are cleared.
    #[inline]
    pub(crate) fn reset_closed(&self) {
        #[cfg(feature = "tracing")]
        tracing::info!(
            name = &*self.name,
            key = self.key.as_deref(),
            from = State::Closed.as_str(),
            "breaker: reset",
        );
    }

    /// The breaker changed state; `trip` says why, when it opened on its own.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    pub(crate) fn transition(&self, change: &StateChange, trip: Option<Trip>) {
        #[cfg(feature = "metrics")]
        {
            self.metrics.state.set(change.to.as_gauge());
            if let Some(i) = transition_index(change.from, change.to) {
                self.metrics.transitions[i].increment(1);
            }
        }
        #[cfg(feature = "tracing")]
        self.trace_transition(change, trip);
    }

    #[cfg(feature = "tracing")]
    fn trace_transition(&self, change: &StateChange, trip: Option<Trip>) {
        let name = &*self.name;
        let key = self.key.as_deref();
        let from = change.from.as_str();
        match (change.to, change.forced) {
            (State::Open, true) => {
                tracing::warn!(name, key, from, "breaker: forced open");
            }
            (State::Open, false) => {
                let cooldown_s = change.cooldown.map(|d| d.as_secs_f64());
                let cause = trip.map(Trip::cause);
                let (consecutive_failures, window_calls, failure_rate, slow_rate) = match trip {
                    Some(Trip::Consecutive(run)) => (Some(run), None, None, None),
                    Some(Trip::FailureRate { failures, calls }) => {
                        (None, Some(calls), Some(ratio(failures, calls)), None)
                    }
                    Some(Trip::SlowRate { slow, calls }) => {
                        (None, Some(calls), None, Some(ratio(slow, calls)))
                    }
                    Some(Trip::ProbeFailed) | None => (None, None, None, None),
                };
                tracing::warn!(
                    name,
                    key,
                    from,
                    cause,
                    consecutive_failures,
                    failure_rate,
                    slow_rate,
                    window_calls,
                    cooldown_s,
                    "breaker: opened",
                );
            }
            (State::HalfOpen, _) => {
                tracing::info!(name, key, from, "breaker: half-open");
            }
            (State::Closed, true) => {
                tracing::info!(name, key, from, "breaker: reset");
            }
            (State::Closed, false) => {
                tracing::info!(name, key, from, "breaker: closed");
            }
        }
    }
}

/// `part / whole` as a fraction; window counts are small enough to be exact in an `f64`.
#[cfg(feature = "tracing")]
#[allow(clippy::cast_precision_loss)]
fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
