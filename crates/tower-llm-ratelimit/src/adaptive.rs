//! The adaptive concurrency limit: per key, lowered when the upstream says it is overloaded
//! (429, 529/503, timeouts) and raised while calls succeed (AIMD), capped by the provider's
//! rate-limit headers when it sends them. The rule is on [`AdaptiveConcurrency`].

use std::fmt;

use tower_llm_core::{ConfigError, FailureKind, Outcome};

/// The settings of an adaptive concurrency limit, given to
/// [`RateLimitBuilder::adaptive_concurrency`](crate::RateLimitBuilder::adaptive_concurrency)
/// (which checks them when built).
///
/// # The rule
///
/// Each key keeps a limit `L` (a real number; calls may start while fewer than `⌊L⌋` are in
/// flight), between [`min`](Self::min) and [`max`](Self::max),
/// starting at [`initial`](Self::initial):
///
/// - **a call that succeeds** adds [`increase`](Self::increase)` / L`: about
///   `increase` per round trip while the limit is used. A success while fewer than `L / 2`
///   calls were in flight adds nothing: a limit the traffic does not use proves nothing.
///   Within one call of the level where the last overload happened, the increase is a
///   quarter of that: the probe that found the ceiling is repeated four times less often,
///   which is what keeps 429s rare (each probe above the ceiling costs one). Once the limit
///   is more than one call above that level without an overload, the ceiling has moved and
///   is forgotten.
/// - **a call that failed with one of the [overload kinds](Self::decrease_on)**
///   (default: rate limited, overloaded, timeout) multiplies `L` by
///   [`backoff`](Self::backoff) (default 0.9), once per round trip: the
///   failures of calls that started before the last decrease were caused by the old limit
///   and lower it no further.
/// - **any other outcome** (client errors, server errors, a call or stream dropped by its
///   caller) changes nothing.
///
/// # The provider's headers
///
/// With [`adapt_to_headers`](crate::RateLimitBuilder::adapt_to_headers), a response whose
/// headers say how many requests are left (`R`) before the provider's window resets (in `T`)
/// caps the limit at `max(min, R)` until `T` has passed: more calls in flight than requests
/// left would only meet 429s. A limit above the cap is lowered to it at once (so a new key
/// starting at `initial` is seeded from the first answer) and additive increases stop there;
/// once the reset has passed the cap is gone. A later response replaces the cap.
///
/// # Across instances
///
/// With [`shared`](Self::shared) (feature `redis`), an instance that lowers a key's limit
/// after an overload records it in Redis, and every other instance sharing the backend's
/// namespace applies one decrease of its own (`× backoff`) when it learns of it, on its next
/// round trip to Redis for that key: at most once per round trip of its own calls, as for
/// its own overloads. Increases stay local: each instance probes for its own share. See
/// [`shared`](Self::shared).
///
/// # Example
///
/// ```
/// use tower_llm_core::FailureKind;
/// use tower_llm_ratelimit::{AdaptiveConcurrency, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder()
///     .name("openai")
///     .adaptive_concurrency(
///         AdaptiveConcurrency::new()
///             .min(2)
///             .max(64)
///             .initial(8)
///             .backoff(0.9)
///             .increase(1.0)
///             .decrease_on([FailureKind::RateLimited, FailureKind::Overloaded]),
///     )
///     .build()
///     .expect("valid configuration");
///
/// let err = RateLimitLayer::builder()
///     .adaptive_concurrency(AdaptiveConcurrency::new().min(10).max(5))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.knob(), "adaptive_concurrency.max");
/// ```
///
/// Over any service whose answers core classifies (here `http::Response`s): a 429 without a
/// retry hint lowers the limit, successes raise it again.
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_llm_core::BoxError;
/// use tower_llm_ratelimit::{AdaptiveConcurrency, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let layer = RateLimitLayer::builder()
///     .adaptive_concurrency(AdaptiveConcurrency::new().initial(10))
///     .build()?;
/// let handle = layer.handle();
/// let upstream = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|status: u16| async move {
///         Ok::<_, BoxError>(http::Response::builder().status(status).body(())?)
///     }));
///
/// upstream.clone().oneshot(429).await?; // an answer, classified rate limited
/// assert_eq!(handle.stats().concurrency_limit, Some(9)); // 10 × 0.9
/// assert_eq!(handle.stats().limit_decreases, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq)]
pub struct AdaptiveConcurrency {
    pub(crate) min: usize,
    pub(crate) max: usize,
    pub(crate) initial: usize,
    pub(crate) backoff: f64,
    pub(crate) increase: f64,
    pub(crate) decrease_on: Vec<FailureKind>,
    #[cfg(feature = "redis")]
    pub(crate) shared: bool,
}

