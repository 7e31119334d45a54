//! The [`Dedup`](crate::Dedup) service's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tower_llm_core::BoxError;
use tower_service::Service;

use crate::flight::{Next, Subscription};
use crate::observe::Observe;

/// The flight ended without a response; only a broken inner future that ends without output
/// could cause it, and it is reported rather than hung on.
#[derive(Debug)]
struct NoResponse;

impl fmt::Display for NoResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the shared call ended without a response")
    }
}

impl std::error::Error for NoResponse {}

pin_project_lite::pin_project! {
    /// The answer to one request: from the cache, from a shared call, or from the inner
    /// service directly (bypass, or an own call after a shared failure).
    pub struct ResponseFuture<F, S, Req, Res> {
        #[pin]
        state: State<F, S, Req, Res>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, S, Req, Res> {
        Ready { result: Option<Result<Res, BoxError>> },
        Direct { #[pin] future: F },
        Waiting {
            subscription: Subscription<Res>,
            response: Option<Res>,
            own_call: Option<(S, Req)>,
            observe: Observe,
        },
        OwnCall { service: S, request: Option<Req> },
    }
}

impl<F, S, Req, Res> ResponseFuture<F, S, Req, Res> {
    pub(crate) fn ready(result: Result<Res, BoxError>) -> Self {
        ResponseFuture {
            state: State::Ready {
                result: Some(result),
            },
        }
    }

    pub(crate) fn direct(future: F) -> Self {
        ResponseFuture {
            state: State::Direct { future },
        }
    }

    pub(crate) fn waiting(
        subscription: Subscription<Res>,
        own_call: Option<(S, Req)>,
        observe: Observe,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                subscription,
                response: None,
                own_call,
                observe,
            },
        }
    }
}

impl<F, S, Req, Res> fmt::Debug for ResponseFuture<F, S, Req, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Ready { .. } => "ready",
            State::Direct { .. } => "direct",
            State::Waiting { .. } => "waiting",
            State::OwnCall { .. } => "own-call",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, S, Req, Res, E> Future for ResponseFuture<F, S, Req, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    S: Service<Req, Response = Res, Error = E, Future = F>,
    Res: Clone,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Ready { result } => {
                    return Poll::Ready(
                        result
                            .take()
                            .expect("ResponseFuture polled after completion"),
                    );
                }
                StateProj::Direct { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
                StateProj::Waiting {
                    subscription,
                    response,
                    own_call,
                    observe,
                } => match ready!(subscription.poll_next(cx)) {
                    Next::Started => {}
                    Next::Item(value) => *response = Some(value),
                    Next::Done => {
                        let result = response.take().ok_or_else(|| BoxError::from(NoResponse));
                        this.state.set(State::Ready { result: None });
                        return Poll::Ready(result);
                    }
                    Next::Failed(error) => match own_call.take() {
                        Some((service, request)) => {
                            observe.inner_call();
                            this.state.set(State::OwnCall {
                                service,
                                request: Some(request),
                            });
                        }
                        None => {
                            this.state.set(State::Ready { result: None });
                            return Poll::Ready(Err(error));
                        }
                    },
                },
                StateProj::OwnCall { service, request } => {
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(BoxError::from(NoResponse)));
                    };
                    let future = service.call(request);
                    this.state.set(State::Direct { future });
                }
            }
        }
    }
}
