//! Counters shared by every clone of a layer, and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::policy::GiveUpReason;

/// What a retry layer has done since it was built, over every service and clone it made.
///
/// ```
/// use tower_llm_retry::RetryStats;
///
/// let stats = RetryStats::default();
/// assert_eq!(stats.attempts(), stats.requests + stats.retries);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryStats {
    /// Calls made through the layer (first attempts).
    pub requests: u64,
    /// Attempts after the first, actually sent to the inner service.
    pub retries: u64,
    /// Calls that succeeded after at least one retry.
    pub recovered: u64,
    /// Failures returned to the caller, by [`GiveUpReason`]: read with
    /// [`give_ups`](Self::give_ups).
    give_ups_by_reason: [u64; 5],
    /// Retries the budget would allow right now, if the layer has a budget.
    pub budget_available: Option<u64>,
}

impl RetryStats {
    /// Every attempt sent to the inner service: requests plus retries.
    pub const fn attempts(&self) -> u64 {
        self.requests.saturating_add(self.retries)
    }

    /// Failures returned to the caller for `reason`.
    pub const fn give_ups(&self, reason: GiveUpReason) -> u64 {
        self.give_ups_by_reason[reason.index()]
    }

    /// Failures returned to the caller, for any reason.
    pub fn total_give_ups(&self) -> u64 {
        self.give_ups_by_reason.iter().sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    retries: AtomicU64,
    recovered: AtomicU64,
    give_ups: [AtomicU64; 5],
}

impl Counters {
    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn recovered(&self) {
        self.recovered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn give_up(&self, reason: GiveUpReason) {
        self.give_ups[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, requests: u64, budget_available: Option<u64>) -> RetryStats {
        RetryStats {
            requests,
            retries: self.retries.load(Ordering::Relaxed),
            recovered: self.recovered.load(Ordering::Relaxed),
            give_ups_by_reason: std::array::from_fn(|i| self.give_ups[i].load(Ordering::Relaxed)),
            budget_available,
        }
    }
}
