//! How provider failures become classified [`UpstreamError`]s.
//!
//! The HTTP status gives the first answer ([`FailureKind::from_status`]); the provider's error
//! body refines it (an exhausted quota is a 429 that waiting will not fix, an overload may
//! arrive as an event inside a 200 stream), and the retry hint comes from every header form
//! ([`retry_after`]) and, for Gemini, from `RetryInfo.retryDelay` in the body.

use crate::key::ApiKey;
pub(crate) use crate::meta::Dialect;
use bytes::Bytes;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use tower_llm_core::{
    BoxError, ErrorBody, ErrorDialect, FailureKind, UpstreamError, classify_dyn_error,
    read_error_body, read_error_value, retry_after,
};

/// A provider's configuration was refused when built: core's [`ConfigError`], naming the knob
/// and saying why (component `provider`).
pub use tower_llm_core::ConfigError;

/// The refusal of `knob` of a provider's configuration.
pub(crate) fn config_error(
    knob: &'static str,
    reason: impl Into<std::borrow::Cow<'static, str>>,
) -> ConfigError {
    ConfigError::new("provider", knob, reason)
}

/// What a provider's calls share, handed to its [`Protocol`](crate::Protocol)'s writers and
/// readers: the provider's name and dialect, its limits, and its secret, so that every error
/// made here is labelled with the provider and scrubbed of the secret, whatever the upstream
/// sent back.
#[derive(Clone, Debug)]
pub struct CallContext {
    pub(crate) dialect: Dialect,
    /// The protocol's answer readers.
    pub(crate) hooks: crate::protocol::Hooks,
    pub(crate) provider: Cow<'static, str>,
    pub(crate) max_body: usize,
    /// The provider's own key, to scrub from what the upstream sends back (redacted in
    /// `Debug`).
    pub(crate) key: Option<ApiKey>,
    /// The provider's span and metrics.
    pub(crate) observe: std::sync::Arc<crate::observe::Observe>,
    /// Refuse a request whose `extra` fields are written for another dialect, rather than
    /// leave them out.
    pub(crate) strict_fields: bool,
}

impl CallContext {
    /// The context of a decoder used without a service (`decode_response`, [`ChunkDecoder`]):
    /// no key, no metrics, the default limits.
    ///
    /// [`ChunkDecoder`]: crate::ChunkDecoder
    pub(crate) fn standalone<P: crate::Protocol>(name: &'static str, gen_ai: &'static str) -> Self {
        CallContext {
            dialect: P::DIALECT,
            hooks: crate::protocol::Hooks::of::<P>(),
            provider: Cow::Borrowed(name),
            max_body: crate::body::DEFAULT_MAX_BODY_BYTES,
            key: None,
            observe: crate::observe::Observe::standalone(gen_ai),
            strict_fields: false,
        }
    }

