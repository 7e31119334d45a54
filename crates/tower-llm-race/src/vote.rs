//! Vote: ask several services, answer with what enough of them agree on.
//!
//! A request goes to every service at once. Each success is a [`Ballot`]; a [`Tally`]
//! decides:
//!
//! - [`VoteLayer::majority`]: a key function normalises each answer (trim, lowercase,
//!   parse the label out of a JSON reply, ...) and as soon as
//!   [`quorum`](VoteBuilder::quorum) answers share a key, the first of them is the answer and
//!   the services still running are cancelled. The default quorum is a strict majority of
//!   the services;
//! - [`VoteLayer::combine`]: a function of your own sees every answer that arrived (at
//!   least `quorum` of them; default a strict majority) and returns the one to keep, or
//!   `None` to refuse.
//!
//! With a [`timeout`](VoteBuilder::timeout), stragglers are cancelled when it passes and the
//! tally decides over the answers in. Failures do not vote. When the quorum is not met
//! (answers disagreed, too many failed, or the combiner refused), the error is
//! [`NoQuorum`], listing the failures; the vote ends early when the services
//! still running could no longer make up the quorum, and a vote over fewer services than its
//! quorum calls none of them and fails at once.
//!
//! The answer can be marked with the service whose ballot won and the number of services
//! asked ([`Answered`], see [`VoteBuilder::record_winner`]). Cost: one call per service per request, which buys
//! agreement rather than speed. See `docs/race.md`.
//!
//! # Example
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_race::{Answer, MarkResponse, RecordAnswer};
//! use tower_llm_race::vote::VoteLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let model = |reply: &'static str| service_fn(move |_prompt: String| async move {
//!     Ok::<_, BoxError>(Answer::new(reply.to_string()))
//! });
//! let vote = ServiceBuilder::new()
//!     .layer(
//!         VoteLayer::majority(|answer: &Answer<String>| answer.trim().to_lowercase())
//!             .quorum(2)
//!             .record_winner(MarkResponse)
//!             .build()?,
//!     )
//!     .service(vec![model("Positive"), model("negative"), model(" positive\n")]);
//!
//! let answer = vote.oneshot("Great service!".to_string()).await?;
//! assert_eq!(answer.as_str(), "Positive");
//! assert_eq!(answer.answered().map(|a| a.service), Some(0));
//! # Ok(())
//! # }
//! ```
//!
//! With its defaults a vote needs nothing of the response type beyond what its tally reads,
//! here a `String`:
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_race::VoteLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let model = |reply: &'static str| service_fn(move |_prompt: String| async move {
//!     Ok::<_, BoxError>(reply.to_string())
//! });
//! let vote = ServiceBuilder::new()
//!     .layer(VoteLayer::majority(|answer: &String| answer.to_lowercase()).build()?)
//!     .service(vec![model("yes"), model("no"), model("Yes")]);
//! assert_eq!(vote.oneshot("Is water wet?".to_string()).await?, "yes");
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
use tower_llm_core::{BoxError, Classify, Deadline, DefaultClassifier, Failure, FailureKind};
use tower_service::Service;

use crate::answer::{Answered, NoRecord, RecordWinner};
use crate::attempt::{Attempts, Verdict, judge};
use crate::error::{ConfigError, NoQuorum, ServiceFailure};
use crate::gather::{launch_all, straggler};
use crate::observe::{Observe, Strategy, StrategyHandle};

const STRATEGY: Strategy = Strategy::Vote;

/// One service's answer in a vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ballot<Res> {
    /// The index of the service that answered.
    pub service: usize,
    /// Its answer.
    pub response: Res,
}

/// How a vote decides. [`Majority`] and [`Combine`] are the two the crate offers.
pub trait Tally<Res> {
    /// What the tally keeps per request (the keys seen so far, for a majority).
    type State: Default;

    /// A ballot arrived (the last of `ballots`). Returns the index in `ballots` of the
    /// winner to decide now, or `None` to wait for more.
    fn add(&self, state: &mut Self::State, ballots: &[Ballot<Res>], quorum: usize)
    -> Option<usize>;

    /// No more ballots will come. Returns the winner, or `None` for no decision.
    fn finish(
        &self,
        state: &mut Self::State,
        ballots: Vec<Ballot<Res>>,
        quorum: usize,
    ) -> Option<Ballot<Res>>;
}

/// A majority by key: answers whose keys are equal agree. See [`VoteLayer::majority`].
pub struct Majority<F> {
    key: F,
}

impl<F> fmt::Debug for Majority<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Majority").finish_non_exhaustive()
    }
}

