//! Rate limiting that knows LLM quotas: stay under every provider limit without wasting any
//! of it.
//!
//! [`RateLimitLayer`] puts, per key (one key unless a [key function](KeyFn) says otherwise):
//!
//! - a **concurrency** limit (calls in flight), fixed or **adaptive**
//!   ([`adaptive_concurrency`](RateLimitBuilder::adaptive_concurrency): lowered on 429s,
//!   529/503 and timeouts, raised while calls succeed, capped by the provider's headers; see
//!   [`AdaptiveConcurrency`]), and a **minimum spacing** between call starts;
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
//! An adaptive limit can share the overloads it meets with the other instances
//! ([`AdaptiveConcurrency::shared`]): each backs off when another one hits the provider's
//! ceiling; the limits themselves stay per instance.
//!
//! # Observability
//!
//! One funnel per layer value feeds [`RateLimitHandle::stats`], [`tracing`](https://docs.rs/tracing)
//! (feature `tracing`) and [`metrics`](https://docs.rs/metrics) (feature `metrics`); both
//! features are on by default, and without them the funnel compiles to the stats counters
//! alone. Every event has a `name` field and every metric series a `name` label: the
//! builder's [`name`](RateLimitBuilder::name), `"ratelimit"` by default.
//!
//! **Keys never appear.** A key function's output is the caller's data (an API key, a
//! tenant id), so events carry only `keyed` (whether the limiter has a key function), never
//! the key, its length or a hash of it; prompts and answers are never read.
//!
//! Events (target `tower_llm_ratelimit::observe`):
//!
//! | message | level | fields |
//! |---------|-------|--------|
//! | `call queued` | debug | `name`, `keyed`, `tokens` (its reservation), `waiting` (calls waiting now) |
//! | `call admitted after waiting` | debug | `name`, `keyed`, `wait_seconds`, `waiting` |
//! | `call rejected` | warn | `name`, `reason` (`queue_full`, `max_wait`, `deadline`, `too_large`, `keys_full`, `backend`), `retry_after_seconds` (absent for `too_large`) |
//! | `key paused by the upstream` | warn | `name`, `keyed`, `cause` (`rate_limited`, `circuit_open`), `pause_seconds` |
//! | `paused by the handle` | info | `name`, `pause_seconds` |
//! | `resumed by the handle` | info | `name` |
//! | `server limits learnt` | debug | `name`, `keyed`, `remaining_requests`, `requests_reset_seconds`, `remaining_tokens`, `tokens_reset_seconds` (each only when the headers said it) |
//! | `concurrency limit increased` | debug | `name`, `keyed`, `from`, `to` (an adaptive limit, by whole calls) |
//! | `concurrency limit decreased` | debug | `name`, `keyed`, `from`, `to`, `cause` (`rate_limited`, `overloaded`, `timeout` or another [`decrease_on`](AdaptiveConcurrency::decrease_on) kind, `headers`) |
//! | `concurrency limit at its minimum` | warn | the same, for a decrease that reached [`min`](AdaptiveConcurrency::min) |
//!
//! Metrics, each with the label `name`, described once per process with their unit; the
//! handles are made when the layer is first applied, with the recorder installed then:
//!
//! | name | kind | unit | other labels | meaning |
//! |------|------|------|--------------|---------|
//! | `tower_llm_ratelimit_admitted_total` | counter | count | | calls sent to the inner service |
//! | `tower_llm_ratelimit_waiting` | gauge | count | | calls waiting now (the queue length, all keys) |
//! | `tower_llm_ratelimit_wait_seconds` | histogram | seconds | | how long each waiting call waited (admitted, refused or dropped) |
//! | `tower_llm_ratelimit_rejected_total` | counter | count | `reason` (as above) | calls refused |
//! | `tower_llm_ratelimit_tokens_reserved_total` | counter | count | | tokens reserved from estimates |
//! | `tower_llm_ratelimit_tokens_refunded_total` | counter | count | | tokens given back on reconciling |
//! | `tower_llm_ratelimit_tokens_charged_total` | counter | count | | tokens charged beyond estimates |
//! | `tower_llm_ratelimit_pauses_total` | counter | count | `cause` (`rate_limited`, `circuit_open`) | pauses after a 429 or an open circuit |
//! | `tower_llm_ratelimit_concurrency_limit` | gauge | count | | the adaptive concurrency limit (with a key function, of the key that moved last) |
//! | `tower_llm_ratelimit_limit_decreases_total` | counter | count | `cause` (as the event) | times an adaptive limit was lowered |
//! | `tower_llm_ratelimit_limit_increases_total` | counter | count | | times an adaptive limit was raised |
//!
//! The same numbers are in [`RateLimitHandle::stats`].
//!
//! # One layer value, one state; the handle
//!
//! The limits, queues, pauses and counters belong to the [`RateLimitLayer`] value: every
//! service it makes shares them, in whatever stack it lands (a whole-answer route and a
//! streaming route under one layer value draw from one budget), and clones of the layer
//! share them too. Independent limits mean another layer value.
//!
//! [`RateLimitLayer::handle`] gives a [`RateLimitHandle`] on that state, before or after the
//! stacks are built, boxed or moved into a router: [`stats`](RateLimitHandle::stats) (a
//! [`RateLimitStats`] snapshot with named fields), [`pause`](RateLimitHandle::pause) and
//! [`resume`](RateLimitHandle::resume).
//!
//! # What the request and response types must implement
//!
//! Nothing, unless a feature reads them (see [`reads`]):
//!
//! | feature | builder call | needs |
//! |---------|--------------|-------|
//! | concurrency, spacing, requests quota, 429 pause, queue | (the defaults) | nothing: any request, any response (outcomes through a [`Classify`](tower_llm_core::Classify), which core implements for any type) |
//! | tokens quota | [`tokens`](RateLimitBuilder::tokens) | [`RequestCost`](tower_llm_core::RequestCost) on the request, [`ResponseUsage`](tower_llm_core::ResponseUsage) on the response |
//! | the provider's headers | [`adapt_to_headers`](RateLimitBuilder::adapt_to_headers) | [`RateLimitHeaders`] on the response |
//!
//! # Reconciling follows the provider
//!
//! The default [`Reconcile::FollowProvider`] reconciles each call the way its provider's
//! own counter does, as the response says
//! ([`ResponseUsage::token_counting`](tower_llm_core::ResponseUsage::token_counting)): the
//! typed answers of `tower-llm-providers` say OpenAI keeps the reservation (prompt plus
//! `max_tokens`) while Anthropic and Gemini count output as produced, so the unused part is
//! refunded. A response that does not say keeps its reservation and is charged any usage
//! beyond it, which never over-admits.
//!
//! # Integer types
//!
//! Numbers that bound memory or concurrency ([`concurrency`](RateLimitBuilder::concurrency),
//! [`max_queue`](RateLimitBuilder::max_queue), [`max_keys`](RateLimitBuilder::max_keys), and
//! the `waiting` and `tracked_keys` stats) are `usize`; running totals (calls admitted,
//! waited, refused) are `u64`; token amounts and quota limits are `u64`.
//!
//! # Examples
//!
//! The defaults over any service: a `service_fn` that takes and returns a `String` needs no
//! trait of this crate or of core.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_ratelimit::{Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = RateLimitLayer::builder()
//!     .concurrency(4)
//!     .min_spacing(Duration::from_millis(10))
//!     .requests(Quota::per_minute(60))
//!     .max_wait(Duration::from_secs(30))
//!     .build()?;
//! let llm = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|prompt: String| async move {
//!         Ok::<_, BoxError>(format!("echo: {prompt}"))
//!     }));
//!
//! let answer = llm.oneshot("hello".to_owned()).await?;
//! assert_eq!(answer, "echo: hello");
//! # Ok(())
//! # }
//! ```
//!
//! The usual pair of quotas, [`RateLimitLayer::new`], over the typed OpenAI service of
//! `tower-llm-providers` (here over a stand-in for the network): its `ChatRequest`
//! estimates its cost, its `ChatResponse` reports the usage and says that OpenAI keeps what it
//! reserved at admission, which the default reconcile follows.
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_providers::{ChatRequest, Message, OpenAi, RequestBody};
//! use tower_llm_ratelimit::{Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let http = service_fn(|_: http::Request<RequestBody>| async {
//!     let body = r#"{"id":"c1","model":"m","choices":[{"index":0,
//!         "message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}],
//!         "usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#;
//!     http::Response::builder().status(200).body(body.to_owned())
//! });
//! let layer = RateLimitLayer::new(Quota::per_minute(500), Quota::per_minute(200_000));
//! let handle = layer.handle();
//! let openai = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(OpenAi::compatible("http://localhost/v1").build_with(http)?);
//!
//! let request = ChatRequest::new("m", vec![Message::user("Capital of France?")]).max_tokens(100);
//! let answer = openai.oneshot(request).await?;
//! assert_eq!(answer.content, "Paris.");
//! let stats = handle.stats();
//! assert_eq!(stats.admitted, 1);
//! // OpenAI counts the prompt estimate and max_tokens when it admits a call, and keeps
//! // them: so does the limiter.
//! assert!(stats.tokens_reserved > 100);
//! assert_eq!(stats.tokens_refunded, 0);
//! # Ok(())
//! # }
//! ```
//!
//! Over the typed OpenAI service of `tower-llm-providers`, with a tokens quota (its
//! `ChatRequest` estimates its cost, its `ChatResponse` reports usage and says OpenAI keeps
//! the reservation) and the provider's rate-limit headers followed:
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_llm_core::BoxError;
//! use tower_llm_providers::{ChatRequest, Message, OpenAi};
//! use tower_llm_ratelimit::{Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = RateLimitLayer::builder()
//!     .concurrency(16)
//!     .requests(Quota::per_minute(500))
//!     .tokens(Quota::per_minute(200_000).with_burst(20_000))
//!     .adapt_to_headers()
//!     .max_wait(Duration::from_secs(30))
//!     .build()?;
//! let handle = layer.handle();
//! let openai = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(OpenAi::from_env()?);
//!
//! let request = ChatRequest::new("gpt-4o-mini", vec![Message::user("Capital of France?")])
//!     .max_tokens(100);
//! let answer = openai.oneshot(request).await?;
//! println!("{} ({:?})", answer.content, handle.stats());
//! # Ok(())
//! # }
//! ```
//!
//! The handle after the stack is boxed: the stats of every service the layer made, and the
//! controls.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
//! use tower_llm_core::BoxError;
//! use tower_llm_ratelimit::{Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = RateLimitLayer::builder().requests(Quota::per_minute(60)).build()?;
//! let handle = layer.handle();
//! let answer = service_fn(|prompt: String| async move { Ok::<_, BoxError>(prompt) });
//! // Two routes from one layer value: one budget.
//! let chat: BoxCloneService<String, String, BoxError> =
//!     BoxCloneService::new(ServiceBuilder::new().layer(layer.clone()).service(answer));
//! let other: BoxCloneService<String, String, BoxError> =
//!     BoxCloneService::new(ServiceBuilder::new().layer(layer).service(answer));
//!
//! chat.clone().oneshot("one".to_owned()).await?;
//! other.clone().oneshot("two".to_owned()).await?;
//! let stats = handle.stats();
//! assert_eq!(stats.admitted, 2);
//! assert_eq!(stats.rejected, 0);
//!
//! handle.pause(Duration::from_secs(5));
//! assert_eq!(handle.stats().paused_for, Some(Duration::from_secs(5)));
//! handle.resume();
//! # Ok(())
//! # }
//! ```
//!
//! Header adaptation is what asks for [`RateLimitHeaders`]:
//! over a `String` response it does not compile.
//!
//! ```compile_fail
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_ratelimit::RateLimitLayer;
//!
//! # async fn run() -> Result<(), BoxError> {
//! let layer = RateLimitLayer::builder().adapt_to_headers().build()?;
//! let llm = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|prompt: String| async move { Ok::<_, BoxError>(prompt) }));
//! llm.oneshot("hello".to_owned()).await?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod adaptive;
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
mod observe;
mod permit;
mod quota;
pub mod reads;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod stats;
mod ticket;

pub use adaptive::AdaptiveConcurrency;
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
