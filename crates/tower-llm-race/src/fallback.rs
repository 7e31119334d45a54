//! Fallback: one service at a time, in order, moving on when another might do better.
//!
//! A request goes to the first service; when its result is a failure, the classifier's
//! verdict decides what happens next:
//!
//! - a failure [worth trying elsewhere](tower_llm_core::FailureKind::is_worth_trying_elsewhere)
//!   (rate limited, quota exhausted, overloaded, timeout, transport, server error, circuit
//!   open) moves on to the next service at once. A breaker in front of a provider answers
//!   "circuit open" without a call, so an unhealthy provider costs no time at all;
//! - a context-length failure moves to the [larger-context
//!   service](FallbackLayer::larger_context) when one is set and not yet tried;
//! - any other failure, a client error above all (400, 401, 403, 404, content filtered),
//!   stops the chain: another provider would refuse the same request. Replace the rule with
//!   [`move_on_if`](FallbackLayer::move_on_if).
//!
//! The first success is returned (marked with the service that gave it and the number of
//! services tried, an [`Answered`], when [`record_winner`](FallbackLayer::record_winner) says
//! where). When every service has failed or the
//! chain stopped, the error is [`AllFailed`] listing each failure.
//!
//! **Deadline.** With a call [`Deadline`](tower_llm_core::Deadline) current (core's
//! `DeadlineLayer` further out), the chain starts no service once it has passed, and when it
//! passes during a call, that call is dropped and the error is [`AllFailed`] at the deadline
//! ([`is_at_deadline`](AllFailed::is_at_deadline), classified as a timeout), listing every
//! service tried, the one cut short as a timeout. A retry hint never makes the chain wait: a
//! 429 whose hint is longer than the time left moves on to the next service at once (a retry
//! layer inside the first service gives such a hint straight back too).
//!
//! **Budget.** By default every service may be tried. Handed core's
//! [`tower_llm_core::AttemptBudget`] ([`shared_budget`](FallbackLayer::shared_budget)),
//! every service past the first is an extra attempt paid from it, with the retries and hedged
//! legs of the other layers handed the same budget; each request is counted once, by the
//! outermost of them:
//!
//! ```
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_llm_core::{AttemptBudget, BoxError, BudgetConfig, FailureKind, UpstreamError};
//! use tower_llm_race::{FallbackLayer, HedgeLayer, hedge::HedgeDelay};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // Extra calls up to 20% of requests over 10 s, plus one a second, for the whole stack.
//! let budget = AttemptBudget::new(BudgetConfig::new(0.2).min_per_second(1))?;
//! let down = service_fn(|_: String| async {
//!     Err::<String, BoxError>(UpstreamError::new(FailureKind::Overloaded, "529").into())
//! });
//! let hedge = |name: &'static str| {
//!     HedgeLayer::builder()
//!         .name(name)
//!         .delay(HedgeDelay::Fixed(Duration::from_millis(300)))
//!         .shared_budget(budget.clone())
//!         .build()
//! };
//! let fallback = FallbackLayer::new()
//!     .name("models")
//!     .shared_budget(budget.clone())
//!     .layer(vec![
//!         hedge("primary")?.layer(vec![down.clone(), down.clone()]),
//!         hedge("backup")?.layer(vec![down.clone(), down]),
//!     ]);
//! for _ in 0..100 {
//!     assert!(fallback.clone().oneshot("hi".to_string()).await.is_err());
//! }
//! let stats = budget.stats();
//! assert_eq!(stats.requests, 100); // once each, though three layers saw every request
//! // 100 first calls plus the extra ones, never more than 20% + the floor of 10.
//! assert!(stats.withdrawals() <= 20 + 10);
//! for spender in &stats.spenders {
//!     println!("{} {}: {} spent, {} refused", spender.role, spender.name, spender.withdrawals, spender.refusals);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A retry layer takes the same budget (`RetryBuilder::shared_budget` in tower-llm-retry).
//!
//! Cost: one call per request while the first service is healthy; latency adds up along the
//! chain when it is not. Each service is cloned and driven to readiness only when its turn
//! comes, so [`Fallback::poll_ready`](tower_service::Service::poll_ready) is always ready.
//!
//! # Example
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::{BoxError, CircuitOpen};
//! use tower_llm_race::{Answer, FallbackLayer, MarkResponse, RecordAnswer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let provider = |healthy: bool| service_fn(move |prompt: String| async move {
//!     if healthy {
//!         Ok(Answer::new(prompt))
//!     } else {
//!         // What a circuit breaker in front of a failing provider answers.
//!         Err::<Answer<String>, BoxError>(CircuitOpen::new(std::time::Duration::from_secs(30)).into())
//!     }
//! });
//! let fallback = ServiceBuilder::new()
//!     .layer(FallbackLayer::new().record_winner(MarkResponse))
//!     .service(vec![provider(false), provider(true)]);
//!
//! let answer = fallback.oneshot("hi".to_string()).await?;
//! assert_eq!(answer.answered().map(|a| (a.service, a.attempts)), Some((1, 2)));
//! # Ok(())
//! # }
//! ```
//!
//! With its defaults a fallback needs nothing of the response type, here a `String`:
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::{BoxError, FailureKind, UpstreamError};
//! use tower_llm_race::FallbackLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let provider = |name: &'static str, up: bool| service_fn(move |prompt: String| async move {
//!     if up {
//!         Ok(format!("{name}: {prompt}"))
//!     } else {
//!         Err::<String, BoxError>(UpstreamError::new(FailureKind::Overloaded, "529").into())
//!     }
//! });
//! let fallback = ServiceBuilder::new()
//!     .layer(FallbackLayer::new())
//!     .service(vec![provider("primary", false), provider("backup", true)]);
//! assert_eq!(fallback.oneshot("hi".to_string()).await?, "backup: hi");
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_llm_core::{AttemptBudget, BoxError, Classify, DefaultClassifier, Failure, FailureKind};
use tower_service::Service;

