//! [`RetryLayer`], its builder and its configuration error.

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tower_layer::Layer;
use tower_llm_core::{ConfigError, DefaultClassifier};

use crate::backoff::{Backoff, Jitter};
use tower_llm_core::AttemptBudget;

use crate::budget::{Budgeted, LayerBudget, RetryBudget};
use crate::observe::{DEFAULT_NAME, Observe};
use crate::policy::{Config, Hook, RetryEvent, RetryPolicy, Shared, StatsOnly};
use crate::stats::RetryHandle;

/// The retrying service: tower's [`Retry`](tower::retry::Retry) driven by a [`RetryPolicy`].
///
/// It has tower's `get_ref`, `get_mut` and `into_inner`.
///
/// The inner service is wrapped in [`Budgeted`], which marks a shared budget while it is
/// called and polled (and passes calls straight through otherwise): `get_ref().get_ref()`
/// reaches the service given to the layer.
pub type Retry<S, C = DefaultClassifier, R = StatsOnly> =
    tower::retry::Retry<RetryPolicy<C, R>, Budgeted<S>>;

/// The future of a [`Retry`] service: tower's, named.
pub type ResponseFuture<S, Req, C = DefaultClassifier, R = StatsOnly> =
    tower::retry::future::ResponseFuture<RetryPolicy<C, R>, Budgeted<S>, Req>;

/// Retries failed calls with backoff, the server's retry hint, a deadline and a budget.
///
/// Every service this layer value builds, in whichever stack, and every clone of the layer,
/// shares one budget, one set of statistics and one hook; another layer value (another
/// `build()`) has its own. [`handle`](Self::handle) reads them from outside the stack. See
/// the [crate docs](crate) for the behaviour.
pub struct RetryLayer<C = DefaultClassifier, R = StatsOnly> {
    policy: RetryPolicy<C, R>,
}

impl RetryLayer {
    /// A layer with the defaults: 3 attempts, exponential backoff from 250 ms with full
    /// jitter capped at 20 s, server hints up to 60 s honoured, no deadline, and a budget of
    /// 20% of requests over 10 s with a floor of 10 retries a second.
    pub fn new() -> Self {
        RetryBuilder::new().build_unchecked()
    }

    /// A builder starting from the defaults of [`new`](Self::new).
    pub fn builder() -> RetryBuilder {
        RetryBuilder::new()
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

impl<C, R> RetryLayer<C, R> {
    /// A handle on the layer's statistics, usable before the stack is built and after it is
    /// boxed: [`RetryHandle::stats`] counts over every service and clone the layer made.
    pub fn handle(&self) -> RetryHandle {
        self.policy.handle()
    }

    /// The policy every service of this layer shares.
    pub fn policy(&self) -> &RetryPolicy<C, R> {
        &self.policy
    }
}

impl<C, R> Clone for RetryLayer<C, R> {
    fn clone(&self) -> Self {
        RetryLayer {
            policy: self.policy.clone(),
        }
    }
}

impl<C: fmt::Debug, R: fmt::Debug> fmt::Debug for RetryLayer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, C, R> Layer<S> for RetryLayer<C, R> {
    type Service = Retry<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        let budgeted = Budgeted::new(inner, self.policy.budget());
        tower::retry::Retry::new(self.policy.clone(), budgeted)
    }
}

/// Builds a [`RetryLayer`]; [`build`](Self::build) checks every knob.
pub struct RetryBuilder<C = DefaultClassifier, R = StatsOnly> {
    config: Config,
    budget: Option<BudgetChoice>,
    classifier: C,
    recorder: R,
    on_retry: Option<Hook>,
    seed: Option<u64>,
    name: Cow<'static, str>,
}

impl RetryBuilder {
    fn new() -> Self {
        RetryBuilder {
            config: Config {
                max_attempts: 3,
                backoff: Backoff::default(),
                jitter: Jitter::default(),
                max_delay: Duration::from_secs(20),
                deadline: None,
                max_retry_after: Duration::from_secs(60),
            },
            budget: Some(BudgetChoice::Own(RetryBudget::default())),
            classifier: DefaultClassifier,
            recorder: StatsOnly,
            on_retry: None,
            seed: None,
            name: Cow::Borrowed(DEFAULT_NAME),
        }
    }
}

impl<C, R> RetryBuilder<C, R> {
    /// The layer's name (default `"retry"`): the `name` label of its metrics and the `name`
    /// field of its events, to tell two retry layers in one process apart.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Attempts per call, the first included (default 3; 1 disables retries).
    pub fn max_attempts(mut self, attempts: usize) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// The backoff shape (default exponential from 250 ms).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The jitter (default [`Jitter::Full`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.config.jitter = jitter;
        self
    }

