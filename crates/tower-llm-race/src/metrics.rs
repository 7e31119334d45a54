//! Metric names, shared by every strategy (feature `metrics`). Each series carries a `name`
//! label (the builder's [`name`](crate::RaceLayer::name), default the strategy's) and a
//! `strategy` label (`race`, `hedge`, `fallback`, `gather`, `vote`, `route`); failures add
//! `kind`.

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
/// Counter: extra calls (a fallback's next service, a hedge or failover leg) not made because
/// the attempt budget was spent, the hedge's own or a shared one.
pub const BUDGET_EXHAUSTED: &str = "tower_llm_race_budget_exhausted_total";
/// Counter: requests that ended because the call's deadline passed (also counted in
/// [`EXHAUSTED`]).
pub const DEADLINE: &str = "tower_llm_race_deadline_total";
