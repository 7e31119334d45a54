//! The crate's one event funnel: every strategy calls one method per event, and this module
//! decides what goes to `tracing` (feature `tracing`), to `metrics` (feature `metrics`) and to
//! the counters behind [`StrategyHandle::stats`]. With both features off only the counters
//! remain.
//!
//! Only the strategy's `name`, service indexes, counts, delays and failure kinds (a closed
//! set) are recorded; never a request, an answer or an error's text.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower_llm_core::FailureKind;

use crate::error::ServiceFailure;

#[cfg(feature = "metrics")]
use crate::metrics::{
    ATTEMPTS, BUDGET_EXHAUSTED, CANCELLED, DEADLINE, EXHAUSTED, FAILURES, HEDGE_BUDGET_EXHAUSTED,
    HEDGES, REQUESTS,
};

/// Which strategy a funnel belongs to: the `strategy` label and the default `name`.
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
    pub(crate) const fn as_str(self) -> &'static str {
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

/// A snapshot of one layer value's counters, from [`StrategyHandle::stats`]. Totals since the
/// layer value was built, over every service it made. Fields that do not apply to a strategy
/// stay 0.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StrategyStats {
    /// Requests received.
    pub requests: u64,
    /// Requests that ended with an answer.
    pub answered: u64,
    /// Requests that ended because every service tried failed (or, for gather, too few
    /// answered; for vote, no quorum).
    pub failed: u64,
    /// Calls started to services (legs).
    pub legs_started: u64,
    /// Legs that failed.
    pub legs_failed: u64,
    /// Legs dropped unfinished because another answered first or a timeout passed.
    pub legs_cancelled: u64,
    /// Fallback: times the chain moved on to the next service after a failure.
    pub moved_on: u64,
    /// Gather: answers that carried at least one failed or missing result.
    pub partial: u64,
    /// Vote: successful answers that were counted as ballots (with `answered` and
    /// `legs_started`, how much of the work agreed to a decision).
    pub ballots: u64,
    /// Vote: decisions reached as soon as the quorum agreed, before every service answered
    /// (the rest cancelled).
    pub decided_early: u64,
    /// Fallback and hedge: extra calls not made because the attempt budget was spent.
    pub budget_exhausted: u64,
    /// Fallback and hedge: requests that ended because the call's deadline passed (also
    /// counted in `failed`).
    pub ended_at_deadline: u64,
}

#[derive(Debug, Default)]
struct Counts {
    requests: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    legs_started: AtomicU64,
    legs_failed: AtomicU64,
    legs_cancelled: AtomicU64,
    moved_on: AtomicU64,
    partial: AtomicU64,
    ballots: AtomicU64,
    decided_early: AtomicU64,
    // Hedge only, read by `HedgeHandle::stats`.
    answered_by_first: AtomicU64,
    hedges: AtomicU64,
    failovers: AtomicU64,
    budget_exhausted: AtomicU64,
    ended_at_deadline: AtomicU64,
}

/// The hedge's counters, for [`HedgeStats`](crate::HedgeStats).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HedgeCounts {
    pub(crate) requests: u64,
    pub(crate) hedges: u64,
    pub(crate) failovers: u64,
    pub(crate) budget_exhausted: u64,
    pub(crate) ended_at_deadline: u64,
    pub(crate) answered_by_first: u64,
    pub(crate) answered_by_others: u64,
    pub(crate) failed: u64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Metrics {
    labels: [metrics::Label; 2],
    requests: metrics::Counter,
    attempts: metrics::Counter,
    cancelled: metrics::Counter,
    exhausted: metrics::Counter,
    hedges: metrics::Counter,
    hedge_budget_exhausted: metrics::Counter,
    budget_exhausted: metrics::Counter,
    deadline: metrics::Counter,
}

#[cfg(feature = "metrics")]
impl Metrics {
    fn new(name: &str, strategy: Strategy) -> Self {
        describe();
        let labels = [
            metrics::Label::new("name", name.to_owned()),
            metrics::Label::new("strategy", strategy.as_str()),
        ];
        let hedge = strategy == Strategy::Hedge;
        let extra = hedge || strategy == Strategy::Fallback;
        Metrics {
            budget_exhausted: if extra {
                metrics::counter!(BUDGET_EXHAUSTED, labels.iter())
            } else {
                metrics::Counter::noop()
            },
            deadline: if extra {
                metrics::counter!(DEADLINE, labels.iter())
            } else {
                metrics::Counter::noop()
            },
            requests: metrics::counter!(REQUESTS, labels.iter()),
            attempts: metrics::counter!(ATTEMPTS, labels.iter()),
            cancelled: metrics::counter!(CANCELLED, labels.iter()),
            exhausted: metrics::counter!(EXHAUSTED, labels.iter()),
            hedges: if hedge {
                metrics::counter!(HEDGES, labels.iter())
            } else {
                metrics::Counter::noop()
            },
            hedge_budget_exhausted: if hedge {
                metrics::counter!(HEDGE_BUDGET_EXHAUSTED, labels.iter())
            } else {
                metrics::Counter::noop()
            },
            labels,
        }
    }
}

