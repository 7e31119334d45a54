//! How provider failures become classified [`UpstreamError`]s.
//!
//! The HTTP status gives the first answer ([`FailureKind::from_status`]); the provider's error
//! body refines it (an exhausted quota is a 429 that waiting will not fix, an overload may
//! arrive as an event inside a 200 stream), and the retry hint comes from every header form
//! ([`retry_after`]) and, for Gemini, from `RetryInfo.retryDelay` in the body.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tower_llm_core::{BoxError, FailureKind, UpstreamError, classify_dyn_error, retry_after};

/// A provider's configuration was refused when built; it names the knob and says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    knob: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(knob: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            knob,
            reason: reason.into(),
        }
    }

    /// The setting that was refused.
    pub fn knob(&self) -> &'static str {
        self.knob
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid provider configuration: `{}`: {}",
            self.knob, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// Which wire format a provider speaks, for decoding its errors and streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
}

/// What the futures of one provider need to know.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) dialect: Dialect,
    pub(crate) provider: Cow<'static, str>,
    pub(crate) max_body: usize,
}

impl Ctx {
    /// Counts a call sent (`what`: `chat`, `stream` or `embeddings`).
    pub(crate) fn record_request(&self, what: &'static str) {
        metrics::counter!(
            "tower_llm_providers_requests_total",
            "provider" => self.provider.clone(),
            "call" => what
        )
        .increment(1);
    }

    /// Counts a failure handed to the caller.
    pub(crate) fn record_failure(&self, error: &UpstreamError) {
        metrics::counter!(
            "tower_llm_providers_failures_total",
            "provider" => self.provider.clone(),
            "kind" => error.kind().as_str()
        )
        .increment(1);
    }

    pub(crate) fn error(&self, kind: FailureKind, message: impl Into<String>) -> UpstreamError {
        UpstreamError::new(kind, message).with_provider(self.provider.clone())
    }

    /// A failure to reach the upstream or to read its answer: transport, unless the error
    /// says timeout (tower's or tokio's `Elapsed`, an io `TimedOut`).
    pub(crate) fn transport(&self, what: &str, error: BoxError) -> UpstreamError {
        let kind = match classify_dyn_error(&*error).kind {
            FailureKind::Timeout => FailureKind::Timeout,
            _ => FailureKind::Transport,
        };
        self.error(kind, format!("{what}: {error}"))
            .with_source(error)
    }

    /// A body that is not what the provider documents.
    pub(crate) fn malformed(
        &self,
        what: &str,
        body: &Bytes,
        error: impl fmt::Display,
    ) -> UpstreamError {
        let message = if looks_like_html(body) {
            format!("{what}: got an HTML page instead of JSON")
        } else {
            format!("{what}: {error}")
        };
        self.error(FailureKind::ServerError, message)
            .with_body(body.clone())
    }

    /// The error for a non-success answer with (the start of) this body.
    pub(crate) fn for_status(
        &self,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        body: Bytes,
        note: Option<&str>,
    ) -> UpstreamError {
        let kind = FailureKind::from_status(status).unwrap_or(FailureKind::Other);
        let detail = parse_error_body(self.dialect, &body);
        let message = match (&detail, note) {
            (_, Some(note)) => note.to_owned(),
            (Some(d), None) => d.message.clone().unwrap_or_default(),
            (None, None) if looks_like_html(&body) => {
                format!(
                    "HTML error page{}",
                    html_title(&body)
                        .map(|t| format!(" ({t})"))
                        .unwrap_or_default()
                )
            }
            (None, None) if body.is_empty() => "empty error body".to_owned(),
            (None, None) => "error body is not the provider's JSON error".to_owned(),
        };
        let mut error = self
            .error(kind, message)
            .with_status(status)
            .with_retry_after(retry_after(headers))
            .with_body(body);
        if let Some(mut detail) = detail {
            // A body's generic type ("invalid_request_error" on a 401) must not hide what the
            // status says; only the specific kinds a status cannot express refine it.
            if !detail.kind.is_some_and(refines_status) {
                detail.kind = None;
            }
            error = apply_detail(error, kind, detail);
        }
        error
    }

