//! [`BatchLayer`] and its builder.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tower_layer::Layer;
use tower_llm_core::{BoxError, RequestCost};
use tower_service::Service;

use crate::adapter::{Pack, PackAdapter, Unpack, VecAdapter};
use crate::embeddings::EmbeddingsAdapter;
use crate::error::ConfigError;
use crate::observe::{DEFAULT_NAME, Observe};
use crate::service::{Batch, Shared};
use crate::stats::BatchHandle;

/// What each caller receives from a batcher over `S`.
type ResponseOf<Req, A, S> =
    <A as Unpack<Req, <S as Service<<A as Pack<Req>>::Batch>>::Response>>::Response;

pub(crate) type Weigher<Req> = Arc<dyn Fn(&Req) -> u64 + Send + Sync>;

/// The limits of one batcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_items: usize,
    pub(crate) max_weight: u64,
    pub(crate) max_wait: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) capacity: usize,
}

const DEFAULT_MAX_ITEMS: usize = 16;
const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(10);
const DEFAULT_MAX_IN_FLIGHT: usize = 4;
const MAX_CAPACITY: usize = usize::MAX >> 3;

/// What one layer value owns, shared by its clones: the counters its handle reads and the
/// batchers its services feed.
struct LayerState {
    /// The funnel every event goes through: stats, `tracing`, `metrics`.
    observe: Arc<Observe>,
    /// The running batchers, one per inner response type (almost always exactly one). Weak:
    /// a batcher ends when the last service feeding it is dropped, as with `Buffer`, even
    /// while the layer value lives on.
    batchers: Mutex<Vec<Weak<dyn Any + Send + Sync>>>,
}

/// Applies [`Batch`] to a service: requests are collected into batches and each batch is one
/// call to the inner service.
///
/// Built with [`BatchLayer::builder`] (or the shortcuts [`embeddings`](Self::embeddings) and
/// [`packed`](Self::packed)).
///
/// # One layer value, one batcher
///
/// Every service made by one layer value (and by its clones) feeds the same batching task and
/// the same counters, whichever stack it lands in: requests from a whole-answer route and a
/// streaming route built with one `BatchLayer` share batches, `max_in_flight` and `capacity`.
/// The batching task owns one inner service, so the **first** service handed to
/// [`layer`](Layer::layer) drives it; an inner service handed to `layer` while that task runs
/// is dropped unused (a clone of the same client is the usual case, where that is what you
/// want). For a batcher of its own, over its own inner service, build another layer value.
///
/// Two exceptions start a new task with the inner service given: the previous task has ended
/// (every service feeding it was dropped, or its inner service failed `poll_ready`), or the
/// inner service answers a different type, whose answers could not be split among the first
/// task's callers. All of a layer value's tasks count into the one [`handle`](Self::handle).
///
/// # Panics
///
/// [`layer`](Layer::layer) panics outside a tokio runtime, or in one without the time driver,
/// like `tokio::spawn` and `tokio::time::sleep`, when it has to start a batching task.
pub struct BatchLayer<Req, A = VecAdapter> {
    limits: Limits,
    weigher: Option<Weigher<Req>>,
    adapter: Arc<A>,
    state: Arc<LayerState>,
}

impl<Req, A> Clone for BatchLayer<Req, A> {
    fn clone(&self) -> Self {
        BatchLayer {
            limits: self.limits,
            weigher: self.weigher.clone(),
            adapter: Arc::clone(&self.adapter),
            state: Arc::clone(&self.state),
        }
    }
}

impl<Req, A: fmt::Debug> fmt::Debug for BatchLayer<Req, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchLayer")
            .field("max_items", &self.limits.max_items)
            .field(
                "max_weight",
                &self.weigher.as_ref().map(|_| self.limits.max_weight),
            )
            .field("max_wait", &self.limits.max_wait)
            .field("max_in_flight", &self.limits.max_in_flight)
            .field("capacity", &self.limits.capacity)
            .field("adapter", &self.adapter)
            .finish()
    }
}

