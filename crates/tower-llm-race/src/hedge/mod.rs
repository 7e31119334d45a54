//! Hedge: the first service at once, the next only if the answer is late.
//!
//! A request goes to the first service. If no success has come back after the hedge delay,
//! the same request goes to the next service too, and so on, up to
//! [`max_extra_attempts`](HedgeBuilder::max_extra_attempts) extra calls; the first success
//! wins and the calls still running are dropped (cancelled). Most requests cost one call;
//! only the slow tail pays for two.
//!
//! - **Delay**: fixed ([`HedgeDelay::Fixed`]), or a percentile of the first service's
//!   latency learned online ([`HedgeDelay::Percentile`]; e.g. hedge the 10 % slowest
//!   requests at p90). The learned histogram is lock-free (one atomic add per sample) over a
//!   sliding window.
//! - **Budget**: a [`HedgeBudget`] caps the extra load: each request earns a fraction of a
//!   hedge, and a hedge whose delay passes with the budget spent is not sent. Or a core
//!   [`AttemptBudget`] shared with retry and fallback layers
//!   ([`shared_budget`](HedgeBuilder::shared_budget)), which failovers draw on too.
//! - **Deadline**: with a call [`Deadline`](tower_llm_core::Deadline) current (core's
//!   `DeadlineLayer` further out), no leg is sent at or past it: a hedge whose delay would
//!   end there is not armed, and when the deadline passes with calls still running they are
//!   dropped and the error is [`AllFailed`](crate::AllFailed) at the deadline, listing every
//!   call (those cut short as timeouts).
//! - **Failover**: when every call in flight has failed with a failure worth trying
//!   elsewhere ([`FailureKind::is_worth_trying_elsewhere`](tower_llm_core::FailureKind)),
//!   the next service is called at once rather than after the delay. It replaces a failed
//!   call rather than duplicating a live one, so it counts against `max_extra_attempts` but
//!   not against the budget. A client error (400, 401, ...) sends nothing more.
//!
//! **State belongs to the layer value.** The latency record, the budget's balance and the
//! counters behind [`HedgeLayer::handle`] are created once, when the layer is built, and
//! shared by every service that layer value (or a clone of it) makes, in whatever stack: two
//! routes hedged by one `HedgeLayer` learn one percentile and spend one budget. For
//! independent state, build another layer value.
//!
//! The response can be marked with the service that answered and the number of calls sent
//! ([`Answered`](crate::Answered), see [`HedgeLayer::record_winner`]); when every call fails the error is
//! [`AllFailed`](crate::AllFailed). Readiness of each service is awaited inside its own call,
//! so a service that is not ready does not hold up the hedge: its delay still runs.
//!
//! Arming the delay timer reads the learned percentile, a scan of the histogram's 312
//! buckets in each of its two generations, once per request still waiting after its first
//! poll; a request answered on its first poll never arms it.
//!
//! Unlike `tower::hedge`, which hedges one service against itself and learns the latency of
//! whole requests, this hedges across different providers and learns the first service's
//! own latency (a call cut short by a winning hedge counts as its time so far), so hedging
//! does not talk the delay down.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_race::{Answer, MarkResponse, RecordAnswer};
//! use tower_llm_race::hedge::{HedgeBudget, HedgeDelay, HedgeLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let provider = |latency: Duration| service_fn(move |prompt: String| async move {
//!     tokio::time::sleep(latency).await;
//!     Ok::<_, BoxError>(Answer::new(prompt))
//! });
//! let layer = HedgeLayer::builder()
//!     .delay(HedgeDelay::Fixed(Duration::from_millis(500)))
//!     .max_extra_attempts(1)
//!     .budget(HedgeBudget::new(0.2, 5))
//!     .record_winner(MarkResponse)
//!     .build()?;
//! let handle = layer.handle();
//! let hedge = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(vec![provider(Duration::from_secs(5)), provider(Duration::from_secs(1))]);
//!
//! let start = tokio::time::Instant::now();
//! let answer = hedge.oneshot("hi".to_string()).await?;
//! // The backup went out at 0.5 s and answered 1 s later.
//! assert_eq!(start.elapsed(), Duration::from_millis(1500));
//! assert_eq!(answer.answered().map(|a| (a.service, a.attempts)), Some((1, 2)));
//! assert_eq!(handle.stats().hedges, 1);
//! # Ok(())
//! # }
//! ```
//!
//! With its defaults a hedge needs nothing of the response type, here a `String`:
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_race::HedgeLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let provider = |name: &'static str, latency: Duration| service_fn(move |prompt: String| async move {
//!     tokio::time::sleep(latency).await;
//!     Ok::<_, BoxError>(format!("{name}: {prompt}"))
//! });
//! let hedge = ServiceBuilder::new()
//!     .layer(HedgeLayer::new(Duration::from_millis(100)))
//!     .service(vec![provider("slow", Duration::from_secs(3)), provider("quick", Duration::from_secs(1))]);
//! assert_eq!(hedge.oneshot("hi".to_string()).await?, "quick: hi");
//! # Ok(())
//! # }
//! ```

