//! The deadline a client gives its request, carried into the stack as core's [`Deadline`].
//!
//! A client says how long it will wait with `x-request-timeout` (seconds, decimals allowed:
//! `30`, `2.5`; or a duration: `250ms`, `1m`) or `x-stainless-timeout` (seconds, what the
//! official OpenAI SDKs send with every request); the earlier of the two counts, and the
//! gateway's own `server.request_timeout`, when set, caps it (and is the deadline of requests
//! that name none). The call then runs with that deadline current: retry starts no attempt
//! and waits no backoff it cannot finish in time, the rate limiter queues no caller past it, a
//! provider's stream is cut at it; and the gateway ends the call there itself, answering 504
//! `deadline_exceeded`. A stream whose head came in time is cut at the deadline with an error
//! event. A malformed `x-request-timeout` is refused (400); a malformed `x-stainless-timeout`
//! is ignored, since clients send it without being asked.

use std::future::Future;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use tower_llm_core::{BoxError, Deadline, FailureKind, UpstreamError};

use crate::error::{self, ApiError};

/// `x-request-timeout`: the gateway's own header.
pub(crate) static X_REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-request-timeout");
/// `x-stainless-timeout`: sent by the OpenAI SDKs, in seconds.
pub(crate) static X_STAINLESS_TIMEOUT: HeaderName = HeaderName::from_static("x-stainless-timeout");

/// The request's deadline, from its headers and the gateway's `cap`; a 400 for a malformed
/// `x-request-timeout`.
pub(crate) fn from_headers(
    headers: &HeaderMap,
    cap: Option<Duration>,
) -> Result<Option<Deadline>, ApiError> {
    let ours = match headers.get(&X_REQUEST_TIMEOUT) {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(parse).ok_or_else(|| {
            let mut error = ApiError::bad_request(
                "x-request-timeout must be a positive number of seconds (`30`, `2.5`) \
                         or a duration (`250ms`, `1m`)",
            );
            error.code = Some("invalid_timeout");
            error
        })?),
    };
    let sdk = headers
        .get(&X_STAINLESS_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(seconds);
    let timeout = [ours, sdk, cap].into_iter().flatten().min();
    Ok(timeout.map(Deadline::after))
}

/// A positive number of seconds, or a humantime duration.
fn parse(text: &str) -> Option<Duration> {
    let text = text.trim();
    seconds(text).or_else(|| {
        tower_llm_core::parse_duration("gateway", "x-request-timeout", text)
            .ok()
            .filter(|d| !d.is_zero())
    })
}

/// A positive, finite number of seconds.
fn seconds(text: &str) -> Option<Duration> {
    let value: f64 = text.trim().parse().ok()?;
    (value.is_finite() && value > 0.0)
        .then(|| Duration::try_from_secs_f64(value).ok())
        .flatten()
        // A positive number below a nanosecond rounds to zero: as malformed as "0".
        .filter(|d| !d.is_zero())
}

/// Runs `call` with `deadline` current and ends it there (no cost without one).
pub(crate) async fn within<T>(
    deadline: Option<Deadline>,
    call: impl Future<Output = Result<T, BoxError>>,
) -> Result<T, BoxError> {
    let Some(deadline) = deadline else {
        return call.await;
    };
    match tokio::time::timeout_at(deadline.instant(), deadline.scope(call)).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::new(
            FailureKind::Timeout,
            "the request's deadline passed before the answer",
        )
        .into()),
    }
}

/// The error to answer for a failed call: `deadline_exceeded` when it timed out at the
/// client's deadline, else the classified failure.
pub(crate) fn failure(
    error: &(dyn std::error::Error + 'static),
    deadline: Option<Deadline>,
) -> ApiError {
    let answer = error::from_failure(error);
    match deadline {
        Some(deadline)
            if deadline.has_passed()
                && matches!(
                    tower_llm_core::classify_dyn_error(error).kind,
                    // A provider cuts a stream at the call's deadline as a cancellation (so
                    // that a client's short deadline trips no breaker); a layer's own timer
                    // at the same instant is a timeout.
                    FailureKind::Timeout | FailureKind::Cancelled
                ) =>
        {
            ApiError {
                upstream_request_id: answer.upstream_request_id,
                ..ApiError::deadline_exceeded()
            }
        }
        _ => answer,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn timeout(lines: &[(&HeaderName, &str)], cap: Option<Duration>) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.insert((*name).clone(), value.parse().unwrap());
        }
        from_headers(&headers, cap).unwrap().map(|d| d.time_left())
    }

    #[tokio::test(start_paused = true)]
    async fn the_earliest_of_the_headers_and_the_cap_wins() {
        let secs = Duration::from_secs;
        assert_eq!(timeout(&[], None), None);
        assert_eq!(timeout(&[], Some(secs(60))), Some(secs(60)));
        assert_eq!(
            timeout(&[(&X_REQUEST_TIMEOUT, "2.5")], None),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            timeout(&[(&X_REQUEST_TIMEOUT, "250ms")], None),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            timeout(&[(&X_STAINLESS_TIMEOUT, "600")], Some(secs(30))),
            Some(secs(30))
        );
        assert_eq!(
            timeout(
                &[(&X_STAINLESS_TIMEOUT, "600.0"), (&X_REQUEST_TIMEOUT, "5")],
                None
            ),
            Some(secs(5))
        );
        // The SDK's header is advisory: malformed, it is ignored.
        assert_eq!(timeout(&[(&X_STAINLESS_TIMEOUT, "soon")], None), None);
        for bad in ["0", "-1", "NaN", "inf", "later", "0s", "1e400", "1e-10"] {
            let mut headers = HeaderMap::new();
            headers.insert(X_REQUEST_TIMEOUT.clone(), bad.parse().unwrap());
            let error = from_headers(&headers, None).unwrap_err();
            assert_eq!(error.status, 400, "{bad}");
        }
    }
}
