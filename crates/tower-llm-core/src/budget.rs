//! One budget for every extra attempt: retries, fallbacks past the first service, hedged legs
//! (see [`AttemptBudget`]).

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::config::ConfigError;

/// One attempt, in the budget's units; a request earns `ratio * UNIT`.
const UNIT: u128 = 1_000_000;
const SLOTS: usize = 10;
/// The deposit path tries to advance the window once every this many requests.
const TICK_EVERY: u64 = 64;
/// Spenders registered on one budget at most; more share one overflow entry.
const MAX_SPENDERS: usize = 256;

thread_local! {
    /// The budgets a call is being made or polled with on this thread (their addresses).
    static ENTERED: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Configuration of an [`AttemptBudget`]: extra attempts as a fraction of recent requests,
/// with a floor.
///
/// Each request earns `ratio` of an attempt, each extra attempt spends one; both expire after
/// the window (kept in ten slots), and `min_per_second × window` attempts are always
/// available. In a total outage, upstream attempts within a window stay under
/// `(1 + ratio) × requests + floor`.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_core::BudgetConfig;
///
/// // At most one extra attempt per ten requests over the last 30 s, plus 2 a second.
/// let budget = BudgetConfig::new(0.1)
///     .window(Duration::from_secs(30))
///     .min_per_second(2);
/// assert_eq!(budget.floor(), 60);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    ratio: f64,
    window: Duration,
    min_per_second: u32,
}

impl BudgetConfig {
    /// Extra attempts up to `ratio` of the requests seen in the window (0.2: one per five
    /// requests), over a 10 s window with a floor of 10 a second.
    pub const fn new(ratio: f64) -> Self {
        BudgetConfig {
            ratio,
            window: Duration::from_secs(10),
            min_per_second: 10,
        }
    }

    /// How long a request's earnings and an attempt's spending count. Between 100 ms and one
    /// hour.
    pub const fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Extra attempts always available, whatever the traffic: `min_per_second × window` per
    /// window.
    pub const fn min_per_second(mut self, min_per_second: u32) -> Self {
        self.min_per_second = min_per_second;
        self
    }

    /// The fraction of requests that may make an extra attempt.
    pub const fn ratio(&self) -> f64 {
        self.ratio
    }

    /// How long earnings and spending count.
    pub const fn window_length(&self) -> Duration {
        self.window
    }

    /// The extra attempts always available within one window.
    pub fn floor(&self) -> u64 {
        let attempts = self.window.as_secs_f64() * f64::from(self.min_per_second);
        // A float-to-int `as` saturates; the window is bounded, so this is exact enough.
        attempts as u64
    }

    /// Checks the knobs: `ratio` between 0 and 100, `window` between 100 ms and one hour.
    /// The error's component is `"budget"` and its knob `ratio` or `window`.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(self.ratio.is_finite() && (0.0..=100.0).contains(&self.ratio)) {
            return Err(ConfigError::new(
                "budget",
                "ratio",
                "must be a number between 0 and 100",
            ));
        }
        if self.window < Duration::from_millis(100) || self.window > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "budget",
                "window",
                "must be between 100 ms and one hour",
            ));
        }
        Ok(())
    }
}

impl Default for BudgetConfig {
    /// 20% of requests over 10 s, with a floor of 10 a second (Finagle's defaults, which
    /// tower's `TpsBudget` also uses).
    fn default() -> Self {
        BudgetConfig::new(0.2)
    }
}