mod budget;
mod future;
mod latency;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_layer::Layer;
use tower_llm_core::{AttemptBudget, BoxError, Classify, DefaultClassifier};
use tower_service::Service;

use crate::answer::{NoRecord, RecordWinner};
use crate::attempt::Attempts;
use crate::error::ConfigError;
use crate::limits::SharedBudget;
use crate::observe::{Observe, Strategy};

pub use budget::HedgeBudget;
pub use future::HedgeFuture;

use budget::Balance;
use latency::LatencyHistogram;

pub(crate) const STRATEGY: Strategy = Strategy::Hedge;

/// When to send the next attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum HedgeDelay {
    /// Always this long after the previous attempt.
    Fixed(Duration),
    /// A percentile of the first service's recent latency.
    Percentile {
        /// The percentile, in `0.0..=1.0` (0.9 hedges the slowest 10 %).
        percentile: f64,
        /// The delay used until `min_samples` latencies have been seen.
        initial: Duration,
        /// How many samples the window needs before the percentile is trusted.
        min_samples: u64,
        /// How long samples count (between one and two windows of history are kept).
        window: Duration,
    },
}

impl HedgeDelay {
    /// The `percentile` of recent latency, `initial` until 20 samples are in, over a
    /// 60 s window.
    pub const fn percentile(percentile: f64, initial: Duration) -> Self {
        HedgeDelay::Percentile {
            percentile,
            initial,
            min_samples: 20,
            window: Duration::from_secs(60),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let HedgeDelay::Percentile {
            percentile, window, ..
        } = *self
        {
            if !(percentile > 0.0 && percentile <= 1.0) {
                return Err(ConfigError::new(
                    "race",
                    "delay",
                    format!("percentile must be in (0, 1], got {percentile}"),
                ));
            }
            if window.is_zero() {
                return Err(ConfigError::new(
                    "race",
                    "delay",
                    "window must be longer than zero",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
struct HedgeConfig {
    delay: HedgeDelay,
    max_extra: usize,
    budget: Option<HedgeBudget>,
    shared_budget: Option<AttemptBudget>,
    failover: bool,
}

/// Builds a [`HedgeLayer`]; see [`HedgeLayer::builder`].
#[derive(Clone, Debug)]
pub struct HedgeBuilder<C = DefaultClassifier, W = NoRecord> {
    name: Option<Cow<'static, str>>,
    config: HedgeConfig,
    classifier: C,
    record: W,
}

impl HedgeBuilder {
    fn new() -> Self {
        HedgeBuilder {
            name: None,
            config: HedgeConfig {
                delay: HedgeDelay::percentile(0.9, Duration::from_secs(2)),
                max_extra: 1,
                budget: Some(HedgeBudget::default()),
                shared_budget: None,
                failover: true,
            },
            classifier: DefaultClassifier,
            record: NoRecord,
        }
    }
}

impl<C, W> HedgeBuilder<C, W> {
    /// Names this hedge in metrics (`name` label) and traces (`name` field); default
    /// "hedge".
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// When to send the next attempt (default: p90 of the first service's latency, 2 s
    /// until it is known).
    pub fn delay(mut self, delay: HedgeDelay) -> Self {
        self.config.delay = delay;
        self
    }

    /// How many calls may be sent beyond the first (default 1; at least 1). The services
    /// are used in order, so this is also capped by the number of services minus one.
    pub fn max_extra_attempts(mut self, max: usize) -> Self {
        self.config.max_extra = max;
        self
    }

    /// Caps hedged calls (default [`HedgeBudget::default`]: 10 % of requests, bursts of 10).
    pub fn budget(mut self, budget: HedgeBudget) -> Self {
        self.config.budget = Some(budget);
        self.config.shared_budget = None;
        self
    }

    /// Sends hedges whenever the delay passes, with no cap but `max_extra_attempts`.
    pub fn unlimited_budget(mut self) -> Self {
        self.config.budget = None;
        self.config.shared_budget = None;
        self
    }

    /// Draws every leg past the first, hedges and failovers alike, from `budget`, shared
    /// with the other layers handed it (retries, fallback steps), instead of the hedge's own
    /// [`HedgeBudget`]. Each call is counted once as a request, by the outermost layer
    /// holding the budget; this hedge's legs and refusals are listed under its name (role
    /// `"hedge"`) in the budget's [`stats`](AttemptBudget::stats). A refused failover ends
    /// the request with [`AllFailed`](crate::AllFailed)
    /// ([`is_budget_spent`](crate::AllFailed::is_budget_spent)).
    pub fn shared_budget(mut self, budget: AttemptBudget) -> Self {
        self.config.shared_budget = Some(budget);
        self
    }

    /// Whether a failure worth trying elsewhere sends the next attempt at once (default
    /// true). Without it, a request whose calls in flight have all failed fails at once,
    /// even if a hedge could still have been sent.
    pub fn failover(mut self, failover: bool) -> Self {
        self.config.failover = failover;
        self
    }

    /// Judges results with `classifier` instead of the [`DefaultClassifier`].
    pub fn classifier<C2>(self, classifier: C2) -> HedgeBuilder<C2, W> {
        HedgeBuilder {
            name: self.name,
            config: self.config,
            classifier,
            record: self.record,
        }
    }

    /// Records which service answered with `record` (a [`RecordWinner`], e.g.
    /// [`MarkResponse`](crate::MarkResponse)) instead of nothing.
    pub fn record_winner<W2>(self, record: W2) -> HedgeBuilder<C, W2> {
        HedgeBuilder {
            name: self.name,
            config: self.config,
            classifier: self.classifier,
            record,
        }
    }

    /// The layer, or the knob whose value cannot work. The layer's state (latency record,
    /// budget, counters) is made here, once.
    pub fn build(self) -> Result<HedgeLayer<C, W>, ConfigError> {
        self.config.delay.validate()?;
        if self.config.max_extra == 0 {
            return Err(ConfigError::new(
                "race",
                "max_extra_attempts",
                "must be at least 1, or nothing would ever be hedged",
            ));
        }
        if let (Some(budget), None) = (&self.config.budget, &self.config.shared_budget) {
            budget.validate()?;
        }
        Ok(HedgeLayer {
            shared: Arc::new(Shared::new(self.config, self.name)),
            classifier: self.classifier,
            record: self.record,
        })
    }
}

/// Makes a [`Hedge`] over a `Vec` of services.
///
/// The latency record, the budget and the counters belong to the layer value: every service
/// it (or a clone of it) makes shares them, whichever stack it lands in. Build another layer
/// value for independent ones. [`handle`](Self::handle) reads them.
#[derive(Clone, Debug)]
pub struct HedgeLayer<C = DefaultClassifier, W = NoRecord> {
    shared: Arc<Shared>,
    classifier: C,
    record: W,
}

impl HedgeLayer {
    /// A hedge with a fixed `delay`, one extra attempt and the default budget.
    pub fn new(delay: Duration) -> Self {
        let config = HedgeConfig {
            delay: HedgeDelay::Fixed(delay),
            ..HedgeBuilder::new().config
        };
        HedgeLayer {
            shared: Arc::new(Shared::new(config, None)),
            classifier: DefaultClassifier,
            record: NoRecord,
        }
    }

    /// Starts from the defaults: p90 delay (2 s until learned), one extra attempt, a
    /// budget of 10 % with bursts of 10, failover on.
    pub fn builder() -> HedgeBuilder {
        HedgeBuilder::new()
    }
}

impl<C, W> HedgeLayer<C, W> {
    /// Records which service answered with `record` (a [`RecordWinner`], e.g.
    /// [`MarkResponse`](crate::MarkResponse)) instead of nothing. The state stays this layer
    /// value's.
    pub fn record_winner<W2>(self, record: W2) -> HedgeLayer<C, W2> {
        HedgeLayer {
            shared: self.shared,
            classifier: self.classifier,
            record,
        }
    }

    /// The handle on this layer value's state, usable before the stack is built and after it
    /// is boxed: [`stats`](HedgeHandle::stats) and the
    /// [`current_delay`](HedgeHandle::current_delay).
    pub fn handle(&self) -> HedgeHandle {
        HedgeHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, C: Clone, W: Clone> Layer<Vec<S>> for HedgeLayer<C, W> {
    type Service = Hedge<S, C, W>;

    fn layer(&self, services: Vec<S>) -> Self::Service {
        Hedge {
            services,
            shared: Arc::clone(&self.shared),
            classifier: self.classifier.clone(),
            record: self.record.clone(),
        }
    }
}

/// Reads (and, as controls are added, steers) the state of one [`HedgeLayer`] value: every
/// service it made. `Clone`; clones are the same handle.
#[derive(Clone, Debug)]
pub struct HedgeHandle {
    shared: Arc<Shared>,
}

impl HedgeHandle {
    /// The counters now.
    pub fn stats(&self) -> HedgeStats {
        let counts = self.shared.observe.hedge_counts();
        HedgeStats {
            requests: counts.requests,
            hedges: counts.hedges,
            failovers: counts.failovers,
            budget_exhausted: counts.budget_exhausted,
            ended_at_deadline: counts.ended_at_deadline,
            answered_by_first: counts.answered_by_first,
            answered_by_others: counts.answered_by_others,
            failed: counts.failed,
            current_delay: self.current_delay(),
        }
    }

    /// The delay the next request would wait before its first hedge: the fixed delay, or
    /// the learned percentile (the initial delay until enough samples are in).
    pub fn current_delay(&self) -> Duration {
        self.shared.delay(Instant::now())
    }
}

/// A snapshot of one [`HedgeLayer`] value's counters, from [`HedgeHandle::stats`]. Totals
/// since the layer was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HedgeStats {
    /// Requests received.
    pub requests: u64,
    /// Calls sent because the hedge delay passed with no answer.
    pub hedges: u64,
    /// Calls sent at once because every call in flight had failed.
    pub failovers: u64,
    /// Hedge and failover legs not sent because the budget (its own or a shared one) was
    /// spent.
    pub budget_exhausted: u64,
    /// Requests that ended because the call's deadline passed (also counted in `failed`).
    pub ended_at_deadline: u64,
    /// Requests answered by the first service.
    pub answered_by_first: u64,
    /// Requests answered by another service (a hedge or a failover won).
    pub answered_by_others: u64,
    /// Requests that ended in an error: every call failed, or a failure stopped the hedge.
    pub failed: u64,
    /// The delay a request arriving now would wait before its first hedge.
    pub current_delay: Duration,
}

pub(crate) struct Shared {
    config: HedgeConfig,
    histogram: Option<LatencyHistogram>,
    budget: Spend,
    pub(crate) observe: Arc<Observe>,
}

/// What pays for the legs past the first.
#[derive(Debug)]
enum Spend {
    /// Nothing: only `max_extra_attempts` caps them.
    Unlimited,
    /// The hedge's own budget; failovers are free (they replace a failed call).
    Own(Balance),
    /// A budget shared with other layers; failovers pay too.
    Shared(SharedBudget),
}

impl Shared {
    fn new(config: HedgeConfig, name: Option<Cow<'static, str>>) -> Self {
        let histogram = match config.delay {
            HedgeDelay::Fixed(_) => None,
            HedgeDelay::Percentile { window, .. } => Some(LatencyHistogram::new(window)),
        };
        let observe = Observe::new(STRATEGY, name);
        let budget = match (&config.shared_budget, config.budget) {
            (Some(shared), _) => Spend::Shared(SharedBudget::new(shared, "hedge", observe.name())),
            (None, Some(own)) => Spend::Own(Balance::new(own)),
            (None, None) => Spend::Unlimited,
        };
        Shared {
            config,
            histogram,
            budget,
            observe,
        }
    }

    fn delay(&self, now: Instant) -> Duration {
        match (self.config.delay, &self.histogram) {
            (HedgeDelay::Fixed(delay), _) => delay,
            (
                HedgeDelay::Percentile {
                    percentile,
                    initial,
                    min_samples,
                    ..
                },
                Some(histogram),
            ) => histogram
                .percentile(percentile, min_samples, now)
                .unwrap_or(initial),
            (HedgeDelay::Percentile { initial, .. }, None) => initial,
        }
    }

    /// Whether the delay is learned from latencies.
    fn learns(&self) -> bool {
        self.histogram.is_some()
    }

    fn record_latency(&self, latency: Duration, now: Instant) {
        if let Some(histogram) = &self.histogram {
            histogram.record(latency, now);
        }
    }

    /// A request came in.
    #[inline]
    fn on_request(&self) {
        match &self.budget {
            Spend::Unlimited => {}
            Spend::Own(balance) => balance.deposit(),
            Spend::Shared(shared) => shared.on_request(),
        }
    }

    /// The shared budget, marked while the legs are polled.
    fn shared_budget(&self) -> Option<&AttemptBudget> {
        match &self.budget {
            Spend::Shared(shared) => Some(shared.budget()),
            _ => None,
        }
    }

    /// Pays for one more leg (a failover when `failover`); `false` when the budget is spent,
    /// reported through the funnel.
    fn withdraw(&self, failover: bool) -> bool {
        let (granted, shared) = match &self.budget {
            Spend::Unlimited => (true, false),
            Spend::Own(_) if failover => (true, false),
            Spend::Own(balance) => (balance.withdraw(), false),
            Spend::Shared(budget) => (budget.spend(), true),
        };
        if !granted {
            self.observe.budget_exhausted(shared);
        }
        granted
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// Sends each request to the first service, and to the next ones only when the answer is
/// late. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Hedge<S, C = DefaultClassifier, W = NoRecord> {
    services: Vec<S>,
    shared: Arc<Shared>,
    classifier: C,
    record: W,
}

impl<S, C, W> Hedge<S, C, W> {
    /// The services.
    pub fn get_ref(&self) -> &[S] {
        &self.services
    }

    /// The services, mutably.
    pub fn get_mut(&mut self) -> &mut Vec<S> {
        &mut self.services
    }

    /// The services, taken out.
    pub fn into_inner(self) -> Vec<S> {
        self.services
    }

    /// The delay the next request would wait before its first hedge: the fixed delay, or
    /// the learned percentile (the initial delay until enough samples are in).
    pub fn current_delay(&self) -> Duration {
        self.shared.delay(Instant::now())
    }

    /// The handle of the layer value that made this service (see [`HedgeLayer::handle`]).
    pub fn handle(&self) -> HedgeHandle {
        HedgeHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, Req, C, W> Service<Req> for Hedge<S, C, W>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
    C: Classify<S::Response, S::Error> + Clone,
    W: RecordWinner<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = HedgeFuture<S, Req, C, W>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each service's readiness is awaited inside the response future, on its own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.shared.observe.request();
        self.shared.on_request();
        let max_attempts = self
            .services
            .len()
            .min(self.shared.config.max_extra.saturating_add(1));
        let attempts = Attempts::with_budget(max_attempts, self.shared.shared_budget().cloned());
        HedgeFuture::new(
            attempts,
            self.services[..max_attempts].to_vec(),
            Arc::clone(&self.shared),
            request,
            self.classifier.clone(),
            self.record.clone(),
            max_attempts,
        )
    }
}