    /// The provider's name, as configured on its builder.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The provider's dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The largest whole body this provider reads.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body
    }

    /// Checks `request` against this provider's dialect: `extra` fields written for another
    /// dialect, and the modelled fields its API has no equivalent for (`unsupported`), are
    /// left out by the encoder and counted here, or, in strict mode, the request is refused
    /// before any upstream call.
    pub(crate) fn check_fields(
        &self,
        request: &crate::chat::ChatRequest,
        unsupported: &[crate::chat::ChatField],
    ) -> Result<(), UpstreamError> {
        let foreign = request.foreign_extra(self.dialect);
        if foreign.is_none() && unsupported.is_empty() {
            return Ok(());
        }
        if self.strict_fields {
            return Err(self.error(
                FailureKind::BadRequest,
                refusal(request, foreign, unsupported, self.dialect),
            ));
        }
        if let Some(from) = foreign {
            self.observe
                .fields_dropped(Some(from), self.dialect, request.extra.len());
        }
        if !unsupported.is_empty() {
            self.observe
                .fields_dropped(None, self.dialect, unsupported.len());
        }
        Ok(())
    }

    /// The facts of an answer with this status and these headers.
    pub(crate) fn meta(
        &self,
        status: http::StatusCode,
        headers: &http::HeaderMap,
    ) -> crate::meta::ResponseMeta {
        let mut meta =
            crate::meta::ResponseMeta::new(status, headers, self.dialect, self.provider.clone());
        meta.request_id = meta.request_id.map(|id| self.scrub(id));
        meta
    }

    /// Every error of this provider starts here: its message may quote the upstream, so it is
    /// scrubbed of the key.
    pub fn error(&self, kind: FailureKind, message: impl Into<String>) -> UpstreamError {
        let message = self.scrub(message.into());
        UpstreamError::new(kind, message).with_provider(self.provider.clone())
    }

    /// Text from the upstream, without the provider's key (whole or masked).
    pub fn scrub(&self, text: String) -> String {
        match &self.key {
            Some(key) => match key.scrub(&text) {
                Cow::Borrowed(_) => text,
                Cow::Owned(clean) => clean,
            },
            None => text,
        }
    }

    /// Attaches the upstream's body to an error, without the provider's key.
    pub fn with_body(&self, error: UpstreamError, body: Bytes) -> UpstreamError {
        let body = match &self.key {
            Some(key) => key.scrub_bytes(body),
            None => body,
        };
        error.with_body(body)
    }

    /// A failure to reach the upstream or to read its answer: transport, unless the error
    /// says timeout (tower's or tokio's `Elapsed`, an io `TimedOut`).
    pub fn transport(&self, what: &str, error: BoxError) -> UpstreamError {
        let kind = match classify_dyn_error(&*error).kind {
            FailureKind::Timeout => FailureKind::Timeout,
            _ => FailureKind::Transport,
        };
        // hyper-util's own text says only "client error (Connect)": the chain says which
        // (refused, a certificate not trusted, a proxy's refusal).
        let message = format!("{what}: {}", chain_text(&*error));
        let source = match &self.key {
            // The chain's text may quote the request (a proxy's error, a URL with the key in
            // it): a source whose text would show the key is replaced by its scrubbed text.
            Some(key) if chain_shows_key(&*error, key) => {
                BoxError::from(Scrubbed(key.scrub(&chain_text(&*error)).into_owned()))
            }
            _ => error,
        };
        self.error(kind, message).with_source(source)
    }

    /// A body that is not what the provider documents.
    pub fn malformed(&self, what: &str, body: &[u8], error: impl fmt::Display) -> UpstreamError {
        let message = if looks_like_html(body) {
            format!("{what}: got an HTML page instead of JSON")
        } else {
            format!("{what}: {error}")
        };
        // Only a failure copies the body; its start is what the error keeps.
        let kept = &body[..body.len().min(tower_llm_core::MAX_ERROR_BODY)];
        self.with_body(
            self.error(FailureKind::ServerError, message),
            Bytes::copy_from_slice(kept),
        )
    }

    /// The error for a non-success answer with (the start of) this body.
    pub fn for_status(
        &self,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        body: Bytes,
        note: Option<&str>,
    ) -> UpstreamError {
        let kind = FailureKind::from_status(status).unwrap_or(FailureKind::Other);
        let detail = read_error_body(self.dialect.errors(), &body);
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
            .with_retry_after(retry_after(headers));
        if let Some(id) = crate::meta::request_id(headers) {
            error = error.with_request_id(self.scrub(id));
        }
        let mut error = self.with_body(error, body);
        if let Some(mut detail) = detail {
            // A body's generic type ("invalid_request_error" on a 401) must not hide what the
            // status says; only the specific kinds a status cannot express refine it.
            if !detail.kind.is_some_and(ErrorBody::refines_status) {
                detail.kind = None;
            }
            error = self.apply_detail(error, kind, detail);
        }
        error
    }

    /// An error object sent inside a 200 stream (or a 200 body).
    pub fn for_error_value(&self, value: &Value, raw: &str) -> UpstreamError {
        let detail = read_error_value(self.dialect.errors(), value).unwrap_or_default();
        let kind = detail.kind.unwrap_or(FailureKind::ServerError);
        let error = self.error(
            kind,
            detail
                .message
                .clone()
                .unwrap_or_else(|| "error event".into()),
        );
        let error = self.with_body(error, Bytes::copy_from_slice(raw.as_bytes()));
        self.apply_detail(error, kind, detail)
    }

    /// An error sent inside a stream, whatever the dialect and whatever keys its payload
    /// has: an event its framing marks as an error (SSE's `event: error`, with JSON or not),
    /// a payload with a non-null `error` (OpenAI, Gemini, Anthropic's
    /// `{"type":"error","error":{..}}`), or one whose `type` or `object` is `"error"`
    /// (vLLM's `{"object":"error",..}`). The default of
    /// [`Protocol::stream_error`](crate::Protocol::stream_error).
    pub fn stream_error(&self, event: &crate::framing::Event) -> Option<UpstreamError> {
        let named = event.error;
        let data = event.data.trim();
        // A cheap test first: an error payload has an `"error"` key or value; escaped text
        // inside a string (`\"error\"`) never matches.
        if !named && !data.contains("\"error\"") {
            return None;
        }
        let value: Value = match serde_json::from_str(data) {
            Ok(value) => value,
            Err(_) if named => {
                return Some(self.error(FailureKind::ServerError, format!("error event: {data}")));
            }
            // Not JSON and not named an error: the dialect's decoder says it is malformed.
            Err(_) => return None,
        };
        if value.get("error").is_some_and(|e| !e.is_null()) {
            return Some(self.for_error_value(&value, data));
        }
        // `"type": "error"` (Anthropic's shape without its `error` object), or `"object":
        // "error"` (vLLM and other OpenAI-compatible servers: `{"object":"error","message":..,
        // "type":"BadRequestError","code":400}`).
        let typed = ["type", "object"]
            .iter()
            .any(|key| value.get(key).and_then(Value::as_str) == Some("error"));
        if named || typed {
            // `{"message": ..}`, `{"type":"error","message":..}` or `{"object":"error",..}`:
            // the payload is the error.
            let wrapped = serde_json::json!({ "error": value });
            return Some(self.for_error_value(&wrapped, data));
        }
        None
    }

    fn apply_detail(
        &self,
        mut error: UpstreamError,
        status_kind: FailureKind,
        mut detail: ErrorBody,
    ) -> UpstreamError {
        if let Some(code) = detail.code.take() {
            error = error.with_code(self.scrub(code));
        }
        refine(error, status_kind, detail)
    }
}