impl Default for AdaptiveConcurrency {
    fn default() -> Self {
        AdaptiveConcurrency::new()
    }
}

impl fmt::Debug for AdaptiveConcurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("AdaptiveConcurrency");
        f.field("min", &self.min)
            .field("max", &self.max)
            .field("initial", &self.initial)
            .field("backoff", &self.backoff)
            .field("increase", &self.increase)
            .field("decrease_on", &self.decrease_on);
        #[cfg(feature = "redis")]
        f.field("shared", &self.shared);
        f.finish()
    }
}

impl AdaptiveConcurrency {
    /// The defaults: between 1 and 256 calls in flight per key, starting at 4; backoff 0.9;
    /// increase 1 per round trip; lowered on rate-limited, overloaded and timeout failures.
    pub fn new() -> Self {
        AdaptiveConcurrency {
            min: 1,
            max: 256,
            initial: 4,
            backoff: 0.9,
            increase: 1.0,
            decrease_on: vec![
                FailureKind::RateLimited,
                FailureKind::Overloaded,
                FailureKind::Timeout,
            ],
            #[cfg(feature = "redis")]
            shared: false,
        }
    }

    /// The lowest the limit goes (default 1; at least 1).
    pub fn min(mut self, min: usize) -> Self {
        self.min = min;
        self
    }

    /// The highest the limit goes (default 256; at least `min`).
    pub fn max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// The limit a key starts with (default 4; between `min` and `max`).
    pub fn initial(mut self, initial: usize) -> Self {
        self.initial = initial;
        self
    }

    /// What an overload multiplies the limit by (default 0.9; above 0 and below 1).
    pub fn backoff(mut self, ratio: f64) -> Self {
        self.backoff = ratio;
        self
    }

    /// How much the limit grows per round trip of successes (default 1.0; above 0, at most
    /// `max`): each success adds `increase / limit`.
    pub fn increase(mut self, step: f64) -> Self {
        self.increase = step;
        self
    }

    /// The failure kinds that lower the limit (default rate limited, overloaded and
    /// timeout); at least one.
    pub fn decrease_on(mut self, kinds: impl IntoIterator<Item = FailureKind>) -> Self {
        self.decrease_on = kinds.into_iter().collect();
        self
    }

