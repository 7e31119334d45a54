//! Many small LLM requests, one upstream call.
//!
//! [`BatchLayer`] collects requests until a batch holds `max_items`, reaches `max_weight`
//! (e.g. estimated tokens) or its first request has waited `max_wait`, makes one call to the
//! inner service for the whole batch, and hands each caller its own result. Against a
//! per-request quota (requests per minute) this turns into throughput: twelve embeddings in one
//! call cost one request, not twelve.
//!
//! # Adapters
//!
//! How requests are packed and a response split is an adapter's job ([`Pack`] + [`Unpack`]):
//!
//! - [`VecAdapter`] (the default): the inner service is a `Service<Vec<Req>, Response =
//!   Vec<Res>>` answering one result per request, in order.
//! - [`EmbeddingsAdapter`] ([`BatchLayer::embeddings`]): OpenAI-style embeddings over
//!   `http::Request<Bytes>`; inputs are concatenated into one `input` array and the answer's
//!   `data` split back by `index`. Only requests to the same endpoint with the same headers
//!   (API key) and parameters (model) share a batch.
//! - [`PackAdapter`] ([`BatchLayer::packed`]): your `pack` (many requests to one, e.g. many
//!   prompts in one chat completion) and `unpack` (one response to one result per request).
//!   An item `unpack` cannot answer fails alone; the rest of its batch succeeds.
//!
//! # Behaviour
//!
//! - **A batching task per layer value.** The first service a [`BatchLayer`] value makes
//!   spawns a task on the current tokio runtime (so build it inside one, with the time driver
//!   enabled; outside, making it panics like `tokio::spawn`), as `tower::buffer::Buffer`
//!   does. The task is what sends a batch when `max_wait` runs out while every caller is just
//!   waiting, and it owns the inner service, so batches are sent in order and `poll_ready` is
//!   called on it only when a batch is ready to go. Clones of the service, and every other
//!   service made by the same layer value (in another stack too), feed the same task: the
//!   first inner service drives it and later ones are dropped unused (see [`BatchLayer`]).
//!   Another layer value is another batcher. When the last service feeding it is dropped,
//!   the task sends what is queued, waits for the batches in flight and ends.
//! - **Results in order, never crossed.** Each request carries its own reply channel, and the
//!   adapter splits the response by position (`VecAdapter`, `PackAdapter`) or index
//!   (`EmbeddingsAdapter`). A `VecAdapter` response of the wrong length fails the whole batch
//!   ([`LengthMismatch`]) rather than guess.
//! - **Failures.** An inner error reaches every caller of its batch as a [`BatchFailed`] that
//!   shares the one original error and keeps it as its `source`, so
//!   [`classify_dyn_error`](tower_llm_core::classify_dyn_error) and
//!   [`DefaultClassifier`](tower_llm_core::DefaultClassifier) classify it as the original: a
//!   retry or breaker layer outside sees "overloaded", not "batch failed". If the inner
//!   service fails `poll_ready`, the batcher stops: queued and later requests fail with
//!   [`BatchClosed`], carrying that error. A panic in the inner service's future or `call`,
//!   or in the adapter's `pack`/`unpack`, fails only that batch (each caller gets a
//!   [`BatchFailed`] naming the panic); the batcher goes on.
//! - **Backpressure.** At most `max_in_flight` batches are sent and unanswered at a time;
//!   further batches wait. At most `capacity` requests are admitted at once (queued or in
//!   flight); beyond it `poll_ready` waits, as with `Buffer`. `call` without a successful
//!   `poll_ready` while full fails at once with a
//!   [`RateLimited`](tower_llm_core::RateLimited) error.
//! - **Cancellation.** Dropping a response future frees its place at once. If its batch has
//!   not been sent yet, its request is left out of it (a batch whose callers all left is not
//!   sent at all). A sent batch runs on while at least one of its callers waits (the others
//!   miss their answers); once every caller has gone, the inner call is dropped, which
//!   cancels it, and its `max_in_flight` slot goes to the next batch
//!   ([`BatchStats::abandoned_batches`]).
//! - **Weight.** With [`BatchBuilder::max_weight`] (or [`BatchBuilder::max_estimated_tokens`]
//!   for requests with a core [`RequestCost`](tower_llm_core::RequestCost)), a request that
//!   would take a batch past the limit seals the batch and starts the next one; a request
//!   heavier than the limit alone is sent alone.
//!
//! # Stats
//!
//! [`BatchLayer::handle`] returns a [`BatchHandle`] whose [`stats`](BatchHandle::stats) is a
//! snapshot ([`BatchStats`]) of the counters of every service the layer value made; take it before
//! building the stack, it keeps working after the stack is boxed. [`Batch::stats`] reads the
//! same counters.
//!
//! # Observability
//!
//! One funnel per layer value feeds the stats, [`tracing`](https://docs.rs/tracing) (feature
//! `tracing`) and [`metrics`](https://docs.rs/metrics) (feature `metrics`); both features are
//! on by default, and without them the funnel compiles to the stats counters alone. Every
//! event has a `name` field and every series a `name` label: the builder's
//! [`name`](BatchBuilder::name), `"batch"` by default. Requests, answers and error messages
//! never appear: only sizes, reasons and the failure's `kind` (core's
//! [`FailureKind::as_str`](tower_llm_core::FailureKind::as_str), or `panic`).
//!
//! Events (target `tower_llm_batch::observe`):
//!
//! | message | level | fields |
//! |---|---|---|
//! | `batch flushed` | debug | `name`, `reason` ([`FlushReason::as_str`]), `size`, `weight`, `oldest_wait_seconds` |
//! | `abandoned batch cancelled` | debug | `name`, `size` (callers that left) |
//! | `batch failed` | warn | `name`, `size`, `kind`, `panicked_in` (for a panic: `pack or call`, `the inner future`, `unpack`) |
//! | `request rejected` | debug | `name`, `reason` = `full` / `closed` / `invalid` |
//! | `batcher stopped` | warn | `name`, `dropped` (queued requests failed), `kind` (the inner service failed `poll_ready`) |
//!
//! Metrics, each with the label `name`, described once per process with their unit; the
//! handles are made when the layer is first applied, with the recorder installed then:
//!
//! | name | kind | unit | other labels | meaning |
//! |---|---|---|---|---|
//! | `tower_llm_batch_size` | histogram | count | | requests per sent batch |
//! | `tower_llm_batch_wait_seconds` | histogram | seconds | | per request: time from `call` to its batch being sent |
//! | `tower_llm_batch_batches_total` | counter | count | `reason` = `full` / `weight` / `wait` / `shutdown` | batches sealed, by why |
//! | `tower_llm_batch_requests_total` | counter | count | | requests queued |
//! | `tower_llm_batch_rejected_total` | counter | count | `reason` = `full` / `closed` / `invalid` | requests refused before queueing |
//! | `tower_llm_batch_cancelled_total` | counter | count | | requests left out because their caller left |
//! | `tower_llm_batch_failed_batches_total` | counter | count | | batches the inner service failed |
//! | `tower_llm_batch_abandoned_batches_total` | counter | count | | sent batches cancelled because all their callers left |
//! | `tower_llm_batch_in_flight_batches` | gauge | count | | batches sent and unanswered |
//! | `tower_llm_batch_waiting_requests` | gauge | count | | requests queued, not yet sent |
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_batch::BatchLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // An upstream that takes many prompts at once.
//! let upstream = service_fn(|prompts: Vec<String>| async move {
//!     Ok::<_, BoxError>(prompts.into_iter().map(|p| p.to_uppercase()).collect::<Vec<_>>())
//! });
//! let batch = BatchLayer::builder()
//!     .max_items(8)
//!     .max_wait(Duration::from_millis(5))
//!     .build()?;
//! let handle = batch.handle();
//! let service = ServiceBuilder::new().layer(batch).service(upstream);
//!
//! let calls = ["one", "three", "seven"].map(|prompt| {
//!     let mut service = service.clone();
//!     async move { service.ready().await?.call(prompt.to_string()).await }
//! });
//! let answers = futures_util::future::try_join_all(calls).await?;
//! assert_eq!(answers, ["ONE", "THREE", "SEVEN"]);
//! assert_eq!(handle.stats().batches, 1);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod adapter;
mod embeddings;
mod error;
mod future;
mod layer;
mod observe;
mod service;
mod stats;
mod worker;

pub use adapter::{Pack, PackAdapter, Unpack, VecAdapter};
pub use embeddings::{EmbeddingsAdapter, EmbeddingsItem, EmbeddingsKey, EmbeddingsSplit};
pub use error::{BatchClosed, BatchFailed, ConfigError, ItemMissing, LengthMismatch};
pub use future::ResponseFuture;
pub use layer::{BatchBuilder, BatchLayer};
pub use service::Batch;
#[allow(deprecated)]
pub use stats::Stats;
pub use stats::{BatchHandle, BatchStats, FlushReason};
