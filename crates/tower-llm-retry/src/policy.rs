//! The retry decision, as a `tower::retry::Policy`: tower's `Retry` service drives the calls,
//! the sleeps and the readiness checks; [`RetryPolicy`] decides whether, and after how long.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower_llm_core::{Classify, Deadline, DefaultClassifier, Failure, FailureKind, Outcome};

use crate::backoff::{Backoff, DelayState, Jitter, mix64};
use tower_llm_core::Withdrawal;

use crate::budget::LayerBudget;
use crate::observe::Observe;
use crate::stats::RetryHandle;

/// How many attempts a call took, 1 when the first one answered.
///
/// The [`AttemptsExtension`] recorder (chosen with
/// [`RetryBuilder::record_attempts`](crate::RetryBuilder::record_attempts)) adds it
/// to every `http::Response` that took more than one attempt (success or last failure);
/// [`AttemptsExtension::always`] adds it to every response. [`Attempts::of`] reads it,
/// counting a response without it as one attempt:
///
/// ```
/// use tower_llm_retry::Attempts;
///
/// let mut response = http::Response::new(());
/// assert_eq!(Attempts::of(&response).get(), 1);
/// response.extensions_mut().insert(Attempts::new(3));
/// assert_eq!(Attempts::of(&response).get(), 3);
/// assert_eq!(Attempts::of(&response).retries(), 2);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempts(usize);

impl Attempts {
    /// `attempts` attempts.
    pub const fn new(attempts: usize) -> Self {
        Attempts(attempts)
    }

    /// The attempts recorded on `response`, or one when none were (the first attempt
    /// answered, under the default recorder).
    pub fn of<B>(response: &http::Response<B>) -> Self {
        response
            .extensions()
            .get::<Attempts>()
            .copied()
            .unwrap_or(Attempts(1))
    }

    /// The number of attempts, at least 1.
    pub const fn get(self) -> usize {
        self.0
    }

    /// The number of retries: attempts after the first.
    pub const fn retries(self) -> usize {
        self.0.saturating_sub(1)
    }
}

/// Hands the attempt count of a call to its caller by writing it into the response.
///
/// Called once per call, on the response returned to the caller (never on an error: the
/// inner error is returned unchanged so that layers further out can still classify it).
/// Implemented by [`StatsOnly`] (the default: records nothing, fits any response), by
/// [`AttemptsExtension`] for `http::Response`, and by any `Fn(&mut Res, Attempts)`.
pub trait RecordAttempts<Res> {
    /// Records `attempts` on `response`.
    fn record_attempts(&self, response: &mut Res, attempts: Attempts);
}

/// Inserts [`Attempts`] into an `http::Response`'s extensions.
///
/// Chosen with `.record_attempts(AttemptsExtension::when_retried())`. By default it inserts
/// one only when the call was retried: inserting an extension allocates, which would
/// about double the layer's cost on the success path; a response without one took one
/// attempt ([`Attempts::of`]). [`always`](Self::always) inserts it every time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttemptsExtension {
    always: bool,
}

impl AttemptsExtension {
    /// Inserts [`Attempts`] only into responses that took more than one attempt (the
    /// default).
    pub const fn when_retried() -> Self {
        AttemptsExtension { always: false }
    }

    /// Inserts [`Attempts`] into every response, first-attempt successes included.
    pub const fn always() -> Self {
        AttemptsExtension { always: true }
    }
}

impl<B> RecordAttempts<http::Response<B>> for AttemptsExtension {
    #[inline]
    fn record_attempts(&self, response: &mut http::Response<B>, attempts: Attempts) {
        if self.always || attempts.get() > 1 {
            response.extensions_mut().insert(attempts);
        }
    }
}

/// The default recorder: writes nothing into the response, so it fits any response type
/// (typed provider answers, plain values, `http::Response`). The attempt count is then seen
/// through [`RetryStats`](crate::RetryStats), the `on_retry` hook and metrics;
/// [`AttemptsExtension`] puts it on an `http::Response` too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsOnly;

impl<Res> RecordAttempts<Res> for StatsOnly {
    #[inline]
    fn record_attempts(&self, _response: &mut Res, _attempts: Attempts) {}
}

impl<Res, F> RecordAttempts<Res> for F
where
    F: Fn(&mut Res, Attempts),
{
    fn record_attempts(&self, response: &mut Res, attempts: Attempts) {
        self(response, attempts)
    }
}

/// Why a failed attempt was handed back to the caller instead of being retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// Core does not classify the failure as retryable (400, 401, 403, 404, 422, context
    /// length, content filter, exhausted quota, cancelled, unknown), or it is an open circuit
    /// without a hint.
    NotRetryable,
    /// The call made its last allowed attempt.
    AttemptsExhausted,
    /// The server asked for a wait longer than `max_retry_after`.
    HintTooLong,
    /// The wait (backoff or hint) would end past the deadline: the layer's own
    /// ([`deadline`](crate::RetryBuilder::deadline)) or the call's
    /// ([`Deadline`](tower_llm_core::Deadline)).
    PastDeadline,
    /// The retry budget is spent: the upstream is failing for many calls at once.
    BudgetExhausted,
}