    /// Shares overloads across instances through the limiter's Redis backend (feature
    /// `redis`; [`build`](crate::RateLimitBuilder::build) refuses it without
    /// [`redis`](crate::RateLimitBuilder::redis)). Off by default.
    ///
    /// When this instance lowers a key's limit because a call met an overload, it records
    /// that in the key's hash in Redis (an overload epoch, with Redis's clock, and which
    /// instance wrote it), in the background. Every instance learns of the latest epoch on
    /// its next round trip to Redis for that key and, if another instance wrote it and it has
    /// not seen it yet, multiplies its own limit by [`backoff`](Self::backoff) once, as for
    /// an overload of its own: not again before one of its own calls that started after that
    /// decrease has ended (news arriving before then was caused by the same crowding, and is
    /// absorbed). An instance that has not seen the latest overload applies it once, whatever
    /// the number of overloads that happened since it last looked. An overload older than
    /// 10 seconds is no longer news.
    ///
    /// *The round trip.* With a requests or tokens quota in Redis, every call already asks
    /// Redis before it starts: the news comes back in the same reply, at no extra cost.
    /// Without one, the limiter reads the key's news in the background at most every
    /// 100 ms per key, when a call starts (it never waits for that read): the limit is about
    /// calls that last longer than that, and a read before each call would put Redis on
    /// every call's path for a number that changes at most once per round trip.
    ///
    /// *What is not shared.* The limit itself and the calls in flight stay per instance:
    /// concurrency is about this instance's connections, each instance probes upward for its
    /// own share, and a global in-flight counter would cost a second round trip per call (to
    /// release the slot) and leak the slots of an instance that dies mid-call.
    ///
    /// *Redis down.* A failed write or read of the news is counted
    /// ([`shared_errors`](crate::RateLimitStats::shared_errors)), logged, and otherwise
    /// ignored: the local limit keeps working on this instance's own overloads. (The quotas,
    /// if any, still follow the backend's [`BackendFailure`](crate::BackendFailure).)
    ///
    /// Every instance that should react together must use the same backend namespace and key
    /// function, as for the quotas.
    #[cfg(feature = "redis")]
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let refuse = |knob: &'static str, reason: &'static str| {
            Err(ConfigError::new("rate limit", knob, reason))
        };
        if self.min == 0 {
            return refuse("adaptive_concurrency.min", "must be at least 1");
        }
        if self.max < self.min {
            return refuse("adaptive_concurrency.max", "must be at least min");
        }
        if self.max > MAX_LIMIT {
            return refuse("adaptive_concurrency.max", "must be at most 1,000,000");
        }
        if !(self.min..=self.max).contains(&self.initial) {
            return refuse(
                "adaptive_concurrency.initial",
                "must be between min and max",
            );
        }
        if !(self.backoff > 0.0 && self.backoff < 1.0) {
            return refuse(
                "adaptive_concurrency.backoff",
                "must be above 0 and below 1",
            );
        }
        if !(self.increase > 0.0 && self.increase <= self.max as f64) {
            return refuse(
                "adaptive_concurrency.increase",
                "must be above 0 and at most max",
            );
        }
        if self.decrease_on.is_empty() {
            return refuse(
                "adaptive_concurrency.decrease_on",
                "must name at least one failure kind (the limit would only grow)",
            );
        }
        Ok(())
    }

    /// What a call's outcome says to the limit (`None`: the caller dropped it).
    #[inline]
    pub(crate) fn verdict(&self, outcome: Option<Outcome>) -> Verdict {
        match outcome {
            Some(Outcome::Success) => Verdict::Success,
            Some(Outcome::Failure(f)) if self.decrease_on.contains(&f.kind) => {
                Verdict::Overload(f.kind)
            }
            _ => Verdict::Neutral,
        }
    }
}

/// How much slower the limit grows within one call of the level where it last met an
/// overload. Measured in `tests/adaptive.rs` (capacity 20, three times as many callers): 1
/// (plain AIMD) gives 2.3 % of calls answered 429, 4 gives about 1 %, for the same goodput.
const PROBE_SLOWDOWN: f64 = 4.0;

/// A bound on `max` that keeps the float arithmetic exact and a limit's memory meaningless.
const MAX_LIMIT: usize = 1_000_000;

/// What one call's end says to its key's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Overload(FailureKind),
    /// Dropped, or a failure that says nothing of the upstream's load.
    Neutral,
}

/// Why a limit moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Calls succeeded.
    Success,
    /// A call failed with this overload kind.
    Overload(FailureKind),
    /// The provider's headers said fewer requests are left.
    Headers,
    /// Another instance recorded an overload in the shared store.
    Shared,
}

impl Cause {
    #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cause::Success => "success",
            Cause::Overload(kind) => kind.as_str(),
            Cause::Headers => "headers",
            Cause::Shared => "shared",
        }
    }
}

/// A limit that moved (whole calls: a change below one call is not reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LimitChange {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) cause: Cause,
    pub(crate) at_min: bool,
}

/// The latest overload recorded in the shared store for a key: when (an epoch on the store's
/// clock, growing with every record) and which instance recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct OverloadNews {
    pub(crate) epoch: u64,
    pub(crate) writer: u64,
}

