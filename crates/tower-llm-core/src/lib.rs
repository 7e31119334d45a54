//! The shared vocabulary of [tower-llm]: what every layer needs to understand about a request
//! and its outcome, without knowing which provider served it.
//!
//! - **Outcome classification** ([`Classify`], [`Outcome`], [`FailureKind`]): one taxonomy of
//!   what went wrong (rate limited with the server's retry-after, overloaded, timeout,
//!   transport, server error, client errors that are never retried, circuit open, ...). The
//!   breaker, retry, race and rate-limit layers all read outcomes through it, so a breaker's
//!   fast-fail is seen by a retry layer as "unavailable, try later" with no glue code.
//! - **Retry-after** ([`retry_after`]): the server's hint in every header form providers use.
//! - **Request fingerprints** ([`Fingerprint`], [`FingerprintKey`], [`RequestKey`]): a keyed
//!   128-bit hash under which dedup coalesces and caches; tenants never share a key.
//! - **Request cost** ([`RequestCost`], [`ResponseUsage`], [`Usage`]): tokens estimated before
//!   a call and reported after it, for token-per-minute limits.
//! - **Determinism** ([`Deterministic`]): whether a stored answer is as good as a fresh one, the
//!   default rule for what a cache may keep; [`CacheControl`]: whether a request opts out.
//! - **Rate-limit headers** ([`RateLimitHeaders`]): a response's view of the provider's limits.
//! - **One deadline** ([`Deadline`]): the instant a whole call must be answered by, current
//!   on the task while it runs, so every layer inside can read the time left.
//! - **One budget for extra attempts** ([`AttemptBudget`]): retries, fallbacks and hedged
//!   legs drawing on one balance (a ratio of requests plus a floor, over a window), each user
//!   request counted once however many layers share it.
//! - **Responses that finish later** ([`EndSignal`], [`StreamEnd`]): a stream's end, which
//!   layers wait for to release what they hold and to judge the call.
//! - **Errors** ([`CircuitOpen`], [`RateLimited`], [`UpstreamError`]): what layers and
//!   providers box, so that any layer further out can classify them.
//! - **Configuration and keys** ([`ConfigError`], [`KeyFn`], [`parse_duration`]): the one
//!   error every builder returns, the one key-function type of every keyed layer, and durations
//!   written one way everywhere (humantime: `250ms`, `1m 30s`).
//! - **Error bodies** ([`read_error_body`], [`ErrorBody`]): what OpenAI's, Anthropic's and
//!   Gemini's JSON error bodies say (an exhausted quota, a prompt too long, a retry hint).
//!
//! Core has no I/O and no runtime of its own.
//!
//! # Example
//!
//! A layer decides what to do with a result through the classifier:
//!
//! ```
//! use std::time::Duration;
//! use tower_llm_core::{BoxError, Classify, DefaultClassifier, FailureKind, UpstreamError};
//!
//! let overloaded: BoxError = Box::new(
//!     UpstreamError::new(FailureKind::Overloaded, "Overloaded")
//!         .with_provider("anthropic")
//!         .with_retry_after(Some(Duration::from_secs(2))),
//! );
//! let outcome = DefaultClassifier.classify(Err::<&(), _>(&overloaded));
//! let failure = outcome.as_failure().unwrap();
//! assert!(failure.kind.is_retryable());
//! assert!(failure.kind.is_upstream_unhealthy());
//! assert_eq!(failure.retry_after, Some(Duration::from_secs(2)));
//! ```
//!
//! [tower-llm]: https://github.com/tower-llm/tower-llm

#![forbid(unsafe_code)]

mod budget;
mod canonical;
mod classify;
mod config;
mod cost;
mod deadline;
mod duration;
mod error;
mod error_body;
mod fingerprint;
mod key;
mod panic;
mod request_meta;
mod retry_after;
mod sampling;
mod stream_end;
#[cfg(test)]
mod test_json;

pub use budget::{
    AttemptBudget, BudgetConfig, BudgetScope, BudgetStats, Spender, SpenderStats, Withdrawal,
};
pub use classify::{
    Classify, ClassifyError, ClassifyResponse, DefaultClassifier, Failure, FailureKind, Outcome,
    classify_dyn_error,
};
pub use config::ConfigError;
pub use cost::{
    DEFAULT_OUTPUT_TOKENS, RequestCost, ResponseUsage, TokenCounting, Usage, estimate_body_tokens,
    estimate_text_tokens, requested_output_tokens, usage_from_json,
};
pub use deadline::{
    Deadline, DeadlineFuture, DeadlineHandle, DeadlineLayer, DeadlineService, DeadlineStats,
    WithDeadline,
};
pub use duration::{format_duration, parse_duration};
pub use error::{BoxError, CircuitOpen, MAX_ERROR_BODY, RateLimited, UpstreamError};
pub use error_body::{ErrorBody, ErrorDialect, read_error_body, read_error_value};
pub use fingerprint::{
    FINGERPRINT_HEADERS, Fingerprint, FingerprintHasher, FingerprintKey, RequestKey,
};
pub use key::{KeyFn, NoKey};
pub use panic::panic_message;
pub use request_meta::{BYPASS_HEADER, BYPASS_VALUE, Bypass, CacheControl, RateLimitHeaders};
pub use retry_after::{RETRY_AFTER_HEADERS, parse_retry_after, retry_after, retry_after_at};
pub use sampling::{Deterministic, is_deterministic_json};
pub use stream_end::{EndSignal, StreamEnd};
