//! Race: every service at once, the first success wins, the others are cancelled.
//!
//! Each request is cloned to every service and all calls start together. The first response
//! the classifier calls a success is returned (marked with the service that gave it, an
//! [`Answered`], when [`record_winner`](RaceLayer::record_winner) says where); the calls still
//! running are dropped at that moment, which
//! cancels them (an HTTP client closes their connections). Failures do not end the race: a
//! fast 500 or 429 loses to a slower success. When every service has failed, the error is
//! [`AllFailed`], listing each failure.
//!
//! Latency is the fastest success; cost is one call per service per request (the losers
//! are billed for what they did before being cancelled). See `docs/race.md`.
//!
//! Each service is cloned per request and driven to readiness inside the response future,
//! so one service that is not ready (a full buffer, a rate limiter) holds up only itself.
//! [`Race::poll_ready`](tower_service::Service::poll_ready) is therefore always ready.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
//! use tower_llm_core::BoxError;
//! use tower_llm_race::{Answer, MarkResponse, RaceLayer, RecordAnswer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // Two providers of different types, boxed into one service type.
//! fn provider(name: &'static str, latency: Duration) -> BoxCloneService<String, Answer<String>, BoxError> {
//!     BoxCloneService::new(service_fn(move |prompt: String| async move {
//!         tokio::time::sleep(latency).await;
//!         Ok::<_, BoxError>(Answer::new(format!("{name}: {prompt}")))
//!     }))
//! }
//! let race = ServiceBuilder::new()
//!     .layer(RaceLayer::new().record_winner(MarkResponse))
//!     .service(vec![provider("slow", Duration::from_secs(4)), provider("fast", Duration::from_millis(3500))]);
//!
//! let answer = race.oneshot("hi".to_string()).await?;
//! assert_eq!(answer.as_str(), "fast: hi");
//! assert_eq!(answer.answered().map(|a| a.service), Some(1));
//! # Ok(())
//! # }
//! ```
//!
//! With its defaults a race needs nothing of the response type: over a `service_fn`
//! returning `String`,
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_race::RaceLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let model = |name: &'static str| {
//!     service_fn(move |prompt: String| async move { Ok::<_, BoxError>(format!("{name}: {prompt}")) })
//! };
//! let race = ServiceBuilder::new()
//!     .layer(RaceLayer::new())
//!     .service(vec![model("a"), model("b")]);
//! assert_eq!(race.oneshot("hi".to_string()).await?, "a: hi");
//! # Ok(())
//! # }
//! ```
//!
//! and over typed providers, here two `OpenAi` services (`tower-llm-providers`) against the
//! testkit's mock server:
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_llm_core::BoxError;
//! use tower_llm_providers::{ChatRequest, Message, OpenAi};
//! use tower_llm_race::RaceLayer;
//! use tower_llm_testkit::{FaultPlan, MockServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let server = MockServer::start(FaultPlan::healthy()).await?;
//! let provider = || OpenAi::compatible(format!("{}/v1", server.base_url())).api_key("k").build();
//! let race = ServiceBuilder::new()
//!     .layer(RaceLayer::new())
//!     .service(vec![provider()?, provider()?]);
//! let answer = race.oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await?;
//! assert!(!answer.content.is_empty());
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
use tower_llm_core::{BoxError, Classify, DefaultClassifier};
use tower_service::Service;

use crate::answer::{Answered, NoRecord, RecordWinner};
use crate::attempt::{Attempts, Verdict, judge};
use crate::error::{AllFailed, ServiceFailure};
use crate::observe::{Observe, Strategy, StrategyHandle};

const STRATEGY: Strategy = Strategy::Race;

/// Makes a [`Race`] over a `Vec` of services. Its only state is its counters (see
/// [`handle`](RaceLayer::handle)), shared by the layer's clones and every service it makes.
#[derive(Clone, Debug)]
pub struct RaceLayer<C = DefaultClassifier, W = NoRecord> {
    classifier: C,
    record: W,
    observe: Arc<Observe>,
}

impl Default for RaceLayer {
    fn default() -> Self {
        RaceLayer::new()
    }
}

impl RaceLayer {
    /// A race that judges results with the [`DefaultClassifier`] and records nothing on the
    /// response, named "race".
    pub fn new() -> Self {
        RaceLayer {
            classifier: DefaultClassifier,
            record: NoRecord,
            observe: Observe::new(STRATEGY, None),
        }
    }
}