/// One budget for every extra attempt: retries, fallbacks past the first service, hedged legs.
///
/// An [`AttemptBudget`] lets extra attempts be a fraction of recent requests, plus a floor:
/// each request earns `ratio` of an attempt, each extra attempt spends one, and both expire
/// after a window (kept in ten slots); `min_per_second × window` attempts are always available
/// on top, so a quiet service can still retry. It is a cheap `Clone` handle: every clone, and
/// every layer handed one, draws on the same balance.
///
/// # One deposit per request, however deep the nesting
///
/// A stack such as retry → fallback → hedge, each handed the same budget, sees one user
/// request as many calls: the fallback is called once per retry attempt, each hedge once per
/// fallback step. If each layer counted its calls as requests, an outage would inflate the
/// earnings as fast as the spending, and the bound would be lost. So the **outermost layer
/// holding the budget counts the request, and the layers inside do not**:
///
/// - a layer handed a shared budget calls [`deposit_once`](Self::deposit_once) as a
///   call comes in: it counts the call only when no layer further out is already making a call
///   with this budget on this thread;
/// - while it calls and polls what it wraps, it marks the budget as in use
///   ([`enter`](Self::enter), [`scope`](Self::scope)), on the thread, the
///   way [`Deadline`](crate::Deadline) is current. An inner layer called then sees the mark and
///   only withdraws.
///
/// Each user request then buys exactly one upstream call, and every other upstream call comes
/// from exactly one withdrawal (a retry, a fallback step, a hedged leg each start one inner
/// call chain whose own first call is free). In a total outage, upstream calls within a window
/// are at most `(1 + ratio) × requests + floor`, whatever the nesting.
///
/// The mark lives on the thread while a call is made or polled, so it does not cross a task
/// boundary: with a `tower::buffer::Buffer` or a `tokio::spawn` between two layers sharing a
/// budget, the inner one counts the request again (the bound loosens by one request per
/// crossing, it is never broken the other way). Keep such layers outside the budgeted part of
/// the stack.
///
/// A layer given its own budget (not shared) counts every call it receives with
/// [`deposit`](Self::deposit) and needs no mark.
///
/// # Who spent what
///
/// Each layer handed the budget registers as a [`Spender`] (its role, `"retry"`, `"fallback"`
/// or `"hedge"`, and its name) and withdraws through it; [`stats`](Self::stats) lists each
/// spender's withdrawals and refusals.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_llm_core::{AttemptBudget, BudgetConfig};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_llm_core::ConfigError> {
/// // One extra attempt per ten requests over 30 s, plus one a second.
/// let budget = AttemptBudget::new(
///     BudgetConfig::new(0.1).window(Duration::from_secs(30)).min_per_second(1),
/// )?;
/// let retries = budget.spender("retry", "chat");
/// for _ in 0..100 {
///     budget.deposit();
/// }
/// let mut granted = 0;
/// while let Some(mut withdrawal) = retries.withdraw() {
///     withdrawal.keep();
///     granted += 1;
/// }
/// assert_eq!(granted, 10 + 30);
/// let stats = budget.stats();
/// assert_eq!(stats.spenders[0].withdrawals, 40);
/// assert_eq!(stats.spenders[0].refusals, 1);
/// # Ok(())
/// # }
/// ```
///
/// Cheap to clone; clones are the same budget. A request costs one relaxed atomic increment
/// (and, one request in 64, a non-blocking attempt to advance the window); withdrawals are
/// serialised under a lock only extra attempts take, so concurrent ones never overdraw it.
#[derive(Clone)]
pub struct AttemptBudget {
    state: Arc<State>,
}

struct State {
    config: BudgetConfig,
    earn: u128,
    floor: u128,
    slot_len: Duration,
    origin: Instant,
    requests: AtomicU64,
    ledger: Mutex<Ledger>,
    spenders: Mutex<Vec<Arc<SpenderEntry>>>,
}

#[derive(Debug, Default)]
struct Ledger {
    /// The slot in which the current earnings and spending are booked.
    epoch: u64,
    /// Requests already booked into a slot; later ones are pending.
    booked_requests: u64,
    /// Requests booked per slot.
    requests: [u64; SLOTS],
    /// Attempts spent per slot.
    spent: [u64; SLOTS],
}

impl AttemptBudget {
    /// A budget configured by `config`, or the knob that cannot work.
    pub fn new(config: BudgetConfig) -> Result<Self, ConfigError> {
        config.check()?;
        Ok(AttemptBudget::new_unchecked(config))
    }

