use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_llm_core::{BoxError, Classify};
use tower_service::Service;

use crate::config::Reconcile;
use crate::error::Rejection;
use crate::limiter::{Limiter, OverloadSharing};
use crate::observe::SharedOp;
use crate::permit::Permit;
use crate::reads::{HeaderReader, IgnoreHeaders, IgnoreTokens, TokenReader};
use crate::ticket::{RemoteCheck, RemoteVerdict, Ticket, Turn};

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit): waits for the call's turn,
    /// then runs the inner call and records how it ended.
    ///
    /// Dropping it while waiting leaves the queue at once; dropping it while the call runs
    /// frees the concurrency slot.
    pub struct ResponseFuture<S, Req, C, T = IgnoreTokens, H = IgnoreHeaders>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req, C>,
        reads: PhantomData<fn() -> (T, H)>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, C>
    where
        S: Service<Req>,
    {
        Rejected {
            error: Option<BoxError>,
        },
        // Boxed: waiting is the slow path, and the box keeps the future small for the fast one.
        Waiting {
            wait: Pin<Box<Waiting<S, Req, C>>>,
        },
        Calling {
            #[pin]
            future: S::Future,
            permit: Permit,
            classifier: C,
        },
    }
}

pin_project! {
    #[project = WaitingProj]
    struct Waiting<S, Req, C> {
        #[pin]
        sleep: Sleep,
        sleep_at: u64,
        deadline: u64,
        // Why a call still waiting at `deadline` is refused: its wait ran past `max_wait`,
        // or reached the call's own deadline first.
        expiry: Rejection,
        not_before: u64,
        ticket: Ticket,
        service: Option<S>,
        request: Option<Req>,
        classifier: Option<C>,
        remote: Option<RemoteCheck>,
    }
}

impl<S: Service<Req>, Req, C, T, H> fmt::Debug for ResponseFuture<S, Req, C, T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Rejected { .. } => "rejected",
            State::Waiting { .. } => "waiting",
            State::Calling { .. } => "calling",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S: Service<Req>, Req, C, T, H> ResponseFuture<S, Req, C, T, H> {
    pub(crate) fn rejected(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Rejected { error: Some(error) },
            reads: PhantomData,
        }
    }

    pub(crate) fn calling(future: S::Future, permit: Permit, classifier: C) -> Self {
        ResponseFuture {
            state: State::Calling {
                future,
                permit,
                classifier,
            },
            reads: PhantomData,
        }
    }

    pub(crate) fn waiting(
        ticket: Ticket,
        (deadline, expiry): (u64, Rejection),
        service: S,
        request: Req,
        classifier: C,
    ) -> Self {
        let sleep = tokio::time::sleep_until(ticket.limiter.instant(deadline));
        ResponseFuture {
            state: State::Waiting {
                wait: Box::pin(Waiting {
                    sleep,
                    sleep_at: deadline,
                    deadline,
                    expiry,
                    not_before: 0,
                    ticket,
                    service: Some(service),
                    request: Some(request),
                    classifier: Some(classifier),
                    remote: None,
                }),
            },
            reads: PhantomData,
        }
    }
}

impl<S, Req, C, T, H> Future for ResponseFuture<S, Req, C, T, H>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
    T: TokenReader<Req, S::Response>,
    H: HeaderReader<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Calling {
                    future,
                    permit,
                    classifier,
                } => {
                    let mut result = ready!(future.poll(cx));
                    let streams = match &mut result {
                        Ok(response) => classifier.end_signal(response).is_some(),
                        Err(_) => false,
                    };
                    match &mut result {
                        // A stream keeps the permit until it ends.
                        Ok(response) if streams => {
                            hold_until_end::<Req, _, _, _, T, H>(permit, classifier, response);
                        }
                        _ => finish::<Req, _, _, _, T, H>(permit, classifier, result.as_ref()),
                    }
                    return Poll::Ready(result.map_err(Into::into));
                }
                StateProj::Rejected { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| "rate limit future polled after completion".into())));
                }
                StateProj::Waiting { wait } => {
                    let next = ready!(poll_waiting(wait.as_mut(), cx));
                    state.set(next);
                }
            }
        }
    }
}

