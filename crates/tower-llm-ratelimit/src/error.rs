//! Errors of this crate. Rejections are boxed core types so any layer further out classifies
//! them: a full queue or a wait past the maximum is core's [`RateLimited`] with a retry hint;
//! a request that can never fit is an [`UpstreamError`] of kind
//! [`FailureKind::BadRequest`](tower_llm_core::FailureKind::BadRequest) whose source is
//! [`RequestTooLarge`], so no retry layer tries it again.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use tower_llm_core::{BoxError, FailureKind, RateLimited, UpstreamError};

pub use tower_llm_core::ConfigError;

/// A request needs more tokens than the whole budget allows in a window: waiting cannot help.
///
/// Returned as the source of an [`UpstreamError`] of kind `BadRequest`:
///
/// ```
/// # use tower_llm_ratelimit::RequestTooLarge;
/// # fn check(err: &tower_llm_core::BoxError) -> Option<u64> {
/// let too_large = err
///     .downcast_ref::<tower_llm_core::UpstreamError>()
///     .and_then(|e| std::error::Error::source(e))
///     .and_then(|e| e.downcast_ref::<RequestTooLarge>())?;
/// Some(too_large.tokens())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTooLarge {
    tokens: u64,
    limit: u64,
    window: Duration,
}

impl RequestTooLarge {
    /// The request's estimated tokens.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The token budget per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window of the budget.
    pub fn window(&self) -> Duration {
        self.window
    }
}

impl fmt::Display for RequestTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request needs an estimated {} tokens but the budget is {} tokens per {:?}",
            self.tokens, self.limit, self.window
        )
    }
}

impl StdError for RequestTooLarge {}

pub(crate) fn too_large(tokens: u64, limit: u64, window: Duration) -> BoxError {
    let detail = RequestTooLarge {
        tokens,
        limit,
        window,
    };
    Box::new(
        UpstreamError::new(
            FailureKind::BadRequest,
            format!("rate limit: request can never be sent: {detail}"),
        )
        .with_code("request_too_large")
        .with_source(detail),
    )
}

/// Why a call was refused without being sent; the reason names are also the `reason` label of
/// the `tower_llm_ratelimit_rejected_total` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    QueueFull,
    MaxWait,
    /// The wait would pass the call's own deadline (core's `Deadline`).
    Deadline,
    TooLarge,
    KeysFull,
    Backend,
}

impl Rejection {
    #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue_full",
            Rejection::MaxWait => "max_wait",
            Rejection::Deadline => "deadline",
            Rejection::TooLarge => "too_large",
            Rejection::KeysFull => "keys_full",
            Rejection::Backend => "backend",
        }
    }

    pub(crate) fn error(self, retry_after: Duration) -> BoxError {
        let reason = match self {
            Rejection::QueueFull => "the wait queue is full",
            Rejection::MaxWait => "the wait would be longer than the maximum",
            Rejection::Deadline => "the wait would pass the call's deadline",
            Rejection::KeysFull => "too many distinct keys are busy",
            Rejection::Backend => "the shared rate-limit store is unavailable",
            Rejection::TooLarge => "the request is larger than the budget",
        };
        Box::new(RateLimited::new(
            reason,
            Some(retry_after.max(Duration::from_millis(1))),
        ))
    }
}
