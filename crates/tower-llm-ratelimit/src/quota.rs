//! Quotas and the budget that enforces one: a GCRA for smoothness under a sliding-window cap
//! for exactness.
//!
//! A provider counts requests and tokens over a sliding window ("60 requests per minute").
//! A plain token bucket refilling at `limit / window` with a burst of `burst` can admit
//! `limit + burst` inside one window, which is exactly the 429 this crate exists to avoid; a
//! bucket slowed down to `(limit - burst) / window` never overshoots but wastes up to
//! `burst / limit` of the quota. [`Budget`] does both jobs separately:
//!
//! - a GCRA (virtual scheduling form of the token bucket) at `limit / window` with a tolerance
//!   of `burst` spaces calls out, so traffic is smooth and at most `burst` units go back to back;
//! - a ring of [`SLOTS_PER_WINDOW`] time slots remembers what was charged in the last window,
//!   and a call is admitted only if the charges still inside the window plus its own cost stay
//!   within `limit`. A slot's charges are kept until one window after the latest of them, at
//!   most one slot (1/60 of the window) longer than strictly needed, so the cap is never
//!   optimistic.
//!
//! Time is nanoseconds since the limiter's origin, so this module is pure and property-tested.

use std::collections::VecDeque;
use std::time::Duration;

/// How finely the sliding window is tracked: a charge is forgotten at most `window / 60` after
/// the window has really moved past it.
pub const SLOTS_PER_WINDOW: u64 = 60;

/// A limit of `limit` units (requests or tokens) in any sliding `window`, of which at most
/// `burst` may be spent back to back.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_ratelimit::Quota;
///
/// let rpm = Quota::per_minute(60);
/// assert_eq!(rpm.limit(), 60);
/// assert_eq!(rpm.burst(), 1);
/// let tpm = Quota::per_minute(10_000).with_burst(2_000);
/// assert_eq!(tpm.window(), Duration::from_secs(60));
/// assert_eq!(tpm.burst(), 2_000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u64,
    window: Duration,
    burst: u64,
}

impl Quota {
    /// `limit` units in any sliding `window`. The burst defaults to one second's share of the
    /// limit (at least 1): `limit * 1s / window`.
    pub fn new(limit: u64, window: Duration) -> Self {
        let per_second = if window.is_zero() {
            limit
        } else {
            (u128::from(limit) * 1_000_000_000 / window.as_nanos().max(1)) as u64
        };
        Quota {
            limit,
            window,
            burst: per_second.clamp(1, limit.max(1)),
        }
    }

    /// `limit` units per minute.
    pub fn per_minute(limit: u64) -> Self {
        Quota::new(limit, Duration::from_secs(60))
    }

    /// `limit` units per second.
    pub fn per_second(limit: u64) -> Self {
        Quota::new(limit, Duration::from_secs(1))
    }

    /// Sets how many units may be spent back to back. A single request larger than the burst
    /// (but within the limit) is still admitted, once the budget has fully refilled.
    pub const fn with_burst(mut self, burst: u64) -> Self {
        self.burst = burst;
        self
    }

    /// The units allowed in any window.
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// The window's length.
    pub const fn window(&self) -> Duration {
        self.window
    }

    /// How many units may go back to back.
    pub const fn burst(&self) -> u64 {
        self.burst
    }

    /// The nearest quota [`validate`](Self::validate) accepts.
    pub(crate) fn clamped(self) -> Self {
        let limit = self.limit.max(1);
        Quota {
            limit,
            window: self.window.clamp(
                Duration::from_nanos(1),
                Duration::from_secs(366 * 24 * 3600),
            ),
            burst: self.burst.clamp(1, limit),
        }
    }

