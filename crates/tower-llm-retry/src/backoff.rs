//! How long to wait before each retry: a shape ([`Backoff`]), a [`Jitter`] and a cap.
//!
//! tower's `ExponentialBackoff` returns a ready-made `Sleep`, so its delay cannot be compared
//! with the server's retry hint or the deadline, and it offers one shape and one jitter form.
//! This module computes a [`Duration`] instead; the policy then takes the longer of it and the
//! hint, and checks the deadline before sleeping.

use std::time::Duration;

/// The shape of the wait before each retry, before jitter and the cap.
///
/// Retry `n` (the first retry is `n = 1`) waits:
///
/// | shape                               | base delay before retry `n`          |
/// |-------------------------------------|--------------------------------------|
/// | `Fixed(d)`                          | `d`                                  |
/// | `Linear { initial, step }`          | `initial + (n - 1) * step`           |
/// | `Exponential { initial, multiplier }` | `initial * multiplier^(n - 1)`     |
///
/// The result is capped at the layer's `max_delay`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backoff {
    /// The same delay before every retry.
    Fixed(Duration),
    /// A delay that grows by `step` with each retry.
    Linear {
        /// The delay before the first retry.
        initial: Duration,
        /// How much longer each following delay is.
        step: Duration,
    },
    /// A delay that is multiplied by `multiplier` with each retry.
    Exponential {
        /// The delay before the first retry.
        initial: Duration,
        /// The growth factor, at least 1 (2 doubles the delay each time).
        multiplier: f64,
    },
}

impl Backoff {
    /// `delay` before every retry.
    pub const fn fixed(delay: Duration) -> Self {
        Backoff::Fixed(delay)
    }

    /// `initial`, then `initial + step`, `initial + 2 * step`, ...
    pub const fn linear(initial: Duration, step: Duration) -> Self {
        Backoff::Linear { initial, step }
    }

    /// `initial`, then twice as long before each following retry.
    pub const fn exponential(initial: Duration) -> Self {
        Backoff::Exponential {
            initial,
            multiplier: 2.0,
        }
    }

    /// The delay before the first retry.
    pub const fn initial(&self) -> Duration {
        match *self {
            Backoff::Fixed(delay) => delay,
            Backoff::Linear { initial, .. } | Backoff::Exponential { initial, .. } => initial,
        }
    }

    /// The delay before retry `retry` (1-based), before jitter, capped at `cap`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_llm_retry::Backoff;
    ///
    /// let ms = Duration::from_millis;
    /// let backoff = Backoff::exponential(ms(100));
    /// let delays: Vec<_> = (1..=5).map(|n| backoff.base_delay(n, ms(1000))).collect();
    /// assert_eq!(delays, [ms(100), ms(200), ms(400), ms(800), ms(1000)]);
    /// ```
    pub fn base_delay(&self, retry: usize, cap: Duration) -> Duration {
        let steps = u32::try_from(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        let delay = match *self {
            Backoff::Fixed(delay) => delay,
            Backoff::Linear { initial, step } => step
                .checked_mul(steps)
                .and_then(|grown| initial.checked_add(grown))
                .unwrap_or(cap),
            // Zero stays zero: 0 × ∞ is NaN, which would read as an overflow below.
            Backoff::Exponential { initial, .. } if initial.is_zero() => Duration::ZERO,
            Backoff::Exponential {
                initial,
                multiplier,
            } => {
                let factor = multiplier.powi(i32::try_from(steps).unwrap_or(i32::MAX));
                Duration::try_from_secs_f64(initial.as_secs_f64() * factor).unwrap_or(cap)
            }
        };
        delay.min(cap)
    }

    pub(crate) fn check(&self) -> Result<(), &'static str> {
        match *self {
            Backoff::Exponential { multiplier, .. }
                if !(multiplier.is_finite() && multiplier >= 1.0) =>
            {
                Err("multiplier must be a finite number of at least 1")
            }
            _ => Ok(()),
        }
    }
}

impl Default for Backoff {
    /// Exponential from 250 ms.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(250))
    }
}

/// How much randomness is mixed into each delay, so that clients that failed together do not
/// retry together.
///
/// With `base` the capped delay of the [`Backoff`] shape for this retry:
///
/// | jitter         | delay                                                            |
/// |----------------|------------------------------------------------------------------|
/// | `None`         | `base`                                                           |
/// | `Full`         | uniform in `[0, base]`                                           |
/// | `Equal`        | uniform in `[base / 2, base]`                                    |
/// | `Decorrelated` | uniform in `[initial, 3 * previous delay]`, capped (see below)   |
///
/// Decorrelated jitter (from AWS's "Exponential Backoff And Jitter") ignores the shape beyond
/// its first delay: each delay is drawn between the first delay and three times the previous
/// one (the first delay, for the first retry), then capped at `max_delay`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Jitter {
    /// The delay is exactly the backoff's.
    None,
    /// Anywhere between zero and the backoff's delay. Spreads retries the most.
    #[default]
    Full,
    /// Half the backoff's delay, plus up to another half.
    Equal,
    /// Between the first delay and three times the previous one.
    Decorrelated,
}

/// Per-call state of the delay computation: the previous delay (for decorrelated jitter) and
/// the random stream.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DelayState {
    previous: Option<Duration>,
    rng: Option<SplitMix64>,
}

