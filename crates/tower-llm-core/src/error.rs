//! Error types shared by every tower-llm crate.
//!
//! Layers box errors the tower way ([`BoxError`]); these types are what they box, so a layer
//! further out can downcast them, and [`classify_dyn_error`](crate::classify_dyn_error)
//! understands them without knowing which layer made them.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::classify::{ClassifyError, Failure, FailureKind};

/// The error type of tower middleware: any error, boxed.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A circuit breaker refused the call without sending it.
///
/// Classified as [`FailureKind::CircuitOpen`] with the time until the breaker admits its next
/// probe as the retry hint, so a retry layer can wait exactly that long and a fallback can move
/// on at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitOpen {
    retry_in: Duration,
}

impl CircuitOpen {
    /// A rejection whose breaker admits a probe again in `retry_in`.
    pub const fn new(retry_in: Duration) -> Self {
        CircuitOpen { retry_in }
    }

    /// How long until the breaker admits its next probe.
    pub const fn retry_in(&self) -> Duration {
        self.retry_in
    }

    /// This rejection, classified.
    pub const fn failure(&self) -> Failure {
        Failure::new(FailureKind::CircuitOpen).with_retry_after(Some(self.retry_in))
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit open: the upstream is failing; next probe in {:?}",
            self.retry_in
        )
    }
}

impl StdError for CircuitOpen {}

impl ClassifyError for CircuitOpen {
    fn classify_error(&self) -> Failure {
        self.failure()
    }
}

/// A local rate limiter refused the call without sending it (queue full, wait too long).
///
/// Classified as [`FailureKind::RateLimited`] with the limiter's estimate of when capacity
/// frees up as the retry hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimited {
    retry_after: Option<Duration>,
    reason: Cow<'static, str>,
}

impl RateLimited {
    /// A rejection for `reason`, with capacity expected back after `retry_after`.
    pub fn new(reason: impl Into<Cow<'static, str>>, retry_after: Option<Duration>) -> Self {
        RateLimited {
            retry_after,
            reason: reason.into(),
        }
    }

    /// When capacity is expected back, if the limiter knows.
    pub const fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Why the call was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// This rejection, classified.
    pub const fn failure(&self) -> Failure {
        Failure::new(FailureKind::RateLimited).with_retry_after(self.retry_after)
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited: {}", self.reason)?;
        if let Some(after) = self.retry_after {
            write!(f, "; retry after {after:?}")?;
        }
        Ok(())
    }
}

impl StdError for RateLimited {}

impl ClassifyError for RateLimited {
    fn classify_error(&self) -> Failure {
        self.failure()
    }
}

/// How much of a failed response's body an [`UpstreamError`] keeps for debugging.
pub const MAX_ERROR_BODY: usize = 8 * 1024;

/// A failure reported by (or on the way to) an upstream API, already classified.
///
/// Provider services return it; anything that boxes it keeps it classifiable. It keeps what a
/// person debugging needs: the status, the provider's own error type or code, its message, the
/// raw body (at most [`MAX_ERROR_BODY`] bytes) and the underlying error. It never holds request
/// headers, so no credential can leak through it.
///
/// ```
/// use tower_llm_core::{ClassifyError, FailureKind, UpstreamError};
/// use std::time::Duration;
///
/// let err = UpstreamError::new(FailureKind::RateLimited, "Rate limit reached for requests")
///     .with_provider("openai")
///     .with_status(http::StatusCode::TOO_MANY_REQUESTS)
///     .with_code("rate_limit_exceeded")
///     .with_retry_after(Some(Duration::from_secs(7)));
/// assert_eq!(err.classify_error().retry_after, Some(Duration::from_secs(7)));
/// assert_eq!(
///     err.to_string(),
///     "openai: 429 Too Many Requests: rate_limited (rate_limit_exceeded): \
///      Rate limit reached for requests; retry after 7s"
/// );
/// ```
#[derive(Debug)]
pub struct UpstreamError {
    kind: FailureKind,
    retry_after: Option<Duration>,
    // Boxed so `Result<T, UpstreamError>` stays small: errors are the cold path.
    detail: Box<Detail>,
}

#[derive(Debug, Default)]
struct Detail {
    status: Option<http::StatusCode>,
    provider: Option<Cow<'static, str>>,
    code: Option<String>,
    request_id: Option<String>,
    message: String,
    body: Option<Bytes>,
    source: Option<BoxError>,
}