    /// An error object sent inside a 200 stream (or a 200 body).
    pub(crate) fn for_error_value(&self, value: &Value, raw: &str) -> UpstreamError {
        let detail = error_detail(self.dialect, value).unwrap_or_default();
        let kind = detail.kind.unwrap_or(FailureKind::ServerError);
        let error = self
            .error(
                kind,
                detail
                    .message
                    .clone()
                    .unwrap_or_else(|| "error event".into()),
            )
            .with_body(Bytes::copy_from_slice(raw.as_bytes()));
        apply_detail(error, kind, detail)
    }
}

fn apply_detail(
    mut error: UpstreamError,
    status_kind: FailureKind,
    detail: ErrorDetail,
) -> UpstreamError {
    if let Some(code) = detail.code {
        error = error.with_code(code);
    }
    let kind = detail.kind.unwrap_or(status_kind);
    if kind != error.kind() {
        let retry = error.retry_after();
        // Rebuild with the refined kind; UpstreamError has no kind setter.
        let mut refined =
            UpstreamError::new(kind, error.message().to_owned()).with_retry_after(retry);
        if let Some(p) = error.provider() {
            refined = refined.with_provider(p.to_owned());
        }
        if let Some(s) = error.status() {
            refined = refined.with_status(s);
        }
        if let Some(c) = error.code() {
            refined = refined.with_code(c.to_owned());
        }
        if let Some(b) = error.body() {
            refined = refined.with_body(b.clone());
        }
        error = refined;
    }
    if error.retry_after().is_none() && detail.retry_after.is_some() {
        error = error.with_retry_after(detail.retry_after);
    }
    error
}

fn refines_status(kind: FailureKind) -> bool {
    matches!(
        kind,
        FailureKind::QuotaExhausted
            | FailureKind::ContextLengthExceeded
            | FailureKind::ContentFiltered
            | FailureKind::Overloaded
            | FailureKind::Unauthorized
    )
}

pub(crate) fn looks_like_html(body: &[u8]) -> bool {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let head = &body[start..body.len().min(start + 15)];
    head.first() == Some(&b'<')
        && (head.to_ascii_lowercase().starts_with(b"<!doctype html")
            || head.to_ascii_lowercase().starts_with(b"<html")
            || head.to_ascii_lowercase().starts_with(b"<head")
            || head.to_ascii_lowercase().starts_with(b"<body")
            || head.to_ascii_lowercase().starts_with(b"<!--"))
}

fn html_title(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let lower = text.to_ascii_lowercase();
    let start = lower.find("<title>")? + "<title>".len();
    let end = start + lower[start..].find("</title>")?;
    let title = text.get(start..end)?.trim();
    (!title.is_empty()).then(|| title.chars().take(200).collect())
}

/// What a provider's error JSON says.
#[derive(Debug, Default)]
struct ErrorDetail {
    kind: Option<FailureKind>,
    code: Option<String>,
    message: Option<String>,
    retry_after: Option<Duration>,
}

fn parse_error_body(dialect: Dialect, body: &[u8]) -> Option<ErrorDetail> {
    let value: Value = serde_json::from_slice(body).ok()?;
    // Gemini's streaming endpoint may wrap its error in an array.
    let value = match value {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        other => other,
    };
    error_detail(dialect, &value)
}

fn str_field<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value.get(name).and_then(Value::as_str)
}

fn error_detail(dialect: Dialect, value: &Value) -> Option<ErrorDetail> {
    let error = value.get("error")?;
    Some(match dialect {
        Dialect::OpenAi => openai_detail(error),
        Dialect::Anthropic => anthropic_detail(error),
        Dialect::Gemini => gemini_detail(error),
    })
}