impl DelayState {
    /// The delay before retry `retry` (1-based). `seed` is asked for a seed the first time
    /// this call needs randomness, so calls that never retry never touch the shared seeder.
    pub(crate) fn next_delay(
        &mut self,
        backoff: &Backoff,
        jitter: Jitter,
        cap: Duration,
        retry: usize,
        seed: impl FnOnce() -> u64,
    ) -> Duration {
        let base = backoff.base_delay(retry, cap);
        let delay = match jitter {
            Jitter::None => base,
            Jitter::Full => self.rng(seed).between(Duration::ZERO, base),
            Jitter::Equal => self.rng(seed).between(base / 2, base),
            Jitter::Decorrelated => {
                let low = backoff.initial().min(cap);
                let high = self
                    .previous
                    .unwrap_or(low)
                    .saturating_mul(3)
                    .clamp(low, cap.max(low));
                self.rng(seed).between(low, high).min(cap)
            }
        };
        self.previous = Some(delay);
        delay
    }

    fn rng(&mut self, seed: impl FnOnce() -> u64) -> &mut SplitMix64 {
        self.rng.get_or_insert_with(|| SplitMix64::new(seed()))
    }
}

/// SplitMix64: tiny, fast and good enough to spread retries; not for anything secret.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) const fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[low, high]` (`low` when `high <= low`).
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low);
        if span.is_zero() {
            return low;
        }
        let offset = Duration::try_from_secs_f64(span.as_secs_f64() * self.next_f64())
            .unwrap_or(span)
            .min(span);
        low + offset
    }
}

/// The SplitMix64 finaliser: spreads consecutive inputs over the whole range.
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn shapes_without_jitter() {
        let cap = ms(10_000);
        let fixed = Backoff::fixed(ms(300));
        let linear = Backoff::linear(ms(100), ms(250));
        let exp = Backoff::exponential(ms(100));
        let three = Backoff::Exponential {
            initial: ms(10),
            multiplier: 3.0,
        };
        for (n, f, l, e, t) in [
            (1, 300, 100, 100, 10),
            (2, 300, 350, 200, 30),
            (3, 300, 600, 400, 90),
            (4, 300, 850, 800, 270),
        ] {
            assert_eq!(fixed.base_delay(n, cap), ms(f), "fixed {n}");
            assert_eq!(linear.base_delay(n, cap), ms(l), "linear {n}");
            assert_eq!(exp.base_delay(n, cap), ms(e), "exponential {n}");
            assert_eq!(three.base_delay(n, cap), ms(t), "x3 {n}");
        }
        assert_eq!(exp.base_delay(40, cap), cap);
        assert_eq!(exp.base_delay(usize::MAX, cap), cap);
        assert_eq!(linear.base_delay(usize::MAX, cap), cap);
    }

    #[test]
    fn a_zero_exponential_stays_zero_however_many_retries() {
        // 2^1024 is infinite in f64 and 0 × ∞ is NaN: that must not read as an overflow.
        let zero = Backoff::exponential(Duration::ZERO);
        for n in [1, 2, 1025, 2000, usize::MAX] {
            assert_eq!(zero.base_delay(n, ms(10_000)), Duration::ZERO, "retry {n}");
        }
    }

    #[test]
    fn bad_multiplier_is_rejected() {
        for multiplier in [0.5, f64::NAN, f64::INFINITY, -2.0] {
            let backoff = Backoff::Exponential {
                initial: ms(1),
                multiplier,
            };
            assert!(backoff.check().is_err(), "{multiplier}");
        }
        assert!(Backoff::exponential(ms(1)).check().is_ok());
    }

    fn any_backoff() -> impl Strategy<Value = Backoff> {
        prop_oneof![
            (0u64..5_000).prop_map(|d| Backoff::fixed(ms(d))),
            (0u64..5_000, 0u64..5_000).prop_map(|(i, s)| Backoff::linear(ms(i), ms(s))),
            (0u64..5_000, 1.0f64..4.0).prop_map(|(i, m)| Backoff::Exponential {
                initial: ms(i),
                multiplier: m
            }),
        ]
    }

    fn any_jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
        ]
    }

    proptest! {
        /// Every delay stays within its jitter's bounds and under the cap, whatever the
        /// shape, the retry number and the seed.
        #[test]
        fn delays_stay_within_bounds(
            backoff in any_backoff(),
            jitter in any_jitter(),
            cap_ms in 1u64..20_000,
            seed in any::<u64>(),
            retries in 1usize..30,
        ) {
            let cap = ms(cap_ms);
            let mut state = DelayState::default();
            let mut previous: Option<Duration> = None;
            for n in 1..=retries {
                let delay = state.next_delay(&backoff, jitter, cap, n, || seed);
                let base = backoff.base_delay(n, cap);
                prop_assert!(delay <= cap);
                match jitter {
                    Jitter::None => prop_assert_eq!(delay, base),
                    Jitter::Full => prop_assert!(delay <= base),
                    Jitter::Equal => prop_assert!(delay >= base / 2 && delay <= base),
                    Jitter::Decorrelated => {
                        let low = backoff.initial().min(cap);
                        let high = previous.unwrap_or(low).saturating_mul(3).max(low);
                        prop_assert!(delay >= low && delay <= high.min(cap.max(low)));
                    }
                }
                previous = Some(delay);
            }
        }
    }

    #[test]
    fn full_jitter_spreads() {
        let mut rng = SplitMix64::new(7);
        let draws: Vec<Duration> = (0..1000).map(|_| rng.between(ms(0), ms(1000))).collect();
        let below_half = draws.iter().filter(|d| **d < ms(500)).count();
        // A fair coin 1000 times lands within 400..600 with probability > 1 - 1e-9.
        assert!((400..600).contains(&below_half), "{below_half}");
    }
}