impl UpstreamError {
    /// A failure of `kind` described by `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        UpstreamError {
            kind,
            retry_after: None,
            detail: Box::new(Detail {
                message: message.into(),
                ..Detail::default()
            }),
        }
    }

    /// Sets the server's retry hint.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Sets the HTTP status the upstream answered with.
    pub fn with_status(mut self, status: http::StatusCode) -> Self {
        self.detail.status = Some(status);
        self
    }

    /// Names the provider (`"openai"`, `"anthropic"`, ...).
    pub fn with_provider(mut self, provider: impl Into<Cow<'static, str>>) -> Self {
        self.detail.provider = Some(provider.into());
        self
    }

    /// Sets the provider's own error type or code (`"insufficient_quota"`,
    /// `"overloaded_error"`, ...).
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.detail.code = Some(code.into());
        self
    }

    /// Sets the upstream's id for the request (OpenAI `x-request-id`, Anthropic
    /// `request-id`), the reference its support asks for.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.detail.request_id = Some(request_id.into());
        self
    }

    /// Changes the kind, keeping everything else (a body that says more than the status).
    pub fn with_kind(mut self, kind: FailureKind) -> Self {
        self.kind = kind;
        self
    }

    /// Keeps the raw response body for debugging, cut to [`MAX_ERROR_BODY`] bytes.
    pub fn with_body(mut self, body: Bytes) -> Self {
        self.detail.body = Some(if body.len() > MAX_ERROR_BODY {
            // A copy, not a slice: a slice would keep the whole (possibly huge) buffer alive
            // for as long as the error lives.
            Bytes::copy_from_slice(&body[..MAX_ERROR_BODY])
        } else {
            body
        });
        self
    }

    /// Sets the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.detail.source = Some(source.into());
        self
    }

    /// What kind of failure this is.
    pub const fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The server's retry hint, if it gave one.
    pub const fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// This error, classified.
    pub const fn failure(&self) -> Failure {
        Failure::new(self.kind).with_retry_after(self.retry_after)
    }

    /// The HTTP status, if the upstream answered at all.
    pub fn status(&self) -> Option<http::StatusCode> {
        self.detail.status
    }

    /// The provider's name, if set.
    pub fn provider(&self) -> Option<&str> {
        self.detail.provider.as_deref()
    }

    /// The provider's own error type or code, if it sent one.
    pub fn code(&self) -> Option<&str> {
        self.detail.code.as_deref()
    }

    /// The upstream's id for the request, if it sent one.
    pub fn request_id(&self) -> Option<&str> {
        self.detail.request_id.as_deref()
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.detail.message
    }

    /// The start of the raw response body, if one was kept.
    pub fn body(&self) -> Option<&Bytes> {
        self.detail.body.as_ref()
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(provider) = &self.detail.provider {
            write!(f, "{provider}: ")?;
        }
        if let Some(status) = self.detail.status {
            write!(f, "{status}: ")?;
        }
        write!(f, "{}", self.kind)?;
        if let Some(code) = &self.detail.code {
            write!(f, " ({code})")?;
        }
        if !self.detail.message.is_empty() {
            write!(f, ": {}", self.detail.message)?;
        }
        if let Some(after) = self.retry_after {
            write!(f, "; retry after {after:?}")?;
        }
        Ok(())
    }
}

impl StdError for UpstreamError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.detail
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl ClassifyError for UpstreamError {
    fn classify_error(&self) -> Failure {
        self.failure()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify_dyn_error;

    #[test]
    fn boxed_errors_keep_their_class() {
        let open: BoxError = Box::new(CircuitOpen::new(Duration::from_secs(3)));
        let failure = classify_dyn_error(&*open);
        assert_eq!(failure.kind, FailureKind::CircuitOpen);
        assert_eq!(failure.retry_after, Some(Duration::from_secs(3)));

        let limited: BoxError = Box::new(RateLimited::new("queue full", None));
        assert_eq!(classify_dyn_error(&*limited).kind, FailureKind::RateLimited);

        let upstream: BoxError = Box::new(
            UpstreamError::new(FailureKind::QuotaExhausted, "no credit")
                .with_code("insufficient_quota"),
        );
        assert_eq!(
            classify_dyn_error(&*upstream).kind,
            FailureKind::QuotaExhausted
        );
    }

    #[test]
    fn the_outermost_known_error_decides() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let err = UpstreamError::new(FailureKind::Overloaded, "busy").with_source(io);
        assert_eq!(classify_dyn_error(&err).kind, FailureKind::Overloaded);
    }

    #[test]
    fn results_stay_small() {
        assert!(std::mem::size_of::<UpstreamError>() <= 40);
    }

    #[test]
    fn body_is_bounded() {
        let body = Bytes::from(vec![b'x'; MAX_ERROR_BODY * 3]);
        let err = UpstreamError::new(FailureKind::ServerError, "").with_body(body);
        assert_eq!(err.body().map(Bytes::len), Some(MAX_ERROR_BODY));
    }
}