    fn new_unchecked(config: BudgetConfig) -> Self {
        // Truncated, so the budget never allows more than the configured ratio.
        let earn = (config.ratio * UNIT as f64) as u128;
        AttemptBudget {
            state: Arc::new(State {
                config,
                earn,
                floor: u128::from(config.floor()) * UNIT,
                slot_len: config.window / SLOTS as u32,
                origin: Instant::now(),
                requests: AtomicU64::new(0),
                ledger: Mutex::new(Ledger::default()),
                spenders: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> BudgetConfig {
        self.state.config
    }

    /// Counts one request: it earns `ratio` of an attempt. For a layer that owns the budget;
    /// a layer handed a shared one calls [`deposit_once`](Self::deposit_once).
    #[inline]
    pub fn deposit(&self) {
        let requests = self
            .state
            .requests
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if requests.is_multiple_of(TICK_EVERY) {
            // Never wait: whoever holds the lock is advancing the window anyway.
            if let Ok(mut ledger) = self.state.ledger.try_lock() {
                ledger.advance(self.epoch_now(), requests);
            }
        }
    }

    /// Counts one request unless a call with this budget is already being made or polled on
    /// this thread (a layer further out counted it); returns whether it counted.
    #[inline]
    pub fn deposit_once(&self) -> bool {
        if self.is_entered() {
            return false;
        }
        self.deposit();
        true
    }

    /// Whether a call with this budget is being made or polled on this thread now.
    pub fn is_entered(&self) -> bool {
        let id = self.id();
        ENTERED.with(|entered| entered.borrow().contains(&id))
    }

    /// Runs `f` (an inner service's `call`, say) with this budget marked in use, so a layer
    /// called inside does not count the request again.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let _mark = Mark::set(self.id());
        f()
    }

    /// Wraps `future` so that this budget is marked in use while it is polled.
    pub fn scope<F: Future>(&self, future: F) -> BudgetScope<F> {
        BudgetScope {
            budget: Some(self.id()),
            future,
        }
    }

    /// Registers (or finds) the spender `role` (`"retry"`, `"fallback"`, `"hedge"`) named
    /// `name`, through which a layer withdraws; its counts appear in [`stats`](Self::stats).
    /// Registering the same role and name twice gives the same counts. Past 256 spenders,
    /// new ones share an entry named `"(other)"`, so memory stays bounded.
    pub fn spender(&self, role: &'static str, name: impl Into<Cow<'static, str>>) -> Spender {
        let name = name.into();
        let mut spenders = lock(&self.state.spenders);
        let found = spenders
            .iter()
            .find(|entry| entry.role == role && entry.name == name)
            .cloned();
        let entry = match found {
            Some(entry) => entry,
            None if spenders.len() < MAX_SPENDERS => {
                let entry = Arc::new(SpenderEntry::new(role, name));
                spenders.push(Arc::clone(&entry));
                entry
            }
            None => {
                let overflow = spenders
                    .iter()
                    .find(|entry| entry.role == role && entry.name == OVERFLOW)
                    .cloned();
                match overflow {
                    Some(entry) => entry,
                    None => {
                        let entry = Arc::new(SpenderEntry::new(role, Cow::Borrowed(OVERFLOW)));
                        spenders.push(Arc::clone(&entry));
                        entry
                    }
                }
            }
        };
        Spender {
            budget: self.clone(),
            entry,
        }
    }

    /// Requests counted since the budget was made.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Extra attempts available now, rounded down.
    pub fn available(&self) -> u64 {
        let requests = self.requests();
        let mut ledger = lock(&self.state.ledger);
        ledger.advance(self.epoch_now(), requests);
        let balance = ledger
            .balance(self.state.earn, self.state.floor, requests)
            .max(0);
        u64::try_from(balance / UNIT as i128).unwrap_or(u64::MAX)
    }

    /// A snapshot: requests counted, attempts available, and each spender's withdrawals and
    /// refusals.
    pub fn stats(&self) -> BudgetStats {
        let spenders = lock(&self.state.spenders)
            .iter()
            .map(|entry| entry.stats())
            .collect();
        BudgetStats {
            requests: self.requests(),
            available: self.available(),
            spenders,
        }
    }

    /// Whether two handles are the same budget.
    pub fn same_budget(&self, other: &AttemptBudget) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.state) as usize
    }

    fn epoch_now(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.state.origin);
        u64::try_from(elapsed.as_nanos() / self.state.slot_len.as_nanos().max(1))
            .unwrap_or(u64::MAX)
    }

    fn withdraw(&self) -> Option<u64> {
        let requests = self.requests();
        let epoch = self.epoch_now();
        let mut ledger = lock(&self.state.ledger);
        ledger.advance(epoch, requests);
        if ledger.balance(self.state.earn, self.state.floor, requests) >= UNIT as i128 {
            let slot = ledger.slot();
            ledger.spent[slot] += 1;
            Some(ledger.epoch)
        } else {
            None
        }
    }

    fn refund(&self, epoch: u64) {
        let mut ledger = lock(&self.state.ledger);
        // Once the slot has been reused for a later epoch, the spending has expired anyway.
        if ledger.epoch.saturating_sub(epoch) < SLOTS as u64 {
            let slot = (epoch % SLOTS as u64) as usize;
            ledger.spent[slot] = ledger.spent[slot].saturating_sub(1);
        }
    }
}

impl Default for AttemptBudget {
    /// A budget with [`BudgetConfig::default`].
    fn default() -> Self {
        AttemptBudget::new_unchecked(BudgetConfig::default())
    }
}

