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

pub(crate) fn request(strategy: &'static str) {
    metrics::counter!(REQUESTS, "strategy" => strategy).increment(1);
}

pub(crate) fn attempts(strategy: &'static str, count: u64) {
    metrics::counter!(ATTEMPTS, "strategy" => strategy).increment(count);
}

pub(crate) fn failure(strategy: &'static str, kind: FailureKind) {
    metrics::counter!(FAILURES, "strategy" => strategy, "kind" => kind.as_str()).increment(1);
}

pub(crate) fn cancelled(strategy: &'static str, count: usize) {
    if count > 0 {
        metrics::counter!(CANCELLED, "strategy" => strategy).increment(count as u64);
    }
}

pub(crate) fn exhausted(strategy: &'static str) {
    metrics::counter!(EXHAUSTED, "strategy" => strategy).increment(1);
}

pub(crate) fn counter_hedge() {
    metrics::counter!(HEDGES, "strategy" => "hedge").increment(1);
}

pub(crate) fn counter_budget_exhausted() {
    metrics::counter!(HEDGE_BUDGET_EXHAUSTED, "strategy" => "hedge").increment(1);
}