/// One key's adaptive limit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdaptiveLimit {
    limit: f64,
    /// The limit when the last overload lowered it: the ceiling found by probing.
    overload_level: Option<f64>,
    /// When the limit was last lowered by an overload (calls started before then do not
    /// lower it again).
    decreased_at: Option<u64>,
    /// The server's cap and until when it holds.
    cap: Option<(usize, u64)>,
    /// The latest admission time among calls that ended with a verdict: once it reaches
    /// `decreased_at`, a round trip has passed since the last decrease.
    last_ended_start: u64,
    /// The latest shared overload epoch applied or absorbed.
    seen_overload: u64,
    /// Whether the limit backed off for an overload of its own since
    /// [`take_backed_off`](Self::take_backed_off) last looked (an instance sharing overloads
    /// records those).
    backed_off: bool,
}

impl AdaptiveLimit {
    pub(crate) fn new(settings: &AdaptiveConcurrency) -> Self {
        AdaptiveLimit {
            limit: settings.initial as f64,
            overload_level: None,
            decreased_at: None,
            cap: None,
            last_ended_start: 0,
            seen_overload: 0,
            backed_off: false,
        }
    }

    /// Whether recording `verdict` reads the time: an overload does (to back off once per
    /// round trip), and so does anything under a server's cap (which runs out); without a
    /// cap, [`effective`](Self::effective) and [`record`](Self::record) of a success or a
    /// neutral end ignore `now`.
    #[inline]
    pub(crate) fn needs_clock(&self, verdict: Verdict) -> bool {
        self.cap.is_some() || matches!(verdict, Verdict::Overload(_))
    }

    /// The number of calls that may be in flight now.
    #[inline]
    pub(crate) fn effective(&self, settings: &AdaptiveConcurrency, now: u64) -> usize {
        let whole = self.limit as usize;
        match self.cap {
            Some((cap, until)) if now < until => whole.min(cap),
            _ => whole,
        }
        .clamp(settings.min, settings.max)
    }

    /// Records a call's end: `in_flight` counts it, `started` is when it was admitted.
    #[inline]
    pub(crate) fn record(
        &mut self,
        settings: &AdaptiveConcurrency,
        verdict: Verdict,
        in_flight: usize,
        started: u64,
        now: u64,
    ) -> Option<LimitChange> {
        let from = self.effective(settings, now);
        // A cap past its reset is gone: forgotten, so that later ends need no clock again
        // (`now` is read whenever there is a cap).
        if self.cap.is_some_and(|(_, until)| now >= until) {
            self.cap = None;
        }
        let cause = match verdict {
            Verdict::Neutral => return None,
            Verdict::Success => {
                self.last_ended_start = self.last_ended_start.max(started);
                if (in_flight as f64) * 2.0 < self.limit {
                    return None;
                }
                let ceiling = match self.cap {
                    Some((cap, until)) if now < until => cap.max(settings.min),
                    _ => settings.max,
                } as f64;
                if self.limit < ceiling {
                    let mut step = settings.increase / self.limit;
                    match self.overload_level {
                        Some(level) if self.limit > level + 1.0 => self.overload_level = None,
                        Some(level) if self.limit + 1.0 >= level => step /= PROBE_SLOWDOWN,
                        _ => {}
                    }
                    self.limit = (self.limit + step).min(ceiling);
                }
                Cause::Success
            }
            Verdict::Overload(kind) => {
                self.last_ended_start = self.last_ended_start.max(started);
                if self.decreased_at.is_some_and(|at| started < at) {
                    return None;
                }
                let before = self.limit;
                self.back_off(settings, now);
                // Shared only when it lowered something: an instance at its minimum has no
                // decrease to tell the others about.
                if self.limit < before {
                    self.backed_off = true;
                }
                Cause::Overload(kind)
            }
        };
        self.changed(settings, from, cause, now)
    }