impl<Req> BatchLayer<Req, VecAdapter> {
    /// A builder, with the [`VecAdapter`] until [`adapter`](BatchBuilder::adapter) says
    /// otherwise.
    pub fn builder() -> BatchBuilder<Req, VecAdapter> {
        BatchBuilder {
            max_items: DEFAULT_MAX_ITEMS,
            max_weight: None,
            max_wait: DEFAULT_MAX_WAIT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            capacity: None,
            adapter: VecAdapter,
            name: Cow::Borrowed(DEFAULT_NAME),
            _request: PhantomData,
        }
    }
}

impl BatchLayer<http::Request<bytes::Bytes>, EmbeddingsAdapter> {
    /// A builder for OpenAI-style embeddings requests ([`EmbeddingsAdapter`]).
    pub fn embeddings() -> BatchBuilder<http::Request<bytes::Bytes>, EmbeddingsAdapter> {
        BatchLayer::builder().adapter(EmbeddingsAdapter::new())
    }
}

impl<Req, P, U> BatchLayer<Req, PackAdapter<P, U>> {
    /// A builder for a [`PackAdapter`] made of `pack` and `unpack`.
    pub fn packed(pack: P, unpack: U) -> BatchBuilder<Req, PackAdapter<P, U>> {
        BatchLayer::builder().adapter(PackAdapter::new(pack, unpack))
    }
}

impl<Req, A> BatchLayer<Req, A> {
    /// The adapter.
    pub fn adapter(&self) -> &A {
        &self.adapter
    }

    /// The handle on this layer value's batcher: its [`stats`](BatchHandle::stats) cover every
    /// service the layer (or a clone of it) makes. Works before the stack is built and after it
    /// is boxed.
    pub fn handle(&self) -> BatchHandle {
        BatchHandle::new(Arc::clone(&self.state.observe))
    }
}

impl<S, Req, A> Layer<S> for BatchLayer<Req, A>
where
    A: Pack<Req>
        + Unpack<Req, <S as Service<<A as Pack<Req>>::Batch>>::Response>
        + Send
        + Sync
        + 'static,
    S: Service<<A as Pack<Req>>::Batch> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    Req: 'static,
{
    type Service = Batch<Req, A, ResponseOf<Req, A, S>>;

    fn layer(&self, inner: S) -> Self::Service {
        self.state.observe.register();
        let mut batchers = self
            .state
            .batchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let running = batchers.iter().find_map(|batcher| {
            let shared = batcher
                .upgrade()?
                .downcast::<Shared<Req, A, ResponseOf<Req, A, S>>>()
                .ok()?;
            let batch = Batch::from_shared(shared);
            (!batch.is_closed()).then_some(batch)
        });
        if let Some(batch) = running {
            drop(batchers);
            // `inner` is dropped here, outside the lock: the running task keeps its own.
            return batch;
        }
        let batch = Batch::spawn(
            inner,
            Arc::clone(&self.adapter),
            self.weigher.clone(),
            self.limits,
            Arc::clone(&self.state.observe),
        );
        // The entry this one replaces (ended or closed) goes, as do other ended ones.
        batchers.retain(|batcher| {
            batcher
                .upgrade()
                .is_some_and(|b| !b.is::<Shared<Req, A, ResponseOf<Req, A, S>>>())
        });
        let shared: Arc<dyn Any + Send + Sync> = Arc::clone(batch.shared()) as _;
        batchers.push(Arc::downgrade(&shared));
        batch
    }
}

/// Configures a [`BatchLayer`]; [`build`](Self::build) checks the values.
pub struct BatchBuilder<Req, A> {
    max_items: usize,
    max_weight: Option<(u64, Weigher<Req>)>,
    max_wait: Duration,
    max_in_flight: usize,
    capacity: Option<usize>,
    adapter: A,
    name: Cow<'static, str>,
    _request: PhantomData<fn(Req)>,
}

impl<Req, A: fmt::Debug> fmt::Debug for BatchBuilder<Req, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchBuilder")
            .field("max_items", &self.max_items)
            .field("max_weight", &self.max_weight.as_ref().map(|(w, _)| *w))
            .field("max_wait", &self.max_wait)
            .field("max_in_flight", &self.max_in_flight)
            .field("capacity", &self.capacity)
            .field("adapter", &self.adapter)
            .field("name", &self.name)
            .finish()
    }
}

