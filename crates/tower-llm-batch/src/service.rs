//! The [`Batch`] service: the handle callers use to queue requests for batching.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::time::Instant;
use tower_llm_core::{BoxError, RateLimited};
use tower_service::Service;

use crate::adapter::{Pack, Unpack};
use crate::error::BatchClosed;
use crate::future::ResponseFuture;
use crate::layer::{Limits, Weigher};
use crate::observe::{Observe, Rejection};
use crate::stats::{BatchHandle, BatchStats};
use crate::worker::{Message, Worker, WorkerParts};

type Acquire =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send + Sync>>;

pub(crate) struct Shared<Req, A: Pack<Req>, Res> {
    queue: mpsc::UnboundedSender<Message<A::Key, A::Item, Res>>,
    semaphore: Arc<Semaphore>,
    adapter: Arc<A>,
    weigher: Option<Weigher<Req>>,
    observe: Arc<Observe>,
    failure: Arc<OnceLock<Arc<BoxError>>>,
}

/// Collects requests into batches: each batch is one call to the inner service, and each
/// caller gets its own result (see the [crate docs](crate)).
///
/// Made by [`BatchLayer`](crate::BatchLayer). The inner service lives in a batching task
/// spawned when the layer makes its first service; clones, and every later service the same
/// layer value makes, are handles that feed that same task, and the task ends (after sending
/// what is queued) when the last handle is dropped. Because the task owns the inner service,
/// there is no `get_ref`/`into_inner`.
///
/// `poll_ready` waits for room among the `capacity` admitted requests; that is the
/// backpressure. It never fails: requests the batcher cannot take (invalid for the adapter, the
/// batcher stopped) fail from `call` as an immediately ready error.
pub struct Batch<Req, A: Pack<Req>, Res> {
    shared: Arc<Shared<Req, A, Res>>,
    permit: Option<OwnedSemaphorePermit>,
    acquire: Option<Acquire>,
}

impl<Req, A, Res> Batch<Req, A, Res>
where
    A: Pack<Req> + Send + Sync + 'static,
    Res: Send + 'static,
    Req: 'static,
{
    /// Spawns the batching task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime, like `tokio::spawn`.
    pub(crate) fn spawn<S>(
        inner: S,
        adapter: Arc<A>,
        weigher: Option<Weigher<Req>>,
        limits: Limits,
        observe: Arc<Observe>,
    ) -> Self
    where
        A: Unpack<Req, <S as Service<<A as Pack<Req>>::Batch>>::Response, Response = Res>,
        S: Service<<A as Pack<Req>>::Batch> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
    {
        let (queue, receiver) = mpsc::unbounded_channel();
        let semaphore = Arc::new(Semaphore::new(limits.capacity));
        let failure = Arc::new(OnceLock::new());
        let worker = Worker::new(
            inner,
            WorkerParts {
                adapter: Arc::clone(&adapter),
                queue: receiver,
                limits,
                observe: Arc::clone(&observe),
                semaphore: Arc::clone(&semaphore),
                failure: Arc::clone(&failure),
            },
        );
        tokio::spawn(worker.run());
        Batch::from_shared(Arc::new(Shared {
            queue,
            semaphore,
            adapter,
            weigher,
            observe,
            failure,
        }))
    }
}

impl<Req, A: Pack<Req>, Res> Batch<Req, A, Res> {
    /// Another handle on a running batcher.
    pub(crate) fn from_shared(shared: Arc<Shared<Req, A, Res>>) -> Self {
        Batch {
            shared,
            permit: None,
            acquire: None,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared<Req, A, Res>> {
        &self.shared
    }

    /// A snapshot of the counters of the layer value that made this service, the same as
    /// [`BatchLayer::handle`](crate::BatchLayer::handle)`().stats()`.
    pub fn stats(&self) -> BatchStats {
        self.shared.observe.snapshot()
    }

    /// The handle of the layer value that made this service (see [`BatchHandle`]).
    pub fn handle(&self) -> BatchHandle {
        BatchHandle::new(Arc::clone(&self.shared.observe))
    }

    /// The adapter.
    pub fn adapter(&self) -> &A {
        &self.shared.adapter
    }

    /// Whether the batching task has stopped taking requests (its inner service failed).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.queue.is_closed()
    }

    fn closed(&self) -> BoxError {
        Box::new(BatchClosed::new(self.shared.failure.get().cloned()))
    }

    fn reject(&self, reason: Rejection, error: BoxError) -> ResponseFuture<Res> {
        self.shared.observe.rejected(reason);
        ResponseFuture::failed(error)
    }
}

impl<Req, A: Pack<Req>, Res> Clone for Batch<Req, A, Res> {
    fn clone(&self) -> Self {
        Batch::from_shared(Arc::clone(&self.shared))
    }
}

impl<Req, A: Pack<Req>, Res> fmt::Debug for Batch<Req, A, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("stats", &self.stats())
            .field("ready", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<Req, A, Res> Service<Req> for Batch<Req, A, Res>
where
    A: Pack<Req>,
    Res: Send + 'static,
{
    type Response = Res;
    type Error = BoxError;
    type Future = ResponseFuture<Res>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        let acquire = match &mut self.acquire {
            Some(acquire) => acquire,
            None => match Arc::clone(&self.shared.semaphore).try_acquire_owned() {
                Ok(permit) => {
                    self.permit = Some(permit);
                    return Poll::Ready(Ok(()));
                }
                // `call` reports the stopped batcher; an error here would poison a `Buffer`.
                Err(TryAcquireError::Closed) => return Poll::Ready(Ok(())),
                Err(TryAcquireError::NoPermits) => self
                    .acquire
                    .insert(Box::pin(Arc::clone(&self.shared.semaphore).acquire_owned())),
            },
        };
        let acquired = std::task::ready!(acquire.as_mut().poll(cx));
        self.acquire = None;
        self.permit = acquired.ok();
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let permit = match self.permit.take() {
            Some(permit) => permit,
            None => match Arc::clone(&self.shared.semaphore).try_acquire_owned() {
                Ok(permit) => permit,
                Err(TryAcquireError::Closed) => {
                    return self.reject(Rejection::Closed, self.closed());
                }
                Err(TryAcquireError::NoPermits) => {
                    return self.reject(
                        Rejection::Full,
                        Box::new(RateLimited::new(
                            "batch queue full (call poll_ready before call to wait for room)",
                            None,
                        )),
                    );
                }
            },
        };
        let weight = match &self.shared.weigher {
            Some(weigh) => weigh(&request),
            None => 0,
        };
        let (key, item) = match self.shared.adapter.prepare(request) {
            Ok(prepared) => prepared,
            Err(error) => return self.reject(Rejection::Invalid, error),
        };
        let (reply, receiver) = oneshot::channel();
        let message = Message {
            key,
            item,
            weight,
            reply,
            enqueued: Instant::now(),
        };
        if self.shared.queue.send(message).is_err() {
            return self.reject(Rejection::Closed, self.closed());
        }
        self.shared.observe.requested();
        ResponseFuture::waiting(receiver, permit, Arc::clone(&self.shared.failure))
    }
}