impl<Res, F, K> Tally<Res> for Majority<F>
where
    F: Fn(&Res) -> K,
    K: PartialEq,
{
    type State = Vec<K>;

    fn add(&self, keys: &mut Vec<K>, ballots: &[Ballot<Res>], quorum: usize) -> Option<usize> {
        let ballot = ballots.last()?;
        let key = (self.key)(&ballot.response);
        let agreeing = keys.iter().filter(|k| **k == key).count() + 1;
        let first = keys.iter().position(|k| *k == key).unwrap_or(keys.len());
        keys.push(key);
        (agreeing >= quorum).then_some(first)
    }

    fn finish(
        &self,
        _keys: &mut Vec<K>,
        _ballots: Vec<Ballot<Res>>,
        _quorum: usize,
    ) -> Option<Ballot<Res>> {
        // Had a key reached the quorum, `add` would have decided.
        None
    }
}

/// A decision of your own over every answer. See [`VoteLayer::combine`].
pub struct Combine<F> {
    combine: F,
}

impl<F> fmt::Debug for Combine<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Combine").finish_non_exhaustive()
    }
}

impl<Res, F> Tally<Res> for Combine<F>
where
    F: Fn(Vec<Ballot<Res>>) -> Option<Ballot<Res>>,
{
    type State = ();

    fn add(&self, _state: &mut (), _ballots: &[Ballot<Res>], _quorum: usize) -> Option<usize> {
        None
    }

    fn finish(
        &self,
        _state: &mut (),
        ballots: Vec<Ballot<Res>>,
        quorum: usize,
    ) -> Option<Ballot<Res>> {
        if ballots.len() < quorum {
            return None;
        }
        (self.combine)(ballots)
    }
}

/// Builds a [`VoteLayer`]; start from [`VoteLayer::majority`] or [`VoteLayer::combine`].
#[derive(Debug)]
pub struct VoteBuilder<T, C = DefaultClassifier, W = NoRecord> {
    name: Option<Cow<'static, str>>,
    tally: T,
    quorum: Option<usize>,
    timeout: Option<Duration>,
    classifier: C,
    record: W,
}

impl<T, C, W> VoteBuilder<T, C, W> {
    /// Names this vote in metrics (`name` label) and traces (`name` field); default "vote".
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How many agreeing answers (majority) or answers (combine) decide; default a strict
    /// majority of the services. At least 1; a vote over fewer services than this calls none
    /// of them and fails at once with [`NoQuorum`].
    pub fn quorum(mut self, quorum: usize) -> Self {
        self.quorum = Some(quorum);
        self
    }

    /// Decides over the answers in when `timeout` has passed since the request started,
    /// cancelling the services still running. With a call [`Deadline`] current, the timeout
    /// is cut to the time left.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Judges results with `classifier` instead of the [`DefaultClassifier`]; only
    /// successes vote.
    pub fn classifier<C2>(self, classifier: C2) -> VoteBuilder<T, C2, W> {
        VoteBuilder {
            name: self.name,
            tally: self.tally,
            quorum: self.quorum,
            timeout: self.timeout,
            classifier,
            record: self.record,
        }
    }

    /// Records which service's ballot won with `record` (a [`RecordWinner`], e.g.
    /// [`MarkResponse`](crate::MarkResponse)) instead of nothing.
    pub fn record_winner<W2>(self, record: W2) -> VoteBuilder<T, C, W2> {
        VoteBuilder {
            name: self.name,
            tally: self.tally,
            quorum: self.quorum,
            timeout: self.timeout,
            classifier: self.classifier,
            record,
        }
    }

    /// The layer, or the knob whose value cannot work.
    pub fn build(self) -> Result<VoteLayer<T, C, W>, ConfigError> {
        if self.quorum == Some(0) {
            return Err(ConfigError::new(
                "race",
                "quorum",
                "must be at least 1: a decision needs an answer",
            ));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                "race",
                "timeout",
                "must be longer than zero, or no answer could arrive",
            ));
        }
        Ok(VoteLayer {
            observe: Observe::new(STRATEGY, self.name),
            tally: Arc::new(self.tally),
            quorum: self.quorum,
            timeout: self.timeout,
            classifier: self.classifier,
            record: self.record,
        })
    }
}

/// Makes a [`Vote`] over a `Vec` of services. A vote keeps no state of its own beyond its
/// tally and its counters (see [`handle`](VoteLayer::handle)), shared by the layer's clones
/// and every service it makes.
pub struct VoteLayer<T, C = DefaultClassifier, W = NoRecord> {
    observe: Arc<Observe>,
    tally: Arc<T>,
    quorum: Option<usize>,
    timeout: Option<Duration>,
    classifier: C,
    record: W,
}