impl GiveUpReason {
    /// Every reason, in declaration order.
    pub const ALL: [GiveUpReason; 5] = [
        GiveUpReason::NotRetryable,
        GiveUpReason::AttemptsExhausted,
        GiveUpReason::HintTooLong,
        GiveUpReason::PastDeadline,
        GiveUpReason::BudgetExhausted,
    ];

    /// A short snake_case name, stable, for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::NotRetryable => "not_retryable",
            GiveUpReason::AttemptsExhausted => "attempts_exhausted",
            GiveUpReason::HintTooLong => "hint_too_long",
            GiveUpReason::PastDeadline => "past_deadline",
            GiveUpReason::BudgetExhausted => "budget_exhausted",
        }
    }
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the layer decided after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryDecision {
    /// Try again after waiting `after` (the longer of the backoff and the server's hint).
    Retry {
        /// How long the layer waits before the next attempt.
        after: Duration,
    },
    /// Return the failure to the caller.
    GiveUp(GiveUpReason),
}

/// One decision, as seen by the `on_retry` hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryEvent {
    /// The attempt that failed, 1 for the first.
    pub attempt: usize,
    /// How it failed, as core classified it (with the server's hint, if any).
    pub failure: Failure,
    /// What happens next.
    pub decision: RetryDecision,
}

pub(crate) type Hook = Arc<dyn Fn(&RetryEvent) + Send + Sync>;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub(crate) max_attempts: usize,
    pub(crate) backoff: Backoff,
    pub(crate) jitter: Jitter,
    pub(crate) max_delay: Duration,
    pub(crate) deadline: Option<Duration>,
    pub(crate) max_retry_after: Duration,
}

pub(crate) struct Shared<C, R> {
    pub(crate) config: Config,
    pub(crate) budget: Option<LayerBudget>,
    /// The funnel every event goes through: stats, `tracing`, `metrics`.
    pub(crate) observe: Observe,
    pub(crate) classifier: C,
    pub(crate) recorder: R,
    pub(crate) on_retry: Option<Hook>,
    pub(crate) seeds: AtomicU64,
}

/// The retry policy of a [`RetryLayer`](crate::RetryLayer), plugged into
/// [`tower::retry::Retry`].
///
/// One policy is shared (through an `Arc`) by the layer, every service it builds and their
/// clones: they share the budget, the statistics and the hook. tower clones the policy for
/// each call; the clone also carries that call's attempt count, start time and backoff state.
pub struct RetryPolicy<C = DefaultClassifier, R = StatsOnly> {
    shared: Arc<Shared<C, R>>,
    retries: usize,
    started: Option<Instant>,
    delays: DelayState,
}

impl<C, R> RetryPolicy<C, R> {
    pub(crate) fn new(shared: Shared<C, R>) -> Self {
        RetryPolicy {
            shared: Arc::new(shared),
            retries: 0,
            started: None,
            delays: DelayState::default(),
        }
    }

    /// A handle on the statistics shared by every clone.
    pub fn handle(&self) -> RetryHandle {
        RetryHandle::new(
            Arc::clone(&self.shared.observe.counters),
            self.shared.budget.as_ref().map(|b| b.budget().clone()),
        )
    }

    pub(crate) fn budget(&self) -> Option<&LayerBudget> {
        self.shared.budget.as_ref()
    }

    /// The classifier.
    pub fn classifier(&self) -> &C {
        &self.shared.classifier
    }

