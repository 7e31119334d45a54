//! What a breaker trips on, how long it stays open and how it probes: the builder and its
//! validation.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_llm_core::{DefaultClassifier, FailureKind, KeyFn, Outcome};

use crate::breaker::Breaker;
use crate::keyed::{KeyedBreakers, KeyedCircuitBreakerLayer};
use crate::layer::CircuitBreakerLayer;
use crate::state::StateChange;

/// The sliding window over which failure and slow-call rates are measured.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_breaker::Window;
///
/// let last_hundred_calls = Window::count(100);
/// let last_minute = Window::time(Duration::from_secs(60));
/// let last_minute_by_5s = Window::time_with_buckets(Duration::from_secs(60), 12);
/// # let _ = (last_hundred_calls, last_minute, last_minute_by_5s);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last `size` recorded calls.
    Count {
        /// How many calls the window holds.
        size: usize,
    },
    /// The calls recorded during the last `length`, kept in `buckets` equal slices; a slice
    /// leaves the window as a whole, so the window covers between `length - length / buckets`
    /// and `length`.
    Time {
        /// How far back the window reaches.
        length: Duration,
        /// How many slices the window is cut into.
        buckets: usize,
    },
}

impl Window {
    /// The last `size` recorded calls.
    pub const fn count(size: usize) -> Self {
        Window::Count { size }
    }

    /// The calls of the last `length`, in one-second buckets (or 10 buckets when `length` is
    /// under ten seconds).
    pub fn time(length: Duration) -> Self {
        let secs = length.as_secs();
        let buckets = if secs >= 10 {
            usize::try_from(secs).unwrap_or(usize::MAX).min(MAX_BUCKETS)
        } else {
            10
        };
        Window::Time { length, buckets }
    }

    /// The calls of the last `length`, in `buckets` slices.
    pub const fn time_with_buckets(length: Duration, buckets: usize) -> Self {
        Window::Time { length, buckets }
    }
}

const MAX_WINDOW_SIZE: usize = 1 << 16;
/// Probes beyond this would only stretch half-open; it also keeps probe counts exact in an
/// `f64`.
const MAX_PROBES: usize = 1 << 16;

/// The default failure rate that trips the breaker.
const DEFAULT_FAILURE_RATE: f64 = 0.5;
/// The default window: the last this many calls.
const DEFAULT_WINDOW: usize = 100;
/// The default number of calls the window must hold before the rate can trip it.
const DEFAULT_MINIMUM_CALLS: usize = 40;
const MAX_BUCKETS: usize = 3600;

pub use tower_llm_core::ConfigError;

pub(crate) type Hook = Arc<dyn Fn(&StateChange) + Send + Sync>;

#[derive(Clone, Copy, Debug)]
pub(crate) struct SlowCalls {
    pub(crate) threshold: Duration,
    pub(crate) rate: f64,
}

/// The validated configuration every breaker built from one builder shares.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) name: Cow<'static, str>,
    pub(crate) consecutive_failures: Option<usize>,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) slow_calls: Option<SlowCalls>,
    pub(crate) window: Window,
    pub(crate) minimum_calls: usize,
    pub(crate) count_rate_limited: bool,
    pub(crate) cooldown: Duration,
    pub(crate) cooldown_multiplier: f64,
    pub(crate) max_cooldown: Duration,
    pub(crate) probes: usize,
    pub(crate) probe_successes: usize,
    pub(crate) hook: Option<Hook>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("failure_rate", &self.failure_rate)
            .field("slow_calls", &self.slow_calls)
            .field("window", &self.window)
            .field("minimum_calls", &self.minimum_calls)
            .field("count_rate_limited", &self.count_rate_limited)
            .field("cooldown", &self.cooldown)
            .field("cooldown_multiplier", &self.cooldown_multiplier)
            .field("max_cooldown", &self.max_cooldown)
            .field("probes", &self.probes)
            .field("probe_successes", &self.probe_successes)
            .field("hook", &self.hook.as_ref().map(|_| "Fn(&StateChange)"))
            .finish()
    }
}

/// What one finished call means to the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Failure,
    /// Says nothing about the upstream's health (a client error, a cancellation, ...).
    Ignored,
}

impl Config {
    pub(crate) fn verdict(&self, outcome: &Outcome) -> Verdict {
        match outcome.kind() {
            None => Verdict::Success,
            Some(kind) if kind.is_upstream_unhealthy() => Verdict::Failure,
            Some(FailureKind::RateLimited) if self.count_rate_limited => Verdict::Failure,
            Some(_) => Verdict::Ignored,
        }
    }