impl<T, C: Clone, W: Clone> Clone for VoteLayer<T, C, W> {
    fn clone(&self) -> Self {
        VoteLayer {
            observe: Arc::clone(&self.observe),
            tally: Arc::clone(&self.tally),
            quorum: self.quorum,
            timeout: self.timeout,
            classifier: self.classifier.clone(),
            record: self.record.clone(),
        }
    }
}

impl<T: fmt::Debug, C: fmt::Debug, W> fmt::Debug for VoteLayer<T, C, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VoteLayer")
            .field("tally", &self.tally)
            .field("quorum", &self.quorum)
            .field("timeout", &self.timeout)
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl VoteLayer<(), DefaultClassifier> {
    /// A vote where answers agree when `key` maps them to equal keys.
    pub fn majority<F>(key: F) -> VoteBuilder<Majority<F>> {
        VoteBuilder {
            name: None,
            tally: Majority { key },
            quorum: None,
            timeout: None,
            classifier: DefaultClassifier,
            record: NoRecord,
        }
    }

    /// A vote decided by `combine` over every answer that arrived, once at least `quorum`
    /// did. It returns the ballot to answer with (it may build a new response from several),
    /// or `None` to refuse.
    pub fn combine<F>(combine: F) -> VoteBuilder<Combine<F>> {
        VoteBuilder {
            name: None,
            tally: Combine { combine },
            quorum: None,
            timeout: None,
            classifier: DefaultClassifier,
            record: NoRecord,
        }
    }
}

impl<T, C, W> VoteLayer<T, C, W> {
    /// A handle on this layer value's counters, shared by its clones and every service they
    /// make, before and after the stack is built and boxed.
    pub fn handle(&self) -> StrategyHandle {
        StrategyHandle::new(&self.observe)
    }
}

impl<S, T, C: Clone, W: Clone> Layer<Vec<S>> for VoteLayer<T, C, W> {
    type Service = Vote<S, T, C, W>;

    fn layer(&self, services: Vec<S>) -> Self::Service {
        Vote {
            services,
            observe: Arc::clone(&self.observe),
            tally: Arc::clone(&self.tally),
            quorum: self.quorum,
            timeout: self.timeout,
            classifier: self.classifier.clone(),
            record: self.record.clone(),
        }
    }
}

/// Asks every service and answers with what enough of them agree on. See the
/// [module docs](self).
pub struct Vote<S, T, C = DefaultClassifier, W = NoRecord> {
    services: Vec<S>,
    observe: Arc<Observe>,
    tally: Arc<T>,
    quorum: Option<usize>,
    timeout: Option<Duration>,
    classifier: C,
    record: W,
}

impl<S: Clone, T, C: Clone, W: Clone> Clone for Vote<S, T, C, W> {
    fn clone(&self) -> Self {
        Vote {
            services: self.services.clone(),
            observe: Arc::clone(&self.observe),
            tally: Arc::clone(&self.tally),
            quorum: self.quorum,
            timeout: self.timeout,
            classifier: self.classifier.clone(),
            record: self.record.clone(),
        }
    }
}

impl<S: fmt::Debug, T: fmt::Debug, C: fmt::Debug, W> fmt::Debug for Vote<S, T, C, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vote")
            .field("services", &self.services)
            .field("tally", &self.tally)
            .field("quorum", &self.quorum)
            .field("timeout", &self.timeout)
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<S, T, C, W> Vote<S, T, C, W> {
    /// A handle on the counters of the layer value that made this vote.
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

    /// The quorum a request needs with this many services.
    pub fn quorum(&self) -> usize {
        self.quorum.unwrap_or(self.services.len() / 2 + 1)
    }
}