    /// The decision, and the budget's retry when it is a retry (given back if the call is
    /// dropped during the wait).
    fn decide(&mut self, failure: Failure, attempt: usize) -> (RetryDecision, Option<Withdrawal>) {
        let give_up = |reason| (RetryDecision::GiveUp(reason), None);
        let config = &self.shared.config;
        let retryable = match failure.kind {
            // A breaker that says when it will probe again is worth waiting for; one that
            // does not would be hammered.
            FailureKind::CircuitOpen => failure.retry_after.is_some(),
            kind => kind.is_retryable(),
        };
        if !retryable {
            return give_up(GiveUpReason::NotRetryable);
        }
        if attempt >= config.max_attempts {
            return give_up(GiveUpReason::AttemptsExhausted);
        }
        if failure
            .retry_after
            .is_some_and(|hint| hint > config.max_retry_after)
        {
            return give_up(GiveUpReason::HintTooLong);
        }
        let shared = &self.shared;
        let backoff = self.delays.next_delay(
            &config.backoff,
            config.jitter,
            config.max_delay,
            attempt,
            || {
                mix64(
                    shared
                        .seeds
                        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed),
                )
            },
        );
        // The hint is the server's word on when it can take the call: never retry sooner.
        let delay = failure
            .retry_after
            .map_or(backoff, |hint| hint.max(backoff));
        if let (Some(deadline), Some(started)) = (config.deadline, self.started)
            && started.elapsed().saturating_add(delay) >= deadline
        {
            return give_up(GiveUpReason::PastDeadline);
        }
        // The call's own deadline (core's `Deadline`, set further out): a wait that ends past
        // it would only make the caller miss it, so the failure (and its hint) goes back now.
        // A wait ending exactly at it would start an attempt with no time left.
        if Deadline::current().is_some_and(|deadline| deadline.time_left() <= delay) {
            return give_up(GiveUpReason::PastDeadline);
        }
        // Asked last, so a retry the other rules forbid never spends budget.
        let withdrawal = match &shared.budget {
            None => None,
            Some(budget) => match budget.withdraw() {
                Some(withdrawal) => Some(withdrawal),
                None => return give_up(GiveUpReason::BudgetExhausted),
            },
        };
        (RetryDecision::Retry { after: delay }, withdrawal)
    }

    fn report(&self, event: &RetryEvent) {
        let observe = &self.shared.observe;
        match event.decision {
            RetryDecision::Retry { after } => {
                observe.retry_scheduled(event.attempt, &event.failure, after);
            }
            RetryDecision::GiveUp(reason) => {
                observe.gave_up(event.attempt, &event.failure, reason);
            }
        }
        if let Some(hook) = &self.shared.on_retry {
            hook(event);
        }
    }
}

impl<C, R> Clone for RetryPolicy<C, R> {
    fn clone(&self) -> Self {
        RetryPolicy {
            shared: Arc::clone(&self.shared),
            retries: self.retries,
            started: self.started,
            delays: self.delays,
        }
    }
}

impl<C: fmt::Debug, R: fmt::Debug> fmt::Debug for RetryPolicy<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        f.debug_struct("RetryPolicy")
            .field("config", &shared.config)
            .field("budget", &shared.budget.is_some())
            .field("classifier", &shared.classifier)
            .field("recorder", &shared.recorder)
            .field(
                "on_retry",
                &shared.on_retry.as_ref().map(|_| "Fn(&RetryEvent)"),
            )
            .field("retries", &self.retries)
            .finish()
    }
}

impl<Req, Res, E, C, R> tower::retry::Policy<Req, Res, E> for RetryPolicy<C, R>
where
    Req: Clone,
    C: Classify<Res, E>,
    R: RecordAttempts<Res>,
{
    type Future = RetryDelay;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<RetryDelay> {
        let attempt = self.retries.saturating_add(1);
        let failure = match self.shared.classifier.classify(result.as_ref()) {
            Outcome::Success => {
                if let Ok(response) = result {
                    self.shared
                        .recorder
                        .record_attempts(response, Attempts(attempt));
                }
                if self.retries > 0 {
                    self.shared.observe.recovered(attempt);
                }
                return None;
            }
            Outcome::Failure(failure) => failure,
        };
        let (decision, withdrawal) = self.decide(failure, attempt);
        self.report(&RetryEvent {
            attempt,
            failure,
            decision,
        });
        match decision {
            RetryDecision::Retry { after } => {
                self.retries = attempt;
                Some(RetryDelay::after(after, withdrawal))
            }
            RetryDecision::GiveUp(_) => {
                if let Ok(response) = result {
                    self.shared
                        .recorder
                        .record_attempts(response, Attempts(attempt));
                }
                None
            }
        }
    }

    /// tower calls this on the service's own policy as each call starts, and on the call's
    /// clone before each retry; `retries` tells the two apart.
    #[inline]
    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        if self.retries == 0 {
            self.shared.observe.first_attempt();
            if let Some(budget) = &self.shared.budget {
                budget.on_request();
            }
            if self.shared.config.deadline.is_some() {
                self.started = Some(Instant::now());
            }
        } else {
            self.shared.observe.retry_attempt();
        }
        Some(req.clone())
    }
}

/// The wait before a retry: nothing, or a tokio sleep (which follows a paused clock).
/// Dropped before it ends, it gives the retry back to the budget.
///
/// The sleep is boxed: retries are rare and slow anyway, while every call's future carries
/// room for this type, and an inline `Sleep` is over 100 bytes.
#[derive(Debug)]
pub struct RetryDelay {
    sleep: Option<Pin<Box<Sleep>>>,
    withdrawal: Option<Withdrawal>,
}

impl RetryDelay {
    fn after(delay: Duration, withdrawal: Option<Withdrawal>) -> Self {
        RetryDelay {
            sleep: (!delay.is_zero()).then(|| Box::pin(tokio::time::sleep(delay))),
            withdrawal,
        }
    }
}

impl Future for RetryDelay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(sleep) = self.sleep.as_mut() {
            std::task::ready!(sleep.as_mut().poll(cx));
        }
        if let Some(withdrawal) = self.withdrawal.as_mut() {
            withdrawal.keep();
        }
        Poll::Ready(())
    }
}