impl<C, W> RaceLayer<C, W> {
    /// Names this race in metrics (`name` label) and traces (`name` field); default "race".
    /// Starts fresh counters: take [`handle`](RaceLayer::handle) after naming.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.observe = Observe::new(STRATEGY, Some(name.into()));
        self
    }

    /// A handle on this layer value's counters, shared by its clones and every service they
    /// make, before and after the stack is built and boxed.
    pub fn handle(&self) -> StrategyHandle {
        StrategyHandle::new(&self.observe)
    }

    /// Judges results with `classifier` instead.
    pub fn classifier<C2>(self, classifier: C2) -> RaceLayer<C2, W> {
        RaceLayer {
            classifier,
            record: self.record,
            observe: self.observe,
        }
    }

    /// Records which service won with `record` (a [`RecordWinner`], e.g.
    /// [`MarkResponse`](crate::MarkResponse)) instead of nothing.
    pub fn record_winner<W2>(self, record: W2) -> RaceLayer<C, W2> {
        RaceLayer {
            classifier: self.classifier,
            record,
            observe: self.observe,
        }
    }
}

impl<S, C: Clone, W: Clone> Layer<Vec<S>> for RaceLayer<C, W> {
    type Service = Race<S, C, W>;

    fn layer(&self, services: Vec<S>) -> Self::Service {
        Race {
            services,
            classifier: self.classifier.clone(),
            record: self.record.clone(),
            observe: Arc::clone(&self.observe),
        }
    }
}

/// Sends each request to every service at once; the first success wins. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct Race<S, C = DefaultClassifier, W = NoRecord> {
    services: Vec<S>,
    classifier: C,
    record: W,
    observe: Arc<Observe>,
}

impl<S> Race<S> {
    /// A race over `services`, judged by the [`DefaultClassifier`].
    pub fn new(services: Vec<S>) -> Self {
        RaceLayer::new().layer(services)
    }
}

impl<S, C, W> Race<S, C, W> {
    /// A handle on the counters of the layer value that made this race.
    pub fn handle(&self) -> StrategyHandle {
        StrategyHandle::new(&self.observe)
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

impl<S, Req, C, W> Service<Req> for Race<S, C, W>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
    C: Classify<S::Response, S::Error> + Clone,
    W: RecordWinner<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RaceFuture<S, Req, C, W>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each service's readiness is awaited inside the response future, on its own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.observe.request();
        let count = self.services.len();
        let mut attempts = Attempts::new(count);
        let mut request = Some(request);
        for (index, service) in self.services.iter().enumerate() {
            let this = if index + 1 == count {
                request.take()
            } else {
                request.clone()
            };
            if let Some(this) = this {
                attempts.launch(index, service.clone(), this);
            }
        }
        self.observe.legs_started(count);
        RaceFuture {
            attempts,
            failures: Vec::new(),
            classifier: self.classifier.clone(),
            record: self.record.clone(),
            services: count,
            observe: Arc::clone(&self.observe),
        }
    }
}

pin_project! {
    /// The response future of [`Race`].
    pub struct RaceFuture<S, Req, C, W = NoRecord>
    where
        S: Service<Req>,
    {
        attempts: Attempts<S, Req>,
        failures: Vec<ServiceFailure>,
        classifier: C,
        record: W,
        services: usize,
        observe: Arc<Observe>,
    }
}

impl<S, Req, C, W> Future for RaceFuture<S, Req, C, W>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
    W: RecordWinner<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        loop {
            let Some((index, result)) = ready!(this.attempts.poll_next(cx)) else {
                this.observe.exhausted(*this.services, this.failures);
                let failures = std::mem::take(this.failures);
                return Poll::Ready(Err(AllFailed::new(*this.services, failures).into()));
            };
            match judge(this.classifier, index, result) {
                Verdict::Answer(answer) => {
                    this.observe.cancelled(this.attempts.cancel_all());
                    this.observe.answered();
                    let answered = Answered::new(index, *this.services);
                    return Poll::Ready(answer.map(|mut response| {
                        this.record.record_winner(&mut response, answered);
                        response
                    }));
                }
                Verdict::Failed(failure) => {
                    this.observe.leg_failed(index, failure.kind());
                    this.failures.push(failure);
                }
            }
        }
    }
}

impl<S: Service<Req>, Req, C, W> fmt::Debug for RaceFuture<S, Req, C, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaceFuture")
            .field("attempts", &self.attempts)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}
