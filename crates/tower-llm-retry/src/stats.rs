//! Counters shared by every service of a layer, the handle that reads them, and their snapshot.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tower_llm_core::AttemptBudget;

use crate::policy::GiveUpReason;

/// What a retry layer has done since it was built, over every service it made, read from
/// [`RetryHandle::stats`].
///
/// ```
/// use tower_llm_retry::{GiveUpReason, RetryStats};
///
/// let stats = RetryStats::default();
/// assert_eq!(stats.attempts(), stats.requests + stats.retries);
/// assert_eq!(stats.give_ups.get(GiveUpReason::PastDeadline), stats.give_ups.past_deadline);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryStats {
    /// Calls made through the layer (first attempts).
    pub requests: u64,
    /// Attempts after the first, actually sent to the inner service.
    pub retries: u64,
    /// Calls that succeeded after at least one retry.
    pub recovered: u64,
    /// Failures returned to the caller, by why the layer gave up.
    pub give_ups: GiveUps,
    /// Retries the budget would allow right now, if the layer has a budget (its own or a
    /// shared one).
    pub budget_available: Option<u64>,
}

impl RetryStats {
    /// Every attempt sent to the inner service: requests plus retries.
    pub const fn attempts(&self) -> u64 {
        self.requests.saturating_add(self.retries)
    }
}

/// Failures a retry layer returned to the caller, one count per [`GiveUpReason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GiveUps {
    /// [`GiveUpReason::NotRetryable`]: client errors, exhausted quotas, unknown failures.
    pub not_retryable: u64,
    /// [`GiveUpReason::AttemptsExhausted`]: the last allowed attempt failed.
    pub attempts_exhausted: u64,
    /// [`GiveUpReason::HintTooLong`]: the server asked for a wait over `max_retry_after`.
    pub hint_too_long: u64,
    /// [`GiveUpReason::PastDeadline`]: the wait would have ended past the deadline.
    pub past_deadline: u64,
    /// [`GiveUpReason::BudgetExhausted`]: the retry budget was spent.
    pub budget_exhausted: u64,
}

impl GiveUps {
    /// The count for `reason`.
    pub const fn get(&self, reason: GiveUpReason) -> u64 {
        match reason {
            GiveUpReason::NotRetryable => self.not_retryable,
            GiveUpReason::AttemptsExhausted => self.attempts_exhausted,
            GiveUpReason::HintTooLong => self.hint_too_long,
            GiveUpReason::PastDeadline => self.past_deadline,
            GiveUpReason::BudgetExhausted => self.budget_exhausted,
        }
    }

    /// Failures returned to the caller, for any reason.
    pub const fn total(&self) -> u64 {
        self.not_retryable
            .saturating_add(self.attempts_exhausted)
            .saturating_add(self.hint_too_long)
            .saturating_add(self.past_deadline)
            .saturating_add(self.budget_exhausted)
    }
}

/// Counts requests with one shared counter.
#[derive(Debug, Default)]
pub(crate) struct RequestCounter(AtomicU64);

impl RequestCounter {
    /// Counts one request and returns the new total.
    #[inline]
    pub(crate) fn increment(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: RequestCounter,
    retries: AtomicU64,
    recovered: AtomicU64,
    not_retryable: AtomicU64,
    attempts_exhausted: AtomicU64,
    hint_too_long: AtomicU64,
    past_deadline: AtomicU64,
    budget_exhausted: AtomicU64,
}

impl Counters {
    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn recovered(&self) {
        self.recovered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn give_up(&self, reason: GiveUpReason) {
        let counter = match reason {
            GiveUpReason::NotRetryable => &self.not_retryable,
            GiveUpReason::AttemptsExhausted => &self.attempts_exhausted,
            GiveUpReason::HintTooLong => &self.hint_too_long,
            GiveUpReason::PastDeadline => &self.past_deadline,
            GiveUpReason::BudgetExhausted => &self.budget_exhausted,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, requests: u64, budget_available: Option<u64>) -> RetryStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RetryStats {
            requests,
            retries: load(&self.retries),
            recovered: load(&self.recovered),
            give_ups: GiveUps {
                not_retryable: load(&self.not_retryable),
                attempts_exhausted: load(&self.attempts_exhausted),
                hint_too_long: load(&self.hint_too_long),
                past_deadline: load(&self.past_deadline),
                budget_exhausted: load(&self.budget_exhausted),
            },
            budget_available,
        }
    }
}

/// Reads a [`RetryLayer`](crate::RetryLayer)'s statistics from outside the stack: before it
/// is built, after it is boxed, from another task. Cheap to clone; every clone reads the same
/// counters as the layer, its clones and every service they made.
#[derive(Clone)]
pub struct RetryHandle {
    counters: Arc<Counters>,
    budget: Option<AttemptBudget>,
}

impl RetryHandle {
    pub(crate) fn new(counters: Arc<Counters>, budget: Option<AttemptBudget>) -> Self {
        RetryHandle { counters, budget }
    }

    /// A snapshot of the counters, taken now.
    pub fn stats(&self) -> RetryStats {
        let requests = self.counters.requests.get();
        let budget_available = self.budget.as_ref().map(AttemptBudget::available);
        self.counters.snapshot(requests, budget_available)
    }

    /// The budget the layer draws on (its own, or the shared one it was handed), for its
    /// [`stats`](AttemptBudget::stats): who spent what.
    pub fn budget(&self) -> Option<&AttemptBudget> {
        self.budget.as_ref()
    }

    /// Whether two handles read the same layer's state.
    pub fn same_layer(&self, other: &RetryHandle) -> bool {
        Arc::ptr_eq(&self.counters, &other.counters)
    }
}

impl fmt::Debug for RetryHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryHandle")
            .field("stats", &self.stats())
            .finish()
    }
}