/// Records how a call ended: its usage and the server's word when they are wanted, and its
/// outcome.
#[inline(always)]
fn finish<Req, Res, E, C, T, H>(permit: &mut Permit, classifier: &C, result: Result<&Res, &E>)
where
    C: Classify<Res, E>,
    T: TokenReader<Req, Res>,
    H: HeaderReader<Res>,
{
    let limiter = permit.limiter();
    let (usage, headers) = match result {
        Ok(response) => (
            limiter
                .wants_usage
                .then(|| {
                    Some((
                        T::usage(response)?,
                        reconcile::<Req, _, T>(limiter, response),
                    ))
                })
                .flatten(),
            limiter.config.adapt.then(|| H::headers(response)).flatten(),
        ),
        Err(_) => (None, None),
    };
    let outcome = classifier.classify(result);
    permit.complete(Some(outcome), usage, headers);
}

/// The reconcile setting for this response: the provider's way of counting under
/// [`Reconcile::FollowProvider`], the chosen one otherwise.
#[inline(always)]
fn reconcile<Req, Res, T: TokenReader<Req, Res>>(limiter: &Limiter, response: &Res) -> Reconcile {
    match limiter.config.reconcile {
        Reconcile::FollowProvider => Reconcile::FollowProvider.resolve(T::counting(response)),
        chosen => chosen,
    }
}

/// A response that finishes later (a stream): the head's rate-limit headers are learnt now;
/// the concurrency slot and the token reservation are held until the stream ends, then
/// settled with how it ended: the usage it reported, reconciled as for a whole answer; a
/// stream that ended without usage (cut, failed, dropped) keeps its whole reservation; a
/// rate-limit error inside it pauses the key. Out of line: whole answers never come here.
#[inline(never)]
fn hold_until_end<Req, Res, E, C, T, H>(permit: &mut Permit, classifier: &C, response: &mut Res)
where
    C: Classify<Res, E>,
    T: TokenReader<Req, Res>,
    H: HeaderReader<Res>,
{
    let limiter = permit.limiter();
    if limiter.config.adapt
        && let Some(headers) = H::headers(response)
    {
        permit.learn(headers);
    }
    let limiter = permit.limiter();
    let counts_tokens = limiter.wants_usage;
    let reconcile = reconcile::<Req, _, T>(limiter, response);
    let mut held = permit.hand_over();
    if let Some(signal) = classifier.end_signal(response) {
        signal.on_end(move |end| {
            let usage = end
                .usage()
                .filter(|_| counts_tokens)
                .map(|usage| (usage.total(), reconcile));
            // A dropped stream says nothing about the upstream: no outcome, no pause, no
            // move of an adaptive limit.
            held.complete(end.outcome(), usage, None);
        });
    }
}