    /// Whether a call's start time is needed: only the slow-call policy measures calls.
    pub(crate) fn times_calls(&self) -> bool {
        self.slow_calls.is_some()
    }

    /// Whether a call's end time is needed: to measure it, or to put its outcome in a time
    /// bucket. Without either, the closed path never reads the clock.
    pub(crate) fn clock_at_end(&self) -> bool {
        self.times_calls() || (self.uses_window() && matches!(self.window, Window::Time { .. }))
    }

    pub(crate) fn uses_window(&self) -> bool {
        self.failure_rate.is_some() || self.slow_calls.is_some()
    }

    /// The cool-down after the `trips`-th trip in a row (1 for the first).
    pub(crate) fn cooldown_for(&self, trips: u32) -> Duration {
        if trips <= 1 || self.cooldown_multiplier <= 1.0 {
            return self.cooldown;
        }
        let exponent = i32::try_from(trips - 1).unwrap_or(i32::MAX);
        let secs = self.cooldown.as_secs_f64() * self.cooldown_multiplier.powi(exponent);
        if !secs.is_finite() || secs >= self.max_cooldown.as_secs_f64() {
            return self.max_cooldown;
        }
        Duration::from_secs_f64(secs).min(self.max_cooldown)
    }
}

/// The default policy, which is valid (see the `default_policy_is_valid` test).
pub(crate) fn default_config() -> Config {
    CircuitBreakerBuilder::default().config
}

/// Builds a [`CircuitBreakerLayer`] or a [`KeyedCircuitBreakerLayer`].
///
/// Defaults: trip when at least **50 % of the last 100 calls** failed, once the window holds
/// **40 calls** ([`failure_rate`], [`window`], [`minimum_calls`]); stay open 10 s (not
/// growing), then admit one probe and close on its success. Counting consecutive failures
/// is off until [`consecutive_failures`] turns it on, and so is the slow-call policy
/// ([`slow_calls`]); [`without_failure_rate`] turns the default policy off.
///
/// Why these numbers: on an upstream where 30 % of calls fail at random (a flaky provider
/// that retry alone copes with), 20 concurrent callers making 1 000 calls opened a fresh
/// breaker with the default in 1 of 100 seeded runs, against 9 with a minimum of 20 calls and
/// 83 with `consecutive_failures(5)`. A hard outage opens it after 40 failed calls.
/// `docs/breaker.md` has the figures and says when consecutive counting fits better.
///
/// [`failure_rate`]: Self::failure_rate
/// [`without_failure_rate`]: Self::without_failure_rate
/// [`consecutive_failures`]: Self::consecutive_failures
/// [`slow_calls`]: Self::slow_calls
/// [`window`]: Self::window
/// [`minimum_calls`]: Self::minimum_calls
#[derive(Clone, Debug)]
pub struct CircuitBreakerBuilder {
    config: Config,
    probe_success_rate: f64,
}

impl Default for CircuitBreakerBuilder {
    fn default() -> Self {
        CircuitBreakerBuilder {
            config: Config {
                name: Cow::Borrowed("breaker"),
                consecutive_failures: None,
                failure_rate: Some(DEFAULT_FAILURE_RATE),
                slow_calls: None,
                window: Window::count(DEFAULT_WINDOW),
                minimum_calls: DEFAULT_MINIMUM_CALLS,
                count_rate_limited: false,
                cooldown: Duration::from_secs(10),
                cooldown_multiplier: 1.0,
                max_cooldown: Duration::from_secs(10),
                probes: 1,
                probe_successes: 1,
                hook: None,
            },
            probe_success_rate: 1.0,
        }
    }
}

impl CircuitBreakerBuilder {
    /// A builder with the defaults above.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the breaker (default `"breaker"`): the `name` label of its metrics, the `name`
    /// field of its events and [`StateChange::breaker`].
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Also trips after `n` upstream failures in a row (a success resets the count; ignored
    /// outcomes such as client errors leave it alone). Off by default.
    ///
    /// Under concurrent traffic a run of `n` failures is common on an upstream that is merely
    /// flaky (with 30 % of calls failing, 5 in a row happen about once every 600 calls), so
    /// this fits low traffic, a single caller, or detecting a hard-down upstream before the
    /// window holds [`minimum_calls`](Self::minimum_calls); see `docs/breaker.md`.
    pub fn consecutive_failures(mut self, n: usize) -> Self {
        self.config.consecutive_failures = Some(n);
        self
    }

    /// Turns the consecutive-failures policy off again (the default).
    pub fn without_consecutive_failures(mut self) -> Self {
        self.config.consecutive_failures = None;
        self
    }

    /// Trips when at least `rate` (0 < rate <= 1) of the calls in the [`window`](Self::window)
    /// failed, once it holds [`minimum_calls`](Self::minimum_calls). Default 0.5.
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.config.failure_rate = Some(rate);
        self
    }

