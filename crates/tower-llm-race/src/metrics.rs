//! Metric names, shared by every strategy. Each carries a `strategy` label (`race`, `hedge`,
//! `fallback`, `gather`, `vote`, `route`).

use tower_llm_core::FailureKind;

/// Counter: requests a strategy received.
pub const REQUESTS: &str = "tower_llm_race_requests_total";
/// Counter: calls a strategy started to its services.
pub const ATTEMPTS: &str = "tower_llm_race_attempts_total";
/// Counter: service failures seen, labelled with the failure `kind`.
pub const FAILURES: &str = "tower_llm_race_failures_total";
/// Counter: calls dropped unfinished because another service answered first (or a timeout
/// passed).
pub const CANCELLED: &str = "tower_llm_race_cancelled_total";
/// Counter: requests for which no service answered.
pub const EXHAUSTED: &str = "tower_llm_race_exhausted_total";
/// Counter: hedged calls sent after the delay (`strategy` is always `hedge`).
pub const HEDGES: &str = "tower_llm_race_hedges_total";
/// Counter: hedges not sent because the budget was spent.
pub const HEDGE_BUDGET_EXHAUSTED: &str = "tower_llm_race_hedge_budget_exhausted_total";

/// Which strategy a metric is about; each arm below names its label as a literal, so the
/// `metrics` macros build their keys statically and a call allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strategy {
    Race,
    Hedge,
    Fallback,
    Gather,
    Vote,
    Route,
}

impl Strategy {
    const fn as_str(self) -> &'static str {
        match self {
            Strategy::Race => "race",
            Strategy::Hedge => "hedge",
            Strategy::Fallback => "fallback",
            Strategy::Gather => "gather",
            Strategy::Vote => "vote",
            Strategy::Route => "route",
        }
    }
}

macro_rules! counter_for {
    ($name:expr, $strategy:expr) => {
        match $strategy {
            Strategy::Race => metrics::counter!($name, "strategy" => "race"),
            Strategy::Hedge => metrics::counter!($name, "strategy" => "hedge"),
            Strategy::Fallback => metrics::counter!($name, "strategy" => "fallback"),
            Strategy::Gather => metrics::counter!($name, "strategy" => "gather"),
            Strategy::Vote => metrics::counter!($name, "strategy" => "vote"),
            Strategy::Route => metrics::counter!($name, "strategy" => "route"),
        }
    };
}

pub(crate) fn request(strategy: Strategy) {
    counter_for!(REQUESTS, strategy).increment(1);
}

pub(crate) fn attempts(strategy: Strategy, count: u64) {
    counter_for!(ATTEMPTS, strategy).increment(count);
}

pub(crate) fn failure(strategy: Strategy, kind: FailureKind) {
    // Failures are the uncommon path: a key built per call is fine here.
    metrics::counter!(FAILURES, "strategy" => strategy.as_str(), "kind" => kind.as_str())
        .increment(1);
}

pub(crate) fn cancelled(strategy: Strategy, count: usize) {
    if count > 0 {
        counter_for!(CANCELLED, strategy).increment(count as u64);
    }
}

pub(crate) fn exhausted(strategy: Strategy) {
    counter_for!(EXHAUSTED, strategy).increment(1);
}

pub(crate) fn hedge() {
    metrics::counter!(HEDGES, "strategy" => "hedge").increment(1);
}

pub(crate) fn hedge_budget_exhausted() {
    metrics::counter!(HEDGE_BUDGET_EXHAUSTED, "strategy" => "hedge").increment(1);
}