    pub(crate) fn validate(&self, knob: &'static str) -> Result<(), crate::ConfigError> {
        if self.limit == 0 {
            return Err(crate::ConfigError::new(
                "rate limit",
                knob,
                "the limit must be at least 1",
            ));
        }
        if self.window.is_zero() {
            return Err(crate::ConfigError::new(
                "rate limit",
                knob,
                "the window must be longer than zero",
            ));
        }
        if self.window > Duration::from_secs(366 * 24 * 3600) {
            return Err(crate::ConfigError::new(
                "rate limit",
                knob,
                "the window must be at most a year",
            ));
        }
        if self.burst == 0 || self.burst > self.limit {
            return Err(crate::ConfigError::new(
                "rate limit",
                knob,
                "the burst must be between 1 and the limit",
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    epoch: u64,
    amount: u64,
    /// When the latest charge in this slot was made: the whole slot leaves the window one
    /// window after it.
    last: u64,
}

/// Where a charge was recorded, so that reconciling it later adjusts the right slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Charge {
    pub(crate) epoch: u64,
    pub(crate) amount: u64,
}

/// The state enforcing one [`Quota`].
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    quota: Quota,
    window_ns: u64,
    slot_ns: u64,
    /// Emission time of one unit and of the burst, precomputed for the hot path.
    unit_ns: u64,
    burst_ns: u64,
    /// GCRA theoretical arrival time: the budget is full when `tat <= now`.
    tat: u64,
    /// Slots with charges, oldest first. Slots are made in time order, so their expiries
    /// (`last + window`) are in order too and expired ones are always at the front.
    slots: VecDeque<Slot>,
    /// The sum of `slots`' amounts.
    total: u64,
    /// At most the front slot's expiry (`u64::MAX` when there is none): until then nothing
    /// can be forgotten, which a charge checks with one comparison instead of a deque look-up.
    first_expiry: u64,
    /// The end of the back slot's span (0 when there is none): a charge before it adds to
    /// that slot.
    open_end: u64,
}

impl Budget {
    pub(crate) fn new(quota: Quota) -> Self {
        let window_ns = u64::try_from(quota.window.as_nanos()).unwrap_or(u64::MAX / 4);
        let slot_ns = window_ns.div_ceil(SLOTS_PER_WINDOW).max(1);
        let mut budget = Budget {
            quota,
            window_ns,
            slot_ns,
            unit_ns: 0,
            burst_ns: 0,
            tat: 0,
            slots: VecDeque::with_capacity(SLOTS_PER_WINDOW as usize + 2),
            total: 0,
            first_expiry: u64::MAX,
            open_end: 0,
        };
        budget.unit_ns = budget.emission(1);
        // Units are rounded up one by one, so `burst` of them back to back take up to `burst`
        // nanoseconds more than `emission(burst)`: the tolerance covers that, or the last of
        // a burst would wait a nanosecond (a millisecond on tokio's timer).
        budget.burst_ns = budget
            .emission(quota.burst)
            .max(budget.unit_ns.saturating_mul(quota.burst));
        budget
    }

    /// The GCRA's time for `cost` units, rounded up so the rate is never exceeded.
    #[inline]
    fn emission(&self, cost: u64) -> u64 {
        if cost == 1 && self.unit_ns > 0 {
            return self.unit_ns;
        }
        let limit = self.quota.limit.max(1);
        if let Some(product) = cost.checked_mul(self.window_ns) {
            return product.div_ceil(limit);
        }
        let ns = (u128::from(cost) * u128::from(self.window_ns)).div_ceil(u128::from(limit));
        u64::try_from(ns).unwrap_or(u64::MAX / 4)
    }

    #[inline]
    fn expiry(&self, slot: &Slot) -> u64 {
        slot.last.saturating_add(self.window_ns)
    }

    /// Units charged that are still inside the window at `now`.
    #[inline]
    pub(crate) fn used(&self, now: u64) -> u64 {
        let expired = self
            .slots
            .iter()
            .take_while(|s| self.expiry(s) <= now)
            .fold(0u64, |sum, s| sum.saturating_add(s.amount));
        self.total.saturating_sub(expired)
    }

    #[cold]
    #[inline(never)]
    fn forget_expired(&mut self, now: u64) {
        while let Some(front) = self.slots.front() {
            if self.expiry(front) > now {
                break;
            }
            self.total = self.total.saturating_sub(front.amount);
            self.slots.pop_front();
        }
        self.first_expiry = self.slots.front().map_or(u64::MAX, |s| self.expiry(s));
        if self.slots.is_empty() {
            self.open_end = 0;
        }
    }

    #[inline]
    fn gcra_ready(&self, now: u64, cost: u64) -> u64 {
        let base = self.tat.max(now);
        if cost <= self.quota.burst {
            base.saturating_add(self.emission(cost))
                .saturating_sub(self.burst_ns)
                .max(now)
        } else {
            // Larger than the burst: only from a full budget, leaving a debt behind it.
            base
        }
    }

    #[inline]
    fn window_ready(&self, now: u64, cost: u64) -> u64 {
        // Everything remembered, expired or not, still leaves room: the common case.
        if self.total.saturating_add(cost) <= self.quota.limit {
            return now;
        }
        let used = self.used(now);
        let room = self.quota.limit;
        if used.saturating_add(cost) <= room {
            return now;
        }
        let mut need = used.saturating_add(cost) - room;
        let mut last = now;
        for slot in self.slots.iter().filter(|s| self.expiry(s) > now) {
            last = self.expiry(slot);
            if slot.amount >= need {
                return last;
            }
            need -= slot.amount;
        }
        last
    }

    /// The earliest time at which `cost` units may be spent, if nothing else is charged.
    #[inline]
    pub(crate) fn ready_at(&self, now: u64, cost: u64) -> u64 {
        self.gcra_ready(now, cost).max(self.window_ready(now, cost))
    }

    /// Roughly when `cost` units could be spent after `queued` units ahead of them are: the
    /// GCRA exactly, the window as if everything were spent at once.
    pub(crate) fn ready_after(&self, now: u64, queued: u64, cost: u64) -> u64 {
        let base = self.tat.max(now).saturating_add(self.emission(queued));
        let gcra = if cost <= self.quota.burst {
            base.saturating_add(self.emission(cost))
                .saturating_sub(self.burst_ns)
                .max(now)
        } else {
            base
        };
        let total = queued.saturating_add(cost).min(self.quota.limit);
        gcra.max(self.window_ready(now, total))
    }

    /// Spends `cost` units at `now`. The caller has checked [`ready_at`](Self::ready_at).
    #[inline]
    pub(crate) fn charge(&mut self, now: u64, cost: u64) -> Charge {
        if now >= self.first_expiry {
            self.forget_expired(now);
        }
        self.tat = self.tat.max(now).saturating_add(self.emission(cost));
        self.total = self.total.saturating_add(cost);
        // Times may arrive slightly out of order from concurrent callers; an earlier time
        // lands in the latest slot, which only keeps it longer.
        if now < self.open_end
            && let Some(slot) = self.slots.back_mut()
        {
            slot.amount = slot.amount.saturating_add(cost);
            slot.last = slot.last.max(now);
            return Charge {
                epoch: slot.epoch,
                amount: cost,
            };
        }
        self.open_slot(now, cost)
    }

    /// Starts a new slot with a charge: once per slot span at most, so out of line.
    #[inline(never)]
    fn open_slot(&mut self, now: u64, cost: u64) -> Charge {
        let epoch = now / self.slot_ns;
        let end = (epoch + 1).saturating_mul(self.slot_ns);
        self.slots.push_back(Slot {
            epoch,
            amount: cost,
            last: now,
        });
        self.open_end = end;
        if self.slots.len() == 1 {
            self.first_expiry = now.saturating_add(self.window_ns);
        }
        Charge {
            epoch,
            amount: cost,
        }
    }

    fn slot_mut(&mut self, epoch: u64, now: u64) -> Option<&mut Slot> {
        let window_ns = self.window_ns;
        self.slots
            .iter_mut()
            .rev()
            .find(|s| s.epoch == epoch)
            .filter(|s| s.last.saturating_add(window_ns) > now)
    }

    /// Gives back `amount` of an earlier charge (the call used less than was reserved).
    pub(crate) fn refund(&mut self, now: u64, charge: Charge, amount: u64) {
        let amount = amount.min(charge.amount);
        if self.tat > now {
            self.tat = self.tat.saturating_sub(self.emission(amount)).max(now);
        }
        if let Some(slot) = self.slot_mut(charge.epoch, now) {
            let taken = amount.min(slot.amount);
            slot.amount -= taken;
            self.total = self.total.saturating_sub(taken);
        }
    }

    /// Adds `amount` to an earlier charge (the call used more than was reserved). The window
    /// may then hold more than the limit: the upstream already spent it, so later calls wait.
    /// The amount comes from the server's reply, so it is capped at one window's limit (no
    /// real call spends more): a bogus usage delays the key by at most one window.
    pub(crate) fn charge_more(&mut self, now: u64, charge: Charge, amount: u64) {
        let amount = amount.min(self.quota.limit);
        self.tat = self.tat.max(now).saturating_add(self.emission(amount));
        if let Some(slot) = self.slot_mut(charge.epoch, now) {
            slot.amount = slot.amount.saturating_add(amount);
            self.total = self.total.saturating_add(amount);
        }
    }

    /// Whether this budget is indistinguishable from a fresh one: nothing owed, nothing in
    /// the window. Such a key can be forgotten without loosening any limit.
    pub(crate) fn at_rest(&self, now: u64) -> bool {
        self.tat <= now && self.used(now) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn rejects_bad_quotas() {
        assert!(Quota::per_minute(0).validate("requests").is_err());
        assert!(
            Quota::per_minute(10)
                .with_burst(0)
                .validate("requests")
                .is_err()
        );
        assert!(
            Quota::per_minute(10)
                .with_burst(11)
                .validate("requests")
                .is_err()
        );
        assert!(Quota::new(10, Duration::ZERO).validate("requests").is_err());
        assert!(Quota::per_minute(10).validate("requests").is_ok());
        let err = Quota::per_minute(0).validate("tokens").expect_err("zero");
        assert!(err.to_string().contains("tokens"));
    }

    #[test]
    fn default_burst_is_a_seconds_share() {
        assert_eq!(Quota::per_minute(60).burst(), 1);
        assert_eq!(Quota::per_minute(6_000).burst(), 100);
        assert_eq!(Quota::per_second(5).burst(), 5);
    }

    #[test]
    fn smooth_after_the_burst() {
        let mut b = Budget::new(Quota::per_minute(60).with_burst(3));
        let mut now = 0;
        let mut times = Vec::new();
        for _ in 0..6 {
            now = b.ready_at(now, 1);
            b.charge(now, 1);
            times.push(now / (SEC / 1000));
        }
        assert_eq!(times, [0, 0, 0, 1000, 2000, 3000]);
    }

    #[test]
    fn a_whole_burst_goes_at_once_when_a_unit_does_not_divide_evenly() {
        // 10 s / 6 is 1.666...7 s rounded up: three of them exceed 5 s by a nanosecond.
        let mut b = Budget::new(Quota::new(6, Duration::from_secs(10)).with_burst(3));
        for _ in 0..3 {
            assert_eq!(b.ready_at(0, 1), 0);
            b.charge(0, 1);
        }
        assert!(b.ready_at(0, 1) > 0);
    }

    #[test]
    fn window_caps_what_the_bucket_would_allow() {
        // A bucket at 10/min with a burst of 10 would let 20 through in the first minute.
        let mut b = Budget::new(Quota::per_minute(10).with_burst(10));
        let mut now = 0;
        let mut admitted = Vec::new();
        while now < 60 * SEC {
            now = b.ready_at(now, 1);
            if now < 60 * SEC {
                b.charge(now, 1);
                admitted.push(now);
            }
        }
        assert_eq!(admitted.len(), 10);
    }

    #[test]
    fn large_request_waits_for_a_full_budget_then_leaves_a_debt() {
        let mut b = Budget::new(Quota::per_minute(600).with_burst(10));
        assert_eq!(b.ready_at(0, 100), 0);
        b.charge(0, 100);
        // 100 units at 10/s: full again after 10 s.
        assert_eq!(b.ready_at(0, 100), 10 * SEC);
        assert_eq!(b.ready_at(0, 1), 10 * SEC - SEC + SEC / 10);
    }

    #[test]
    fn refund_gives_capacity_back_now() {
        let mut b = Budget::new(Quota::per_minute(100).with_burst(100));
        let c = b.charge(0, 100);
        assert!(b.ready_at(0, 50) > 0);
        b.refund(0, c, 60);
        assert_eq!(b.ready_at(0, 50), 0);
        assert_eq!(b.used(0), 40);
    }

    #[test]
    fn extra_charge_pushes_later_calls_back() {
        let mut b = Budget::new(Quota::per_minute(100).with_burst(100));
        let c = b.charge(0, 50);
        b.charge_more(0, c, 40);
        assert_eq!(b.used(0), 90);
        assert!(b.ready_at(0, 20) > 0);
        assert!(!b.at_rest(0));
        assert!(b.at_rest(62 * SEC));
    }

    #[test]
    fn absurd_usage_from_the_server_neither_panics_nor_freezes_the_budget() {
        // The usage comes from the response body: a server may say anything.
        let mut b = Budget::new(Quota::per_minute(100).with_burst(100));
        let first = b.charge(0, 10);
        b.charge(2 * SEC, 10);
        b.charge_more(2 * SEC, first, u64::MAX);
        assert!(b.ready_at(2 * SEC, 1) > 2 * SEC);
        for t in [61, 63, 70, 130, 200] {
            let now = t * SEC;
            let at = b.ready_at(now, 1);
            if at <= now {
                b.charge(now, 1);
            }
        }
        // At most one window's worth is owed, so a window or two later all is well again.
        assert!(b.at_rest(400 * SEC));
        assert_eq!(b.ready_at(400 * SEC, 100), 400 * SEC);
    }

    /// Random charges (only when [`Budget::ready_at`] allows, as the limiter does), waits and
    /// one refund per charge at most, against a model that keeps every charge with its time.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Step {
            /// Milliseconds.
            Wait(u64),
            Charge(u64),
            /// Which charge (modulo their number) and what percent of it.
            Refund(usize, u64),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                3 => (0u64..4_000).prop_map(Step::Wait),
                4 => (1u64..=40).prop_map(Step::Charge),
                1 => (any::<usize>(), 0u64..=100).prop_map(|(i, p)| Step::Refund(i, p)),
            ]
        }

        /// The cached bounds agree with the slots they summarize.
        fn bookkeeping_holds(b: &Budget) -> Result<(), TestCaseError> {
            let sum: u64 = b.slots.iter().map(|s| s.amount).sum();
            prop_assert_eq!(b.total, sum);
            match (b.slots.front(), b.slots.back()) {
                (Some(front), Some(back)) => {
                    prop_assert!(b.first_expiry <= b.expiry(front));
                    prop_assert_eq!(b.open_end, (back.epoch + 1) * b.slot_ns);
                }
                _ => {
                    prop_assert_eq!(b.first_expiry, u64::MAX);
                    prop_assert_eq!(b.open_end, 0);
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn the_window_is_exact_to_a_slot_and_never_optimistic(
                limit in 1u64..100,
                burst_percent in 1u64..=100,
                window_secs in 1u64..120,
                steps in prop::collection::vec(step(), 1..200),
            ) {
                let burst = (limit * burst_percent / 100).max(1);
                let window = window_secs * SEC;
                let mut b = Budget::new(Quota::new(limit, Duration::from_secs(window_secs))
                    .with_burst(burst));
                // (charged at, amount still charged, where, refunded)
                let mut charges: Vec<(u64, u64, Charge, bool)> = Vec::new();
                let mut now = 0;
                for step in steps {
                    match step {
                        Step::Wait(ms) => now += ms * 1_000_000,
                        Step::Charge(cost) => {
                            let cost = cost.min(limit);
                            if b.ready_at(now, cost) <= now {
                                let charge = b.charge(now, cost);
                                charges.push((now, cost, charge, false));
                            }
                        }
                        Step::Refund(i, percent) if !charges.is_empty() => {
                            let i = i % charges.len();
                            let (_, left, charge, refunded) = &mut charges[i];
                            if !*refunded {
                                let amount = *left * percent / 100;
                                b.refund(now, *charge, amount);
                                *left -= amount;
                                *refunded = true;
                            }
                        }
                        Step::Refund(..) => {}
                    }
                    bookkeeping_holds(&b)?;
                    let in_window: u64 = charges
                        .iter()
                        .filter(|c| c.0 + window > now)
                        .map(|c| c.1)
                        .sum();
                    let kept_at_most: u64 = charges
                        .iter()
                        .filter(|c| c.0 + window + b.slot_ns > now)
                        .map(|c| c.1)
                        .sum();
                    prop_assert!(in_window <= limit, "{} in the window at {}", in_window, now);
                    prop_assert!(b.used(now) >= in_window, "forgot a charge still in the window");
                    prop_assert!(b.used(now) <= kept_at_most, "kept a charge a slot too long");
                }
            }
        }
    }
}