impl fmt::Debug for AttemptBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptBudget")
            .field("config", &self.state.config)
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        // Plain numbers and a list of counters: a panic elsewhere cannot leave them
        // inconsistent.
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Ledger {
    fn slot(&self) -> usize {
        (self.epoch % SLOTS as u64) as usize
    }

    /// Moves to `epoch`. Requests not yet booked are booked into the slot being left, the
    /// earliest time they can have been made: they expire no later than they should, so the
    /// budget errs on the side of fewer attempts.
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
            self.spent[slot] = 0;
        }
        self.epoch = epoch;
    }

    fn balance(&self, earn: u128, floor: u128, requests: u64) -> i128 {
        let pending = requests.saturating_sub(self.booked_requests);
        let earned: u128 =
            self.requests.iter().map(|&n| u128::from(n)).sum::<u128>() + u128::from(pending);
        let spent: u128 = self.spent.iter().map(|&n| u128::from(n)).sum();
        let credit = i128::try_from(floor + earned * earn).unwrap_or(i128::MAX);
        let debit = i128::try_from(spent * UNIT).unwrap_or(i128::MAX);
        credit - debit
    }
}

/// Marks a budget in use on this thread until dropped (a panic included).
struct Mark(usize);

impl Mark {
    fn set(id: usize) -> Self {
        let depth = ENTERED.with(|entered| {
            let mut entered = entered.borrow_mut();
            entered.push(id);
            entered.len()
        });
        Mark(depth - 1)
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        ENTERED.with(|entered| entered.borrow_mut().truncate(self.0));
    }
}

pin_project! {
    /// A future polled with an [`AttemptBudget`] marked in use (see
    /// [`AttemptBudget::scope`]); [`BudgetScope::none`] marks nothing.
    #[derive(Debug)]
    pub struct BudgetScope<F> {
        budget: Option<usize>,
        #[pin]
        future: F,
    }
}

impl<F> BudgetScope<F> {
    /// Polls `future` with no budget marked: for a layer whose budget is its own.
    pub const fn none(future: F) -> Self {
        BudgetScope {
            budget: None,
            future,
        }
    }
}

impl<F: Future> Future for BudgetScope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _mark = (*this.budget).map(Mark::set);
        this.future.poll(cx)
    }
}

const OVERFLOW: &str = "(other)";

struct SpenderEntry {
    role: &'static str,
    name: Cow<'static, str>,
    withdrawals: AtomicU64,
    refusals: AtomicU64,
}

impl SpenderEntry {
    fn new(role: &'static str, name: Cow<'static, str>) -> Self {
        SpenderEntry {
            role,
            name,
            withdrawals: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        }
    }

    fn stats(&self) -> SpenderStats {
        SpenderStats {
            role: self.role,
            name: self.name.clone(),
            withdrawals: self.withdrawals.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
        }
    }
}

/// One layer's account on an [`AttemptBudget`]: it withdraws through it, and the budget's
/// [`stats`](AttemptBudget::stats) count what it took and was refused. Cheap to clone.
#[derive(Clone)]
pub struct Spender {
    budget: AttemptBudget,
    entry: Arc<SpenderEntry>,
}

impl Spender {
    /// The budget drawn on.
    pub fn budget(&self) -> &AttemptBudget {
        &self.budget
    }

