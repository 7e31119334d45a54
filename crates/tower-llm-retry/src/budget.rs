//! The retry budget: retries as a fraction of recent requests, with a floor, shared by every
//! clone of a layer and its services.
//!
//! Each request earns `ratio` of a retry; each retry spends one. Earnings and spending expire
//! after `window`, tracked in ten slots; `min_per_second × window` retries are always
//! available on top, so a quiet service can still retry. During a total outage, then, retries
//! within any window are at most `ratio × requests + floor`, and upstream load stays within
//! `(1 + ratio)` of offered load plus the floor, however many attempts each call may make.
//!
//! Why not tower's `TpsBudget`: it takes a mutex and reads the clock on every deposit (the
//! success path), rounds the ratio to `1 / n` (0.3 becomes 1/3, 0.4 becomes 1/2, so the cap is
//! looser than configured), and checks the balance and withdraws in two steps, so concurrent
//! withdrawals can overdraw it. Here a request costs one relaxed atomic increment (and, one
//! request in 64, a non-blocking attempt to advance the window), earnings are computed exactly
//! in millionths of a retry, and withdrawals are serialised under a lock only retries take.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::layer::config_error;
use tower_llm_core::ConfigError;

/// One retry, in the budget's units; a request earns `ratio * UNIT`.
const UNIT: u128 = 1_000_000;
const SLOTS: usize = 10;
/// The success path tries to advance the window once every this many requests.
const TICK_EVERY: u64 = 64;

/// Configuration of a retry budget: how many retries the layer may make, as a fraction of the
/// requests it saw recently, with a floor.
///
/// Each request earns `ratio` of a retry, each retry spends one; both expire after the window
/// (kept in ten slots), and `min_per_second × window` retries are always available. In a
/// total outage, upstream attempts within a window stay under `(1 + ratio) × requests +
/// floor`. The budget lives in the layer's shared state: every service the layer builds and
/// every clone draw on it. A call dropped while waiting to retry gives its retry back.
///
/// tower's `TpsBudget` does the same job but rounds the ratio to `1 / n` (0.4 allows 0.5),
/// can be overdrawn by concurrent withdrawals (it checks, then subtracts), and takes a mutex
/// and reads the clock on every deposit, which is the success path. This budget counts in
/// millionths of a retry, serialises withdrawals, and costs a request one relaxed atomic
/// increment.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_retry::RetryBudget;
///
/// // At most one retry per ten requests over the last 30 s, plus 2 retries a second.
/// let budget = RetryBudget::new(0.1)
///     .window(Duration::from_secs(30))
///     .min_per_second(2);
/// assert_eq!(budget.floor(), 60);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    ratio: f64,
    window: Duration,
    min_per_second: u32,
}

impl RetryBudget {
    /// Retries up to `ratio` of the requests seen in the window (0.2: one retry per five
    /// requests), over a 10 s window with a floor of 10 retries a second.
    pub const fn new(ratio: f64) -> Self {
        RetryBudget {
            ratio,
            window: Duration::from_secs(10),
            min_per_second: 10,
        }
    }

    /// How long a request's earnings and a retry's spending count. Between 100 ms and one
    /// hour.
    pub const fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Retries always available, whatever the traffic: `min_per_second × window` per window.
    pub const fn min_per_second(mut self, min_per_second: u32) -> Self {
        self.min_per_second = min_per_second;
        self
    }

    /// The fraction of requests that may be retried.
    pub const fn ratio(&self) -> f64 {
        self.ratio
    }

    /// The retries always available within one window.
    pub fn floor(&self) -> u64 {
        let retries = self.window.as_secs_f64() * f64::from(self.min_per_second);
        // A float-to-int `as` saturates; the window is bounded, so this is exact enough.
        retries as u64
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(self.ratio.is_finite() && (0.0..=100.0).contains(&self.ratio)) {
            return Err(config_error(
                "budget.ratio",
                "must be a number between 0 and 100",
            ));
        }
        if self.window < Duration::from_millis(100) || self.window > Duration::from_secs(3600) {
            return Err(config_error(
                "budget.window",
                "must be between 100 ms and one hour",
            ));
        }
        Ok(())
    }
}

impl Default for RetryBudget {
    /// 20% of requests over 10 s, with a floor of 10 retries a second (Finagle's defaults,
    /// which tower's `TpsBudget` also uses).
    fn default() -> Self {
        RetryBudget::new(0.2)
    }
}

/// The live budget. The request count lives outside, in the layer's counters, so the success
/// path pays one increment for both the statistics and the budget.
#[derive(Debug)]
pub(crate) struct BudgetState {
    earn: u128,
    floor: u128,
    slot_len: Duration,
    origin: Instant,
    ledger: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    /// The slot in which the current earnings and spending are booked.
    epoch: u64,
    /// Requests already booked into a slot; later ones are pending.
    booked_requests: u64,
    /// Requests booked per slot.
    requests: [u64; SLOTS],
    /// Retries spent per slot.
    retries: [u64; SLOTS],
}

