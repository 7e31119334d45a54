//! The HTTP facts of an answer: its status, the upstream's request id, the rate-limit and
//! retry headers, which wire format and provider answered, and how that provider counts
//! tokens.
//!
//! Every [`ChatResponse`](crate::ChatResponse), [`EmbeddingResponse`](crate::EmbeddingResponse)
//! and [`ChatStream`](crate::ChatStream) carries a [`ResponseMeta`]. Its headers are what core's
//! [`RateLimitHeaders`](tower_llm_core::RateLimitHeaders) hands to a rate limiter that adapts
//! to the provider's headers, so `adapt_to_headers()` works over the typed services as it
//! does over raw HTTP.

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};

/// Which wire format a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// OpenAI chat completions (OpenAI, Azure OpenAI, OpenAI-compatible servers).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
    /// AWS Bedrock `Converse` / `ConverseStream`.
    Bedrock,
    /// A protocol defined outside this crate, by its name.
    Other(&'static str),
}

impl Dialect {
    /// The dialect's name: `openai`, `anthropic`, `gemini`, `bedrock`, or the name of
    /// another.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
            Dialect::Bedrock => "bedrock",
            Dialect::Other(name) => name,
        }
    }

    /// How this dialect's provider counts tokens against its tokens-per-minute limit:
    /// OpenAI and Bedrock take the request's `max_tokens` at admission (Bedrock gives back
    /// what was not used when the call ends); Anthropic and Gemini count output tokens as
    /// they are produced, as does a dialect this crate does not know.
    pub const fn token_counting(self) -> TokenCounting {
        match self {
            Dialect::OpenAi | Dialect::Bedrock => TokenCounting::ReservedAtAdmission,
            Dialect::Anthropic | Dialect::Gemini | Dialect::Other(_) => TokenCounting::AsProduced,
        }
    }
}

/// How a provider counts tokens: core's [`TokenCounting`], re-exported here beside the
/// dialect that decides it ([`Dialect::token_counting`], [`ResponseMeta::token_counting`]).
pub use tower_llm_core::TokenCounting;

/// The HTTP facts of one answer. See the [module docs](crate::meta).
///
/// A value made by hand (`ChatResponse::default()`, a test double) has no status, headers or
/// dialect.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ResponseMeta {
    /// The status the provider answered with.
    pub status: Option<StatusCode>,
    /// The provider's id for the request (OpenAI `x-request-id`, Anthropic `request-id`,
    /// Azure `apim-request-id`, Bedrock `x-amzn-requestid`), the reference its support asks for.
    pub request_id: Option<String>,
    /// The answer's rate-limit, retry and request-id headers, as received: OpenAI
    /// `x-ratelimit-*`, Anthropic `anthropic-ratelimit-*`, the IETF draft's `ratelimit-*`,
    /// `retry-after`, `retry-after-ms`, `x-ms-retry-after-ms`. Other headers are not kept.
    pub headers: HeaderMap,
    /// The wire format of the provider that answered.
    pub dialect: Option<Dialect>,
    /// The provider's name, as configured on its builder (`openai`, `azure-openai`, ...).
    pub provider: Option<Cow<'static, str>>,
}

/// The headers a provider names its request id in, most specific first.
const REQUEST_ID_HEADERS: [&str; 4] = [
    "x-request-id",
    "request-id",
    "apim-request-id",
    "x-amzn-requestid",
];

impl ResponseMeta {
    /// The facts of an answer with this status and these headers, from `provider` speaking
    /// `dialect`.
    pub(crate) fn new(
        status: StatusCode,
        headers: &HeaderMap,
        dialect: Dialect,
        provider: Cow<'static, str>,
    ) -> Self {
        let mut kept = HeaderMap::new();
        for (name, value) in headers {
            if is_kept(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        ResponseMeta {
            status: Some(status),
            request_id: request_id(headers),
            headers: kept,
            dialect: Some(dialect),
            provider: Some(provider),
        }
    }

    /// How the provider counts tokens (from its dialect), if known.
    pub fn token_counting(&self) -> Option<TokenCounting> {
        self.dialect.map(Dialect::token_counting)
    }

    /// The retry hint of the headers, in any of their forms (`retry-after` in seconds or as
    /// an HTTP date, `retry-after-ms`, `x-ms-retry-after-ms`).
    pub fn retry_after(&self) -> Option<Duration> {
        tower_llm_core::retry_after(&self.headers)
    }
}

/// The upstream's request id in `headers`, if any (cut to 256 bytes: it comes from the
/// server).
pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    REQUEST_ID_HEADERS.iter().find_map(|name| {
        let value = headers.get(*name)?.to_str().ok()?.trim();
        if value.is_empty() {
            return None;
        }
        let mut end = value.len().min(256);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        Some(value[..end].to_owned())
    })
}

fn is_kept(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("x-ratelimit-")
        || name.starts_with("anthropic-ratelimit-")
        || name.starts_with("ratelimit")
        || matches!(
            name,
            "retry-after" | "retry-after-ms" | "x-ms-retry-after-ms"
        )
        || REQUEST_ID_HEADERS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_rate_limit_retry_and_id_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("anthropic-ratelimit-tokens-remaining", "10"),
            ("retry-after-ms", "1500"),
            ("request-id", "req_011"),
            ("set-cookie", "a=b"),
            ("content-type", "application/json"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        let meta = ResponseMeta::new(
            StatusCode::OK,
            &headers,
            Dialect::Anthropic,
            Cow::Borrowed("anthropic"),
        );
        assert_eq!(meta.headers.len(), 5);
        assert!(meta.headers.get("set-cookie").is_none());
        assert_eq!(meta.request_id.as_deref(), Some("req_011"));
        assert_eq!(meta.retry_after(), Some(Duration::from_millis(1500)));
        assert_eq!(meta.token_counting(), Some(TokenCounting::AsProduced));
        assert_eq!(
            Dialect::OpenAi.token_counting(),
            TokenCounting::ReservedAtAdmission
        );
    }
}