    /// The spender's role (`"retry"`, `"fallback"`, `"hedge"`).
    pub fn role(&self) -> &'static str {
        self.entry.role
    }

    /// The spender's name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// Takes one extra attempt if the budget allows it, or counts a refusal. The attempt is
    /// counted as spent by this spender when [`kept`](Withdrawal::keep); a [`Withdrawal`]
    /// dropped before that (a call dropped while waiting to retry) gives it back.
    pub fn withdraw(&self) -> Option<Withdrawal> {
        match self.budget.withdraw() {
            Some(epoch) => Some(Withdrawal {
                spender: Some(self.clone()),
                epoch,
            }),
            None => {
                self.entry.refusals.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Takes one extra attempt that is made at once; `false` (and a refusal counted) when
    /// the budget is spent.
    pub fn spend(&self) -> bool {
        // A withdrawal kept at once: counted here, with no handle made to give it back.
        if self.budget.withdraw().is_some() {
            self.entry.withdrawals.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.entry.refusals.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

impl fmt::Debug for Spender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spender")
            .field("role", &self.entry.role)
            .field("name", &self.entry.name)
            .finish_non_exhaustive()
    }
}

/// An extra attempt taken from the budget. Kept ([`keep`](Self::keep)) when the attempt is
/// made; dropped before that, it is given back.
#[must_use = "dropping a withdrawal gives it back; call `keep` when the attempt is made"]
pub struct Withdrawal {
    spender: Option<Spender>,
    epoch: u64,
}

impl Withdrawal {
    /// The attempt is being made: the budget keeps it, and the spender's count grows.
    pub fn keep(&mut self) {
        if let Some(spender) = self.spender.take() {
            spender.entry.withdrawals.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        if let Some(spender) = self.spender.take() {
            spender.budget.refund(self.epoch);
        }
    }
}

impl fmt::Debug for Withdrawal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Withdrawal")
            .field("kept", &self.spender.is_none())
            .finish()
    }
}

/// A snapshot of an [`AttemptBudget`], from [`AttemptBudget::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetStats {
    /// Requests counted since the budget was made (once each, however many layers share it).
    pub requests: u64,
    /// Extra attempts available now.
    pub available: u64,
    /// Each spender's account, in the order they registered.
    pub spenders: Vec<SpenderStats>,
}

impl BudgetStats {
    /// Extra attempts made, by every spender.
    pub fn withdrawals(&self) -> u64 {
        self.spenders.iter().map(|s| s.withdrawals).sum()
    }

    /// Extra attempts refused, to every spender.
    pub fn refusals(&self) -> u64 {
        self.spenders.iter().map(|s| s.refusals).sum()
    }

    /// The account of the spender `role` named `name`, if it registered.
    pub fn spender(&self, role: &str, name: &str) -> Option<&SpenderStats> {
        self.spenders
            .iter()
            .find(|s| s.role == role && s.name == name)
    }
}

/// What one spender took from an [`AttemptBudget`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpenderStats {
    /// The spender's role: `"retry"`, `"fallback"` or `"hedge"`.
    pub role: &'static str,
    /// The layer's name.
    pub name: Cow<'static, str>,
    /// Extra attempts made.
    pub withdrawals: u64,
    /// Extra attempts refused because the budget was spent.
    pub refusals: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn budget(ratio: f64, window_secs: u64, min_per_second: u32) -> AttemptBudget {
        AttemptBudget::new(
            BudgetConfig::new(ratio)
                .window(Duration::from_secs(window_secs))
                .min_per_second(min_per_second),
        )
        .unwrap()
    }

    fn deposit(budget: &AttemptBudget, n: u64) {
        for _ in 0..n {
            budget.deposit();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_withdrawal_is_given_back() {
        let budget = budget(1.0, 10, 0);
        let spender = budget.spender("retry", "r");
        deposit(&budget, 2);
        let pending = spender.withdraw().expect("two requests earn two attempts");
        assert_eq!(budget.available(), 1);
        drop(pending);
        assert_eq!(budget.available(), 2);
        assert!(spender.spend());
        assert_eq!(budget.available(), 1);
        let stats = budget.stats();
        assert_eq!(stats.spender("retry", "r").unwrap().withdrawals, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_of_requests_plus_floor() {
        let budget = budget(0.2, 10, 1);
        let spender = budget.spender("retry", "r");
        deposit(&budget, 100);
        let mut granted = 0;
        while spender.spend() {
            granted += 1;
        }
        // 0.2 * 100 earned plus a floor of 1/s * 10 s.
        assert_eq!(granted, 30);
        assert_eq!(budget.stats().refusals(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ratios_are_not_rounded_up() {
        for (ratio, expected) in [(0.3, 30), (0.4, 40), (0.15, 15), (0.0, 0), (1.5, 150)] {
            let budget = budget(ratio, 10, 0);
            let spender = budget.spender("retry", "r");
            deposit(&budget, 100);
            let mut granted = 0;
            while spender.spend() {
                granted += 1;
            }
            assert_eq!(granted, expected, "ratio {ratio}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn earnings_and_spending_expire_with_the_window() {
        let budget = budget(1.0, 10, 0);
        let spender = budget.spender("retry", "r");
        deposit(&budget, 10);
        for _ in 0..5 {
            assert!(spender.spend());
        }
        assert_eq!(budget.available(), 5);
        tokio::time::advance(Duration::from_secs(11)).await;
        // Old requests and old attempts both expired: nothing earned, nothing owed.
        assert_eq!(budget.available(), 0);
        assert!(!spender.spend());
        deposit(&budget, 4);
        assert_eq!(budget.available(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn floor_refills_each_window() {
        let budget = budget(0.0, 1, 3);
        let spender = budget.spender("hedge", "h");
        for _ in 0..3 {
            assert!(spender.spend());
        }
        assert!(!spender.spend());
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(spender.spend());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_withdrawals_never_overdraw() {
        let budget = budget(0.5, 10, 0);
        deposit(&budget, 100);
        let mut handles = Vec::new();
        for i in 0..8 {
            let spender = budget.spender("retry", format!("r{}", i % 2));
            handles.push(std::thread::spawn(move || {
                (0..1000).filter(|_| spender.spend()).count()
            }));
        }
        let granted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(granted, 50);
        let stats = budget.stats();
        assert_eq!(stats.spenders.len(), 2, "same role and name, same account");
        assert_eq!(stats.withdrawals(), 50);
        assert_eq!(stats.refusals(), 8000 - 50);
    }

    #[tokio::test(start_paused = true)]
    async fn the_outermost_holder_counts_the_request_once() {
        let shared = budget(0.5, 10, 0);
        let other = budget(0.5, 10, 0);
        assert!(shared.deposit_once());
        shared.enter(|| {
            // An inner layer with the same budget does not count the call again...
            assert!(!shared.deposit_once());
            shared.enter(|| assert!(!shared.deposit_once()));
            // ...one with another budget does.
            assert!(other.deposit_once());
            other.enter(|| assert!(!shared.deposit_once()));
        });
        assert!(!shared.is_entered(), "the mark ends with the call");
        assert_eq!(shared.requests(), 1);
        assert_eq!(other.requests(), 1);

        // Polling a scoped future marks it too, and only then.
        let inner = shared.clone();
        let seen = shared.scope(async move { inner.deposit_once() }).await;
        assert!(!seen);
        assert!(BudgetScope::none(async { shared.deposit_once() }).await);
    }

    #[test]
    fn a_panic_inside_ends_the_mark() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let budget = AttemptBudget::default();
        let result = std::panic::catch_unwind(|| budget.enter(|| panic!("inside")));
        assert!(result.is_err());
        assert!(!budget.is_entered());
    }

    #[tokio::test(start_paused = true)]
    async fn spenders_are_bounded() {
        let budget = budget(0.5, 10, 0);
        for i in 0..(MAX_SPENDERS + 10) {
            let _ = budget.spender("retry", format!("r{i}"));
        }
        let stats = budget.stats();
        assert_eq!(stats.spenders.len(), MAX_SPENDERS + 1);
        assert!(stats.spender("retry", OVERFLOW).is_some());
    }

    #[test]
    fn bad_configs_name_the_knob() {
        let err = BudgetConfig::new(f64::NAN).check().unwrap_err();
        assert_eq!(err.knob(), "ratio");
        let err = BudgetConfig::new(0.2)
            .window(Duration::from_millis(5))
            .check()
            .unwrap_err();
        assert_eq!(err.knob(), "window");
    }

    proptest! {
        /// Whatever the sequence of requests, withdrawals and pauses, whenever attempts are
        /// granted, those granted within the remembered part of the window never exceed the
        /// ratio of the requests made within the window, plus the floor.
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
                let config = BudgetConfig::new(ratio).window(Duration::from_secs(1)).min_per_second(floor);
                let budget = AttemptBudget::new(config).expect("valid");
                let spender = budget.spender("retry", "r");
                // (time, requests made, attempts granted) per step.
                let mut history: Vec<(Instant, u64, u64)> = Vec::new();
                for (new_requests, tries, pause_ms) in steps {
                    deposit(&budget, new_requests);
                    let granted = (0..tries).filter(|_| spender.spend()).count() as u64;
                    let now = Instant::now();
                    history.push((now, new_requests, granted));
                    // Spending is remembered for at least nine tenths of the window; earnings
                    // count for at most the whole window.
                    let spent_since = now - Duration::from_millis(900);
                    let earned_since = now - Duration::from_secs(1);
                    let recent_requests: u64 = history.iter().filter(|h| h.0 >= earned_since).map(|h| h.1).sum();
                    let recent_spent: u64 = history.iter().filter(|h| h.0 >= spent_since).map(|h| h.2).sum();
                    let allowed = ratio * recent_requests as f64 + config.floor() as f64;
                    prop_assert!(granted == 0 || recent_spent as f64 <= allowed + 1e-9,
                        "{} attempts > {} allowed", recent_spent, allowed);
                    tokio::time::advance(Duration::from_millis(pause_ms)).await;
                }
                Ok(())
            })?;
        }
    }
}
