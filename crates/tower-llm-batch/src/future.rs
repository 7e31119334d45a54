//! [`ResponseFuture`]: one caller's share of a batch.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tower_llm_core::BoxError;

use crate::error::BatchClosed;

pin_project! {
    /// The response future of [`Batch`](crate::Batch): resolves to this caller's own result
    /// once its batch has been answered.
    ///
    /// Dropping it gives back its place in the queue at once and, if its batch has not been
    /// sent yet, its request is left out of that batch.
    pub struct ResponseFuture<Res> {
        #[pin]
        state: State<Res>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Res> {
        // Refused before it was queued.
        Failed {
            error: Option<BoxError>,
        },
        // Queued or in a batch in flight.
        Waiting {
            receiver: oneshot::Receiver<Result<Res, BoxError>>,
            permit: Option<OwnedSemaphorePermit>,
            failure: Arc<OnceLock<Arc<BoxError>>>,
        },
    }
}

impl<Res> ResponseFuture<Res> {
    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(crate) fn waiting(
        receiver: oneshot::Receiver<Result<Res, BoxError>>,
        permit: OwnedSemaphorePermit,
        failure: Arc<OnceLock<Arc<BoxError>>>,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                receiver,
                permit: Some(permit),
                failure,
            },
        }
    }
}

impl<Res> Future for ResponseFuture<Res> {
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| Box::new(BatchClosed::new(None))))),
            StateProj::Waiting {
                receiver,
                permit,
                failure,
            } => {
                let received = ready!(Pin::new(receiver).poll(cx));
                // The request is finished either way: free its place for the next caller.
                permit.take();
                Poll::Ready(match received {
                    Ok(result) => result,
                    // The task dropped the request unanswered: it stopped or panicked.
                    Err(_) => Err(Box::new(BatchClosed::new(failure.get().cloned()))),
                })
            }
        }
    }
}

impl<Res> fmt::Debug for ResponseFuture<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Failed { .. } => "failed",
            State::Waiting { .. } => "waiting",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