use crate::answer::{Answered, NoRecord, RecordWinner};
use crate::attempt::{ScopedAttempt, Verdict, judge, scoped};
use crate::error::{AllFailed, Ending, ServiceFailure};
use crate::limits::{CallDeadline, SharedBudget, cut_at_deadline};
use crate::observe::{Observe, Strategy, StrategyHandle};

const STRATEGY: Strategy = Strategy::Fallback;

type MoveOn = Arc<dyn Fn(&Failure) -> bool + Send + Sync>;

#[derive(Clone)]
struct FallbackConfig {
    larger_context: Option<usize>,
    move_on: Option<MoveOn>,
    observe: Arc<Observe>,
    /// The shared budget handed to the layer.
    budget: Option<AttemptBudget>,
    /// The account on it, opened under the layer's name when a service is made.
    spender: Option<SharedBudget>,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            larger_context: None,
            move_on: None,
            observe: Observe::new(STRATEGY, None),
            budget: None,
            spender: None,
        }
    }
}

impl fmt::Debug for FallbackConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackConfig")
            .field("larger_context", &self.larger_context)
            .field("move_on", &self.move_on.as_ref().map(|_| "custom"))
            .field("budget", &self.budget)
            .finish()
    }
}

/// Makes a [`Fallback`] over a `Vec` of services, tried in the `Vec`'s order. Its only state
/// is its counters (see [`handle`](FallbackLayer::handle)), shared by the layer's clones and
/// every service it makes.
#[derive(Clone, Debug, Default)]
pub struct FallbackLayer<C = DefaultClassifier, W = NoRecord> {
    config: FallbackConfig,
    classifier: C,
    record: W,
}

impl FallbackLayer {
    /// A fallback with the default rule: move on when the failure is worth trying
    /// elsewhere, stop otherwise; no larger-context service.
    pub fn new() -> Self {
        FallbackLayer::default()
    }
}

