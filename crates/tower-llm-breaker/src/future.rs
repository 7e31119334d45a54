//! The response future shared by the single and the per-key breaker.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_llm_core::{BoxError, CircuitOpen, Classify, EndSignal};

use crate::breaker::Permit;

pin_project! {
    /// The future of a [`CircuitBreaker`](crate::CircuitBreaker) or
    /// [`KeyedCircuitBreaker`](crate::KeyedCircuitBreaker) call.
    ///
    /// When the breaker refused the call it is ready at once with a boxed
    /// [`CircuitOpen`]. Otherwise it drives the inner future and reports the classified
    /// outcome to the breaker (for a response that finishes later, a stream, the outcome of
    /// its end: see [`EndSignal`](tower_llm_core::EndSignal)); dropping it before then reports
    /// nothing, and a probe's place is given back.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            future: F,
            permit: Option<Permit>,
            classifier: C,
        },
        Rejected {
            error: CircuitOpen,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, permit: Permit, classifier: C) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                future,
                permit: Some(permit),
                classifier,
            },
        }
    }

    pub(crate) fn rejected(error: CircuitOpen) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { error },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                permit,
                classifier,
            } => {
                let mut result = ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    match &mut result {
                        Ok(response) => match classifier.end_signal(response) {
                            Some(signal) => settle_at_end(permit, signal),
                            None => {
                                let outcome = classifier.classify(Ok(&*response));
                                let verdict = permit.config().verdict(&outcome);
                                permit.settle(verdict, Instant::now);
                            }
                        },
                        Err(error) => {
                            let verdict = permit.config().verdict(&classifier.classify(Err(error)));
                            permit.settle(verdict, Instant::now);
                        }
                    }
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => Poll::Ready(Err(Box::new(error.clone()))),
        }
    }
}

/// A response that finishes later (a stream) is judged by its end, not its head: the
/// terminal event is a success; a cut, an error event or a stall is whatever failure it was;
/// a stream the caller dropped is neither, and a probe's place is given back. A half-open
/// probe that streams holds its probe slot until then. Its time, for a slow-call threshold,
/// is its time to the head. Out of line: whole answers never come
/// here.
#[inline(never)]
fn settle_at_end(mut permit: Permit, signal: &mut EndSignal) {
    // A stream is slow when its head is: a long answer that flows is not a slow upstream,
    // so a slow-call threshold measures to the head (a healthy two-minute generation would
    // otherwise count as slow, and trip the breaker on healthy traffic).
    permit.time_until_now();
    signal.on_end(move |end| match end.outcome() {
        Some(outcome) => {
            let verdict = permit.config().verdict(&outcome);
            permit.settle(verdict, Instant::now);
        }
        // Dropping the permit unsettled gives a probe's place back and records nothing.
        None => drop(permit),
    });
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.kind {
            Kind::Called {
                permit: Some(_), ..
            } => "called",
            Kind::Called { permit: None, .. } => "done",
            Kind::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