/// The waiting state's turn: the state to go on with (calling or refused) once there is one.
/// Out of line, so the calling state's poll stays small.
#[inline(never)]
fn poll_waiting<S, Req, C>(
    wait: Pin<&mut Waiting<S, Req, C>>,
    cx: &mut Context<'_>,
) -> Poll<State<S, Req, C>>
where
    S: Service<Req>,
{
    let WaitingProj {
        mut sleep,
        sleep_at,
        deadline,
        expiry,
        not_before,
        ticket,
        service,
        request,
        classifier,
        remote,
    } = wait.project();
    loop {
        let limiter = ticket.limiter.clone();
        let mut now = limiter.now();
        let mut remote_charge = None;
        let mut go = None;
        if let Some(check) = remote {
            let verdict = ready!(check.as_mut().poll(cx));
            *remote = None;
            now = limiter.now();
            match verdict {
                RemoteVerdict::Admitted(charge, news) => {
                    // The news first: a lowered limit holds back the calls after this one,
                    // which Redis has admitted already.
                    ticket.key.learn_overload(news);
                    remote_charge = charge;
                    go = Some(ticket.admit_remote(now));
                }
                RemoteVerdict::Wait(wait, news) => {
                    ticket.key.learn_overload(news);
                    ticket.start_waiting();
                    *not_before =
                        now.saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX / 4));
                    let config = &limiter.config;
                    if *not_before > *deadline || config.max_queue == 0 {
                        let rejection = if config.max_queue == 0 {
                            Rejection::QueueFull
                        } else {
                            *expiry
                        };
                        ticket.give_up(now);
                        limiter.observe.rejected(rejection, Some(wait));
                        return Poll::Ready(State::Rejected {
                            error: Some(rejection.error(wait)),
                        });
                    }
                }
                RemoteVerdict::Failed => {
                    if limiter.sharing == OverloadSharing::WithQuotas {
                        limiter.observe.shared_failed(SharedOp::Read);
                    }
                    if remote_fails_open(&limiter) {
                        go = Some(ticket.admit_remote(now));
                    } else {
                        ticket.give_up(now);
                        let pause = limiter.config.default_pause;
                        limiter.observe.rejected(Rejection::Backend, Some(pause));
                        return Poll::Ready(State::Rejected {
                            error: Some(Rejection::Backend.error(pause)),
                        });
                    }
                }
            }
        }
        let turn = match go {
            Some(admission) => Turn::Go(admission),
            None => ticket.poll_turn(now, cx.waker()),
        };
        if now >= *deadline && !matches!(turn, Turn::Go(_)) {
            let hint = ticket.retry_hint(now);
            ticket.give_up(now);
            limiter.observe.rejected(*expiry, Some(hint));
            return Poll::Ready(State::Rejected {
                error: Some(expiry.error(hint)),
            });
        }
        let admission = match turn {
            Turn::Go(admission) => Some(admission),
            Turn::AskRemote if now >= *not_before => {
                *remote = ask_remote(ticket);
                if remote.is_none() {
                    // No store configured after all: nothing more to ask.
                    Some(ticket.admit_remote(now))
                } else {
                    continue;
                }
            }
            Turn::AskRemote => {
                wait_until(sleep.as_mut(), sleep_at, &limiter, *not_before, *deadline);
                None
            }
            Turn::Wait(at) => {
                let at = at.unwrap_or(*deadline);
                wait_until(sleep.as_mut(), sleep_at, &limiter, at, *deadline);
                None
            }
        };
        match admission {
            Some(admission) => {
                let (Some(mut svc), Some(req), Some(classifier)) =
                    (service.take(), request.take(), classifier.take())
                else {
                    return Poll::Ready(State::Rejected {
                        error: Some("rate limit future polled after completion".into()),
                    });
                };
                let mut permit = Permit::new(ticket.key.clone(), ticket.cost(), admission);
                permit.remote_charge = remote_charge;
                let future = svc.call(req);
                return Poll::Ready(State::Calling {
                    future,
                    permit,
                    classifier,
                });
            }
            None => {
                ready!(sleep.as_mut().poll(cx));
                // The timer fired: look again.
                continue;
            }
        }
    }
}

fn wait_until(
    sleep: Pin<&mut Sleep>,
    sleep_at: &mut u64,
    limiter: &Limiter,
    at: u64,
    deadline: u64,
) {
    let at = at.min(deadline);
    if *sleep_at != at {
        *sleep_at = at;
        sleep.reset(limiter.instant(at));
    }
}

#[cfg(feature = "redis")]
fn remote_fails_open(limiter: &Limiter) -> bool {
    limiter
        .config
        .redis
        .as_ref()
        .is_none_or(|r| r.failure_mode() == crate::BackendFailure::Open)
}

#[cfg(not(feature = "redis"))]
fn remote_fails_open(_limiter: &Limiter) -> bool {
    true
}

#[cfg(feature = "redis")]
fn ask_remote(ticket: &Ticket) -> Option<RemoteCheck> {
    let backend = ticket.limiter.config.redis.as_ref()?;
    let name = ticket.key.remote_key.clone()?;
    Some(backend.acquire(&ticket.limiter.config, name, ticket.cost()))
}

#[cfg(not(feature = "redis"))]
fn ask_remote(_ticket: &Ticket) -> Option<RemoteCheck> {
    None
}