fn openai_detail(error: &Value) -> ErrorDetail {
    // Some compatible servers send `"error": "text"`.
    if let Some(text) = error.as_str() {
        return ErrorDetail {
            message: Some(text.to_owned()),
            ..ErrorDetail::default()
        };
    }
    let code = error.get("code").and_then(|c| {
        c.as_str()
            .map(str::to_owned)
            .or_else(|| c.as_u64().map(|n| n.to_string()))
    });
    let ty = str_field(error, "type");
    let message = str_field(error, "message").map(str::to_owned);
    let names = [code.as_deref(), ty];
    let has = |wanted: &[&str]| names.iter().flatten().any(|n| wanted.contains(n));
    // Spend caps and exhausted credits come as 429s too, but waiting will not lift them
    // (OpenAI's error-codes and spend-limits guides).
    let kind = if has(&[
        "insufficient_quota",
        "billing_hard_limit_reached",
        "billing_not_active",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
    ]) {
        Some(FailureKind::QuotaExhausted)
    } else if has(&["context_length_exceeded", "string_above_max_length"]) {
        Some(FailureKind::ContextLengthExceeded)
    } else if has(&[
        "content_filter",
        "content_policy_violation",
        "ResponsibleAIPolicyViolation",
    ]) {
        Some(FailureKind::ContentFiltered)
    } else if has(&[
        "rate_limit_exceeded",
        "rate_limit_error",
        "slow_down",
        "429",
        "tokens",
        "requests",
    ]) {
        Some(FailureKind::RateLimited)
    } else if has(&["server_error", "internal_error"]) {
        Some(FailureKind::ServerError)
    } else if has(&[
        "overloaded",
        "overloaded_error",
        "service_unavailable",
        "service_unavailable_error",
        "server_is_overloaded",
    ]) {
        Some(FailureKind::Overloaded)
    } else if has(&["invalid_api_key", "authentication_error"]) {
        Some(FailureKind::Unauthorized)
    } else if has(&["model_not_found"]) {
        Some(FailureKind::NotFound)
    } else if has(&["invalid_request_error"]) {
        Some(FailureKind::BadRequest)
    } else {
        None
    };
    ErrorDetail {
        kind,
        code: code.or_else(|| ty.map(str::to_owned)),
        message,
        retry_after: None,
    }
}

fn anthropic_detail(error: &Value) -> ErrorDetail {
    let ty = str_field(error, "type");
    let message = str_field(error, "message").map(str::to_owned);
    // A monthly spend cap is a 429 `rate_limit_error` told apart only by this code; waiting
    // for a retry-after will not lift it.
    let spend_cap = error
        .get("details")
        .and_then(|d| str_field(d, "error_code"))
        == Some("enforced_spend_limit_reached");
    let kind = match ty {
        Some("overloaded_error") => Some(FailureKind::Overloaded),
        Some("rate_limit_error") if spend_cap => Some(FailureKind::QuotaExhausted),
        Some("rate_limit_error") => Some(FailureKind::RateLimited),
        Some("api_error") => Some(FailureKind::ServerError),
        Some("timeout_error") => Some(FailureKind::Timeout),
        Some("authentication_error") => Some(FailureKind::Unauthorized),
        Some("permission_error") => Some(FailureKind::Forbidden),
        Some("not_found_error") => Some(FailureKind::NotFound),
        Some("request_too_large") => Some(FailureKind::ContextLengthExceeded),
        Some("billing_error") => Some(FailureKind::QuotaExhausted),
        Some("invalid_request_error")
            if message.as_deref().is_some_and(|m| {
                m.contains("prompt is too long") || m.contains("context window")
            }) =>
        {
            Some(FailureKind::ContextLengthExceeded)
        }
        Some("invalid_request_error")
            if message.as_deref().is_some_and(|m| {
                m.contains("credit balance is too low")
                    || m.contains("reached your specified API usage limits")
                    || m.contains("reached your specified workspace API usage limits")
            }) =>
        {
            Some(FailureKind::QuotaExhausted)
        }
        Some("invalid_request_error") => Some(FailureKind::BadRequest),
        _ => None,
    };
    ErrorDetail {
        kind,
        code: ty.map(str::to_owned),
        message,
        retry_after: None,
    }
}

/// Parses a protobuf JSON duration such as `"37s"` or `"0.250s"`.
pub(crate) fn parse_proto_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    (0.0..1e9)
        .contains(&seconds)
        .then(|| Duration::from_secs_f64(seconds))
}