impl BudgetState {
    pub(crate) fn new(config: &RetryBudget) -> Self {
        // Truncated, so the budget never allows more than the configured ratio.
        let earn = (config.ratio * UNIT as f64) as u128;
        BudgetState {
            earn,
            floor: u128::from(config.floor()) * UNIT,
            slot_len: config.window / SLOTS as u32,
            origin: Instant::now(),
            ledger: Mutex::new(Ledger::default()),
        }
    }

    /// Called with the request count after each request; once in a while advances the window
    /// so that pending requests are booked near the time they were made.
    #[inline]
    pub(crate) fn on_request(&self, requests: u64) {
        if requests.is_multiple_of(TICK_EVERY) {
            // Never wait: whoever holds the lock is advancing the window anyway.
            if let Ok(mut ledger) = self.ledger.try_lock() {
                ledger.advance(self.epoch_now(), requests);
            }
        }
    }

    /// Spends one retry if the budget allows it. `requests` is the current request count.
    /// Dropping the returned [`Withdrawal`] before [`keep`](Withdrawal::keep) gives it back.
    pub(crate) fn withdraw(self: &Arc<Self>, requests: u64) -> Option<Withdrawal> {
        let epoch = self.epoch_now();
        let mut ledger = self.ledger();
        ledger.advance(epoch, requests);
        if ledger.balance(self.earn, self.floor, requests) >= UNIT as i128 {
            let slot = ledger.slot();
            ledger.retries[slot] += 1;
            Some(Withdrawal {
                budget: Some(Arc::clone(self)),
                epoch: ledger.epoch,
            })
        } else {
            None
        }
    }

    fn refund(&self, epoch: u64) {
        let mut ledger = self.ledger();
        // Once the slot has been reused for a later epoch, the spending has expired anyway.
        if ledger.epoch.saturating_sub(epoch) < SLOTS as u64 {
            let slot = (epoch % SLOTS as u64) as usize;
            ledger.retries[slot] = ledger.retries[slot].saturating_sub(1);
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        match self.ledger.lock() {
            Ok(ledger) => ledger,
            // The ledger is plain numbers; a panic elsewhere cannot leave it inconsistent.
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Retries currently available, rounded down.
    pub(crate) fn available(&self, requests: u64) -> u64 {
        let epoch = self.epoch_now();
        let mut ledger = self.ledger();
        ledger.advance(epoch, requests);
        let balance = ledger.balance(self.earn, self.floor, requests).max(0);
        u64::try_from(balance / UNIT as i128).unwrap_or(u64::MAX)
    }

    fn epoch_now(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.origin);
        u64::try_from(elapsed.as_nanos() / self.slot_len.as_nanos().max(1)).unwrap_or(u64::MAX)
    }
}

impl Ledger {
    fn slot(&self) -> usize {
        (self.epoch % SLOTS as u64) as usize
    }

    /// Moves to `epoch`. Requests not yet booked are booked into the slot being left, the
    /// earliest time they can have been made: they expire no later than they should, so the
    /// budget errs on the side of fewer retries.
    fn advance(&mut self, epoch: u64, requests: u64) {
        if epoch <= self.epoch {
            return;
        }
        let slot = self.slot();
        self.requests[slot] += requests.saturating_sub(self.booked_requests);
        self.booked_requests = self.booked_requests.max(requests);
        let skipped = (epoch - self.epoch).min(SLOTS as u64);
        for step in 1..=skipped {
            let slot = ((self.epoch + step) % SLOTS as u64) as usize;
            self.requests[slot] = 0;
            self.retries[slot] = 0;
        }
        self.epoch = epoch;
    }

    fn balance(&self, earn: u128, floor: u128, requests: u64) -> i128 {
        let pending = requests.saturating_sub(self.booked_requests);
        let earned: u128 =
            self.requests.iter().map(|&n| u128::from(n)).sum::<u128>() + u128::from(pending);
        let spent: u128 = self.retries.iter().map(|&n| u128::from(n)).sum();
        let credit = i128::try_from(floor + earned * earn).unwrap_or(i128::MAX);
        let debit = i128::try_from(spent * UNIT).unwrap_or(i128::MAX);
        credit - debit
    }
}

/// A retry taken from the budget for a call that is waiting to retry. If the call is dropped
/// during the wait, the retry was never made and is given back.
#[derive(Debug)]
pub(crate) struct Withdrawal {
    budget: Option<Arc<BudgetState>>,
    epoch: u64,
}

impl Withdrawal {
    /// The retry is being made: the budget keeps it.
    pub(crate) fn keep(&mut self) {
        self.budget = None;
    }
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            budget.refund(self.epoch);
        }
    }
}