/// `error` with the kind and retry hint the body gave (its message, code and body are already
/// in `error`, scrubbed).
fn refine(mut error: UpstreamError, status_kind: FailureKind, detail: ErrorBody) -> UpstreamError {
    let kind = detail.kind.unwrap_or(status_kind);
    if kind != error.kind() {
        error = error.with_kind(kind);
    }
    if error.retry_after().is_none() && detail.retry_after.is_some() {
        error = error.with_retry_after(detail.retry_after);
    }
    error
}

/// A transport error's text with the provider's key taken out, standing in for the error.
#[derive(Debug)]
struct Scrubbed(String);

impl fmt::Display for Scrubbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Scrubbed {}

/// The error and its sources, one line of text.
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        text.push_str(": ");
        text.push_str(&source.to_string());
        next = source.source();
    }
    text
}

fn chain_shows_key(error: &(dyn std::error::Error + 'static), key: &ApiKey) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if matches!(key.scrub(&e.to_string()), Cow::Owned(_)) {
            return true;
        }
        next = e.source();
    }
    false
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

impl Dialect {
    /// Core's reader of this dialect's error bodies; `None` reads them generically.
    fn errors(self) -> Option<ErrorDialect> {
        match self {
            Dialect::OpenAi => Some(ErrorDialect::OpenAi),
            Dialect::Anthropic => Some(ErrorDialect::Anthropic),
            Dialect::Gemini => Some(ErrorDialect::Gemini),
            Dialect::Bedrock | Dialect::Other(_) => None,
        }
    }
}

/// The message of a request refused by `strict_fields`: what it sets that `dialect` cannot
/// carry.
fn refusal(
    request: &crate::chat::ChatRequest,
    foreign: Option<Dialect>,
    unsupported: &[crate::chat::ChatField],
    dialect: Dialect,
) -> String {
    let mut parts = Vec::new();
    if !unsupported.is_empty() {
        let names: Vec<&str> = unsupported.iter().map(|field| field.as_str()).collect();
        parts.push(format!(
            "{} has no equivalent for {}",
            dialect.as_str(),
            names.join(", ")
        ));
    }
    if let Some(from) = foreign {
        /// Names quoted in the error, each cut to a length a reader can take in.
        const QUOTED: usize = 8;
        const NAME_CHARS: usize = 64;
        let names: Vec<String> = request
            .extra
            .keys()
            .take(QUOTED)
            .map(|name| format!("{:?}", name.chars().take(NAME_CHARS).collect::<String>()))
            .collect();
        let more = request.extra.len().saturating_sub(QUOTED);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        parts.push(format!(
            "{} field(s) written for {} have no {} equivalent: {}{more}",
            request.extra.len(),
            from.as_str(),
            dialect.as_str(),
            names.join(", "),
        ));
    }
    format!("strict_fields refuses the request: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use http::{HeaderMap, HeaderValue, StatusCode};

    fn ctx(dialect: Dialect) -> CallContext {
        CallContext {
            dialect,
            hooks: crate::protocol::Hooks::of::<crate::OpenAiProtocol>(),
            provider: Cow::Borrowed("test"),
            max_body: 1 << 20,
            key: None,
            observe: crate::observe::Observe::standalone("test"),
            strict_fields: false,
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
}