impl<Req, A> BatchBuilder<Req, A> {
    /// The batcher's name (default `"batch"`): the `name` label of its metrics and the
    /// `name` field of its events, to tell two batchers in one process apart.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The most requests in one batch (default 16). A batch that reaches it is sent at once.
    pub fn max_items(mut self, max_items: usize) -> Self {
        self.max_items = max_items;
        self
    }

    /// The most total weight in one batch, each request weighing `weigh(&request)`, e.g.
    /// estimated tokens: `|r: &http::Request<Bytes>| r.estimated_tokens()` with
    /// [`RequestCost`](tower_llm_core::RequestCost), or
    /// [`EmbeddingsAdapter::input_tokens`] for embeddings. A request that would take a batch
    /// past the limit starts the next batch; a request heavier than the limit on its own is
    /// sent alone. Unlimited by default.
    pub fn max_weight<F>(mut self, max_weight: u64, weigh: F) -> Self
    where
        F: Fn(&Req) -> u64 + Send + Sync + 'static,
    {
        self.max_weight = Some((max_weight, Arc::new(weigh)));
        self
    }

    /// [`max_weight`](Self::max_weight) in estimated tokens, as core's
    /// [`RequestCost`](tower_llm_core::RequestCost) estimates them (prompt plus output
    /// budget), e.g. to keep a packed chat request inside a context window or a
    /// tokens-per-request limit.
    pub fn max_estimated_tokens(self, max_tokens: u64) -> Self
    where
        Req: RequestCost,
    {
        self.max_weight(max_tokens, |request: &Req| request.estimated_tokens())
    }

    /// The longest the first request of a batch waits for others before the batch is sent
    /// (default 10 ms). Zero sends whatever arrived together.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The most batches sent to the inner service and not yet answered (default 4). While at
    /// the limit, full batches wait and requests keep queueing up to `capacity`.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// The most requests admitted at once, queued or in a batch in flight (default
    /// `max_items * (max_in_flight + 1)`). Beyond it, `poll_ready` waits for a request to
    /// finish: this is the backpressure callers feel.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Packs and unpacks batches with `adapter`.
    pub fn adapter<A2>(self, adapter: A2) -> BatchBuilder<Req, A2> {
        BatchBuilder {
            max_items: self.max_items,
            max_weight: self.max_weight,
            max_wait: self.max_wait,
            max_in_flight: self.max_in_flight,
            capacity: self.capacity,
            adapter,
            name: self.name,
            _request: PhantomData,
        }
    }

    /// The layer, or an error naming the knob whose value cannot work.
    pub fn build(self) -> Result<BatchLayer<Req, A>, ConfigError> {
        if self.max_items == 0 {
            return Err(ConfigError::new("batch", "max_items", "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::new(
                "batch",
                "max_in_flight",
                "must be at least 1, or no batch could ever be sent",
            ));
        }
        if let Some((0, _)) = self.max_weight {
            return Err(ConfigError::new(
                "batch",
                "max_weight",
                "must be at least 1",
            ));
        }
        let capacity = match self.capacity {
            Some(capacity) if capacity < self.max_items => {
                return Err(ConfigError::new(
                    "batch",
                    "capacity",
                    "must be at least max_items, or no batch could ever fill",
                ));
            }
            // tokio's semaphore holds at most `MAX_PERMITS` (usize::MAX >> 3).
            Some(capacity) if capacity > MAX_CAPACITY => {
                return Err(ConfigError::new(
                    "batch",
                    "capacity",
                    "is larger than tokio allows",
                ));
            }
            Some(capacity) => capacity,
            None => self
                .max_items
                .saturating_mul(self.max_in_flight.saturating_add(1))
                .min(MAX_CAPACITY),
        };
        let (max_weight, weigher) = match self.max_weight {
            Some((limit, weigh)) => (limit, Some(weigh)),
            None => (u64::MAX, None),
        };
        Ok(BatchLayer {
            limits: Limits {
                max_items: self.max_items,
                max_weight,
                max_wait: self.max_wait,
                max_in_flight: self.max_in_flight,
                capacity,
            },
            weigher,
            adapter: Arc::new(self.adapter),
            state: Arc::new(LayerState {
                observe: Arc::new(Observe::new(self.name)),
                batchers: Mutex::default(),
            }),
        })
    }
}
