//! Retries for LLM calls that honour the server and cannot become a storm.
//!
//! [`RetryLayer`] retries a failed call with backoff and jitter, waits as long as the server
//! asked when it said so, stops at a deadline, and spends retries from a budget shared by all
//! its clones, so that an outage does not multiply the load on the upstream.
//!
//! It is built on [`tower::retry`]: the service and its future are tower's
//! [`Retry`](tower::retry::Retry) (which polls the inner service's readiness again before
//! every retry), driven by this crate's [`RetryPolicy`]. What tower lacks is written here: the
//! classification through core, backoff shapes and jitter that yield a
//! [`Duration`](std::time::Duration) (so the server's hint and the deadline can be weighed
//! against them), and a budget that is exact and cheap on the success path (see
//! [`RetryBudget`] for why tower's `TpsBudget` was not reused).
//!
//! # What is retried
//!
//! Each result is classified by the layer's classifier (core's [`DefaultClassifier`] unless
//! told otherwise). A failure is retried when [`FailureKind::is_retryable`] says so: rate
//! limited (429), overloaded (503, 529), timeout (408, 504, a client timeout), transport
//! (refused, reset) and other 5xx, and an open circuit that carries a hint (core's
//! [`CircuitOpen`](tower_llm_core::CircuitOpen) always does). Never retried: 400, 401, 403,
//! 404, 422, context length exceeded, content filtered, an exhausted quota
//! ([`FailureKind::QuotaExhausted`]: OpenAI's `insufficient_quota`, Gemini's per-day quota,
//! wherever the provider or classifier says so), cancellation and unknown failures.
//!
//! Provider services report an exhausted quota as such. Core reads a raw `http::Response`
//! from its status and headers only, where such a 429 looks like any other; a stack built
//! directly on an HTTP client should use [`QuotaAwareClassifier`], which also reads a failed
//! response's JSON error body (any provider's dialect, through core's `read_error_body`).
//!
//! # How long it waits
//!
//! Before retry `n`, the layer computes the [`Backoff`] shape's delay (fixed, linear or
//! exponential), applies the [`Jitter`] (none, full, equal or decorrelated) and caps it at
//! `max_delay`. If the **latest** failed attempt carried a retry hint (`retry-after`,
//! `retry-after-ms`, a breaker's time to its next probe), the longer of the hint and the
//! backoff wins. Then, at once and without sleeping, the layer gives up with that attempt's
//! result when:
//!
//! - the call has made `max_attempts` attempts;
//! - the hint is longer than `max_retry_after`;
//! - the wait would end at or past the `deadline` (measured from the start of the call);
//! - the budget has no retry left.
//!
//! The deadline decides whether to wait and retry; it does not cut an attempt in flight. For
//! a per-attempt limit put a `tower::timeout::TimeoutLayer` inside the retry layer (its
//! `Elapsed` is classified as a retryable timeout); for a hard limit on the whole call, put one
//! outside.
//!
//! # The budget
//!
//! Every call earns `ratio` of a retry and every retry spends one, over a sliding window,
//! with a floor of `min_per_second` retries a second always available. In a total outage the
//! upstream sees at most `(1 + ratio) × offered calls + floor` per window, instead of
//! `max_attempts ×` offered calls. The budget is shared by every service the layer builds and
//! by clones of the layer.
//!
//! # Attempts, hook, statistics, metrics
//!
//! - Every `http::Response` that took more than one attempt (success or last failure)
//!   carries an [`Attempts`] extension; [`Attempts::of`] counts a response without one as a
//!   single attempt ([`AttemptsExtension::always`] tags every response, at the price of an
//!   allocation per call). Other response types choose a [`RecordAttempts`] with
//!   [`RetryLayerBuilder::record_attempts`] ([`StatsOnly`] or a closure). Errors are returned
//!   unchanged, so layers further out still classify them.
//! - [`RetryLayerBuilder::on_retry`] sees every decision taken after a failed attempt
//!   ([`RetryEvent`]).
//! - [`RetryLayer::stats`] counts requests, retries, recoveries and give-ups by reason.
//! - [`metrics`](https://docs.rs/metrics) (0.24): [`METRIC_ATTEMPTS`]
//!   (`tower_llm_retry_attempts_total`), [`METRIC_RETRIES`]
//!   (`tower_llm_retry_retries_total{kind}`), [`METRIC_GIVE_UPS`]
//!   (`tower_llm_retry_give_ups_total{reason,kind}`) and [`METRIC_DELAY`]
//!   (`tower_llm_retry_delay_seconds`).
//!
//! # Requests, readiness, streams, cancellation
//!
//! The request must be `Clone`: each retry sends a clone of the original. Before each retry,
//! after the wait, the inner service's `poll_ready` is called again. A streaming provider's
//! call future resolves when the response headers arrive, before the first chunk; the layer
//! retries failures of that future only, and never touches a stream once it has been handed
//! to the caller, so a stream is retried only before its first chunk. Dropping the response
//! future drops the attempt in flight or the wait; nothing else is held.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//!
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_retry::{Attempts, Backoff, Jitter, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! # tokio::time::pause();
//! let retry = RetryLayer::builder()
//!     .max_attempts(3)
//!     .backoff(Backoff::exponential(Duration::from_millis(100)))
//!     .jitter(Jitter::Equal)
//!     .deadline(Duration::from_secs(30))
//!     .build()?;
//!
//! // The upstream is overloaded once, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let upstream = service_fn({
//!     let calls = calls.clone();
//!     move |_prompt: String| {
//!         let status = if calls.fetch_add(1, Ordering::SeqCst) == 0 { 529 } else { 200 };
//!         async move { Ok::<_, BoxError>(http::Response::builder().status(status).body(())?) }
//!     }
//! });
//! let mut service = ServiceBuilder::new().layer(retry.clone()).service(upstream);
//!
//! let response = service.ready().await?.call("hello".to_string()).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts::new(2)));
//! assert_eq!(retry.stats().retries, 1);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod backoff;
mod budget;
mod classify;
mod layer;
mod policy;
mod stats;

pub use backoff::{Backoff, Jitter};
pub use budget::RetryBudget;
pub use classify::QuotaAwareClassifier;
pub use layer::{ResponseFuture, Retry, RetryConfigError, RetryLayer, RetryLayerBuilder};
pub use policy::{
    Attempts, AttemptsExtension, GiveUpReason, METRIC_ATTEMPTS, METRIC_DELAY, METRIC_GIVE_UPS,
    METRIC_RETRIES, RecordAttempts, RetryDecision, RetryDelay, RetryEvent, RetryPolicy, StatsOnly,
};
pub use stats::RetryStats;

#[doc(no_inline)]
pub use tower_llm_core::{DefaultClassifier, Failure, FailureKind};