/// Counts requests for the budget and the statistics with one shared counter.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn budget(ratio: f64, window_secs: u64, min_per_second: u32) -> Arc<BudgetState> {
        Arc::new(BudgetState::new(
            &RetryBudget::new(ratio)
                .window(Duration::from_secs(window_secs))
                .min_per_second(min_per_second),
        ))
    }

    /// Withdraws one retry and keeps it.
    fn take(state: &Arc<BudgetState>, requests: u64) -> bool {
        state.withdraw(requests).map(|mut w| w.keep()).is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_withdrawal_is_given_back() {
        let state = budget(1.0, 10, 0);
        let pending = state.withdraw(2).expect("two requests earn two retries");
        assert_eq!(state.available(2), 1);
        drop(pending);
        assert_eq!(state.available(2), 2);
        assert!(take(&state, 2));
        assert_eq!(state.available(2), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_of_requests_plus_floor() {
        let state = budget(0.2, 10, 1);
        let requests = 100;
        let mut granted = 0;
        while take(&state, requests) {
            granted += 1;
        }
        // 0.2 * 100 earned plus a floor of 1/s * 10 s.
        assert_eq!(granted, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn ratios_are_not_rounded_up() {
        for (ratio, expected) in [(0.3, 30), (0.4, 40), (0.15, 15), (0.0, 0), (1.5, 150)] {
            let state = budget(ratio, 10, 0);
            let mut granted = 0;
            while take(&state, 100) {
                granted += 1;
            }
            assert_eq!(granted, expected, "ratio {ratio}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn earnings_and_spending_expire_with_the_window() {
        let state = budget(1.0, 10, 0);
        let mut requests = 10;
        for _ in 0..5 {
            assert!(take(&state, requests));
        }
        assert_eq!(state.available(requests), 5);
        tokio::time::advance(Duration::from_secs(11)).await;
        // Old requests and old retries both expired: nothing earned, nothing owed.
        assert_eq!(state.available(requests), 0);
        assert!(!take(&state, requests));
        requests += 4;
        assert_eq!(state.available(requests), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn floor_refills_each_window() {
        let state = budget(0.0, 1, 3);
        for _ in 0..3 {
            assert!(take(&state, 0));
        }
        assert!(!take(&state, 0));
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(take(&state, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_withdrawals_never_overdraw() {
        let state = budget(0.5, 10, 0);
        let mut handles = Vec::new();
        for _ in 0..8 {
            let state = state.clone();
            handles.push(std::thread::spawn(move || {
                (0..1000).filter(|_| take(&state, 100)).count()
            }));
        }
        let granted: usize = handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .sum();
        assert_eq!(granted, 50);
    }

    #[test]
    fn bad_configs_name_the_knob() {
        let err = RetryBudget::new(f64::NAN).check().expect_err("NaN ratio");
        assert_eq!(err.knob(), "budget.ratio");
        let err = RetryBudget::new(0.2)
            .window(Duration::from_millis(5))
            .check()
            .expect_err("tiny window");
        assert_eq!(err.knob(), "budget.window");
    }

    proptest! {
        /// Whatever the sequence of requests, retries and pauses, whenever retries are granted,
        /// those granted within the remembered part of the window never exceed the ratio of
        /// the requests made within the window, plus the floor.
        #[test]
        fn never_more_than_ratio_plus_floor(
            steps in proptest::collection::vec((0u64..20, 0u32..20, 0u64..4_000), 1..60),
            ratio_pct in 0u32..150,
            floor in 0u32..3,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let ratio = f64::from(ratio_pct) / 100.0;
                let config = RetryBudget::new(ratio).window(Duration::from_secs(1)).min_per_second(floor);
                let state = Arc::new(BudgetState::new(&config));
                let mut requests = 0u64;
                // (time, requests made, retries granted) per step.
                let mut history: Vec<(Instant, u64, u64)> = Vec::new();
                for (new_requests, tries, pause_ms) in steps {
                    for _ in 0..new_requests {
                        requests += 1;
                        state.on_request(requests);
                    }
                    let granted = (0..tries).filter(|_| take(&state, requests)).count() as u64;
                    let now = Instant::now();
                    history.push((now, new_requests, granted));
                    // Spending is remembered for at least nine tenths of the window; earnings
                    // count for at most the whole window.
                    let spent_since = now - Duration::from_millis(900);
                    let earned_since = now - Duration::from_secs(1);
                    let recent_requests: u64 = history.iter().filter(|h| h.0 >= earned_since).map(|h| h.1).sum();
                    let recent_retries: u64 = history.iter().filter(|h| h.0 >= spent_since).map(|h| h.2).sum();
                    let allowed = ratio * recent_requests as f64 + config.floor() as f64;
                    // Checked when retries are granted: earnings may then expire before the
                    // spending they paid for, which is the safe order.
                    prop_assert!(granted == 0 || recent_retries as f64 <= allowed + 1e-9,
                        "{} retries > {} allowed", recent_retries, allowed);
                    tokio::time::advance(Duration::from_millis(pause_ms)).await;
                }
                Ok(())
            })?;
        }
    }
}