fn gemini_detail(error: &Value) -> ErrorDetail {
    let status = str_field(error, "status");
    let message = str_field(error, "message").map(str::to_owned);
    let details = error.get("details").and_then(Value::as_array);
    let detail_of = |suffix: &'static str| {
        details
            .into_iter()
            .flatten()
            .filter(move |d| str_field(d, "@type").is_some_and(|t| t.ends_with(suffix)))
    };
    let retry_after = detail_of("google.rpc.RetryInfo")
        .find_map(|d| str_field(d, "retryDelay"))
        .and_then(parse_proto_duration);
    let per_day = detail_of("google.rpc.QuotaFailure").any(|d| {
        d.get("violations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|v| {
                ["quotaId", "quotaMetric"].iter().any(|f| {
                    str_field(v, f)
                        .is_some_and(|id| id.contains("PerDay") || id.contains("per_day"))
                })
            })
    });
    let reason = detail_of("google.rpc.ErrorInfo").find_map(|d| str_field(d, "reason"));
    let kind = match status {
        Some("RESOURCE_EXHAUSTED") if per_day => Some(FailureKind::QuotaExhausted),
        Some("RESOURCE_EXHAUSTED") => Some(FailureKind::RateLimited),
        Some("UNAVAILABLE") => Some(FailureKind::Overloaded),
        Some("DEADLINE_EXCEEDED") => Some(FailureKind::Timeout),
        Some("INTERNAL" | "UNKNOWN") => Some(FailureKind::ServerError),
        Some("UNAUTHENTICATED") => Some(FailureKind::Unauthorized),
        Some("INVALID_ARGUMENT") if reason == Some("API_KEY_INVALID") => {
            Some(FailureKind::Unauthorized)
        }
        Some("INVALID_ARGUMENT")
            if message
                .as_deref()
                .is_some_and(|m| m.contains("exceeds the maximum number of tokens")) =>
        {
            Some(FailureKind::ContextLengthExceeded)
        }
        Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE") => {
            Some(FailureKind::BadRequest)
        }
        Some("PERMISSION_DENIED") => Some(FailureKind::Forbidden),
        Some("NOT_FOUND") => Some(FailureKind::NotFound),
        _ => None,
    };
    ErrorDetail {
        kind,
        code: status
            .map(str::to_owned)
            .or_else(|| reason.map(str::to_owned)),
        message,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, StatusCode};

    fn ctx(dialect: Dialect) -> Ctx {
        Ctx {
            dialect,
            provider: Cow::Borrowed("test"),
            max_body: 1 << 20,
        }
    }

    fn err(
        dialect: Dialect,
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: &str,
    ) -> UpstreamError {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_static(v));
        }
        ctx(dialect).for_status(
            StatusCode::from_u16(status).expect("valid"),
            &map,
            Bytes::copy_from_slice(body.as_bytes()),
            None,
        )
    }

    #[test]
    fn openai_errors() {
        let quota = err(
            Dialect::OpenAi,
            429,
            &[],
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        );
        assert_eq!(quota.kind(), FailureKind::QuotaExhausted);
        assert_eq!(quota.code(), Some("insufficient_quota"));
        assert_eq!(quota.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        let limited = err(
            Dialect::OpenAi,
            429,
            &[("retry-after-ms", "1500")],
            r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(limited.kind(), FailureKind::RateLimited);
        assert_eq!(limited.retry_after(), Some(Duration::from_millis(1500)));
        let context = err(
            Dialect::OpenAi,
            400,
            &[],
            r#"{"error":{"message":"This model's maximum context length is 128000 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
        );
        assert_eq!(context.kind(), FailureKind::ContextLengthExceeded);
        let filtered = err(
            Dialect::OpenAi,
            400,
            &[],
            r#"{"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400}}"#,
        );
        assert_eq!(filtered.kind(), FailureKind::ContentFiltered);
        let auth = err(
            Dialect::OpenAi,
            401,
            &[],
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        );
        assert_eq!(auth.kind(), FailureKind::Unauthorized);
        for code in [
            "organization_spend_limit_exceeded",
            "project_spend_limit_exceeded",
            "credit_balance_exhausted",
        ] {
            let body = format!(
                r#"{{"error":{{"message":"limit","type":"invalid_request_error","param":null,"code":"{code}"}}}}"#
            );
            let capped = err_owned(Dialect::OpenAi, 429, &body);
            assert_eq!(capped.kind(), FailureKind::QuotaExhausted, "{code}");
        }
        let ctx = ctx(Dialect::OpenAi);
        let in_stream = |body: &str| {
            let value: Value = serde_json::from_str(body).expect("json");
            ctx.for_error_value(&value, body).kind()
        };
        assert_eq!(
            in_stream(
                r#"{"error":{"message":"busy","type":"service_unavailable_error","code":"server_is_overloaded"}}"#
            ),
            FailureKind::Overloaded
        );
        assert_eq!(
            in_stream(
                r#"{"error":{"message":"slow","type":"rate_limit_error","code":"slow_down"}}"#
            ),
            FailureKind::RateLimited
        );
    }

    fn err_owned(dialect: Dialect, status: u16, body: &str) -> UpstreamError {
        ctx(dialect).for_status(
            StatusCode::from_u16(status).expect("valid"),
            &HeaderMap::new(),
            Bytes::copy_from_slice(body.as_bytes()),
            None,
        )
    }

    #[test]
    fn anthropic_errors() {
        let overloaded = err(
            Dialect::Anthropic,
            529,
            &[],
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(overloaded.kind(), FailureKind::Overloaded);
        assert_eq!(overloaded.code(), Some("overloaded_error"));
        let limited = err(
            Dialect::Anthropic,
            429,
            &[("retry-after", "12")],
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
        );
        assert_eq!(limited.kind(), FailureKind::RateLimited);
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(12)));
        let long = err(
            Dialect::Anthropic,
            400,
            &[],
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
        );
        assert_eq!(long.kind(), FailureKind::ContextLengthExceeded);
        let spend_cap = err_owned(
            Dialect::Anthropic,
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"spend limit","details":{"error_code":"enforced_spend_limit_reached"}}}"#,
        );
        assert_eq!(spend_cap.kind(), FailureKind::QuotaExhausted);
        let own_limit = err_owned(
            Dialect::Anthropic,
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"You have reached your specified API usage limits. You will regain access on 2026-12-01 at 00:00 UTC."}}"#,
        );
        assert_eq!(own_limit.kind(), FailureKind::QuotaExhausted);
    }

    #[test]
    fn gemini_errors() {
        let per_minute = err(
            Dialect::Gemini,
            429,
            &[],
            r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#,
        );
        assert_eq!(per_minute.kind(), FailureKind::RateLimited);
        assert_eq!(per_minute.retry_after(), Some(Duration::from_secs(37)));
        let per_day = err(
            Dialect::Gemini,
            429,
            &[],
            r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"0.5s"}]}}"#,
        );
        assert_eq!(per_day.kind(), FailureKind::QuotaExhausted);
        assert_eq!(per_day.retry_after(), Some(Duration::from_millis(500)));
        let header_wins = err(
            Dialect::Gemini,
            429,
            &[("retry-after", "3")],
            r#"[{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}]"#,
        );
        assert_eq!(header_wins.retry_after(), Some(Duration::from_secs(3)));
        let key = err(
            Dialect::Gemini,
            400,
            &[],
            r#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#,
        );
        assert_eq!(key.kind(), FailureKind::Unauthorized);
        assert_eq!(err(Dialect::Gemini, 503, &[], r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#).kind(), FailureKind::Overloaded);
    }

    #[test]
    fn html_and_garbage() {
        let html = err(
            Dialect::OpenAi,
            502,
            &[],
            "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head></html>",
        );
        assert_eq!(html.kind(), FailureKind::ServerError);
        assert_eq!(html.message(), "HTML error page (502 Bad Gateway)");
        let garbage = err(Dialect::Anthropic, 500, &[], "{\"type\":\"err");
        assert_eq!(garbage.kind(), FailureKind::ServerError);
        assert!(garbage.body().is_some());
        assert_eq!(
            err(Dialect::Gemini, 404, &[], "").message(),
            "empty error body"
        );
    }

    #[test]
    fn proto_durations() {
        assert_eq!(
            parse_proto_duration("1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_proto_duration("-1s"), None);
        assert_eq!(parse_proto_duration("-5s"), None);
        assert_eq!(parse_proto_duration("1e400s"), None);
        assert_eq!(parse_proto_duration("infs"), None);
        assert_eq!(parse_proto_duration("18446744073709551616s"), None);
        assert_eq!(parse_proto_duration("NaNs"), None);
        assert_eq!(parse_proto_duration("12"), None);
    }
}