/// Describes every series once per process, to the recorder in force when the first layer is
/// built.
#[cfg(feature = "metrics")]
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use metrics::{Unit, describe_counter};
        describe_counter!(REQUESTS, Unit::Count, "Requests a strategy received.");
        describe_counter!(
            ATTEMPTS,
            Unit::Count,
            "Calls a strategy started to its services."
        );
        describe_counter!(
            FAILURES,
            Unit::Count,
            "Service failures seen, by failure kind."
        );
        describe_counter!(
            CANCELLED,
            Unit::Count,
            "Calls dropped unfinished because another service answered first or a timeout passed."
        );
        describe_counter!(
            EXHAUSTED,
            Unit::Count,
            "Requests for which no service answered."
        );
        describe_counter!(
            HEDGES,
            Unit::Count,
            "Hedged calls sent after the hedge delay."
        );
        describe_counter!(
            HEDGE_BUDGET_EXHAUSTED,
            Unit::Count,
            "Hedges not sent because the hedge budget was spent."
        );
        describe_counter!(
            BUDGET_EXHAUSTED,
            Unit::Count,
            "Extra calls (fallback steps, hedge and failover legs) not made because the attempt budget was spent."
        );
        describe_counter!(
            DEADLINE,
            Unit::Count,
            "Requests that ended because the call's deadline passed."
        );
    });
}

/// The failures' kinds, comma-separated, formatted only when an event is recorded.
#[cfg(feature = "tracing")]
struct Kinds<'a>(&'a [ServiceFailure]);

#[cfg(feature = "tracing")]
impl std::fmt::Display for Kinds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(failure.kind().as_str())?;
        }
        Ok(())
    }
}

/// The funnel of one layer value, shared by its clones and every service it makes.
#[derive(Debug)]
pub(crate) struct Observe {
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    name: Cow<'static, str>,
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    strategy: Strategy,
    counts: Counts,
    #[cfg(feature = "metrics")]
    metrics: Metrics,
}