impl<S, Req, T, C, W> Service<Req> for Vote<S, T, C, W>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
    T: Tally<S::Response>,
    C: Classify<S::Response, S::Error> + Clone,
    W: RecordWinner<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = VoteFuture<S, Req, T, C, W>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each service's readiness is awaited inside the response future, on its own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.observe.request();
        let quorum = self.quorum();
        // A quorum above the number of services can never be met: refused at once (the
        // future's first poll), without spending a call on any of them.
        let (attempts, count) = if quorum > self.services.len() {
            (Attempts::new(0), 0)
        } else {
            launch_all(&self.services, request)
        };
        self.observe.legs_started(count);
        VoteFuture {
            attempts,
            ballots: Vec::with_capacity(count),
            state: T::State::default(),
            tally: Arc::clone(&self.tally),
            failures: Vec::new(),
            quorum,
            asked: count,
            classifier: self.classifier.clone(),
            record: self.record.clone(),
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

pin_project! {
    /// The response future of [`Vote`].
    pub struct VoteFuture<S, Req, T, C, W = NoRecord>
    where
        S: Service<Req>,
        T: Tally<S::Response>,
    {
        attempts: Attempts<S, Req>,
        ballots: Vec<Ballot<S::Response>>,
        state: T::State,
        tally: Arc<T>,
        failures: Vec<ServiceFailure>,
        quorum: usize,
        asked: usize,
        classifier: C,
        record: W,
        deadline_at: Option<Instant>,
        #[pin]
        deadline: Option<Sleep>,
        observe: Arc<Observe>,
    }
}

impl<S, Req, T, C, W> Future for VoteFuture<S, Req, T, C, W>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    T: Tally<S::Response>,
    C: Classify<S::Response, S::Error>,
    W: RecordWinner<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.attempts.poll_next(cx) {
                Poll::Ready(Some((index, result))) => {
                    match judge(this.classifier, index, result) {
                        Verdict::Answer(Ok(response)) => {
                            this.observe.ballot();
                            this.ballots.push(Ballot {
                                service: index,
                                response,
                            });
                            if let Some(winner) =
                                this.tally.add(this.state, this.ballots, *this.quorum)
                                && winner < this.ballots.len()
                            {
                                this.observe.cancelled(this.attempts.cancel_all());
                                if this.ballots.len() < *this.asked {
                                    this.observe.decided_early();
                                }
                                this.observe.answered();
                                let ballot = this.ballots.swap_remove(winner);
                                return Poll::Ready(Ok(elect(this.record, ballot, *this.asked)));
                            }
                        }
                        Verdict::Answer(Err(error)) => this.failures.push(ServiceFailure::new(
                            index,
                            Failure::new(FailureKind::Other),
                            Some(error),
                        )),
                        Verdict::Failed(failure) => {
                            this.observe.leg_failed(index, failure.kind());
                            this.failures.push(failure);
                        }
                    }
                    if this.attempts.in_flight() + this.ballots.len() < *this.quorum {
                        // The quorum is out of reach: stop waiting.
                        this.observe.cancelled(this.attempts.cancel_all());
                        break;
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
            for index in 0..*this.asked {
                if this.attempts.is_in_flight(index) {
                    this.failures
                        .push(straggler(index, "no answer within the vote timeout"));
                }
            }
            this.observe.cancelled(this.attempts.cancel_all());
            break;
        }
        let ballots = std::mem::take(this.ballots);
        let answers = ballots.len();
        match this.tally.finish(this.state, ballots, *this.quorum) {
            Some(ballot) => {
                this.observe.answered();
                Poll::Ready(Ok(elect(this.record, ballot, *this.asked)))
            }
            None => {
                this.observe.exhausted(*this.asked, this.failures);
                let failures = std::mem::take(this.failures);
                Poll::Ready(Err(NoQuorum::new(*this.quorum, answers, failures).into()))
            }
        }
    }
}

fn elect<Res, W: RecordWinner<Res>>(record: &W, ballot: Ballot<Res>, asked: usize) -> Res {
    let mut response = ballot.response;
    record.record_winner(&mut response, Answered::new(ballot.service, asked));
    response
}

impl<S, Req, T, C, W> fmt::Debug for VoteFuture<S, Req, T, C, W>
where
    S: Service<Req>,
    T: Tally<S::Response>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VoteFuture")
            .field("attempts", &self.attempts)
            .field("ballots", &self.ballots.len())
            .field("quorum", &self.quorum)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A majority decides exactly when some key first reaches the quorum, for the first
        /// ballot with that key.
        #[test]
        fn majority_decides_at_the_first_quorum(
            answers in proptest::collection::vec(0u8..4, 1..12),
            quorum in 1usize..5,
        ) {
            let tally = Majority { key: |answer: &u8| *answer };
            let mut keys = Vec::new();
            let mut ballots = Vec::new();
            for (service, answer) in answers.iter().enumerate() {
                ballots.push(Ballot { service, response: *answer });
                let decided = tally.add(&mut keys, &ballots, quorum);
                let count = answers[..=service].iter().filter(|a| **a == *answer).count();
                if count >= quorum {
                    let winner = decided.expect("quorum reached");
                    prop_assert_eq!(ballots[winner].response, *answer);
                    let first = answers.iter().position(|a| a == answer).expect("present");
                    prop_assert_eq!(winner, first);
                    break;
                }
                prop_assert_eq!(decided, None);
            }
        }
    }
}
