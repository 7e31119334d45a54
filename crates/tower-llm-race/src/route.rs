//! Route: one service per request, chosen by the request or by weight.
//!
//! A [`Pick`] chooses the index of the service that gets the request:
//!
//! - [`RouteLayer::predicate`]: `true` goes to service 0, `false` to service 1 (short
//!   simple prompts to a fast model, the rest to a strong one);
//! - [`RouteLayer::by_request`]: any function of the request returns the index (a
//!   classifier of the prompt: simple, code, hard...);
//! - [`RouteLayer::weighted`]: a random choice in proportion to the weights (canary a new
//!   provider with 5 % of the traffic, split load by quota). The generator is a lock-free
//!   counter mixed by splitmix64, shared by the route's clones, seedable for tests.
//!
//! The services share one type, so a route can lead to another strategy: box a single
//! provider and a [`Vote`](crate::vote::Vote) over three into
//! `tower::util::BoxCloneService`s and send complex prompts to the vote.
//!
//! The response can be marked with the chosen service ([`Answered`], one attempt; it replaces
//! a mark set by a strategy behind the route; see [`RouteLayer::record_winner`]). An index
//! past the end of
//! the list fails the request at once with [`NoSuchService`]. The
//! chosen service is cloned and driven to readiness inside the response future.
//!
//! # Example
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_race::{Answer, MarkResponse, RecordAnswer};
//! use tower_llm_race::route::RouteLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let model = |name: &'static str| service_fn(move |prompt: String| async move {
//!     Ok::<_, BoxError>(Answer::new(format!("{name}: {prompt}")))
//! });
//! let route = ServiceBuilder::new()
//!     .layer(RouteLayer::predicate(|prompt: &String| prompt.len() < 40).record_winner(MarkResponse))
//!     .service(vec![model("small"), model("large")]);
//!
//! let answer = route.clone().oneshot("What is 2 + 2?".to_string()).await?;
//! assert_eq!(answer.as_str(), "small: What is 2 + 2?");
//! let long = "Prove that there are infinitely many primes, step by step.".to_string();
//! let answer = route.oneshot(long).await?;
//! assert_eq!(answer.answered().map(|a| a.service), Some(1));
//! # Ok(())
//! # }
//! ```
//!
//! With its defaults a route needs nothing of the response type, here a `String`:
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_race::RouteLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let model = |name: &'static str| service_fn(move |prompt: String| async move {
//!     Ok::<_, BoxError>(format!("{name}: {prompt}"))
//! });
//! let route = ServiceBuilder::new()
//!     .layer(RouteLayer::weighted_seeded(&[0, 1], 7)?)
//!     .service(vec![model("old"), model("new")]);
//! assert_eq!(route.oneshot("hi".to_string()).await?, "new: hi");
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_llm_core::BoxError;
use tower_service::Service;

use crate::answer::{Answered, NoRecord, RecordWinner};
use crate::attempt::Attempt;
use crate::error::{ConfigError, NoSuchService};
use crate::observe::{Observe, Strategy, StrategyHandle};

const STRATEGY: Strategy = Strategy::Route;

/// Chooses the index of the service a request goes to.
pub trait Pick<Req> {
    /// The index, in the route's list, of the service for `request`.
    fn pick(&self, request: &Req) -> usize;
}

/// Routes `true` to service 0 and `false` to service 1. See [`RouteLayer::predicate`].
pub struct Predicate<F> {
    predicate: F,
}

impl<F> fmt::Debug for Predicate<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Predicate").finish_non_exhaustive()
    }
}

impl<Req, F: Fn(&Req) -> bool> Pick<Req> for Predicate<F> {
    fn pick(&self, request: &Req) -> usize {
        if (self.predicate)(request) { 0 } else { 1 }
    }
}

/// Routes by a function of the request that returns the index. See
/// [`RouteLayer::by_request`].
pub struct ByRequest<F> {
    pick: F,
}

impl<F> fmt::Debug for ByRequest<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByRequest").finish_non_exhaustive()
    }
}

impl<Req, F: Fn(&Req) -> usize> Pick<Req> for ByRequest<F> {
    fn pick(&self, request: &Req) -> usize {
        (self.pick)(request)
    }
}

/// Routes at random in proportion to weights. See [`RouteLayer::weighted`].
#[derive(Debug)]
pub struct Weighted {
    /// Running sums of the weights: service `i` owns `[cumulative[i-1], cumulative[i])`.
    cumulative: Vec<u64>,
    state: AtomicU64,
}

