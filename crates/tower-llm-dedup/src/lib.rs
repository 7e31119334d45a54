//! One upstream call for identical requests, and a response cache, as tower middleware.
//!
//! [`DedupLayer`] wraps a service (an LLM provider, an HTTP client) so that duplicate work
//! disappears without a new way to get a wrong or stale answer:
//!
//! - **In-flight coalescing.** Identical concurrent requests make one inner call; the others
//!   wait for it and receive a clone of its result. "Identical" is core's keyed
//!   [`Fingerprint`](tower_llm_core::Fingerprint) (for an `http::Request`: method, URI,
//!   canonical JSON body and the credential headers, so two tenants never share anything), or
//!   your own key function ([`DedupBuilder::key_fn`]).
//! - **Cancellation.** Nothing is spawned: whichever waiting caller is polled drives the shared
//!   call. Dropping the first caller does not hurt the others; the call is dropped (cancelled)
//!   only when no caller is left. If the inner future panics or fails, every waiter gets an
//!   answer: the same error as a [`SharedError`] (its `source()` is the original, so core's
//!   classifier still sees a 429 as rate limited), or, with [`OnError::OwnCall`], its own call.
//! - **Cache.** Successful answers (as core's [`Classify`](tower_llm_core::Classify) says: an
//!   `http::Response` with a 5xx is not one) go into a bounded moka cache: by entries or by
//!   weight, with a TTL, an optional idle time and a per-answer TTL. Errors are never cached.
//!   TTLs follow tokio's clock.
//! - **What is stored.** By default only answers to deterministic requests (core's
//!   [`Deterministic`](tower_llm_core::Deterministic): a chat request with `temperature: 0` or a
//!   `seed`; sampling requests are coalesced in flight but not kept). Opt in to more with
//!   [`DedupBuilder::cache_all`] or a predicate ([`DedupBuilder::cache_rule`]).
//! - **Bypass.** A request carrying the [`Bypass`] extension, or for http the header
//!   `x-tower-llm-cache: bypass` ([`BYPASS_HEADER`]), goes straight to the inner service.
//! - **Streams.** [`StreamDedupLayer`] does the same for responses that are a stream of
//!   chunks: a caller that joins late gets every chunk produced so far, then the rest; a cached
//!   stream is replayed chunk by chunk; an error mid-stream reaches every subscriber and
//!   nothing is cached.
//! - **Redis** (feature `redis`): a cache shared by several instances behind the in-memory one,
//!   with a pluggable codec and a short timeout; Redis slow or down means the request goes on
//!   to the inner service and `tower_llm_dedup_remote_errors_total` is counted.
//!
//! Responses must be `Clone` (every waiter gets a clone; wrap a large one in an `Arc`). The
//! inner service must be `Clone + Send + 'static` with a `Send + 'static` future.
//!
//! # Handle
//!
//! [`DedupLayer::handle`] (and [`StreamDedupLayer::handle`]) returns a [`DedupHandle`], taken
//! before the stack is built and usable after it is boxed: [`stats`](DedupHandle::stats) is
//! a [`DedupStats`] snapshot, [`clear`](DedupHandle::clear) and
//! [`invalidate`](DedupHandle::invalidate) drop cached answers. Every service made by one
//! layer value, in any number of stacks, shares that value's cache, calls in flight and
//! counters; another layer value has its own.
//!
//! # Observability
//!
//! One funnel (features `tracing` and `metrics`, both on by default; with one off its code is
//! compiled out) reports every event, labelled with the builder's
//! [`name`](DedupBuilder::name) (default `"dedup"`). No prompt, answer or key ever
//! appears in a field or a label.
//!
//! Events (target `tower_llm_dedup::observe`, every one with the field `name`):
//!
//! | level | message | fields |
//! |---|---|---|
//! | trace | `dedup: coalesced with a call in flight` | |
//! | trace | `dedup: cache hit` | `source` = `memory` / `redis` |
//! | warn | `dedup: Redis cache unavailable; requests go on without it` | `op` = `get` / `put`, `reason` = `timeout` / `error` / `codec` / `no_runtime`, `suppressed` (failures not reported since the last warning) |
//! | info | `dedup: cache cleared` | `entries` (answers dropped) |
//!
//! The Redis warning comes at most once per the backend's cool-down; calls skipped during a
//! cool-down are counted, not logged.
//!
//! Counters (unit: count, label `name`), with the same numbers readable from
//! [`DedupStats`]: `tower_llm_dedup_requests_total`, `tower_llm_dedup_cache_hits_total`,
//! `tower_llm_dedup_coalesced_total`, `tower_llm_dedup_misses_total`,
//! `tower_llm_dedup_inner_calls_total`, `tower_llm_dedup_evictions_total`,
//! `tower_llm_dedup_bypassed_total`, `tower_llm_dedup_remote_hits_total`,
//! `tower_llm_dedup_remote_errors_total`. They are registered and described when the layer is
//! built: install the `metrics` recorder first.
//!
//! # Example
//!
//! The layer with its defaults over a `service_fn` returning `String`; the handle is taken
//! from the layer and read after the stack is boxed.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use tower::util::BoxCloneService;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_dedup::DedupLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counted = calls.clone();
//! let layer = DedupLayer::new(Duration::from_secs(60));
//! let handle = layer.handle();
//! let mut service: BoxCloneService<String, String, BoxError> = BoxCloneService::new(
//!     ServiceBuilder::new()
//!         .layer(layer)
//!         .service(service_fn(move |prompt: String| {
//!             counted.fetch_add(1, Ordering::SeqCst);
//!             async move { Ok::<_, BoxError>(format!("answer to {prompt}")) }
//!         })),
//! );
//!
//! // Two identical concurrent requests: one inner call.
//! let a = service.ready().await?.call("2 + 2?".to_string());
//! let b = service.ready().await?.call("2 + 2?".to_string());
//! let (a, b) = tokio::join!(a, b);
//! assert_eq!(a?, b?);
//! // Later, the cache answers.
//! let c = service.ready().await?.call("2 + 2?".to_string()).await?;
//! assert_eq!(c, "answer to 2 + 2?");
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! let stats = handle.stats();
//! assert_eq!((stats.requests, stats.hits, stats.coalesced, stats.misses), (3, 1, 1, 1));
//!
//! // Clearing the cache: the next identical request is a miss.
//! handle.clear();
//! service.ready().await?.call("2 + 2?".to_string()).await?;
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod cache;
mod config;
mod error;
mod flight;
mod future;
mod handle;
mod layer;
mod observe;
mod policy;
#[cfg(feature = "redis")]
pub mod redis;
mod remote;
mod service;
mod stats;
pub mod stream;

pub use config::{DEFAULT_MAX_ENTRIES, DEFAULT_TTL};
pub use error::{ConfigError, InnerPanicked, SharedError};
pub use future::ResponseFuture;
pub use handle::DedupHandle;
pub use layer::{DedupBuilder, DedupLayer};
pub use policy::{
    BYPASS_HEADER, BYPASS_VALUE, Bypass, CacheAll, CacheControl, CacheRule, DeterministicOnly,
    FingerprintKeys, OnError, RequestKeys,
};
pub use service::Dedup;
pub use stats::{
    DedupStats, METRIC_BYPASSED, METRIC_COALESCED, METRIC_EVICTIONS, METRIC_HITS,
    METRIC_INNER_CALLS, METRIC_MISSES, METRIC_REMOTE_ERRORS, METRIC_REMOTE_HITS, METRIC_REQUESTS,
};
pub use stream::{ReplayStream, StreamDedup, StreamDedupBuilder, StreamDedupLayer};
