//! Google's Gemini API (`generateContent`, and `streamGenerateContent` with `alt=sse`).
//!
//! [`Gemini`] maps a [`ChatRequest`] to Gemini's `contents`: system messages become
//! `systemInstruction`, the assistant role is `model`, tool calls are `functionCall` parts and
//! tool results `functionResponse` parts (matched by function name: the tool message's
//! [`name`](crate::Message::name), else the name of the call its `tool_call_id` answers);
//! sampling settings, `seed` and the response format go in `generationConfig`. `user` and
//! `metadata` have no Gemini field and are not sent. The key comes from
//! [`GeminiBuilder::api_key`], `GEMINI_API_KEY` or `GOOGLE_API_KEY`, sent as
//! `x-goog-api-key`.
//!
//! A Gemini stream has no terminal event: it is complete when a candidate carried a
//! `finishReason` before the body ended. Gemini reports cumulative usage on every chunk; the
//! stream yields it once, with the finish. A rate-limit error's `RetryInfo.retryDelay` is the
//! retry hint, and a per-day `QuotaFailure` is classified as an exhausted quota.
//!
//! # Example
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_providers::{ChatRequest, Gemini, Message, RequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let http = service_fn(|request: http::Request<RequestBody>| async move {
//!     assert_eq!(
//!         request.uri(),
//!         "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
//!     );
//!     let body = r#"{"candidates":[{"content":{"parts":[{"text":"Hi there"}],"role":"model"},
//!         "finishReason":"STOP","index":0}],
//!         "usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2,"totalTokenCount":6},
//!         "modelVersion":"gemini-2.5-flash"}"#;
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
//!         bytes::Bytes::from(body),
//!     )))
//! });
//! let gemini = Gemini::builder().api_key("AIza-test").build_with(http).unwrap();
//! let service = ServiceBuilder::new().service(gemini);
//! let request = ChatRequest::new("gemini-2.5-flash", vec![Message::user("Hi")]);
//! let answer = service.oneshot(request).await.unwrap();
//! assert_eq!(answer.content, "Hi there");
//! assert_eq!(answer.usage.unwrap().total(), 6);
//! # }
//! ```

mod wire;

use std::fmt;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Uri};
use tower_llm_core::{FailureKind, UpstreamError};

use crate::builder;
use crate::chat::{ChatField, ChatRequest, ChatResponse};
use crate::client::{HttpClient, RequestBody, post_json};
use crate::error::{CallContext, ConfigError};
use crate::key::ApiKey;
use crate::meta::{Dialect, ResponseMeta};
use crate::protocol::{Protocol, StreamDecoder};
use crate::provider::{CommonSettings, ProtocolSettings, Provider, ProviderBuilder};

const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// The Gemini `generateContent` service: the [`Provider`] over [`GeminiProtocol`]. See the
/// [module docs](crate::gemini).
pub type Gemini<S = HttpClient> = Provider<GeminiProtocol, S>;

/// Builds a [`Gemini`] service.
pub type GeminiBuilder = ProviderBuilder<GeminiSettings>;

/// The settings only a [`GeminiBuilder`] has (none yet).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct GeminiSettings {}

/// The `generateContent` wire format, with one upstream's base URL and headers.
pub struct GeminiProtocol {
    base: String,
    // The endpoint with a stand-in model, for the span's server address and port.
    probe: Uri,
    headers: HeaderMap,
    key: ApiKey,
}

impl fmt::Debug for GeminiProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiProtocol")
            .field("base_url", &self.base)
            .field("api_key", &"****")
            .finish_non_exhaustive()
    }
}

impl Gemini {
    /// A builder with Gemini's defaults: the Generative Language API's `v1beta`, the key from
    /// `GEMINI_API_KEY` or `GOOGLE_API_KEY` unless given.
    pub fn builder() -> GeminiBuilder {
        GeminiBuilder::new(
            GeminiSettings::default(),
            CommonSettings::new(GEMINI_BASE_URL, "gemini"),
        )
    }

    /// Gemini with the key from `GEMINI_API_KEY` (or `GOOGLE_API_KEY`), over the shared
    /// default client.
    pub fn from_env() -> Result<Self, ConfigError> {
        Gemini::builder().build()
    }
}

impl ProtocolSettings for GeminiSettings {
    type Protocol = GeminiProtocol;

    fn protocol(self, common: &CommonSettings) -> Result<GeminiProtocol, ConfigError> {
        let base = common.base_url().to_owned();
        // Model names go into the path at call time; check the base with a stand-in one.
        let probe = builder::endpoint(format!("{base}/models/m:generateContent"))?;
        let key = common.api_key_or_env(&["GEMINI_API_KEY", "GOOGLE_API_KEY"])?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            HeaderName::from_static("x-goog-api-key"),
            builder::key_header(&key, "")?,
        );
        Ok(GeminiProtocol {
            base,
            probe,
            headers,
            key,
        })
    }
}

impl GeminiProtocol {
    fn uri(&self, cx: &CallContext, model: &str, stream: bool) -> Result<Uri, UpstreamError> {
        let model = model.strip_prefix("models/").unwrap_or(model);
        let bad = || {
            cx.error(
                FailureKind::BadRequest,
                format!("model name {model:?} cannot be put in a URL"),
            )
        };
        if model.is_empty() || model.contains(['/', '?', '#', ' ']) {
            return Err(bad());
        }
        let uri = if stream {
            format!("{}/models/{model}:streamGenerateContent?alt=sse", self.base)
        } else {
            format!("{}/models/{model}:generateContent", self.base)
        };
        uri.parse().map_err(|_| bad())
    }
}

impl Protocol for GeminiProtocol {
    const DIALECT: Dialect = Dialect::Gemini;

    fn gen_ai_provider(&self) -> &'static str {
        "gcp.gemini"
    }

    fn endpoint(&self) -> &Uri {
        &self.probe
    }

    fn secret(&self) -> Option<&ApiKey> {
        Some(&self.key)
    }

    /// generateContent has no end-user id and no request metadata.
    fn unsupported_fields(&self, request: &ChatRequest) -> Vec<ChatField> {
        ChatField::set_in(&[ChatField::User, ChatField::Metadata], request)
    }

    fn chat_request(
        &self,
        cx: &CallContext,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<http::Request<RequestBody>, UpstreamError> {
        let uri = self.uri(cx, &request.model, stream)?;
        Ok(post_json(
            &uri,
            &self.headers,
            wire::encode_chat(request),
            stream,
        ))
    }

    fn decode_chat(
        cx: &CallContext,
        body: Bytes,
        meta: ResponseMeta,
    ) -> Result<ChatResponse, UpstreamError> {
        wire::decode_chat(cx, &body, meta)
    }

    fn stream_decoder() -> Box<dyn StreamDecoder> {
        Box::<wire::StreamDecoder>::default()
    }
}

/// Encodes `request` as [`Gemini`] sends it.
pub fn encode_request(request: &ChatRequest) -> Vec<u8> {
    wire::encode_chat(request)
}

/// Decodes a `generateContent` body, as [`Gemini`] does.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, UpstreamError> {
    wire::decode_chat(standalone_context(), body, ResponseMeta::default())
}

/// The context of a decoder used without a service, made once.
pub(crate) fn standalone_context() -> &'static CallContext {
    static CONTEXT: std::sync::OnceLock<CallContext> = std::sync::OnceLock::new();
    CONTEXT.get_or_init(|| CallContext::standalone::<GeminiProtocol>("gemini", "gcp.gemini"))
}