    /// The longest computed backoff (default 20 s). A server's hint may be longer, up to
    /// [`max_retry_after`](Self::max_retry_after).
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.config.max_delay = max_delay;
        self
    }

    /// The time from the start of a call after which no retry starts: a wait that would end
    /// at or past it gives up at once with the last failure (default: none). An attempt in
    /// flight is not cut short; see the crate docs.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = Some(deadline);
        self
    }

    /// The longest server hint the layer waits for (default 60 s); a longer one gives up at
    /// once with the last failure.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.config.max_retry_after = max;
        self
    }

    /// The retry budget, the layer's own (default [`RetryBudget::default`]).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(BudgetChoice::Own(budget));
        self
    }

    /// Draws retries from `budget`, shared with every other layer handed it (a fallback's
    /// steps, a hedge's legs, another retry layer), instead of a budget of the layer's own.
    /// Each call is counted once as a request, by the outermost layer holding the budget;
    /// the retries this layer makes and is refused are listed under its name in the budget's
    /// [`stats`](AttemptBudget::stats). See the crate docs, "Sharing one budget".
    pub fn shared_budget(mut self, budget: AttemptBudget) -> Self {
        self.budget = Some(BudgetChoice::Shared(budget));
        self
    }

    /// No retry budget: each call retries up to `max_attempts` whatever the others do. Only
    /// for a layer whose load is bounded elsewhere.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// A seed for the jitter, to make delays reproducible in tests (default: random per
    /// layer).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Called with each decision taken after a failed attempt: retry (and after how long) or
    /// give up (and why). It runs on the caller's task, so keep it short.
    pub fn on_retry(mut self, hook: impl Fn(&RetryEvent) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(hook));
        self
    }

    /// How results are classified (default [`DefaultClassifier`]).
    pub fn classifier<C2>(self, classifier: C2) -> RetryBuilder<C2, R> {
        RetryBuilder {
            config: self.config,
            budget: self.budget,
            classifier,
            recorder: self.recorder,
            on_retry: self.on_retry,
            seed: self.seed,
            name: self.name,
        }
    }

    /// How the attempt count reaches the caller (default [`StatsOnly`]: only through the
    /// statistics, the hook and metrics, for any response type;
    /// [`AttemptsExtension`](crate::AttemptsExtension) writes it into an `http::Response`'s
    /// extensions; or a closure `Fn(&mut Res, Attempts)`).
    pub fn record_attempts<R2>(self, recorder: R2) -> RetryBuilder<C, R2> {
        RetryBuilder {
            config: self.config,
            budget: self.budget,
            classifier: self.classifier,
            recorder,
            on_retry: self.on_retry,
            seed: self.seed,
            name: self.name,
        }
    }

    /// Checks every knob and builds the layer.
    pub fn build(self) -> Result<RetryLayer<C, R>, ConfigError> {
        let config = &self.config;
        if config.max_attempts == 0 {
            return Err(config_error("max_attempts", "must be at least 1"));
        }
        config
            .backoff
            .check()
            .map_err(|reason| config_error("backoff", reason))?;
        if config.max_delay < config.backoff.initial() {
            return Err(config_error(
                "max_delay",
                "must not be shorter than the backoff's first delay",
            ));
        }
        if config.deadline.is_some_and(|d| d.is_zero()) {
            return Err(config_error("deadline", "must be longer than zero"));
        }
        if let Some(BudgetChoice::Own(budget)) = &self.budget {
            budget.check().map_err(|err| {
                ConfigError::new(
                    "retry",
                    format!("budget.{}", err.knob()),
                    err.reason().to_owned(),
                )
            })?;
        }
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> RetryLayer<C, R> {
        let seed = self
            .seed
            .unwrap_or_else(|| RandomState::new().hash_one("tower-llm-retry"));
        RetryLayer {
            policy: RetryPolicy::new(Shared {
                config: self.config,
                budget: self.budget.as_ref().map(|budget| match budget {
                    BudgetChoice::Own(config) => LayerBudget::own(*config, &self.name),
                    BudgetChoice::Shared(budget) => LayerBudget::shared(budget, &self.name),
                }),
                observe: Observe::new(self.name),
                classifier: self.classifier,
                recorder: self.recorder,
                on_retry: self.on_retry,
                seeds: AtomicU64::new(seed),
            }),
        }
    }
}

impl<C: fmt::Debug, R: fmt::Debug> fmt::Debug for RetryBuilder<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBuilder")
            .field("config", &self.config)
            .field("budget", &self.budget)
            .field("classifier", &self.classifier)
            .field("recorder", &self.recorder)
            .field(
                "on_retry",
                &self.on_retry.as_ref().map(|_| "Fn(&RetryEvent)"),
            )
            .field("seed", &self.seed)
            .field("name", &self.name)
            .finish()
    }
}

/// Where a layer's retries come from.
#[derive(Clone, Debug)]
enum BudgetChoice {
    Own(RetryBudget),
    Shared(AttemptBudget),
}

pub(crate) fn config_error(knob: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::new("retry", knob, reason)
}