    /// Whether the limit backed off for an overload of its own since the last look.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn take_backed_off(&mut self) -> bool {
        std::mem::take(&mut self.backed_off)
    }

    /// The multiplicative decrease, remembering where and when it happened.
    fn back_off(&mut self, settings: &AdaptiveConcurrency, now: u64) {
        self.decreased_at = Some(now);
        self.overload_level = Some(self.limit);
        self.limit = (self.limit * settings.backoff).max(settings.min as f64);
    }

    /// Takes in the latest overload another instance may have recorded for this key
    /// (`me`: this instance's id): one decrease if it is new, not this instance's own, and
    /// a round trip of this instance's calls has passed since its last decrease (otherwise
    /// the news is absorbed by that decrease, as the failures of calls started before it
    /// are).
    pub(crate) fn shared_overload(
        &mut self,
        settings: &AdaptiveConcurrency,
        news: OverloadNews,
        me: u64,
        now: u64,
    ) -> Option<LimitChange> {
        if news.epoch <= self.seen_overload {
            return None;
        }
        self.seen_overload = news.epoch;
        if news.writer == me
            || self
                .decreased_at
                .is_some_and(|at| self.last_ended_start < at)
        {
            return None;
        }
        let from = self.effective(settings, now);
        self.back_off(settings, now);
        self.changed(settings, from, Cause::Shared, now)
    }

    /// The server says `remaining` requests are left until `until`: caps the limit there.
    pub(crate) fn cap(
        &mut self,
        settings: &AdaptiveConcurrency,
        remaining: u64,
        until: u64,
        now: u64,
    ) -> Option<LimitChange> {
        let from = self.effective(settings, now);
        let cap = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .clamp(settings.min, settings.max);
        self.cap = Some((cap, until));
        if self.limit > cap as f64 {
            self.limit = cap as f64;
        }
        self.changed(settings, from, Cause::Headers, now)
    }

    fn changed(
        &self,
        settings: &AdaptiveConcurrency,
        from: usize,
        cause: Cause,
        now: u64,
    ) -> Option<LimitChange> {
        let to = self.effective(settings, now);
        (to != from).then_some(LimitChange {
            from,
            to,
            cause,
            at_min: to == settings.min,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_about_once_per_round_trip_and_backs_off_once_per_round_trip() {
        let s = AdaptiveConcurrency::new().initial(10).max(100);
        let mut l = AdaptiveLimit::new(&s);
        // Ten successes at a limit of 10: about one more call.
        for _ in 0..10 {
            l.record(&s, Verdict::Success, 10, 0, 1);
        }
        assert_eq!(l.effective(&s, 1), 10, "just short of 11: {}", l.limit);
        l.record(&s, Verdict::Success, 10, 0, 1);
        assert_eq!(l.effective(&s, 1), 11);
        // An overload backs off; failures of calls started before it do not again.
        let change = l.record(&s, Verdict::Overload(FailureKind::RateLimited), 11, 5, 10);
        assert_eq!(change.map(|c| c.to), Some(9));
        assert!(l.take_backed_off());
        assert_eq!(
            l.record(&s, Verdict::Overload(FailureKind::Timeout), 9, 9, 11),
            None
        );
        assert!(!l.take_backed_off());
        l.record(&s, Verdict::Overload(FailureKind::Timeout), 9, 10, 12);
        assert!(l.take_backed_off());
        // An idle limit does not grow.
        let before = l.limit;
        l.record(&s, Verdict::Success, 1, 12, 13);
        assert_eq!(l.limit, before);
        l.record(&s, Verdict::Neutral, 9, 12, 13);
        assert_eq!(l.limit, before);
    }

    #[test]
    fn stays_within_min_and_max_and_under_the_cap_until_its_reset() {
        let s = AdaptiveConcurrency::new().min(2).max(5).initial(5);
        let mut l = AdaptiveLimit::new(&s);
        for t in 0..100 {
            l.record(&s, Verdict::Overload(FailureKind::Overloaded), 5, t, t);
        }
        assert_eq!(l.effective(&s, 100), 2);
        for _ in 0..1000 {
            l.record(&s, Verdict::Success, 5, 100, 100);
        }
        assert_eq!(l.effective(&s, 100), 5);
        let change = l.cap(&s, 3, 200, 100).expect("lowered");
        assert_eq!(
            (change.from, change.to, change.cause),
            (5, 3, Cause::Headers)
        );
        for _ in 0..1000 {
            l.record(&s, Verdict::Success, 5, 100, 150);
        }
        assert_eq!(l.effective(&s, 150), 3);
        assert_eq!(l.cap(&s, 0, 300, 150).map(|c| c.to), Some(2));
        // After the reset the cap is gone and the limit grows again.
        for _ in 0..1000 {
            l.record(&s, Verdict::Success, 5, 300, 301);
        }
        assert_eq!(l.effective(&s, 301), 5);
    }

    #[test]
    fn another_instances_overload_backs_off_once_per_round_trip() {
        const ME: u64 = 7;
        let s = AdaptiveConcurrency::new().initial(20).max(100);
        let mut l = AdaptiveLimit::new(&s);
        let news = |epoch, writer| OverloadNews { epoch, writer };
        // News from another instance: one decrease, with the shared cause.
        let change = l
            .shared_overload(&s, news(100, 1), ME, 10)
            .expect("lowered");
        assert_eq!(
            (change.from, change.to, change.cause),
            (20, 18, Cause::Shared)
        );
        // The same news again changes nothing.
        assert_eq!(l.shared_overload(&s, news(100, 1), ME, 11), None);
        // Newer news before a call started after the decrease has ended: absorbed.
        assert_eq!(l.shared_overload(&s, news(101, 2), ME, 12), None);
        // A call started before the decrease ends: still absorbed.
        l.record(&s, Verdict::Success, 18, 9, 13);
        assert_eq!(l.shared_overload(&s, news(102, 2), ME, 14), None);
        // Once a call started after it has ended, the next news counts.
        l.record(&s, Verdict::Success, 18, 10, 15);
        assert_eq!(
            l.shared_overload(&s, news(103, 2), ME, 16).map(|c| c.to),
            Some(16)
        );
        // This instance's own record is not news; older epochs neither.
        l.record(&s, Verdict::Success, 16, 16, 17);
        assert_eq!(l.shared_overload(&s, news(104, ME), ME, 18), None);
        assert_eq!(l.shared_overload(&s, news(50, 1), ME, 18), None);
        // A local overload of a call started before the shared decrease is ignored too.
        assert_eq!(
            l.record(&s, Verdict::Overload(FailureKind::RateLimited), 16, 15, 19),
            None
        );
        assert!(!l.take_backed_off());
        // Never below min.
        let s = AdaptiveConcurrency::new().min(3).initial(3);
        let mut l = AdaptiveLimit::new(&s);
        assert_eq!(l.shared_overload(&s, news(1, 1), ME, 1), None);
        assert_eq!(l.effective(&s, 1), 3);
    }

    #[test]
    fn validation_names_the_knob() {
        let knob = |s: AdaptiveConcurrency| s.validate().err().map(|e| e.knob().to_owned());
        assert_eq!(knob(AdaptiveConcurrency::new()), None);
        assert_eq!(
            knob(AdaptiveConcurrency::new().min(0)),
            Some("adaptive_concurrency.min".to_owned())
        );
        assert_eq!(
            knob(AdaptiveConcurrency::new().initial(0)),
            Some("adaptive_concurrency.initial".to_owned())
        );
        assert_eq!(
            knob(AdaptiveConcurrency::new().initial(300)),
            Some("adaptive_concurrency.initial".to_owned())
        );
        for bad in [0.0, 1.0, -0.5, f64::NAN] {
            assert_eq!(
                knob(AdaptiveConcurrency::new().backoff(bad)),
                Some("adaptive_concurrency.backoff".to_owned())
            );
        }
        for bad in [0.0, f64::INFINITY, f64::NAN, 1000.0] {
            assert_eq!(
                knob(AdaptiveConcurrency::new().increase(bad)),
                Some("adaptive_concurrency.increase".to_owned())
            );
        }
        assert_eq!(
            knob(AdaptiveConcurrency::new().decrease_on([])),
            Some("adaptive_concurrency.decrease_on".to_owned())
        );
        assert_eq!(
            knob(AdaptiveConcurrency::new().max(usize::MAX)),
            Some("adaptive_concurrency.max".to_owned())
        );
    }
}