impl<C, W> FallbackLayer<C, W> {
    /// Names this fallback in metrics (`name` label) and traces (`name` field); default
    /// "fallback". Starts fresh counters: take [`handle`](FallbackLayer::handle) after naming.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.config.observe = Observe::new(STRATEGY, Some(name.into()));
        self
    }

    /// A handle on this layer value's counters, shared by its clones and every service they
    /// make, before and after the stack is built and boxed.
    pub fn handle(&self) -> StrategyHandle {
        StrategyHandle::new(&self.config.observe)
    }

    /// Sends a request that failed as [`FailureKind::ContextLengthExceeded`] to the service
    /// at `index` (once), instead of stopping. An index past the end of the list is never
    /// used.
    pub fn larger_context(mut self, index: usize) -> Self {
        self.config.larger_context = Some(index);
        self
    }

    /// Replaces the rule that decides whether a failure moves on to the next service
    /// (default: [`FailureKind::is_worth_trying_elsewhere`]). The larger-context rule
    /// still comes first.
    pub fn move_on_if<F>(mut self, rule: F) -> Self
    where
        F: Fn(&Failure) -> bool + Send + Sync + 'static,
    {
        self.config.move_on = Some(Arc::new(rule));
        self
    }

    /// Draws every service after the first from `budget`, shared with the other layers
    /// handed it (retries, hedged legs): when it is spent the chain ends with
    /// [`AllFailed`] ([`is_budget_spent`](AllFailed::is_budget_spent)) instead of calling
    /// the next service. Each call is counted once as a request, by the outermost layer
    /// holding the budget; this layer's steps and refusals are listed under its name (role
    /// `"fallback"`) in the budget's [`stats`](AttemptBudget::stats). Without one (the
    /// default) a fallback tries every service it may.
    pub fn shared_budget(mut self, budget: AttemptBudget) -> Self {
        self.config.budget = Some(budget);
        self
    }

    /// Judges results with `classifier` instead of the [`DefaultClassifier`].
    pub fn classifier<C2>(self, classifier: C2) -> FallbackLayer<C2, W> {
        FallbackLayer {
            config: self.config,
            classifier,
            record: self.record,
        }
    }

    /// Records which service answered with `record` (a [`RecordWinner`], e.g.
    /// [`MarkResponse`](crate::MarkResponse)) instead of nothing.
    pub fn record_winner<W2>(self, record: W2) -> FallbackLayer<C, W2> {
        FallbackLayer {
            config: self.config,
            classifier: self.classifier,
            record,
        }
    }
}

impl<S, C: Clone, W: Clone> Layer<Vec<S>> for FallbackLayer<C, W> {
    type Service = Fallback<S, C, W>;

    fn layer(&self, services: Vec<S>) -> Self::Service {
        let mut config = self.config.clone();
        config.spender = config
            .budget
            .as_ref()
            .map(|budget| SharedBudget::new(budget, "fallback", config.observe.name()));
        Fallback {
            services,
            config: Arc::new(config),
            classifier: self.classifier.clone(),
            record: self.record.clone(),
        }
    }
}

/// Tries the services in order until one succeeds. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Fallback<S, C = DefaultClassifier, W = NoRecord> {
    services: Vec<S>,
    config: Arc<FallbackConfig>,
    classifier: C,
    record: W,
}

impl<S> Fallback<S> {
    /// A fallback over `services` with the default rule.
    pub fn new(services: Vec<S>) -> Self {
        FallbackLayer::new().layer(services)
    }
}

impl<S, C, W> Fallback<S, C, W> {
    /// A handle on the counters of the layer value that made this fallback.
    pub fn handle(&self) -> StrategyHandle {
        StrategyHandle::new(&self.config.observe)
    }

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
}

