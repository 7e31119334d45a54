//! A circuit breaker for LLM provider calls: while a provider is down, callers get an answer
//! in microseconds instead of waiting for timeouts, the provider gets room to recover, and
//! recovery is detected by a bounded number of probe calls.
//!
//! # Behaviour
//!
//! - **Closed**: calls go through and their outcomes are counted. Only outcomes that
//!   [`tower_llm_core`] classifies as [upstream-unhealthy] count as failures: 5xx, 503/529
//!   overloaded, timeouts, transport errors. Client errors (400, 401, 403, 404, context
//!   length, content filter) never trip the breaker and do not reset the failure count
//!   either; a 429 counts only with [`count_rate_limited`]. The breaker trips on whichever
//!   enabled policy fires first:
//!   - [`failure_rate`] (on by default): at least that share of the calls in the sliding
//!     [`Window`] failed (the last N calls, or the last T of time in buckets), once the
//!     window holds [`minimum_calls`]. **The default: 50 % of the last 100 calls, once 40
//!     calls are in the window.**
//!   - [`consecutive_failures`] (off by default): `n` failures in a row. It suits low
//!     traffic, a single caller, or noticing a hard-down upstream before the window fills;
//!     under concurrent traffic a flaky upstream makes such runs by chance (see
//!     `docs/breaker.md`, "When consecutive counting fits").
//!   - [`slow_calls`] (off by default): at least that share of the calls in the window took
//!     longer than the threshold (a slow success counts as slow, not as failed).
//! - **Open**: `call` returns an immediately ready error, a boxed
//!   [`CircuitOpen`](tower_llm_core::CircuitOpen) carrying the time until the next probe;
//!   the inner service is not called. [`DefaultClassifier`](tower_llm_core::DefaultClassifier)
//!   classifies it as [`FailureKind::CircuitOpen`](tower_llm_core::FailureKind::CircuitOpen)
//!   with that time as the retry hint, so a retry layer outside waits just that long and a
//!   fallback moves on at once. The [`cooldown`] (default 10 s) can grow on each failed
//!   probe ([`cooldown_backoff`]); a close resets it.
//! - **Half-open**: after the cool-down, the next calls are probes, at most [`probes`] of
//!   them; others are refused (their hint is the cool-down a failed probe would start). The
//!   breaker closes once `ceil(probe_success_rate * probes)` probes succeeded and opens again
//!   as soon as failures make that impossible (by default: one probe, closing on its
//!   success, reopening on its failure). A probe that ends in an ignored outcome (a client
//!   error), or whose future is dropped or panics, gives its place back, so half-open can
//!   never get stuck.
//! - Outcomes of calls that started before a state change are ignored: a slow call admitted
//!   while closed cannot reopen a breaker that has since recovered.
//!
//! `poll_ready` delegates to the inner service; rejection is never a readiness error, so a
//! `Buffer` in front is not poisoned. The breaker belongs to the layer value: every service
//! it makes, in every stack, and their clones share it; another breaker means another
//! layer value.
//!
//! [`KeyedCircuitBreakerLayer`] keeps one breaker per key (provider, model, host), from a
//! [`KeyFn`](tower_llm_core::KeyFn), in a map bounded by `max_keys`.
//!
//! # Cost
//!
//! The closed path takes no lock and allocates nothing: one atomic load to admit the call,
//! then, when it ends, a load and a few relaxed atomic updates (the count window's cursor
//! and slot; the consecutive counter when that policy is on). The clock is read only when a
//! slow-call policy or a time window needs it. The open path is a load, a clock read and the
//! boxed error. See `docs/breaker.md` for the design and `benches/breaker.rs` for figures.
//!
//! # Observing and steering
//!
//! - [`CircuitBreakerLayer::handle`] (or [`CircuitBreaker::handle`]) reads the state, the
//!   time in it and the counts ([`BreakerStats`]), before or after the stack is built and boxed,
//!   and steers the breaker: [`force_open`](CircuitBreakerHandle::force_open) holds it open
//!   until [`reset`](CircuitBreakerHandle::reset), which closes it with empty counts.
//!   [`KeyedCircuitBreakerLayer::handle`] does the same per key, and
//!   [`reset_all`](KeyedCircuitBreakerHandle::reset_all).
//! - [`on_state_change`] calls a hook with each [`StateChange`], forced ones included.
//! - `tracing` and `metrics` through one funnel: see [Observability](#observability).
//!
//! # Observability
//!
//! Features `tracing` and `metrics`, both on by default; with one off its code is compiled
//! out. Every event and series carries the breaker's [`name`] (default `"breaker"`), and a
//! per-key breaker's `key` (the key function's value: keep it bounded, a provider or a
//! model). No request or answer is ever recorded. The funnel is separate from the
//! [`on_state_change`] hook.
//!
//! Events (target `tower_llm_breaker::observe`; fields `name`, `key` when keyed, `from`):
//!
//! | level | message | more fields |
//! |---|---|---|
//! | warn | `breaker: opened` | `cause` = `consecutive_failures` / `failure_rate` / `slow_rate` / `probe_failed`; `consecutive_failures`, or `failure_rate` / `slow_rate` (a fraction) and `window_calls`; `cooldown_s` |
//! | info | `breaker: half-open` | |
//! | info | `breaker: closed` | |
//! | warn | `breaker: forced open` | (the handle's [`force_open`](CircuitBreakerHandle::force_open)) |
//! | info | `breaker: reset` | (the handle's [`reset`](CircuitBreakerHandle::reset)) |
//! | debug | `breaker: call rejected` | `retry_in_s` (no `from`) |
//!
//! Metrics (labels `name`, and `key` for per-key breakers; registered and described when the
//! breaker is made, so install the recorder first):
//! - `tower_llm_breaker_state` (gauge): 0 closed, 1 open, 2 half-open;
//! - `tower_llm_breaker_transitions_total` (counter, extra labels `from`, `to`);
//! - `tower_llm_breaker_rejected_total` (counter): calls refused.
//!
//! # Example
//!
//! The defaults over a `service_fn` returning `String`, boxed; the handle still reads it.
//!
//! ```
//! use std::time::Duration;
//! use tower::util::BoxService;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_breaker::{CircuitBreakerLayer, State};
//! use tower_llm_core::{
//!     BoxError, Classify, DefaultClassifier, FailureKind, UpstreamError,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let breaker = CircuitBreakerLayer::new();
//! let handle = breaker.handle();
//!
//! // An upstream that is down.
//! let mut svc: BoxService<&str, String, BoxError> = BoxService::new(
//!     ServiceBuilder::new().layer(breaker).service(service_fn(|_: &str| async {
//!         Err::<String, BoxError>(UpstreamError::new(FailureKind::Overloaded, "overloaded").into())
//!     })),
//! );
//!
//! // The default opens once 40 calls are in the window and half of them failed.
//! for _ in 0..40 {
//!     let _ = svc.ready().await?.call("hello").await;
//! }
//! let stats = handle.stats();
//! assert_eq!(stats.state, State::Open);
//! assert_eq!((stats.failures, stats.window_calls), (40, 40));
//!
//! // Now calls fail fast, and say when to come back.
//! let err = svc.ready().await?.call("hello").await.unwrap_err();
//! let failure = DefaultClassifier.classify(Err::<&(), _>(&err)).as_failure().unwrap();
//! assert_eq!(failure.kind, FailureKind::CircuitOpen);
//! assert!(failure.retry_after.unwrap() <= Duration::from_secs(10));
//! assert_eq!(handle.stats().rejected, 1);
//!
//! // An operator who knows better closes it by hand.
//! handle.reset();
//! assert_eq!(handle.state(), State::Closed);
//! # Ok(())
//! # }
//! ```
//!
//! [upstream-unhealthy]: tower_llm_core::FailureKind::is_upstream_unhealthy
//! [`count_rate_limited`]: CircuitBreakerBuilder::count_rate_limited
//! [`consecutive_failures`]: CircuitBreakerBuilder::consecutive_failures
//! [`failure_rate`]: CircuitBreakerBuilder::failure_rate
//! [`minimum_calls`]: CircuitBreakerBuilder::minimum_calls
//! [`slow_calls`]: CircuitBreakerBuilder::slow_calls
//! [`cooldown`]: CircuitBreakerBuilder::cooldown
//! [`cooldown_backoff`]: CircuitBreakerBuilder::cooldown_backoff
//! [`probes`]: CircuitBreakerBuilder::probes
//! [`on_state_change`]: CircuitBreakerBuilder::on_state_change
//! [`name`]: CircuitBreakerBuilder::name

#![forbid(unsafe_code)]

mod breaker;
mod config;
mod future;
mod handle;
mod keyed;
mod layer;
mod observe;
mod service;
mod state;
mod window;

#[cfg(test)]
mod model_tests;

pub use config::{CircuitBreakerBuilder, ConfigError, Window};
pub use future::ResponseFuture;
pub use handle::CircuitBreakerHandle;
pub use keyed::{
    KeyedCircuitBreaker, KeyedCircuitBreakerHandle, KeyedCircuitBreakerLayer, KeyedStats,
};
pub use layer::CircuitBreakerLayer;
pub use service::CircuitBreaker;
#[allow(deprecated)]
pub use state::Stats;
pub use state::{BreakerStats, State, StateChange};
