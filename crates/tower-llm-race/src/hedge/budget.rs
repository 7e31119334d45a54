//! The cap on extra load: hedges as a fraction of requests.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ConfigError;

/// Fixed-point unit: one hedge costs this many budget units.
const UNIT: u64 = 1000;

/// How many hedged calls a [`Hedge`](super::Hedge) may add: each request earns `ratio` of a
/// hedge, and at most `burst` unspent hedges are kept. With `ratio = 0.1` hedging adds at most
/// 10 % more calls over time, plus a burst of `burst`; a slow upstream can no longer double
/// the load on the others.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HedgeBudget {
    ratio: f64,
    burst: usize,
}

impl HedgeBudget {
    /// Hedges earn `ratio` per request, saved up to `burst`; the budget starts full.
    pub const fn new(ratio: f64, burst: usize) -> Self {
        HedgeBudget { ratio, burst }
    }

    /// The fraction of requests that may be hedged over time.
    pub const fn ratio(&self) -> f64 {
        self.ratio
    }

    /// The most hedges saved up.
    pub const fn burst(&self) -> usize {
        self.burst
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.ratio.is_finite() || self.ratio < 0.0 {
            return Err(ConfigError::new(
                "race",
                "budget",
                format!("ratio must be a finite number >= 0, got {}", self.ratio),
            ));
        }
        if self.burst == 0 && self.ratio < 1.0 {
            return Err(ConfigError::new(
                "race",
                "budget",
                "burst must be at least 1 unless ratio is at least 1, or no hedge could ever be sent",
            ));
        }
        Ok(())
    }
}

impl Default for HedgeBudget {
    /// 10 % of requests, bursts of 10.
    fn default() -> Self {
        HedgeBudget::new(0.1, 10)
    }
}

/// The budget's live balance, shared by every clone of a hedge.
#[derive(Debug)]
pub(crate) struct Balance {
    units: AtomicU64,
    deposit: u64,
    cap: u64,
}

impl Balance {
    pub(crate) fn new(budget: HedgeBudget) -> Self {
        let deposit = (budget.ratio * UNIT as f64).round() as u64;
        let burst = u64::try_from(budget.burst).unwrap_or(u64::MAX);
        let cap = burst.saturating_mul(UNIT).max(deposit);
        Balance {
            units: AtomicU64::new(cap),
            deposit,
            cap,
        }
    }

    /// A request arrived.
    pub(crate) fn deposit(&self) {
        let _ = self
            .units
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |units| {
                (units < self.cap).then(|| units.saturating_add(self.deposit).min(self.cap))
            });
    }

    /// Takes one hedge from the budget, if there is one.
    pub(crate) fn withdraw(&self) -> bool {
        self.units
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |units| {
                units.checked_sub(UNIT)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Over any sequence of requests and hedge attempts, hedges granted never exceed
        /// the burst plus `ratio` per request.
        #[test]
        fn hedges_stay_within_ratio_and_burst(
            ratio in 0.0f64..2.0,
            burst in 1usize..20,
            events in proptest::collection::vec(any::<bool>(), 0..500),
        ) {
            let balance = Balance::new(HedgeBudget::new(ratio, burst));
            let (mut requests, mut granted) = (0u64, 0u64);
            for is_request in events {
                if is_request {
                    requests += 1;
                    balance.deposit();
                } else if balance.withdraw() {
                    granted += 1;
                }
                // Deposits are kept in thousandths of a hedge.
                let earned = (ratio * UNIT as f64).round() / UNIT as f64;
                let bound = (burst as f64).max(earned) + earned * requests as f64 + 1e-9;
                prop_assert!((granted as f64) <= bound);
            }
        }
    }

    #[test]
    fn a_spent_budget_refills_with_requests() {
        let balance = Balance::new(HedgeBudget::new(0.5, 1));
        assert!(balance.withdraw());
        assert!(!balance.withdraw());
        balance.deposit();
        assert!(!balance.withdraw());
        balance.deposit();
        assert!(balance.withdraw());
    }

    #[test]
    fn invalid_budgets_name_the_knob() {
        let err = HedgeBudget::new(f64::NAN, 1)
            .validate()
            .expect_err("NaN ratio");
        assert_eq!(err.knob(), "budget");
        assert!(HedgeBudget::new(0.1, 0).validate().is_err());
        assert!(HedgeBudget::new(1.0, 0).validate().is_ok());
    }
}