impl<S, Req, C, W> Service<Req> for Fallback<S, C, W>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
    C: Classify<S::Response, S::Error> + Clone,
    W: RecordWinner<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = FallbackFuture<S, Req, C, W>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each service's readiness is awaited inside the response future, when its turn comes.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.config.observe.request();
        let spender = self.config.spender.as_ref();
        if let Some(spender) = spender {
            spender.on_request();
        }
        let deadline = CallDeadline::current();
        let larger_context = self
            .config
            .larger_context
            .filter(|&index| index < self.services.len());
        let mut plan = Plan {
            larger_context,
            larger_tried: false,
            next_in_order: 0,
            services: self.services.len(),
        };
        let first = plan.next_in_order().filter(|_| !deadline.has_passed());
        let attempt = first.and_then(|index| {
            self.config.observe.legs_started(1);
            self.services.get(index).map(|service| {
                let budget = spender.map(SharedBudget::budget);
                (index, scoped(budget, service.clone(), request.clone()))
            })
        });
        let (current, attempt) = match attempt {
            Some((index, attempt)) => (index, Some(attempt)),
            None => (0, None),
        };
        FallbackFuture {
            tried: usize::from(attempt.is_some()),
            attempt,
            current,
            plan,
            services: self.services.clone(),
            config: Arc::clone(&self.config),
            request,
            classifier: self.classifier.clone(),
            record: self.record.clone(),
            failures: Vec::new(),
            deadline,
        }
    }
}

/// Which service comes next.
#[derive(Clone, Copy, Debug)]
struct Plan {
    larger_context: Option<usize>,
    larger_tried: bool,
    next_in_order: usize,
    services: usize,
}

enum Next {
    Service(usize),
    Exhausted,
    Stop,
}

impl Plan {
    fn next_in_order(&mut self) -> Option<usize> {
        while self.next_in_order < self.services {
            let index = self.next_in_order;
            self.next_in_order += 1;
            if Some(index) == self.larger_context {
                if self.larger_tried {
                    continue;
                }
                self.larger_tried = true;
            }
            return Some(index);
        }
        None
    }

    fn after(&mut self, failure: &Failure, move_on: Option<&MoveOn>) -> Next {
        if failure.kind == FailureKind::ContextLengthExceeded
            && let Some(larger) = self.larger_context
            && !self.larger_tried
        {
            self.larger_tried = true;
            return Next::Service(larger);
        }
        let moves_on = match move_on {
            Some(rule) => rule(failure),
            None => failure.kind.is_worth_trying_elsewhere(),
        };
        if !moves_on {
            return Next::Stop;
        }
        match self.next_in_order() {
            Some(index) => Next::Service(index),
            None => Next::Exhausted,
        }
    }
}

pin_project! {
    /// The response future of [`Fallback`].
    pub struct FallbackFuture<S, Req, C, W = NoRecord>
    where
        S: Service<Req>,
    {
        #[pin]
        attempt: Option<ScopedAttempt<S, Req>>,
        current: usize,
        tried: usize,
        plan: Plan,
        services: Vec<S>,
        config: Arc<FallbackConfig>,
        request: Req,
        classifier: C,
        record: W,
        failures: Vec<ServiceFailure>,
        deadline: CallDeadline,
    }
}

