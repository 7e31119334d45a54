//! Gather: every service, every result.
//!
//! A request goes to every service at once, and the response lists each service's result in
//! the order of the list: its response, or its failure, classified ([`Gathered`]). Partial
//! failure is expected and tolerated: the request fails only when fewer than
//! [`min_successes`](GatherLayer::min_successes) services succeed (default 1), with
//! [`AllFailed`]. This is the seeds' "hybrid context": ask several models
//! or sources and use everything that came back.
//!
//! With a [`timeout`](GatherLayer::timeout), services still running when it passes are
//! dropped (cancelled) and listed as [`FailureKind::Timeout`] failures, so one stuck provider
//! does not hold up the rest. Cost: one call per service per request; latency is the slowest
//! service, or the timeout.
//!
//! # Example
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::{BoxError, FailureKind, UpstreamError};
//! use tower_llm_race::GatherLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let source = |name: &'static str| service_fn(move |query: String| async move {
//!     if name == "down" {
//!         return Err::<String, BoxError>(UpstreamError::new(FailureKind::Overloaded, "busy").into());
//!     }
//!     Ok(format!("{name} on {query}"))
//! });
//! let gather = ServiceBuilder::new()
//!     .layer(GatherLayer::new())
//!     .service(vec![source("docs"), source("down"), source("web")]);
//!
//! let gathered = gather.oneshot("tower".to_string()).await?;
//! let answers: Vec<_> = gathered.successes().map(|(_, answer)| answer.as_str()).collect();
//! assert_eq!(answers, ["docs on tower", "web on tower"]);
//! assert_eq!(gathered.failures().next().map(|f| f.kind()), Some(FailureKind::Overloaded));
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_layer::Layer;
use tower_llm_core::{
    BoxError, Classify, ClassifyResponse, Deadline, DefaultClassifier, Failure, FailureKind,
    Outcome, UpstreamError,
};
use tower_service::Service;

use crate::attempt::{Attempts, Verdict, judge};
use crate::error::{AllFailed, ServiceFailure};
use crate::observe::{Observe, Strategy, StrategyHandle};

const STRATEGY: Strategy = Strategy::Gather;

/// Every service's result, in the order of the service list.
#[derive(Debug)]
pub struct Gathered<Res> {
    results: Vec<Result<Res, ServiceFailure>>,
}

impl<Res> Gathered<Res> {
    /// Each service's result; the position is the service's index.
    pub fn results(&self) -> &[Result<Res, ServiceFailure>] {
        &self.results
    }

    /// The results, taken out.
    pub fn into_results(self) -> Vec<Result<Res, ServiceFailure>> {
        self.results
    }

    /// The successful responses, with their service's index.
    pub fn successes(&self) -> impl Iterator<Item = (usize, &Res)> {
        self.results
            .iter()
            .enumerate()
            .filter_map(|(i, result)| result.as_ref().ok().map(|response| (i, response)))
    }

    /// The failures.
    pub fn failures(&self) -> impl Iterator<Item = &ServiceFailure> {
        self.results
            .iter()
            .filter_map(|result| result.as_ref().err())
    }

    /// How many services succeeded.
    pub fn success_count(&self) -> usize {
        self.results.iter().filter(|result| result.is_ok()).count()
    }
}

impl<Res> ClassifyResponse for Gathered<Res> {
    /// A gather that returned has met its `min_successes`: a success.
    fn classify_response(&self) -> Outcome {
        Outcome::Success
    }
}

/// Makes a [`Gather`] over a `Vec` of services. Its only state is its counters (see
/// [`handle`](GatherLayer::handle)), shared by the layer's clones and every service it makes.
#[derive(Clone, Debug)]
pub struct GatherLayer<C = DefaultClassifier> {
    min_successes: usize,
    timeout: Option<Duration>,
    classifier: C,
    observe: Arc<Observe>,
}

impl Default for GatherLayer {
    fn default() -> Self {
        GatherLayer::new()
    }
}

impl GatherLayer {
    /// A gather that needs one success and waits for every service, named "gather".
    pub fn new() -> Self {
        GatherLayer {
            min_successes: 1,
            timeout: None,
            classifier: DefaultClassifier,
            observe: Observe::new(STRATEGY, None),
        }
    }
}

impl<C> GatherLayer<C> {
    /// Names this gather in metrics (`name` label) and traces (`name` field); default
    /// "gather". Starts fresh counters: take [`handle`](GatherLayer::handle) after naming.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.observe = Observe::new(STRATEGY, Some(name.into()));
        self
    }

    /// A handle on this layer value's counters, shared by its clones and every service they
    /// make, before and after the stack is built and boxed.
    pub fn handle(&self) -> StrategyHandle {
        StrategyHandle::new(&self.observe)
    }

    /// Fails the request when fewer than `min` services succeed (default 1; 0 never fails).
    pub fn min_successes(mut self, min: usize) -> Self {
        self.min_successes = min;
        self
    }

    /// Stops waiting `timeout` after the request started; services still running are
    /// cancelled and listed as timeouts.
    /// With a call [`Deadline`] current, the timeout is cut to the time left.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Judges results with `classifier` instead of the [`DefaultClassifier`].
    pub fn classifier<C2>(self, classifier: C2) -> GatherLayer<C2> {
        GatherLayer {
            min_successes: self.min_successes,
            timeout: self.timeout,
            classifier,
            observe: self.observe,
        }
    }
}

