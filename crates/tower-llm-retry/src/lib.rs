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
//! - the wait would end at or past the `deadline` (measured from the start of the call), or
//!   at or past the call's [`Deadline`](tower_llm_core::Deadline) (core's `DeadlineLayer`);
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
//! # Sharing one budget
//!
//! A retry layer's own budget bounds its own retries; but behind a retry sit other layers that
//! make extra calls (a fallback's next service, a hedge's extra leg), and their budgets
//! compound. [`RetryBuilder::shared_budget`] hands the layer core's
//! [`AttemptBudget`](tower_llm_core::AttemptBudget) instead, the one budget that tower-llm-race's
//! `FallbackLayer::shared_budget` and `HedgeBuilder::shared_budget` take too: every retry,
//! every fallback step and every hedged leg then draws on one balance, and an outage
//! multiplies upstream calls by at most `1 + ratio` (plus the floor), whatever the nesting.
//!
//! Each call is counted as a request **once**, by the outermost layer holding the budget: the
//! layer marks the budget while it calls and polls the inner service ([`Budgeted`]), and a
//! layer inside that holds the same budget sees the mark and only withdraws. The mark is on the
//! thread, like core's [`Deadline`](tower_llm_core::Deadline), so keep a `Buffer` or a spawn
//! out of the budgeted part of the stack. [`RetryHandle::budget`] and
//! [`AttemptBudget::stats`](tower_llm_core::AttemptBudget::stats) say who spent what.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_llm_core::{AttemptBudget, BoxError, BudgetConfig, FailureKind, UpstreamError};
//! use tower_llm_retry::{Backoff, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // One retry per two requests over 10 s, no floor: the whole stack's extra attempts.
//! let budget = AttemptBudget::new(BudgetConfig::new(0.5).min_per_second(0))?;
//! let retry = |name: &'static str| {
//!     RetryLayer::builder()
//!         .name(name)
//!         .backoff(Backoff::fixed(Duration::from_millis(10)))
//!         .shared_budget(budget.clone())
//!         .build()
//! };
//! let down = service_fn(|_: String| async {
//!     Err::<String, BoxError>(UpstreamError::new(FailureKind::Overloaded, "529").into())
//! });
//! // Two retry layers nested (in a real stack: retry outside, a fallback or hedge inside).
//! let stack = retry("outer")?.layer(retry("inner")?.layer(down));
//! for _ in 0..4 {
//!     assert!(stack.clone().oneshot("hi".to_string()).await.is_err());
//! }
//! let stats = budget.stats();
//! assert_eq!(stats.requests, 4); // not 4 + the inner layer's calls
//! assert_eq!(stats.withdrawals(), 2); // 0.5 × 4 requests
//! assert!(stats.spender("retry", "inner").is_some());
//! # Ok(())
//! # }
//! ```
//!
//! # Attempts, hook, statistics, metrics
//!
//! - [`RetryLayer::handle`] returns a [`RetryHandle`], usable before the stack is built and
//!   after it is boxed; [`RetryHandle::stats`] counts requests, retries, recoveries and
//!   give-ups by reason ([`RetryStats`], [`GiveUps`]), over every service the layer value made.
//! - The attempt count reaches the caller through a [`RecordAttempts`]. The default,
//!   [`StatsOnly`], writes nothing into the response, so the layer fits any response type
//!   (typed provider answers, plain values). Over `http::Response`,
//!   `.record_attempts(AttemptsExtension::when_retried())` adds an [`Attempts`] extension to
//!   every response that took more than one attempt ([`Attempts::of`] counts a response
//!   without one as a single attempt; [`AttemptsExtension::always`] tags every response, at
//!   the price of an allocation per call); a closure `Fn(&mut Res, Attempts)` writes it
//!   anywhere else. Errors are returned unchanged, so layers further out still classify them.
//! - [`RetryBuilder::on_retry`] sees every decision taken after a failed attempt
//!   ([`RetryEvent`]).
//! - `tracing` events and `metrics` series, below.
//!
//! # Observability
//!
//! One funnel per layer value feeds [`RetryHandle::stats`], [`tracing`](https://docs.rs/tracing)
//! (feature `tracing`) and [`metrics`](https://docs.rs/metrics) (feature `metrics`); both
//! features are on by default, and without them the funnel compiles to the stats counters
//! alone. Every event has a `name` field and every series a `name` label: the builder's
//! [`name`](RetryBuilder::name), `"retry"` by default. Requests, answers and error
//! messages never appear, only the failure's `kind` (core's
//! [`FailureKind::as_str`](tower_llm_core::FailureKind::as_str)) and numbers.
//!
//! Events (target `tower_llm_retry::observe`):
//!
//! | message | level | fields |
//! |---------|-------|--------|
//! | `retry scheduled` | debug | `name`, `attempt` (the one that failed, 1 for the first), `kind`, `backoff_seconds` (the wait: backoff, or the server's hint when longer), `retry_after_seconds` (the hint, when there was one) |
//! | `giving up` | warn | `name`, `attempt`, `kind`, `reason` (`attempts_exhausted`, `hint_too_long`, `past_deadline`) |
//! | `giving up` | debug | the same, for `reason` = `not_retryable`: the caller's own error (or an unknown one), nothing the layer gave up on |
//! | `retry budget exhausted, giving up` | warn | `name`, `spender` (`"retry"`), `attempt`, `kind` |
//! | `call recovered` | debug | `name`, `attempt` (the one that succeeded) |
//!
//! There is no span per attempt: the attempts are driven by tower's
//! [`Retry`](tower::retry::Retry), which this layer plugs a policy into, and a span would
//! need a future of ours around every inner call, first attempts included; the events carry
//! the attempt number instead.
//!
//! Metrics, described once per process with their unit; the handles are made at the first
//! call (the per-kind ones when a kind first occurs), with the recorder installed then:
//!
//! | name | kind | unit | labels | meaning |
//! |------|------|------|--------|---------|
//! | [`METRIC_ATTEMPTS`] `tower_llm_retry_attempts_total` | counter | count | `name` | attempts sent, first ones included |
//! | [`METRIC_RETRIES`] `tower_llm_retry_retries_total` | counter | count | `name`, `kind` | retries decided, by the failure that caused them |
//! | [`METRIC_GIVE_UPS`] `tower_llm_retry_give_ups_total` | counter | count | `name`, `reason` ([`GiveUpReason::as_str`]), `kind` | failures returned without another attempt |
//! | [`METRIC_DELAY`] `tower_llm_retry_delay_seconds` | histogram | seconds | `name` | the wait before each retry |
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
//! use tower_llm_core::{BoxError, FailureKind, UpstreamError};
//! use tower_llm_retry::{Backoff, Jitter, RetryLayer};
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
//! let handle = retry.handle();
//!
//! // The upstream is overloaded once, then answers with a plain `String`.
//! let calls = Arc::new(AtomicU32::new(0));
//! let upstream = service_fn({
//!     let calls = calls.clone();
//!     move |prompt: String| {
//!         let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
//!         async move {
//!             if first {
//!                 return Err(UpstreamError::new(FailureKind::Overloaded, "busy").into());
//!             }
//!             Ok::<_, BoxError>(format!("echo: {prompt}"))
//!         }
//!     }
//! });
//! let mut service = ServiceBuilder::new().layer(retry).service(upstream).boxed_clone();
//!
//! let answer = service.ready().await?.call("hello".to_string()).await?;
//! assert_eq!(answer, "echo: hello");
//! assert_eq!(handle.stats().retries, 1);
//! assert_eq!(handle.stats().recovered, 1);
//! # Ok(())
//! # }
//! ```
//!
//! With its defaults, over a typed provider (here `OpenAi` over a stand-in for the network
//! that is overloaded once):
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_providers::{ChatRequest, Message, OpenAi, RequestBody};
//! use tower_llm_retry::RetryLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_llm_core::BoxError> {
//! # tokio::time::pause();
//! let calls = Arc::new(AtomicU32::new(0));
//! let http = service_fn({
//!     let calls = calls.clone();
//!     move |_: http::Request<RequestBody>| {
//!         let (status, body) = if calls.fetch_add(1, Ordering::SeqCst) == 0 {
//!             (529, r#"{"error":{"message":"overloaded","type":"overloaded_error"}}"#)
//!         } else {
//!             (200, r#"{"id":"c1","model":"m","choices":[{"index":0,
//!                 "message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}]}"#)
//!         };
//!         let response = http::Response::builder().status(status);
//!         async move { response.body(Full::new(Bytes::from(body))) }
//!     }
//! });
//! let openai = OpenAi::compatible("http://localhost/v1").build_with(http)?;
//! let retry = RetryLayer::new();
//! let service = ServiceBuilder::new().layer(retry.clone()).service(openai);
//!
//! let answer = service
//!     .oneshot(ChatRequest::new("m", vec![Message::user("Say hi")]))
//!     .await?;
//! assert_eq!(answer.content, "Hi!");
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! assert_eq!(retry.handle().stats().retries, 1);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod backoff;
mod budget;
mod classify;
mod layer;
mod observe;
mod policy;
mod stats;

pub use backoff::{Backoff, Jitter};
pub use budget::{Budgeted, RetryBudget};
pub use classify::QuotaAwareClassifier;
pub use layer::{ResponseFuture, Retry, RetryBuilder, RetryLayer};
pub use observe::{METRIC_ATTEMPTS, METRIC_DELAY, METRIC_GIVE_UPS, METRIC_RETRIES};
pub use policy::{
    Attempts, AttemptsExtension, GiveUpReason, RecordAttempts, RetryDecision, RetryDelay,
    RetryEvent, RetryPolicy, StatsOnly,
};
pub use stats::{GiveUps, RetryHandle, RetryStats};

#[doc(no_inline)]
pub use tower_llm_core::{ConfigError, DefaultClassifier, Failure, FailureKind};
