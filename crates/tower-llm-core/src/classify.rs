//! What happened to a call, in the words every layer understands.
//!
//! A breaker needs to know whether a failure means "the upstream is unhealthy", a retry layer
//! whether it is worth trying again and after how long, a fallback whether another provider
//! might do better. [`Classify`] turns a call's `Result<&Res, &Err>` into an [`Outcome`], and
//! [`DefaultClassifier`] does so for any response that implements [`ClassifyResponse`] and any
//! error that implements [`ClassifyError`]. Core implements those for `http::Response<B>`, for
//! boxed errors (walking the source chain for core's own error types, tower's and tokio's
//! timeout `Elapsed` and `std::io::Error`), and for the plain types tests use.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{CircuitOpen, RateLimited, UpstreamError};
use crate::retry_after::retry_after;
use crate::stream_end::EndSignal;

/// The kind of a failed call.
///
/// The kinds are chosen for what a layer does next, not for how the failure was reported:
/// see [`is_retryable`](Self::is_retryable), [`is_upstream_unhealthy`](Self::is_upstream_unhealthy),
/// [`is_client_error`](Self::is_client_error) and
/// [`is_worth_trying_elsewhere`](Self::is_worth_trying_elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The provider asked us to slow down (HTTP 429) and will accept calls again later.
    RateLimited,
    /// The account's quota or credit is used up (OpenAI `insufficient_quota`, Gemini per-day
    /// quota): waiting a few seconds will not help, another provider might.
    QuotaExhausted,
    /// The provider is overloaded (HTTP 503, Anthropic 529 `overloaded_error`).
    Overloaded,
    /// The call took too long (HTTP 408 or 504, a client-side timeout).
    Timeout,
    /// The connection failed: refused, reset, closed mid-response.
    Transport,
    /// Any other server-side failure (HTTP 500, 502 and other 5xx).
    ServerError,
    /// The request is malformed or was refused as such (HTTP 400, 422, other 4xx).
    BadRequest,
    /// The credentials are missing or invalid (HTTP 401).
    Unauthorized,
    /// The credentials lack permission (HTTP 403).
    Forbidden,
    /// The model or route does not exist (HTTP 404).
    NotFound,
    /// The prompt does not fit the model's context window (or the request is too large, 413).
    ContextLengthExceeded,
    /// The provider's content filter refused the request or the answer.
    ContentFiltered,
    /// A circuit breaker refused the call without sending it.
    CircuitOpen,
    /// The call was abandoned before it finished.
    Cancelled,
    /// A failure no rule recognises. Not retried and not counted against the upstream's
    /// health; supply your own [`Classify`] to say otherwise.
    Other,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [FailureKind; 15] = [
        FailureKind::RateLimited,
        FailureKind::QuotaExhausted,
        FailureKind::Overloaded,
        FailureKind::Timeout,
        FailureKind::Transport,
        FailureKind::ServerError,
        FailureKind::BadRequest,
        FailureKind::Unauthorized,
        FailureKind::Forbidden,
        FailureKind::NotFound,
        FailureKind::ContextLengthExceeded,
        FailureKind::ContentFiltered,
        FailureKind::CircuitOpen,
        FailureKind::Cancelled,
        FailureKind::Other,
    ];

    /// Whether the same call may succeed if tried again later: rate limited, overloaded,
    /// timeout, transport, server error and circuit open.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureKind::RateLimited
                | FailureKind::Overloaded
                | FailureKind::Timeout
                | FailureKind::Transport
                | FailureKind::ServerError
                | FailureKind::CircuitOpen
        )
    }

    /// Whether the failure says the upstream itself is unhealthy: overloaded, timeout,
    /// transport and server error. This is what trips a circuit breaker; rate limiting is not
    /// in it (a breaker may opt in).
    pub const fn is_upstream_unhealthy(self) -> bool {
        matches!(
            self,
            FailureKind::Overloaded
                | FailureKind::Timeout
                | FailureKind::Transport
                | FailureKind::ServerError
        )
    }

    /// Whether the request itself is at fault: sending it again, anywhere, gives the same
    /// answer (bad request, unauthorized, forbidden, not found, content filtered). Context
    /// length is a client error too, though a larger-context model may accept it.
    pub const fn is_client_error(self) -> bool {
        matches!(
            self,
            FailureKind::BadRequest
                | FailureKind::Unauthorized
                | FailureKind::Forbidden
                | FailureKind::NotFound
                | FailureKind::ContextLengthExceeded
                | FailureKind::ContentFiltered
        )
    }

    /// Whether another provider might answer where this one failed: every retryable kind, and
    /// an exhausted quota.
    pub const fn is_worth_trying_elsewhere(self) -> bool {
        self.is_retryable() || matches!(self, FailureKind::QuotaExhausted)
    }

    /// A short snake_case name, stable, for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::RateLimited => "rate_limited",
            FailureKind::QuotaExhausted => "quota_exhausted",
            FailureKind::Overloaded => "overloaded",
            FailureKind::Timeout => "timeout",
            FailureKind::Transport => "transport",
            FailureKind::ServerError => "server_error",
            FailureKind::BadRequest => "bad_request",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::Forbidden => "forbidden",
            FailureKind::NotFound => "not_found",
            FailureKind::ContextLengthExceeded => "context_length_exceeded",
            FailureKind::ContentFiltered => "content_filtered",
            FailureKind::CircuitOpen => "circuit_open",
            FailureKind::Cancelled => "cancelled",
            FailureKind::Other => "other",
        }
    }

    /// The kind an HTTP error status stands for, or `None` for a status below 400.
    pub fn from_status(status: http::StatusCode) -> Option<FailureKind> {
        let kind = match status.as_u16() {
            0..=399 => return None,
            401 => FailureKind::Unauthorized,
            403 => FailureKind::Forbidden,
            404 => FailureKind::NotFound,
            408 => FailureKind::Timeout,
            413 => FailureKind::ContextLengthExceeded,
            429 => FailureKind::RateLimited,
            400..=499 => FailureKind::BadRequest,
            503 | 529 => FailureKind::Overloaded,
            504 => FailureKind::Timeout,
            _ => FailureKind::ServerError,
        };
        Some(kind)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified failure: its kind and, when the server or a layer gave one, how long to wait
/// before trying again.
///
/// Built with [`Failure::new`] and [`Failure::with_retry_after`], so that it can carry more
/// later without breaking the code that makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Failure {
    /// What went wrong.
    pub kind: FailureKind,
    /// How long the server (or a local layer) asked callers to wait, if it said.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure of `kind` with no retry hint.
    pub const fn new(kind: FailureKind) -> Self {
        Failure {
            kind,
            retry_after: None,
        }
    }

    /// The same failure with a retry hint.
    pub const fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after {
            Some(after) => write!(f, "{} (retry after {:?})", self.kind, after),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// The classified outcome of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call did what was asked.
    Success,
    /// The call failed.
    Failure(Failure),
}

impl Outcome {
    /// A failure of `kind`, with no retry hint.
    pub const fn failure(kind: FailureKind) -> Self {
        Outcome::Failure(Failure::new(kind))
    }

    /// Whether the call succeeded.
    pub const fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// The failure, if the call failed.
    pub const fn as_failure(&self) -> Option<Failure> {
        match self {
            Outcome::Success => None,
            Outcome::Failure(failure) => Some(*failure),
        }
    }

    /// The failure's kind, if the call failed.
    pub const fn kind(&self) -> Option<FailureKind> {
        match self {
            Outcome::Success => None,
            Outcome::Failure(failure) => Some(failure.kind),
        }
    }

    /// The retry hint, if the call failed and one was given.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Outcome::Success => None,
            Outcome::Failure(failure) => failure.retry_after,
        }
    }
}