/// splitmix64's increment: successive states visit every u64 once.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix64(state: u64) -> u64 {
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Weighted {
    fn new(weights: &[u64], seed: u64) -> Result<Self, ConfigError> {
        let mut total = 0u64;
        let mut cumulative = Vec::with_capacity(weights.len());
        for &weight in weights {
            total = total.checked_add(weight).ok_or_else(|| {
                ConfigError::new("race", "weights", "their sum must fit in a u64")
            })?;
            cumulative.push(total);
        }
        if total == 0 {
            return Err(ConfigError::new(
                "race",
                "weights",
                "need at least one weight above zero",
            ));
        }
        Ok(Weighted {
            cumulative,
            state: AtomicU64::new(seed),
        })
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    fn next(&self) -> usize {
        let state = self.state.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed);
        let random = splitmix64(state.wrapping_add(GOLDEN_GAMMA));
        // Multiply-shift maps a u64 onto 0..total without modulo's bias toward low values.
        let point = ((u128::from(random) * u128::from(self.total())) >> 64) as u64;
        self.cumulative.partition_point(|&sum| sum <= point)
    }
}

impl<Req> Pick<Req> for Weighted {
    fn pick(&self, _request: &Req) -> usize {
        self.next()
    }
}

/// Makes a [`Route`] over a `Vec` of services. The layer's picker (and a weighted route's
/// random state) belongs to the layer value: every service it makes shares it.
pub struct RouteLayer<P, W = NoRecord> {
    observe: Arc<Observe>,
    pick: Arc<P>,
    record: W,
}

impl<P, W: Clone> Clone for RouteLayer<P, W> {
    fn clone(&self) -> Self {
        RouteLayer {
            observe: Arc::clone(&self.observe),
            pick: Arc::clone(&self.pick),
            record: self.record.clone(),
        }
    }
}

impl<P: fmt::Debug, W> fmt::Debug for RouteLayer<P, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteLayer")
            .field("pick", &self.pick)
            .finish()
    }
}

impl RouteLayer<()> {
    /// Requests for which `predicate` holds go to service 0, the others to service 1.
    pub fn predicate<F>(predicate: F) -> RouteLayer<Predicate<F>> {
        RouteLayer {
            observe: Observe::new(STRATEGY, None),
            pick: Arc::new(Predicate { predicate }),
            record: NoRecord,
        }
    }

    /// Each request goes to the service whose index `pick` returns.
    pub fn by_request<F>(pick: F) -> RouteLayer<ByRequest<F>> {
        RouteLayer {
            observe: Observe::new(STRATEGY, None),
            pick: Arc::new(ByRequest { pick }),
            record: NoRecord,
        }
    }

    /// Each request goes to service `i` with probability `weights[i] / sum(weights)`,
    /// from a random seed. Rejects weights that are all zero. Give one weight per service:
    /// a pick past the end of the service list fails with [`NoSuchService`].
    pub fn weighted(weights: &[u64]) -> Result<RouteLayer<Weighted>, ConfigError> {
        let seed = RandomState::new().hash_one(GOLDEN_GAMMA);
        RouteLayer::weighted_seeded(weights, seed)
    }

    /// As [`weighted`](Self::weighted), with the random sequence fixed by `seed`.
    pub fn weighted_seeded(
        weights: &[u64],
        seed: u64,
    ) -> Result<RouteLayer<Weighted>, ConfigError> {
        Ok(RouteLayer {
            observe: Observe::new(STRATEGY, None),
            pick: Arc::new(Weighted::new(weights, seed)?),
            record: NoRecord,
        })
    }
}

impl<P> RouteLayer<P> {
    /// A route with a [`Pick`] of your own.
    pub fn new(pick: P) -> Self {
        RouteLayer {
            observe: Observe::new(STRATEGY, None),
            pick: Arc::new(pick),
            record: NoRecord,
        }
    }
}

impl<P, W> RouteLayer<P, W> {
    /// Names this route in metrics (`name` label) and traces (`name` field); default
    /// "route". Starts fresh counters: take [`handle`](RouteLayer::handle) after naming.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.observe = Observe::new(STRATEGY, Some(name.into()));
        self
    }

    /// A handle on this layer value's counters (requests and calls started), shared by its
    /// clones and every service they make, before and after the stack is built and boxed.
    pub fn handle(&self) -> StrategyHandle {
        StrategyHandle::new(&self.observe)
    }

    /// Records which service was chosen with `record` (a [`RecordWinner`], e.g.
    /// [`MarkResponse`](crate::MarkResponse)) instead of nothing.
    pub fn record_winner<W2>(self, record: W2) -> RouteLayer<P, W2> {
        RouteLayer {
            observe: self.observe,
            pick: self.pick,
            record,
        }
    }
}