impl<S, C: Clone> Layer<Vec<S>> for GatherLayer<C> {
    type Service = Gather<S, C>;

    fn layer(&self, services: Vec<S>) -> Self::Service {
        Gather {
            services,
            min_successes: self.min_successes,
            timeout: self.timeout,
            classifier: self.classifier.clone(),
            observe: Arc::clone(&self.observe),
        }
    }
}

/// Sends each request to every service and returns every result. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct Gather<S, C = DefaultClassifier> {
    services: Vec<S>,
    min_successes: usize,
    timeout: Option<Duration>,
    classifier: C,
    observe: Arc<Observe>,
}

impl<S, C> Gather<S, C> {
    /// A handle on the counters of the layer value that made this gather.
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

impl<S, Req, C> Service<Req> for Gather<S, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = Gathered<S::Response>;
    type Error = BoxError;
    type Future = GatherFuture<S, Req, C>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each service's readiness is awaited inside the response future, on its own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.observe.request();
        let (attempts, count) = launch_all(&self.services, request);
        self.observe.legs_started(count);
        let mut results = Vec::with_capacity(count);
        results.resize_with(count, || None);
        GatherFuture {
            attempts,
            results,
            classifier: self.classifier.clone(),
            min_successes: self.min_successes,
            // A timeout past the end of the clock (`Duration::MAX` for "never") never
            // passes; adding it would panic.
            deadline_at: self
                .timeout
                // Never past the call's deadline, when there is one.
                .and_then(|timeout| Deadline::cap(Some(timeout)))
                .and_then(|timeout| Instant::now().checked_add(timeout)),
            deadline: None,
            observe: Arc::clone(&self.observe),
        }
    }
}

/// Starts a call to every service: clones of the request, the last one the request itself.
pub(crate) fn launch_all<S, Req>(services: &[S], request: Req) -> (Attempts<S, Req>, usize)
where
    S: Service<Req> + Clone,
    Req: Clone,
{
    let count = services.len();
    let mut attempts = Attempts::new(count);
    let mut request = Some(request);
    for (index, service) in services.iter().enumerate() {
        let this = if index + 1 == count {
            request.take()
        } else {
            request.clone()
        };
        if let Some(this) = this {
            attempts.launch(index, service.clone(), this);
        }
    }
    (attempts, count)
}

/// The failure recorded for a service still running when a timeout passed.
pub(crate) fn straggler(service: usize, what: &'static str) -> ServiceFailure {
    ServiceFailure::new(
        service,
        Failure::new(FailureKind::Timeout),
        Some(UpstreamError::new(FailureKind::Timeout, what).into()),
    )
}

pin_project! {
    /// The response future of [`Gather`].
    pub struct GatherFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        attempts: Attempts<S, Req>,
        results: Vec<Option<Result<S::Response, ServiceFailure>>>,
        classifier: C,
        min_successes: usize,
        deadline_at: Option<Instant>,
        #[pin]
        deadline: Option<Sleep>,
        observe: Arc<Observe>,
    }
}

impl<S, Req, C> Future for GatherFuture<S, Req, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<Gathered<S::Response>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.attempts.poll_next(cx) {
                Poll::Ready(Some((index, result))) => {
                    let result = match judge(this.classifier, index, result) {
                        Verdict::Answer(Ok(response)) => Ok(response),
                        Verdict::Answer(Err(error)) => Err(ServiceFailure::new(
                            index,
                            Failure::new(FailureKind::Other),
                            Some(error),
                        )),
                        Verdict::Failed(failure) => {
                            this.observe.leg_failed(index, failure.kind());
                            Err(failure)
                        }
                    };
                    if let Some(slot) = this.results.get_mut(index) {
                        *slot = Some(result);
                    }
                    continue;
                }
                Poll::Ready(None) => break,
                Poll::Pending => {}
            }
            let Some(at) = *this.deadline_at else {
                return Poll::Pending;
            };
            if this.deadline.is_none() {
                this.deadline.set(Some(sleep_until(at)));
            }
            if let Some(deadline) = this.deadline.as_mut().as_pin_mut()
                && deadline.poll(cx).is_pending()
            {
                return Poll::Pending;
            }
            for (index, slot) in this.results.iter_mut().enumerate() {
                if this.attempts.is_in_flight(index) {
                    *slot = Some(Err(straggler(index, "no answer within the gather timeout")));
                }
            }
            this.observe.cancelled(this.attempts.cancel_all());
            break;
        }
        let results: Vec<_> = std::mem::take(this.results)
            .into_iter()
            .enumerate()
            .map(|(index, slot)| slot.unwrap_or_else(|| Err(straggler(index, "no result"))))
            .collect();
        let successes = results.iter().filter(|result| result.is_ok()).count();
        if successes >= *this.min_successes {
            this.observe.answered();
            if successes < results.len() {
                this.observe.partial();
            }
            return Poll::Ready(Ok(Gathered { results }));
        }
        let count = results.len();
        let failures: Vec<_> = results.into_iter().filter_map(Result::err).collect();
        this.observe.exhausted(count, &failures);
        Poll::Ready(Err(AllFailed::new(count, failures).into()))
    }
}

impl<S: Service<Req>, Req, C> fmt::Debug for GatherFuture<S, Req, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatherFuture")
            .field("attempts", &self.attempts)
            .field("min_successes", &self.min_successes)
            .finish_non_exhaustive()
    }
}
