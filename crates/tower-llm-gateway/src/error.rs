//! Errors as clients see them: a status, the classified kind, a message the gateway wrote
//! itself, and the request id, in the dialect of the route (OpenAI's or Anthropic's shape).
//!
//! An upstream's own error text is never sent on: it may quote the request, another tenant's
//! data or the provider key the gateway used. The client gets what the classification says
//! (rate limited, overloaded, context length exceeded, ...), the provider's name and status,
//! and a request id to find the full story in the gateway's logs.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tower_llm_core::{FailureKind, RateLimited, UpstreamError, classify_dyn_error};
use tower_llm_race::AllFailed;

use crate::request_id::RequestId;

/// Which API's error shape to answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `{"error": {"message", "type", "param", "code", "request_id"}}`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}, "request_id"}`.
    Anthropic,
}

/// An error the gateway answers with.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    /// OpenAI's `type` (`invalid_request_error`, `rate_limit_exceeded`, `server_error`, ...).
    pub(crate) kind: &'static str,
    /// OpenAI's `code`: the classified failure (`tenant_rate_limited`, `overloaded`, ...).
    pub(crate) code: Option<&'static str>,
    pub(crate) message: String,
    pub(crate) retry_after: Option<Duration>,
    /// The upstream's id for the failed request, which the client is then answered with.
    pub(crate) upstream_request_id: Option<String>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            retry_after: None,
            upstream_request_id: None,
        }
    }

    /// A 504 for a call that ran out of the time the client gave it (or the gateway's
    /// `server.request_timeout`).
    pub(crate) fn deadline_exceeded() -> Self {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            Some("deadline_exceeded"),
            "the request's deadline passed before the answer came \
             (x-request-timeout, x-stainless-timeout or the gateway's request_timeout)",
        )
    }

    /// A 400 for a request the gateway cannot read.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        )
    }

    pub(crate) fn unknown_model(model: &str, what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            format!(
                "The model `{model}` does not exist or does not support {what} on this gateway"
            ),
        )
    }

    /// Anthropic's `error.type` for this error.
    fn anthropic_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 | 503 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// The JSON body in `dialect`.
    pub(crate) fn body(&self, dialect: Dialect, id: &RequestId) -> Value {
        match dialect {
            Dialect::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.kind,
                "param": null,
                "code": self.code,
                "request_id": id.as_str(),
            }}),
            Dialect::Anthropic => json!({
                "type": "error",
                "error": {"type": self.anthropic_type(), "message": self.message},
                "request_id": id.as_str(),
            }),
        }
    }

    /// The whole response: status, body, `retry-after` (seconds, rounded up) and
    /// `retry-after-ms` when there is a hint, and the request id: the upstream's, when it
    /// named one, else `id`.
    pub(crate) fn into_response(self, dialect: Dialect, id: &RequestId) -> Response {
        let id = &id.answered_by(self.upstream_request_id.as_deref());
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body(dialect, id).to_string(),
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            headers.insert("retry-after-ms", HeaderValue::from(millis));
        }
        id.set_on(headers);
        response
    }
}

/// The provider's own account of the failure: the first `UpstreamError` of kind `kind` in
/// the error's chain, looking into each provider's error when a strategy lists them all.
fn find_upstream<'a>(
    error: &'a (dyn std::error::Error + 'static),
    kind: FailureKind,
) -> Option<&'a UpstreamError> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(all) = e.downcast_ref::<AllFailed>() {
            // The summary carries no status; the providers' own errors do.
            return all
                .failures()
                .iter()
                .filter(|f| f.failure().kind == kind)
                .find_map(|f| {
                    let inner: &'a (dyn std::error::Error + 'static) = f.error()?;
                    find_upstream(inner, kind)
                });
        }
        if let Some(upstream) = e.downcast_ref::<UpstreamError>() {
            return Some(upstream);
        }
        current = e.source();
    }
    None
}

fn is_local_rate_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.is::<RateLimited>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Maps a failed call to the status, kind and retry hint an OpenAI or Anthropic client
/// expects, with a message written here from the classification, never the upstream's text.
pub(crate) fn from_failure(error: &(dyn std::error::Error + 'static)) -> ApiError {
    let failure = classify_dyn_error(error);
    let upstream = find_upstream(error, failure.kind);
    let upstream_status = upstream.and_then(UpstreamError::status);
    let local_limit = is_local_rate_limit(error) && upstream.is_none();
    let server_status = |default| {
        upstream_status
            .filter(StatusCode::is_server_error)
            .unwrap_or(default)
    };
    let (status, kind, code, what) = match failure.kind {
        FailureKind::RateLimited if local_limit => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "tenant_rate_limited",
            "this key's rate limit for the model is reached",
        ),
        FailureKind::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "rate_limit_exceeded",
            "the provider is rate limiting requests",
        ),
        FailureKind::QuotaExhausted => (
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
            "the provider's quota is exhausted",
        ),
        FailureKind::Overloaded => (
            server_status(StatusCode::SERVICE_UNAVAILABLE),
            "server_error",
            "overloaded",
            "the provider is overloaded",
        ),
        FailureKind::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "timeout",
            "the provider did not answer in time",
        ),
        FailureKind::Transport => (
            StatusCode::BAD_GATEWAY,
            "server_error",
            "upstream_unreachable",
            "the provider could not be reached",
        ),
        FailureKind::ServerError => (
            server_status(StatusCode::BAD_GATEWAY),
            "server_error",
            "upstream_error",
            "the provider failed",
        ),
        FailureKind::BadRequest => (
            upstream_status
                .filter(StatusCode::is_client_error)
                .unwrap_or(StatusCode::BAD_REQUEST),
            "invalid_request_error",
            "bad_request",
            "the provider refused the request as invalid",
        ),
        // The provider refused the gateway's own key: not the client's fault.
        FailureKind::Unauthorized => (
            StatusCode::BAD_GATEWAY,
            "server_error",
            "upstream_unauthorized",
            "the provider refused the gateway's credentials",
        ),
        FailureKind::Forbidden => (
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "forbidden",
            "the provider does not allow this request",
        ),
        FailureKind::NotFound => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            "the provider does not know this model",
        ),
        FailureKind::ContextLengthExceeded => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "context_length_exceeded",
            "the request is longer than the model's context",
        ),
        FailureKind::ContentFiltered => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "content_filter",
            "the provider's content filter refused the request",
        ),
        FailureKind::CircuitOpen => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "circuit_open",
            "every provider of this model is failing; the gateway is resting them",
        ),
        FailureKind::Cancelled => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "cancelled",
            "the call was cancelled",
        ),
        _ => (
            upstream_status
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            "server_error",
            "upstream_error",
            "the call failed",
        ),
    };
    let mut message = what.to_owned();
    if let Some(upstream) = upstream {
        if let Some(provider) = upstream.provider() {
            message.push_str(&format!(" (provider `{provider}`"));
            if let Some(status) = upstream.status() {
                message.push_str(&format!(", status {}", status.as_u16()));
            }
            message.push(')');
        } else if let Some(status) = upstream.status() {
            message.push_str(&format!(" (status {})", status.as_u16()));
        }
    }
    if let Some(after) = failure.retry_after {
        message.push_str(&format!("; retry after {} ms", after.as_millis()));
    }
    ApiError {
        status,
        kind,
        code: Some(code),
        message,
        retry_after: failure.retry_after,
        upstream_request_id: upstream
            .and_then(UpstreamError::request_id)
            .map(str::to_owned),
    }
}