impl<S, Req, C, W> Future for FallbackFuture<S, Req, C, W>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
    W: RecordWinner<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let services = this.services.len();
        loop {
            let Some(attempt) = this.attempt.as_mut().as_pin_mut() else {
                // No service to call, or the deadline had passed when the call was made.
                let ending = if this.deadline.has_passed() && services > 0 {
                    Ending::Deadline
                } else {
                    Ending::Exhausted
                };
                return Poll::Ready(Err(AllFailed::ended(
                    &this.config.observe,
                    ending,
                    services,
                    this.failures,
                )));
            };
            let result = match attempt.poll(cx) {
                Poll::Ready(result) => result,
                Poll::Pending => {
                    // Polled after the attempt, so an answer at the deadline itself wins.
                    ready!(this.deadline.poll_passed(cx));
                    this.attempt.set(None);
                    this.config.observe.cancelled(1);
                    this.failures.push(cut_at_deadline(*this.current));
                    let error = AllFailed::ended(
                        &this.config.observe,
                        Ending::Deadline,
                        services,
                        this.failures,
                    );
                    return Poll::Ready(Err(error));
                }
            };
            this.attempt.set(None);
            let index = *this.current;
            let failure = match judge(this.classifier, index, result) {
                Verdict::Answer(answer) => {
                    this.config.observe.answered();
                    let answered = Answered::new(index, *this.tried);
                    return Poll::Ready(answer.map(|mut response| {
                        this.record.record_winner(&mut response, answered);
                        response
                    }));
                }
                Verdict::Failed(failure) => failure,
            };
            let kind = failure.kind();
            this.config.observe.leg_failed(index, kind);
            let next = this
                .plan
                .after(&failure.failure(), this.config.move_on.as_ref());
            this.failures.push(failure);
            let next = match next {
                // A retry hint never makes a fallback wait: the next service may answer now.
                // But nothing starts once the call's deadline has passed, and every step
                // past the first is an extra attempt, paid from the shared budget.
                Next::Service(_) if this.deadline.has_passed() => Ending::Deadline,
                Next::Service(_)
                    if this
                        .config
                        .spender
                        .as_ref()
                        .is_some_and(|budget| !budget.spend()) =>
                {
                    this.config.observe.budget_exhausted(true);
                    Ending::BudgetSpent
                }
                Next::Service(index) => {
                    if let Some(service) = this.services.get(index) {
                        this.config.observe.legs_started(1);
                        this.config.observe.moved_on(*this.current, index, kind);
                        *this.current = index;
                        *this.tried += 1;
                        let budget = this.config.spender.as_ref().map(SharedBudget::budget);
                        this.attempt.set(Some(scoped(
                            budget,
                            service.clone(),
                            this.request.clone(),
                        )));
                    }
                    continue;
                }
                // The last service was cut at the deadline (or failed right at it): say so.
                Next::Exhausted if this.deadline.has_passed() => Ending::Deadline,
                Next::Exhausted => Ending::Exhausted,
                Next::Stop => Ending::Stopped,
            };
            return Poll::Ready(Err(AllFailed::ended(
                &this.config.observe,
                next,
                services,
                this.failures,
            )));
        }
    }
}

impl<S: Service<Req>, Req, C, W> fmt::Debug for FallbackFuture<S, Req, C, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackFuture")
            .field("current", &self.current)
            .field("tried", &self.tried)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl proptest::strategy::Strategy<Value = FailureKind> {
        proptest::sample::select(FailureKind::ALL.to_vec())
    }

    proptest! {
        /// Whatever the failures, each service is tried at most once, the chain only moves
        /// on as the rules say, and it ends.
        #[test]
        fn plans_try_each_service_at_most_once(
            services in 0usize..6,
            larger in proptest::option::of(0usize..6),
            kinds in proptest::collection::vec(kind(), 0..12),
        ) {
            let larger_context = larger.filter(|&l| l < services);
            let mut plan = Plan { larger_context, larger_tried: false, next_in_order: 0, services };
            let mut tried = Vec::new();
            if let Some(first) = plan.next_in_order() {
                tried.push(first);
            }
            for kind in kinds {
                if tried.is_empty() {
                    break;
                }
                let jump = kind == FailureKind::ContextLengthExceeded
                    && larger_context.is_some_and(|l| !tried.contains(&l));
                match plan.after(&Failure::new(kind), None) {
                    Next::Service(index) => {
                        prop_assert!(jump || kind.is_worth_trying_elsewhere());
                        if jump {
                            prop_assert_eq!(Some(index), larger_context);
                        }
                        prop_assert!(!tried.contains(&index), "{} tried twice", index);
                        prop_assert!(index < services);
                        tried.push(index);
                    }
                    Next::Stop => {
                        prop_assert!(!kind.is_worth_trying_elsewhere());
                        break;
                    }
                    Next::Exhausted => {
                        prop_assert_eq!(tried.len(), services);
                        break;
                    }
                }
            }
        }
    }
}