impl Observe {
    /// Registers the layer's series now, so that no call allocates labels.
    pub(crate) fn new(strategy: Strategy, name: Option<Cow<'static, str>>) -> Arc<Self> {
        let name = name.unwrap_or(Cow::Borrowed(strategy.as_str()));
        Arc::new(Observe {
            #[cfg(feature = "metrics")]
            metrics: Metrics::new(&name, strategy),
            name,
            strategy,
            counts: Counts::default(),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn stats(&self) -> StrategyStats {
        let c = &self.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StrategyStats {
            requests: get(&c.requests),
            answered: get(&c.answered),
            failed: get(&c.failed),
            legs_started: get(&c.legs_started),
            legs_failed: get(&c.legs_failed),
            legs_cancelled: get(&c.legs_cancelled),
            moved_on: get(&c.moved_on),
            partial: get(&c.partial),
            ballots: get(&c.ballots),
            decided_early: get(&c.decided_early),
            budget_exhausted: get(&c.budget_exhausted),
            ended_at_deadline: get(&c.ended_at_deadline),
        }
    }

    pub(crate) fn hedge_counts(&self) -> HedgeCounts {
        let c = &self.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let answered = get(&c.answered);
        let answered_by_first = get(&c.answered_by_first);
        HedgeCounts {
            requests: get(&c.requests),
            hedges: get(&c.hedges),
            failovers: get(&c.failovers),
            budget_exhausted: get(&c.budget_exhausted),
            ended_at_deadline: get(&c.ended_at_deadline),
            answered_by_first,
            answered_by_others: answered.saturating_sub(answered_by_first),
            failed: get(&c.failed),
        }
    }

    /// A request came in.
    #[inline]
    pub(crate) fn request(&self) {
        add(&self.counts.requests, 1);
        #[cfg(feature = "metrics")]
        self.metrics.requests.increment(1);
    }

    /// `count` legs were started.
    #[inline]
    pub(crate) fn legs_started(&self, count: usize) {
        add(&self.counts.legs_started, count as u64);
        #[cfg(feature = "metrics")]
        self.metrics.attempts.increment(count as u64);
    }

    /// A leg failed with `kind`.
    pub(crate) fn leg_failed(&self, index: usize, kind: FailureKind) {
        add(&self.counts.legs_failed, 1);
        #[cfg(feature = "metrics")]
        {
            // Failures are the uncommon path: a key built per call is fine here.
            let [name, strategy] = self.metrics.labels.clone();
            metrics::counter!(
                FAILURES,
                [name, strategy, metrics::Label::new("kind", kind.as_str())].iter()
            )
            .increment(1);
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(
            name = %self.name,
            strategy = self.strategy.as_str(),
            service = index,
            kind = kind.as_str(),
            "service failed"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (index, kind);
    }

    /// `count` unfinished legs were dropped (losers cancelled).
    #[inline]
    pub(crate) fn cancelled(&self, count: usize) {
        if count == 0 {
            return;
        }
        add(&self.counts.legs_cancelled, count as u64);
        #[cfg(feature = "metrics")]
        self.metrics.cancelled.increment(count as u64);
        #[cfg(feature = "tracing")]
        tracing::debug!(
            name = %self.name,
            strategy = self.strategy.as_str(),
            cancelled = count,
            "losers cancelled"
        );
    }

    /// The request got an answer.
    #[inline]
    pub(crate) fn answered(&self) {
        add(&self.counts.answered, 1);
    }

    /// A hedge was answered with a success by service `index`.
    #[inline]
    pub(crate) fn answered_by(&self, index: usize) {
        add(&self.counts.answered, 1);
        if index == 0 {
            add(&self.counts.answered_by_first, 1);
        }
    }

    /// A hedge ended with an error its classifier accepted as the caller's answer: not a
    /// success to count, so it counts as failed.
    pub(crate) fn answered_with_error(&self) {
        add(&self.counts.failed, 1);
    }

    /// Every hedge call in flight failed: the next service is sent at once.
    pub(crate) fn failed_over(&self) {
        add(&self.counts.failovers, 1);
    }

    /// Gather answered with some results missing or failed.
    pub(crate) fn partial(&self) {
        add(&self.counts.partial, 1);
    }

    /// Vote counted a ballot.
    pub(crate) fn ballot(&self) {
        add(&self.counts.ballots, 1);
    }

    /// Vote decided before every service answered.
    pub(crate) fn decided_early(&self) {
        add(&self.counts.decided_early, 1);
    }

    /// Fallback moves from service `from` (which failed with `kind`) to service `to`.
    pub(crate) fn moved_on(&self, from: usize, to: usize, kind: FailureKind) {
        add(&self.counts.moved_on, 1);
        #[cfg(feature = "tracing")]
        tracing::info!(
            name = %self.name,
            strategy = self.strategy.as_str(),
            from,
            to,
            kind = kind.as_str(),
            "falling back to the next service"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (from, to, kind);
    }

    /// No service answered; `failures` are what each one did.
    pub(crate) fn exhausted(&self, services: usize, failures: &[ServiceFailure]) {
        add(&self.counts.failed, 1);
        #[cfg(feature = "metrics")]
        self.metrics.exhausted.increment(1);
        #[cfg(feature = "tracing")]
        tracing::warn!(
            name = %self.name,
            strategy = self.strategy.as_str(),
            services,
            kinds = %Kinds(failures),
            "all services failed"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (services, failures);
    }

    /// Hedge leg `leg` was sent `delay` after the request.
    pub(crate) fn hedge_fired(&self, leg: usize, delay: Duration) {
        add(&self.counts.hedges, 1);
        #[cfg(feature = "metrics")]
        self.metrics.hedges.increment(1);
        #[cfg(feature = "tracing")]
        tracing::debug!(
            name = %self.name,
            strategy = self.strategy.as_str(),
            leg,
            delay_ms = delay.as_secs_f64() * 1e3,
            "hedge fired"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (leg, delay);
    }

    /// An extra call (a fallback's next service, a hedge or failover leg) was not made: the
    /// attempt budget, a shared one or the hedge's own, was spent.
    pub(crate) fn budget_exhausted(&self, shared: bool) {
        add(&self.counts.budget_exhausted, 1);
        #[cfg(feature = "metrics")]
        {
            self.metrics.budget_exhausted.increment(1);
            self.metrics.hedge_budget_exhausted.increment(1);
        }
        #[cfg(feature = "tracing")]
        tracing::warn!(
            name = %self.name,
            strategy = self.strategy.as_str(),
            spender = self.strategy.as_str(),
            budget = if shared { "shared" } else { "own" },
            "budget exhausted"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = shared;
    }

    /// The call's deadline passed before any service answered; `failures` lists what was
    /// tried, the calls cut at the deadline included.
    pub(crate) fn deadline_passed(&self, services: usize, failures: &[ServiceFailure]) {
        add(&self.counts.failed, 1);
        add(&self.counts.ended_at_deadline, 1);
        #[cfg(feature = "metrics")]
        {
            self.metrics.exhausted.increment(1);
            self.metrics.deadline.increment(1);
        }
        #[cfg(feature = "tracing")]
        tracing::warn!(
            name = %self.name,
            strategy = self.strategy.as_str(),
            services,
            tried = failures.len(),
            kinds = %Kinds(failures),
            "deadline passed"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (services, failures);
    }
}

/// A handle on one [`RaceLayer`](crate::RaceLayer), [`FallbackLayer`](crate::FallbackLayer),
/// [`GatherLayer`](crate::GatherLayer), [`VoteLayer`](crate::VoteLayer) or
/// [`RouteLayer`](crate::RouteLayer) value: its clones and every service they make share it,
/// so it reads the same counters before and after the stack is built and boxed.
#[derive(Clone, Debug)]
pub struct StrategyHandle {
    observe: Arc<Observe>,
}

impl StrategyHandle {
    pub(crate) fn new(observe: &Arc<Observe>) -> Self {
        StrategyHandle {
            observe: Arc::clone(observe),
        }
    }

    /// The layer's name (the `name` label and field).
    pub fn name(&self) -> &str {
        self.observe.name()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StrategyStats {
        self.observe.stats()
    }
}