impl From<Failure> for Outcome {
    fn from(failure: Failure) -> Self {
        Outcome::Failure(failure)
    }
}

/// Turns the result of a call into an [`Outcome`].
///
/// Layers take a classifier as a type parameter, defaulting to [`DefaultClassifier`]. Any
/// `Fn(Result<&Res, &Err>) -> Outcome` is a classifier too, so a rule of your own is a closure:
///
/// ```
/// use tower_llm_core::{Classify, FailureKind, Outcome};
///
/// // Our upstream answers "busy" in a 200 body when it is overloaded.
/// let classify = |result: Result<&String, &std::io::Error>| match result {
///     Ok(body) if body == "busy" => Outcome::failure(FailureKind::Overloaded),
///     Ok(_) => Outcome::Success,
///     Err(_) => Outcome::failure(FailureKind::Transport),
/// };
/// assert_eq!(classify.classify(Ok(&"busy".to_string())).kind(), Some(FailureKind::Overloaded));
/// ```
pub trait Classify<Res: ?Sized, Err: ?Sized> {
    /// Classifies one call's result.
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome;

    /// The [`EndSignal`] of a response that finishes later (a stream), whose outcome is its
    /// end rather than its head; `None` for a whole answer. The default says every response
    /// is whole; [`DefaultClassifier`] asks the response
    /// ([`ClassifyResponse::end_signal`]). A classifier of your own that serves streams
    /// forwards this to the response the same way, or the layers judge streams at their head.
    fn end_signal<'r>(&self, response: &'r mut Res) -> Option<&'r mut EndSignal> {
        let _ = response;
        None
    }
}

impl<Res: ?Sized, Err: ?Sized, F> Classify<Res, Err> for F
where
    F: Fn(Result<&Res, &Err>) -> Outcome,
{
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        self(result)
    }
}

