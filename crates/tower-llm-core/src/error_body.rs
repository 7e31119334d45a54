//! What a provider's JSON error body says, in each provider's dialect.
//!
//! The HTTP status gives the first answer ([`FailureKind::from_status`]); the body refines it:
//! a 429 whose body says the account's credit or spend cap is gone will not be lifted by
//! waiting ([`FailureKind::QuotaExhausted`]), a 400 may say the prompt is too long for the
//! model ([`FailureKind::ContextLengthExceeded`]), Gemini puts its retry hint in the body.
//! Provider services read bodies through this module with their own dialect; a stack that sits
//! directly on an HTTP client (a gateway, a proxy) can let [`read_error_body`] recognise the
//! dialect from the body's shape.
//!
//! ```
//! use tower_llm_core::{FailureKind, read_error_body};
//!
//! let anthropic = br#"{"type":"error","error":{"type":"rate_limit_error","message":"x",
//!     "details":{"error_code":"enforced_spend_limit_reached"}}}"#;
//! let read = read_error_body(None, anthropic).unwrap();
//! assert_eq!(read.kind, Some(FailureKind::QuotaExhausted));
//! ```

use std::time::Duration;

use serde_json::Value;

use crate::classify::FailureKind;

/// A provider's error format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorDialect {
    /// `{"error": {"message", "type", "code", "param"}}`, also spoken by OpenAI-compatible
    /// servers (some send `{"error": "text"}`).
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
    /// `{"error": {"code", "message", "status", "details": [...]}}` (Google APIs).
    Gemini,
}

impl ErrorDialect {
    /// The dialect a parsed error body is in, from its shape; `None` when it has no `error`.
    pub fn sniff(value: &Value) -> Option<ErrorDialect> {
        let error = value.get("error")?;
        Some(if str_field(value, "type") == Some("error") {
            ErrorDialect::Anthropic
        } else if error.get("status").is_some_and(Value::is_string) {
            ErrorDialect::Gemini
        } else {
            ErrorDialect::OpenAi
        })
    }
}

/// What a provider's error JSON says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorBody {
    /// The kind the body names, if it names one this taxonomy knows.
    pub kind: Option<FailureKind>,
    /// The provider's own code or type for the error (`insufficient_quota`,
    /// `overloaded_error`, `RESOURCE_EXHAUSTED`, ...).
    pub code: Option<String>,
    /// The provider's message.
    pub message: Option<String>,
    /// A retry hint given in the body (Gemini's `RetryInfo.retryDelay`).
    pub retry_after: Option<Duration>,
}

impl ErrorBody {
    /// Whether `kind` says more than an HTTP status can, and so should replace the status's
    /// kind: a body's generic type (`invalid_request_error` on a 401) must not hide what the
    /// status says, but "your quota is spent" on a 429 must.
    pub fn refines_status(kind: FailureKind) -> bool {
        matches!(
            kind,
            FailureKind::QuotaExhausted
                | FailureKind::ContextLengthExceeded
                | FailureKind::ContentFiltered
                | FailureKind::Overloaded
                | FailureKind::Unauthorized
        )
    }
}

/// Reads a JSON error body in `dialect`, or in the dialect its shape shows when `None`.
/// `None` when the body is not JSON with an `error` member. An array (Gemini's streaming
/// endpoint wraps its error in one) is read by its first item.
pub fn read_error_body(dialect: Option<ErrorDialect>, body: &[u8]) -> Option<ErrorBody> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let value = match value {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        other => other,
    };
    read_error_value(dialect, &value)
}

/// [`read_error_body`] for a body already parsed (an error event inside a stream, say).
pub fn read_error_value(dialect: Option<ErrorDialect>, value: &Value) -> Option<ErrorBody> {
    let dialect = match dialect {
        Some(dialect) => dialect,
        None => ErrorDialect::sniff(value)?,
    };
    let error = value.get("error")?;
    Some(match dialect {
        ErrorDialect::OpenAi => openai_detail(error),
        ErrorDialect::Anthropic => anthropic_detail(error),
        ErrorDialect::Gemini => gemini_detail(error),
    })
}

fn str_field<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value.get(name).and_then(Value::as_str)
}

fn openai_detail(error: &Value) -> ErrorBody {
    // Some compatible servers send `"error": "text"`.
    if let Some(text) = error.as_str() {
        return ErrorBody {
            message: Some(text.to_owned()),
            ..ErrorBody::default()
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
    ErrorBody {
        kind,
        code: code.or_else(|| ty.map(str::to_owned)),
        message,
        retry_after: None,
    }
}

fn anthropic_detail(error: &Value) -> ErrorBody {
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
    ErrorBody {
        kind,
        code: ty.map(str::to_owned),
        message,
        retry_after: None,
    }
}

/// Parses a protobuf JSON duration such as `"37s"` or `"0.250s"` (Gemini's `retryDelay`).
fn parse_proto_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    (0.0..1e9)
        .contains(&seconds)
        .then(|| Duration::from_secs_f64(seconds))
}

fn gemini_detail(error: &Value) -> ErrorBody {
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
    // A quota id names its period; any detail's violations are read (not only a
    // `QuotaFailure` by its `@type`): proxies and older API versions drop the `@type`.
    let per_day = details.into_iter().flatten().any(|d| {
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
    ErrorBody {
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

    #[test]
    fn sniffs_each_dialect_from_its_shape() {
        let read = |body: &str| read_error_body(None, body.as_bytes());
        let openai = read(r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#)
            .expect("an OpenAI error");
        assert_eq!(openai.kind, Some(FailureKind::QuotaExhausted));
        assert_eq!(openai.code.as_deref(), Some("insufficient_quota"));
        let context = read(r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#)
            .expect("an OpenAI error");
        assert_eq!(context.kind, Some(FailureKind::ContextLengthExceeded));
        let anthropic =
            read(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
                .expect("an Anthropic error");
        assert_eq!(anthropic.kind, Some(FailureKind::Overloaded));
        assert_eq!(anthropic.message.as_deref(), Some("Overloaded"));
        let gemini = read(r#"[{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}]"#)
            .expect("a Gemini error, wrapped in an array");
        assert_eq!(gemini.kind, Some(FailureKind::QuotaExhausted));
        assert_eq!(gemini.retry_after, Some(Duration::from_secs(37)));
        let compatible = read(r#"{"error":"model is loading"}"#).expect("a bare message");
        assert_eq!(compatible.kind, None);
        assert_eq!(compatible.message.as_deref(), Some("model is loading"));
        assert_eq!(read(r#"{"detail":"nope"}"#), None);
        assert_eq!(read("<html>502</html>"), None);
        assert_eq!(read(""), None);
    }

    #[test]
    fn a_named_dialect_wins_over_the_shape() {
        // An Anthropic-typed body read as OpenAI's: the OpenAI reader sees only `type`.
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"m"}}"#;
        let as_openai = read_error_body(Some(ErrorDialect::OpenAi), body).expect("an error");
        assert_eq!(as_openai.kind, Some(FailureKind::RateLimited));
        assert_eq!(as_openai.code.as_deref(), Some("rate_limit_error"));
    }
}