impl<S, P, W: Clone> Layer<Vec<S>> for RouteLayer<P, W> {
    type Service = Route<S, P, W>;

    fn layer(&self, services: Vec<S>) -> Self::Service {
        Route {
            services,
            observe: Arc::clone(&self.observe),
            pick: Arc::clone(&self.pick),
            record: self.record.clone(),
        }
    }
}

/// Sends each request to the one service its [`Pick`] chooses. See the [module docs](self).
pub struct Route<S, P, W = NoRecord> {
    services: Vec<S>,
    observe: Arc<Observe>,
    pick: Arc<P>,
    record: W,
}

impl<S: Clone, P, W: Clone> Clone for Route<S, P, W> {
    fn clone(&self) -> Self {
        Route {
            services: self.services.clone(),
            observe: Arc::clone(&self.observe),
            pick: Arc::clone(&self.pick),
            record: self.record.clone(),
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug, W> fmt::Debug for Route<S, P, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("services", &self.services)
            .field("pick", &self.pick)
            .finish()
    }
}

impl<S, P, W> Route<S, P, W> {
    /// A handle on the counters of the layer value that made this route.
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

impl<S, Req, P, W> Service<Req> for Route<S, P, W>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Pick<Req>,
    W: RecordWinner<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RouteFuture<S, Req, W>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The service is chosen per request; its readiness is awaited inside the response
        // future, on its own clone, so services that are not chosen never hold a request up.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.observe.request();
        let index = self.pick.pick(&request);
        match self.services.get(index) {
            Some(service) => {
                self.observe.legs_started(1);
                RouteFuture {
                    state: RouteState::Calling {
                        attempt: Attempt::new(service.clone(), request),
                        service: index,
                        record: self.record.clone(),
                    },
                }
            }
            None => RouteFuture {
                state: RouteState::Rejected {
                    error: Some(NoSuchService::new(index, self.services.len()).into()),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`Route`].
    pub struct RouteFuture<S, Req, W = NoRecord>
    where
        S: Service<Req>,
    {
        #[pin]
        state: RouteState<S, Req, W>,
    }
}

pin_project! {
    #[project = RouteProj]
    enum RouteState<S, Req, W>
    where
        S: Service<Req>,
    {
        // The chosen service is getting ready or answering.
        Calling { #[pin] attempt: Attempt<S, Req>, service: usize, record: W },
        // The pick named no service.
        Rejected { error: Option<BoxError> },
    }
}

impl<S, Req, W> Future for RouteFuture<S, Req, W>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    W: RecordWinner<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            RouteProj::Calling {
                attempt,
                service,
                record,
            } => {
                let service = *service;
                attempt.poll(cx).map(|result| {
                    let mut response = result.map_err(Into::into)?;
                    record.record_winner(&mut response, Answered::new(service, 1));
                    Ok(response)
                })
            }
            RouteProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "route future polled after completion".into()))),
        }
    }
}

impl<S: Service<Req>, Req, W> fmt::Debug for RouteFuture<S, Req, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            RouteState::Calling { service, .. } => f
                .debug_struct("RouteFuture")
                .field("service", service)
                .finish_non_exhaustive(),
            RouteState::Rejected { error } => {
                f.debug_struct("RouteFuture").field("error", error).finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn all_zero_weights_are_rejected() {
        let err = RouteLayer::weighted(&[0, 0]).expect_err("no weight");
        assert_eq!(err.knob(), "weights");
        assert!(RouteLayer::weighted(&[]).is_err());
    }

    proptest! {
        #[test]
        fn a_zero_weight_is_never_picked(seed in any::<u64>(), weights in proptest::collection::vec(0u64..5, 1..6)) {
            prop_assume!(weights.iter().any(|&w| w > 0));
            let weighted = Weighted::new(&weights, seed).expect("valid weights");
            for _ in 0..200 {
                let index = weighted.next();
                prop_assert!(index < weights.len());
                prop_assert!(weights[index] > 0);
            }
        }
    }
}