/// The classifier every layer uses unless told otherwise: it asks the response
/// ([`ClassifyResponse`]) and the error ([`ClassifyError`]) to classify themselves.
///
/// ```
/// use tower_llm_core::{Classify, DefaultClassifier, FailureKind, BoxError};
/// use std::time::Duration;
///
/// let response = http::Response::builder()
///     .status(429)
///     .header("retry-after", "7")
///     .body(())
///     .unwrap();
/// let outcome = DefaultClassifier.classify(Ok::<_, &BoxError>(&response));
/// assert_eq!(outcome.kind(), Some(FailureKind::RateLimited));
/// assert_eq!(outcome.retry_after(), Some(Duration::from_secs(7)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefaultClassifier;

impl<Res, Err> Classify<Res, Err> for DefaultClassifier
where
    Res: ClassifyResponse + ?Sized,
    Err: ClassifyError + ?Sized,
{
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        match result {
            Ok(response) => response.classify_response(),
            Err(error) => Outcome::Failure(error.classify_error()),
        }
    }

    #[inline]
    fn end_signal<'r>(&self, response: &'r mut Res) -> Option<&'r mut EndSignal> {
        response.end_signal()
    }
}

/// A response that can tell whether it is a success.
///
/// Typed provider responses are always successes (their errors arrive as `Err`); an
/// `http::Response` is judged by its status and retry headers.
pub trait ClassifyResponse {
    /// The outcome this response stands for.
    fn classify_response(&self) -> Outcome;

    /// For a response that finishes later (a stream), the signal its end will fire: layers
    /// that hold something for the length of a call, or judge it by how it went, hang a hook
    /// on it (see [`EndSignal`]). `None`, the default, for a whole answer.
    #[inline]
    fn end_signal(&mut self) -> Option<&mut EndSignal> {
        None
    }
}

/// An error that can tell what kind of failure it is.
pub trait ClassifyError {
    /// The failure this error stands for.
    fn classify_error(&self) -> Failure;
}

impl<B> ClassifyResponse for http::Response<B> {
    fn classify_response(&self) -> Outcome {
        match FailureKind::from_status(self.status()) {
            None => Outcome::Success,
            Some(kind) => {
                Outcome::Failure(Failure::new(kind).with_retry_after(retry_after(self.headers())))
            }
        }
    }
}

macro_rules! always_success {
    ($($ty:ty),* $(,)?) => {
        $(
            impl ClassifyResponse for $ty {
                fn classify_response(&self) -> Outcome {
                    Outcome::Success
                }
            }
        )*
    };
}

always_success!(
    (),
    bool,
    u8,
    u16,
    u32,
    u64,
    usize,
    i32,
    i64,
    str,
    String,
    bytes::Bytes,
    serde_json::Value,
);

impl<T> ClassifyResponse for Vec<T> {
    fn classify_response(&self) -> Outcome {
        Outcome::Success
    }
}

impl<T: ClassifyResponse + ?Sized> ClassifyResponse for &T {
    fn classify_response(&self) -> Outcome {
        (**self).classify_response()
    }
}

impl<T: ClassifyResponse + ?Sized> ClassifyResponse for Box<T> {
    fn classify_response(&self) -> Outcome {
        (**self).classify_response()
    }

    fn end_signal(&mut self) -> Option<&mut EndSignal> {
        (**self).end_signal()
    }
}

impl<T: ClassifyResponse + ?Sized> ClassifyResponse for Arc<T> {
    fn classify_response(&self) -> Outcome {
        (**self).classify_response()
    }
}

impl<T: ClassifyError + ?Sized> ClassifyError for &T {
    fn classify_error(&self) -> Failure {
        (**self).classify_error()
    }
}

impl<T: ClassifyError + ?Sized> ClassifyError for Arc<T> {
    fn classify_error(&self) -> Failure {
        (**self).classify_error()
    }
}

impl<T: ClassifyError + ?Sized> ClassifyError for Box<T> {
    fn classify_error(&self) -> Failure {
        (**self).classify_error()
    }
}

impl ClassifyError for dyn StdError + Send + Sync + 'static {
    fn classify_error(&self) -> Failure {
        classify_dyn_error(self)
    }
}

/// The legacy client's error: what it wraps when that is known (a timeout, an I/O error),
/// otherwise a transport failure, since the request got no HTTP answer.
#[cfg(feature = "hyper-util")]
impl ClassifyError for hyper_util::client::legacy::Error {
    fn classify_error(&self) -> Failure {
        match classify_dyn_error(self) {
            failure if failure.kind == FailureKind::Other => Failure::new(FailureKind::Transport),
            failure => failure,
        }
    }
}