    /// Turns the failure-rate policy off (leaving [`consecutive_failures`] or
    /// [`slow_calls`], one of which must then be on).
    ///
    /// [`consecutive_failures`]: Self::consecutive_failures
    /// [`slow_calls`]: Self::slow_calls
    pub fn without_failure_rate(mut self) -> Self {
        self.config.failure_rate = None;
        self
    }

    /// Counts a call that took at least `threshold` as slow, and trips when at least `rate` of
    /// the calls in the window were slow. A slow probe counts as a failed probe.
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.config.slow_calls = Some(SlowCalls { threshold, rate });
        self
    }

    /// The sliding window of the rate policies (default: the last 100 calls).
    pub fn window(mut self, window: Window) -> Self {
        self.config.window = window;
        self
    }

    /// How many calls the window must hold before a rate can trip the breaker (default 40).
    ///
    /// Lower detects a hard outage sooner (after `n` failed calls) but lets chance runs of
    /// failures on a flaky upstream trip it more often; see [the defaults](Self).
    pub fn minimum_calls(mut self, n: usize) -> Self {
        self.config.minimum_calls = n;
        self
    }

    /// Whether a 429 (rate limited) counts as a failure. Off by default: a provider that
    /// rate-limits is healthy and telling us to slow down, which is the rate limiter's job.
    /// Turn it on when a 429 from this upstream really means "overloaded".
    pub fn count_rate_limited(mut self, yes: bool) -> Self {
        self.config.count_rate_limited = yes;
        self
    }

    /// How long the breaker stays open before it admits probes.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.config.cooldown = cooldown;
        if self.config.cooldown_multiplier <= 1.0 {
            self.config.max_cooldown = cooldown;
        }
        self
    }

    /// Grows the cool-down by `multiplier` each time a probe fails and the breaker opens
    /// again, up to `max`; a close resets it.
    pub fn cooldown_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.config.cooldown_multiplier = multiplier;
        self.config.max_cooldown = max;
        self
    }

    /// How many probe calls half-open admits (at most this many are in flight; a dropped
    /// probe gives its place back).
    pub fn probes(mut self, n: usize) -> Self {
        self.config.probes = n;
        self
    }

    /// Which share of the probes must succeed to close (0 < rate <= 1, default 1: every
    /// probe). The breaker closes as soon as `ceil(rate * probes)` probes succeeded and opens
    /// again as soon as a failure makes that impossible, so with the default a single failed
    /// probe reopens it.
    pub fn probe_success_rate(mut self, rate: f64) -> Self {
        self.probe_success_rate = rate;
        self
    }

    /// Calls `hook` after each state change (outside the breaker's lock, so it may read
    /// stats).
    pub fn on_state_change(mut self, hook: impl Fn(&StateChange) + Send + Sync + 'static) -> Self {
        self.config.hook = Some(Arc::new(hook));
        self
    }

    /// Checks the configuration as [`build`](Self::build) would, without making a breaker
    /// (so no metric is registered): for validating a configuration file before starting.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.clone().validate().map(drop)
    }

    /// A layer with one breaker, shared by every service it wraps and their clones.
    pub fn build(self) -> Result<CircuitBreakerLayer<DefaultClassifier>, ConfigError> {
        let config = Arc::new(self.validate()?);
        Ok(CircuitBreakerLayer::from_breaker(Arc::new(Breaker::new(
            config, None,
        ))))
    }

    /// A layer with one breaker per key that `key` (a [`KeyFn`]: any `Fn(&Req) -> K`) picks
    /// out of a request (a provider, a model, a host), at most `max_keys` of them: beyond that
    /// the least recently used closed breaker is forgotten. The key's `Display` form labels
    /// its metrics and state changes.
    pub fn build_keyed<F, Req>(
        self,
        key: F,
        max_keys: usize,
    ) -> Result<KeyedCircuitBreakerLayer<F::Key, F, DefaultClassifier>, ConfigError>
    where
        F: KeyFn<Req>,
        F::Key: fmt::Display,
    {
        if max_keys == 0 {
            return Err(ConfigError::new(
                "breaker",
                "max_keys",
                "must be at least 1",
            ));
        }
        let config = Arc::new(self.validate()?);
        Ok(KeyedCircuitBreakerLayer::from_parts(
            Arc::new(KeyedBreakers::new(config, max_keys)),
            key,
        ))
    }

    pub(crate) fn validate(mut self) -> Result<Config, ConfigError> {
        let c = &mut self.config;
        if c.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "breaker",
                "consecutive_failures",
                "must be at least 1 (use without_consecutive_failures to turn it off)",
            ));
        }
        let rate_ok = |r: f64| r > 0.0 && r <= 1.0;
        if let Some(rate) = c.failure_rate
            && !rate_ok(rate)
        {
            return Err(ConfigError::new(
                "breaker",
                "failure_rate",
                format!("must be in (0, 1], got {rate}"),
            ));
        }
        if let Some(slow) = c.slow_calls {
            if !rate_ok(slow.rate) {
                return Err(ConfigError::new(
                    "breaker",
                    "slow_calls",
                    format!("rate must be in (0, 1], got {}", slow.rate),
                ));
            }
            if slow.threshold.is_zero() {
                return Err(ConfigError::new(
                    "breaker",
                    "slow_calls",
                    "threshold must be above zero",
                ));
            }
        }
        if c.consecutive_failures.is_none() && !c.uses_window() {
            return Err(ConfigError::new(
                "breaker",
                "failure_rate",
                "turned off with no consecutive_failures or slow_calls policy: the breaker could never trip",
            ));
        }
        match c.window {
            Window::Count { size } => {
                if size == 0 || size > MAX_WINDOW_SIZE {
                    return Err(ConfigError::new(
                        "breaker",
                        "window",
                        format!("count must be in 1..={MAX_WINDOW_SIZE}, got {size}"),
                    ));
                }
                if c.uses_window() && c.minimum_calls > size {
                    return Err(ConfigError::new(
                        "breaker",
                        "minimum_calls",
                        format!(
                            "{} is more than the window holds ({size}): no rate could ever trip",
                            c.minimum_calls
                        ),
                    ));
                }
            }
            Window::Time { length, buckets } => {
                if buckets == 0 || buckets > MAX_BUCKETS {
                    return Err(ConfigError::new(
                        "breaker",
                        "window",
                        format!("buckets must be in 1..={MAX_BUCKETS}, got {buckets}"),
                    ));
                }
                if length < Duration::from_millis(buckets as u64) {
                    return Err(ConfigError::new(
                        "breaker",
                        "window",
                        "length must be at least one millisecond per bucket",
                    ));
                }
            }
        }
        if c.minimum_calls == 0 {
            return Err(ConfigError::new(
                "breaker",
                "minimum_calls",
                "must be at least 1",
            ));
        }
        if c.cooldown.is_zero() {
            return Err(ConfigError::new(
                "breaker",
                "cooldown",
                "must be above zero",
            ));
        }
        if !(c.cooldown_multiplier.is_finite() && c.cooldown_multiplier >= 1.0) {
            return Err(ConfigError::new(
                "breaker",
                "cooldown_backoff",
                format!(
                    "multiplier must be a finite number >= 1, got {}",
                    c.cooldown_multiplier
                ),
            ));
        }
        if c.max_cooldown < c.cooldown {
            return Err(ConfigError::new(
                "breaker",
                "cooldown_backoff",
                format!(
                    "max {:?} is below the cool-down {:?}",
                    c.max_cooldown, c.cooldown
                ),
            ));
        }
        if c.probes == 0 || c.probes > MAX_PROBES {
            return Err(ConfigError::new(
                "breaker",
                "probes",
                format!("must be in 1..={MAX_PROBES}, got {}", c.probes),
            ));
        }
        if !rate_ok(self.probe_success_rate) {
            return Err(ConfigError::new(
                "breaker",
                "probe_success_rate",
                format!("must be in (0, 1], got {}", self.probe_success_rate),
            ));
        }
        // 0.7 * 10 is 7.000000000000001 in floating point: shave the rounding error off
        // before rounding up, then keep the result within 1..=probes.
        #[allow(clippy::cast_precision_loss)]
        let needed = (self.probe_success_rate * c.probes as f64 - 1e-9).ceil();
        // `needed` is in 0..=probes; the cast saturates and the clamp keeps it there.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let needed = needed as usize;
        c.probe_successes = needed.clamp(1, c.probes);
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knob(builder: CircuitBreakerBuilder) -> String {
        builder.validate().expect_err("invalid").knob().to_owned()
    }

    #[test]
    fn bad_knobs_are_named() {
        let b = CircuitBreakerBuilder::new;
        assert_eq!(knob(b().consecutive_failures(0)), "consecutive_failures");
        assert_eq!(knob(b().without_failure_rate()), "failure_rate");
        assert_eq!(
            knob(b().without_failure_rate().window(Window::count(0))),
            "failure_rate"
        );
        assert_eq!(knob(b().failure_rate(0.0)), "failure_rate");
        assert_eq!(knob(b().failure_rate(1.5)), "failure_rate");
        assert_eq!(knob(b().slow_calls(Duration::ZERO, 0.5)), "slow_calls");
        assert_eq!(
            knob(b().failure_rate(0.5).window(Window::count(0))),
            "window"
        );
        assert_eq!(
            knob(
                b().failure_rate(0.5)
                    .window(Window::count(5))
                    .minimum_calls(6)
            ),
            "minimum_calls"
        );
        assert_eq!(
            knob(b().window(Window::time_with_buckets(Duration::from_secs(1), 0))),
            "window"
        );
        assert_eq!(knob(b().cooldown(Duration::ZERO)), "cooldown");
        assert_eq!(
            knob(b().cooldown_backoff(0.5, Duration::from_secs(60))),
            "cooldown_backoff"
        );
        assert_eq!(
            knob(
                b().cooldown(Duration::from_secs(10))
                    .cooldown_backoff(2.0, Duration::from_secs(1))
            ),
            "cooldown_backoff"
        );
        assert_eq!(knob(b().probes(0)), "probes");
        assert_eq!(knob(b().probe_success_rate(0.0)), "probe_success_rate");
        let err = b().probes(0).validate().expect_err("invalid");
        assert!(err.to_string().contains("`probes`"), "{err}");
    }

    #[test]
    fn default_policy_is_valid() {
        let validated = CircuitBreakerBuilder::new().validate().expect("valid");
        let default = default_config();
        assert_eq!(format!("{validated:?}"), format!("{default:?}"));
    }

    #[test]
    fn probe_successes_round_up() {
        let c = CircuitBreakerBuilder::new()
            .probes(10)
            .probe_success_rate(0.75)
            .validate()
            .expect("valid");
        assert_eq!(c.probe_successes, 8);
        let c = CircuitBreakerBuilder::new()
            .probes(3)
            .validate()
            .expect("valid");
        assert_eq!(c.probe_successes, 3);
        for (rate, probes, needed) in [(0.7, 10, 7), (0.1, 10, 1), (0.01, 10, 1), (0.5, 3, 2)] {
            let c = CircuitBreakerBuilder::new()
                .probes(probes)
                .probe_success_rate(rate)
                .validate()
                .expect("valid");
            assert_eq!(c.probe_successes, needed, "{rate} of {probes}");
        }
    }

    #[test]
    fn time_windows_default_to_one_second_buckets() {
        assert_eq!(
            Window::time(Duration::from_secs(60)),
            Window::time_with_buckets(Duration::from_secs(60), 60)
        );
        assert_eq!(
            Window::time(Duration::from_secs(5)),
            Window::time_with_buckets(Duration::from_secs(5), 10)
        );
    }

    #[test]
    fn cooldown_grows_and_caps() {
        let c = CircuitBreakerBuilder::new()
            .cooldown(Duration::from_secs(1))
            .cooldown_backoff(2.0, Duration::from_secs(5))
            .validate()
            .expect("valid");
        let got: Vec<_> = (1..=5).map(|t| c.cooldown_for(t).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 5, 5]);
        assert_eq!(c.cooldown_for(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn only_unhealthy_upstream_counts() {
        let c = CircuitBreakerBuilder::new().validate().expect("valid");
        for kind in FailureKind::ALL {
            let expected = if kind.is_upstream_unhealthy() {
                Verdict::Failure
            } else {
                Verdict::Ignored
            };
            assert_eq!(c.verdict(&Outcome::failure(kind)), expected, "{kind}");
        }
        assert_eq!(c.verdict(&Outcome::Success), Verdict::Success);
        let c = CircuitBreakerBuilder::new()
            .count_rate_limited(true)
            .validate()
            .expect("valid");
        assert_eq!(
            c.verdict(&Outcome::failure(FailureKind::RateLimited)),
            Verdict::Failure
        );
    }
}
