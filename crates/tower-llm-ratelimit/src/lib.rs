//! Rate limiting that knows LLM quotas: stay under every provider limit without wasting any
//! of it.
//!
//! [`RateLimitLayer`] puts, per key (one key unless a [key function](KeyFn) says otherwise):
//!
//! - a **concurrency** limit (calls in flight) and a **minimum spacing** between call starts;
//! - a **requests** [`Quota`] and a **tokens** [`Quota`]: `limit` units in any sliding window,
//!   smooth (GCRA) with an explicit burst, and never more than `limit` in any window (see
//!   [`Quota`] and `docs/ratelimit.md` for how both hold at once);
//! - **token reservations**: each call reserves its estimated tokens
//!   ([`RequestCost::estimated_tokens`](tower_llm_core::RequestCost)) before it is sent and is
//!   reconciled with the usage its response reports
//!   ([`ResponseUsage`](tower_llm_core::ResponseUsage)) after: the difference is refunded or
//!   charged ([`Reconcile`]). A request larger than the whole token budget is refused at once
//!   with a non-retryable error ([`RequestTooLarge`]);
//! - a **pause** when the upstream answers 429 (or a breaker further in is open): the key
//!   sends nothing until the retry hint has passed; queued and new calls wait;
//! - optionally, **the provider's headers** ([`adapt_to_headers`](RateLimitBuilder::adapt_to_headers)):
//!   OpenAI's `x-ratelimit-remaining-*` / `x-ratelimit-reset-*` and Anthropic's
//!   `anthropic-ratelimit-*`; when the server says less is left than we think, calls wait for
//!   its reset.
//!
//! Calls that cannot start at once wait in a **FIFO queue** per key, at most
//! [`max_queue`](RateLimitBuilder::max_queue) of them and for at most
//! [`max_wait`](RateLimitBuilder::max_wait). A call that would go beyond either is refused
//! immediately with core's [`RateLimited`](tower_llm_core::RateLimited) error carrying a
//! retry hint; a call whose wait runs out is refused with it then. Dropping a waiting call
//! frees its place (and the tokens it stands to reserve) at once.
//!
//! # Where the waiting happens
//!
//! Limits depend on the request (its key and its token cost), which `poll_ready` cannot see,
//! so `poll_ready` only delegates to the inner service and a call waits inside its
//! [`ResponseFuture`]. The waiting future holds the inner service that `poll_ready` readied
//! (a clone takes its place, the way tower's own middleware defers calls). Refusals are
//! immediately-ready errors from `call`, never `poll_ready` errors, so a `Buffer` in front is
//! never poisoned.
//!
//! # Cancellation
//!
//! A dropped waiting future leaves the queue and wakes the next call; a dropped running call
//! frees its concurrency slot. Its tokens stay charged: the upstream may already have counted
//! the request.
//!
//! # Shared across instances
//!
//! With the `redis` feature, [`RedisBackend`] keeps the requests and tokens quotas in Redis,
//! updated by one atomic Lua script, so every instance draws from one budget. What happens
//! when Redis is unreachable is a choice: [`BackendFailure::Open`] (send, limited locally) or
//! [`BackendFailure::Closed`] (refuse).
//!
//! # Metrics
//!
//! Through the [`metrics`] crate:
//!
//! | name | kind | meaning |
//! |------|------|---------|
//! | `tower_llm_ratelimit_admitted_total` | counter | calls sent to the inner service |
//! | `tower_llm_ratelimit_waiting` | gauge | calls waiting now |
//! | `tower_llm_ratelimit_wait_seconds` | histogram | how long each waiting call waited |
//! | `tower_llm_ratelimit_rejected_total` | counter, label `reason` (`queue_full`, `max_wait`, `too_large`, `keys_full`, `backend`) | calls refused |
//! | `tower_llm_ratelimit_tokens_reserved_total` | counter | tokens reserved from estimates |
//! | `tower_llm_ratelimit_tokens_refunded_total` | counter | tokens given back on reconciling |
//! | `tower_llm_ratelimit_tokens_charged_total` | counter | tokens charged beyond estimates |
//! | `tower_llm_ratelimit_pauses_total` | counter | pauses after a 429 or an open circuit |
//!
//! The same numbers are in [`RateLimit::stats`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_ratelimit::{Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = RateLimitLayer::builder()
//!     .concurrency(4)
//!     .requests(Quota::per_minute(60))
//!     .tokens(Quota::per_minute(10_000).with_burst(2_000))
//!     .max_wait(Duration::from_secs(30))
//!     .build()?;
//! let mut llm = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|req: http::Request<String>| async move {
//!         let body = r#"{"usage":{"prompt_tokens":12,"completion_tokens":30}}"#;
//!         Ok::<_, BoxError>(http::Response::new(body.to_string()))
//!     }));
//!
//! let request = http::Request::post("https://api.openai.com/v1/chat/completions")
//!     .body(r#"{"model":"gpt-4o","max_tokens":100,"messages":[]}"#.to_string())?;
//! let response = llm.ready().await?.call(request).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(llm.get_ref().clone().ready().await.is_ok(), true);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod builder;
mod config;
mod error;
mod future;
mod handle;
mod headers;
mod key_state;
mod key_table;
mod layer;
mod limiter;
mod permit;
mod quota;
pub mod reads;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod stats;
mod ticket;

pub use builder::RateLimitBuilder;
pub use config::{BackendFailure, Reconcile};
pub use error::{ConfigError, RequestTooLarge};
pub use future::ResponseFuture;
pub use handle::RateLimitHandle;
pub use headers::{RateLimitHeaders, ServerLimit, ServerLimits, parse_go_duration, parse_rfc3339};
pub use layer::RateLimitLayer;
pub use quota::{Quota, SLOTS_PER_WINDOW};
pub use reads::{CountTokens, FollowHeaders, IgnoreHeaders, IgnoreTokens};
#[cfg(feature = "redis")]
pub use redis::RedisBackend;
pub use service::RateLimit;
pub use stats::RateLimitStats;
pub use tower_llm_core::{KeyFn, NoKey};