impl ClassifyError for io::Error {
    fn classify_error(&self) -> Failure {
        classify_dyn_error(self)
    }
}

impl ClassifyError for Infallible {
    fn classify_error(&self) -> Failure {
        match *self {}
    }
}

impl ClassifyError for tower::timeout::error::Elapsed {
    fn classify_error(&self) -> Failure {
        Failure::new(FailureKind::Timeout)
    }
}

impl ClassifyError for tokio::time::error::Elapsed {
    fn classify_error(&self) -> Failure {
        Failure::new(FailureKind::Timeout)
    }
}

/// Classifies any error by walking its [`source`](StdError::source) chain, outermost first,
/// for an error whose meaning is known: core's [`UpstreamError`], [`CircuitOpen`] and
/// [`RateLimited`], tower's and tokio's timeout `Elapsed`, and `std::io::Error` (including the
/// error an `io::Error` wraps). The first one found decides; with none, the failure is
/// [`FailureKind::Other`].
///
/// ```
/// use tower_llm_core::{classify_dyn_error, FailureKind};
///
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// assert_eq!(classify_dyn_error(&refused).kind, FailureKind::Transport);
/// ```
pub fn classify_dyn_error(error: &(dyn StdError + 'static)) -> Failure {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(failure) = known_failure(error) {
            return failure;
        }
        next = error.source();
    }
    Failure::new(FailureKind::Other)
}

fn known_failure(error: &(dyn StdError + 'static)) -> Option<Failure> {
    if let Some(e) = error.downcast_ref::<UpstreamError>() {
        return Some(e.failure());
    }
    if let Some(e) = error.downcast_ref::<CircuitOpen>() {
        return Some(e.failure());
    }
    if let Some(e) = error.downcast_ref::<RateLimited>() {
        return Some(e.failure());
    }
    if error.is::<tower::timeout::error::Elapsed>() || error.is::<tokio::time::error::Elapsed>() {
        return Some(Failure::new(FailureKind::Timeout));
    }
    if error.is::<tower::load_shed::error::Overloaded>() {
        // A local load-shed layer had no capacity: try again later, or elsewhere.
        return Some(Failure::new(FailureKind::Overloaded));
    }
    if let Some(e) = error.downcast_ref::<io::Error>() {
        // An io::Error's `source()` skips the error it wraps, so look inside it here.
        if let Some(inner) = e.get_ref()
            && let Some(failure) = known_failure(inner)
        {
            return Some(failure);
        }
        return io_failure(e.kind()).map(Failure::new);
    }
    None
}

fn io_failure(kind: io::ErrorKind) -> Option<FailureKind> {
    use io::ErrorKind as K;
    match kind {
        K::TimedOut => Some(FailureKind::Timeout),
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::BrokenPipe
        | K::UnexpectedEof
        | K::AddrNotAvailable
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::NetworkDown
        | K::Interrupted => Some(FailureKind::Transport),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16) -> http::Response<()> {
        http::Response::builder()
            .status(status)
            .body(())
            .expect("valid response")
    }

    #[test]
    fn statuses_map_to_kinds() {
        let cases = [
            (200, None),
            (204, None),
            (304, None),
            (400, Some(FailureKind::BadRequest)),
            (401, Some(FailureKind::Unauthorized)),
            (403, Some(FailureKind::Forbidden)),
            (404, Some(FailureKind::NotFound)),
            (408, Some(FailureKind::Timeout)),
            (413, Some(FailureKind::ContextLengthExceeded)),
            (422, Some(FailureKind::BadRequest)),
            (429, Some(FailureKind::RateLimited)),
            (500, Some(FailureKind::ServerError)),
            (502, Some(FailureKind::ServerError)),
            (503, Some(FailureKind::Overloaded)),
            (504, Some(FailureKind::Timeout)),
            (529, Some(FailureKind::Overloaded)),
        ];
        for (status, kind) in cases {
            let outcome = response(status).classify_response();
            assert_eq!(outcome.kind(), kind, "status {status}");
        }
    }

    #[test]
    fn kinds_partition_sensibly() {
        for kind in FailureKind::ALL {
            assert!(
                !(kind.is_retryable() && kind.is_client_error()),
                "{kind} is both retryable and a client error"
            );
            if kind.is_upstream_unhealthy() {
                assert!(kind.is_retryable(), "{kind} unhealthy but not retryable");
            }
            if kind.is_retryable() {
                assert!(kind.is_worth_trying_elsewhere());
            }
        }
        assert!(!FailureKind::QuotaExhausted.is_retryable());
        assert!(FailureKind::QuotaExhausted.is_worth_trying_elsewhere());
        assert!(!FailureKind::RateLimited.is_upstream_unhealthy());
        assert!(!FailureKind::Other.is_retryable());
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FailureKind::ALL.len());
    }
}
